"""Validation of a job config at the boundary, before anything is written.

Every problem is reported as one `ConfigError` naming the field and the fix;
`main.py` prints it on one line and exits with status 2. Checks are a flat table
so that each module's fields are validated in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config field is missing or invalid; the message names it and the fix."""


_MISSING = object()
# rl.old_logprobs: where the ratio's behaviour log-probs come from (configs/astor.py).
OLD_LOGPROBS = ("auto", "batch", "current")


def get_field(config: ml_collections.ConfigDict, path: str) -> Any:
  node: Any = config
  for part in path.split("."):
    if isinstance(node, ml_collections.ConfigDict) and part in node:
      node = node[part]
    else:
      return _MISSING
  return node


@dataclasses.dataclass(frozen=True)
class Check:
  path: str
  ok: Callable[[Any], bool]
  expected: str


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive_int(path: str) -> Check:
  return Check(path, lambda v: _is_int(v) and v > 0, "a positive integer")


def nonneg_int(path: str) -> Check:
  return Check(path, lambda v: _is_int(v) and v >= 0, "an integer >= 0")


def positive(path: str) -> Check:
  return Check(path, lambda v: _is_num(v) and v > 0, "a number > 0")


def nonneg(path: str) -> Check:
  return Check(path, lambda v: _is_num(v) and v >= 0, "a number >= 0")


def in_range(path: str, lo: float, hi: float) -> Check:
  return Check(path, lambda v: _is_num(v) and lo <= v <= hi, f"a number in [{lo}, {hi}]")


def one_of(path: str, choices: Sequence[str]) -> Check:
  return Check(path, lambda v: v in choices, "one of " + ", ".join(map(repr, choices)))


def boolean(path: str) -> Check:
  return Check(path, lambda v: isinstance(v, bool), "true or false")


def string(path: str) -> Check:
  return Check(path, lambda v: isinstance(v, str), "a string")


def _is_weights(v) -> bool:
  return (isinstance(v, (tuple, list)) and len(v) == 3 and all(_is_num(w) and w >= 0 for w in v)
          and sum(v) > 0)


DTYPES = ("float32", "bfloat16", "float16")
KNOWN_TASKS = ("code_io", "code_gen", "test_gen", "commit_msg")
KNOWN_PHASES = ("sft", "rl", "eval")

