"""The jitted ASTOR train step: gradients vs a direct reference, 8 devices == 1 device,
gradient accumulation, no recompilation for new coefficients, and a toy bandit in which the
schedule moves the batch from a solved task to a learnable one."""

import importlib.util
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from astor_jax import config as config_lib
from astor_jax.astor import advantages, calibrate, hparams, losses, schedule, synergy, utility
from astor_jax.model import (
  Transformer,
  get_preset,
  init_params,
  make_mesh,
  param_shardings,
  token_logprobs,
)
from astor_jax.train import state as state_lib
from astor_jax.train import step as step_lib
from astor_jax.train.batch import Batch, as_device_batch, check_batch

N, L, PROMPT, G = 32, 10, 4, 4
LR = 0.5


def load_config():
  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "astor.py"
  spec = importlib.util.spec_from_file_location("astor_default_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("smoke")
  c.sampler.max_new_tokens = L - PROMPT
  c.rl.entropy_coef = 0.01
  c.astor.synergy_interval = 2
  c.astor.init_beta = 0.05
  # The batch's (noisy) old log-probs are the behaviour policy, so that clipping
  # matters; test_current_old_logprobs_are_the_policys_own covers "current".
  c.rl.old_logprobs = "batch"
  return c


MODEL = Transformer(get_preset("tiny_world", vocab_size=32, hidden_size=16, intermediate_size=32,
                               num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8))


def host_batch(params):
  """28 real rows in 7 groups of 4 (tasks interleaved), 4 padding rows, ragged prompts/answers."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 32, (N, L)).astype(np.int32)
  input_mask = np.ones((N, L), bool)
  completion = np.zeros((N, L), bool)
  positions = np.zeros((N, L), np.int32)
  for i in range(N):
    pad = i % 2  # left padding of the prompt
    answer = 1 + i % (L - PROMPT)
    input_mask[i, :pad] = False
    input_mask[i, PROMPT + answer:] = False
    completion[i, PROMPT:PROMPT + answer] = True
    positions[i, pad:] = np.arange(L - pad)
  group = np.arange(N) // G
  real = group < 7
  rewards = rng.random(N).astype(np.float32)
  rewards[4:8] = 1.0  # a constant (zero-advantage) group
  logp, _ = jax.jit(token_logprobs, static_argnums=0)(MODEL, params, tokens, positions,
                                                      input_mask)
  logp = np.asarray(logp)
  noise = rng.normal(0, 0.3, (N, L)).astype(np.float32) * completion
  batch = Batch(
      tokens=tokens, positions=positions, input_mask=input_mask,
      completion_mask=completion & real[:, None], task_ids=(group % 4).astype(np.int32),
      group_ids=group.astype(np.int32), prompt_ids=(group // 4).astype(np.int32),
      rewards=rewards, old_logprobs=logp + noise, ref_logprobs=logp - noise / 3,
      sampler_logprobs=logp + noise + np.float32(0.01) * completion, row_mask=real)
  check_batch(batch, 4, 8)
  return batch


class Run:
  """A compiled train step on a mesh, fed from host copies (the step donates its inputs)."""

  def __init__(self, config, mesh, optimizer):
    self.mesh = mesh
    self.sharding = state_lib.state_sharding(param_shardings(MODEL, mesh), optimizer,
                                             PARAMS, mesh)
    self.fn = step_lib.make_train_step(MODEL, optimizer, config, mesh,
                                       state_sharding=self.sharding)
    self.optimizer = optimizer

  def __call__(self, train_state, utility_state, batch):
    ts = jax.device_put(train_state, self.sharding)
    us = step_lib.place_utility_state(utility_state, self.mesh)
    return jax.device_get(self.fn(ts, us, as_device_batch(batch, self.mesh)))

  def two_steps(self, train_state, utility_state, batch):
    first = self(train_state, utility_state, batch)
    second = self(first[0], first[1], batch)
    return first, second


PARAMS = init_params(MODEL, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def setup():
  config = load_config()
  hp = hparams.astor_hparams(config)
  optimizer = optax.sgd(LR)
  train_state = jax.device_get(state_lib.create(PARAMS, optimizer, jax.random.PRNGKey(1)))
  utility_state = jax.device_get(utility.init([3, 3, 3, 3], hp, utility.rng_key(2)))
  batch = host_batch(PARAMS)
  single = Run(config, make_mesh(devices=jax.devices()[:1]), optimizer)
  return dict(config=config, hp=hp, optimizer=optimizer, train_state=train_state,
              utility_state=utility_state, batch=batch, single=single,
              single_steps=single.two_steps(train_state, utility_state, batch))


@jax.jit
def reference_grads(params, batch, beta):
  """(loss, grads, per-task policy gradients [K, ...]) of the loss written directly."""
  loss, grads = jax.value_and_grad(reference_loss)(params, batch, beta)
  masks = jnp.stack([batch.task_ids == k for k in range(4)])
  task_grads = jax.vmap(lambda m: jax.grad(reference_loss)(params, batch, beta, m, True))(masks)
  return loss, grads, task_grads


def reference_loss(params, batch, beta, task_mask=None, policy_only=False):
  """The loss written directly (one device, no shard_map, no minibatches)."""
  adv = advantages.grpo_advantages(batch.rewards, batch.group_ids, batch.row_mask, N)
  logp, ent = token_logprobs(MODEL, params, batch.tokens, batch.positions, batch.input_mask)
  weights = losses.seq_mean_token_mean_weights(batch.completion_mask, batch.row_mask, L - PROMPT)
  pg, _ = losses.clipped_surrogate(logp, batch.old_logprobs, adv, 0.2)
  if policy_only:
    return jnp.sum(weights * pg * task_mask[:, None])
  kl = calibrate.kl_k3(logp, batch.ref_logprobs)
  return jnp.sum(weights * (pg + beta[batch.task_ids][:, None] * kl - 0.01 * ent))


def test_update_equals_the_direct_gradient_and_synergy_the_task_cosines(setup):
  batch, (first, second) = setup["batch"], setup["single_steps"]
  beta = jnp.asarray(setup["utility_state"].kl.beta)
  loss, grads, task_grads = reference_grads(PARAMS, batch, beta)
  expected = jax.tree.map(lambda p, g: p - LR * g, PARAMS, grads)
  for got, want in zip(jax.tree.leaves(first[0].params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  metrics = first[2]
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  assert metrics["clip_fraction"] > 0  # the noisy old log-probs make clipping matter
  assert int(first[0].step) == 1 and int(first[1].step) == 1

  flat = np.concatenate([np.asarray(x).reshape(4, -1) for x in jax.tree.leaves(task_grads)], 1)
  cos, _ = synergy.cosines(jnp.asarray(flat @ flat.T))
  np.testing.assert_allclose(first[1].synergy, cos, atol=1e-4)
  assert np.all(first[1].synergy_seen)
  # Step 1 is not a synergy step (interval 2): the smoothed cosines stay put.
  np.testing.assert_array_equal(second[1].synergy, first[1].synergy)
  np.testing.assert_array_equal(metrics["per_task/rows"], [8, 8, 8, 4])
  np.testing.assert_allclose(metrics["per_task/logprob_mismatch"], 0.01, rtol=1e-3)


def test_plain_grpo_one_task_no_entropy_bonus(setup, monkeypatch):
  """The peers' GRPO (one task, rl.entropy_coef = 0): the update is the direct gradient of
  the loss without entropy, the entropy is still reported, and the program traces no
  task-gradient (synergy) branch, so its first call is a steady one and leaves the synergy
  statistics untouched."""

  def no_task_gradients(*args, **kwargs):
    raise AssertionError("one task: the step must not trace per-task gradients")

  monkeypatch.setattr(synergy, "task_features", no_task_gradients)
  config = load_config()
  config.tasks = ("code_gen",)
  config.astor.curriculum_order = ("code_gen",)
  config.rl.entropy_coef = 0.0
  hp = hparams.astor_hparams(config)
  group = np.arange(N) // G
  batch = setup["batch"]._replace(task_ids=np.zeros(N, np.int32),
                                  prompt_ids=group.astype(np.int32))
  utility_state = jax.device_get(utility.init([8], hp, utility.rng_key(2)))
  run = Run(config, make_mesh(devices=jax.devices()[:1]), setup["optimizer"])
  train_state, new_utility, metrics = run(setup["train_state"], utility_state, batch)

  beta = jnp.asarray(utility_state.kl.beta)

  def loss_fn(params):
    adv = advantages.grpo_advantages(batch.rewards, batch.group_ids, batch.row_mask, N)
    logp, _ = token_logprobs(MODEL, params, batch.tokens, batch.positions, batch.input_mask)
    weights = losses.seq_mean_token_mean_weights(batch.completion_mask, batch.row_mask,
                                                 L - PROMPT)
    pg, _ = losses.clipped_surrogate(logp, batch.old_logprobs, adv, 0.2)
    kl = calibrate.kl_k3(logp, batch.ref_logprobs)
    return jnp.sum(weights * (pg + beta[batch.task_ids][:, None] * kl))

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(PARAMS)
  expected = jax.tree.map(lambda p, g: p - LR * g, PARAMS, grads)
  for got, want in zip(jax.tree.leaves(train_state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  assert float(metrics["entropy_bonus"]) == 0.0
  _, ent = token_logprobs(MODEL, PARAMS, batch.tokens, batch.positions, batch.input_mask)
  mask = batch.completion_mask & batch.row_mask[:, None]
  np.testing.assert_allclose(metrics["entropy"], np.asarray(ent)[mask].mean(), rtol=1e-5)
  np.testing.assert_array_equal(new_utility.synergy_seen, [[False]])
  np.testing.assert_array_equal(new_utility.synergy, [[0.0]])


def assert_trees_close(a, b, atol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                               rtol=1e-5, atol=atol)


def test_current_old_logprobs_are_the_policys_own(setup):
  """rl.old_logprobs "auto" with one minibatch: the step never reads the batch's old
  log-probs (NaN here) and equals the "batch" step fed the policy's exact log-probs."""
  config = load_config()
  config.rl.old_logprobs = "auto"
  assert hparams.rl_hparams(config).old_is_current
  batch = setup["batch"]
  logp, _ = jax.jit(token_logprobs, static_argnums=0)(MODEL, PARAMS, batch.tokens,
                                                      batch.positions, batch.input_mask)
  logp = np.asarray(logp)
  mesh = make_mesh(devices=jax.devices()[:1])
  current = Run(config, mesh, setup["optimizer"])(
      setup["train_state"], setup["utility_state"],
      batch._replace(old_logprobs=np.full_like(batch.old_logprobs, np.nan)))
  exact = Run(load_config(), mesh, setup["optimizer"])(
      setup["train_state"], setup["utility_state"], batch._replace(old_logprobs=logp))
  assert_trees_close(current[0].params, exact[0].params, atol=1e-6)
  for name in ("loss", "policy_loss", "kl_penalty", "kl", "grad_norm"):
    np.testing.assert_allclose(current[2][name], exact[2][name], rtol=1e-5, err_msg=name)
  assert float(current[2]["clip_fraction"]) == 0.0  # ratio exactly 1
  mask = batch.completion_mask & batch.row_mask[:, None]
  np.testing.assert_allclose(current[2]["logprob_mismatch"],
                             np.abs(batch.sampler_logprobs - logp)[mask].mean(), rtol=1e-4)
  # Several minibatches: the policy moves between them, so auto reads the batch.
  config.rl.minibatches = 2
  assert not hparams.rl_hparams(config).old_is_current
  config.rl.old_logprobs = "current"
  with pytest.raises(config_lib.ConfigError, match="rl.old_logprobs: 'current' needs"):
    config_lib.validate(config)
  with pytest.raises(ValueError, match="old_is_current needs one minibatch"):
    step_lib.make_train_step(MODEL, setup["optimizer"], config, mesh)


def test_eight_devices_with_accumulation_equal_one_device_in_one_pass(setup):
  """data=4 x fsdp=2 and rl.microbatches=2 (gradients summed over strided chunks) against
  one device computing the whole batch at once: two steps, one with synergy."""
  config = load_config()
  config.rl.microbatches = 2
  sharded = Run(config, make_mesh(data=4, fsdp=2), setup["optimizer"])
  steps = sharded.two_steps(setup["train_state"], setup["utility_state"], setup["batch"])
  for got, want in zip(steps, setup["single_steps"]):
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                 rtol=1e-5, atol=1e-5)


