"""UtilityState: reward statistics vs numpy, EMA updates, utility, and the config boundary."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from astor_jax.astor import hparams, utility

K, M = 3, 4


def rows():
  """Three tasks; groups of 2-3 rows; one padding row; a constant group."""
  task_ids = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 0, 0, 1, 1, 1, 2, 2], np.int32)
  group_ids = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5, 6, 6], np.int32)
  prompt_ids = np.array([1, 1, 1, 0, 0, 3, 3, 2, 2, 0, 0, 2, 2, 2, 0, 0], np.int32)
  rewards = np.array([1, 0, 1, .5, .5, 0, 1, 1, 1, .2, .8, 0, 0, 1, .3, .4], np.float32)
  row_mask = np.ones(16, bool)
  row_mask[15] = False
  return rewards, group_ids, task_ids, prompt_ids, row_mask


def numpy_stats(rewards, group_ids, task_ids, prompt_ids, row_mask):
  out = dict(task_rows=np.zeros(K), task_reward_sum=np.zeros(K), task_groups=np.zeros(K),
             task_group_var_sum=np.zeros(K), prompt_groups=np.zeros((K, M)),
             prompt_mean_sum=np.zeros((K, M)), prompt_var_sum=np.zeros((K, M)))
  for i in np.flatnonzero(row_mask):
    out["task_rows"][task_ids[i]] += 1
    out["task_reward_sum"][task_ids[i]] += rewards[i]
  for g in np.unique(group_ids):
    idx = np.flatnonzero((group_ids == g) & row_mask)
    if idx.size < 2:
      continue
    k, p, r = task_ids[idx[0]], prompt_ids[idx[0]], rewards[idx].astype(np.float64)
    out["task_groups"][k] += 1
    out["task_group_var_sum"][k] += r.var()
    out["prompt_groups"][k, p] += 1
    out["prompt_mean_sum"][k, p] += r.mean()
    out["prompt_var_sum"][k, p] += r.var()
  return out


def test_reward_statistics_match_numpy_on_one_and_eight_devices():
  data = rows()
  expected = numpy_stats(*data)
  single = jax.jit(lambda *a: utility.reward_statistics(*a, 16, K, M))(*data)
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))
  axes = ("data", "fsdp")
  sharded = jax.jit(jax.shard_map(
      lambda *a: utility.reward_statistics(*a, 16, K, M, axes), mesh=mesh,
      in_specs=(P(axes),) * 5, out_specs=P()))(*data)
  for got in (single, sharded):
    for name, value in expected.items():
      np.testing.assert_allclose(getattr(got, name), value, rtol=1e-5, atol=1e-6, err_msg=name)


def hp_for(**kw):
  return hparams.AstorHParams(num_tasks=K, batch_prompts=6, total_steps=10, ema_decay=0.5,
                              potential_weight=1.0, progress_weight=2.0, synergy_weight=0.5,
                              **kw)


def batch_stats(task_rows, reward_sum, groups, var_sum, kl_sum=None, kl_tokens=None,
                gram=None, gram_valid=False):
  table = jnp.zeros((K, M))
  f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  return utility.BatchStats(
      rewards=utility.RewardStats(f(task_rows), f(reward_sum), f(groups), f(var_sum),
                                  table, table, table),
      kl_sum=f(kl_sum if kl_sum is not None else np.zeros(K)),
      kl_tokens=f(kl_tokens if kl_tokens is not None else np.zeros(K)),
      grad_gram=f(gram if gram is not None else np.zeros((K, K))),
      gram_valid=jnp.asarray(gram_valid))


update = jax.jit(utility.update, static_argnums=2)


def test_update_emas_potential_progress_and_utility():
  hp = hp_for()
  state = utility.init([4, 2, 3], hp, utility.rng_key(0))
  # Step 1: tasks 0 and 1 present (means 0.5 and 0.2), task 2 absent.
  s1 = update(state, batch_stats([4, 5, 0], [2.0, 1.0, 0], [2, 2, 0], [0.5, 0.2, 0]), hp)
  np.testing.assert_allclose(s1.reward_mean, [0.5, 0.2, 0.0], rtol=1e-6)
  np.testing.assert_allclose(s1.reward_var, [0.25, 0.1, 0.0], rtol=1e-6)
  np.testing.assert_allclose(s1.potential, [1.0, 0.4, 0.0], rtol=1e-6)
  np.testing.assert_array_equal(s1.progress, 0.0)
  np.testing.assert_array_equal(s1.task_updates, [1, 1, 0])
  # Step 2: task 0 improves to 0.9 (innovation 0.4), task 1 drops to 0.0 (innovation -0.2).
  s2 = update(s1, batch_stats([4, 5, 0], [3.6, 0.0, 0], [2, 2, 0], [0.0, 0.2, 0]), hp)
  np.testing.assert_allclose(s2.reward_mean, [0.7, 0.1, 0.0], rtol=1e-6)
  np.testing.assert_allclose(s2.progress, [0.2, -0.1, 0.0], rtol=1e-6)
  np.testing.assert_allclose(s2.reward_var, [0.125, 0.1, 0.0], rtol=1e-6)
  np.testing.assert_allclose(s2.utility, [0.5 + 2 * 0.2, 0.4 + 2 * 0.1, 0.0], rtol=1e-6)
  assert int(s2.step) == 2
  signed = update(s1, batch_stats([4, 5, 0], [3.6, 0.0, 0], [2, 2, 0], [0.0, 0.2, 0]),
                  hp_for(progress_mode="signed"))
  np.testing.assert_allclose(signed.utility, [0.5 + 2 * 0.2, 0.4 - 2 * 0.1, 0.0], rtol=1e-6)


def test_synergy_enters_utility_only_when_the_gram_was_computed():
  hp = hp_for()
  state = utility.init([4, 2, 3], hp, utility.rng_key(0))
  gram = np.array([[1.0, 1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
  stats = dict(task_rows=[2, 2, 2], reward_sum=[1, 1, 1], groups=[0, 0, 0], var_sum=[0, 0, 0])
  skipped = update(state, batch_stats(**stats, gram=gram, gram_valid=False), hp)
  np.testing.assert_array_equal(skipped.synergy_seen, False)
  np.testing.assert_array_equal(skipped.utility, 0.0)
  done = update(state, batch_stats(**stats, gram=gram, gram_valid=True), hp)
  np.testing.assert_allclose(done.synergy, gram, atol=1e-6)
  np.testing.assert_allclose(done.utility, 0.5 * np.array([0.0, 0.0, -1.0]), atol=1e-6)


def test_kl_and_prompt_table_are_updated_from_the_same_stats():
  hp = hp_for(init_beta=0.1, target_kl=(0.05,) * K)
  state = utility.init([4, 2, 3], hp, utility.rng_key(0))
  stats = batch_stats([2, 0, 2], [1, 0, 1], [1, 0, 1], [0.25, 0, 0.0],
                      kl_sum=[2.0, 0.0, 0.0], kl_tokens=[10.0, 0.0, 10.0])
  table = np.zeros((K, M), np.float32)
  table[0, 3] = 1.0
  stats = stats._replace(rewards=stats.rewards._replace(
      prompt_groups=jnp.asarray(table), prompt_mean_sum=jnp.asarray(table * 0.5),
      prompt_var_sum=jnp.asarray(table * 0.25)))
  new = update(state, stats, hp)
  np.testing.assert_allclose(new.kl.measured_kl, [0.2, 0.0, 0.0], atol=1e-7)
  controller = np.asarray(new.kl.controller_beta)
  assert controller[0] > 0.1 and controller[2] < 0.1  # above / below target
  np.testing.assert_allclose(controller[1], 0.1, rtol=1e-6)  # absent task
  # The coefficient the loss uses carries the utility factor (task 0 has the high utility).
  utilities = np.asarray(new.utility)
  factor = np.exp(-hp.utility_kl_strength * (utilities - utilities.mean()))
  np.testing.assert_allclose(new.kl.beta, controller * factor, rtol=1e-5)
  assert factor[0] < 1.0
  assert int(new.prompts.last_seen[0, 3]) == 0 and int(new.prompts.last_seen[0, 2]) == -1
  np.testing.assert_allclose(new.prompts.reward_var[0, 3], 0.25)


def test_single_task_and_empty_batches_stay_finite():
  hp = hparams.AstorHParams(num_tasks=1, batch_prompts=4, total_steps=5)
  state = utility.init([3], hp, utility.rng_key(1))
  new = jax.jit(utility.update, static_argnums=2)(state, utility.empty_batch_stats(1, 3), hp)
  for leaf in jax.tree.leaves(new):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
  np.testing.assert_array_equal(new.budget, [4])
  assert int(new.step) == 1 and int(new.task_updates[0]) == 0


def load_default_config():
  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "astor.py"
  spec = importlib.util.spec_from_file_location("astor_default_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_hparams_from_config_and_boundary_errors():
  config = load_default_config()
  config.tasks = ("code_gen", "commit_msg")
  config.astor.curriculum_order = ("commit_msg", "code_io")
  hp = hparams.astor_hparams(config)
  assert hp.num_tasks == 2 and hp.curriculum_indices == (1, 0)
  assert hp.target_kl == (config.astor.target_kl,) * 2
  assert hparams.rl_hparams(config).max_new_tokens == config.sampler.max_new_tokens
  config.astor.target_kl_per_task = (0.1,)
  with pytest.raises(ValueError, match="target_kl_per_task"):
    hparams.astor_hparams(config)
  with pytest.raises(ValueError, match="prompts_per_task"):
    utility.init([3], hp, utility.rng_key(0))
