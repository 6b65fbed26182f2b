r"""Weight merging of fine-tuned models: the paper's "model merging" baseline.

K models fine-tuned from one base theta_0 (the per-task specialists, all
warm-started from the same SFT params) merge into one:

  uniform average   theta = (1 / K) * sum_k theta_k
  task arithmetic   theta = theta_0 + lambda * sum_k (theta_k - theta_0)
                    (Ilharco et al., "Editing Models with Task Arithmetic",
                    ICLR 2023, https://arxiv.org/abs/2212.04089)

Task arithmetic with lambda = 1/K is the uniform average. Arithmetic runs in
float32 (float64 for float64 params), one parameter at a time, and each result
is cast back to its base's dtype, so bfloat16 checkpoints merge without
accumulating rounding error and the host holds the K inputs plus one float32
parameter.

Every model must have the base's tree of parameters and shapes: a missing,
extra or misshapen parameter is a `MergeError` naming its path.

Command line:

  python -m astor_jax.merge --method=task_arithmetic --scale=0.5 --base=runs/s0/sft \
      --models=runs/s0/spec_io,runs/s0/spec_gen,runs/s0/spec_test,runs/s0/spec_commit \
      --out=runs/s0/merged_model

A source (`--base`, each of `--models`) is one of:

  run workdir        a finished job's directory (config.json + checkpoints/): its
                     final RL params, i.e. the checkpoint of step `rl.steps`.
  checkpoint dir     an orbax directory of our checkpoints (step subdirectories),
                     e.g. the SFT warm start `<workdir>/sft` or `sft.cache_dir`:
                     the params of its latest step.
  HF checkpoint      a Hugging Face directory (config.json + *.safetensors), e.g.
                     the instruct model the paper-scale runs start from.

Only the params are read (a partial restore: no optimizer moments). `--out`
becomes a Hugging Face checkpoint directory (config.json, safetensors, the
tokenizer, and `merge.json` recording the method, scale and sources), written
to a temporary name and renamed, so it is either complete or absent. Evaluate
it with configs/baselines/merging.py. The architecture and tokenizer come from
the first source that has them (run workdirs and HF checkpoints do; a bare
checkpoint dir does not).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

METHODS = ("uniform", "task_arithmetic")
MERGE_FILE = "merge.json"


class MergeError(ValueError):
  """Models that cannot be merged; the message names the parameter path."""


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                  for k in path)


def _flat(tree: Any) -> dict[str, Any]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {_path_str(path): leaf for path, leaf in leaves}


def check_compatible(reference: Any, others: Sequence[Any],
                     names: Sequence[str] | None = None) -> None:
  """Raises MergeError unless every tree in `others` has `reference`'s paths and shapes.

  Args:
    reference: the params every other model must match (the base).
    others: the models to merge.
    names: a label per model for messages (default "model 0", "model 1", ...).
  """
  names = list(names) if names is not None else [f"model {i}" for i in range(len(others))]
  want = {path: np.shape(leaf) for path, leaf in _flat(reference).items()}
  for name, tree in zip(names, others):
    got = {path: np.shape(leaf) for path, leaf in _flat(tree).items()}
    missing = sorted(set(want) - set(got))
    if missing:
      raise MergeError(f"{name}: parameter {missing[0]} is missing "
                       f"({len(missing)} missing); merge only models of one architecture")
    extra = sorted(set(got) - set(want))
    if extra:
      raise MergeError(f"{name}: unexpected parameter {extra[0]} ({len(extra)} extra); "
                       "merge only models of one architecture")
    for path, shape in want.items():
      if got[path] != shape:
        raise MergeError(f"{name}: parameter {path} has shape {got[path]}, the base has "
                         f"{shape}; merge only models of one architecture")


def _work_dtype(dtype) -> np.dtype:
  return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def task_arithmetic(base: Any, models: Sequence[Any], scale: float,
                    names: Sequence[str] | None = None) -> Any:
  """theta_0 + scale * sum_k (theta_k - theta_0), parameter by parameter.

  Args:
    base: the common starting params theta_0 (a pytree of arrays).
    models: the K fine-tuned params, each with `base`'s structure and shapes.
    scale: lambda.
    names: labels of `models` for error messages.

  Returns:
    A pytree with `base`'s structure of numpy arrays in `base`'s dtypes.

  Raises:
    MergeError: no models, or a structure/shape mismatch (naming the path).
  """
  if not models:
    raise MergeError("no models to merge; pass at least one")
  check_compatible(base, models, names)
  flat_models = [_flat(m) for m in models]

  def merge_leaf(key_path, leaf):
    path = _path_str(key_path)
    work = _work_dtype(leaf.dtype)
    theta_0 = np.asarray(leaf, dtype=work)
    delta = np.zeros_like(theta_0)
    for flat in flat_models:
      delta += np.asarray(flat[path], dtype=work) - theta_0
    return (theta_0 + work.type(scale) * delta).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(merge_leaf, base)


def uniform_average(models: Sequence[Any], names: Sequence[str] | None = None) -> Any:
  """(1 / K) * sum_k theta_k, parameter by parameter, in the first model's dtypes.

  Raises:
    MergeError: no models, or a structure/shape mismatch (naming the path).
  """
  if not models:
    raise MergeError("no models to merge; pass at least one")
  names = list(names) if names is not None else [f"model {i}" for i in range(len(models))]
  check_compatible(models[0], models[1:], names[1:])
  flat_models = [_flat(m) for m in models]

  def merge_leaf(key_path, leaf):
    path = _path_str(key_path)
    work = _work_dtype(leaf.dtype)
    total = np.zeros(np.shape(leaf), dtype=work)
    for flat in flat_models:
      total += np.asarray(flat[path], dtype=work)
    return (total / work.type(len(models))).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(merge_leaf, models[0])


def merge(method: str, models: Sequence[Any], base: Any = None, scale: float | None = None,
          names: Sequence[str] | None = None) -> Any:
  """`uniform_average` or `task_arithmetic` by name (the CLI's and the suite's entry).

  Raises:
    MergeError: an unknown method, task arithmetic without a base or scale, or
      incompatible models.
  """
  if method == "uniform":
    return uniform_average(models, names)
  if method == "task_arithmetic":
    if base is None or scale is None:
      raise MergeError("task_arithmetic needs the base params and a scale; pass --base and "
                       "--scale")
    return task_arithmetic(base, models, scale, names)
  raise MergeError(f"--method: unknown merge method {method!r}; use one of {', '.join(METHODS)}")


# ------------------------------------------------------------------ reading and writing models


@dataclasses.dataclass
class Source:
  """A model to merge, read from disk.

  Attributes:
    path: where it came from.
    params: its params, host numpy arrays.
    model_config: its `ModelConfig`, or None (a bare checkpoint dir).
    tokenizer_dir: a directory holding its tokenizer, or None.
  """

  path: str
  params: Any
  model_config: Any = None
  tokenizer_dir: str | None = None


def _is_hf_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json")) and any(
      f.endswith(".safetensors") for f in os.listdir(path))


def _is_run_dir(path: str) -> bool:
  from astor_jax.train import loop

  return os.path.isfile(os.path.join(path, loop.CONFIG_FILE)) and not _is_hf_dir(path)


def _find_params_key(tree: Any, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
  """The key path of the first `params` mapping (breadth first) in a checkpoint's tree."""
  if not isinstance(tree, dict):
    return None
  if isinstance(tree.get("params"), dict):
    return path + ("params",)
  for key, value in tree.items():
    found = _find_params_key(value, path + (key,))
    if found is not None:
      return found
  return None


