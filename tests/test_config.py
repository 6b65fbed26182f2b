"""Config validation and the CLI's bad-input contract."""

import os
import subprocess
import sys

import pytest

from astor_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(variant=None):
  import importlib.util
  spec = importlib.util.spec_from_file_location("astor_cfg", os.path.join(REPO, "configs/astor.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


@pytest.mark.parametrize("variant", [None, "smoke"])
def test_shipped_variants_validate(variant):
  config_lib.validate(_load(variant))


@pytest.mark.parametrize("path,value,needle", [
    ("rl.group_size", 1, "config.rl.group_size"),
    ("astor.tau", 0.0, "config.astor.tau"),
    ("astor.floor", 1.5, "config.astor.floor"),
    ("rl.advantage", "ppo", "config.rl.advantage"),
    ("sampler.prompt_buckets", (128, 64), "config.sampler.prompt_buckets"),
    ("tasks", ("code_io", "nope"), "config.tasks"),
])
def test_invalid_field_names_field(path, value, needle):
  config = _load()
  section, _, leaf = path.rpartition(".")
  (config[section] if section else config)[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=needle.replace(".", r"\.")):
    config_lib.validate(config)


def test_missing_field_names_field():
  config = _load()
  del config.rl["clip_eps"]
  with pytest.raises(config_lib.ConfigError, match=r"config\.rl\.clip_eps: missing"):
    config_lib.validate(config)


def test_specialist_needs_known_task():
  config = _load()
  config.astor.schedule = "specialist"
  config.astor.specialist_task = "poetry"
  with pytest.raises(config_lib.ConfigError, match="specialist_task"):
    config_lib.validate(config)


def _cli(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "astor_jax.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,needle", [
    (["--config=configs/astor.py:nope"], "unknown config variant 'nope'"),
    (["--config=configs/astor.py", "--config.rl.group_size=1"], "config.rl.group_size"),
    (["--config=configs/astor.py", "--config.rl.nope=1"], "config.rl.nope: no such config field"),
    (["--config=configs/does_not_exist.py"], "--config: cannot load"),
])
def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path, args, needle):
  workdir = tmp_path / "w"
  result = _cli(*args, f"--workdir={workdir}")
  assert result.returncode == 2, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert needle in last
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


def test_cli_workdir_is_a_file(tmp_path):
  target = tmp_path / "file"
  target.write_text("x")
  result = _cli("--config=configs/astor.py", f"--workdir={target}")
  assert result.returncode == 2
  assert "--workdir" in result.stderr and "is a file" in result.stderr
  assert target.read_text() == "x"


def test_cli_compilation_cache_dir_is_a_file(tmp_path):
  target = tmp_path / "cache"
  target.write_text("x")
  workdir = tmp_path / "w"
  result = _cli("--config=configs/astor.py", f"--workdir={workdir}",
                f"--config.compilation_cache_dir={target}")
  assert result.returncode == 2, result.stderr
  assert "--config.compilation_cache_dir" in result.stderr and "is a file" in result.stderr
  assert target.read_text() == "x" and not workdir.exists()


_CACHED_PROGRAM = """
import sys
import jax
import jax.numpy as jnp
from astor_jax import main

events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
main.enable_compilation_cache(sys.argv[1])
out = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((8, 8)))
print(float(out), events.count("/jax/compilation_cache/cache_hits"))
"""


def test_compilation_cache_serves_a_second_process(tmp_path):
  """The first process compiles and stores the program; the second loads it (a cache hit)."""
  cache = tmp_path / "xla_cache"

  def run():
    result = subprocess.run([sys.executable, "-c", _CACHED_PROGRAM, str(cache)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    value, hits = result.stdout.split()
    return float(value), int(hits)

  first, hits_first = run()
  assert hits_first == 0 and any(cache.iterdir())
  second, hits_second = run()
  assert hits_second >= 1 and second == first
