"""Calibrate: per-token KL estimators and the per-task adaptive KL coefficient.

KL estimators (Schulman, "Approximating KL Divergence", 2020,
http://joschu.net/blog/kl-approx.html). Tokens are sampled from the policy
pi; with the per-token log ratio rho = log pi_ref(y_t) - log pi(y_t):

  k1 = -rho                      unbiased, high variance, can be negative
  k2 = rho^2 / 2                 biased, low variance, >= 0
  k3 = exp(rho) - 1 - rho        unbiased, low variance, >= 0

Per-task controller. Each task k has its own coefficient beta_k, driven by a
proportional controller (Ziegler et al. 2019, "Fine-Tuning Language Models
from Human Preferences", https://arxiv.org/abs/1909.08593, section 2.2) toward
its own target, and scaled by a utility factor f_k:

  f_k       = exp(-s * d * (U_k - mean_j U_j))
  target'_k = target_k / f_k
  e_k       = clip(KL_k / target'_k - 1, -c, c)
  b_k      <- clip(b_k * (1 + e_k / H), min_beta, max_beta)   (only if task k had tokens)
  beta_k    = clip(b_k * f_k, min_beta, max_beta)

with s = `astor.utility_kl_strength`, H = `astor.kl_horizon`, c =
`astor.kl_error_clip` (0.2 in Ziegler et al.) and d = +1 for
`kl_direction == "loosen_high_utility"` (default), -1 for
`"tighten_high_utility"`.

Choices where the paper is silent (ours):
  * KL_k is the mean per-token k3 estimate over task k's completion tokens in
    the step, whatever estimator the loss uses: k3 is unbiased and never
    negative, so the controller never sees a negative KL.
  * The utility factor is relative (U_k minus the mean over tasks): what matters
    is whether a task is still learning compared with the others, as in the
    schedule's softmax, which is invariant to a common shift of U.
  * The factor acts on both the coefficient (immediate effect) and the target.
    A proportional controller on log beta integrates its error, so a factor on
    beta alone would be undone within a few horizons; moving the target too
    keeps the steady state apart: a high-utility task settles at a larger KL
    (looser), a saturated one at a smaller KL (tighter), in the default
    direction.
  * Tasks absent from a batch keep their controller state.
  * `astor.calibrate = False` selects the fixed calibrator: beta_k stays at
    `astor.init_beta` (the uniform-KL baseline).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax.numpy as jnp

from astor_jax.astor.hparams import AstorHParams

KL_DIRECTIONS = {"loosen_high_utility": 1.0, "tighten_high_utility": -1.0}


def kl_k1(logprobs: chex.Array, ref_logprobs: chex.Array) -> chex.Array:
  """k1 = log pi - log pi_ref, per token; same shape as the inputs."""
  chex.assert_equal_shape([logprobs, ref_logprobs])
  return logprobs - ref_logprobs


def kl_k2(logprobs: chex.Array, ref_logprobs: chex.Array) -> chex.Array:
  """k2 = (log pi_ref - log pi)^2 / 2, per token."""
  chex.assert_equal_shape([logprobs, ref_logprobs])
  return 0.5 * (ref_logprobs - logprobs) ** 2


def kl_k3(logprobs: chex.Array, ref_logprobs: chex.Array) -> chex.Array:
  """k3 = exp(rho) - 1 - rho with rho = log pi_ref - log pi, per token.

  `expm1` keeps the estimate accurate (and exactly >= 0 up to rounding) for
  tiny rho, where exp(rho) - 1 would cancel.
  """
  chex.assert_equal_shape([logprobs, ref_logprobs])
  rho = ref_logprobs - logprobs
  return jnp.expm1(rho) - rho


KL_ESTIMATORS: dict[str, Callable[[chex.Array, chex.Array], chex.Array]] = {
    "k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def get_kl_estimator(name: str):
  """The KL estimator registered as `name`; ValueError naming `rl.kl_estimator`."""
  if name not in KL_ESTIMATORS:
    raise ValueError(f"config.rl.kl_estimator: unknown estimator {name!r}; use one of "
                     f"{', '.join(KL_ESTIMATORS)}")
  return KL_ESTIMATORS[name]


class KLState(NamedTuple):
  """Per-task KL calibration state; every field is [K] float32.

  Attributes:
    controller_beta: b_k, the proportional controller's coefficient.
    beta: beta_k = b_k * f_k, the coefficient the loss uses.
    target_kl: target_k, before the utility factor.
    measured_kl: the last measured per-token KL of each task.
  """

  controller_beta: chex.Array
  beta: chex.Array
  target_kl: chex.Array
  measured_kl: chex.Array


def init(hp: AstorHParams) -> KLState:
  """Every task starts at `init_beta` with its own target."""
  def beta():  # distinct buffers: the train step donates the state
    return jnp.full((hp.num_tasks,), hp.init_beta, jnp.float32)

  return KLState(controller_beta=beta(), beta=beta(),
                 target_kl=jnp.asarray(hp.target_kl, jnp.float32),
                 measured_kl=jnp.zeros((hp.num_tasks,), jnp.float32))


def utility_factor(utility: chex.Array, strength: float, direction: str) -> chex.Array:
  """f_k = exp(-s * d * (U_k - mean U)); < 1 for above-average utility when d = +1.

  Args:
    utility: [K] task utilities.
    strength: s >= 0.
    direction: a key of `KL_DIRECTIONS`.

  Returns:
    [K] positive factors; all ones when every task has the same utility.
  """
  chex.assert_rank(utility, 1)
  sign = KL_DIRECTIONS[direction]
  return jnp.exp(-strength * sign * (utility - utility.mean()))


def proportional_update(controller_beta: chex.Array, measured_kl: chex.Array,
                        target_kl: chex.Array, present: chex.Array, horizon: float,
                        error_clip: float) -> chex.Array:
  """One proportional step per task: b <- b * (1 + clip(KL/target - 1, -c, c) / H).

  Args:
    controller_beta: [K] current coefficients b_k.
    measured_kl: [K] measured per-token KL.
    target_kl: [K] targets (> 0).
    present: [K] bool, tasks that had tokens this step; others keep b_k.
    horizon: H > 0.
    error_clip: c > 0.

  Returns:
    [K] updated coefficients (not yet clipped to the beta range).
  """
  chex.assert_equal_shape([controller_beta, measured_kl, target_kl, present])
  error = jnp.clip(measured_kl / target_kl - 1.0, -error_clip, error_clip)
  return jnp.where(present, controller_beta * (1.0 + error / horizon), controller_beta)


def adaptive_update(state: KLState, measured_kl: chex.Array, present: chex.Array,
                    utility: chex.Array, hp: AstorHParams) -> KLState:
  """The per-task controller with the utility factor (formulas in the module doc).

  Args:
    state: KLState of [K] arrays.
    measured_kl: [K] mean per-token KL of each task this step.
    present: [K] bool, tasks with completion tokens this step.
    utility: [K] utilities after this step's update.
    hp: hyperparameters.

  Returns:
    The new KLState.
  """
  chex.assert_shape([measured_kl, present, utility], (hp.num_tasks,))
  factor = utility_factor(utility, hp.utility_kl_strength, hp.kl_direction)
  controller_beta = proportional_update(
      state.controller_beta, measured_kl, state.target_kl / factor, present,
      hp.kl_horizon, hp.kl_error_clip)
  controller_beta = jnp.clip(controller_beta, hp.min_beta, hp.max_beta)
  return KLState(
      controller_beta=controller_beta,
      beta=jnp.clip(controller_beta * factor, hp.min_beta, hp.max_beta),
      target_kl=state.target_kl,
      measured_kl=jnp.where(present, measured_kl, state.measured_kl))


def fixed_update(state: KLState, measured_kl: chex.Array, present: chex.Array,
                 utility: chex.Array, hp: AstorHParams) -> KLState:
  """No calibration: beta_k keeps its value; only the measured KL is recorded."""
  del utility, hp
  return state._replace(measured_kl=jnp.where(present, measured_kl, state.measured_kl))


CALIBRATORS = {True: adaptive_update, False: fixed_update}


def update(state: KLState, measured_kl: chex.Array, present: chex.Array,
           utility: chex.Array, hp: AstorHParams) -> KLState:
  """The calibrator `hp.calibrate` selects (adaptive or fixed), same signature."""
  return CALIBRATORS[hp.calibrate](state, measured_kl, present, utility, hp)
