"""Group-relative advantage estimators over flat rollout rows.

A row is one rollout; rows with the same `group_ids` answer the same prompt.
Every estimator has the signature

  estimator(rewards [N], group_ids [N], row_mask [N], num_groups, axis_name=None)
    -> advantages [N] float32

and is chosen by name from `ADVANTAGE_ESTIMATORS` (config `rl.advantage`).
Groups may have any size (masked rows do not count); rows may be sharded over
devices, in which case the estimator runs inside `shard_map` with `axis_name`
set to the batch axes and group moments are reduced with `psum`.

Choices where the papers leave room (ours):
  * GRPO divides by the population standard deviation of the group (the
    denominator is the group size, not size - 1); for binary rewards this is
    sqrt(p(1-p)), the same quantity learning potential uses.
  * A group whose rewards are all equal (standard deviation <= `ZERO_STD`)
    gives exactly zero advantage under every estimator, never a tiny float
    residue amplified by 1/eps.
  * Masked rows and rows of single-row groups get zero advantage.

References:
  GRPO: Shao et al. 2024, DeepSeekMath, https://arxiv.org/abs/2402.03300
  Dr.GRPO: Liu et al. 2025, Understanding R1-Zero-Like Training,
    https://arxiv.org/abs/2503.20783
  RLOO: Ahmadian et al. 2024, Back to Basics, https://arxiv.org/abs/2402.14740
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax.numpy as jnp

from astor_jax.astor.segments import AxisName, segment_sum

# Standard deviations at or below this count as a constant group (rewards live in [0, 1]).
ZERO_STD = 1e-6
# Added to the GRPO denominator, as in the reference implementations.
STD_EPS = 1e-6


class GroupMoments(NamedTuple):
  """Per-group reward moments; every field is [num_groups] float32.

  Attributes:
    count: number of unmasked rows in the group.
    mean: mean reward of the group (0 for an empty group).
    var: population variance, mean((r - mean)^2) (0 for an empty group).
  """

  count: chex.Array
  mean: chex.Array
  var: chex.Array


def group_moments(rewards: chex.Array, group_ids: chex.Array, row_mask: chex.Array,
                  num_groups: int, axis_name: AxisName = None) -> GroupMoments:
  """Count, mean and population variance of rewards per group (two passes).

  mean_g = sum_{i in g} r_i / n_g,   var_g = sum_{i in g} (r_i - mean_g)^2 / n_g.

  Args:
    rewards: [N] float32.
    group_ids: [N] int32 in [0, num_groups).
    row_mask: [N] bool; false rows are ignored.
    num_groups: static number of group slots.
    axis_name: batch axes to reduce over inside `shard_map`, or None.

  Returns:
    GroupMoments of [num_groups] arrays.
  """
  chex.assert_rank([rewards, group_ids, row_mask], 1)
  chex.assert_equal_shape([rewards, group_ids, row_mask])
  weight = row_mask.astype(jnp.float32)
  count = segment_sum(weight, group_ids, num_groups, axis_name)
  safe_count = jnp.maximum(count, 1.0)
  mean = segment_sum(rewards * weight, group_ids, num_groups, axis_name) / safe_count
  centred = (rewards - mean[group_ids]) * weight
  var = segment_sum(centred**2, group_ids, num_groups, axis_name) / safe_count
  return GroupMoments(count=count, mean=mean, var=var)


def _centred(rewards, group_ids, row_mask, moments):
  """r_i - mean_g, zeroed for masked rows and for rows of constant groups."""
  nonconstant = jnp.sqrt(moments.var) > ZERO_STD
  keep = row_mask & nonconstant[group_ids]
  return jnp.where(keep, rewards - moments.mean[group_ids], 0.0)


def grpo_advantages(rewards: chex.Array, group_ids: chex.Array, row_mask: chex.Array,
                    num_groups: int, axis_name: AxisName = None) -> chex.Array:
  """GRPO: A_i = (r_i - mean_g) / (std_g + eps), std the group's population std.

  Args:
    rewards: [N] float32.
    group_ids: [N] int32 in [0, num_groups).
    row_mask: [N] bool.
    num_groups: static number of group slots.
    axis_name: batch axes inside `shard_map`, or None.

  Returns:
    [N] float32 advantages; per group they sum to zero.
  """
  moments = group_moments(rewards, group_ids, row_mask, num_groups, axis_name)
  centred = _centred(rewards, group_ids, row_mask, moments)
  return centred / (jnp.sqrt(moments.var)[group_ids] + STD_EPS)


def dr_grpo_advantages(rewards: chex.Array, group_ids: chex.Array, row_mask: chex.Array,
                       num_groups: int, axis_name: AxisName = None) -> chex.Array:
  """Dr.GRPO: A_i = r_i - mean_g (no division by the group's std).

  Args and returns as `grpo_advantages`.
  """
  moments = group_moments(rewards, group_ids, row_mask, num_groups, axis_name)
  return _centred(rewards, group_ids, row_mask, moments)


def rloo_advantages(rewards: chex.Array, group_ids: chex.Array, row_mask: chex.Array,
                    num_groups: int, axis_name: AxisName = None) -> chex.Array:
  """RLOO: A_i = r_i - mean_{j in g, j != i} r_j = n_g / (n_g - 1) * (r_i - mean_g).

  Single-row groups (n_g = 1) have no baseline and get zero advantage.
  Args and returns as `grpo_advantages`.
  """
  moments = group_moments(rewards, group_ids, row_mask, num_groups, axis_name)
  n = moments.count[group_ids]
  scale = jnp.where(n > 1, n / jnp.maximum(n - 1.0, 1.0), 0.0)
  return scale * _centred(rewards, group_ids, row_mask, moments)


AdvantageFn = Callable[..., chex.Array]

ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
}


def get_estimator(name: str) -> AdvantageFn:
  """The estimator registered as `name`; raises ValueError naming `rl.advantage`."""
  if name not in ADVANTAGE_ESTIMATORS:
    raise ValueError(f"config.rl.advantage: unknown estimator {name!r}; use one of "
                     f"{', '.join(ADVANTAGE_ESTIMATORS)}")
  return ADVANTAGE_ESTIMATORS[name]
