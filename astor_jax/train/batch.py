"""The RL batch: token-aligned rollout rows, the pytree the train step consumes.

One row is one rollout: its prompt (left-padded) followed by its completion
(right-padded), `L = prompt_bucket + max_new_tokens` tokens. `N` rows are
`batch_prompts x group_size` plus padding rows (`row_mask == False`) so that
the step compiles once. See docs/design.md, "Token-aligned rows".

Log-probs are token-aligned: `logprobs[:, t] = log p(tokens[:, t] | tokens[:, :t])`
and `logprobs[:, 0] = 0`; masks use the same alignment, so
`sum(logprobs * completion_mask, -1)` is each completion's log-likelihood.

Rows are sharded over the mesh's batch axes `("data", "fsdp")`; `N` must be a
multiple of their combined size (`check_batch` says so at the boundary).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Mesh axes that split rows; "tensor" never splits rows.
BATCH_AXES = ("data", "fsdp")


class Batch(NamedTuple):
  """Token-aligned rollout rows; `N` rows of `L` tokens.

  Attributes:
    tokens: [N, L] int32, prompt then completion, pad id elsewhere.
    positions: [N, L] int32, 0 at the first real prompt token; pads get 0.
    input_mask: [N, L] bool, real (non-pad) tokens.
    completion_mask: [N, L] bool, completion tokens that are trained on.
    task_ids: [N] int32, task index k in `config.tasks` order.
    group_ids: [N] int32, rows with the same id share a prompt (GRPO group);
      ids are in [0, N) so they can index segment sums of size N.
    prompt_ids: [N] int32, index of the prompt within its task's train split.
    rewards: [N] float32 in [0, 1] from the task scorer.
    old_logprobs: [N, L] float32, behaviour policy (trainer) log-probs.
    ref_logprobs: [N, L] float32, frozen reference policy log-probs.
    sampler_logprobs: [N, L] float32, log-probs the sampler reported.
    row_mask: [N] bool, false for padding rows.
  """

  tokens: jax.Array
  positions: jax.Array
  input_mask: jax.Array
  completion_mask: jax.Array
  task_ids: jax.Array
  group_ids: jax.Array
  prompt_ids: jax.Array
  rewards: jax.Array
  old_logprobs: jax.Array
  ref_logprobs: jax.Array
  sampler_logprobs: jax.Array
  row_mask: jax.Array


_TOKEN_FIELDS = ("tokens", "positions", "input_mask", "completion_mask",
                 "old_logprobs", "ref_logprobs", "sampler_logprobs")
_DTYPES = {
    "tokens": np.int32, "positions": np.int32, "input_mask": np.bool_,
    "completion_mask": np.bool_, "task_ids": np.int32, "group_ids": np.int32,
    "prompt_ids": np.int32, "rewards": np.float32, "old_logprobs": np.float32,
    "ref_logprobs": np.float32, "sampler_logprobs": np.float32, "row_mask": np.bool_,
}


def batch_spec(num_rows: int, seq_len: int) -> Batch:
  """Shapes and dtypes of a batch, as `jax.ShapeDtypeStruct`s (for AOT lowering)."""
  return Batch(**{
      name: jax.ShapeDtypeStruct(
          (num_rows, seq_len) if name in _TOKEN_FIELDS else (num_rows,), dtype)
      for name, dtype in _DTYPES.items()})


def zeros_batch(num_rows: int, seq_len: int) -> Batch:
  """An all-padding batch (`row_mask` false everywhere); a template to fill in."""
  spec = batch_spec(num_rows, seq_len)
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), spec)


def batch_partition_spec() -> Batch:
  """PartitionSpecs: rows over `BATCH_AXES`, tokens replicated within a row."""
  return Batch(**{
      name: PartitionSpec(BATCH_AXES, None) if name in _TOKEN_FIELDS
      else PartitionSpec(BATCH_AXES) for name in _DTYPES})


def batch_sharding(mesh: Mesh) -> Batch:
  """NamedShardings of a batch on `mesh` (a Batch of shardings)."""
  return jax.tree.map(lambda p: NamedSharding(mesh, p), batch_partition_spec(),
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def check_batch(batch: Batch, num_tasks: int, row_multiple: int = 1) -> None:
  """Validates a host-side batch at the boundary; raises ValueError naming the field.

  Args:
    batch: the batch to check (numpy or jax arrays).
    num_tasks: K; every `task_ids` entry of a real row must lie in [0, K).
    row_multiple: `N` must be a multiple of this (the size of the batch axes).
  """
  n, seq_len = np.shape(batch.tokens)
  for name, dtype in _DTYPES.items():
    value = getattr(batch, name)
    want = (n, seq_len) if name in _TOKEN_FIELDS else (n,)
    if tuple(np.shape(value)) != want:
      raise ValueError(f"Batch.{name}: shape {tuple(np.shape(value))}, expected {want}; "
                       "all fields must share N rows (and L tokens for per-token fields)")
    if np.dtype(value.dtype) != np.dtype(dtype):
      raise ValueError(f"Batch.{name}: dtype {value.dtype}, expected {np.dtype(dtype)}; "
                       f"cast it with .astype(np.{np.dtype(dtype).name})")
  if n % row_multiple:
    raise ValueError(f"Batch: {n} rows is not a multiple of the {row_multiple} devices on "
                     "the batch axes; pad with rows whose row_mask is False")
  real = np.asarray(batch.row_mask)
  task_ids = np.asarray(batch.task_ids)[real]
  if task_ids.size and (task_ids.min() < 0 or task_ids.max() >= num_tasks):
    raise ValueError(f"Batch.task_ids: values must be in [0, {num_tasks}); got "
                     f"[{task_ids.min()}, {task_ids.max()}]")
  group_ids = np.asarray(batch.group_ids)
  if group_ids.size and (group_ids.min() < 0 or group_ids.max() >= n):
    raise ValueError(f"Batch.group_ids: values must be in [0, {n}) (N rows); got "
                     f"[{group_ids.min()}, {group_ids.max()}]")
  completion = np.asarray(batch.completion_mask)
  if np.any(completion & ~np.asarray(batch.input_mask)):
    raise ValueError("Batch.completion_mask: marks pad tokens; it must be a subset of "
                     "input_mask")
  if completion.size and np.any(completion[:, 0]):
    raise ValueError("Batch.completion_mask: column 0 has no log-prob (token-aligned "
                     "log-probs start at t=1); a completion cannot start at t=0")


def as_device_batch(batch: Batch, mesh: Mesh) -> Batch:
  """Places a host batch on `mesh` with `batch_sharding`.

  In a single process `batch` holds all `N` rows; with several processes each
  passes its own rows and the global batch is their concatenation.
  """
  shardings = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, shardings)
  return jax.tree.map(lambda s, x: jax.make_array_from_process_local_data(s, np.asarray(x)),
                      shardings, batch)
