"""Supervised warm start: next-token cross-entropy on (prompt, reference completion) pairs.

A tiny model from random init cannot emit a single well-formed answer, so RL
would see zero reward everywhere (no group variance, no gradient). The SFT phase
teaches the answer formats on the tiny-world corpus first, as the paper's
instruct models already know them.

Rows are `prompt + completion + EOS`, right-padded to one length `T` (the
smallest multiple of 32 that holds the longest pair, at most `max_len`, so the
step compiles once); longer pairs are dropped and counted. The loss is the mean
over completion (and EOS) tokens of `-log p(token | prefix)`; prompt tokens are
context only (TRL's `completion_only_loss`).

Order: step s takes the rows `s * B .. (s + 1) * B - 1` of an endless stream in
which each epoch is a fresh permutation drawn from `(seed, epoch)`. The batch is
a pure function of the step, so a resumed run sees exactly the batches an
uninterrupted one would.

Optimizer: AdamW (weight decay 0.01, our choice) under a linear warmup of
`sft.warmup_steps` then cosine decay to 10% of `sft.learning_rate`, global-norm
clipping at 1.0.

The phase checkpoints into its own directory (`<workdir>/sft` unless
`sft.cache_dir` names another, so several runs can share one warm start) every
`sft.checkpoint_every_steps` steps and when stopped; the last checkpoint is marked done and a
restarted job loads it instead of training again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from astor_jax.model import token_logprobs
from astor_jax.train import checkpoint as ckpt_lib
from astor_jax.train import state as state_lib
from astor_jax.train.batch import BATCH_AXES
from astor_jax.train.observe import MetricWriter

ROW_MULTIPLE = 32
DIR_NAME = "sft"


@dataclasses.dataclass(frozen=True)
class SFTRows:
  """Tokenized SFT corpus, right-padded.

  Attributes:
    tokens: [n, T] int32.
    input_mask: [n, T] bool, real tokens.
    loss_mask: [n, T] bool, completion and EOS tokens (token-aligned targets).
    dropped: pairs longer than the length limit, left out.
  """

  tokens: np.ndarray
  input_mask: np.ndarray
  loss_mask: np.ndarray
  dropped: int

  @property
  def positions(self) -> np.ndarray:
    return np.where(self.input_mask, np.arange(self.tokens.shape[1], dtype=np.int32), 0)


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_len: int) -> SFTRows:
  """Tokenizes (prompt, completion) pairs into right-padded rows.

  Args:
    tokenizer: a transformers tokenizer with `eos_token_id` and `pad_token_id`.
    pairs: prompt and reference completion texts.
    max_len: the longest row kept, in tokens (EOS included).

  Raises:
    ValueError: the tokenizer lacks EOS/pad ids, or no pair fits in `max_len`.
  """
  eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
  if eos is None or pad is None:
    raise ValueError("tokenizer: needs eos_token_id and pad_token_id for SFT rows; set "
                     "eos_token/pad_token in the tokenizer's files")
  encoded, dropped = [], 0
  for prompt, completion in pairs:
    p = tokenizer.encode(prompt, add_special_tokens=False)
    c = tokenizer.encode(completion, add_special_tokens=False) + [eos]
    if len(p) + len(c) > max_len or not p:
      dropped += 1
      continue
    encoded.append((p, c))
  if not encoded:
    raise ValueError(f"SFT corpus: none of the {len(pairs)} pairs fits in {max_len} tokens; "
                     "raise sampler.prompt_buckets / sampler.max_new_tokens")
  longest = max(len(p) + len(c) for p, c in encoded)
  length = min(max_len, -(-longest // ROW_MULTIPLE) * ROW_MULTIPLE)
  tokens = np.full((len(encoded), length), pad, np.int32)
  input_mask = np.zeros((len(encoded), length), bool)
  loss_mask = np.zeros((len(encoded), length), bool)
  for i, (p, c) in enumerate(encoded):
    n = len(p) + len(c)
    tokens[i, :n] = p + c
    input_mask[i, :n] = True
    loss_mask[i, len(p):n] = True
  return SFTRows(tokens, input_mask, loss_mask, dropped)


def batch_indices(num_rows: int, batch_size: int, step: int, seed: int) -> np.ndarray:
  """Row indices of SFT step `step` (0-based): epochs of seeded permutations, no state."""
  flat = np.arange(step * batch_size, (step + 1) * batch_size)
  epochs, offsets = np.divmod(flat, num_rows)
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([seed, int(epoch)]).permutation(num_rows)
    out[epochs == epoch] = perm[offsets[epochs == epoch]]
  return out


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW under warmup + cosine decay (module doc); reads the `sft` fields."""
  s = config.sft
  steps = max(s.steps, 1)
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=s.learning_rate, warmup_steps=min(s.warmup_steps, steps - 1),
      decay_steps=steps, end_value=0.1 * s.learning_rate)
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, weight_decay=0.01))


