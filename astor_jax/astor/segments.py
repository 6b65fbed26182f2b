"""Segment sums over rows that may be sharded across devices.

Every cross-row statistic in ASTOR (group moments, per-task sums, loss
normalizers) is a segment sum: rows carry an id (their GRPO group, their task,
their prompt cell) and values are summed per id. Under `shard_map` each device
sums its own rows and a `psum` over the batch axes adds the partial sums, so
the result is the same on 1 device or 8 (up to float summation order).
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
from jax import lax

AxisName = str | Sequence[str] | None


def segment_sum(data: chex.Array, segment_ids: chex.Array, num_segments: int,
                axis_name: AxisName = None) -> chex.Array:
  """Sums rows of `data` per segment id, over all devices of `axis_name`.

  out[s] = sum_{i : segment_ids[i] == s} data[i]   (summed over every shard)

  Args:
    data: [N, ...] values; ids outside [0, num_segments) are dropped.
    segment_ids: [N] int32.
    num_segments: S, static.
    axis_name: mesh axes to `psum` over (inside `shard_map`), or None.

  Returns:
    [S, ...] sums, identical on every device of `axis_name`.
  """
  chex.assert_rank(segment_ids, 1)
  chex.assert_equal_shape_prefix((data, segment_ids), 1)
  out = jax.ops.segment_sum(data, segment_ids, num_segments)
  if axis_name is None:
    return out
  return lax.psum(out, tuple(axis_name) if not isinstance(axis_name, str) else axis_name)


def global_sum(data: chex.Array, axis_name: AxisName = None) -> chex.Array:
  """Sum of all elements of `data` over all devices of `axis_name` (a scalar)."""
  out = data.sum()
  if axis_name is None:
    return out
  return lax.psum(out, tuple(axis_name) if not isinstance(axis_name, str) else axis_name)
