r"""Shared builder of the baseline and ablation configs: a base config plus a method.

Used by every file under configs/baselines/ and configs/ablations/ as
`method_configs.parse_arg(arg, __file__, ...)`; the configs folder is the one
that holds the calling file's folder.

Every file under configs/baselines/ and configs/ablations/ starts from a base
config (configs/astor.py by default, so there is one source of truth for the
model, data, sampler, RL and eval settings) and changes only the fields that
define its method. The text after the colon of `--config=FILE:ARG` is a
comma-separated list of tokens:

  smoke | default             a variant of configs/astor.py (the base).
  base=FILE[:VARIANT]         another base config, FILE relative to configs/ (or
                              absolute), e.g.
                              base=paper/qwen25_coder_7b.py:8xh100 (the real models).
  NAME=VALUE                  an option the method file declares (e.g. order=...).
  WORD                        the method's positional choice (e.g. the specialist's
                              task), for files that take one.

Examples:

  --config=configs/baselines/specialist.py:code_gen,smoke
  --config=configs/baselines/curriculum.py:order=code_io>commit_msg>code_gen>test_gen
  --config=configs/ablations/no_synergy.py:base=paper/qwen3_8b.py:v5p-128

Equal compute. A method's rollout budget is
`rl.steps x rl.batch_prompts x rl.group_size` rollouts (per seed). Every
multi-task method keeps the base's three fields, so it spends exactly the
base's budget. The four per-task specialists share that one budget: each keeps
`rl.steps` and `rl.group_size` and takes `rl.batch_prompts / K` prompts per
step, so the four runs together roll out what one multi-task run does, each
task gets the rollouts the uniform joint run gives it, and every run takes the
same number of optimizer steps (`astor_jax.reproduce.rollout_budget`; the
reproduction suite checks the totals before it starts anything).
"""

import importlib.util
import os

import ml_collections

DEFAULT_BASE = "astor.py"
BASE_VARIANTS = ("default", "smoke")


def configs_dir_of(method_file: str) -> str:
  """The configs folder of a method file: the parent of the folder that holds it."""
  return os.path.dirname(os.path.dirname(os.path.abspath(method_file)))


def load_module(path: str):
  """Executes the Python file at `path` as a fresh module (config files are not a package)."""
  name = "_config_" + os.path.abspath(path).replace(os.sep, "_").replace(".", "_")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config_file(relative_path: str, variant: str | None = None, *,
                     configs_dir: str) -> ml_collections.ConfigDict:
  """`get_config(variant)` of the config file at `<configs_dir>/<relative_path>`.

  Args:
    relative_path: path under configs/, e.g. "astor.py" or "paper/qwen3_8b.py"
      (an absolute path is used as it is).
    variant: the text after the colon (None: the file's default).
    configs_dir: the configs folder.

  Returns:
    The config.

  Raises:
    ValueError: the file does not exist or has no `get_config`.
  """
  path = os.path.normpath(os.path.join(configs_dir, relative_path))
  if not os.path.isfile(path):
    raise ValueError(f"base={relative_path}: no such config file under configs/; "
                     "name one such as astor.py or paper/qwen25_coder_7b.py")
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise ValueError(f"base={relative_path}: the file defines no get_config(arg)")
  return module.get_config(variant)


def parse_arg(arg: str | None, method_file: str, *, options: dict[str, str] | None = None,
              positional: tuple[str, tuple[str, ...]] | None = None,
              ) -> tuple[ml_collections.ConfigDict, dict[str, str]]:
  """Splits a method file's config arg into its base config and its own tokens.

  Args:
    arg: the text after the colon, or None.
    method_file: the calling config file (its `__file__`).
    options: NAME -> default for the NAME=VALUE tokens the file accepts.
    positional: (name, choices) when the file takes one bare WORD; it must be given.

  Returns:
    (base config, {option or positional name: value}); the base config's
    `variant` field records the whole arg.

  Raises:
    ValueError: an unknown token, a repeated one, or a missing/invalid
      positional, naming it and the accepted forms.
  """
  configs_dir = configs_dir_of(method_file)
  file_name = os.path.relpath(os.path.abspath(method_file), configs_dir)
  options = dict(options or {})
  values = dict(options)
  base_file, base_variant = DEFAULT_BASE, None
  seen: set[str] = set()
  usage = _usage(file_name, options, positional)
  for token in [t.strip() for t in (arg or "").split(",") if t.strip()]:
    key, has_value, value = token.partition("=")
    if has_value:
      if key == "base":
        base_file, _, variant = value.partition(":")
        base_variant = variant or None
      elif key in options:
        values[key] = value
      else:
        raise ValueError(f"configs/{file_name}: unknown option {key!r} in {token!r}; {usage}")
    elif token in BASE_VARIANTS:
      key, base_file, base_variant = "base", DEFAULT_BASE, token
    elif positional is not None and token in positional[1]:
      key = positional[0]
      values[key] = token
    else:
      raise ValueError(f"configs/{file_name}: unknown token {token!r}; {usage}")
    if key in seen:
      raise ValueError(f"configs/{file_name}: {key} given twice in {arg!r}; {usage}")
    seen.add(key)
  if positional is not None and positional[0] not in values:
    raise ValueError(f"configs/{file_name}: missing the {positional[0]}; {usage}")
  base = load_config_file(base_file, base_variant, configs_dir=configs_dir)
  base.variant = f"{file_name}:{arg or ''}"
  return base, values


def _usage(file_name: str, options: dict[str, str],
           positional: tuple[str, tuple[str, ...]] | None) -> str:
  parts = []
  if positional is not None:
    parts.append(f"{positional[0]} (one of {'|'.join(positional[1])})")
  parts += [f"{k}=VALUE (default {v!r})" for k, v in options.items()]
  parts.append(f"{'|'.join(BASE_VARIANTS)} or base=FILE[:VARIANT]")
  return (f"use --config=configs/{file_name}:TOKEN[,TOKEN...] with tokens "
          + ", ".join(parts))


def use_fixed_kl(config: ml_collections.ConfigDict) -> None:
  """One uniform KL coefficient for every task (`astor.init_beta`), as in plain GRPO."""
  config.astor.calibrate = False