def sft_loss(model: Any, params: Any, tokens, positions, input_mask, loss_mask,
             chunk_size: int = 0):
  """Mean negative log-likelihood of the `loss_mask` tokens; (loss, num tokens)."""
  logprobs, _ = token_logprobs(model, params, tokens, positions, input_mask,
                               chunk_size=chunk_size)
  weight = loss_mask.astype(jnp.float32)
  count = weight.sum()
  return -(logprobs * weight).sum() / jnp.maximum(count, 1.0), count


def make_sft_step(model: Any, optimizer: optax.GradientTransformation, mesh: Mesh,
                  state_sharding: state_lib.TrainState, chunk_size: int = 0) -> Callable:
  """Jitted `(train_state, tokens, positions, input_mask, loss_mask) -> (train_state, metrics)`.

  Rows are sharded over the mesh's batch axes; the gradient's cross-device sum
  is XLA's (the loss is a global mean).
  """
  rows = NamedSharding(mesh, PartitionSpec(BATCH_AXES, None))
  replicated = NamedSharding(mesh, PartitionSpec())

  def step(train_state: state_lib.TrainState, tokens, positions, input_mask, loss_mask):
    def loss_fn(params):
      return sft_loss(model, params, tokens, positions, input_mask, loss_mask, chunk_size)

    (loss, count), grads = jax.value_and_grad(loss_fn, has_aux=True)(train_state.params)
    updates, opt_state = optimizer.update(grads, train_state.opt_state, train_state.params)
    params = optax.apply_updates(train_state.params, updates)
    new_state = train_state._replace(params=params, opt_state=opt_state,
                                     step=train_state.step + 1)
    return new_state, {"loss": loss, "tokens": count, "grad_norm": optax.global_norm(grads)}

  jitted = jax.jit(step, in_shardings=(state_sharding, rows, rows, rows, rows),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,))

  def run(train_state: state_lib.TrainState, *batch):
    # Every process holds the whole (small) batch; device_put keeps each
    # process's rows (jit refuses sharded numpy inputs across processes).
    return jitted(train_state, *(jax.device_put(x, rows) for x in batch))

  return run


def fingerprint(config: ml_collections.ConfigDict, rows: SFTRows) -> str:
  """Identifies a warm start: the SFT settings, the model and the exact corpus rows."""
  h = hashlib.sha256()
  settings = {k: config.sft[k] for k in ("steps", "batch_size", "learning_rate", "warmup_steps")}
  h.update(json.dumps({"sft": settings, "model": config.model.to_dict(), "seed": config.seed},
                      sort_keys=True, default=str).encode())
  for array in (rows.tokens, rows.loss_mask):
    h.update(np.ascontiguousarray(array).tobytes())
  return h.hexdigest()[:16]


@dataclasses.dataclass
class SFTResult:
  """What the SFT phase hands on.

  Attributes:
    params: the warm-started params (None when stopped before the end).
    done: the phase finished (now or in an earlier run).
    skipped: loaded from a finished cache instead of training.
  """

  params: Any
  done: bool
  skipped: bool


def cache_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The warm start's directory, absolute (orbax refuses relative checkpoint paths)."""
  return os.path.abspath(config.sft.cache_dir or os.path.join(workdir, DIR_NAME))


