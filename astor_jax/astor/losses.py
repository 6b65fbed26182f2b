"""The GRPO policy loss: clipped surrogate, per-task KL penalty, entropy bonus.

Per completion token t of row i (token-aligned log-probs, docs/design.md):

  ratio_it = exp(log pi(y_it) - log pi_old(y_it))
  pg_it    = -min(ratio_it A_i, clip(ratio_it, 1 - eps, 1 + eps) A_i)
  loss_it  = pg_it + beta[task_i] * KL_it - c_ent * H_it

(Schulman et al. 2017, PPO, https://arxiv.org/abs/1707.06347; Shao et al. 2024,
GRPO, https://arxiv.org/abs/2402.03300). beta is the per-task coefficient of
the calibrator, gathered per row by task id, so new values never recompile;
KL_it is one of Schulman's estimators (calibrate.py); H_it the policy's
entropy at the position that produced y_it.

Aggregation turns token losses into one scalar, L = sum_it w_it loss_it, with
weights from the masks only (`LOSS_AGGREGATIONS`, config `rl.loss_aggregation`):

  token_mean            w_it = m_it / sum_jt m_jt       (every token counts the same)
  seq_mean_token_mean   w_it = m_it / (|y_i| R)          (GRPO: mean over tokens, then rows)
  dr_grpo               w_it = m_it / (R T_max)          (Dr.GRPO: a constant length)

with m the completion mask of real rows, |y_i| the row's completion length, R
the number of real rows with a completion and T_max = `sampler.max_new_tokens`.
All sums run over the whole (possibly sharded) batch, via `axis_name`.

Clip fraction counts tokens where the clipped branch is the active one
(ratio above 1 + eps with A > 0, or below 1 - eps with A < 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax.numpy as jnp

from astor_jax.astor.segments import AxisName, global_sum


class TokenLosses(NamedTuple):
  """Per-token pieces of the loss, each [N, L] float32 (clipped: bool)."""

  policy: chex.Array
  kl: chex.Array
  entropy: chex.Array
  clipped: chex.Array


def clipped_surrogate(logprobs: chex.Array, old_logprobs: chex.Array, advantages: chex.Array,
                      clip_eps: float) -> tuple[chex.Array, chex.Array]:
  """pg = -min(ratio A, clip(ratio, 1 - eps, 1 + eps) A), per token.

  Args:
    logprobs: [N, L] log pi of the sampled tokens (differentiable).
    old_logprobs: [N, L] log pi_old.
    advantages: [N] per-row advantages.
    clip_eps: eps in [0, 1).

  Returns:
    (pg [N, L] float32, clipped [N, L] bool: the clipped branch is active).
  """
  chex.assert_rank([logprobs, old_logprobs, advantages], [2, 2, 1])
  chex.assert_equal_shape([logprobs, old_logprobs])
  chex.assert_equal_shape_prefix([logprobs, advantages], 1)
  adv = advantages[:, None]
  ratio = jnp.exp(logprobs - old_logprobs)
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
  return -jnp.minimum(unclipped, clipped), clipped < unclipped


def token_losses(logprobs: chex.Array, entropy: chex.Array, old_logprobs: chex.Array,
                 ref_logprobs: chex.Array, advantages: chex.Array, clip_eps: float,
                 kl_estimator: Callable[[chex.Array, chex.Array], chex.Array]) -> TokenLosses:
  """The per-token surrogate, KL estimate and entropy (unweighted, unmasked).

  Args:
    logprobs: [N, L] current log-probs.
    entropy: [N, L] current entropies.
    old_logprobs: [N, L] behaviour log-probs.
    ref_logprobs: [N, L] reference log-probs.
    advantages: [N].
    clip_eps: PPO clip.
    kl_estimator: `calibrate.KL_ESTIMATORS[name]`.

  Returns:
    TokenLosses.
  """
  chex.assert_equal_shape([logprobs, entropy, old_logprobs, ref_logprobs])
  policy, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, clip_eps)
  return TokenLosses(policy=policy, kl=kl_estimator(logprobs, ref_logprobs),
                     entropy=entropy, clipped=clipped)


def _token_mask(completion_mask, row_mask):
  chex.assert_rank([completion_mask, row_mask], [2, 1])
  return (completion_mask & row_mask[:, None]).astype(jnp.float32)


def token_mean_weights(completion_mask: chex.Array, row_mask: chex.Array, max_new_tokens: int,
                       axis_name: AxisName = None) -> chex.Array:
  """w_it = m_it / sum m; [N, L] float32 (all zero when there is no token)."""
  del max_new_tokens
  mask = _token_mask(completion_mask, row_mask)
  return mask / jnp.maximum(global_sum(mask, axis_name), 1.0)


def seq_mean_token_mean_weights(completion_mask: chex.Array, row_mask: chex.Array,
                                max_new_tokens: int, axis_name: AxisName = None) -> chex.Array:
  """w_it = m_it / (|y_i| R); [N, L] float32."""
  del max_new_tokens
  mask = _token_mask(completion_mask, row_mask)
  length = mask.sum(axis=1, keepdims=True)
  rows = global_sum((length > 0).astype(jnp.float32), axis_name)
  return mask / jnp.maximum(length, 1.0) / jnp.maximum(rows, 1.0)


def dr_grpo_weights(completion_mask: chex.Array, row_mask: chex.Array, max_new_tokens: int,
                    axis_name: AxisName = None) -> chex.Array:
  """w_it = m_it / (R T_max); [N, L] float32."""
  mask = _token_mask(completion_mask, row_mask)
  rows = global_sum((mask.sum(axis=1) > 0).astype(jnp.float32), axis_name)
  return mask / (jnp.maximum(rows, 1.0) * max_new_tokens)


LOSS_AGGREGATIONS: dict[str, Callable[..., chex.Array]] = {
    "token_mean": token_mean_weights,
    "seq_mean_token_mean": seq_mean_token_mean_weights,
    "dr_grpo": dr_grpo_weights,
}


def get_aggregation(name: str) -> Callable[..., chex.Array]:
  """The weight function registered as `name`; ValueError naming `rl.loss_aggregation`."""
  if name not in LOSS_AGGREGATIONS:
    raise ValueError(f"config.rl.loss_aggregation: unknown aggregation {name!r}; use one of "
                     f"{', '.join(LOSS_AGGREGATIONS)}")
  return LOSS_AGGREGATIONS[name]


def total_loss(parts: TokenLosses, weights: chex.Array, beta_rows: chex.Array,
               entropy_coef: float, axis_name: AxisName = None) -> chex.Array:
  """L = sum_it w_it (pg_it + beta_i KL_it - c_ent H_it), summed over all devices.

  Args:
    parts: TokenLosses, [N, L] fields.
    weights: [N, L] aggregation weights.
    beta_rows: [N] per-row KL coefficient (beta[task_ids]).
    entropy_coef: c_ent >= 0.
    axis_name: batch axes inside `shard_map`, or None.

  Returns:
    float32 scalar.
  """
  chex.assert_equal_shape([parts.policy, parts.kl, parts.entropy, weights])
  chex.assert_rank(beta_rows, 1)
  per_token = parts.policy + beta_rows[:, None] * parts.kl - entropy_coef * parts.entropy
  return global_sum(weights * per_token, axis_name)
