"""Token selection: cut-offs against a sort-based reference, chi-square on frequencies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from astor_jax.rollout import sampling


def reference_distribution(logits, temperature, top_p, top_k):
  """numpy: softmax(l / T), top-k then top-p over the sorted tokens (no ties)."""
  z = np.asarray(logits, np.float64) / temperature
  order = np.argsort(-z)
  keep = np.zeros(z.shape, bool)
  k = len(z) if top_k == 0 else min(top_k, len(z))
  top = order[:k]
  p = np.exp(z[top] - z[top].max())
  p /= p.sum()
  before = np.concatenate([[0.0], np.cumsum(p)[:-1]])  # mass of strictly better tokens
  keep[top[before < top_p]] = True
  q = np.where(keep, np.exp(z - z.max()), 0.0)
  return q / q.sum()


@pytest.mark.parametrize("seed", range(4))
def test_keep_mask_matches_sorting(seed):
  rng = np.random.default_rng(seed)
  rows, vocab = 64, 50
  logits = rng.normal(size=(rows, vocab)).astype(np.float32) * 3
  top_p = rng.choice([1.0, 0.9, 0.5, 0.1, 1e-3], size=rows).astype(np.float32)
  top_k = rng.choice([0, 1, 5, 49, 50, 80], size=rows).astype(np.int32)
  keep = jax.jit(sampling.top_k_top_p_keep)(jnp.asarray(logits), top_k, top_p)
  for r in range(rows):
    expected = reference_distribution(logits[r], 1.0, top_p[r], top_k[r]) > 0
    np.testing.assert_array_equal(np.asarray(keep[r]), expected, err_msg=f"row {r}")


def test_keep_mask_keeps_ties_with_the_cut_off():
  logits = jnp.asarray([[3.0, 1.0, 1.0, 0.0, -2.0]])
  keep = sampling.top_k_top_p_keep(logits, jnp.asarray([2]), jnp.asarray([1.0]))
  np.testing.assert_array_equal(keep, [[True, True, True, False, False]])


ROW_LOGITS = np.asarray([2.0, 1.4, 1.0, 0.3, -0.5, -1.0], np.float32)
CASES = [  # temperature, top_p, top_k; each changes the distribution noticeably
    (0.5, 1.0, 0),
    (1.0, 0.7, 0),
    (1.5, 1.0, 3),
    (0.8, 0.8, 4),
]


@pytest.mark.parametrize("temperature, top_p, top_k", CASES)
def test_sampled_frequencies_match_the_processed_softmax(temperature, top_p, top_k):
  rows = 40_000
  logits = jnp.broadcast_to(jnp.asarray(ROW_LOGITS), (rows, ROW_LOGITS.size))
  full = lambda v, dtype: jnp.full((rows,), v, dtype)
  tokens, raw, processed = jax.jit(sampling.sample_tokens)(
      jax.random.key(7), logits, full(temperature, jnp.float32), full(top_p, jnp.float32),
      full(top_k, jnp.int32))
  counts = np.bincount(np.asarray(tokens), minlength=ROW_LOGITS.size)
  expected = reference_distribution(ROW_LOGITS, temperature, top_p, top_k)
  support = expected > 0
  assert counts[~support].sum() == 0, "sampled a filtered-out token"
  p_value = stats.chisquare(counts[support], rows * expected[support]).pvalue
  assert p_value > 1e-4, (counts, rows * expected)
  # The test has power: the unprocessed softmax is clearly rejected.
  plain = reference_distribution(ROW_LOGITS, 1.0, 1.0, 0)
  assert stats.chisquare(counts, rows * plain).pvalue < 1e-6
  # Log-probs: raw under the untouched policy, processed under the sampling distribution.
  tokens = np.asarray(tokens)
  log_softmax = ROW_LOGITS - np.log(np.exp(ROW_LOGITS).sum())
  np.testing.assert_allclose(raw, log_softmax[tokens], atol=1e-5)
  np.testing.assert_allclose(processed, np.log(expected[tokens]), atol=1e-5)


def test_greedy_rows_take_the_arg_max_and_report_zero_processed_logprob():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(8, 33)), jnp.float32)
  temperature = jnp.asarray([0.0] * 4 + [1.0] * 4)
  tokens, raw, processed = sampling.sample_tokens(
      jax.random.key(0), logits, temperature, jnp.full((8,), 0.5), jnp.full((8,), 3, jnp.int32))
  np.testing.assert_array_equal(tokens[:4], np.argmax(np.asarray(logits[:4]), axis=-1))
  np.testing.assert_array_equal(processed[:4], 0.0)
  np.testing.assert_allclose(raw, jax.nn.log_softmax(logits)[np.arange(8), tokens], atol=1e-6)


def test_different_keys_draw_different_tokens_and_equal_keys_repeat():
  logits = jnp.zeros((256, 40))
  ones = jnp.ones((256,))
  zeros = jnp.zeros((256,), jnp.int32)
  draw = lambda seed: sampling.sample_tokens(jax.random.key(seed), logits, ones, ones, zeros)[0]
  np.testing.assert_array_equal(draw(1), draw(1))
  assert np.mean(np.asarray(draw(1)) == np.asarray(draw(2))) < 0.2


def test_inverse_cdf_never_returns_a_zero_weight_token():
  # Extreme uniforms (0 and the largest float below 1) and zero-weight tokens at
  # both ends of every block, including a vocabulary that is not a block multiple.
  rng = np.random.default_rng(0)
  vocab = 70
  weights = rng.uniform(size=(6, vocab)).astype(np.float32)
  weights[:, ::8] = 0.0
  weights[:, 7::8] = 0.0
  weights[:, -3:] = 0.0
  uniform = np.asarray([0.0, np.nextafter(np.float32(1), np.float32(0)), 0.5, 0.25, 0.999999,
                        1e-9], np.float32)
  tokens, total = sampling._inverse_cdf(jnp.asarray(uniform), jnp.asarray(weights))
  tokens = np.asarray(tokens)
  assert (weights[np.arange(6), tokens] > 0).all(), tokens
  np.testing.assert_allclose(total, weights.sum(-1), rtol=1e-6)
  cdf = np.cumsum(weights, axis=-1) / weights.sum(-1, keepdims=True)
  expected = (cdf <= uniform[:, None]).sum(-1)
  np.testing.assert_array_equal(tokens[2:5], expected[2:5])