def read_checkpoint_params(directory: str, step: int | None = None) -> Any:
  """The params of one checkpoint of ours (`train/checkpoint.py` layout), as numpy.

  Args:
    directory: the checkpoint directory (step subdirectories).
    step: which step; None for the latest.

  Returns:
    The params pytree (nested dicts of numpy arrays).

  Raises:
    MergeError: no such checkpoint, or no params in it.
  """
  import orbax.checkpoint as ocp

  from astor_jax.train import checkpoint as ckpt_lib

  handlers = {ckpt_lib.STATE_ITEM: ocp.PyTreeCheckpointHandler(),
              ckpt_lib.HOST_ITEM: ocp.JsonCheckpointHandler()}
  manager = ocp.CheckpointManager(directory, item_names=tuple(handlers), item_handlers=handlers)
  try:
    steps = sorted(manager.all_steps())
    if not steps:
      raise MergeError(f"{directory}: no complete checkpoint; pass a finished run's "
                       "workdir, a checkpoint directory or a Hugging Face checkpoint")
    step = steps[-1] if step is None else step
    if step not in steps:
      raise MergeError(f"{directory}: no checkpoint of step {step} (it has {steps}); "
                       "let the run finish first (rerun its command to resume it)")
    tree = manager.item_metadata(step)[ckpt_lib.STATE_ITEM]
    tree = getattr(tree, "tree", tree)
    key = _find_params_key(tree)
    if key is None:
      raise MergeError(f"{directory}: checkpoint {step} holds no params")
    subtree = tree
    for k in key:
      subtree = subtree[k]
    template = jax.tree.map(lambda m: np.zeros((), m.dtype), subtree)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), template)
    for k in reversed(key):
      template, restore_args = {k: template}, {k: restore_args}
    restored = manager.restore(step, args=ocp.args.Composite(**{
        ckpt_lib.STATE_ITEM: ocp.args.PyTreeRestore(template, restore_args=restore_args,
                                                    partial_restore=True)}))
  finally:
    manager.close()
  params = restored[ckpt_lib.STATE_ITEM]
  for k in key:
    params = params[k]
  return jax.tree.map(np.asarray, params)