def test_new_coefficients_budgets_and_utilities_do_not_recompile(setup):
  single, hp = setup["single"], setup["hp"]
  us = setup["utility_state"]
  changed = us._replace(kl=us.kl._replace(beta=np.array([0.5, 0.0, 0.2, 1.0], np.float32)),
                        budget=np.array([7, 1, 0, 0], np.int32),
                        utility=np.array([3.0, -1.0, 0.5, 0.0], np.float32))
  ts = jax.device_put(setup["train_state"], single.sharding)
  us_device = step_lib.place_utility_state(changed, single.mesh)
  batch = as_device_batch(setup["batch"], single.mesh)
  compiles = []

  def listener(event, duration_s, **kwargs):
    del duration_s, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    _, _, metrics = jax.block_until_ready(single.fn(ts, us_device, batch))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles == []
  old_metrics = setup["single_steps"][0][2]
  assert float(metrics["kl_penalty"]) != float(old_metrics["kl_penalty"])
  np.testing.assert_allclose(metrics["per_task/beta"], [0.5, 0.0, 0.2, 1.0])
  del hp


def test_logprob_fn_is_token_aligned_and_sharded_like_the_batch(setup):
  mesh = make_mesh(data=8)
  fn = step_lib.make_logprob_fn(MODEL, setup["config"], mesh)
  batch = setup["batch"]
  out = fn(PARAMS, as_device_batch(batch, mesh))
  assert out.sharding.spec == step_lib.TOKENS
  want, _ = token_logprobs(MODEL, PARAMS, batch.tokens, batch.positions, batch.input_mask)
  np.testing.assert_allclose(out, want, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out)[:, 0], 0.0)


