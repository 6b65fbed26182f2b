"""Grouped advantage estimators against a numpy reference, under jit and on 8 devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from astor_jax.astor import advantages

NAMES = tuple(advantages.ADVANTAGE_ESTIMATORS)


def reference(name, rewards, group_ids, row_mask):
  """Loop-per-group numpy reference."""
  out = np.zeros(len(rewards), np.float64)
  for g in np.unique(group_ids):
    rows = np.flatnonzero((group_ids == g) & row_mask)
    if rows.size == 0:
      continue
    r = rewards[rows].astype(np.float64)
    mean, std = r.mean(), r.std()
    if std <= advantages.ZERO_STD:
      continue
    if name == "grpo":
      out[rows] = (r - mean) / (std + advantages.STD_EPS)
    elif name == "dr_grpo":
      out[rows] = r - mean
    else:
      n = rows.size
      out[rows] = [r[i] - (r.sum() - r[i]) / (n - 1) for i in range(n)] if n > 1 else 0.0
  return out


@functools.cache
def jitted(name):
  return jax.jit(advantages.get_estimator(name), static_argnums=3)


def random_rows(seed, num_rows=24, num_groups=6, binary=False):
  rng = np.random.default_rng(seed)
  group_ids = rng.integers(0, num_groups, num_rows).astype(np.int32)
  rewards = (rng.integers(0, 2, num_rows) if binary else rng.random(num_rows)).astype(np.float32)
  row_mask = rng.random(num_rows) > 0.2
  return rewards, group_ids, row_mask


def rounding_error(name, rewards, group_ids, row_mask, num_groups=24):
  """Per group, the float32 error a row's advantage may carry: the group mean is
  rounded (an ulp of the largest reward) and that error enters every row; GRPO
  divides it by the group's std, so a near-constant group amplifies it."""
  out = np.zeros(num_groups)
  for g in range(num_groups):
    r = rewards[(group_ids == g) & row_mask].astype(np.float64)
    if r.size:
      scale = 1.0 / (r.std() + advantages.STD_EPS) if name == "grpo" else 1.0
      out[g] = 8 * np.finfo(np.float32).eps * np.abs(r).max() * scale
  return out


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), binary=st.booleans())
def test_estimators_match_numpy_and_sum_to_zero_per_group(seed, binary):
  rewards, group_ids, row_mask = random_rows(seed, binary=binary)
  for name in NAMES:
    adv = np.asarray(jitted(name)(rewards, group_ids, row_mask, 24))
    expected = reference(name, rewards, group_ids, row_mask)
    error = rounding_error(name, rewards, group_ids, row_mask)
    row_tolerance = 1e-5 + 1e-4 * np.abs(expected) + error[group_ids]
    assert np.all(np.abs(adv - expected) <= row_tolerance), (name, adv, expected)
    assert np.all(adv[~row_mask] == 0.0)
    group_sums = np.bincount(group_ids, weights=adv, minlength=24)
    sum_tolerance = 1e-6 + np.bincount(group_ids, weights=row_mask, minlength=24) * error
    assert np.all(np.abs(group_sums) <= sum_tolerance), (name, group_sums, sum_tolerance)


@pytest.mark.parametrize("name", NAMES)
def test_constant_groups_empty_groups_and_single_rows_give_zero_not_nan(name):
  rewards = np.array([0.3, 0.3, 0.3, 1.0, 1.0, 0.7, 0.2], np.float32)
  group_ids = np.array([0, 0, 0, 2, 2, 4, 5], np.int32)  # groups 1, 3 empty; 4, 5 one row
  row_mask = np.array([1, 1, 1, 1, 1, 1, 0], bool)
  adv = np.asarray(jitted(name)(rewards, group_ids, row_mask, 7))
  assert np.all(np.isfinite(adv))
  np.testing.assert_array_equal(adv, 0.0)
  moments = advantages.group_moments(rewards, group_ids, row_mask, 7)
  assert np.all(np.isfinite(np.asarray(moments.mean)))
  np.testing.assert_array_equal(np.asarray(moments.count), [3, 0, 2, 0, 1, 0, 0])


def test_binary_grpo_uses_population_std():
  rewards = np.array([1, 0, 0, 0], np.float32)  # p = 1/4, std = sqrt(p(1-p))
  adv = np.asarray(jitted("grpo")(rewards, np.zeros(4, np.int32), np.ones(4, bool), 4))
  std = np.sqrt(0.25 * 0.75)
  np.testing.assert_allclose(adv, (rewards - 0.25) / (std + advantages.STD_EPS), rtol=1e-5)


def test_unknown_name_names_the_config_field():
  with pytest.raises(ValueError, match="rl.advantage"):
    advantages.get_estimator("ppo")


@pytest.mark.parametrize("name", NAMES)
def test_sharded_over_8_devices_equals_single_device(name):
  devices = np.asarray(jax.devices()[:8])
  mesh = Mesh(devices.reshape(4, 2), ("data", "fsdp"))
  axes = ("data", "fsdp")
  rewards, group_ids, row_mask = random_rows(3, num_rows=32, num_groups=8)
  fn = advantages.get_estimator(name)
  sharded = jax.jit(jax.shard_map(
      lambda r, g, m: fn(r, g, m, 32, axes), mesh=mesh,
      in_specs=(P(axes),) * 3, out_specs=P(axes)))
  np.testing.assert_allclose(np.asarray(sharded(rewards, group_ids, row_mask)),
                             np.asarray(jitted(name)(rewards, group_ids, row_mask, 32)),
                             atol=1e-6)


def test_vmaps_over_batches_of_rows():
  batches = [random_rows(s, num_rows=12, num_groups=3) for s in range(3)]
  stacked = [jnp.stack(x) for x in zip(*batches)]
  out = jax.vmap(lambda r, g, m: advantages.grpo_advantages(r, g, m, 12))(*stacked)
  for i, (r, g, m) in enumerate(batches):
    np.testing.assert_allclose(out[i], reference("grpo", r, g, m), rtol=1e-4, atol=1e-5)
