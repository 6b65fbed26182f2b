"""Prompt priorities inside a task, and Gumbel-top-k choice of prompts.

Each task k has `prompts_per_task[k]` train prompts; the table is [K, M] with
M = max_k prompts_per_task[k] and a validity mask. After a step, every prompt
that was rolled out records the mean and population variance of its group's
rewards (EMA over its own sightings, decay `astor.ema_decay`) and the step it
was last seen. Its priority score is

  v_p     = 4 * var_p                    (in [0, 1] for rewards in [0, 1]; 1 if never seen)
  stale_p = min(step - last_seen_p, H) / H   (1 if never seen)
  score_p = (v_p + w_stale * stale_p - z * [seen and var_p == 0]) / T

with H = `astor.priority_staleness_horizon`, w_stale =
`astor.priority_staleness_weight`, z = `astor.zero_variance_penalty`, T =
`astor.priority_temperature`. A task with budget b_k draws b_k prompts
without replacement with probability proportional to exp(score) by
Gumbel-top-k (Kool et al. 2019, https://arxiv.org/abs/1903.06059): add i.i.d.
Gumbel noise to the scores and keep the b_k largest.

Choices where the paper is silent (ours):
  * Unseen prompts are treated optimistically (maximal variance and staleness),
    so every prompt is tried before the priorities narrow the choice.
  * Zero-variance prompts (all rollouts equally rewarded: solved or hopeless)
    are demoted by a fixed score penalty, not excluded: a model that changed
    may find them informative again, and staleness brings them back.
  * If a task's budget exceeds its number of prompts, the ranking repeats
    (prompt r of the ranking is used for slots r, r + n, r + 2n, ...).
  * Output slots are laid out task by task in task order, prompts by rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

# A prompt whose recorded reward variance is at or below this is "zero-variance".
ZERO_VAR = 1e-12


class PriorityState(NamedTuple):
  """Per-prompt statistics; every field is [K, M].

  Attributes:
    reward_mean: EMA of the prompt's group mean reward.
    reward_var: EMA of the prompt's group population variance.
    last_seen: step at which it was last rolled out, -1 if never.
    valid: bool, the prompt exists (column < prompts_per_task[k]).
  """

  reward_mean: chex.Array
  reward_var: chex.Array
  last_seen: chex.Array
  valid: chex.Array


def init(prompts_per_task: Sequence[int]) -> PriorityState:
  """An empty table for tasks with the given numbers of train prompts.

  Raises:
    ValueError: if a task has no prompts.
  """
  counts = np.asarray(prompts_per_task, np.int32)
  if counts.ndim != 1 or counts.size == 0 or np.any(counts <= 0):
    raise ValueError(f"prompts_per_task: got {list(prompts_per_task)}; every task needs at "
                     "least one train prompt (check data.train_per_task and the task splits)")
  shape = (counts.size, int(counts.max()))
  valid = np.arange(shape[1])[None, :] < counts[:, None]
  return PriorityState(reward_mean=jnp.zeros(shape, jnp.float32),
                       reward_var=jnp.zeros(shape, jnp.float32),
                       last_seen=jnp.full(shape, -1, jnp.int32),
                       valid=jnp.asarray(valid))


def update(state: PriorityState, count: chex.Array, mean_sum: chex.Array, var_sum: chex.Array,
           step: chex.Array, decay: float) -> PriorityState:
  """Folds this step's group statistics into the table.

  Args:
    state: the table.
    count: [K, M] number of groups of each prompt this step (usually 0 or 1).
    mean_sum: [K, M] sum of those groups' mean rewards.
    var_sum: [K, M] sum of those groups' population variances.
    step: int32 scalar, the current step.
    decay: EMA decay.

  Returns:
    The updated table; prompts with count == 0 are unchanged.
  """
  chex.assert_equal_shape([state.reward_mean, count, mean_sum, var_sum])
  chex.assert_rank(step, 0)
  seen_now = count > 0
  safe = jnp.maximum(count, 1.0)
  mean, var = mean_sum / safe, var_sum / safe
  first = state.last_seen < 0

  def ema(old, new):
    return jnp.where(seen_now, jnp.where(first, new, decay * old + (1.0 - decay) * new), old)

  return PriorityState(reward_mean=ema(state.reward_mean, mean),
                       reward_var=ema(state.reward_var, var),
                       last_seen=jnp.where(seen_now, step.astype(jnp.int32), state.last_seen),
                       valid=state.valid)


def scores(state: PriorityState, step: chex.Array, temperature: float, staleness_weight: float,
           staleness_horizon: int, zero_variance_penalty: float) -> chex.Array:
  """Log-weights of the prompts (formula in the module doc); -inf for invalid cells.

  Args:
    state: the table, [K, M] fields.
    step: int32 scalar, the current step.
    temperature: T > 0.
    staleness_weight: w_stale >= 0.
    staleness_horizon: H > 0 steps.
    zero_variance_penalty: z >= 0.

  Returns:
    [K, M] float32.
  """
  chex.assert_rank(step, 0)
  seen = state.last_seen >= 0
  variance = jnp.where(seen, 4.0 * state.reward_var, 1.0)
  age = jnp.where(seen, step - state.last_seen, staleness_horizon)
  stale = jnp.minimum(age, staleness_horizon).astype(jnp.float32) / staleness_horizon
  zero_var = seen & (state.reward_var <= ZERO_VAR)
  score = (variance + staleness_weight * stale - zero_variance_penalty * zero_var) / temperature
  return jnp.where(state.valid, score, -jnp.inf)


def choose(key: chex.PRNGKey, score: chex.Array, valid: chex.Array, budget: chex.Array,
           num_prompts: int) -> tuple[chex.Array, chex.Array]:
  """Gumbel-top-k choice of budget[k] prompts of each task k.

  Args:
    key: PRNG key.
    score: [K, M] log-weights (-inf for invalid prompts).
    valid: [K, M] bool.
    budget: [K] int32, summing to `num_prompts`.
    num_prompts: P, static.

  Returns:
    (task_ids [P] int32, prompt_ids [P] int32): slots laid out task by task;
    within a task, prompts in decreasing perturbed score.
  """
  chex.assert_rank([score, valid, budget], [2, 2, 1])
  chex.assert_equal_shape([score, valid])
  num_tasks, max_prompts = score.shape
  perturbed = score + jax.random.gumbel(key, score.shape, jnp.float32)
  _, ranked = jax.lax.top_k(perturbed, min(num_prompts, max_prompts))  # [K, min(P, M)]
  ends = jnp.cumsum(budget)
  slots = jnp.arange(num_prompts, dtype=jnp.int32)
  task_ids = jnp.minimum(jnp.searchsorted(ends, slots, side="right"), num_tasks - 1)
  rank = slots - (ends - budget)[task_ids]
  num_valid = jnp.maximum(valid.sum(axis=1), 1)[task_ids]
  prompt_ids = ranked[task_ids, rank % num_valid]
  return task_ids.astype(jnp.int32), prompt_ids.astype(jnp.int32)
