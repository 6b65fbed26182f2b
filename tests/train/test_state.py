"""TrainState: creation, optimizer-state shardings from the params, plain-pytree round trip."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from astor_jax.train import state as state_lib


def rl_config():
  c = ml_collections.ConfigDict()
  c.rl = ml_collections.ConfigDict(dict(max_grad_norm=1.0, learning_rate=0.1, weight_decay=0.0))
  return c


PARAMS = {"w": jnp.arange(32.0).reshape(8, 4), "b": jnp.ones((4,))}


def test_create_and_optimizer_clip_then_adam():
  optimizer = state_lib.make_optimizer(rl_config())
  ts = state_lib.create(PARAMS, optimizer, jax.random.PRNGKey(0))
  assert int(ts.step) == 0 and ts.step.dtype == jnp.int32
  assert ts.rng.shape == (2,) and ts.rng.dtype == jnp.uint32
  grads = jax.tree.map(lambda p: jnp.full_like(p, 100.0), PARAMS)
  updates, _ = optimizer.update(grads, ts.opt_state, PARAMS)
  # Adam's first step moves every coordinate by about the learning rate, whatever the scale.
  for u in jax.tree.leaves(updates):
    np.testing.assert_allclose(u, -0.1, rtol=1e-3)


def test_state_sharding_follows_param_sharding_and_places_the_state():
  mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 4, 1), ("data", "fsdp", "tensor"))
  params_sharding = {"w": NamedSharding(mesh, P("fsdp", None)), "b": NamedSharding(mesh, P())}
  optimizer = state_lib.make_optimizer(rl_config())
  sharding = state_lib.state_sharding(params_sharding, optimizer, PARAMS, mesh)
  ts = state_lib.create_sharded(PARAMS, optimizer, jax.random.PRNGKey(0), sharding)
  assert ts.params["w"].sharding.spec == P("fsdp", None)
  adam = ts.opt_state[1][0]
  assert adam.mu["w"].sharding.spec == P("fsdp", None)
  assert adam.nu["w"].sharding.spec == P("fsdp", None)
  assert adam.count.sharding.spec == P()
  assert ts.step.sharding.spec == P() and ts.rng.sharding.spec == P()
  np.testing.assert_array_equal(ts.params["w"], PARAMS["w"])
  replicated = state_lib.replicated_sharding(PARAMS, mesh)
  assert all(s.spec == P() for s in jax.tree.leaves(replicated,
                                                    is_leaf=lambda x: isinstance(x, NamedSharding)))


def test_round_trips_as_a_plain_pytree_of_arrays():
  optimizer = state_lib.make_optimizer(rl_config())
  ts = state_lib.create(PARAMS, optimizer, jax.random.PRNGKey(1))
  leaves, treedef = jax.tree.flatten(ts)
  host = [np.asarray(x) for x in leaves]  # what a checkpointer writes
  assert all(isinstance(x, np.ndarray) and x.dtype != object for x in host)
  restored = jax.tree.unflatten(treedef, host)
  assert isinstance(restored, state_lib.TrainState)
  for a, b in zip(jax.tree.leaves(restored), leaves):
    np.testing.assert_array_equal(a, b)