def _run_model(run_config: dict[str, Any], workdir: str) -> tuple[Any, str]:
  """(ModelConfig, tokenizer dir) of a run, built the way the job builds them."""
  from astor_jax.data.tokenizer import load_tokenizer
  from astor_jax.model import ModelConfig, get_preset
  from astor_jax.model.hf import read_hf_config
  from astor_jax.train import loop

  model, data = run_config["model"], run_config["data"]
  if data.get("tokenizer_path"):
    tokenizer_dir = data["tokenizer_path"]
  elif model["preset"] == "hf":
    tokenizer_dir = model["hf_path"]
  else:
    tokenizer_dir = os.path.join(workdir, loop.TOKENIZER_DIR)
  if model["preset"] == "hf":
    config = ModelConfig.from_hf_config(read_hf_config(model["hf_path"]),
                                        param_dtype=model["param_dtype"], dtype=model["dtype"])
  else:
    config = get_preset(model["preset"], vocab_size=len(load_tokenizer(tokenizer_dir)),
                        param_dtype=model["param_dtype"], dtype=model["dtype"])
  return config, tokenizer_dir


def read_source(path: str) -> Source:
  """Reads the params (and, where known, architecture and tokenizer) of one source.

  Raises:
    MergeError: `path` is none of the three kinds, or the run is not finished.
  """
  from astor_jax.train import loop

  if not os.path.isdir(path):
    raise MergeError(f"{path}: not a directory; pass a run workdir, a checkpoint directory "
                     "or a Hugging Face checkpoint directory")
  if _is_hf_dir(path):
    from astor_jax.model.hf import load_pretrained, read_hf_config

    dtype = read_hf_config(path).get("torch_dtype") or "float32"
    model, params, _ = load_pretrained(path, dtype=dtype, load_tokenizer=False)
    has_tokenizer = os.path.exists(os.path.join(path, "tokenizer.json"))
    return Source(path, jax.tree.map(np.asarray, params), model.config,
                  path if has_tokenizer else None)
  if _is_run_dir(path):
    with open(os.path.join(path, loop.CONFIG_FILE), encoding="utf-8") as f:
      run_config = json.load(f)
    if "rl" not in run_config["phases"]:
      raise MergeError(f"{path}: the run has no rl phase; pass its warm start's checkpoint "
                       f"directory ({os.path.join(path, 'sft')}) instead")
    params = read_checkpoint_params(os.path.join(path, loop.CHECKPOINT_DIR),
                                    step=int(run_config["rl"]["steps"]))
    model_config, tokenizer_dir = _run_model(run_config, path)
    return Source(path, params, model_config, tokenizer_dir)
  return Source(path, read_checkpoint_params(path))