def test_logprob_fn_in_row_chunks_equals_one_pass(setup):
  """rl.minibatches=2 x rl.microbatches=2: each of 8 devices runs its 4 rows one at a time."""
  config = load_config()
  config.rl.minibatches, config.rl.microbatches = 2, 2
  mesh = make_mesh(data=4, fsdp=2)
  assert step_lib.row_multiple(config, mesh) == 32 == N
  batch = setup["batch"]
  chunked = step_lib.make_logprob_fn(MODEL, config, mesh)(PARAMS, as_device_batch(batch, mesh))
  assert chunked.sharding.spec == step_lib.TOKENS
  one_pass = step_lib.make_logprob_fn(MODEL, setup["config"], mesh)(
      PARAMS, as_device_batch(batch, mesh))
  np.testing.assert_allclose(chunked, one_pass, rtol=1e-6, atol=1e-6)
  config.rl.microbatches = 4
  with pytest.raises(ValueError, match="multiple of 64 rows"):
    step_lib.make_logprob_fn(MODEL, config, mesh).lower(PARAMS, as_device_batch(batch, mesh))


def test_fsdp_step_never_holds_the_task_gradients_whole(setup):
  """fsdp=8, exact synergy, 2 microbatches: the compiled step's largest array is one layer's
  partial gradient (the [4096, 64] embedding before its reduce-scatter), never K = 4 stacked
  whole gradients nor their [K, params] flattening."""
  model = Transformer(get_preset("tiny_world", vocab_size=4096, hidden_size=64,
                                 intermediate_size=128, num_layers=1, num_heads=2,
                                 num_kv_heads=1, head_dim=32))
  config = load_config()
  config.rl.microbatches = 2
  mesh = make_mesh(data=1, fsdp=8)
  params = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))
  sharding = state_lib.state_sharding(param_shardings(model, mesh), setup["optimizer"], params,
                                      mesh)
  train_state = jax.eval_shape(
      lambda p: state_lib.create(p, setup["optimizer"], jax.random.PRNGKey(1)), params)
  fn = step_lib.make_train_step(model, setup["optimizer"], config, mesh, state_sharding=sharding)
  with jax.set_mesh(mesh):
    hlo = fn.lower(train_state, step_lib.place_utility_state(setup["utility_state"], mesh),
                   as_device_batch(setup["batch"], mesh)).compile().as_text()
  largest = max(math.prod(int(d) for d in dims.split(","))
                for dims in re.findall(r"\b(?:f32|bf16|s32|u32)\[([\d,]+)\]", hlo))
  assert largest == 4096 * 64


