"""Task budgets (largest remainder over softmax(U / tau) + floor), the schedule registry,
and priority-based prompt choice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from astor_jax.astor import priority, schedule, utility
from astor_jax.astor.hparams import AstorHParams


@jax.jit
def _budget(utilities, tau, floor, total):
  return schedule.largest_remainder(schedule.utility_weights(utilities, tau, floor), total)


def budget_of(utilities, tau, floor, total):
  """Hyperparameters traced, so hypothesis examples reuse one compile per task count."""
  return _budget(utilities, jnp.float32(tau), jnp.float32(floor), jnp.int32(total))


utilities_st = st.lists(st.floats(-3.0, 3.0, allow_nan=False, width=32), min_size=1, max_size=6)


def fractional_parts(utilities, tau, floor, total):
  w = np.asarray(schedule.utility_weights(jnp.asarray(utilities, jnp.float32), tau, floor))
  quota = w / w.sum() * total
  return quota - np.floor(quota)


@settings(max_examples=40, deadline=None)
@given(utilities=utilities_st, tau=st.sampled_from([0.1, 0.5, 2.0]),
       floor=st.sampled_from([0.0, 0.1, 0.5, 1.0]), total=st.integers(1, 40))
def test_budget_sums_to_batch_and_respects_floor(utilities, tau, floor, total):
  u = jnp.asarray(utilities, jnp.float32)
  budget = np.asarray(budget_of(u, tau, floor, total))
  k = len(utilities)
  assert budget.dtype == np.int32
  assert budget.sum() == total
  assert np.all(budget >= np.floor(floor * total / k + 1e-6) - 0)
  quota = np.asarray(schedule.utility_weights(u, tau, floor)) * total
  assert np.all(np.abs(budget - quota) < 1.0 + 1e-4)


@settings(max_examples=30, deadline=None)
@given(utilities=utilities_st, perm_seed=st.integers(0, 1000), total=st.integers(1, 40))
def test_budget_is_permutation_equivariant(utilities, perm_seed, total):
  frac = fractional_parts(utilities, 0.5, 0.1, total)
  # Ties in fractional parts are broken by index, on purpose; elsewhere equivariance is exact.
  assume(len(np.unique(np.round(frac, 4))) == len(frac))
  assume(np.all(np.abs(frac - np.round(frac)) > 1e-4))
  perm = np.random.default_rng(perm_seed).permutation(len(utilities))
  u = np.asarray(utilities, np.float32)
  base = np.asarray(budget_of(jnp.asarray(u), 0.5, 0.1, total))
  permuted = np.asarray(budget_of(jnp.asarray(u[perm]), 0.5, 0.1, total))
  np.testing.assert_array_equal(permuted, base[perm])


def test_ties_go_to_the_lower_task_index_deterministically():
  budget = np.asarray(budget_of(jnp.zeros(3), 0.5, 0.0, 4))
  np.testing.assert_array_equal(budget, [2, 1, 1])


@settings(max_examples=20, deadline=None)
@given(utilities=st.lists(st.floats(-2.0, 2.0, width=32), min_size=2, max_size=5, unique=True),
       total=st.integers(4, 32))
def test_tau_to_zero_picks_argmax_and_tau_to_infinity_is_uniform(utilities, total):
  u = np.asarray(utilities, np.float32)
  assume(np.sort(u)[-1] - np.sort(u)[-2] > 1e-2)
  cold = np.asarray(budget_of(jnp.asarray(u), 1e-4, 0.0, total))
  assert cold[np.argmax(u)] == total
  hot = np.asarray(budget_of(jnp.asarray(u), 1e6, 0.0, total))
  assert hot.max() - hot.min() <= 1
  k = len(u)
  np.testing.assert_array_equal(np.sort(hot), np.sort([total // k + (i < total % k)
                                                       for i in range(k)]))


def make_state(num_tasks=3, prompts=(5, 3, 7), batch_prompts=10, **kw):
  hp = AstorHParams(num_tasks=num_tasks, batch_prompts=batch_prompts, total_steps=9, **kw)
  return utility.init(list(prompts), hp, utility.rng_key(0)), hp


@pytest.mark.parametrize("name", tuple(schedule.SCHEDULES))
def test_every_schedule_fills_the_batch_with_valid_prompts(name):
  state, hp = make_state(schedule=name, specialist_index=2, curriculum_indices=(1, 2, 0))
  new_state, plan = schedule.make_schedule_fn(hp)(state)
  budget, task_ids, prompt_ids = map(np.asarray, plan)
  assert budget.sum() == hp.batch_prompts
  np.testing.assert_array_equal(np.bincount(task_ids, minlength=3), budget)
  assert np.all(np.diff(task_ids) >= 0)  # laid out task by task
  assert np.all(prompt_ids < np.array([5, 3, 7])[task_ids])
  for k in range(3):  # without replacement while the task has enough prompts
    chosen = prompt_ids[task_ids == k]
    assert len(set(chosen.tolist())) == min(len(chosen), (5, 3, 7)[k])
  np.testing.assert_array_equal(np.asarray(new_state.budget), budget)
  assert not np.array_equal(np.asarray(new_state.rng), np.asarray(state.rng))
  assert int(new_state.step) == int(state.step)


def test_named_schedules_give_their_documented_budgets():
  state, _ = make_state()

  def budget(name, state, **kw):
    hp = AstorHParams(num_tasks=3, batch_prompts=10, total_steps=9, schedule=name, **kw)
    return np.asarray(schedule.make_schedule_fn(hp)(state)[1].budget)

  np.testing.assert_array_equal(budget("uniform", state), [4, 3, 3])
  np.testing.assert_array_equal(budget("specialist", state, specialist_index=1), [0, 10, 0])
  hp_c = AstorHParams(num_tasks=3, batch_prompts=10, total_steps=9, floor=0.0,
                      curriculum_indices=(2, 0, 1))
  stages = [np.asarray(schedule.curriculum_weights(jnp.int32(s), hp_c)) for s in (0, 3, 8, 20)]
  np.testing.assert_array_equal(stages, [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 1, 0]])
  state_u = state._replace(utility=jnp.array([0.0, 5.0, 0.0]))
  np.testing.assert_array_equal(budget("astor", state_u, tau=0.01, floor=0.3), [1, 8, 1])


def test_unknown_schedule_names_the_config_field():
  with pytest.raises(ValueError, match="astor.schedule"):
    schedule.get_schedule("round_robin")


def test_budget_beyond_the_task_prompts_repeats_the_ranking():
  table = priority.init([2, 6])
  score = priority.scores(table, jnp.int32(0), 0.25, 0.1, 20, 1.0)
  task_ids, prompt_ids = priority.choose(jax.random.PRNGKey(1), score, table.valid,
                                         jnp.array([5, 1], jnp.int32), 6)
  np.testing.assert_array_equal(task_ids, [0, 0, 0, 0, 0, 1])
  first = np.asarray(prompt_ids[:2])
  assert sorted(first.tolist()) == [0, 1]
  np.testing.assert_array_equal(prompt_ids[:5], np.resize(first, 5))


def test_priority_prefers_informative_and_stale_prompts():
  table = priority.init([4])
  # Prompt 0: zero variance (solved); 1: high variance; 2: low variance; 3: never seen.
  table = priority.update(table, jnp.array([[1.0, 1.0, 1.0, 0.0]]),
                          jnp.array([[1.0, 0.5, 0.9, 0.0]]),
                          jnp.array([[0.0, 0.25, 0.01, 0.0]]), jnp.int32(3), 0.8)
  np.testing.assert_array_equal(table.last_seen, [[3, 3, 3, -1]])
  score = np.asarray(priority.scores(table, jnp.int32(4), 0.25, 0.1, 20, 1.0))[0]
  assert score[3] > score[1] > score[2] > score[0]
  # Gumbel-top-1 frequencies follow softmax(score).
  keys = jax.random.split(jax.random.PRNGKey(0), 2000)
  picks = jax.vmap(lambda k: priority.choose(k, jnp.asarray(score)[None], table.valid,
                                             jnp.array([1], jnp.int32), 1)[1][0])(keys)
  freq = np.bincount(np.asarray(picks), minlength=4) / 2000
  np.testing.assert_allclose(freq, jax.nn.softmax(score), atol=0.04)
  # Staleness brings a demoted prompt back up over time.
  later = np.asarray(priority.scores(table, jnp.int32(30), 0.25, 0.1, 20, 1.0))[0]
  assert later[0] > score[0]


def test_priority_ema_and_invalid_cells():
  table = priority.init([1, 3])
  np.testing.assert_array_equal(table.valid, [[True, False, False], [True, True, True]])
  assert np.all(np.isneginf(np.asarray(priority.scores(table, jnp.int32(0), 1.0, 0.0, 5,
                                                       0.0))[0, 1:]))
  count = jnp.array([[0.0, 0, 0], [0, 1, 0]])
  table = priority.update(table, count, count * 0.5, count * 0.2, jnp.int32(0), 0.75)
  table = priority.update(table, count, count * 1.0, count * 0.0, jnp.int32(1), 0.75)
  np.testing.assert_allclose(table.reward_mean[1, 1], 0.75 * 0.5 + 0.25 * 1.0)
  np.testing.assert_allclose(table.reward_var[1, 1], 0.75 * 0.2)
  assert float(table.reward_mean[1, 0]) == 0.0 and int(table.last_seen[1, 0]) == -1
  with pytest.raises(ValueError, match="at least one train prompt"):
    priority.init([3, 0])
