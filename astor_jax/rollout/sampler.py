"""Rollouts: prefill + `lax.while_loop` decode over the model's KV cache.

`generate` is the pure, jittable core; `Sampler` is the host-facing wrapper
that buckets and left-pads prompts, turns per-prompt sampling settings into
arrays, and keeps one jitted program per (prompts, bucket, group size).

Layout of one call with `B` prompts, group size `G`, bucket `P` and capacity
`M` new tokens (`N = B * G` rows, cache of `S = P + M` slots):

    prefill  [B, P] once  -> cache slots [0, P), logits of the last prompt token
    repeat   cache rows and logits G times (row r belongs to prompt r // G)
    loop     t = 0 .. M-1 while some row is unfinished:
               sample token t from the carried logits, feed it at slot P + t
               (one model call per step; the call after the last token is the
               price of compiling the sampling code once)

Every row attends to its real prompt slots and to its own generated slots, so
left padding never changes a row's tokens. A row finishes at EOS (its task's
EOS ids), at the end of a stop sequence, or at its `max_new_tokens`; the EOS
or stop tokens stay in the completion (the policy emitted them, and training on
them is what teaches it to stop). After a row finishes it emits `pad_id` with
mask false; the loop ends as soon as every row is finished.

Log-probs: `logprobs` is `log softmax(logits)[token]` of the raw policy (no
temperature, no top-k/top-p), exactly what the trainer recomputes from the same
tokens, so their difference measures the sampler/trainer mismatch.
`processed_logprobs` is the log-probability under the distribution the token
was drawn from (0 for greedy rows).

Random numbers: the caller passes a fresh key per call (split it from the
training rng); step t uses `fold_in(key, t)`, so no key is used twice.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from astor_jax.model import sharding as model_sharding
from astor_jax.model import transformer
from astor_jax.rollout import buckets, sampling

FINISH_LENGTH, FINISH_EOS, FINISH_STOP = 0, 1, 2
FINISH_REASONS = ("length", "eos", "stop")  # indexed by the codes above

_NO_TOKEN = -1  # padding of the EOS-id and stop-sequence tables; never a token id
_NOT_GENERATED = -2  # fills the recent-token window before a row has tokens


class SamplingParams(NamedTuple):
  """Per-row decoding settings; arrays, so new values never recompile.

  Attributes:
    temperature: `[N]` float32 >= 0; 0 is greedy.
    top_p: `[N]` float32 in (0, 1]; 1 is off.
    top_k: `[N]` int32 >= 0; 0 is off.
    max_new_tokens: `[N]` int32 in [1, M]: a row stops with "length" after this many.
    eos_ids: `[N, E]` int32, the row's EOS ids, padded with -1.
    stop_sequences: `[N, K, W]` int32, the row's stop sequences, each left-padded
      with -1 to W tokens (right-aligned), unused ones all -1.
  """

  temperature: jax.Array
  top_p: jax.Array
  top_k: jax.Array
  max_new_tokens: jax.Array
  eos_ids: jax.Array
  stop_sequences: jax.Array


class SamplerOutput(NamedTuple):
  """What one call returns, per row (`N = prompts x group size` rows).

  Row r is rollout `r % G` of prompt `r // G`.

  Attributes:
    prompt_tokens: `[N, P]` int32, the left-padded prompt.
    prompt_mask: `[N, P]` bool, real prompt tokens.
    tokens: `[N, M]` int32, the completion; `pad_id` after the row finished.
    completion_mask: `[N, M]` bool, the first `lengths[r]` columns.
    lengths: `[N]` int32, completion tokens (EOS / stop tokens included).
    finish_reasons: `[N]` int32, FINISH_LENGTH, FINISH_EOS or FINISH_STOP.
    logprobs: `[N, M]` float32, raw-policy log-prob of each token (0 off the mask).
    processed_logprobs: `[N, M]` float32, log-prob under the sampling
      distribution (0 off the mask and for greedy rows).
  """

  prompt_tokens: jax.Array
  prompt_mask: jax.Array
  tokens: jax.Array
  completion_mask: jax.Array
  lengths: jax.Array
  finish_reasons: jax.Array
  logprobs: jax.Array
  processed_logprobs: jax.Array


def _stop_sequence_hit(window: jax.Array, stop_sequences: jax.Array) -> jax.Array:
  """Whether the last generated tokens end with one of the row's stop sequences.

  Args:
    window: `[N, W]` the last W generated tokens (oldest first), -2 before any.
    stop_sequences: `[N, K, W]` right-aligned, -1 marks unused positions.

  Returns:
    `[N]` bool.
  """
  matches = (stop_sequences == _NO_TOKEN) | (stop_sequences == window[:, None, :])
  non_empty = jnp.any(stop_sequences != _NO_TOKEN, axis=-1)
  return jnp.any(jnp.all(matches, axis=-1) & non_empty, axis=-1)


class _DecodeState(NamedTuple):
  step: jax.Array  # index t of the token being chosen
  last_tokens: jax.Array  # [N] token t-1
  tokens: jax.Array  # [M, N] (step-major, so each step writes one contiguous row)
  logprobs: jax.Array  # [M, N]
  processed_logprobs: jax.Array  # [M, N]
  done: jax.Array  # [N]
  finish_reasons: jax.Array  # [N]
  lengths: jax.Array  # [N]
  window: jax.Array  # [N, W]
  cache: Any


def _record(state: _DecodeState, sampled: jax.Array, logprobs: jax.Array,
            processed: jax.Array, params: SamplingParams, pad_id: int) -> _DecodeState:
  """Writes token `state.step` of every unfinished row and updates stop state."""
  active = ~state.done
  step = state.step
  tokens = jnp.where(active, sampled, pad_id)
  window = jnp.concatenate([state.window[:, 1:], tokens[:, None]], axis=1)
  hit_eos = active & jnp.any(tokens[:, None] == params.eos_ids, axis=-1)
  hit_stop = active & _stop_sequence_hit(window, params.stop_sequences)
  hit_length = active & (step + 1 >= params.max_new_tokens)
  finished = hit_eos | hit_stop | hit_length
  reason = jnp.where(hit_eos, FINISH_EOS, jnp.where(hit_stop, FINISH_STOP, FINISH_LENGTH))
  put = lambda buffer, row: jax.lax.dynamic_update_index_in_dim(buffer, row, step, axis=0)
  return state._replace(
      step=step + 1,
      last_tokens=tokens,
      tokens=put(state.tokens, tokens),
      logprobs=put(state.logprobs, jnp.where(active, logprobs, 0.0)),
      processed_logprobs=put(state.processed_logprobs, jnp.where(active, processed, 0.0)),
      done=state.done | finished,
      finish_reasons=jnp.where(finished, reason, state.finish_reasons).astype(jnp.int32),
      lengths=state.lengths + active.astype(jnp.int32),
      window=window,
  )


def prompt_positions(prompt_mask: jax.Array) -> jax.Array:
  """Positions of left-padded prompts: 0 at the first real token, pads get 0.

  Args:
    prompt_mask: `[B, P]` bool.

  Returns:
    `[B, P]` int32, `max(cumsum(mask) - 1, 0)`.
  """
  return jnp.maximum(jnp.cumsum(prompt_mask.astype(jnp.int32), axis=-1) - 1, 0)


def _prefill(model, tokens, positions, attention_mask, cache, cache_index):
  """Fills the cache with the prompts; logits `[B, V]` of the last column only."""
  hidden, cache = model.hidden_states(tokens, positions, attention_mask, cache, cache_index)
  return model.logits_from_hidden(hidden[:, -1]), cache


def generate(model: transformer.Transformer, params: Any, prompt_tokens: jax.Array,
             prompt_mask: jax.Array, key: jax.Array, sampling_params: SamplingParams, *,
             group_size: int, max_new_tokens: int, pad_id: int,
             cache_dtype=None) -> SamplerOutput:
  """Samples `group_size` completions per prompt (pure; jit with the static args).

  Args:
    model: the `Transformer` module (static).
    params: its parameters (any sharding; used in place).
    prompt_tokens: `[B, P]` int32, left-padded prompts.
    prompt_mask: `[B, P]` bool; the last column must be real for every row.
    key: a PRNG key used for this call only.
    sampling_params: per-row settings for the `N = B * group_size` rows.
    group_size: rollouts per prompt G (static).
    max_new_tokens: capacity M of the completion buffers (static).
    pad_id: token id written after a row finished (static).
    cache_dtype: KV-cache dtype (static; default the model's compute dtype).

  Returns:
    SamplerOutput with `N = B * group_size` rows.
  """
  chex.assert_rank([prompt_tokens, prompt_mask], 2)
  chex.assert_equal_shape([prompt_tokens, prompt_mask])
  num_prompts, prompt_len = prompt_tokens.shape
  rows = num_prompts * group_size
  cache_len = prompt_len + max_new_tokens
  chex.assert_shape([sampling_params.temperature, sampling_params.top_p,
                     sampling_params.top_k, sampling_params.max_new_tokens], (rows,))
  chex.assert_rank(sampling_params.eos_ids, 2)
  chex.assert_rank(sampling_params.stop_sequences, 3)
  batch_axes = ("activation_batch", None)
  prompt_tokens = model_sharding.constrain(prompt_tokens, batch_axes)
  prompt_mask = model_sharding.constrain(prompt_mask, batch_axes)

  # Prefill writes slots [0, P); slots [P, S) stay invisible until written.
  key_mask = jnp.concatenate([prompt_mask, jnp.zeros((num_prompts, max_new_tokens), bool)],
                             axis=1)
  cache = transformer.init_cache(model.config, num_prompts, cache_len, cache_dtype)
  last_logits, cache = model.apply(
      {"params": params}, prompt_tokens, prompt_positions(prompt_mask),
      transformer.cache_mask(key_mask, jnp.int32(0), prompt_len), cache, jnp.int32(0),
      method=_prefill)

  # G rollouts share one prefill: repeat the cache rows instead of recomputing.
  repeat = lambda x, axis=0: jnp.repeat(x, group_size, axis=axis)
  if group_size > 1:
    # Cache leaves are [B, K, S, Dh] per layer, or [L, B, K, S, Dh] when scanned.
    batch_axis = 1 if model.config.scan_layers else 0
    cache = jax.tree.map(lambda x: repeat(x, batch_axis), cache)
    last_logits = repeat(last_logits)
  prompt_tokens, prompt_mask = repeat(prompt_tokens), repeat(prompt_mask)
  real_prompt_len = prompt_mask.sum(axis=-1).astype(jnp.int32)

  window_len = sampling_params.stop_sequences.shape[-1]
  state = _DecodeState(
      step=jnp.int32(0),
      last_tokens=jnp.full((rows,), pad_id, jnp.int32),
      tokens=jnp.full((max_new_tokens, rows), pad_id, jnp.int32),
      logprobs=jnp.zeros((max_new_tokens, rows), jnp.float32),
      processed_logprobs=jnp.zeros((max_new_tokens, rows), jnp.float32),
      done=jnp.zeros((rows,), bool),
      finish_reasons=jnp.full((rows,), FINISH_LENGTH, jnp.int32),
      lengths=jnp.zeros((rows,), jnp.int32),
      window=jnp.full((rows, window_len), _NOT_GENERATED, jnp.int32),
      cache=cache,
  )
  sp = sampling_params

  def choose(state: _DecodeState, logits: jax.Array) -> _DecodeState:
    step_key = jax.random.fold_in(key, state.step)
    sampled, logprobs, processed = sampling.sample_tokens(
        step_key, logits, sp.temperature, sp.top_p, sp.top_k)
    return _record(state, sampled, logprobs, processed, sp, pad_id)

  generated_slot = jnp.arange(max_new_tokens, dtype=jnp.int32)

  def decode_step(carry):
    state, logits = carry
    state = choose(state, logits)
    fed = state.step - 1  # the token just chosen, written to cache slot P + fed
    slot = prompt_len + fed
    written = jnp.concatenate(
        [prompt_mask, jnp.broadcast_to(generated_slot <= fed, (rows, max_new_tokens))], axis=1)
    logits, cache = model.apply(
        {"params": params}, state.last_tokens[:, None], (real_prompt_len + fed)[:, None],
        transformer.cache_mask(written, slot, 1), state.cache, slot)
    return state._replace(cache=cache), logits[:, -1].astype(jnp.float32)

  def unfinished(carry) -> jax.Array:
    state, _ = carry
    return (state.step < max_new_tokens) & ~jnp.all(state.done)

  state, _ = jax.lax.while_loop(unfinished, decode_step, (state, last_logits))
  steps = jnp.arange(max_new_tokens, dtype=jnp.int32)
  return SamplerOutput(
      prompt_tokens=prompt_tokens,
      prompt_mask=prompt_mask,
      tokens=state.tokens.T,
      completion_mask=steps[None, :] < state.lengths[:, None],
      lengths=state.lengths,
      finish_reasons=state.finish_reasons,
      logprobs=state.logprobs.T,
      processed_logprobs=state.processed_logprobs.T,
  )


@dataclasses.dataclass(frozen=True)
class StopCondition:
  """When a row of one task stops (besides its token budget).

  Attributes:
    eos_ids: token ids that end the completion (included in it).
    stop_sequences: token-id sequences; the completion ends right after the
      first one it contains (included in it). Token-level, so the host applies
      any string-level trimming after detokenizing.
  """

  eos_ids: tuple[int, ...] = ()
  stop_sequences: tuple[tuple[int, ...], ...] = ()


def _per_prompt(name: str, value, num_prompts: int, cast) -> np.ndarray:
  """A scalar or one value per prompt, as a `[num_prompts]` array."""
  if np.ndim(value) == 0:
    return np.full((num_prompts,), value, dtype=cast)
  array = np.asarray(value, dtype=cast)
  if array.shape != (num_prompts,):
    raise ValueError(f"{name}: got {array.shape[0] if array.ndim == 1 else array.shape} "
                     f"values for {num_prompts} prompts; pass one value or one per prompt")
  return array


class Sampler:
  """Host-facing rollout engine: buckets prompts and runs the jitted `generate`.

  One program is compiled per (number of prompts, prompt bucket, group size);
  temperature, top-p, top-k, per-row token budgets, EOS ids and stop sequences
  are arrays and never recompile. The EOS and stop tables have fixed capacity
  (`max_eos_ids`, `max_stop_sequences` x `max_stop_length`) for the same reason.

  With `mesh`, calls run under `jax.set_mesh(mesh)`: prompt rows are sharded
  over the batch axes ("data", "fsdp") and the params are used where they
  live (the actor's params on the same mesh are not copied).

  Example:
    sampler = Sampler(model, max_new_tokens=96, prompt_buckets=(64, 128), pad_id=0)
    rng, key = jax.random.split(rng)
    out = sampler(params, prompts, key, group_size=8, temperature=1.0,
                  stop=StopCondition(eos_ids=(2,)))
  """

  def __init__(self, model: transformer.Transformer, *, max_new_tokens: int,
               prompt_buckets: Sequence[int], pad_id: int, mesh: jax.sharding.Mesh | None = None,
               cache_dtype=None, max_eos_ids: int = 4, max_stop_sequences: int = 4,
               max_stop_length: int = 16):
    """Builds the engine.

    Args:
      model: the `Transformer`.
      max_new_tokens: capacity M of a completion (`config.sampler.max_new_tokens`).
      prompt_buckets: increasing padded prompt lengths (`config.sampler.prompt_buckets`).
      pad_id: the tokenizer's pad id.
      mesh: the training mesh, or None for the default device.
      cache_dtype: KV-cache dtype (default: the model's compute dtype).
      max_eos_ids: capacity of a row's EOS-id list.
      max_stop_sequences: capacity of a row's stop-sequence list.
      max_stop_length: the longest stop sequence, in tokens.
    """
    for name, value in (("max_new_tokens", max_new_tokens), ("max_eos_ids", max_eos_ids),
                        ("max_stop_sequences", max_stop_sequences),
                        ("max_stop_length", max_stop_length)):
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: got {value!r}, expected a positive integer")
    if not prompt_buckets or list(prompt_buckets) != sorted(set(prompt_buckets)):
      raise ValueError(f"prompt_buckets: got {prompt_buckets!r}, expected a non-empty "
                       "increasing list of lengths")
    self.max_new_tokens = max_new_tokens
    self.prompt_buckets = tuple(int(b) for b in prompt_buckets)
    self.pad_id = int(pad_id)
    self.mesh = mesh
    self.max_eos_ids = max_eos_ids
    self.max_stop_sequences = max_stop_sequences
    self.max_stop_length = max_stop_length
    self._generate = jax.jit(
        functools.partial(generate, model, max_new_tokens=max_new_tokens, pad_id=self.pad_id,
                          cache_dtype=cache_dtype),
        static_argnames=("group_size",))

  def _stop_tables(self, stop: StopCondition | Sequence[StopCondition],
                   num_prompts: int) -> tuple[np.ndarray, np.ndarray]:
    stops = [stop] * num_prompts if isinstance(stop, StopCondition) else list(stop)
    if len(stops) != num_prompts:
      raise ValueError(f"stop: got {len(stops)} StopConditions for {num_prompts} prompts; "
                       "pass one for all or one per prompt")
    eos = np.full((num_prompts, self.max_eos_ids), _NO_TOKEN, np.int32)
    seqs = np.full((num_prompts, self.max_stop_sequences, self.max_stop_length), _NO_TOKEN,
                   np.int32)
    for row, condition in enumerate(stops):
      if len(condition.eos_ids) > self.max_eos_ids:
        raise ValueError(f"stop[{row}].eos_ids: {len(condition.eos_ids)} ids, more than "
                         f"max_eos_ids={self.max_eos_ids}; raise it when building the Sampler")
      if len(condition.stop_sequences) > self.max_stop_sequences:
        raise ValueError(
            f"stop[{row}].stop_sequences: {len(condition.stop_sequences)} sequences, more "
            f"than max_stop_sequences={self.max_stop_sequences}; raise it when building "
            "the Sampler")
      eos[row, :len(condition.eos_ids)] = condition.eos_ids
      for i, sequence in enumerate(condition.stop_sequences):
        if not 0 < len(sequence) <= self.max_stop_length:
          raise ValueError(
              f"stop[{row}].stop_sequences[{i}]: {len(sequence)} tokens; expected 1 to "
              f"max_stop_length={self.max_stop_length} (raise it when building the Sampler)")
        seqs[row, i, self.max_stop_length - len(sequence):] = sequence
    if (eos < _NO_TOKEN).any() or (seqs < _NO_TOKEN).any():
      raise ValueError("stop: token ids must be >= 0")
    return eos, seqs

  def _arguments(self, prompts: Sequence[Sequence[int]], key: jax.Array, group_size: int,
                 temperature, top_p, top_k, max_new_tokens, stop) -> tuple:
    """Validates a call and builds the positional arguments of `generate` after params."""
    num_prompts = len(prompts)
    if num_prompts == 0:
      raise ValueError("prompts: empty; pass at least one prompt")
    if not isinstance(group_size, int) or group_size <= 0:
      raise ValueError(f"group_size: got {group_size!r}, expected a positive integer")
    bucket = buckets.choose_bucket(max(len(p) for p in prompts), self.prompt_buckets)
    prompt_tokens, prompt_mask = buckets.left_pad(prompts, bucket, self.pad_id)
    budget = self.max_new_tokens if max_new_tokens is None else max_new_tokens
    settings = dict(
        temperature=_per_prompt("temperature", temperature, num_prompts, np.float32),
        top_p=_per_prompt("top_p", top_p, num_prompts, np.float32),
        top_k=_per_prompt("top_k", top_k, num_prompts, np.int32),
        max_new_tokens=_per_prompt("max_new_tokens", budget, num_prompts, np.int32))
    checks = (("temperature", lambda v: v >= 0, "a number >= 0 (0 is greedy)"),
              ("top_p", lambda v: (v > 0) & (v <= 1), "a number in (0, 1]"),
              ("top_k", lambda v: v >= 0, "an integer >= 0 (0 is off)"),
              ("max_new_tokens", lambda v: (v >= 1) & (v <= self.max_new_tokens),
               f"an integer in [1, {self.max_new_tokens}] (the Sampler's capacity)"))
    for name, ok, expected in checks:
      if not np.all(ok(settings[name])):
        raise ValueError(f"{name}: got {settings[name].tolist()}, expected {expected}")
    eos, seqs = self._stop_tables(stop, num_prompts)
    per_row = lambda x: np.repeat(x, group_size, axis=0)
    sampling_params = SamplingParams(**{k: per_row(v) for k, v in settings.items()},
                                     eos_ids=per_row(eos), stop_sequences=per_row(seqs))
    return prompt_tokens, prompt_mask, key, sampling_params

  def __call__(self, params: Any, prompts: Sequence[Sequence[int]], key: jax.Array, *,
               group_size: int = 1, temperature=1.0, top_p=1.0, top_k=0,
               max_new_tokens=None,
               stop: StopCondition | Sequence[StopCondition] = StopCondition(),
               ) -> SamplerOutput:
    """Samples `group_size` completions for each prompt.

    Args:
      params: model parameters (on the default device or on `mesh`).
      prompts: B prompts of token ids (no padding), 1 to max(prompt_buckets) long.
      key: a PRNG key for this call only (split it off your rng; never reuse it).
      group_size: rollouts per prompt G.
      temperature: one value or one per prompt; 0 is greedy.
      top_p: one value or one per prompt, in (0, 1].
      top_k: one value or one per prompt; 0 is off.
      max_new_tokens: None (the capacity M), one value or one per prompt, in [1, M].
      stop: one StopCondition for all prompts, or one per prompt (per task).

    Returns:
      SamplerOutput with `B * group_size` rows, row r from prompt r // group_size.
    """
    args = self._arguments(prompts, key, group_size, temperature, top_p, top_k,
                           max_new_tokens, stop)
    if self.mesh is None:
      return self._generate(params, *args, group_size=group_size)
    with jax.set_mesh(self.mesh):
      return self._generate(params, *args, group_size=group_size)

  def lower(self, params: Any, prompts: Sequence[Sequence[int]], key: jax.Array, *,
            group_size: int = 1, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=None,
            stop: StopCondition | Sequence[StopCondition] = StopCondition(),
            ) -> jax.stages.Lowered:
    """The lowered program a call with these arguments runs (for HLO and cost checks)."""
    args = self._arguments(prompts, key, group_size, temperature, top_p, top_k,
                           max_new_tokens, stop)
    if self.mesh is None:
      return self._generate.lower(params, *args, group_size=group_size)
    with jax.set_mesh(self.mesh):
      return self._generate.lower(params, *args, group_size=group_size)