def test_batch_that_does_not_split_is_rejected_with_the_fields_named(setup):
  config = load_config()
  config.rl.minibatches = 3
  with pytest.raises(ValueError, match="rl.minibatches=3"):
    fn = step_lib.make_train_step(MODEL, setup["optimizer"], config,
                                  make_mesh(devices=jax.devices()[:1]))
    fn.lower(setup["train_state"], setup["utility_state"], setup["batch"])


# ------------------------------------------------------------------ toy bandit

ACTIONS, BANDIT_G, BANDIT_P = 4, 8, 8


def bandit_logprobs(params, tokens, positions, input_mask):
  """Row = (task token, action); the policy is a softmax over actions per task."""
  del positions, input_mask
  log_policy = jax.nn.log_softmax(params["logits"][tokens[:, 0]])
  chosen = jnp.take_along_axis(log_policy, tokens[:, 1:2], axis=1)[:, 0]
  entropy = -jnp.sum(jnp.exp(log_policy) * log_policy, axis=1)
  zero = jnp.zeros_like(chosen)
  return jnp.stack([zero, chosen], 1), jnp.stack([zero, entropy], 1)


def test_toy_bandit_moves_budget_from_the_solved_task_to_the_learnable_one():
  config = load_config()
  config.tasks = ("code_io", "code_gen")
  config.rl.batch_prompts, config.rl.group_size = BANDIT_P, BANDIT_G
  config.sampler.max_new_tokens = 1
  config.astor.synergy_weight = 0.0
  config.astor.synergy_sketch_dim = 64  # the sketched synergy path of the step
  hp = hparams.astor_hparams(config)
  mesh = make_mesh(devices=jax.devices()[:1])
  optimizer = optax.sgd(2.0)
  # Task 0 is solved (action 0 almost surely); task 1 is uniform and rewards action 3.
  params = {"logits": jnp.array([[12.0, 0, 0, 0], [0.0, 0, 0, 0]])}
  correct = np.array([0, 3])
  train_state = state_lib.create(params, optimizer, jax.random.PRNGKey(0))
  utility_state = step_lib.place_utility_state(utility.init([4, 4], hp, utility.rng_key(0)),
                                               mesh)
  plan_fn = schedule.make_schedule_fn(hp)
  step_fn = step_lib.make_train_step(None, optimizer, config, mesh,
                                     logprob_fn=bandit_logprobs)
  rng = np.random.default_rng(0)
  budgets, rewards_1 = [], []
  for _ in range(4):
    utility_state, plan = plan_fn(utility_state)
    task_ids = np.repeat(np.asarray(plan.task_ids), BANDIT_G)
    logits = np.asarray(train_state.params["logits"], np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))[task_ids]
    actions = np.array([rng.choice(ACTIONS, p=p / p.sum()) for p in probs], np.int32)
    rewards = (actions == correct[task_ids]).astype(np.float32)
    budgets.append(np.asarray(plan.budget))
    rewards_1.append(rewards[task_ids == 1].mean())
    n = BANDIT_P * BANDIT_G
    tokens = np.stack([task_ids, actions], 1).astype(np.int32)
    logp, _ = jax.jit(bandit_logprobs)(train_state.params, tokens, None, None)
    batch = Batch(
        tokens=tokens, positions=np.tile(np.arange(2, dtype=np.int32), (n, 1)),
        input_mask=np.ones((n, 2), bool), completion_mask=np.array([[False, True]] * n),
        task_ids=task_ids.astype(np.int32),
        group_ids=(np.arange(n) // BANDIT_G).astype(np.int32),
        prompt_ids=np.repeat(np.asarray(plan.prompt_ids), BANDIT_G).astype(np.int32),
        rewards=rewards, old_logprobs=np.asarray(logp), ref_logprobs=np.asarray(logp),
        sampler_logprobs=np.asarray(logp), row_mask=np.ones(n, bool))
    train_state, utility_state, _ = step_fn(train_state, utility_state,
                                            as_device_batch(batch, mesh))
  np.testing.assert_array_equal(budgets[0], [4, 4])  # no information yet: uniform
  for budget in budgets[1:]:
    assert budget[1] >= 6, budgets  # the learnable task takes most of the batch
  assert float(utility_state.potential[0]) == 0.0  # solved: no reward variance
  # The solved task has no policy gradient, so its cosines are never observed.
  np.testing.assert_array_equal(utility_state.synergy_seen, [[False, False], [False, True]])
  np.testing.assert_allclose(utility_state.synergy[1, 1], 1.0, rtol=1e-5)
  assert rewards_1[-1] > rewards_1[0]  # and the learnable task is being learned


def test_check_batch_names_the_bad_field(setup):
  batch = setup["batch"]
  check_batch(batch, 4, 8)
  bad = {
      "Batch.rewards: dtype": batch._replace(rewards=batch.rewards.astype(np.float64)),
      "Batch.task_ids: values": batch._replace(task_ids=batch.task_ids + 1),
      "Batch.group_ids: values": batch._replace(group_ids=batch.group_ids + N),
      "Batch.completion_mask: column 0": batch._replace(
          completion_mask=batch.completion_mask | (np.arange(L) == 0)[None, :]
          & batch.input_mask),
      "Batch.completion_mask: marks pad": batch._replace(
          completion_mask=batch.completion_mask | ~batch.input_mask),
      "Batch.positions: shape": batch._replace(positions=batch.positions[:, 1:]),
  }
  for message, b in bad.items():
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
      check_batch(b, 4, 8)
  with pytest.raises(ValueError, match="multiple of the 64 devices"):
    check_batch(batch, 4, 64)
