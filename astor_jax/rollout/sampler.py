"""Rollouts: prefill + `lax.while_loop` decode over the model's KV cache.

`generate` is the pure, jittable core; `Sampler` is the host-facing wrapper
that buckets and left-pads prompts, turns per-prompt sampling settings into
arrays, and keeps one jitted program per (prompts, bucket, group size, kind of
call: all greedy, sampled, or sampled with top-p / top-k filters).

Layout of one call with `B` prompts, group size `G`, bucket `P` and capacity
`M` new tokens (`N = B * G` rows, at most `S = P + M` cache slots):

    prefill  [B, P] once  -> a cache of the P prompt slots (queries in blocks of
               `transformer.QUERY_BLOCK`), logits of the last prompt token
    grow     repeat cache rows and logits G times (row r belongs to prompt r // G)
               and append the first segment's empty slots, in one fused write
    segments e_j = ceil(j M / n), j = 1 .. n (`decode_segments`):
      loop   t = e_{j-1} .. e_j - 1 while some row is unfinished:
               sample token t from the carried logits, feed it at slot P + t,
               attending to the P + e_j slots of the segment's cache (one model
               call per step; the call after the last token is the price of
               compiling the sampling code once)
      grow   append the next segment's empty slots

So decode attention costs the slots that can be written by then, not all of
S, at the price of compiling one decode loop per segment; by default a segment
spans at least `SEGMENT_MIN_TOKENS` new tokens (`auto_decode_segments`), so
short generations compile one loop. When the KV cache of
all N rows would not fit, `prompts_per_chunk` runs the batch as row chunks
one after the other (`lax.map`), each doing all of the above for its rows.

Host threads (`Sampler`, `host_threads`): on a one-device CPU host, XLA:CPU
runs one decode step of a few rows on about 1.3 of 2 cores (the matmuls are
too small to split well), and it runs unrelated programs one after the other
when one thread dispatches them (also when they are unrolled in one
program). The `Sampler` therefore splits the prompts into contiguous parts and
calls the same compiled program for each part from its own thread; the
parts run at once (`row_offset` / `total_rows` keep each row's random draws
what they are in one call). Measured on 2 cores, `bench_6l`, 16 rows x 128
tokens: one call 0.51 s, two parts 0.35 s, four parts 0.50 s. A part's
matmuls batch fewer rows, so its logits can differ from one call's in the
last float bits; where a uniform draw falls that close to the edge of a
token's probability interval the token differs (3 of 320 sampled rows of
`bench_tiny` at init, 64 tokens each). Row chunks are alike. Runs stay
deterministic for a given `host_threads`.

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
training rng); step t draws one uniform per row from `fold_in(key, t)`, so no
key is used twice and a row's draw does not depend on the row chunks or the
host threads' parts.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
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


DECODE_SEGMENTS = 4  # the most decode loops per call; each attends to the slots written by its end
# New tokens per decode loop at least: every loop compiles the decode step again
# (about 0.6 CPU s for the 6-layer d256 benchmark model); at 128 new tokens four
# loops saved 6-20% of the decode time and added 1.5-4 s to the first call
# (bench/README.md, 2026-12-06). Long generations (the paper's 1024 new tokens:
# four loops) are where attending only to written slots pays.
SEGMENT_MIN_TOKENS = 256


def auto_decode_segments(max_new_tokens: int) -> int:
  """Decode loops for `max_new_tokens`: one per SEGMENT_MIN_TOKENS, 1 to DECODE_SEGMENTS."""
  return max(1, min(DECODE_SEGMENTS, max_new_tokens // SEGMENT_MIN_TOKENS))


def segment_ends(max_new_tokens: int, segments: int) -> tuple[int, ...]:
  """Ends `e_j = ceil(j * M / n)`, j = 1..n, of the n decode segments (distinct, last is M)."""
  segments = max(1, min(segments, max_new_tokens))
  return tuple(sorted({-(-j * max_new_tokens // segments) for j in range(1, segments + 1)}))


def _prefill(model, tokens, positions, attention_mask, cache, cache_index):
  """Fills the cache with the prompts; logits `[B, V]` of the last column only."""
  hidden, cache = model.hidden_states(tokens, positions, attention_mask, cache, cache_index)
  return model.logits_from_hidden(hidden[:, -1]), cache


_CACHE_AXES = ("activation_batch", "activation_kv_heads", "activation_length",
               "activation_head_dim")


def _grow_cache(cache: transformer.Cache, group_size: int, new_slots: int,
                scanned: bool) -> transformer.Cache:
  """Repeats every cache row `group_size` times and appends `new_slots` empty slots.

  One fused repeat-and-pad per leaf writes the grown `[N, K, S + new, Dh]`
  cache straight from the old one: no intermediate cache-sized copy.
  """
  batch_axis = 1 if scanned else 0
  axes = ((None,) if scanned else ()) + _CACHE_AXES

  def grow(x):
    if group_size > 1:
      x = jnp.repeat(x, group_size, axis=batch_axis)
    pad = [(0, 0)] * x.ndim
    pad[batch_axis + 2] = (0, new_slots)
    return model_sharding.constrain(jnp.pad(x, pad), axes)

  return jax.tree.map(grow, cache)


def _generate_rows(model, params, prompt_tokens, prompt_mask, key, sp: SamplingParams,
                   row_ids, *, batch_rows: int, group_size: int, max_new_tokens: int,
                   pad_id: int, cache_dtype, decode_segments: int, any_sampled: bool,
                   any_filtered: bool) -> _DecodeState:
  """Prefill and decode of one set of prompts (the whole batch or one row chunk).

  `row_ids` `[rows]` are the rows' indices in the batch (None: all rows): step
  t draws one uniform per batch row from `fold_in(key, t)` and each row takes
  its own, so a row's tokens do not depend on how the batch is chunked.
  """
  num_prompts, prompt_len = prompt_tokens.shape
  rows = num_prompts * group_size
  batch_axes = ("activation_batch", None)
  prompt_tokens = model_sharding.constrain(prompt_tokens, batch_axes)
  prompt_mask = model_sharding.constrain(prompt_mask, batch_axes)

  # Prefill into a cache of exactly the P prompt slots, then grow it for the rollouts.
  prompt_cache = transformer.init_cache(model.config, num_prompts, prompt_len, cache_dtype)
  last_logits, prompt_cache = model.apply(
      {"params": params}, prompt_tokens, prompt_positions(prompt_mask),
      transformer.cache_mask(prompt_mask, jnp.int32(0), prompt_len), prompt_cache,
      jnp.int32(0), method=_prefill)
  ends = segment_ends(max_new_tokens, decode_segments)
  scanned = model.config.scan_layers
  cache = _grow_cache(prompt_cache, group_size, ends[0], scanned)
  # G rollouts share one prefill: repeat its logits instead of recomputing.
  last_logits = jnp.repeat(last_logits, group_size, axis=0)
  prompt_mask = jnp.repeat(prompt_mask, group_size, axis=0)
  real_prompt_len = prompt_mask.sum(axis=-1).astype(jnp.int32)

  window_len = sp.stop_sequences.shape[-1]
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

  def choose(state: _DecodeState, logits: jax.Array) -> _DecodeState:
    uniform = None
    if any_sampled:
      uniform = jax.random.uniform(jax.random.fold_in(key, state.step), (batch_rows,),
                                   jnp.float32)
      if row_ids is not None:
        uniform = uniform[row_ids]
    sampled, logprobs, processed = sampling.sample_tokens(
        None, logits, sp.temperature, sp.top_p, sp.top_k, uniform=uniform,
        any_sampled=any_sampled, any_filtered=any_filtered)
    return _record(state, sampled, logprobs, processed, sp, pad_id)

  def decode_step(carry, generated_span: int):
    """Chooses token t, then feeds it at slot P + t attending to P + span slots."""
    state, logits = carry
    state = choose(state, logits)
    fed = state.step - 1
    generated = jnp.arange(generated_span, dtype=jnp.int32) <= fed
    visible = jnp.concatenate(
        [prompt_mask, jnp.broadcast_to(generated, (rows, generated_span))], axis=1)
    logits, cache = model.apply(
        {"params": params}, state.last_tokens[:, None], (real_prompt_len + fed)[:, None],
        visible[:, None, :], state.cache, prompt_len + fed)
    return state._replace(cache=cache), logits[:, -1].astype(jnp.float32)

  # Segment j decodes tokens [e_{j-1}, e_j) with a cache of the P + e_j slots
  # that can be written by then, so its attention costs only those; the cache
  # grows by one copy between segments. Every segment ends early once every
  # row is finished.
  carry = (state, last_logits)
  for j, end in enumerate(ends):
    if j:
      state, logits = carry
      grown = _grow_cache(state.cache, 1, end - ends[j - 1], scanned)
      carry = (state._replace(cache=grown), logits)
    carry = jax.lax.while_loop(
        lambda c, end=end: (c[0].step < end) & ~jnp.all(c[0].done),
        functools.partial(decode_step, generated_span=end), carry)
  return carry[0]


def _chunked(x: jax.Array, chunks: int, group: int) -> jax.Array:
  """`[B * group, ...]` -> `[chunks, B / chunks * group, ...]`, chunk c = prompts c, c + n, ...

  Strided chunks keep each chunk's rows spread over all devices of a
  row-sharded batch.
  """
  per_chunk = x.shape[0] // (chunks * group)
  x = x.reshape(per_chunk, chunks, group, *x.shape[1:])
  return jnp.moveaxis(x, 1, 0).reshape(chunks, per_chunk * group, *x.shape[3:])


def _unchunked(x: jax.Array, group: int) -> jax.Array:
  """Inverse of `_chunked`."""
  chunks, rows = x.shape[:2]
  x = x.reshape(chunks, rows // group, group, *x.shape[2:])
  return jnp.moveaxis(x, 0, 1).reshape(chunks * rows, *x.shape[3:])


def generate(model: transformer.Transformer, params: Any, prompt_tokens: jax.Array,
             prompt_mask: jax.Array, key: jax.Array, sampling_params: SamplingParams, *,
             group_size: int, max_new_tokens: int, pad_id: int, cache_dtype=None,
             decode_segments: int | None = None,
             prompts_per_chunk: int | None = None, any_sampled: bool = True,
             any_filtered: bool = True, row_offset: jax.Array | None = None,
             total_rows: int | None = None) -> SamplerOutput:
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
    decode_segments: decode loops n (static): loop j generates tokens up to
      `e_j = ceil(j M / n)` attending to P + e_j slots; 1 attends to all P + M
      slots at every step. Each loop is compiled separately. None (default):
      `auto_decode_segments(max_new_tokens)`.
    any_sampled, any_filtered: static promises that some row samples (else
      all are greedy) and that some sampled row filters by top-p / top-k;
      False leaves that code out of the program (`sampling.sample_tokens`).
      `Sampler` sets them from the call's settings.
    prompts_per_chunk: prompts whose rollouts are generated together (static;
      None or B: all at once). With C < B the batch runs as B / C chunks one
      after the other (`lax.map`), each with a KV cache of C * G rows; chunk c
      holds prompts c, c + B/C, ... The tokens do not depend on C.
    row_offset, total_rows: this call generates rows `row_offset ..
      row_offset + N - 1` of a batch of `total_rows` rows (static) split into
      calls (`Sampler`'s host threads): each row draws the uniforms it draws
      in one call of the whole batch, so the tokens do not depend on the
      split (up to float rounding: module doc). None for both: the call is
      the whole batch.

  Returns:
    SamplerOutput with `N = B * group_size` rows.
  """
  chex.assert_rank([prompt_tokens, prompt_mask], 2)
  chex.assert_equal_shape([prompt_tokens, prompt_mask])
  num_prompts = prompt_tokens.shape[0]
  rows = num_prompts * group_size
  chex.assert_shape([sampling_params.temperature, sampling_params.top_p,
                     sampling_params.top_k, sampling_params.max_new_tokens], (rows,))
  chex.assert_rank(sampling_params.eos_ids, 2)
  chex.assert_rank(sampling_params.stop_sequences, 3)
  if (row_offset is None) != (total_rows is None):
    raise ValueError("row_offset and total_rows: pass both (one part of a batch) or neither")
  if total_rows is not None and total_rows < rows:
    raise ValueError(f"total_rows: got {total_rows}, expected at least this call's {rows} rows")
  row_ids = (None if row_offset is None else
             jnp.asarray(row_offset, jnp.int32) + jnp.arange(rows, dtype=jnp.int32))
  if decode_segments is None:
    decode_segments = auto_decode_segments(max_new_tokens)
  run = functools.partial(
      _generate_rows, model, params, batch_rows=total_rows or rows, group_size=group_size,
      max_new_tokens=max_new_tokens, pad_id=pad_id, cache_dtype=cache_dtype,
      decode_segments=decode_segments, any_sampled=any_sampled, any_filtered=any_filtered)
  if prompts_per_chunk is None or prompts_per_chunk == num_prompts:
    state = run(prompt_tokens, prompt_mask, key, sampling_params, row_ids)
    outputs = (state.tokens.T, state.lengths, state.finish_reasons, state.logprobs.T,
               state.processed_logprobs.T)
  else:
    if not 0 < prompts_per_chunk < num_prompts or num_prompts % prompts_per_chunk:
      raise ValueError(f"prompts_per_chunk: got {prompts_per_chunk}, expected a divisor of "
                       f"the {num_prompts} prompts")
    chunks = num_prompts // prompts_per_chunk
    if row_ids is None:
      row_ids = jnp.arange(rows, dtype=jnp.int32)

    def one_chunk(xs):
      tokens, mask, params_chunk, ids = xs
      state = run(tokens, mask, key, params_chunk, ids)
      return (state.tokens.T, state.lengths, state.finish_reasons, state.logprobs.T,
              state.processed_logprobs.T)

    per_chunk = jax.lax.map(one_chunk, (
        _chunked(prompt_tokens, chunks, 1), _chunked(prompt_mask, chunks, 1),
        jax.tree.map(lambda x: _chunked(x, chunks, group_size), sampling_params),
        _chunked(row_ids, chunks, group_size)))
    outputs = tuple(_unchunked(x, group_size) for x in per_chunk)
  tokens, lengths, finish_reasons, logprobs, processed_logprobs = outputs
  steps = jnp.arange(max_new_tokens, dtype=jnp.int32)
  return SamplerOutput(
      prompt_tokens=jnp.repeat(prompt_tokens, group_size, axis=0),
      prompt_mask=jnp.repeat(prompt_mask, group_size, axis=0),
      tokens=tokens,
      completion_mask=steps[None, :] < lengths[:, None],
      lengths=lengths,
      finish_reasons=finish_reasons,
      logprobs=logprobs,
      processed_logprobs=processed_logprobs,
  )


