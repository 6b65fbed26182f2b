"""Clipped surrogate and loss aggregation against numpy and torch; sharded sums equal one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from astor_jax.astor import calibrate, losses


def rows(seed=0, n=8, length=6):
  rng = np.random.default_rng(seed)
  logp = np.log(rng.uniform(0.05, 1.0, (n, length))).astype(np.float32)
  old = (logp + rng.normal(0, 0.3, (n, length))).astype(np.float32)
  ref = (logp + rng.normal(0, 0.1, (n, length))).astype(np.float32)
  adv = rng.normal(size=n).astype(np.float32)
  completion = np.zeros((n, length), bool)
  for i, start in enumerate(rng.integers(1, length, n)):
    completion[i, start:start + 1 + i % 3] = True
  completion[2] = False  # a row without completion tokens
  row_mask = np.ones(n, bool)
  row_mask[-1] = False
  return logp, old, ref, adv, completion, row_mask


def test_clipped_surrogate_matches_torch_value_and_gradient():
  logp, old, _, adv, _, _ = rows()
  pg, clipped = jax.jit(losses.clipped_surrogate, static_argnums=3)(logp, old, adv, 0.2)
  lp = torch.tensor(logp, requires_grad=True)
  ratio = torch.exp(lp - torch.tensor(old))
  a = torch.tensor(adv)[:, None]
  ref_pg = -torch.minimum(ratio * a, torch.clamp(ratio, 0.8, 1.2) * a)
  np.testing.assert_allclose(pg, ref_pg.detach().numpy(), rtol=1e-5, atol=1e-6)
  r = ratio.detach().numpy()
  a_np = adv[:, None]
  np.testing.assert_array_equal(clipped, ((r > 1.2) & (a_np > 0)) | ((r < 0.8) & (a_np < 0)))
  ref_pg.sum().backward()
  grad = jax.grad(lambda x: losses.clipped_surrogate(x, old, adv, 0.2)[0].sum())(logp)
  np.testing.assert_allclose(grad, lp.grad.numpy(), rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(grad)[np.asarray(clipped)] == 0.0)  # clipped tokens carry no gradient


def numpy_weights(name, completion, row_mask, max_new_tokens):
  m = (completion & row_mask[:, None]).astype(np.float64)
  length = m.sum(1, keepdims=True)
  rows_with_tokens = (length > 0).sum()
  if name == "token_mean":
    return m / m.sum()
  if name == "seq_mean_token_mean":
    return m / np.maximum(length, 1) / rows_with_tokens
  return m / (rows_with_tokens * max_new_tokens)


@pytest.mark.parametrize("name", tuple(losses.LOSS_AGGREGATIONS))
def test_aggregation_weights_match_numpy_and_shard(name):
  _, _, _, _, completion, row_mask = rows()
  fn = losses.get_aggregation(name)
  w = np.asarray(fn(completion, row_mask, 10))
  np.testing.assert_allclose(w, numpy_weights(name, completion, row_mask, 10), rtol=1e-6)
  assert np.all(w[~completion] == 0) and np.all(w[~row_mask] == 0)
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))
  axes = ("data", "fsdp")
  sharded = jax.jit(jax.shard_map(lambda c, r: fn(c, r, 10, axes), mesh=mesh,
                                  in_specs=(P(axes, None), P(axes)), out_specs=P(axes, None)))
  np.testing.assert_allclose(sharded(completion, row_mask), w, rtol=1e-6)


def test_total_loss_uses_per_row_beta_and_entropy_bonus():
  logp, old, ref, adv, completion, row_mask = rows()
  ent = np.abs(np.random.default_rng(1).normal(size=logp.shape)).astype(np.float32)
  task_ids = np.arange(8) % 2
  beta = np.array([0.1, 0.5], np.float32)
  parts = losses.token_losses(logp, ent, old, ref, adv, 0.2, calibrate.kl_k3)
  w = losses.token_mean_weights(completion, row_mask, 0)
  total = jax.jit(losses.total_loss, static_argnums=3)(parts, w, beta[task_ids], 0.01)
  rho = ref - logp
  kl = np.exp(rho) - 1 - rho
  per_token = np.asarray(parts.policy) + beta[task_ids][:, None] * kl - 0.01 * ent
  np.testing.assert_allclose(float(total), np.sum(np.asarray(w) * per_token), rtol=1e-5)
  # Raising one task's beta changes only that task's share of the loss.
  raised = losses.total_loss(parts, w, np.array([0.1, 0.9], np.float32)[task_ids], 0.01)
  task1 = (task_ids == 1)[:, None]
  np.testing.assert_allclose(float(raised - total), np.sum(np.asarray(w) * 0.4 * kl * task1),
                             rtol=1e-4)


def test_unknown_aggregation_names_the_config_field():
  with pytest.raises(ValueError, match="rl.loss_aggregation"):
    losses.get_aggregation("sum")
  assert float(jnp.sum(losses.token_mean_weights(np.zeros((2, 3), bool), np.ones(2, bool),
                                                 0))) == 0.0
