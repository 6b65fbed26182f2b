"""Task utility: the state that drives both the schedule and the KL calibration.

`UtilityState` holds, per task k, EMAs (decay lambda = `astor.ema_decay`) of
cheap rollout statistics, and from them the utility

  U_k = w_pot * potential_k + w_prog * progress_k + w_syn * synergy_k

with the weights `astor.potential_weight`, `progress_weight`, `synergy_weight`:

  potential_k  learning potential, 4 * EMA of the mean within-group reward
               variance of task k's groups. For binary rewards a group with
               success rate p has population variance p(1 - p), so this is the
               p(1 - p) signal; for graded rewards it is the variance GRPO can
               turn into advantage. The factor 4 maps it onto [0, 1].
  progress_k   recent progress, EMA of the innovation r_k - m_k, where r_k is
               this step's mean reward of task k and m_k its EMA before the
               step; at a steady improvement of delta per step this settles at
               delta / (1 - lambda), the change over the EMA's horizon. With
               `astor.progress_mode = "absolute"` (default) the magnitude enters
               U_k (a task whose reward moves, up or down, is where training
               acts now); "signed" uses it as is.
  synergy_k    mean smoothed gradient cosine with the other tasks (synergy.py).

The state follows optax's shape: `init(...) -> state`, `update(state, stats,
hp) -> state`, pure and jittable. `update` also advances the per-task KL
calibration (calibrate.py) from the same step's measured KL and the new
utility, and the prompt priority table (priority.py) from the groups' rewards:
one controller, not two.

Choices where the paper is silent (ours):
  * The first observation of a task initializes its EMAs (no bias toward 0);
    progress starts at its second observation.
  * A task absent from the batch keeps all its statistics.
  * Groups with fewer than two rows carry no variance information and are
    left out of potential and the prompt table.
  * Initial utilities are 0 for every task (a uniform first schedule).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from astor_jax.astor import calibrate, priority, synergy
from astor_jax.astor.advantages import group_moments
from astor_jax.astor.hparams import AstorHParams
from astor_jax.astor.segments import AxisName, segment_sum

PROGRESS_MODES = ("absolute", "signed")


class UtilityState(NamedTuple):
  """ASTOR's controller state; a pytree of arrays (K tasks, M prompt slots).

  Attributes:
    step: int32 scalar, number of updates so far.
    rng: [2] uint32 PRNG key for the schedule's prompt sampling.
    task_updates: [K] int32, updates in which the task had rows.
    reward_mean: [K] EMA of the task's mean reward.
    reward_var: [K] EMA of the mean within-group reward variance.
    progress: [K] EMA of the reward innovation (signed).
    potential: [K] learning potential, 4 * reward_var.
    synergy: [K, K] EMA of per-task gradient cosines.
    synergy_seen: [K, K] bool, pairs observed at least once.
    utility: [K] U_k.
    budget: [K] int32, the last scheduled prompts per task.
    kl: per-task KL calibration (beta_k, targets, measured KL).
    prompts: per-prompt priority table.
  """

  step: chex.Array
  rng: chex.Array
  task_updates: chex.Array
  reward_mean: chex.Array
  reward_var: chex.Array
  progress: chex.Array
  potential: chex.Array
  synergy: chex.Array
  synergy_seen: chex.Array
  utility: chex.Array
  budget: chex.Array
  kl: calibrate.KLState
  prompts: priority.PriorityState


class RewardStats(NamedTuple):
  """One step's reward statistics, summed over all rows (all devices).

  Attributes:
    task_rows: [K] number of real rows of each task.
    task_reward_sum: [K] sum of their rewards.
    task_groups: [K] number of groups with >= 2 rows.
    task_group_var_sum: [K] sum of those groups' population reward variances.
    prompt_groups: [K, M] number of such groups of each prompt.
    prompt_mean_sum: [K, M] sum of their mean rewards.
    prompt_var_sum: [K, M] sum of their variances.
  """

  task_rows: chex.Array
  task_reward_sum: chex.Array
  task_groups: chex.Array
  task_group_var_sum: chex.Array
  prompt_groups: chex.Array
  prompt_mean_sum: chex.Array
  prompt_var_sum: chex.Array


class BatchStats(NamedTuple):
  """Everything `update` needs from one train step.

  Attributes:
    rewards: RewardStats.
    kl_sum: [K] sum of the per-token KL estimate over each task's completion tokens.
    kl_tokens: [K] number of those tokens.
    grad_gram: [K, K] Gram matrix of per-task policy gradients.
    gram_valid: bool scalar, whether grad_gram was computed this step.
  """

  rewards: RewardStats
  kl_sum: chex.Array
  kl_tokens: chex.Array
  grad_gram: chex.Array
  gram_valid: chex.Array


def init(prompts_per_task: Sequence[int], hp: AstorHParams, rng: chex.PRNGKey) -> UtilityState:
  """A fresh state: zero utilities, beta_k = init_beta, uniform budget, empty table.

  Args:
    prompts_per_task: [K] number of train prompts of each task (they may differ).
    hp: hyperparameters; hp.num_tasks must equal len(prompts_per_task).
    rng: PRNG key for the schedule.

  Returns:
    UtilityState.
  """
  num_tasks = hp.num_tasks
  if len(prompts_per_task) != num_tasks:
    raise ValueError(f"prompts_per_task: {len(prompts_per_task)} entries for {num_tasks} "
                     "tasks (config.tasks); give one count per task")
  if hp.progress_mode not in PROGRESS_MODES:
    raise ValueError(f"config.astor.progress_mode: got {hp.progress_mode!r}, expected one of "
                     f"{', '.join(PROGRESS_MODES)}")
  # Distinct buffers per field: the train step donates the state.
  def zeros():
    return jnp.zeros((num_tasks,), jnp.float32)

  base, extra = divmod(hp.batch_prompts, num_tasks)
  budget = jnp.asarray([base + (k < extra) for k in range(num_tasks)], jnp.int32)
  return UtilityState(
      step=jnp.zeros((), jnp.int32),
      rng=jnp.asarray(rng),
      task_updates=jnp.zeros((num_tasks,), jnp.int32),
      reward_mean=zeros(), reward_var=zeros(), progress=zeros(), potential=zeros(),
      synergy=jnp.zeros((num_tasks, num_tasks), jnp.float32),
      synergy_seen=jnp.zeros((num_tasks, num_tasks), bool),
      utility=zeros(),
      budget=budget,
      kl=calibrate.init(hp),
      prompts=priority.init(prompts_per_task))


def reward_statistics(rewards: chex.Array, group_ids: chex.Array, task_ids: chex.Array,
                      prompt_ids: chex.Array, row_mask: chex.Array, num_groups: int,
                      num_tasks: int, max_prompts: int,
                      axis_name: AxisName = None) -> RewardStats:
  """Per-task and per-prompt reward statistics of a batch of rows.

  Args:
    rewards: [N] float32.
    group_ids: [N] int32 in [0, num_groups); a group's rows share task and prompt.
    task_ids: [N] int32 in [0, K).
    prompt_ids: [N] int32 in [0, M); rows outside the table are ignored there.
    row_mask: [N] bool.
    num_groups: static number of group slots (the global row count will do).
    num_tasks: K.
    max_prompts: M.
    axis_name: batch axes inside `shard_map`, or None.

  Returns:
    RewardStats, identical on every device.
  """
  chex.assert_rank([rewards, group_ids, task_ids, prompt_ids, row_mask], 1)
  chex.assert_equal_shape([rewards, group_ids, task_ids, prompt_ids, row_mask])
  weight = row_mask.astype(jnp.float32)
  moments = group_moments(rewards, group_ids, row_mask, num_groups, axis_name)
  row_count = row_mask.astype(jnp.int32)
  group_rows = jnp.maximum(moments.count.astype(jnp.int32), 1)
  group_task = segment_sum(task_ids * row_count, group_ids, num_groups, axis_name) // group_rows
  group_prompt = segment_sum(prompt_ids * row_count, group_ids, num_groups,
                             axis_name) // group_rows
  informative = (moments.count >= 2).astype(jnp.float32)
  in_table = ((group_prompt >= 0) & (group_prompt < max_prompts)
              & (group_task >= 0) & (group_task < num_tasks))
  cell = jnp.where(in_table, group_task * max_prompts + group_prompt, num_tasks * max_prompts)
  num_cells = num_tasks * max_prompts

  def per_cell(values):  # group-level arrays are already global: no psum
    return segment_sum(values, cell, num_cells).reshape(num_tasks, max_prompts)

  return RewardStats(
      task_rows=segment_sum(weight, task_ids, num_tasks, axis_name),
      task_reward_sum=segment_sum(rewards * weight, task_ids, num_tasks, axis_name),
      task_groups=segment_sum(informative, group_task, num_tasks),
      task_group_var_sum=segment_sum(moments.var * informative, group_task, num_tasks),
      prompt_groups=per_cell(informative),
      prompt_mean_sum=per_cell(moments.mean * informative),
      prompt_var_sum=per_cell(moments.var * informative))


def _ema(old, new, decay, first, present):
  """EMA step where `present`; the first observation replaces the old value."""
  return jnp.where(present, jnp.where(first, new, decay * old + (1.0 - decay) * new), old)


def compute_utility(potential: chex.Array, progress: chex.Array, synergy_term: chex.Array,
                    hp: AstorHParams) -> chex.Array:
  """U_k = w_pot * potential_k + w_prog * g(progress_k) + w_syn * synergy_k.

  g is |.| for progress_mode "absolute", the identity for "signed"; all [K].
  """
  chex.assert_equal_shape([potential, progress, synergy_term])
  progress_term = jnp.abs(progress) if hp.progress_mode == "absolute" else progress
  return (hp.potential_weight * potential + hp.progress_weight * progress_term
          + hp.synergy_weight * synergy_term)


def update(state: UtilityState, stats: BatchStats, hp: AstorHParams) -> UtilityState:
  """Folds one step's statistics into the state (formulas in the module doc).

  Args:
    state: the current UtilityState.
    stats: BatchStats of the step.
    hp: hyperparameters.

  Returns:
    The new UtilityState; step advanced by one, rng and budget unchanged.
  """
  num_tasks = hp.num_tasks
  r = stats.rewards
  chex.assert_shape([r.task_rows, r.task_reward_sum, r.task_groups, r.task_group_var_sum,
                     stats.kl_sum, stats.kl_tokens], (num_tasks,))
  chex.assert_shape(stats.grad_gram, (num_tasks, num_tasks))
  chex.assert_rank(stats.gram_valid, 0)
  decay = hp.ema_decay
  present = r.task_rows > 0
  first = state.task_updates == 0
  batch_mean = r.task_reward_sum / jnp.maximum(r.task_rows, 1.0)
  reward_mean = _ema(state.reward_mean, batch_mean, decay, first, present)
  innovation = batch_mean - state.reward_mean
  progress = _ema(state.progress, innovation, decay, False, present & ~first)
  has_groups = r.task_groups > 0
  batch_var = r.task_group_var_sum / jnp.maximum(r.task_groups, 1.0)
  reward_var = _ema(state.reward_var, batch_var, decay, first, has_groups)
  potential = 4.0 * reward_var

  cos, valid = synergy.cosines(stats.grad_gram)
  smoothed, seen = synergy.ema_update(state.synergy, state.synergy_seen, cos,
                                      valid & stats.gram_valid, hp.synergy_ema_decay)
  utility = compute_utility(potential, progress, synergy.synergy_per_task(smoothed, seen), hp)

  measured_kl = stats.kl_sum / jnp.maximum(stats.kl_tokens, 1.0)
  kl = calibrate.update(state.kl, measured_kl, stats.kl_tokens > 0, utility, hp)
  prompts = priority.update(state.prompts, r.prompt_groups, r.prompt_mean_sum,
                            r.prompt_var_sum, state.step, decay)
  return state._replace(
      step=state.step + 1,
      task_updates=state.task_updates + present.astype(jnp.int32),
      reward_mean=reward_mean, reward_var=reward_var, progress=progress,
      potential=potential, synergy=smoothed, synergy_seen=seen, utility=utility,
      kl=kl, prompts=prompts)


def empty_batch_stats(num_tasks: int, max_prompts: int) -> BatchStats:
  """Statistics of a step with no rows (a no-op update except for the step count)."""
  zeros = jnp.zeros((num_tasks,), jnp.float32)
  table = jnp.zeros((num_tasks, max_prompts), jnp.float32)
  return BatchStats(
      rewards=RewardStats(zeros, zeros, zeros, zeros, table, table, table),
      kl_sum=zeros, kl_tokens=zeros,
      grad_gram=jnp.zeros((num_tasks, num_tasks), jnp.float32),
      gram_valid=jnp.zeros((), bool))


def rng_key(seed: int) -> chex.PRNGKey:
  """A raw uint32 PRNG key (a plain array, so the state checkpoints as-is)."""
  return jax.random.PRNGKey(seed)
