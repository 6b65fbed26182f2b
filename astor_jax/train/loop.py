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
  5. log-probs     ... while the device computes the reference log-probs of
                   the same rows (and the old policy's, with more than one
                   minibatch: `rl.old_logprobs`); on one CPU device with
                   `cpu_resident_buffers` the pass runs inline on this thread
                   while the pool's processes score;
  6. train         once the rewards are in, the jitted train step updates the
                   policy and the UtilityState (budgets, beta_k, synergy, ...).

Each phase's wall time is logged as `time/<phase>`. Before the first step of
a run (or of a resumed run), `RLPhase.precompile` compiles the sampler, the
log-prob pass and the train step for the first plan's shapes in three
threads at once (`time/precompile` of that step's record).

Randomness: every random number comes from keys derived from `config.seed`
and the step (`fold_in`) or from the checkpointed states (TrainState.rng,
UtilityState.rng), never from the host clock, so an interrupted and resumed
run reproduces an uninterrupted one bit for bit on CPU (sandbox timeouts
aside: a program that sometimes finishes and sometimes times out scores
differently).

Guards: a non-finite reward or reference / old-policy log-prob skips the step before
the update; a non-finite loss or gradient norm from the train step discards
its result (the step is compiled without buffer donation so the previous
states survive). Either way the step is logged with `skipped = 1` and the
reason is printed. A failed scoring call (sandbox crash) is reward 0 with
the reason, counted per task in `results/reward_reasons.json`.

Stopping: SIGTERM/SIGINT (preemption, Ctrl-C) and `max_wall_time_s` save a
checkpoint and stop cleanly between steps; rerunning the same command resumes
(SFT from its cache, RL from the latest checkpoint, finished phases skipped).
A signal exits with status 128 + signal number, the wall-time limit with 0.

Several processes (one per TPU VM or GPU node; `astor_jax.distributed`):
every process runs this same program over one global mesh, and

  - everyone   computes the schedule (replicated: every host knows the whole
               plan), runs the sampler, the log-prob passes and the train
               step (the jitted programs are global; XLA moves the data), and
               saves and restores every checkpoint (multi-host orbax: each
               process writes and reads its own shards of the global arrays,
               process 0 the metadata, so the workdir must be shared storage);
  - per host   a process holds the rows of the batch that live on its devices
               (`distributed.process_rows` of the batch sharding): it reads
               only those rows of the sampler's output, detokenizes them,
               scores them in its own execution pool, and builds its part of
               the global batch and reward arrays
               (`jax.make_array_from_process_local_data`); no rollout text
               crosses hosts;
  - gathered   the rewards ([N] floats) and the zero-reward reasons are
               all-gathered after scoring, so every process takes the same
               skip decision (the other guards read replicated values) and
               holds the same counters to checkpoint;
  - agreed     stopping: `StopCheck` all-gathers each process's stop reason
               between steps, so a SIGTERM reaching one host, or one host's
               clock passing `max_wall_time_s`, stops all of them after the
               same step with the same checkpoint (no host is left waiting in
               a collective);
  - process 0  writes everything else: config.json, the tokenizer and TFDS
               files (the others wait at a barrier, then read them),
               metrics.jsonl, TensorBoard, plots, results/, the progress bar
               and log lines.

Evaluation samples on all processes and gathers the completions, so each
process scores every eval example (a duplicate of process 0's work: one
process's share would suffice) and process 0 writes the results.

Workdir layout:

  config.json          the config of the run (a resume must match it)
  tokenizer/           the tiny-world tokenizer (trained once)
  tfds/                prepared datasets (unless data.data_dir is set)
  sft/                 SFT checkpoints; the last one is the cached warm start
  checkpoints/         RL checkpoints (keep-last-N + keep-best by mean reward)
  metrics.jsonl        one record per logged step (phases sft, rl, eval)
  tensorboard/         the same scalars as TensorBoard events
  plots/               budgets, beta_k, reward per task, synergy heatmap (PNG)
  results/             eval.json, results.md, results.csv, reward_reasons.json,
                       eval_samples.jsonl (every eval completion with its reward)
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.sharding import NamedSharding, PartitionSpec

from astor_jax import config as config_lib
from astor_jax import distributed
from astor_jax.astor import schedule as schedule_lib
from astor_jax.astor import utility as utility_lib
from astor_jax.astor.hparams import astor_hparams, old_logprobs_are_current
from astor_jax.eval import plots as plots_lib
from astor_jax.eval import runner as eval_runner
from astor_jax.eval import table as table_lib
from astor_jax.execution import ExecutionPool
from astor_jax.model import Transformer, get_preset, init_params, make_mesh, param_shardings
from astor_jax.rollout.buckets import choose_bucket
from astor_jax.rollout.rows import to_batch_rows
from astor_jax.rollout.sampler import Sampler
from astor_jax.tasks import corpus, registry
from astor_jax.tasks.base import Reward, Task, score_batch, zero
from astor_jax.train import checkpoint as ckpt_lib
from astor_jax.train import observe, sft
from astor_jax.train import state as state_lib
from astor_jax.train import step as step_lib
from astor_jax.train.batch import BATCH_AXES, Batch, batch_sharding, batch_spec, check_batch

CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
REASONS_FILE = "reward_reasons.json"
EVAL_SAMPLES_FILE = "eval_samples.jsonl"  # one line per (method, task, example)

# Fields that may change between a run and its resumption: how long it runs,
# what it logs and keeps, how evaluation is done, how many sandbox workers
# score and how the CPU backend holds its memory (results do not depend on them).
RESUMABLE_CHANGES = ("phases", "max_wall_time_s", "rl.steps", "log.", "checkpoint.", "eval.",
                     "execution.num_workers", "sft.cache_dir", "sft.checkpoint_every_steps",
                     "data.data_dir", "cpu_resident_buffers")

# Fields added after runs were already made, with the value that reproduces
# such a run: it is what a saved config without the field is compared as.
ADDED_FIELDS = {"sampler.host_threads": 1,  # before: one sampler call per batch
                "rl.old_logprobs": "batch"}  # before: an old-policy pass every step

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
    started = saved.get(field, ADDED_FIELDS.get(field))
    if started != now.get(field):
      raise config_lib.ConfigError(
          f"config.{field}: {now.get(field)!r}, but the run in {workdir} was started with "
          f"{started!r}; pass --config.{field}={started!r} to resume it, "
          "or use a new --workdir")


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(tmp, path)


# ------------------------------------------------------------------ setup


class StopCheck:
  """Polled between steps: a caught signal or the wall-time limit says stop.

  The answer is the same on every process: each call is one tiny all-gather
  of every process's own answer (so every process must poll at the same
  points, which the loop does), and a reason seen by any process is returned
  on all. A signal anywhere wins over the wall-time limit; `signal` is its
  number (the first process's that caught one), so every host saves the same
  step and exits with the same status. Once given, a reason stays (and no
  more collectives are made).
  """

  def __init__(self, guard: ckpt_lib.PreemptionGuard, max_wall_time_s: float):
    self.guard = guard
    self.start = time.monotonic()
    self.max_wall_time_s = max_wall_time_s
    self.reason = ""
    self.signal = 0

  def _local(self) -> tuple[str, int]:
    if self.guard.requested:
      return self.guard.name, int(self.guard.requested)
    if self.max_wall_time_s and time.monotonic() - self.start >= self.max_wall_time_s:
      return "max_wall_time_s", 0
    return "", 0

  def __call__(self) -> str | None:
    if not self.reason:
      answers = distributed.allgather_json(list(self._local()))
      signalled = [a for a in answers if a[1]]
      stopping = signalled or [a for a in answers if a[0]]
      if stopping:
        self.reason, self.signal = stopping[0]
    return self.reason or None


class _NullWriter:
  """The metric writer of processes other than 0: they write no files."""

  path = os.devnull

  def resume(self, phase: str, step: int) -> None:
    del phase, step

  def write(self, phase: str, step: int, scalars: Mapping[str, float]) -> None:
    del phase, step, scalars

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass

  def __enter__(self) -> _NullWriter:
    return self

  def __exit__(self, *exc) -> None:
    pass


def _progress_bar(**kwargs):
  """`observe.progress_bar`, shown by process 0 only."""
  kwargs["enabled"] = kwargs["enabled"] and distributed.is_main_process()
  return observe.progress_bar(**kwargs)


def _main_first(name: str, build):
  """`build()` on process 0, then (after a barrier) on the others.

  For steps that write shared files into the workdir once (the tokenizer, the
  TFDS datasets): the other processes then only read what process 0 wrote.
  """
  if distributed.is_main_process():
    out = build()
    distributed.barrier(name)
    return out
  distributed.barrier(name)
  return build()


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
    if distributed.is_main_process():
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


# Batch fields that come from the sampler's output (the rest are built on the host).
_SAMPLED_FIELDS = ("tokens", "positions", "input_mask", "completion_mask", "sampler_logprobs",
                   "group_ids")


def _padded_rows(out, *, group_size: int, num_rows: int, pad_id: int) -> dict[str, jax.Array]:
  """The sampler's rows padded to `num_rows` (jitted with the batch's row sharding).

  Padding rows hold `pad_id` tokens, no masks and group ids of their own
  (`real .. num_rows - 1`, all below N).
  """
  rows = to_batch_rows(out, group_size)
  real = rows["tokens"].shape[0]

  def padded(x, fill=0):
    return jnp.concatenate([x, jnp.full((num_rows - real,) + x.shape[1:], fill, x.dtype)])

  out_rows = {k: padded(rows[k], pad_id if k == "tokens" else 0) for k in _SAMPLED_FIELDS}
  out_rows["group_ids"] = jnp.concatenate(
      [rows["group_ids"], jnp.arange(real, num_rows, dtype=jnp.int32)])
  return out_rows


def _finite_logprobs(ref: jax.Array, old: jax.Array, completion_mask: jax.Array) -> jax.Array:
  """Whether the reference and old log-probs are finite on every completion token."""
  ok = lambda x: jnp.all(jnp.where(completion_mask, jnp.isfinite(x), True))
  return ok(ref) & ok(old)


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
    self.old_is_current = old_logprobs_are_current(c)
    multiple = step_lib.row_multiple(c, job.mesh)
    self.real_rows = int(c.rl.batch_prompts) * self.group_size
    self.num_rows = -(-self.real_rows // multiple) * multiple
    self.batch_sharding = batch_sharding(job.mesh)
    # The rows of every batch that this process builds, scores and places
    # (all of them in one process); the sampler's rows arrive sharded the same way.
    self.my_rows = distributed.process_rows(self.batch_sharding.row_mask, (self.num_rows,))
    self._rows_fn = jax.jit(
        functools.partial(_padded_rows, group_size=self.group_size, num_rows=self.num_rows,
                          pad_id=job.sampler.pad_id),
        out_shardings={k: getattr(self.batch_sharding, k) for k in _SAMPLED_FIELDS})
    self._finite_fn = jax.jit(_finite_logprobs,
                              out_shardings=NamedSharding(job.mesh, PartitionSpec()))
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
    """Samples the plan's prompts.

    Returns this process's share: (its rows of the batch, without rewards, as
    numpy; the examples and completions of its real rows, in row order;
    rollout statistics of the whole batch).
    """
    task_ids = np.asarray(plan.task_ids)
    prompt_ids = np.asarray(plan.prompt_ids)
    names = [self.task_names[t] for t in task_ids]
    prompts = [self.train_prompts[n][p] for n, p in zip(names, prompt_ids)]
    out = self.job.sampler(self.train_state.params, prompts, key, group_size=self.group_size,
                           temperature=self.config.sampler.temperature,
                           top_p=self.config.sampler.top_p, top_k=self.config.sampler.top_k,
                           stop=self.job.encode.stop())
    rows = {k: distributed.local_rows(v) for k, v in self._rows_fn(out).items()}
    lengths, finish_reasons = (distributed.to_host(x) for x in (out.lengths, out.finish_reasons))
    g, mine = self.group_size, self.my_rows
    real = mine < self.real_rows  # a prefix: `mine` is sorted
    mine_real = mine[real]
    completions = self.job.encode.decode(rows["tokens"][real, -self.job.sampler.max_new_tokens:],
                                         lengths[mine_real])
    examples = [self.train_examples[names[r // g]][prompt_ids[r // g]] for r in mine_real]

    def per_row(per_prompt):  # [B] -> this process's rows, 0 on padding rows
      full = np.zeros((self.num_rows,), np.int32)
      full[:self.real_rows] = np.repeat(per_prompt, g)
      return full[mine]

    zeros_tokens = np.zeros(rows["tokens"].shape, np.float32)
    batch = Batch(
        **{k: rows[k] for k in _SAMPLED_FIELDS},
        task_ids=per_row(task_ids), prompt_ids=per_row(prompt_ids),
        rewards=np.zeros((len(mine),), np.float32),
        old_logprobs=zeros_tokens, ref_logprobs=zeros_tokens, row_mask=real)
    stats = {"completion_tokens": float(lengths.sum()),
             "completion_length": float(lengths.mean()),
             "truncated_fraction": float(np.mean(finish_reasons == 0))}
    return batch, examples, completions, stats

  def _device_batch(self, host_batch: Batch) -> Batch:
    """The global batch from every process's rows (`host_batch` holds this process's)."""
    return Batch(**{
        k: distributed.global_array(getattr(self.batch_sharding, k), v,
                                    (self.num_rows,) + v.shape[1:])
        for k, v in host_batch._asdict().items()})

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
      # This process's pool scores this process's rollouts only.
      future = score_batch(job.tasks, examples, completions, job.pool)
    with timer("logprobs_dispatch"):
      if distributed.process_count() == 1:  # row-local checks; group ids are global
        check_batch(host_batch, len(self.task_names),
                    int(np.prod([job.mesh.shape[a] for a in BATCH_AXES])))
      batch = self._device_batch(host_batch)
      ref = self.logprob_fn(self.ref_params, batch)
      # With one minibatch the step takes its own log-probs as the old ones.
      old = (batch.old_logprobs if self.old_is_current else
             self.logprob_fn(self.train_state.params, batch))
    with timer("score_wait"):
      rewards = _collect_rewards(future, examples)
      local_values = np.zeros((len(self.my_rows),), np.float32)
      local_values[:len(examples)] = [r.value for r in rewards]
      rewards_array = distributed.global_array(self.batch_sharding.rewards, local_values,
                                               (self.num_rows,))
      # Every process gets every reward and zero-reward reason: the skip
      # decision, the logged scalars and the checkpointed counters are the
      # same on all of them.
      reward_values = distributed.to_host(rewards_array)
      zero_reasons = distributed.allgather_json(
          [[e["task"], _normalize_reason(r.reason)] for e, r in zip(examples, rewards)
           if r.value == 0.0])
    with timer("logprobs_wait"):
      ref, old = jax.block_until_ready((ref, old))
    zero_rewards = collections.Counter()
    for task, reason in (pair for reasons in zero_reasons for pair in reasons):
      self.reasons[task][reason] += 1
      zero_rewards[task] += 1

    skip = ""
    if not np.all(np.isfinite(reward_values)):
      skip = "non-finite reward"
    elif not bool(self._finite_fn(ref, old, batch.completion_mask)):
      skip = "non-finite reference/old log-probs"
    metrics = None
    if not skip:
      with timer("train"):
        batch = batch._replace(rewards=rewards_array, ref_logprobs=ref, old_logprobs=old)
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
    row_tasks = np.repeat(np.asarray(plan.task_ids), self.group_size)
    scalars = self._scalars(plan, metrics, reward_values[:self.real_rows], row_tasks,
                            zero_rewards, rollout_stats, skip)
    return scalars, skip

  def _scalars(self, plan, metrics, rewards, row_tasks, zero_rewards, rollout_stats, skip):
    """The step's scalars; `rewards` and `row_tasks` (task index) cover every real row."""
    names = self.task_names
    per_task_reward = {t: [] for t in names}
    for k, value in zip(row_tasks, rewards):
      per_task_reward[names[k]].append(float(value))
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

  def precompile(self) -> None:
    """Compiles the next step's sampler, log-prob pass and train step, concurrently.

    Their shapes follow from the next plan's prompt bucket, so each program is
    lowered for them (`jit(...).lower(...).compile()`) in its own thread; the
    step's calls then find the executables in JAX's compilation cache and
    only trace. XLA compiles outside the GIL, so the three overlap. A later
    step whose prompts need another bucket compiles that one when it comes.
    """
    _, plan = self.schedule_fn(self.utility_state)
    plan = jax.device_get(plan)
    names = [self.task_names[t] for t in np.asarray(plan.task_ids)]
    prompts = [self.train_prompts[n][p] for n, p in zip(names, np.asarray(plan.prompt_ids))]
    sampler, s = self.job.sampler, self.config.sampler
    seq_len = (choose_bucket(max(len(p) for p in prompts), sampler.prompt_buckets)
               + sampler.max_new_tokens)
    batch = jax.tree.map(lambda spec, sharding: jax.ShapeDtypeStruct(
        spec.shape, spec.dtype, sharding=sharding),
        batch_spec(self.num_rows, seq_len), self.batch_sharding)
    key = jax.random.fold_in(self.rollout_key, self.step)
    programs = [
        lambda: sampler.lower(self.train_state.params, prompts, key, group_size=self.group_size,
                              temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                              stop=self.job.encode.stop())]
    # (A function wrapped by a test or a probe has no `lower`: it compiles on first call.)
    if hasattr(self.logprob_fn, "lower"):
      programs.append(lambda: self.logprob_fn.lower(self.ref_params, batch))
    if hasattr(self.train_step, "lower"):
      programs.append(lambda: self.train_step.lower(self.train_state, self.utility_state, batch))
    with concurrent.futures.ThreadPoolExecutor(len(programs)) as threads:
      for done in [threads.submit(lambda lower=lower: lower().compile()) for lower in programs]:
        done.result()

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
      bar = _progress_bar(total=c.rl.steps, initial=self.step, desc="rl",
                          enabled=c.log.progress_bar)
      timer = observe.PhaseTimer()
      with timer("precompile"):
        self.precompile()
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
  sampler = job.sampler if distributed.process_count() == 1 else _GatheredSampler(job.sampler)
  evaluator = eval_runner.Evaluator(
      sampler, job.encode, job.tasks, examples, prompt_ids, skipped, job.pool,
      temperature=float(c.eval.temperature), chunk_prompts=int(c.rl.batch_prompts))
  key = jax.random.fold_in(jax.random.PRNGKey(c.seed), _EVAL_KEY)
  methods, details, samples = {}, {}, []
  job.writer.resume("eval", rl_step - 1)
  for method, params in policies.items():
    job.log(f"eval: {method} on the {split} split")
    results = evaluator.evaluate(params, key)
    methods[method] = eval_runner.task_metrics(results)
    details[method] = {t: r.summary() for t, r in results.items()}
    samples += [{"method": method, "task": t, **record}
                for t, r in results.items() for record in r.samples]
    row = table_lib.results_row(methods[method])
    job.writer.write("eval", rl_step, {_tag(f"{method}/{h}"): v for h, v in row.items()})
  if not distributed.is_main_process():
    return methods
  out_dir = os.path.join(job.workdir, table_lib.RESULTS_DIR)
  os.makedirs(out_dir, exist_ok=True)
  tmp = os.path.join(out_dir, EVAL_SAMPLES_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(json.dumps({"rl_step": rl_step, "split": split, **r}) + "\n" for r in samples)
  os.replace(tmp, os.path.join(out_dir, EVAL_SAMPLES_FILE))
  # eval.json last: its presence marks the evaluation as done.
  record = {"methods": methods, "details": details, "rl_step": rl_step, "split": split}
  tmp = os.path.join(out_dir, table_lib.EVAL_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2, allow_nan=True)
  os.replace(tmp, os.path.join(out_dir, table_lib.EVAL_FILE))
  md_path, _ = table_lib.write_results_table(methods, out_dir)
  with open(md_path, encoding="utf-8") as f:
    job.log("results (percent):\n" + f.read())
  return methods


class _GatheredSampler:
  """A `Sampler` whose completions (tokens, lengths) are whole on every process.

  Evaluation with several processes: every process samples its share of the
  rows (one global program) and then sees all completions, so the evaluator
  runs unchanged on each; only process 0 writes what it finds.
  """

  def __init__(self, sampler: Sampler):
    self._sampler = sampler

  def __call__(self, *args, **kwargs):
    out = self._sampler(*args, **kwargs)
    return out._replace(tokens=distributed.to_host(out.tokens),
                        lengths=distributed.to_host(out.lengths))


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


def train(config: ml_collections.ConfigDict, workdir: str,
          run_phases: Callable[[Job, Any], Outcome] | None = None) -> Outcome:
  """Runs (or resumes) the configured phases in `workdir`; see the module doc.

  `run_phases(job, params)`, when given, replaces the phases after the job's
  setup (mesh, data, tokenizer, model, sampler, execution pool, writer): a
  diagnostic such as `astor_jax.train.sft_probe` runs inside the same job.

  Raises:
    ConfigError: the config cannot run here or differs from the run being
      resumed in a field that changes results (naming the field).
  """
  config_lib.validate(config)
  check_resume_config(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  main = distributed.is_main_process()
  from astor_jax.data.pipeline import task_sources

  c = config
  try:
    mesh = make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  tasks = registry.make_tasks(c)
  data_dir = c.data.data_dir or os.path.join(workdir, "tfds")
  sources = _main_first("tfds", lambda: task_sources(c.data, tuple(c.tasks), data_dir))
  tokenizer = _main_first("tokenizer",
                          lambda: _load_or_train_tokenizer(c, workdir, tasks, sources))
  model, params = _build_model(c, tokenizer, mesh)
  params_sharding = param_shardings(model, mesh)
  encode = eval_runner.PromptEncoder(tokenizer, max(c.sampler.prompt_buckets))
  sampler = Sampler(model, max_new_tokens=int(c.sampler.max_new_tokens),
                    prompt_buckets=tuple(c.sampler.prompt_buckets),
                    pad_id=int(tokenizer.pad_token_id), mesh=mesh,
                    chunk_rows=int(c.sampler.get("chunk_rows", 0)),
                    host_threads=int(c.sampler.get("host_threads", 0)))
  # Recorded once the job could be set up, so a failed start does not pin the workdir's config.
  if main:
    _write_config(config, workdir)
  writer = (observe.MetricWriter(workdir, tensorboard=c.log.tensorboard) if main
            else _NullWriter())
  # Every process runs its own execution pool for the rollouts of its rows.
  with ckpt_lib.PreemptionGuard() as guard, \
       ExecutionPool.from_config(c.execution) as pool, \
       writer:
    job = Job(config=c, workdir=workdir, mesh=mesh, tasks=tasks, sources=sources,
              tokenizer=tokenizer, encode=encode, model=model, params_sharding=params_sharding,
              sampler=sampler, pool=pool, writer=writer,
              should_stop=StopCheck(guard, float(c.max_wall_time_s)))
    return (run_phases or _run_phases)(job, params)


def _stopped(job: Job, reason: str, rl_step: int) -> Outcome:
  job.log(f"stopped ({reason}) with a checkpoint saved; rerun the same command to resume")
  signum = job.should_stop.signal
  return Outcome(finished=False, stop_reason=reason, signal=signum, rl_step=rl_step)


def _run_phases(job: Job, params: Any) -> Outcome:
  c = job.config
  phases = tuple(c.phases)
  # The policy RL starts from: the SFT warm start, or the loaded / initialized model.
  start_name = "base" if c.model.preset == "hf" else "init"
  if "sft" in phases:
    result = sft.run(c, job.workdir, model=job.model, params=params, rows=_sft_rows(job),
                     mesh=job.mesh, params_sharding=job.params_sharding, writer=job.writer,
                     should_stop=job.should_stop, progress=_progress_bar)
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
    if distributed.is_main_process():
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
