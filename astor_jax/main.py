r"""The ASTOR job: SFT warm start, multi-task RL and evaluation.

  python -m astor_jax.main --config=configs/astor.py --workdir=runs/astor
  python -m astor_jax.main --config=configs/astor.py:smoke --workdir=runs/smoke \
      --config.rl.steps=10

Bad input (unknown variant, missing or invalid field, a workdir that is a file)
exits with status 2 and one line naming the field and the fix, before anything
is written.
"""

from __future__ import annotations

import os
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from astor_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a variant: configs/astor.py:smoke.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")


def fail(message: str) -> None:
  print(f"astor_jax: error: {message}", file=sys.stderr)
  sys.exit(2)


def check_workdir(workdir: str | None) -> str:
  if not workdir:
    fail("--workdir: missing; pass --workdir=DIR (created if absent)")
  if "://" in workdir:
    # Multi-host runs need a directory every host sees (e.g. gs://bucket/run);
    # orbax and etils handle such paths, so they are passed through as given.
    return workdir
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    fail(f"--workdir: {workdir} is a file; pass a directory path")
  parent = os.path.dirname(workdir)
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent and (not os.path.isdir(parent) or not os.access(parent, os.W_OK)):
    fail(f"--workdir: cannot create {workdir} ({parent} is not a writable directory); "
         "pass a writable path")
  return workdir


def enable_compilation_cache(path: str) -> str:
  """Turns on JAX's persistent compilation cache in `path` (created; gs:// as is).

  Every program of the job is stored (no minimum compile time or size), so a
  later job with the same programs, devices and JAX version loads them
  instead of compiling: the reproduce suite's dozens of jobs compile the same
  sampler, log-prob and train-step programs. XLA keys the cache on the
  program and the compile options, so a hit is the same executable and the
  run's results do not change.
  """
  import jax

  if "://" not in path:
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(path) and not os.path.isdir(path):
      fail(f"--config.compilation_cache_dir: {path} is a file; pass a directory path")
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      fail(f"--config.compilation_cache_dir: cannot create {path} ({e.strerror}); "
           "pass a writable directory or an empty string")
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def main(argv) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; fields are set with --config.a.b=value")
  config = _CONFIG.value
  if not isinstance(config, ml_collections.ConfigDict):
    fail(f"--config: cannot load {flags.FLAGS['config'].config_filename!r}; "
         "pass an existing config file such as configs/astor.py")
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    fail(str(e))
  workdir = check_workdir(_WORKDIR.value)
  from astor_jax import cpu_buffers, distributed  # backend-free until initialize()

  try:
    distributed.initialize()  # multi-host TPU/GPU jobs; a no-op on one machine
  except distributed.LaunchError as e:
    fail(str(e))
  try:  # before the first computation: it fixes how the CPU backend dispatches
    memory_note = cpu_buffers.keep_resident(config.cpu_resident_buffers)
  except RuntimeError as e:
    fail(str(e))
  distributed.configure_logging()
  distributed.main_print(memory_note, flush=True)
  if config.compilation_cache_dir:
    enable_compilation_cache(config.compilation_cache_dir)
  from astor_jax.train import loop  # heavy imports only after validation

  loop.run(config, workdir)


def run() -> None:
  flags.mark_flag_as_required("config")
  try:
    app.run(main, flags_parser=_parse_flags)
  except config_lib.ConfigError as e:
    fail(str(e))


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - every parse failure becomes one clean line
    fail(_describe_flag_error(e, argv))


def _describe_flag_error(error: Exception, argv) -> str:
  text = str(error)
  if isinstance(error, (AttributeError, KeyError)) or "Unknown command line flag 'config." in text:
    overrides = [a.split("=", 1)[0].lstrip("-") for a in argv[1:] if a.startswith("--config.")]
    named = [f for f in overrides if f"'{f.rsplit('.', 1)[-1]}'" in text or f in text]
    field = named[0] if named else "--config.<field>"
    return f"{field}: no such config field; see the config file for the fields it defines"
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  # Errors raised inside a config file arrive wrapped with a traceback: keep the last line.
  return lines[-1] if lines else type(error).__name__


if __name__ == "__main__":
  run()
