r"""The job: SFT warm start -> ASTOR RL -> evaluation, resumable at any step.

  python -m astor_jax.main --config=configs/astor.py --workdir=runs/astor

`run(config, workdir)` is what the CLI calls; `train(config, workdir)` does
the work and returns an `Outcome` (tests call it in-process).

One RL step (`RLPhase.step`):

  1. schedule      the jitted schedule reads the UtilityState and returns the
                   task budgets and the (task, prompt) of every prompt slot;
  2. sample        the sampler draws G completions per prompt (KV-cache decode);
  3. detokenize    completions go to the host as text;
  4. score         rewards are submitted to the execution pool (a future) ...
  5. log-probs     ... while the device computes the reference and old-policy
                   log-probs of the same rows;
  6. train         once the rewards are in, the jitted train step updates the
                   policy and the UtilityState (budgets, beta_k, synergy, ...).

Each phase's wall time is logged as `time/<phase>`.

Randomness: every random number comes from keys derived from `config.seed`
and the step (`fold_in`) or from the checkpointed states (TrainState.rng,
UtilityState.rng), never from the host clock, so an interrupted and resumed
run reproduces an uninterrupted one bit for bit on CPU (sandbox timeouts
aside: a program that sometimes finishes and sometimes times out scores
differently).

Guards: a non-finite reward or reference/old log-prob skips the step before
the update; a non-finite loss or gradient norm from the train step discards
its result (the step is compiled without buffer donation so the previous
states survive). Either way the step is logged with `skipped = 1` and the
reason is printed. A failed scoring call (sandbox crash) is reward 0 with
the reason, counted per task in `results/reward_reasons.json`.

Stopping: SIGTERM/SIGINT (preemption, Ctrl-C) and `max_wall_time_s` save a
checkpoint and stop cleanly between steps; rerunning the same command resumes
(SFT from its cache, RL from the latest checkpoint, finished phases skipped).
A signal exits with status 128 + signal number, the wall-time limit with 0.

Workdir layout:

  config.json          the config of the run (a resume must match it)
  tokenizer/           the tiny-world tokenizer (trained once)
  tfds/                prepared datasets (unless data.data_dir is set)
  sft/                 SFT checkpoints; the last one is the cached warm start
  checkpoints/         RL checkpoints (keep-last-N + keep-best by mean reward)
  metrics.jsonl        one record per logged step (phases sft, rl, eval)
  tensorboard/         the same scalars as TensorBoard events
  plots/               budgets, beta_k, reward per task, synergy heatmap (PNG)
  results/             eval.json, results.md, results.csv, reward_reasons.json
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from astor_jax import config as config_lib
from astor_jax.astor import schedule as schedule_lib
from astor_jax.astor import utility as utility_lib
from astor_jax.astor.hparams import astor_hparams
from astor_jax.eval import plots as plots_lib
from astor_jax.eval import runner as eval_runner
from astor_jax.eval import table as table_lib
from astor_jax.execution import ExecutionPool
from astor_jax.model import Transformer, get_preset, init_params, make_mesh, param_shardings
from astor_jax.rollout.rows import to_batch_rows
from astor_jax.rollout.sampler import Sampler
from astor_jax.tasks import corpus, registry
from astor_jax.tasks.base import Reward, Task, score_batch, zero
from astor_jax.train import checkpoint as ckpt_lib
from astor_jax.train import observe, sft
from astor_jax.train import state as state_lib
from astor_jax.train import step as step_lib
from astor_jax.train.batch import BATCH_AXES, Batch, as_device_batch, check_batch

CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
REASONS_FILE = "reward_reasons.json"

# Fields that may change between a run and its resumption: how long it runs,
# what it logs and keeps, how evaluation is done, and how many sandbox workers
# score (results do not depend on it).
RESUMABLE_CHANGES = ("phases", "max_wall_time_s", "rl.steps", "log.", "checkpoint.", "eval.",
                     "execution.num_workers", "sft.cache_dir", "sft.checkpoint_every_steps",
                     "data.data_dir")

# Streams of randomness derived from config.seed (fold_in tags).
_INIT_KEY, _TRAIN_KEY, _SCHEDULE_KEY, _ROLLOUT_KEY, _EVAL_KEY = range(5)


@dataclasses.dataclass
class Outcome:
  """How a job ended.

  Attributes:
    finished: every phase ran to its end.
    stop_reason: why it stopped early ("SIGTERM", "max_wall_time_s"), or "".
    signal: the signal number that stopped it, or 0.
    rl_step: the RL steps taken so far.
    results: method -> task -> metrics, when the eval phase ran.
  """

  finished: bool
  stop_reason: str = ""
  signal: int = 0
  rl_step: int = 0
  results: dict[str, Any] | None = None


# ------------------------------------------------------------------ config of a resumed run


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in d.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def check_resume_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a run in `workdir` under a config that changes its results.

  Raises:
    ConfigError: naming the first differing field and the fix.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    saved = _flatten(json.load(f))
  now = _flatten(json.loads(config.to_json()))
  for field in sorted(set(saved) | set(now)):
    if any(field == c or (c.endswith(".") and field.startswith(c)) for c in RESUMABLE_CHANGES):
      continue
    if saved.get(field) != now.get(field):
      raise config_lib.ConfigError(
          f"config.{field}: {now.get(field)!r}, but the run in {workdir} was started with "
          f"{saved.get(field)!r}; pass --config.{field}={saved.get(field)!r} to resume it, "
          "or use a new --workdir")


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(tmp, path)


# ------------------------------------------------------------------ setup


class StopCheck:
  """Polled between steps: a caught signal or the wall-time limit says stop."""

  def __init__(self, guard: ckpt_lib.PreemptionGuard, max_wall_time_s: float):
    self.guard = guard
    self.start = time.monotonic()
    self.max_wall_time_s = max_wall_time_s

  def __call__(self) -> str | None:
    if self.guard.requested:
      return self.guard.name
    if self.max_wall_time_s and time.monotonic() - self.start >= self.max_wall_time_s:
      return "max_wall_time_s"
    return None


def _load_or_train_tokenizer(config: ml_collections.ConfigDict, workdir: str,
                             tasks: Mapping[str, Task], sources) -> Any:
  """The tokenizer: hf checkpoint's, data.tokenizer_path's, or trained once into the workdir."""
  from astor_jax.data.tokenizer import load_tokenizer

  if config.data.tokenizer_path:
    return load_tokenizer(config.data.tokenizer_path)
  if config.model.preset == "hf":
    return load_tokenizer(config.model.hf_path)
  out_dir = os.path.join(workdir, TOKENIZER_DIR)
  if not os.path.exists(os.path.join(out_dir, "tokenizer.json")):
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    corpus.train_tokenizer_on(tasks, _interleave(sources, "train"), int(config.data.vocab_size),
                              tmp)
    os.replace(tmp, out_dir)  # atomic: a killed run never leaves half a tokenizer
  return load_tokenizer(out_dir)


def _interleave(sources, split: str) -> list[dict[str, Any]]:
  """Examples of every task's `split`, round-robin over tasks (all of them kept)."""
  lists = [[src[split][i] for i in range(len(src[split]))] for src in sources.values()]
  out = []
  for i in range(max((len(x) for x in lists), default=0)):
    out.extend(x[i] for x in lists if i < len(x))
  return out