def kv_cache_bytes_per_row(config, cache_len: int, cache_dtype=None,
                           kv_head_shards: int = 1) -> int:
  """Bytes one rollout row's KV cache of `cache_len` slots takes on one device.

  `2 (k, v) x layers x kv_heads / kv_head_shards x cache_len x head_dim x itemsize`
  (the heads split over the tensor axis only when it divides them).
  """
  dtype = config.compute_jnp_dtype if cache_dtype is None else cache_dtype
  kv_heads = config.num_kv_heads
  if kv_heads % kv_head_shards == 0:
    kv_heads //= kv_head_shards
  return (2 * config.num_layers * kv_heads * cache_len * config.head_dim
          * np.dtype(dtype).itemsize)


def prompts_per_chunk(num_prompts: int, group_size: int, max_rows: int,
                      row_shards: int = 1) -> int:
  """Prompts per row chunk: the largest divisor C of `num_prompts` with C x G <= max_rows.

  Among those, a C that is a multiple of `row_shards` (the devices a row-sharded
  batch spreads over) is preferred, so every chunk keeps every device busy.

  Args:
    num_prompts: prompts B of the call.
    group_size: rollouts per prompt G.
    max_rows: the most rows a chunk may hold (at least G).
    row_shards: devices on the batch axes.

  Returns:
    C, a divisor of B (B itself when the whole batch fits).
  """
  if max_rows < group_size:
    raise ValueError(f"a row chunk of {max_rows} rows cannot hold one group of {group_size} "
                     "rollouts; raise config.sampler.chunk_rows to at least group_size")
  fitting = [c for c in range(1, num_prompts + 1)
             if num_prompts % c == 0 and c * group_size <= max_rows]
  sharded = [c for c in fitting if c % row_shards == 0]
  return max(sharded or fitting)