def write_merged(out: str, params: Any, model_config: Any, tokenizer_dir: str | None,
                 record: dict[str, Any]) -> None:
  """Writes `params` as a Hugging Face checkpoint at `out`, atomically (temp dir + rename)."""
  from astor_jax.data.tokenizer import load_tokenizer
  from astor_jax.model import Transformer
  from astor_jax.model.hf import save_pretrained

  tmp = out.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir else None
  save_pretrained(tmp, Transformer(model_config), params, tokenizer)
  with open(os.path.join(tmp, MERGE_FILE), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)
  shutil.rmtree(out, ignore_errors=True)
  os.replace(tmp, out)


def merge_sources(method: str, models: Sequence[str], out: str, base: str | None = None,
                  scale: float | None = None) -> dict[str, Any]:
  """Reads the sources, merges them and writes `out`; returns the record in merge.json.

  Raises:
    MergeError: bad arguments, unreadable sources or incompatible models.
  """
  if method not in METHODS:
    raise MergeError(f"--method: unknown merge method {method!r}; use one of "
                     f"{', '.join(METHODS)}")
  if method == "task_arithmetic" and (base is None or scale is None):
    raise MergeError("task_arithmetic needs --base (the common starting point) and --scale")
  sources = [read_source(m) for m in models]
  base_source = read_source(base) if method == "task_arithmetic" else None
  known = [s for s in sources + ([base_source] if base_source else []) if s.model_config]
  if not known:
    raise MergeError("no source says which architecture the params have; pass at least one "
                     "run workdir or Hugging Face checkpoint")
  tokenizer_dir = next((s.tokenizer_dir for s in known if s.tokenizer_dir), None)
  merged = merge(method, [s.params for s in sources],
                 base=base_source.params if base_source else None, scale=scale,
                 names=[s.path for s in sources])
  record = {"method": method, "scale": scale if method == "task_arithmetic" else
            1.0 / len(sources), "base": base, "models": list(models)}
  write_merged(out, merged, known[0].model_config, tokenizer_dir, record)
  return record


def main(argv: Sequence[str]) -> int:
  """The command line (module doc); returns the exit status."""
  usage = ("usage: python -m astor_jax.merge --method=uniform|task_arithmetic "
           "--models=SRC[,SRC...] --out=DIR [--base=SRC --scale=LAMBDA]")
  args: dict[str, str] = {}
  for arg in argv:
    key, eq, value = arg.partition("=")
    if not eq or key not in ("--method", "--models", "--out", "--base", "--scale"):
      print(f"astor_jax.merge: error: unexpected argument {arg!r}; {usage}", file=sys.stderr)
      return 2
    args[key[2:]] = value
  for required in ("method", "models", "out"):
    if not args.get(required):
      print(f"astor_jax.merge: error: --{required}: missing; {usage}", file=sys.stderr)
      return 2
  try:
    scale = float(args["scale"]) if "scale" in args else None
  except ValueError:
    print(f"astor_jax.merge: error: --scale: {args['scale']!r} is not a number; pass e.g. "
          "--scale=0.5", file=sys.stderr)
    return 2
  try:
    record = merge_sources(args["method"], [m for m in args["models"].split(",") if m],
                           args["out"], base=args.get("base"), scale=scale)
  except (MergeError, FileNotFoundError) as e:
    print(f"astor_jax.merge: error: {e}", file=sys.stderr)
    return 2
  print(f"astor_jax.merge: wrote {args['out']} ({record['method']}, scale "
        f"{record['scale']:g}, {len(record['models'])} models)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