def _build_model(config: ml_collections.ConfigDict, tokenizer: Any, mesh) -> tuple[Any, Any]:
  """(model, params) from the preset (random init) or the HF checkpoint."""
  m = config.model
  if m.preset == "hf":
    from astor_jax.model.hf import load_pretrained

    model, params, _ = load_pretrained(m.hf_path, dtype=m.param_dtype, mesh=mesh,
                                       compute_dtype=m.dtype, load_tokenizer=False,
                                       remat_policy=m.remat_policy,
                                       scan_layers=bool(m.get("scan_layers", False)))
    return model, params
  try:
    model_config = get_preset(m.preset, vocab_size=len(tokenizer), param_dtype=m.param_dtype,
                              dtype=m.dtype, remat_policy=m.remat_policy,
                              scan_layers=bool(m.get("scan_layers", False)))
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  model = Transformer(model_config)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _INIT_KEY)
  return model, init_params(model, key, mesh)


@dataclasses.dataclass
class Job:
  """Everything the phases share, built once per process."""

  config: ml_collections.ConfigDict
  workdir: str
  mesh: Any
  tasks: dict[str, Task]
  sources: Any
  tokenizer: Any
  encode: eval_runner.PromptEncoder
  model: Any
  params_sharding: Any
  sampler: Sampler
  pool: ExecutionPool
  writer: observe.MetricWriter
  should_stop: StopCheck

  def log(self, message: str) -> None:
    tqdm.tqdm.write(f"astor_jax: {message}", file=sys.stderr)


