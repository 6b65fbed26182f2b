"""Per-task gradient cosines: exact Gram, count sketch, EMA smoothing, per-task synergy."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from astor_jax.astor import synergy
from astor_jax.model import make_mesh


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


def test_per_leaf_gram_equals_the_flattened_gram():
  """Leaves of rank 1 to 4 (a per-task scalar, a bias, a matrix, a stacked-layer kernel)."""
  rng = np.random.default_rng(1)
  shapes = {"scalar": (), "bias": (7,), "kernel": (5, 6), "layers": (2, 3, 4)}
  features = {k: rng.normal(size=(3,) + s).astype(np.float32) for k, s in shapes.items()}
  flat = np.concatenate([f.reshape(3, -1) for f in features.values()], axis=1).astype(np.float64)
  gram = jax.jit(synergy.features_gram)(features)
  np.testing.assert_allclose(gram, flat @ flat.T, rtol=1e-5)
  np.testing.assert_allclose(synergy.leaf_gram(jnp.asarray(features["layers"])),
                             flat[:, -24:] @ flat[:, -24:].T, rtol=1e-5)


def test_gram_and_sketch_do_not_depend_on_the_sharding():
  """Sharded leaves (as the train step keeps gradients) give the single-device values:
  the sketch's buckets and signs depend on the global coordinate only."""
  vecs = task_vectors(size=600)
  trees = [as_tree(v) for v in vecs]
  stacked = jax.tree.map(lambda *x: np.stack(x), *trees)
  key = jax.random.PRNGKey(5)
  mesh = make_mesh(data=2, fsdp=4)
  spec = {"w": P("fsdp", "data"), "b": P(("data", "fsdp"))}
  sharded = [jax.device_put(t, {k: NamedSharding(mesh, s) for k, s in spec.items()})
             for t in trees]
  stacked_sharded = jax.device_put(
      stacked, {k: NamedSharding(mesh, P(None, *s)) for k, s in spec.items()})
  sketch = jax.jit(lambda t: synergy.count_sketch(t, key, 256))
  for tree, tree_sharded in zip(trees, sharded):
    np.testing.assert_allclose(sketch(tree_sharded), sketch(tree), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.jit(synergy.features_gram)(stacked_sharded),
                             vecs.astype(np.float64) @ vecs.T, rtol=1e-5)


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
