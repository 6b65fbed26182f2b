"""Per-task gradient cosines: exact Gram, count sketch, EMA smoothing, per-task synergy."""

import jax
import jax.numpy as jnp
import numpy as np

from astor_jax.astor import synergy


def task_vectors(seed=0, num_tasks=3, size=600):
  rng = np.random.default_rng(seed)
  shared = rng.normal(size=size)
  vecs = np.stack([shared * s + rng.normal(size=size) for s in (1.0, 1.0, -1.0)][:num_tasks])
  return vecs.astype(np.float32)


def as_tree(vec):
  """Splits a flat vector into a two-leaf pytree, like a model's gradient."""
  return {"w": vec[:400].reshape(20, 20), "b": vec[400:]}


def numpy_cosines(vecs):
  norms = np.linalg.norm(vecs, axis=1)
  return vecs @ vecs.T / np.outer(norms, norms)


def test_exact_gram_and_cosines_match_numpy():
  vecs = task_vectors()
  table = jnp.asarray(vecs)
  gram = jax.jit(lambda: synergy.task_gradient_gram(lambda k: as_tree(table[k]), 3))()
  np.testing.assert_allclose(gram, vecs @ vecs.T, rtol=1e-4)
  cos, valid = synergy.cosines(gram)
  np.testing.assert_allclose(cos, numpy_cosines(vecs), atol=1e-5)
  assert np.all(np.asarray(valid))


def test_count_sketch_is_linear_and_preserves_cosines():
  vecs = task_vectors(size=600)
  key = jax.random.PRNGKey(3)
  sketch = jax.jit(lambda v: synergy.count_sketch(as_tree(v), key, 4096))
  a, b = sketch(vecs[0]), sketch(vecs[1])
  np.testing.assert_allclose(sketch(vecs[0] + vecs[1]), a + b, rtol=1e-4, atol=1e-4)
  table = jnp.asarray(vecs)
  gram = jax.jit(lambda: synergy.task_gradient_gram(lambda k: as_tree(table[k]), 3, 4096, key))()
  cos, _ = synergy.cosines(gram)
  np.testing.assert_allclose(cos, numpy_cosines(vecs), atol=0.08)
  # A different key is a different projection (errors do not persist across steps).
  other = synergy.count_sketch(as_tree(vecs[0]), jax.random.PRNGKey(4), 4096)
  assert not np.allclose(other, a)


def test_missing_gradients_are_not_observed():
  gram = jnp.array([[4.0, 0.0, 2.0], [0.0, 0.0, 0.0], [2.0, 0.0, 1.0]])
  cos, valid = synergy.cosines(gram)
  np.testing.assert_array_equal(valid, [[1, 0, 1], [0, 0, 0], [1, 0, 1]])
  np.testing.assert_allclose(cos, [[1, 0, 1], [0, 0, 0], [1, 0, 1]], atol=1e-6)
  assert np.all(np.isfinite(np.asarray(cos)))


def test_ema_first_observation_then_decay_and_per_task_mean():
  k = 3
  syn, seen = jnp.zeros((k, k)), jnp.zeros((k, k), bool)
  cos1 = jnp.array([[1.0, 0.5, -0.2], [0.5, 1.0, 0.0], [-0.2, 0.0, 1.0]])
  valid1 = jnp.array([[1, 1, 1], [1, 1, 0], [1, 0, 1]], bool)
  syn, seen = synergy.ema_update(syn, seen, cos1, valid1, 0.8)
  np.testing.assert_allclose(syn, np.where(valid1, cos1, 0.0))
  cos2 = jnp.full((k, k), 1.0)
  syn, seen = synergy.ema_update(syn, seen, cos2, jnp.ones((k, k), bool), 0.8)
  expected = np.where(valid1, 0.8 * np.asarray(cos1) + 0.2, 1.0)
  np.testing.assert_allclose(syn, expected, rtol=1e-6)
  per_task = synergy.synergy_per_task(syn, seen)
  off = ~np.eye(k, dtype=bool)
  np.testing.assert_allclose(per_task, [expected[i][off[i]].mean() for i in range(k)],
                             rtol=1e-6)
  np.testing.assert_array_equal(synergy.synergy_per_task(jnp.ones((k, k)),
                                                         jnp.eye(k, dtype=bool)), 0.0)