# ------------------------------------------------------------------ RL


def _normalize_reason(reason: str) -> str:
  """A reward reason without its numbers, so that like failures count together."""
  return re.sub(r"\d+(\.\d+)?", "N", reason.splitlines()[0] if reason else "")[:80]


def _collect_rewards(future, examples: Sequence[Mapping[str, Any]]) -> list[Reward]:
  try:
    return future.result()
  except Exception as e:  # noqa: BLE001 - a failed scoring call is reward 0, never a crash
    return [zero(f"scoring failed: {type(e).__name__}") for _ in examples]


class RLPhase:
  """The RL loop over one job; `run()` trains from the latest checkpoint to `rl.steps`."""

  def __init__(self, job: Job, init_params: Any):
    c = job.config
    self.job = job
    self.config = c
    self.task_names = tuple(c.tasks)
    self.group_size = int(c.rl.group_size)
    # Train prompts: the ones that fit the largest bucket, indexed by prompt id.
    self.train_examples: dict[str, list] = {}
    self.train_prompts: dict[str, list[list[int]]] = {}
    for name in self.task_names:
      source = job.sources[name]["train"]
      kept, ids, skipped = eval_runner.fitting_examples(
          job.tasks[name], [source[i] for i in range(len(source))], job.encode, len(source))
      if not kept:
        raise config_lib.ConfigError(
            f"config.sampler.prompt_buckets: no {name} training prompt fits in "
            f"{job.encode.max_len} tokens; add a larger bucket")
      if skipped:
        job.log(f"{name}: {skipped} of {len(source)} training prompts are longer than "
                f"{job.encode.max_len} tokens and are left out")
      self.train_examples[name], self.train_prompts[name] = kept, ids
    hp = astor_hparams(c)
    self.schedule_fn = schedule_lib.make_schedule_fn(hp)
    self.optimizer = state_lib.make_optimizer(c)
    self.state_sharding = state_lib.state_sharding(job.params_sharding, self.optimizer,
                                                   init_params, job.mesh)
    seed_key = jax.random.PRNGKey(c.seed)
    self.rollout_key = jax.random.fold_in(seed_key, _ROLLOUT_KEY)
    self.train_state = state_lib.create_sharded(
        init_params, self.optimizer, jax.random.fold_in(seed_key, _TRAIN_KEY), self.state_sharding)
    self.utility_state = step_lib.place_utility_state(
        utility_lib.init([len(self.train_examples[t]) for t in self.task_names], hp,
                         jax.random.fold_in(seed_key, _SCHEDULE_KEY)), job.mesh)
    # The frozen reference: the policy RL starts from (the SFT warm start).
    self.ref_params = init_params
    self.train_step = step_lib.make_train_step(
        job.model, self.optimizer, c, job.mesh, state_sharding=self.state_sharding,
        donate=False)
    self.logprob_fn = step_lib.make_logprob_fn(job.model, c, job.mesh,
                                               params_sharding=job.params_sharding)
    multiple = step_lib.row_multiple(c, job.mesh)
    real_rows = int(c.rl.batch_prompts) * self.group_size
    self.num_rows = -(-real_rows // multiple) * multiple
    self.step = 0
    self.skipped_updates = 0
    self.reasons: dict[str, collections.Counter] = {t: collections.Counter()
                                                    for t in self.task_names}

  # ---------------------------------------------------------------- checkpoints

  def _device_state(self):
    return {"train": self.train_state, "utility": self.utility_state}

  def _host_state(self) -> dict[str, Any]:
    return {"step": self.step, "skipped_updates": self.skipped_updates,
            "reasons": {t: dict(c) for t, c in self.reasons.items()}}

  def restore(self, ckpt: ckpt_lib.Checkpointer) -> None:
    if ckpt.latest_step() is None:
      return
    state, host, step = ckpt.restore(self._device_state())
    self.train_state, self.utility_state = state["train"], state["utility"]
    self.step = int(host["step"])
    if self.step != step:
      raise ValueError(f"{ckpt.directory}: checkpoint {step} holds step {self.step}; the "
                       "directory was tampered with, use a new --workdir")
    self.skipped_updates = int(host["skipped_updates"])
    self.reasons = {t: collections.Counter(host["reasons"].get(t, {})) for t in self.task_names}

  def save(self, ckpt: ckpt_lib.Checkpointer, reward_mean: float) -> None:
    ckpt.save(self.step, self._device_state(), self._host_state(),
              {"reward_mean": reward_mean})

  # ---------------------------------------------------------------- one step

  def _rollout_batch(self, plan, key) -> tuple[Batch, list, list[str], dict[str, float]]:
    """Samples the plan's prompts; (host batch without rewards, examples, completions, stats)."""
    task_ids = np.asarray(plan.task_ids)
    prompt_ids = np.asarray(plan.prompt_ids)
    names = [self.task_names[t] for t in task_ids]
    prompts = [self.train_prompts[n][p] for n, p in zip(names, prompt_ids)]
    out = self.job.sampler(self.train_state.params, prompts, key, group_size=self.group_size,
                           temperature=self.config.sampler.temperature,
                           top_p=self.config.sampler.top_p, top_k=self.config.sampler.top_k,
                           stop=self.job.encode.stop())
    rows = jax.device_get(to_batch_rows(out, self.group_size))
    tokens, lengths = jax.device_get((out.tokens, out.lengths))
    completions = self.job.encode.decode(tokens, lengths)
    g = self.group_size
    examples = [self.train_examples[n][p] for n, p in zip(names, prompt_ids) for _ in range(g)]
    real, seq_len = rows["tokens"].shape
    pad = self.num_rows - real

    def padded(x, fill=0):
      return np.concatenate([np.asarray(x), np.full((pad,) + x.shape[1:], fill, x.dtype)])

    zeros_tokens = np.zeros((self.num_rows, seq_len), np.float32)
    batch = Batch(
        tokens=padded(rows["tokens"], self.job.sampler.pad_id),
        positions=padded(rows["positions"]),
        input_mask=padded(rows["input_mask"]),
        completion_mask=padded(rows["completion_mask"]),
        task_ids=padded(np.repeat(task_ids, g).astype(np.int32)),
        # Padding rows get their own (unused) group ids, all below N.
        group_ids=np.concatenate([rows["group_ids"],
                                  np.arange(real, real + pad, dtype=np.int32)]),
        prompt_ids=padded(np.repeat(prompt_ids, g).astype(np.int32)),
        rewards=np.zeros((self.num_rows,), np.float32),
        old_logprobs=zeros_tokens, ref_logprobs=zeros_tokens,
        sampler_logprobs=padded(rows["sampler_logprobs"]),
        row_mask=np.arange(self.num_rows) < real)
    stats = {"completion_tokens": float(lengths.sum()),
             "completion_length": float(lengths.mean()),
             "truncated_fraction": float(np.mean(np.asarray(out.finish_reasons) == 0))}
    return batch, examples, completions, stats

  def run_step(self, timer: observe.PhaseTimer) -> tuple[dict[str, float], str]:
    """One RL step (module doc); returns (scalars to log, skip reason or "")."""
    job = self.job
    with timer("schedule"):
      scheduled_state, plan = self.schedule_fn(self.utility_state)
      plan = jax.device_get(plan)
    with timer("sample"):
      key = jax.random.fold_in(self.rollout_key, self.step)
      host_batch, examples, completions, rollout_stats = self._rollout_batch(plan, key)
    with timer("score_submit"):
      real = len(examples)
      future = score_batch(job.tasks, examples, completions, job.pool)
    with timer("logprobs_dispatch"):
      check_batch(host_batch, len(self.task_names),
                  int(np.prod([job.mesh.shape[a] for a in BATCH_AXES])))
      batch = as_device_batch(host_batch, job.mesh)
      ref = self.logprob_fn(self.ref_params, batch)
      old = self.logprob_fn(self.train_state.params, batch)
    with timer("score_wait"):
      rewards = _collect_rewards(future, examples)
    with timer("logprobs_wait"):
      ref, old = jax.block_until_ready((ref, old))
    reward_values = np.zeros((self.num_rows,), np.float32)
    reward_values[:real] = [r.value for r in rewards]
    zero_rewards = collections.Counter()
    for example, reward in zip(examples, rewards):
      if reward.value == 0.0:
        self.reasons[example["task"]][_normalize_reason(reward.reason)] += 1
        zero_rewards[example["task"]] += 1

    skip = ""
    completion = np.asarray(host_batch.completion_mask)
    if not np.all(np.isfinite(reward_values)):
      skip = "non-finite reward"
    else:
      ref_h, old_h = jax.device_get((ref, old))
      if not (np.all(np.isfinite(ref_h[completion])) and np.all(np.isfinite(old_h[completion]))):
        skip = "non-finite reference/old log-probs"
    metrics = None
    if not skip:
      with timer("train"):
        batch = batch._replace(rewards=jax.device_put(reward_values, batch.rewards.sharding),
                               ref_logprobs=ref, old_logprobs=old)
        new_train, new_utility, metrics = self.train_step(self.train_state, scheduled_state,
                                                          batch)
        metrics = jax.device_get(metrics)
      loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
      if not (np.isfinite(loss) and np.isfinite(grad_norm)):
        skip = f"non-finite loss ({loss}) or gradient norm ({grad_norm})"
      else:
        self.train_state, self.utility_state = new_train, new_utility
    if skip:
      # The schedule's draw stands (its rng moved on); the update does not.
      self.utility_state = scheduled_state
      self.skipped_updates += 1
    self.step += 1
    scalars = self._scalars(plan, metrics, reward_values[:real], examples, zero_rewards,
                            rollout_stats, skip)
    return scalars, skip

  def _scalars(self, plan, metrics, rewards, examples, zero_rewards, rollout_stats, skip):
    names = self.task_names
    per_task_reward = {t: [] for t in names}
    for example, value in zip(examples, rewards):
      per_task_reward[example["task"]].append(float(value))
    out: dict[str, float] = {
        "reward": float(np.mean(rewards)) if len(rewards) else float("nan"),
        "skipped": float(bool(skip)),
        "skipped_updates": float(self.skipped_updates),
        **rollout_stats,
    }
    budget = np.asarray(plan.budget)
    for k, t in enumerate(names):
      out[f"budget/{t}"] = float(budget[k])
      values = per_task_reward[t]
      out[f"reward/{t}"] = float(np.mean(values)) if values else float("nan")
      out[f"zero_reward/{t}"] = float(zero_rewards[t])
    state = jax.device_get(self.utility_state)
    for k, t in enumerate(names):
      out[f"beta/{t}"] = float(state.kl.beta[k])
      out[f"utility/{t}"] = float(state.utility[k])
      out[f"potential/{t}"] = float(state.potential[k])
      out[f"progress/{t}"] = float(state.progress[k])
      for j, u in enumerate(names):
        out[f"synergy/{t}/{u}"] = (float(state.synergy[k, j]) if state.synergy_seen[k, j]
                                   else float("nan"))
    if metrics is not None:
      for key in ("loss", "policy_loss", "kl_penalty", "entropy_bonus", "grad_norm", "kl",
                  "clip_fraction", "entropy", "logprob_mismatch"):
        out[key] = float(metrics[key])
      rows = np.asarray(metrics["per_task/rows"])
      for k, t in enumerate(names):
        for key in ("kl", "clip_fraction", "entropy", "advantage_std", "synergy"):
          value = float(np.asarray(metrics[f"per_task/{key}"])[k])
          present = key == "synergy" or rows[k] > 0
          out[f"{key}/{t}" if key != "synergy" else f"synergy_term/{t}"] = (
              value if present else float("nan"))
    return out

  # ---------------------------------------------------------------- the phase

  def run(self) -> str:
    """Trains to `rl.steps` from the latest checkpoint; returns a stop reason or ""."""
    job, c = self.job, self.config
    directory = os.path.join(job.workdir, CHECKPOINT_DIR)
    with ckpt_lib.Checkpointer(directory, keep_last=c.checkpoint.keep_last,
                               keep_best=c.checkpoint.keep_best,
                               async_save=c.checkpoint.async_save) as ckpt:
      self.restore(ckpt)
      job.writer.resume("rl", self.step)
      if self.step >= c.rl.steps:
        return ""
      if self.step:
        job.log(f"rl: resuming at step {self.step} from {directory}")
      bar = observe.progress_bar(total=c.rl.steps, initial=self.step, desc="rl",
                                 enabled=c.log.progress_bar)
      timer = observe.PhaseTimer()
      last_reward = float("nan")
      try:
        while self.step < c.rl.steps:
          reason = job.should_stop()
          if reason:
            self.save(ckpt, last_reward)
            return reason
          start = time.perf_counter()
          scalars, skip = self.run_step(timer)
          seconds = time.perf_counter() - start
          scalars.update(timer.pop())
          scalars["time/step"] = seconds
          scalars["tokens_per_s"] = scalars["completion_tokens"] / max(seconds, 1e-9)
          last_reward = scalars["reward"]
          if skip:
            job.log(f"rl step {self.step}: update skipped: {skip}")
          if self.step % c.log.every_steps == 0 or self.step == c.rl.steps:
            job.writer.write("rl", self.step, scalars)
          bar.update(1)
          bar.set_postfix(reward=f"{last_reward:.3f}",
                          budget="/".join(str(int(scalars[f"budget/{t}"]))
                                          for t in self.task_names))
          if self.step % c.checkpoint.every_steps == 0 or self.step == c.rl.steps:
            self.save(ckpt, last_reward)
      finally:
        bar.close()
    return ""


# ------------------------------------------------------------------ eval


def _method_name(config: ml_collections.ConfigDict) -> str:
  if config.astor.schedule == "specialist":
    return f"specialist ({config.astor.specialist_task})"
  return config.astor.schedule


def _tag(name: str) -> str:
  """A TensorBoard-safe scalar name ("astor/Gen pass@1" -> "astor/gen_pass_1")."""
  return re.sub(r"[^a-z0-9_./-]+", "_", name.lower()).strip("_")


def run_eval(job: Job, policies: Mapping[str, Any], rl_step: int) -> dict[str, Any]:
  """Evaluates each named policy on every task; writes results/ and logs phase "eval"."""
  c = job.config
  split = c.eval.split
  examples, prompt_ids, skipped = {}, {}, {}
  for name, task in job.tasks.items():
    source = job.sources[name][split]
    examples[name], prompt_ids[name], skipped[name] = eval_runner.fitting_examples(
        task, [source[i] for i in range(len(source))], job.encode,
        int(c.eval.max_examples_per_task))
  evaluator = eval_runner.Evaluator(
      job.sampler, job.encode, job.tasks, examples, prompt_ids, skipped, job.pool,
      temperature=float(c.eval.temperature), chunk_prompts=int(c.rl.batch_prompts))
  key = jax.random.fold_in(jax.random.PRNGKey(c.seed), _EVAL_KEY)
  methods, details = {}, {}
  job.writer.resume("eval", rl_step - 1)
  for method, params in policies.items():
    job.log(f"eval: {method} on the {split} split")
    results = evaluator.evaluate(params, key)
    methods[method] = eval_runner.task_metrics(results)
    details[method] = {t: dataclasses.asdict(r) for t, r in results.items()}
    row = table_lib.results_row(methods[method])
    job.writer.write("eval", rl_step, {_tag(f"{method}/{h}"): v for h, v in row.items()})
  out_dir = os.path.join(job.workdir, table_lib.RESULTS_DIR)
  os.makedirs(out_dir, exist_ok=True)
  record = {"methods": methods, "details": details, "rl_step": rl_step, "split": split}
  tmp = os.path.join(out_dir, table_lib.EVAL_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2, allow_nan=True)
  os.replace(tmp, os.path.join(out_dir, table_lib.EVAL_FILE))
  md_path, _ = table_lib.write_results_table(methods, out_dir)
  with open(md_path, encoding="utf-8") as f:
    job.log("results (percent):\n" + f.read())
  return methods


def _eval_done(workdir: str, rl_step: int, methods: Sequence[str]) -> dict[str, Any] | None:
  path = os.path.join(workdir, table_lib.RESULTS_DIR, table_lib.EVAL_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    record = json.load(f)
  if record.get("rl_step") == rl_step and sorted(record["methods"]) == sorted(methods):
    return record["methods"]
  return None


def write_plots(job: Job) -> list[str]:
  records = observe.read_metrics(job.writer.path)
  return plots_lib.write_training_plots(records, tuple(job.config.tasks),
                                        os.path.join(job.workdir, plots_lib.PLOTS_DIR))


def _write_reasons(job: Job, rl: RLPhase) -> None:
  out_dir = os.path.join(job.workdir, table_lib.RESULTS_DIR)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, REASONS_FILE)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"rl_step": rl.step, "skipped_updates": rl.skipped_updates,
               "zero_reward_reasons": {t: dict(c.most_common()) for t, c in rl.reasons.items()}},
              f, indent=2)
  os.replace(path + ".tmp", path)


