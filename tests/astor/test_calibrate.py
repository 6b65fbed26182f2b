"""KL estimators against numpy; the per-task proportional controller and its utility factor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astor_jax.astor import calibrate
from astor_jax.astor.hparams import AstorHParams


def test_kl_estimators_match_numpy_and_estimate_the_kl():
  rng = np.random.default_rng(0)
  logp = np.log(rng.dirichlet(np.ones(6), size=1))[0]
  ref = np.log(rng.dirichlet(np.ones(6), size=1))[0]
  rho = ref - logp
  expected = {"k1": -rho, "k2": 0.5 * rho**2, "k3": np.exp(rho) - 1 - rho}
  for name, fn in calibrate.KL_ESTIMATORS.items():
    got = np.asarray(jax.jit(fn)(jnp.asarray(logp, jnp.float32), jnp.asarray(ref, jnp.float32)))
    np.testing.assert_allclose(got, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
  # k1 and k3 are unbiased: their expectation under pi is KL(pi || ref).
  p = np.exp(logp)
  true_kl = np.sum(p * (logp - ref))
  for name in ("k1", "k3"):
    np.testing.assert_allclose(np.sum(p * expected[name]), true_kl, rtol=1e-6)
  assert np.all(np.asarray(calibrate.kl_k3(jnp.zeros(3), jnp.array([1e-8, -1e-8, 0.0]))) >= 0)
  with pytest.raises(ValueError, match="rl.kl_estimator"):
    calibrate.get_kl_estimator("k4")


def hp_for(**kw):
  base = dict(num_tasks=3, batch_prompts=6, total_steps=10, init_beta=0.1, kl_horizon=10.0,
              kl_error_clip=0.2, utility_kl_strength=0.5, target_kl=(0.05, 0.05, 0.05))
  base.update(kw)
  return AstorHParams(**base)


update = jax.jit(calibrate.update, static_argnums=4)
PRESENT = jnp.ones(3, bool)
EQUAL_UTILITY = jnp.zeros(3)


def test_controller_moves_beta_toward_its_target_per_task():
  hp = hp_for()
  state = calibrate.init(hp)
  measured = jnp.array([0.2, 0.05, 0.01])  # above, at, below target
  new = update(state, measured, PRESENT, EQUAL_UTILITY, hp)
  beta = np.asarray(new.beta)
  assert beta[0] > 0.1 and beta[2] < 0.1
  np.testing.assert_allclose(beta[1], 0.1, rtol=1e-6)
  # Ziegler's clipped proportional step: e = clip(KL / target - 1, -0.2, 0.2), b *= 1 + e / H.
  np.testing.assert_allclose(beta, 0.1 * (1 + np.clip([3.0, 0.0, -0.8], -0.2, 0.2) / 10),
                             rtol=1e-6)
  # Repeated steps keep moving it the same way, within [min_beta, max_beta].
  for _ in range(500):
    new = update(new, measured, PRESENT, EQUAL_UTILITY, hp)
  np.testing.assert_allclose(np.asarray(new.beta)[[0, 2]], [hp.max_beta, hp.min_beta])


def test_tasks_are_independent_and_absent_tasks_keep_beta():
  hp = hp_for()
  state = calibrate.init(hp)
  a = update(state, jnp.array([0.01, 0.01, 0.01]), PRESENT, EQUAL_UTILITY, hp)
  b = update(state, jnp.array([0.01, 5.00, 0.01]), PRESENT, EQUAL_UTILITY, hp)
  np.testing.assert_array_equal(a.beta[0], b.beta[0])
  np.testing.assert_array_equal(a.beta[2], b.beta[2])
  assert float(b.beta[1]) > float(a.beta[1])
  # Different targets per task: the same KL pushes each task its own way.
  hp_t = hp_for(target_kl=(0.01, 0.1, 0.05))
  c = update(calibrate.init(hp_t), jnp.full(3, 0.05), PRESENT, EQUAL_UTILITY, hp_t)
  assert float(c.beta[0]) > 0.1 > float(c.beta[1])
  np.testing.assert_allclose(float(c.beta[2]), 0.1, rtol=1e-6)
  absent = update(state, jnp.array([5.0, 5.0, 5.0]), jnp.array([True, False, True]),
                  EQUAL_UTILITY, hp)
  np.testing.assert_allclose(float(absent.beta[1]), 0.1, rtol=1e-6)
  assert float(absent.measured_kl[1]) == 0.0


@pytest.mark.parametrize("direction,high_utility_beta", [
    ("loosen_high_utility", "smaller"), ("tighten_high_utility", "larger")])
def test_utility_factor_direction_is_the_config_switch(direction, high_utility_beta):
  hp = hp_for(kl_direction=direction)
  state = calibrate.init(hp)
  utility = jnp.array([1.0, 0.0, -1.0])
  measured = jnp.full(3, 0.05)
  new = update(state, measured, PRESENT, utility, hp)
  beta = np.asarray(new.beta)
  if high_utility_beta == "smaller":
    assert beta[0] < beta[1] < beta[2]
  else:
    assert beta[0] > beta[1] > beta[2]
  factor = np.exp(-0.5 * (1 if high_utility_beta == "smaller" else -1) * np.array([1, 0, -1]))
  # At KL == target the controller sees target' = target / f, so its error is f - 1.
  error = np.clip(factor - 1.0, -0.2, 0.2)
  np.testing.assert_allclose(beta, 0.1 * (1 + error / 10) * factor, rtol=1e-5)
  # The factor also moves the steady state: the controller settles where KL = target / f.
  for _ in range(300):
    new = update(new, measured, PRESENT, utility, hp)
  settled = np.asarray(new.controller_beta)
  if high_utility_beta == "smaller":
    assert settled[0] < 0.1 < settled[2]
  else:
    assert settled[0] > 0.1 > settled[2]


def test_fixed_calibrator_keeps_beta():
  hp = hp_for(calibrate=False)
  state = calibrate.init(hp)
  new = update(state, jnp.array([5.0, 0.0, 1.0]), PRESENT, jnp.array([3.0, 0.0, -3.0]), hp)
  np.testing.assert_array_equal(new.beta, state.beta)
  np.testing.assert_allclose(new.measured_kl, [5.0, 0.0, 1.0])
