"""TrainState: parameters, optimizer state, step and rng as one plain pytree.

A NamedTuple of arrays crosses `jax.jit`, shards and checkpoints (orbax) as is.
`step` counts train-step calls (rollout batches), not optimizer updates: with
`rl.minibatches = m` one train step applies m optimizer updates. `rng` is a
raw uint32 key, split once per step (the synergy sketch draws from it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class TrainState(NamedTuple):
  """The policy's training state.

  Attributes:
    params: model parameters (a pytree).
    opt_state: optax state of `optimizer.init(params)`.
    step: int32 scalar, train steps taken.
    rng: [2] uint32 PRNG key.
  """

  params: Any
  opt_state: Any
  step: chex.Array
  rng: chex.Array


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The RL optimizer: global-norm clipping, then AdamW at a constant rate.

  Reads `rl.max_grad_norm`, `rl.learning_rate`, `rl.weight_decay`. A constant
  rate is the GRPO default for short RL runs (our choice; the paper does not
  give a schedule).
  """
  r = config.rl
  return optax.chain(optax.clip_by_global_norm(r.max_grad_norm),
                     optax.adamw(r.learning_rate, weight_decay=r.weight_decay))


def create(params: Any, optimizer: optax.GradientTransformation,
           rng: chex.PRNGKey) -> TrainState:
  """A TrainState at step 0 (pure; jit it with `state_sharding` to place it)."""
  return TrainState(params=params, opt_state=optimizer.init(params),
                    step=jnp.zeros((), jnp.int32), rng=jnp.asarray(rng))


def state_sharding(params_sharding: Any, optimizer: optax.GradientTransformation,
                   params_shape: Any, mesh: Mesh) -> TrainState:
  """Shardings of a TrainState whose params are sharded as `params_sharding`.

  Optimizer moments take their parameter's sharding; every other optimizer
  leaf (counts, scalars), the step and the rng are replicated.

  Args:
    params_sharding: pytree of NamedSharding, the structure of the params.
    optimizer: the optax transformation.
    params_shape: params or their `jax.ShapeDtypeStruct`s.
    mesh: the device mesh.

  Returns:
    A TrainState of NamedShardings.
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_shape = jax.eval_shape(optimizer.init, params_shape)
  opt_sharding = optax.tree_map_params(
      optimizer, lambda _, sharding: sharding, opt_shape, params_sharding,
      transform_non_params=lambda _: replicated)
  return TrainState(params=params_sharding, opt_state=opt_sharding, step=replicated,
                    rng=replicated)


def replicated_sharding(params_shape: Any, mesh: Mesh) -> Any:
  """Every parameter replicated on `mesh` (small models; tests)."""
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(lambda _: replicated, params_shape)


def create_sharded(params: Any, optimizer: optax.GradientTransformation, rng: chex.PRNGKey,
                   sharding: TrainState) -> TrainState:
  """`create`, placed on devices as `sharding` (params are resharded if needed)."""
  return jax.jit(lambda p, r: create(p, optimizer, r), out_shardings=sharding)(params, rng)