# ------------------------------------------------------------------ the job


def _sft_rows(job: Job) -> sft.SFTRows:
  c = job.config
  pairs = corpus.sft_pairs(job.tasks, _interleave(job.sources, "train"))
  max_len = max(c.sampler.prompt_buckets) + int(c.sampler.max_new_tokens)
  return sft.encode_pairs(job.tokenizer, pairs, max_len)


def train(config: ml_collections.ConfigDict, workdir: str) -> Outcome:
  """Runs (or resumes) the configured phases in `workdir`; see the module doc.

  Raises:
    ConfigError: the config cannot run here or differs from the run being
      resumed in a field that changes results (naming the field).
  """
  config_lib.validate(config)
  check_resume_config(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  from astor_jax.data.pipeline import task_sources

  c = config
  try:
    mesh = make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  tasks = registry.make_tasks(c)
  data_dir = c.data.data_dir or os.path.join(workdir, "tfds")
  sources = task_sources(c.data, tuple(c.tasks), data_dir)
  tokenizer = _load_or_train_tokenizer(c, workdir, tasks, sources)
  model, params = _build_model(c, tokenizer, mesh)
  params_sharding = param_shardings(model, mesh)
  encode = eval_runner.PromptEncoder(tokenizer, max(c.sampler.prompt_buckets))
  sampler = Sampler(model, max_new_tokens=int(c.sampler.max_new_tokens),
                    prompt_buckets=tuple(c.sampler.prompt_buckets),
                    pad_id=int(tokenizer.pad_token_id), mesh=mesh)
  # Recorded once the job could be set up, so a failed start does not pin the workdir's config.
  _write_config(config, workdir)
  with ckpt_lib.PreemptionGuard() as guard, \
       ExecutionPool.from_config(c.execution) as pool, \
       observe.MetricWriter(workdir, tensorboard=c.log.tensorboard) as writer:
    job = Job(config=c, workdir=workdir, mesh=mesh, tasks=tasks, sources=sources,
              tokenizer=tokenizer, encode=encode, model=model, params_sharding=params_sharding,
              sampler=sampler, pool=pool, writer=writer,
              should_stop=StopCheck(guard, float(c.max_wall_time_s)))
    return _run_phases(job, params)


def _stopped(job: Job, reason: str, rl_step: int) -> Outcome:
  job.log(f"stopped ({reason}) with a checkpoint saved; rerun the same command to resume")
  signum = int(job.should_stop.guard.requested or 0)
  return Outcome(finished=False, stop_reason=reason, signal=signum, rl_step=rl_step)


def _run_phases(job: Job, params: Any) -> Outcome:
  c = job.config
  phases = tuple(c.phases)
  # The policy RL starts from: the SFT warm start, or the loaded / initialized model.
  start_name = "base" if c.model.preset == "hf" else "init"
  if "sft" in phases:
    result = sft.run(c, job.workdir, model=job.model, params=params, rows=_sft_rows(job),
                     mesh=job.mesh, params_sharding=job.params_sharding, writer=job.writer,
                     should_stop=job.should_stop, progress=observe.progress_bar)
    if not result.done:
      return _stopped(job, job.should_stop() or "stopped", 0)
    if result.skipped and c.sft.steps:
      job.log(f"sft: warm start loaded from {sft.cache_dir(c, job.workdir)}")
    params, start_name = result.params, "sft"
  policies: dict[str, Any] = {}
  rl_step = 0
  if "rl" in phases:
    if c.eval.sft_baseline:
      policies[start_name] = params
    rl = RLPhase(job, params)
    reason = rl.run()
    rl_step = rl.step
    _write_reasons(job, rl)
    write_plots(job)
    if reason:
      return _stopped(job, reason, rl_step)
    policies[_method_name(c)] = rl.train_state.params
  else:
    policies[start_name] = params
  results = None
  if "eval" in phases:
    results = _eval_done(job.workdir, rl_step, list(policies))
    if results is None:
      results = run_eval(job, policies, rl_step)
    else:
      job.log("eval: results for this step already in results/eval.json")
  return Outcome(finished=True, rl_step=rl_step, results=results)


def _quiet_library_logs() -> None:
  """Libraries (orbax, TFDS) log every save at INFO; keep WARNING unless -v was passed."""
  from absl import flags, logging

  if not (flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].present):
    logging.set_verbosity(logging.WARNING)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The CLI's entry: `train`, then exit 128 + signal number if a signal stopped it."""
  _quiet_library_logs()
  outcome = train(config, workdir)
  if outcome.signal:
    sys.exit(128 + outcome.signal)