AUTO_CACHE_SHARE = 0.2  # share of the free device memory auto row chunks give their KV cache


def auto_chunk_rows(config, cache_len: int, free_bytes: int, *, cache_dtype=None,
                    row_shards: int = 1, kv_head_shards: int = 1,
                    cache_share: float = AUTO_CACHE_SHARE) -> int | None:
  """Rows per chunk whose KV cache takes at most `cache_share` of `free_bytes` per device.

  The rest is for what the compiled sampler holds besides the decode cache:
  in `launch_check`'s compiled figures of the paper configs (XLA:CPU) that is
  about 4x the cache (the scanned layers' output copy of the cache, float32
  copies of bf16 cache blocks for the CPU's dots, one query block's prefill
  scores, the grown cache between segments), hence a fifth. None when nothing
  is known about the memory (`free_bytes` <= 0).
  """
  if free_bytes <= 0:
    return None
  per_row = kv_cache_bytes_per_row(config, cache_len, cache_dtype, kv_head_shards)
  return max(1, int(cache_share * free_bytes) // per_row) * row_shards


def _free_device_bytes(mesh) -> int:
  """Free memory of the fullest device the sampler runs on, or 0 when the backend says nothing."""
  devices = mesh.devices.flat if mesh is not None else jax.local_devices()[:1]
  free = []
  for device in devices:
    if device.process_index != jax.process_index():
      continue
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "bytes_limit" not in stats:
      return 0
    free.append(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
  return min(free) if free else 0


def auto_host_threads(mesh) -> int:
  """Host threads a `Sampler` splits a call over when `host_threads=0` (auto).

  Two on a host whose sampler runs on one CPU device and that has at least two
  cores (module doc: XLA:CPU runs one small decode on about 1.3 of 2 cores;
  two parts measured 1.5x faster than one call, four parts no faster than one;
  larger hosts were not measured, set `host_threads` there). One otherwise:
  an accelerator runs the calls of one process one after the other, and a
  multi-device mesh already spreads the rows.
  """
  devices = list(mesh.devices.flat) if mesh is not None else jax.local_devices()[:1]
  if len(devices) != 1 or devices[0].platform != "cpu":
    return 1
  return min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)


@jax.jit
def _join_parts(outputs: Sequence[SamplerOutput]) -> SamplerOutput:
  """The parts' rows in order, every field in one program (one compile, not one per field)."""
  return SamplerOutput(*(jnp.concatenate(field, axis=0) for field in zip(*outputs)))


def host_parts(num_prompts: int, host_threads: int) -> int:
  """Parts a call of `num_prompts` prompts is split into: the largest divisor <= host_threads."""
  return max(k for k in range(1, min(host_threads, num_prompts) + 1) if num_prompts % k == 0)


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

  Row chunks: when the KV cache of all `B x G` rows would not fit, the batch
  runs as chunks of at most `chunk_rows` rows, one after the other inside the
  one program (`generate`'s `prompts_per_chunk`; the tokens are the same).
  `chunk_rows=0` (auto) sizes chunks so that their KV cache takes at most
  `AUTO_CACHE_SHARE` of the device memory free at the first call of a shape
  (accelerators report it; on CPU the batch runs whole).

  Host threads: with `host_threads` k > 1 a call's B prompts are split into
  the largest number of equal contiguous parts (at most k) and the one
  compiled program of a part runs for each part in its own thread, at the
  same time (module doc: the same draws). `host_threads=0` (auto,
  `auto_host_threads`) is 2 on a one-device CPU host and 1 elsewhere. A split
  call returns when all its parts are done.

  Example:
    sampler = Sampler(model, max_new_tokens=96, prompt_buckets=(64, 128), pad_id=0)
    rng, key = jax.random.split(rng)
    out = sampler(params, prompts, key, group_size=8, temperature=1.0,
                  stop=StopCondition(eos_ids=(2,)))
  """

  def __init__(self, model: transformer.Transformer, *, max_new_tokens: int,
               prompt_buckets: Sequence[int], pad_id: int, mesh: jax.sharding.Mesh | None = None,
               cache_dtype=None, max_eos_ids: int = 4, max_stop_sequences: int = 4,
               max_stop_length: int = 16, chunk_rows: int = 0,
               decode_segments: int | None = None, host_threads: int = 0):
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
      chunk_rows: the most rollout rows generated at once (`config.sampler.chunk_rows`);
        0 is auto (see the class docstring).
      decode_segments: decode loops per call (`generate`; None: by max_new_tokens).
      host_threads: the most parts a call is split into, each run by its own
        host thread (`config.sampler.host_threads`); 0 is auto (see the class
        docstring).
    """
    for name, value in (("max_new_tokens", max_new_tokens), ("max_eos_ids", max_eos_ids),
                        ("max_stop_sequences", max_stop_sequences),
                        ("max_stop_length", max_stop_length)):
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: got {value!r}, expected a positive integer")
    for name, value in (("chunk_rows", chunk_rows), ("host_threads", host_threads)):
      if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}: got {value!r}, expected an integer >= 0 (0: auto)")
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
    self.chunk_rows = chunk_rows
    self.host_threads = host_threads or auto_host_threads(mesh)
    self._threads: concurrent.futures.ThreadPoolExecutor | None = None
    self._model_config = model.config
    self._cache_dtype = cache_dtype
    self._chunking: dict[tuple[int, int, int], int] = {}
    self._generate = jax.jit(
        functools.partial(generate, model, max_new_tokens=max_new_tokens, pad_id=self.pad_id,
                          cache_dtype=cache_dtype, decode_segments=decode_segments),
        static_argnames=("group_size", "prompts_per_chunk", "any_sampled", "any_filtered",
                         "total_rows"))

  def prompts_per_chunk(self, num_prompts: int, bucket: int, group_size: int) -> int:
    """Prompts generated together for a call of this shape (fixed at its first call)."""
    shape = (num_prompts, bucket, group_size)
    if shape not in self._chunking:
      row_shards = kv_shards = 1
      if self.mesh is not None:
        row_shards = self.mesh.shape.get("data", 1) * self.mesh.shape.get("fsdp", 1)
        kv_shards = self.mesh.shape.get("tensor", 1)
      max_rows = self.chunk_rows or auto_chunk_rows(
          self._model_config, bucket + self.max_new_tokens, _free_device_bytes(self.mesh),
          cache_dtype=self._cache_dtype, row_shards=row_shards, kv_head_shards=kv_shards)
      rows = num_prompts * group_size
      self._chunking[shape] = (num_prompts if max_rows is None or max_rows >= rows else
                               prompts_per_chunk(num_prompts, group_size, max_rows, row_shards))
    return self._chunking[shape]

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
                 temperature, top_p, top_k, max_new_tokens, stop) -> tuple[list, dict]:
    """Validates a call; for each host-thread part, its arguments of `generate` after params.

    Returns (one `(args, kwargs)` per part, the keyword arguments all parts
    share): `args` is `(prompt_tokens, prompt_mask, key, sampling_params)`;
    `kwargs` holds the part's `row_offset` when the call is split, else it
    is empty.
    """
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
    # Code the settings cannot use stays out of the program (`generate`): at
    # most three programs per shape (greedy, sampled, sampled with filters).
    filtered = sampling.filters(settings["temperature"], settings["top_p"], settings["top_k"],
                                self._model_config.vocab_size)
    static = dict(group_size=group_size, any_sampled=bool((settings["temperature"] > 0).any()),
                  any_filtered=bool(filtered.any()))
    parts = host_parts(num_prompts, self.host_threads)
    if parts == 1:
      static["prompts_per_chunk"] = self.prompts_per_chunk(num_prompts, bucket, group_size)
      return [((prompt_tokens, prompt_mask, key, sampling_params), {})], static
    prompts_per_part = num_prompts // parts
    rows = prompts_per_part * group_size
    static.update(total_rows=num_prompts * group_size,
                  prompts_per_chunk=self.prompts_per_chunk(prompts_per_part, bucket, group_size))
    return [((prompt_tokens[i * prompts_per_part:(i + 1) * prompts_per_part],
              prompt_mask[i * prompts_per_part:(i + 1) * prompts_per_part], key,
              jax.tree.map(lambda x, i=i: x[i * rows:(i + 1) * rows], sampling_params)),
             {"row_offset": np.int32(i * rows)}) for i in range(parts)], static

  def _run(self, params: Any, part: tuple[tuple, dict], static: dict,
           compile_only: bool = False):
    """One part's `generate` call (or its lowering) under the sampler's mesh."""
    fn = self._generate.lower if compile_only else self._generate
    args, kwargs = part
    if self.mesh is None:
      return fn(params, *args, **static, **kwargs)
    with jax.set_mesh(self.mesh):
      return fn(params, *args, **static, **kwargs)

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
    parts, static = self._arguments(prompts, key, group_size, temperature, top_p, top_k,
                                    max_new_tokens, stop)
    if len(parts) == 1:
      return self._run(params, parts[0], static)
    if self._threads is None:
      self._threads = concurrent.futures.ThreadPoolExecutor(
          self.host_threads, thread_name_prefix="sampler")
    # Each thread waits for its own part: programs dispatched from one thread
    # ran one after the other on XLA:CPU (measured), from two threads at once.
    outputs = list(self._threads.map(
        lambda part: jax.block_until_ready(self._run(params, part, static)), parts))
    return _join_parts(outputs)

  def lower(self, params: Any, prompts: Sequence[Sequence[int]], key: jax.Array, *,
            group_size: int = 1, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=None,
            stop: StopCondition | Sequence[StopCondition] = StopCondition(),
            ) -> jax.stages.Lowered:
    """The lowered program a call with these arguments runs (for HLO and cost checks).

    A call split over host threads runs this one program once per part.
    """
    parts, static = self._arguments(prompts, key, group_size, temperature, top_p, top_k,
                                    max_new_tokens, stop)
    return self._run(params, parts[0], static, compile_only=True)