CHECKS: tuple[Check, ...] = (
    nonneg_int("seed"),
    Check("phases", lambda v: isinstance(v, (tuple, list)) and len(v) > 0
          and all(p in KNOWN_PHASES for p in v), "a non-empty list drawn from sft, rl, eval"),
    nonneg("max_wall_time_s"),
    string("compilation_cache_dir"),
    boolean("cpu_resident_buffers"),
    string("model.preset"),
    string("model.hf_path"),
    one_of("model.param_dtype", DTYPES),
    one_of("model.dtype", DTYPES),
    one_of("model.remat_policy",
           ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")),
    nonneg_int("model.logprob_chunk_size"),
    one_of("data.source", ("tiny_world", "files")),
    nonneg_int("data.world_seed"),
    positive_int("data.train_per_task"),
    positive_int("data.eval_per_task"),
    positive_int("data.vocab_size"),
    Check("data.difficulties", lambda v: isinstance(v, (tuple, list)) and len(v) > 0
          and all(_is_int(d) and 1 <= d <= 4 for d in v),
          "a non-empty list of tiny-world levels from 1, 2, 3, 4"),
    string("data.data_dir"),
    Check("tasks", lambda v: isinstance(v, (tuple, list)) and len(v) > 0
          and len(set(v)) == len(v) and all(t in KNOWN_TASKS for t in v),
          "a non-empty list of distinct names from " + ", ".join(KNOWN_TASKS)),
    boolean("task_opts.code_gen_partial_credit"),
    nonneg_int("task_opts.test_gen_max_mutants"),
    Check("task_opts.test_gen_weights", _is_weights,
          "three numbers >= 0 with a positive sum (line, branch, mutation)"),
    Check("task_opts.commit_weights", _is_weights,
          "three numbers >= 0 with a positive sum (BLEU, ROUGE-L, METEOR)"),
    positive_int("task_opts.commit_max_diff_chars"),
    boolean("task_opts.meteor_wordnet"),
    boolean("task_opts.rouge_stemmer"),
    nonneg("sampler.temperature"),
    in_range("sampler.top_p", 0.0, 1.0),
    nonneg_int("sampler.top_k"),
    positive_int("sampler.max_new_tokens"),
    Check("sampler.prompt_buckets", lambda v: isinstance(v, (tuple, list)) and len(v) > 0
          and all(_is_int(b) and b > 0 for b in v) and list(v) == sorted(set(v)),
          "a non-empty increasing list of positive integers"),
    positive_int("execution.num_workers"),
    positive("execution.timeout_s"),
    positive_int("execution.memory_mb"),
    one_of("execution.isolation", ("auto", "namespaces", "rlimits")),
    Check("execution.preload", lambda v: isinstance(v, (tuple, list))
          and all(isinstance(m, str) and m for m in v), "a list of module names"),
    positive_int("rl.steps"),
    positive_int("rl.batch_prompts"),
    Check("rl.group_size", lambda v: _is_int(v) and v >= 2,
          "an integer >= 2 (group-relative advantages need two rollouts)"),
    one_of("rl.advantage", ("grpo", "dr_grpo", "rloo")),
    in_range("rl.clip_eps", 0.0, 1.0),
    one_of("rl.loss_aggregation", ("token_mean", "seq_mean_token_mean", "dr_grpo")),
    nonneg("rl.entropy_coef"),
    one_of("rl.kl_estimator", ("k1", "k2", "k3")),
    positive("rl.learning_rate"),
    nonneg("rl.weight_decay"),
    positive("rl.max_grad_norm"),
    positive_int("rl.minibatches"),
    positive_int("rl.microbatches"),
    one_of("astor.schedule", ("astor", "uniform", "curriculum", "specialist")),
    positive("astor.tau"),
    in_range("astor.floor", 0.0, 1.0),
    in_range("astor.ema_decay", 0.0, 1.0),
    nonneg("astor.potential_weight"),
    nonneg("astor.progress_weight"),
    one_of("astor.progress_mode", ("absolute", "signed")),
    nonneg("astor.synergy_weight"),
    positive_int("astor.synergy_interval"),
    in_range("astor.synergy_ema_decay", 0.0, 1.0),
    nonneg("astor.priority_staleness_weight"),
    positive_int("astor.priority_staleness_horizon"),
    positive("astor.priority_temperature"),
    nonneg("astor.zero_variance_penalty"),
    nonneg_int("astor.synergy_sketch_dim"),
    boolean("astor.calibrate"),
    nonneg("astor.init_beta"),
    positive("astor.target_kl"),
    Check("astor.target_kl_per_task", lambda v: isinstance(v, (tuple, list))
          and all(_is_num(x) and x > 0 for x in v),
          "a list of numbers > 0, one per task (or empty: target_kl for every task)"),
    positive("astor.kl_horizon"),
    positive("astor.kl_error_clip"),
    nonneg("astor.utility_kl_strength"),
    one_of("astor.kl_direction", ("loosen_high_utility", "tighten_high_utility")),
    nonneg("astor.min_beta"),
    positive("astor.max_beta"),
    nonneg_int("sft.steps"),
    positive_int("sft.batch_size"),
    positive("sft.learning_rate"),
    nonneg_int("sft.warmup_steps"),
    string("sft.cache_dir"),
    positive_int("sft.checkpoint_every_steps"),
    one_of("eval.split", ("validation", "test")),
    nonneg("eval.temperature"),
    positive_int("eval.max_examples_per_task"),
    boolean("eval.sft_baseline"),
    Check("mesh.data", lambda v: _is_int(v) and (v == -1 or v > 0), "-1 or a positive integer"),
    positive_int("mesh.fsdp"),
    positive_int("mesh.tensor"),
    positive_int("checkpoint.every_steps"),
    positive_int("checkpoint.keep_last"),
    nonneg_int("checkpoint.keep_best"),
    boolean("checkpoint.async_save"),
    positive_int("log.every_steps"),
    boolean("log.tensorboard"),
    boolean("log.progress_bar"),
)


def _cross_checks(config: ml_collections.ConfigDict) -> None:
  if config.model.preset == "hf" and not config.model.hf_path:
    raise ConfigError("config.model.hf_path: empty while model.preset='hf'; "
                      "set --config.model.hf_path=/path/to/hf_checkpoint_dir")
  if config.astor.min_beta > config.astor.max_beta:
    raise ConfigError(
        "config.astor.min_beta: larger than astor.max_beta; make min_beta <= max_beta")
  if config.astor.schedule == "specialist" and config.astor.specialist_task not in config.tasks:
    raise ConfigError(
        f"config.astor.specialist_task: {config.astor.specialist_task!r} is not one of "
        f"config.tasks {tuple(config.tasks)}; set --config.astor.specialist_task=<task>")
  per_task = config.astor.target_kl_per_task
  if per_task and len(per_task) != len(config.tasks):
    raise ConfigError(f"config.astor.target_kl_per_task: {len(per_task)} values for "
                      f"{len(config.tasks)} tasks; give one per task or leave it empty")
  if config.rl.batch_prompts % config.rl.minibatches:
    raise ConfigError("config.rl.minibatches: must divide rl.batch_prompts "
                      f"({config.rl.batch_prompts}); pick a divisor")
  _check_scale_out_fields(config)


def _check_scale_out_fields(config: ml_collections.ConfigDict) -> None:
  """Fields the paper-scale configs add (configs/paper/_base.py); checked when present."""
  required = get_field(config, "required_fields")
  for path in () if required is _MISSING else required:
    value = get_field(config, path)
    if value is _MISSING or (isinstance(value, str) and not value.strip()):
      raise ConfigError(f"config.{path}: empty, but this config requires it (required_fields); "
                        f"set --config.{path}=<local path>")
  topology = get_field(config, "topology")
  if topology is not _MISSING:
    from astor_jax import topology as topology_lib

    try:
      topology_lib.parse(str(topology))
    except ValueError as e:
      raise ConfigError(f"config.topology: {e}") from None
  for path, check in (("model.shape_preset", string("model.shape_preset")),
                      ("model.scan_layers", boolean("model.scan_layers")),
                      ("rl.microbatches", positive_int("rl.microbatches")),
                      ("sampler.chunk_rows", nonneg_int("sampler.chunk_rows")),
                      ("sampler.host_threads", nonneg_int("sampler.host_threads")),
                      ("rl.old_logprobs", one_of("rl.old_logprobs", OLD_LOGPROBS))):
    value = get_field(config, path)
    if value is not _MISSING and not check.ok(value):
      raise ConfigError(f"config.{path}: got {value!r}, expected {check.expected}; "
                        f"fix with --config.{path}=<value>")
  chunk_rows = get_field(config, "sampler.chunk_rows")
  if chunk_rows is not _MISSING and 0 < chunk_rows < config.rl.group_size:
    raise ConfigError(f"config.sampler.chunk_rows: {chunk_rows} rows cannot hold one group of "
                      f"rl.group_size={config.rl.group_size} rollouts; use 0 (auto) or at "
                      "least the group size")
  if get_field(config, "rl.old_logprobs") == "current" and config.rl.minibatches != 1:
    raise ConfigError(f"config.rl.old_logprobs: 'current' needs rl.minibatches=1 (with "
                      f"{config.rl.minibatches} minibatches the policy moves before the later "
                      "ones); use 'batch' or 'auto'")
  microbatches = get_field(config, "rl.microbatches")
  rows = config.rl.batch_prompts * config.rl.group_size // config.rl.minibatches
  if microbatches is not _MISSING and rows % microbatches:
    raise ConfigError(f"config.rl.microbatches: must divide the {rows} rollout rows of an "
                      "optimizer minibatch (batch_prompts x group_size / minibatches); "
                      "pick a divisor")


def validate(config: ml_collections.ConfigDict, checks: Sequence[Check] = CHECKS) -> None:
  """Raises ConfigError for the first missing or invalid field."""
  for check in checks:
    value = get_field(config, check.path)
    if value is _MISSING:
      raise ConfigError(f"config.{check.path}: missing; add it to your config file "
                        f"(expected {check.expected}; see configs/astor.py)")
    try:
      ok = check.ok(value)
    except Exception:  # noqa: BLE001 - a check that cannot even run is a failed check
      ok = False
    if not ok:
      raise ConfigError(f"config.{check.path}: got {value!r}, expected {check.expected}; "
                        f"fix with --config.{check.path}=<value>")
  _cross_checks(config)
