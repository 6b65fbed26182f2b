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
- Tokens are drawn by inverse-CDF sampling (one uniform per row and one
  cumulative sum), which is exact categorical sampling.
"""

from __future__ import annotations

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
  k_cut = _largest_key(lo, hi_exclusive, count_at_least)

  unnormalized = jnp.exp(scaled_logits - scaled_logits.max(axis=-1, keepdims=True))
  unnormalized = jnp.where(keys >= k_cut[:, None], unnormalized, 0.0)
  needed = top_p * unnormalized.sum(axis=-1)
  mass_at_least = lambda t: jnp.sum(
      jnp.where(keys >= t[:, None], unnormalized, 0.0), axis=-1) >= needed
  p_cut = _largest_key(k_cut, hi_exclusive, mass_at_least)
  # top_p == 1 keeps every top-k token even when rounding makes the mass of the
  # full set compare below `needed`.
  cut = jnp.where(top_p >= 1.0, k_cut, p_cut)
  return keys >= cut[:, None]


def _first_max_index(x: jax.Array) -> jax.Array:
  """`argmax(x, -1)` (lowest index on ties) as two plain reductions."""
  vocab = x.shape[-1]
  iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  is_max = x == x.max(axis=-1, keepdims=True)
  return jnp.min(jnp.where(is_max, iota, vocab), axis=-1)


def sample_tokens(key: jax.Array, logits: jax.Array, temperature: jax.Array,
                  top_p: jax.Array, top_k: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Draws one token per row and returns its log-probabilities.

  With `l` the raw logits of a row and `T` its temperature:
    raw log-prob        = l_y - logsumexp(l)            (the policy at T = 1, no filter)
    T == 0 (greedy)     : y = argmax l,  processed log-prob = 0
    T > 0               : y ~ q,  q ∝ exp(l / T) on the top-k/top-p set,
                          processed log-prob = log q_y

  The raw log-prob is what a trainer recomputes from the same tokens, so the
  two can be compared directly; the processed one is the probability the token
  was actually drawn with.

  Args:
    key: a PRNG key used once for this step.
    logits: `[rows, vocab]` float logits (computed in float32).
    temperature: `[rows]` float32 >= 0; 0 means greedy.
    top_p: `[rows]` float32 in (0, 1].
    top_k: `[rows]` int32 >= 0; 0 means off.

  Returns:
    tokens `[rows]` int32, raw log-probs `[rows]` float32, processed log-probs
    `[rows]` float32.
  """
  chex.assert_rank(logits, 2)
  rows, vocab = logits.shape
  chex.assert_shape([temperature, top_p, top_k], (rows,))
  logits = logits.astype(jnp.float32)
  greedy = temperature <= 0.0
  safe_temperature = jnp.where(greedy, 1.0, temperature)
  scaled = logits / safe_temperature[:, None]
  filtering = jnp.any(~greedy & ((top_p < 1.0) | ((top_k > 0) & (top_k < vocab))))
  # The cut-off search only runs when some row asks for it (a real branch on CPU).
  keep = jax.lax.cond(filtering, top_k_top_p_keep,
                      lambda z, *_: jnp.ones(z.shape, dtype=bool),
                      scaled, top_k, top_p)

  shifted = scaled - scaled.max(axis=-1, keepdims=True)
  weights = jnp.where(keep, jnp.exp(shifted), 0.0)
  cumulative = jnp.cumsum(weights, axis=-1)
  total = cumulative[:, -1]
  u = jax.random.uniform(key, (rows,), dtype=jnp.float32) * total
  drawn = jnp.sum(cumulative <= u[:, None], axis=-1).astype(jnp.int32)
  # u can round up to `total`; fall back to the last token with weight.
  iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
  last_kept = jnp.max(jnp.where(weights > 0.0, iota, 0), axis=-1)
  drawn = jnp.minimum(drawn, last_kept)
  tokens = jnp.where(greedy, _first_max_index(logits), drawn)

  picked = lambda x: jnp.take_along_axis(x, tokens[:, None], axis=-1)[:, 0]
  raw_logprobs = picked(logits) - jax.nn.logsumexp(logits, axis=-1)
  processed_logprobs = jnp.where(greedy, 0.0, picked(shifted) - jnp.log(total))
  return tokens, raw_logprobs, processed_logprobs