def run(config: ml_collections.ConfigDict, workdir: str, *, model: Any, params: Any,
        rows: SFTRows, mesh: Mesh, params_sharding: Any, writer: MetricWriter,
        should_stop: Callable[[], str | None], progress: Callable[..., Any]) -> SFTResult:
  """The SFT phase: train, or load the finished warm start from the cache.

  Args:
    config: the job config (`sft`, `checkpoint`, `log`, `model`, `seed`).
    workdir: the run's directory.
    model: the Transformer.
    params: initial params (random init or a pretrained checkpoint).
    rows: the tokenized corpus.
    mesh: the device mesh.
    params_sharding: shardings of the params on `mesh`.
    writer: metrics sink (phase "sft").
    should_stop: returns a reason to stop now (signal, wall time) or None.
    progress: `observe.progress_bar`-like factory.

  Returns:
    SFTResult.

  Raises:
    ValueError: the cache holds a warm start of different settings or data,
      or the batch does not split over the devices (naming the field).
  """
  s = config.sft
  if s.steps == 0:
    return SFTResult(params, done=True, skipped=True)
  batch_axes = mesh.shape["data"] * mesh.shape["fsdp"]
  if s.batch_size % batch_axes:
    raise ValueError(f"config.sft.batch_size: {s.batch_size} does not split over the "
                     f"{batch_axes} devices of the mesh's data/fsdp axes; use a multiple of "
                     f"{batch_axes}")
  directory = cache_dir(config, workdir)
  tag = fingerprint(config, rows)
  optimizer = make_optimizer(config)
  sharding = state_lib.state_sharding(params_sharding, optimizer, params, mesh)
  train_state = state_lib.create_sharded(params, optimizer, jax.random.PRNGKey(config.seed),
                                         sharding)
  start = 0
  with ckpt_lib.Checkpointer(directory, keep_last=1, keep_best=0,
                             async_save=config.checkpoint.async_save) as ckpt:
    if ckpt.latest_step() is not None:
      train_state, host, start = ckpt.restore(train_state)
      if host.get("fingerprint") != tag:
        raise ValueError(
            f"config.sft: the warm start cached in {directory} was trained with other SFT "
            "settings, model or corpus; use a fresh --workdir, set --config.sft.cache_dir to "
            "another directory, or delete that directory")
      if host.get("done"):
        return SFTResult(train_state.params, done=True, skipped=True)
    writer.resume("sft", start)
    step_fn = make_sft_step(model, optimizer, mesh, sharding, config.model.logprob_chunk_size)
    positions = rows.positions
    bar = progress(total=s.steps, initial=start, desc="sft", enabled=config.log.progress_bar)
    window_tokens, window_start = 0.0, time.perf_counter()
    try:
      for step in range(start, s.steps):
        reason = should_stop()
        if reason:
          ckpt.save(step, train_state, {"fingerprint": tag, "done": False})
          return SFTResult(None, done=False, skipped=False)
        idx = batch_indices(len(rows.tokens), s.batch_size, step, config.seed)
        train_state, metrics = step_fn(train_state, rows.tokens[idx], positions[idx],
                                       rows.input_mask[idx], rows.loss_mask[idx])
        bar.update(1)
        window_tokens += float(rows.input_mask[idx].sum())
        if (step + 1) % config.log.every_steps == 0 or step + 1 == s.steps:
          metrics = jax.device_get(metrics)
          elapsed = time.perf_counter() - window_start
          scalars = {"loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
                     "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                     "dropped_pairs": rows.dropped}
          writer.write("sft", step + 1, scalars)
          bar.set_postfix(loss=f"{float(metrics['loss']):.3f}")
          window_tokens, window_start = 0.0, time.perf_counter()
        if (step + 1) % s.checkpoint_every_steps == 0 and step + 1 < s.steps:
          ckpt.save(step + 1, train_state, {"fingerprint": tag, "done": False})
    finally:
      bar.close()
    ckpt.save(s.steps, train_state, {"fingerprint": tag, "done": True})
  return SFTResult(train_state.params, done=True, skipped=False)
