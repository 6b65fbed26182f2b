"""Cross-task synergy: cosine similarity of per-task policy gradients, smoothed.

For tasks i, j with policy gradients g_i, g_j (of the task-masked surrogate
loss, all at the same parameters):

  cos_ij = <g_i, g_j> / (|g_i| |g_j|)
  S_ij  <- lambda * S_ij + (1 - lambda) * cos_ij   (first observation: S_ij = cos_ij)
  synergy_k = mean_{j != k, S_kj observed} S_kj     (0 when none is observed)

Positive synergy_k means training on task k also pushes the others the way
they want to go, so it raises U_k. Gradient cosines from one batch are noisy
(different prompts per task), hence the EMA with lambda =
`astor.synergy_ema_decay`.

Memory. K full gradients cost K x params (sharded like the parameters when the
caller constrains them, so K x params / devices per device). With
`astor.synergy_sketch_dim = d > 0` each gradient is compressed by a count
sketch (Charikar et al. 2002; a sparse Johnson-Lindenstrauss projection):
coordinate c of every leaf goes to bucket h(c) in [0, d) with sign s(c) in
{-1, +1}, both drawn from one key that is the same for all tasks of a step, so
<sketch(g_i), sketch(g_j)> is an unbiased estimate of <g_i, g_j> (standard
error about |g_i| |g_j| / sqrt(d)). The sketch of one task is computed right
after its gradient, so only one full gradient is alive at a time.

Nothing here flattens a whole gradient: the Gram is a sum of per-leaf K x K
contractions over each leaf's own axes, and the sketch draws h and s in each
leaf's own shape (counter-based random bits depend only on the global
coordinate, not on how the leaf is sharded) and scatter-adds the leaf into the
d buckets. Sharded gradients stay sharded; each device contracts or sketches
its own block and one all-reduce adds the [K, K] or [d] partial results.

Choices where the paper is silent (ours):
  * The gradient is that of the clipped surrogate only (no KL or entropy
    terms): synergy is about what the tasks' rewards ask of the policy.
  * A pair is observed only when both gradients are non-zero (a task absent
    from the batch, or with all-constant groups, has no gradient).
  * The sketch key changes every synergy step (drawn from the train state's
    rng), so sketch errors do not persist across the EMA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
from jax import lax

# Gradient norms at or below this count as "no gradient".
MIN_GRAD_NORM = 1e-12


def tree_vdot(a: Any, b: Any) -> chex.Array:
  """<a, b> summed over all leaves of two pytrees of the same structure (fp32)."""
  leaves = jax.tree.leaves(jax.tree.map(
      lambda x, y: jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32)), a, b))
  return sum(leaves, jnp.zeros((), jnp.float32))


def count_sketch(tree: Any, key: chex.PRNGKey, dim: int) -> chex.Array:
  """Count sketch of all leaves of `tree` into `dim` buckets.

  sketch[b] = sum_{leaves l} sum_{c : h_l(c) = b} s_l(c) * x_l[c]

  h_l and s_l come from 32 random bits per coordinate drawn in the leaf's own
  shape (bit 0: the sign, the other 31 bits mod `dim`: the bucket), so the
  projection is the same whatever the leaf's sharding and no leaf is
  reshaped.

  Args:
    tree: pytree of arrays.
    key: PRNG key; the same key gives the same projection.
    dim: d > 0 buckets.

  Returns:
    [dim] float32.
  """
  out = jnp.zeros((dim,), jnp.float32)
  for index, leaf in enumerate(jax.tree.leaves(tree)):
    bits = jax.random.bits(jax.random.fold_in(key, index), leaf.shape, jnp.uint32)
    buckets = ((bits >> 1) % dim).astype(jnp.int32)
    signed = jnp.where((bits & 1) == 1, 1.0, -1.0) * leaf.astype(jnp.float32)
    out = out.at[buckets].add(signed)
  return out


def task_features(task_grad_fn: Callable[[chex.Array], Any], num_tasks: int,
                  sketch_dim: int = 0, key: chex.PRNGKey | None = None) -> Any:
  """What the Gram matrix is computed from: K gradients, or K sketches of them.

  Both are linear in the gradients, so features of gradient-accumulation
  chunks add up to the features of the whole batch.

  Args:
    task_grad_fn: k (int32 scalar) -> gradient pytree of task k.
    num_tasks: K.
    sketch_dim: 0 for the gradients themselves (a pytree with a leading K axis:
      K x params memory), else d > 0 for count sketches, [K, d] (one full
      gradient alive at a time).
    key: PRNG key for the sketch (required when sketch_dim > 0).

  Returns:
    A pytree whose leaves have a leading axis of size K.
  """
  tasks = jnp.arange(num_tasks, dtype=jnp.int32)
  if sketch_dim > 0:
    if key is None:
      raise ValueError("task_features: a sketch needs a PRNG key")
    return lax.map(lambda k: count_sketch(task_grad_fn(k), key, sketch_dim), tasks)
  return lax.map(task_grad_fn, tasks)


def leaf_gram(leaf: chex.Array) -> chex.Array:
  """G_ij = <f_i, f_j> of one leaf [K, ...]: a contraction over its own axes (no reshape).

  Returns:
    [K, K] float32.
  """
  axes = tuple(range(1, leaf.ndim))
  leaf = leaf.astype(jnp.float32)
  return lax.dot_general(leaf, leaf, ((axes, axes), ((), ())),
                         precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def features_gram(features: Any) -> chex.Array:
  """G_ij = sum over leaves of <f_i, f_j>; features as returned by `task_features`.

  Returns:
    [K, K] float32, symmetric.
  """
  leaves = jax.tree.leaves(features)
  num_tasks = leaves[0].shape[0]
  chex.assert_equal_shape_prefix(leaves, 1)
  return sum((leaf_gram(f) for f in leaves), jnp.zeros((num_tasks, num_tasks), jnp.float32))


def task_gradient_gram(task_grad_fn: Callable[[chex.Array], Any], num_tasks: int,
                       sketch_dim: int = 0, key: chex.PRNGKey | None = None) -> chex.Array:
  """Gram matrix G_ij = <g_i, g_j> of per-task gradients (exact, or of their sketches).

  Args as `task_features`.

  Returns:
    [K, K] float32, symmetric.
  """
  return features_gram(task_features(task_grad_fn, num_tasks, sketch_dim, key))


def cosines(gram: chex.Array) -> tuple[chex.Array, chex.Array]:
  """cos_ij = G_ij / sqrt(G_ii G_jj) and which pairs are defined.

  Args:
    gram: [K, K] Gram matrix.

  Returns:
    (cos [K, K] in [-1, 1], 0 where undefined; valid [K, K] bool, both norms
    above MIN_GRAD_NORM).
  """
  chex.assert_rank(gram, 2)
  norm = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  has = norm > MIN_GRAD_NORM
  valid = has[:, None] & has[None, :]
  denom = jnp.where(valid, norm[:, None] * norm[None, :], 1.0)
  return jnp.where(valid, jnp.clip(gram / denom, -1.0, 1.0), 0.0), valid


def ema_update(synergy: chex.Array, seen: chex.Array, cos: chex.Array, valid: chex.Array,
               decay: float) -> tuple[chex.Array, chex.Array]:
  """S <- decay * S + (1 - decay) * cos where valid (first observation: S = cos).

  Args:
    synergy: [K, K] smoothed cosines.
    seen: [K, K] bool, pairs observed at least once.
    cos: [K, K] this step's cosines.
    valid: [K, K] bool, pairs defined this step.
    decay: lambda in [0, 1].

  Returns:
    (synergy, seen), updated.
  """
  chex.assert_equal_shape([synergy, seen, cos, valid])
  smoothed = jnp.where(seen, decay * synergy + (1.0 - decay) * cos, cos)
  return jnp.where(valid, smoothed, synergy), seen | valid


def synergy_per_task(synergy: chex.Array, seen: chex.Array) -> chex.Array:
  """synergy_k = mean of S_kj over observed j != k (0 when there is none).

  Args:
    synergy: [K, K] smoothed cosines.
    seen: [K, K] bool.

  Returns:
    [K] float32 in [-1, 1].
  """
  chex.assert_equal_shape([synergy, seen])
  off_diag = seen & ~jnp.eye(synergy.shape[0], dtype=bool)
  count = off_diag.sum(axis=1)
  total = jnp.where(off_diag, synergy, 0.0).sum(axis=1)
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)
