"""Per-step token selection: temperature, top-k, top-p and greedy, sort-free.

All sampling parameters are per-row arrays (traced values), so changing them
never recompiles. The order of the transforms is the one vLLM and Hugging Face
use: scale by the temperature, keep the top-k tokens, then keep the smallest
set of the remaining tokens whose (renormalized) probability reaches top-p.

Two choices that matter for speed on CPU, where a full vocabulary sort or
`V` Gumbel draws per row cost more than the whole sampling step:

- The top-k and top-p cut-offs are found by bisection over the 32-bit
  order-preserving integer image of the logits (exactly 32 halvings of a
  `[rows, vocab]` count or masked sum), not by sorting. Tokens tied with the
  cut-off logit are all kept (a sort would break the tie by index).
- Tokens are drawn by inverse-CDF sampling (one uniform per row, two short
  cumulative sums), which is exact categorical sampling.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

_BISECTION_STEPS = 32  # the width of the integer keys: the search is exact


def _ordered_keys(x: jax.Array) -> jax.Array:
  """Maps float32 values to uint32 keys with the same order (NaN-free input).

  Positive floats get the sign bit set; negative floats have all bits flipped,
  so larger floats map to larger unsigned integers.
  """
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  negative = (bits >> 31) == 1
  return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _largest_key(lo: jax.Array, hi: jax.Array, predicate) -> jax.Array:
  """Largest uint32 key `k` in `[lo, hi)` per row with `predicate(k)` true.

  Assumes `predicate` is monotone (true up to some key, false after) and true
  at `lo`; `hi` is exclusive. Args: lo, hi `[rows]` uint32.
  """

  def body(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    # Once hi - lo <= 1, mid == lo and the predicate (true at lo) keeps lo.
    ok = predicate(mid)
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

  lo, _ = jax.lax.fori_loop(0, _BISECTION_STEPS, body, (lo, hi))
  return lo


def top_k_top_p_keep(scaled_logits: jax.Array, top_k: jax.Array,
                     top_p: jax.Array) -> jax.Array:
  """Which tokens survive top-k then top-p filtering, per row.

  With `z` the temperature-scaled logits of one row, `pi = softmax(z)`:
    keep_k = {j : z_j >= z_(k)}                 (z_(k): k-th largest; all if k=0)
    keep   = {j in keep_k : z_j >= tau},  tau = max{t : sum_{i in keep_k, z_i >= t} pi_i
                                                  >= top_p * sum_{i in keep_k} pi_i}
  i.e. the smallest prefix of the sorted top-k tokens whose renormalized mass
  reaches `top_p` (ties with the cut-off are kept).

  Args:
    scaled_logits: `[rows, vocab]` float32, logits divided by the temperature.
    top_k: `[rows]` int32; 0 (or >= vocab) keeps every token.
    top_p: `[rows]` float32 in (0, 1]; 1 keeps every token.

  Returns:
    `[rows, vocab]` bool mask of the kept tokens; at least the arg-max is kept.
  """
  chex.assert_rank(scaled_logits, 2)
  chex.assert_shape([top_k, top_p], (scaled_logits.shape[0],))
  vocab = scaled_logits.shape[-1]
  keys = _ordered_keys(scaled_logits)
  lo = keys.min(axis=-1)
  hi_exclusive = keys.max(axis=-1) + 1  # a finite float's key is never 0xffffffff

  k = jnp.where((top_k <= 0) | (top_k >= vocab), vocab, top_k)
  count_at_least = lambda t: jnp.sum(keys >= t[:, None], axis=-1) >= k
  # Each search runs only when some row uses it (top-p alone is the common case).
  k_cut = jax.lax.cond(jnp.any(k < vocab),
                       lambda: _largest_key(lo, hi_exclusive, count_at_least), lambda: lo)

  unnormalized = jnp.exp(scaled_logits - scaled_logits.max(axis=-1, keepdims=True))
  unnormalized = jnp.where(keys >= k_cut[:, None], unnormalized, 0.0)
  needed = top_p * unnormalized.sum(axis=-1)
  mass_at_least = lambda t: jnp.sum(
      jnp.where(keys >= t[:, None], unnormalized, 0.0), axis=-1) >= needed
  p_cut = jax.lax.cond(jnp.any(top_p < 1.0),
                       lambda: _largest_key(k_cut, hi_exclusive, mass_at_least), lambda: k_cut)
  # top_p == 1 keeps every top-k token even when rounding makes the mass of the
  # full set compare below `needed`.
  cut = jnp.where(top_p >= 1.0, k_cut, p_cut)
  return keys >= cut[:, None]


def _inverse_cdf(uniform: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Inverse-CDF draw from unnormalized weights, in two levels.

  Returns the index i with `W(i) <= u * W < W(i + 1)`, `W(i)` the sum of the
  first i weights and `W` the total: first the block of ~sqrt(V) tokens that
  holds `u * W` (a cumulative sum over block sums), then the token inside it.
  Two short cumulative sums instead of one over the whole vocabulary, which
  XLA's CPU backend runs as a slow reduce-window. A token with zero weight is
  never returned, whatever the rounding.

  Args:
    uniform: `[rows]` float32 in [0, 1).
    weights: `[rows, vocab]` float32 >= 0, at least one positive per row.

  Returns:
    tokens `[rows]` int32 and the totals `W` `[rows]` float32.
  """
  rows, vocab = weights.shape
  block = 1 << max(0, math.ceil(math.log2(math.sqrt(vocab))))
  blocks = -(-vocab // block)
  padded = jnp.pad(weights, ((0, 0), (0, blocks * block - vocab)))
  padded = padded.reshape(rows, blocks, block)
  block_sums = padded.sum(axis=-1)
  block_ends = jnp.cumsum(block_sums, axis=-1)
  total = block_ends[:, -1]
  # Strictly below the total, so the chosen block is one whose sum is positive.
  target = jnp.minimum(uniform * total, jnp.nextafter(total, 0.0))
  chosen = jnp.sum(block_ends <= target[:, None], axis=-1)
  is_chosen = jax.lax.broadcasted_iota(jnp.int32, (rows, blocks), 1) == chosen[:, None]
  before = jnp.sum(jnp.where(is_chosen, block_ends - block_sums, 0.0), axis=-1)
  inside = jnp.take_along_axis(padded, chosen[:, None, None], axis=1)[:, 0]
  offset = jnp.sum(jnp.cumsum(inside, axis=-1) <= (target - before)[:, None], axis=-1)
  # Rounding of `before` can push the offset off the block's positive weights.
  iota = jax.lax.broadcasted_iota(jnp.int32, (rows, block), 1)
  positive = inside > 0.0
  offset = jnp.clip(offset, jnp.min(jnp.where(positive, iota, block), axis=-1),
                    jnp.max(jnp.where(positive, iota, 0), axis=-1))
  return (chosen * block + offset).astype(jnp.int32), total


def filters(temperature, top_p, top_k, vocab: int):
  """Per row: sampled (temperature > 0) and cut by top-p or top-k; numpy or jnp arrays."""
  return (temperature > 0) & ((top_p < 1.0) | ((top_k > 0) & (top_k < vocab)))


def sample_tokens(key: jax.Array | None, logits: jax.Array, temperature: jax.Array,
                  top_p: jax.Array, top_k: jax.Array, uniform: jax.Array | None = None, *,
                  any_sampled: bool = True, any_filtered: bool = True,
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Draws one token per row and returns its log-probabilities.

  With `l` the raw logits of a row, `m = max l` and `T` its temperature:
    raw log-prob        = l_y - logsumexp(l)            (the policy at T = 1, no filter)
    T == 0 (greedy)     : y = argmax l (lowest index on ties), processed log-prob = 0
    T > 0               : y ~ q,  q ∝ exp((l - m) / T) on the top-k/top-p set,
                          processed log-prob = log q_y

  The raw log-prob is what a trainer recomputes from the same tokens, so the
  two can be compared directly; the processed one is the probability the token
  was actually drawn with.

  Args:
    key: a PRNG key used once for this step (None when `uniform` is given).
    logits: `[rows, vocab]` float logits (computed in float32).
    temperature: `[rows]` float32 >= 0; 0 means greedy.
    top_p: `[rows]` float32 in (0, 1].
    top_k: `[rows]` int32 >= 0; 0 means off.
    uniform: `[rows]` float32 in [0, 1), the draws to use instead of drawing
      from `key` (a sampler running a batch in row chunks passes each chunk its
      rows of one batch-wide draw, so chunking never changes the tokens).
    any_sampled: static; False promises that every row is greedy (temperature
      0), and the program then has no draw at all.
    any_filtered: static; False promises that no sampled row filters (top_p
      1, top_k 0 or >= vocab), and the program then has no cut-off search.
      Both only leave out code whose result the promise makes unused (a
      smaller program to compile, and less work per decode step); the
      results are the same.

  Returns:
    tokens `[rows]` int32, raw log-probs `[rows]` float32, processed log-probs
    `[rows]` float32.
  """
  chex.assert_rank(logits, 2)
  rows, vocab = logits.shape
  chex.assert_shape([temperature, top_p, top_k], (rows,))
  logits = logits.astype(jnp.float32)
  greedy = temperature <= 0.0
  inverse_temperature = 1.0 / jnp.where(greedy, 1.0, temperature)
  row_max = logits.max(axis=-1, keepdims=True)
  shifted = (logits - row_max) * inverse_temperature[:, None]  # scaled logits minus their max
  iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
  first_max = jnp.min(jnp.where(logits == row_max, iota, vocab), axis=-1)
  raw_lse = jnp.log(jnp.sum(jnp.exp(logits - row_max), axis=-1))
  picked = lambda x, tokens: jnp.sum(jnp.where(iota == tokens[:, None], x, 0.0), axis=-1)
  if not any_sampled:
    return first_max, picked(logits - row_max, first_max) - raw_lse, jnp.zeros((rows,))
  weights = jnp.exp(shifted)
  if any_filtered:
    filtering = jnp.any(filters(temperature, top_p, top_k, vocab))
    # The cut-off search only runs when some row asks for it (a real branch on CPU).
    keep = jax.lax.cond(filtering, top_k_top_p_keep,
                        lambda z, *_: jnp.ones(z.shape, dtype=bool), shifted, top_k, top_p)
    weights = jnp.where(keep, weights, 0.0)
  if uniform is None:
    uniform = jax.random.uniform(key, (rows,), jnp.float32)
  chex.assert_shape(uniform, (rows,))
  drawn, total = _inverse_cdf(uniform, weights)

  tokens = jnp.where(greedy, first_max, drawn)
  raw_logprobs = picked(logits - row_max, tokens) - raw_lse
  processed_logprobs = jnp.where(greedy, 0.0, picked(shifted, tokens) - jnp.log(total))
  return tokens, raw_logprobs, processed_logprobs
