"""Schedule: how many prompts each task gets this step, and which prompts.

ASTOR's schedule turns the task utilities U into a distribution over tasks and
then into integer prompt counts that fill the batch of P prompts:

  w_k      = (1 - eps) * softmax(U / tau)_k + eps / K
  budget_k = largest_remainder(w * P)

with tau = `astor.tau` and eps = `astor.floor`. Largest remainder: every task
first gets floor(w_k P); the prompts left over go one each to the tasks with
the largest fractional parts, ties to the lower task index, so the counts sum
to P exactly, are deterministic, and every task gets at least
floor(eps P / K). Prompts inside each task are then drawn by priority
(`priority.py`).

Baselines are other schedules with the same signature
`schedule(state, hp) -> (state, Plan)`, picked by name from `SCHEDULES`
(config `astor.schedule`):

  uniform      w_k = 1 / K (joint multi-task RL).
  curriculum   w = (1 - eps) * onehot(order[stage]) + eps / K with
               stage = min(K - 1, floor(step * K / total_steps)): tasks one
               after another in `astor.curriculum_order`, equal stage lengths
               (our choice; the paper does not give the stage lengths), with
               the same floor so earlier tasks are rehearsed (eps = 0 gives a
               pure sequential curriculum).
  specialist   w = onehot(specialist): one task only (the per-task specialists).

Every schedule advances the state's rng (one split per call) and records the
budget in the state; nothing else in the state changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from astor_jax.astor import priority
from astor_jax.astor.hparams import AstorHParams
from astor_jax.astor.utility import UtilityState


class Plan(NamedTuple):
  """What to roll out this step.

  Attributes:
    budget: [K] int32 prompts per task, summing to P.
    task_ids: [P] int32, the task of each prompt slot.
    prompt_ids: [P] int32, the prompt index within its task's train split.
  """

  budget: chex.Array
  task_ids: chex.Array
  prompt_ids: chex.Array


def mix_floor(probs: chex.Array, floor: float) -> chex.Array:
  """w = (1 - eps) * probs + eps / K, for probs [K] summing to one."""
  chex.assert_rank(probs, 1)
  return (1.0 - floor) * probs + floor / probs.shape[0]


def utility_weights(utility: chex.Array, tau: float, floor: float) -> chex.Array:
  """w = (1 - eps) * softmax(U / tau) + eps / K; [K] -> [K], sums to one."""
  chex.assert_rank(utility, 1)
  return mix_floor(jax.nn.softmax(utility / tau), floor)


def largest_remainder(weights: chex.Array, total: int) -> chex.Array:
  """Integer counts proportional to `weights` that sum to `total` exactly.

  quota_k = w_k * total / sum(w); count_k = floor(quota_k), plus one for the
  (total - sum floor(quota)) tasks with the largest fractional parts, ties to
  the lower index (stable sort).

  Args:
    weights: [K] non-negative, not all zero.
    total: the integer to split (static).

  Returns:
    [K] int32, sum == total, |count_k - quota_k| < 1.
  """
  chex.assert_rank(weights, 1)
  quota = weights / weights.sum() * total
  base = jnp.floor(quota)
  left = total - base.sum().astype(jnp.int32)
  order = jnp.argsort(-(quota - base), stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
  return (base.astype(jnp.int32) + (rank < left).astype(jnp.int32)).astype(jnp.int32)


def _plan(state: UtilityState, hp: AstorHParams,
          weights: chex.Array) -> tuple[UtilityState, Plan]:
  """Budget from `weights`, prompts by priority; advances the rng, records the budget."""
  chex.assert_shape(weights, (hp.num_tasks,))
  budget = largest_remainder(weights, hp.batch_prompts)
  rng, key = jax.random.split(state.rng)
  score = priority.scores(state.prompts, state.step, hp.priority_temperature,
                          hp.priority_staleness_weight, hp.priority_staleness_horizon,
                          hp.zero_variance_penalty)
  task_ids, prompt_ids = priority.choose(key, score, state.prompts.valid, budget,
                                         hp.batch_prompts)
  return state._replace(rng=rng, budget=budget), Plan(budget, task_ids, prompt_ids)


def astor_schedule(state: UtilityState, hp: AstorHParams) -> tuple[UtilityState, Plan]:
  """ASTOR: budget from softmax(U / tau) mixed with the floor."""
  return _plan(state, hp, utility_weights(state.utility, hp.tau, hp.floor))


def uniform_schedule(state: UtilityState, hp: AstorHParams) -> tuple[UtilityState, Plan]:
  """Joint multi-task RL: equal shares."""
  return _plan(state, hp, jnp.full((hp.num_tasks,), 1.0 / hp.num_tasks, jnp.float32))


def curriculum_weights(step: chex.Array, hp: AstorHParams) -> chex.Array:
  """The curriculum's task weights at `step` (module doc); [K] float32."""
  stage = jnp.minimum(step * hp.num_tasks // max(hp.total_steps, 1), hp.num_tasks - 1)
  current = jnp.asarray(hp.curriculum_indices, jnp.int32)[stage]
  return mix_floor(jax.nn.one_hot(current, hp.num_tasks, dtype=jnp.float32), hp.floor)


def curriculum_schedule(state: UtilityState, hp: AstorHParams) -> tuple[UtilityState, Plan]:
  """Fixed curriculum: tasks in `curriculum_order`, equal stages, with the floor."""
  return _plan(state, hp, curriculum_weights(state.step, hp))


def specialist_schedule(state: UtilityState, hp: AstorHParams) -> tuple[UtilityState, Plan]:
  """Single-task specialist: the whole batch goes to `astor.specialist_task`."""
  if not 0 <= hp.specialist_index < hp.num_tasks:
    raise ValueError("config.astor.specialist_task: must name one of config.tasks for "
                     "astor.schedule='specialist'")
  return _plan(state, hp, jax.nn.one_hot(hp.specialist_index, hp.num_tasks, dtype=jnp.float32))


Schedule = Callable[[UtilityState, AstorHParams], tuple[UtilityState, Plan]]

SCHEDULES: dict[str, Schedule] = {
    "astor": astor_schedule,
    "uniform": uniform_schedule,
    "curriculum": curriculum_schedule,
    "specialist": specialist_schedule,
}


def get_schedule(name: str) -> Schedule:
  """The schedule registered as `name`; ValueError naming `astor.schedule`."""
  if name not in SCHEDULES:
    raise ValueError(f"config.astor.schedule: unknown schedule {name!r}; use one of "
                     f"{', '.join(SCHEDULES)}")
  return SCHEDULES[name]


def make_schedule_fn(hp: AstorHParams) -> Callable[[UtilityState], tuple[UtilityState, Plan]]:
  """The configured schedule, jitted: `state -> (state, Plan)`; compiles once."""
  schedule = get_schedule(hp.schedule)
  return jax.jit(lambda state: schedule(state, hp))
