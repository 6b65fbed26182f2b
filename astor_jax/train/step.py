"""The jitted ASTOR train step and the log-prob function the loop uses.

  train_step(train_state, utility_state, batch)
      -> (train_state, utility_state, metrics)

One function, compiled once per batch shape, over `Mesh(("data", "fsdp",
"tensor"))` with explicit in/out shardings and donated states. It:

  1. computes grouped advantages and the step's reward statistics (per task,
     per prompt) inside `shard_map` over the batch axes: each device sums its
     rows per group / task / prompt and a `psum` adds the partial sums, so 8
     devices give the single-device result;
  2. splits the rows into `rl.minibatches` strided minibatches (row i goes to
     minibatch i mod m: the same split on any number of devices, and no rows
     move) and, for each, runs the model forward once (`jax.vjp`; with one
     minibatch and `rl.old_logprobs` "auto" / "current" the ratio's
     behaviour log-probs are these log-probs under a stop-gradient, so the
     batch's `old_logprobs` are not read and the loop computes none),
     differentiates the aggregated loss with per-row beta[task_id] with
     respect to the log-probs, pulls that back through the model, and applies
     one optimizer update; with `rl.microbatches = u` each minibatch is
     processed in u strided chunks whose gradients are summed (in float32)
     before the update, which equals the whole-minibatch update because the
     loss weights are normalized over the whole minibatch; gradients and
     their accumulators are constrained to the parameters' shardings, so no
     device holds a whole gradient beyond one layer's partial sums;
  3. every `astor.synergy_interval` steps (at the first minibatch, i.e. at the
     parameters that generated the rollouts) pulls K task-masked policy
     cotangents back through the same forward pass to get the per-task
     gradients' Gram matrix (summing the gradients', or their sketches',
     contributions over microbatches; the K gradients stay sharded like the
     parameters and the Gram is a sum of per-leaf contractions, see
     `astor.synergy`); `lax.cond` skips this work on other steps, and with
     one task (no cross-task cosine to measure) the program has no synergy
     branch at all;
  4. folds the statistics into the UtilityState (utility, priorities, per-task
     KL calibration) and returns per-task metrics.

Per-task coefficients, budgets and utilities are arrays in the UtilityState,
so new values never recompile. A batch's row count must be a multiple of
`row_multiple(config, mesh)` (the loop pads with masked rows); the log-prob
pass (`make_logprob_fn`) goes through the rows in the same strided parts.

Metrics (all replicated; [K] arrays in `config.tasks` order):
  loss, policy_loss, kl_penalty, entropy_bonus (weighted terms of the loss,
  averaged over minibatches), grad_norm (before clipping, averaged), and
  reward, kl, clip_fraction, entropy, logprob_mismatch (over all tasks), and
  per_task/{reward, advantage_std, kl, clip_fraction, entropy,
  logprob_mismatch, rows, tokens, beta (used in this step), next_beta,
  target_kl, budget (of this step), utility, potential, progress, synergy
  (after this step's update)}; `kl` is the mean per-token k3 estimate
  against the reference, `logprob_mismatch` the mean |log p_sampler - log
  p_trainer(old)| over completion tokens (the trainer's log-probs at the
  rollout's parameters).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from astor_jax.astor import advantages as advantages_lib
from astor_jax.astor import calibrate, losses, synergy, utility
from astor_jax.astor.hparams import AstorHParams, RLHParams, astor_hparams, rl_hparams
from astor_jax.astor.segments import segment_sum
from astor_jax.model import token_logprobs
from astor_jax.train.batch import BATCH_AXES, Batch, batch_sharding
from astor_jax.train.state import TrainState

# (params, tokens [B,T], positions [B,T], input_mask [B,T]) -> (logprobs [B,T], entropy [B,T])
LogprobFn = Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]

ROWS = P(BATCH_AXES)
TOKENS = P(BATCH_AXES, None)
REPLICATED = P()

PER_TASK_SUMS = ("tokens", "kl", "clipped", "entropy", "mismatch")


def model_logprob_fn(model: Any, chunk_size: int = 0) -> LogprobFn:
  """The model's token-aligned log-probs and entropies as a `LogprobFn`."""

  def fn(params, tokens, positions, input_mask):
    return token_logprobs(model, params, tokens, positions, input_mask, chunk_size=chunk_size)

  return fn


def _traced_in_mesh(fn: Callable, mesh: Mesh) -> Callable:
  """`fn`, traced under `mesh` so the model's activation sharding constraints apply."""
  @functools.wraps(fn)
  def wrapped(*args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args)

  return wrapped


def _batch_axis_size(mesh: Mesh) -> int:
  return int(mesh.shape["data"] * mesh.shape["fsdp"])


def _row_statistics(rewards, group_ids, task_ids, prompt_ids, row_mask, *, estimator,
                    num_groups, num_tasks, max_prompts):
  """Per-device body: advantages [n] and replicated reward/advantage statistics."""
  adv = estimator(rewards, group_ids, row_mask, num_groups, BATCH_AXES)
  rewards_stats = utility.reward_statistics(rewards, group_ids, task_ids, prompt_ids, row_mask,
                                            num_groups, num_tasks, max_prompts, BATCH_AXES)
  weight = row_mask.astype(jnp.float32)
  adv_sum = segment_sum(adv * weight, task_ids, num_tasks, BATCH_AXES)
  adv_sq = segment_sum(adv**2 * weight, task_ids, num_tasks, BATCH_AXES)
  return adv, rewards_stats, (adv_sum, adv_sq)


def _per_task_sums(kl, clipped, entropy, mismatch, completion_mask, row_mask, task_ids, *,
                   num_tasks):
  """Per-device body: per-task sums over completion tokens (replicated [K] arrays)."""
  mask = (completion_mask & row_mask[:, None]).astype(jnp.float32)

  def by_task(x):
    return segment_sum((x * mask).sum(axis=1), task_ids, num_tasks, BATCH_AXES)

  return {"tokens": by_task(jnp.ones_like(mask)), "kl": by_task(kl),
          "clipped": by_task(clipped.astype(jnp.float32)), "entropy": by_task(entropy),
          "mismatch": by_task(mismatch)}


def _split_rows(x: jax.Array, parts: int, mesh: Mesh) -> jax.Array:
  """[n, ...] -> [parts, n / parts, ...]: part j holds rows j, j + parts, j + 2 parts, ...

  The split does not depend on the number of devices (so 8 devices compute
  the same minibatches as one), and when every device's block of rows is a
  multiple of `parts` each part takes an equal share of every block: no rows
  move between devices.
  """
  n = x.shape[0]
  y = x.reshape((n // parts, parts) + x.shape[1:]).swapaxes(0, 1)
  spec = P(None, BATCH_AXES, *([None] * (x.ndim - 1)))
  return lax.with_sharding_constraint(y, NamedSharding(mesh, spec))


def _join_rows(y: jax.Array, mesh: Mesh) -> jax.Array:
  """Inverse of `_split_rows`: [parts, n / parts, ...] -> [n, ...] in the original row order."""
  x = y.swapaxes(0, 1).reshape((-1,) + y.shape[2:])
  spec = P(BATCH_AXES, *([None] * (x.ndim - 1)))
  return lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _stacked_sharding(sharding: Any) -> Any:
  """The sharding of a [K, ...] stack of arrays sharded as `sharding` (K replicated)."""
  return jax.tree.map(lambda s: NamedSharding(s.mesh, P(None, *s.spec)), sharding,
                      is_leaf=lambda s: isinstance(s, NamedSharding))


def _constrainer(sharding: Any | None) -> Callable[[Any], Any]:
  """x -> x constrained to `sharding` (a pytree of shardings or one for all leaves)."""
  if sharding is None:
    return lambda x: x
  return lambda x: lax.with_sharding_constraint(x, sharding)


def _zero_features(params: Any, num_tasks: int, sketch_dim: int) -> Any:
  """Zeros shaped like `synergy.task_features` output: [K, d] sketches or K gradients."""
  if sketch_dim > 0:
    return jnp.zeros((num_tasks, sketch_dim), jnp.float32)
  return jax.tree.map(lambda p: jnp.zeros((num_tasks,) + p.shape, p.dtype), params)


def row_multiple(config: ml_collections.ConfigDict, mesh: Mesh) -> int:
  """Rows a batch must be padded to a multiple of, for the train step and the log-prob pass.

  Both split every device's rows into `rl.minibatches x rl.microbatches` equal
  strided parts (no rows move between devices), so the row count must be a
  multiple of (devices on the batch axes) x minibatches x microbatches.

  Args:
    config: the job config (`rl.minibatches`, `rl.microbatches`).
    mesh: the device mesh.

  Returns:
    The multiple.
  """
  return _batch_axis_size(mesh) * _row_parts(config)


def _row_parts(config: ml_collections.ConfigDict) -> int:
  """Strided row parts of one pass over a batch: minibatches x microbatches."""
  return int(config.rl.minibatches) * int(config.rl.get("microbatches", 1))


def _scan_or_call(body: Callable, init: Any, xs: Any, length: int):
  """`lax.scan(body, init, xs)`; a single part is called directly (no loop in the program)."""
  if length == 1:
    carry, out = body(init, jax.tree.map(lambda x: x[0], xs))
    return carry, jax.tree.map(lambda x: x[None], out)
  return lax.scan(body, init, xs)


def build_train_step(logprob_fn: LogprobFn, optimizer: optax.GradientTransformation,
                     astor_hp: AstorHParams, rl_hp: RLHParams, mesh: Mesh,
                     params_sharding: Any | None = None) -> Callable:
  """The un-jitted step `(train_state, utility_state, batch) -> (...)` (see module doc).

  Args:
    logprob_fn: token-aligned log-probs and entropies of the policy.
    optimizer: optax transformation for the policy parameters.
    astor_hp: utility / schedule / calibration hyperparameters.
    rl_hp: loss hyperparameters.
    mesh: device mesh with axes ("data", "fsdp", "tensor").
    params_sharding: shardings of the params (a pytree of them), kept inside
      the minibatch loop; None leaves the layout to the compiler.

  Returns:
    The step function, to be jitted (`make_train_step` does that).
  """
  if rl_hp.old_is_current and rl_hp.minibatches != 1:
    raise ValueError(f"rl_hp.old_is_current needs one minibatch (got {rl_hp.minibatches}): "
                     "later minibatches run after the policy moved")
  num_tasks = astor_hp.num_tasks
  estimator = advantages_lib.get_estimator(rl_hp.advantage)
  aggregation = losses.get_aggregation(rl_hp.loss_aggregation)
  kl_estimator = calibrate.get_kl_estimator(rl_hp.kl_estimator)
  num_devices = _batch_axis_size(mesh)
  # One task has no cross-task cosine to measure: the step then carries no
  # synergy branch at all (smaller program, and its first call is a steady one).
  with_synergy_branch = num_tasks > 1
  entropy_in_loss = rl_hp.entropy_coef != 0.0
  num_minibatches, num_microbatches = rl_hp.minibatches, rl_hp.microbatches
  shard_map = functools.partial(jax.shard_map, mesh=mesh)
  split = functools.partial(_split_rows, mesh=mesh)
  # Gradients, their accumulators and per-task gradients stay sharded like the
  # parameters (without this XLA may keep whole gradients on every device).
  like_params = _constrainer(params_sharding)
  like_stacked_params = _constrainer(
      None if params_sharding is None else _stacked_sharding(params_sharding))

  weights_fn = shard_map(
      functools.partial(aggregation, max_new_tokens=rl_hp.max_new_tokens, axis_name=BATCH_AXES),
      in_specs=(TOKENS, ROWS), out_specs=TOKENS)
  loss_sum_fn = shard_map(
      lambda x: losses.global_sum(x, BATCH_AXES), in_specs=TOKENS, out_specs=REPLICATED)
  task_sums_fn = shard_map(
      functools.partial(_per_task_sums, num_tasks=num_tasks),
      in_specs=(TOKENS,) * 5 + (ROWS, ROWS), out_specs=REPLICATED)

  def microbatch_grads(params, mb, weights, sketch_key):
    """Loss terms, gradients, per-task sums and (if asked) synergy features of one chunk."""
    def policy(p):
      return logprob_fn(p, mb["tokens"], mb["positions"], mb["input_mask"])

    if entropy_in_loss:
      (logp, ent), pullback = jax.vjp(policy, params)
    else:
      # Without an entropy bonus the entropy is only a metric: an auxiliary
      # output of the forward pass, so the backward pass does not pull it back.
      logp, pull_logp, ent = jax.vjp(policy, params, has_aux=True)

      def pullback(cotangents):
        return pull_logp(cotangents[0])

    # One minibatch: the policy has not moved since the rollout, so its own
    # log-probs (no gradient) are the behaviour log-probs (`rl.old_logprobs`).
    old = lax.stop_gradient(logp) if rl_hp.old_is_current else mb["old"]

    def objective(logp, ent):
      parts = losses.token_losses(logp, ent, old, mb["ref"], mb["adv"], rl_hp.clip_eps,
                                  kl_estimator)
      policy = loss_sum_fn(weights * parts.policy)
      kl_penalty = loss_sum_fn(weights * mb["beta"][:, None] * parts.kl)
      entropy_bonus = rl_hp.entropy_coef * loss_sum_fn(weights * parts.entropy)
      terms = dict(loss=policy + kl_penalty - entropy_bonus, policy_loss=policy,
                   kl_penalty=kl_penalty, entropy_bonus=entropy_bonus)
      return terms["loss"], (terms, parts.clipped)

    (_, (terms, clipped)), (d_logp, d_ent) = jax.value_and_grad(
        objective, argnums=(0, 1), has_aux=True)(logp, ent)
    (grads,) = pullback((d_logp, d_ent))
    grads = like_params(grads)

    def features():
      d_policy = jax.grad(lambda lp: loss_sum_fn(weights * losses.clipped_surrogate(
          lp, old, mb["adv"], rl_hp.clip_eps)[0]))(logp)
      no_entropy = jnp.zeros_like(ent)

      def task_grad(k):
        rows = (mb["task_ids"] == k).astype(d_policy.dtype)[:, None]
        return like_params(pullback((d_policy * rows, no_entropy))[0])

      out = synergy.task_features(task_grad, num_tasks, astor_hp.synergy_sketch_dim, sketch_key)
      return out if astor_hp.synergy_sketch_dim > 0 else like_stacked_params(out)

    sums = task_sums_fn(calibrate.kl_k3(lax.stop_gradient(logp), mb["ref"]), clipped,
                        lax.stop_gradient(ent), jnp.abs(mb["sampler"] - old),
                        mb["completion_mask"], mb["row_mask"], mb["task_ids"])
    return terms, grads, sums, features

  def step(train_state: TrainState, utility_state: utility.UtilityState, batch: Batch):
    num_rows, _ = batch.tokens.shape
    _check_rows(num_rows, num_devices, num_minibatches, num_microbatches)
    max_prompts = utility_state.prompts.valid.shape[1]
    row_stats_fn = shard_map(
        functools.partial(_row_statistics, estimator=estimator, num_groups=num_rows,
                          num_tasks=num_tasks, max_prompts=max_prompts),
        in_specs=(ROWS,) * 5, out_specs=(ROWS, REPLICATED, REPLICATED))
    adv, reward_stats, (adv_sum, adv_sq) = row_stats_fn(
        batch.rewards, batch.group_ids, batch.task_ids, batch.prompt_ids, batch.row_mask)

    rng, sketch_key = jax.random.split(train_state.rng)
    synergy_now = (utility_state.step % astor_hp.synergy_interval == 0
                   if with_synergy_branch else jnp.asarray(False))
    rows = dict(
        tokens=batch.tokens, positions=batch.positions, input_mask=batch.input_mask,
        completion_mask=batch.completion_mask, task_ids=batch.task_ids,
        row_mask=batch.row_mask, old=batch.old_logprobs, ref=batch.ref_logprobs,
        sampler=batch.sampler_logprobs, adv=adv, beta=utility_state.kl.beta[batch.task_ids])
    minibatches = jax.tree.map(lambda x: split(x, parts=num_minibatches), rows)

    def minibatch_update(carry, xs):
      params, opt_state = carry
      if params_sharding is not None:
        params = lax.with_sharding_constraint(params, params_sharding)
      mb, index = xs
      with_synergy = synergy_now & (index == 0)
      weights = weights_fn(mb["completion_mask"], mb["row_mask"])
      if num_microbatches == 1:
        terms, grads, sums, features = microbatch_grads(params, mb, weights, sketch_key)
        no_gram = jnp.zeros((num_tasks, num_tasks), jnp.float32)
        grad_gram = (lax.cond(with_synergy, lambda: synergy.features_gram(features()),
                              lambda: no_gram) if with_synergy_branch else no_gram)
      else:
        chunks = jax.tree.map(lambda x: split(x, parts=num_microbatches),
                              dict(mb, weights=weights))
        # Accumulate in float32 whatever the parameter dtype.
        init = (like_params(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)),
                _zero_features(params, num_tasks, astor_hp.synergy_sketch_dim)
                if with_synergy_branch else ())
        if astor_hp.synergy_sketch_dim == 0 and with_synergy_branch:
          init = (init[0], like_stacked_params(init[1]))

        def accumulate(acc, chunk):
          grads_acc, features_acc = acc
          terms, grads, sums, features = microbatch_grads(params, chunk, chunk["weights"],
                                                          sketch_key)
          if with_synergy_branch:
            features_acc = lax.cond(
                with_synergy, lambda f: jax.tree.map(jnp.add, f, features()), lambda f: f,
                features_acc)
          grads_acc = like_params(
              jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads))
          return (grads_acc, features_acc), (terms, sums)

        (grads, features_sum), (terms, sums) = lax.scan(accumulate, init, chunks)
        terms = jax.tree.map(lambda x: x.sum(axis=0), terms)
        sums = jax.tree.map(lambda x: x.sum(axis=0), sums)
        grad_gram = (synergy.features_gram(features_sum) if with_synergy_branch
                     else jnp.zeros((num_tasks, num_tasks), jnp.float32))
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      out = dict(terms, grad_norm=optax.global_norm(grads), grad_gram=grad_gram,
                 **{"sum_" + k: v for k, v in sums.items()})
      return (params, opt_state), out

    (params, opt_state), per_mb = _scan_or_call(
        minibatch_update, (train_state.params, train_state.opt_state),
        (minibatches, jnp.arange(num_minibatches, dtype=jnp.int32)), num_minibatches)
    sums = {k: per_mb["sum_" + k].sum(axis=0) for k in PER_TASK_SUMS}

    stats = utility.BatchStats(rewards=reward_stats, kl_sum=sums["kl"], kl_tokens=sums["tokens"],
                               grad_gram=per_mb["grad_gram"][0], gram_valid=synergy_now)
    new_utility_state = utility.update(utility_state, stats, astor_hp)
    new_train_state = TrainState(params=params, opt_state=opt_state,
                                 step=train_state.step + 1, rng=rng)
    metrics = _metrics(per_mb, sums, reward_stats, adv_sum, adv_sq, utility_state,
                       new_utility_state)
    return new_train_state, new_utility_state, metrics

  return step


def _check_rows(num_rows: int, num_devices: int, minibatches: int, microbatches: int) -> None:
  """Raises ValueError (naming the fields) when the rows do not split into equal parts."""
  parts = num_devices * minibatches * microbatches
  if num_rows % parts:
    raise ValueError(
        f"Batch: {num_rows} rows do not split into rl.minibatches={minibatches} x "
        f"rl.microbatches={microbatches} equal parts on each of the {num_devices} "
        f"devices of the batch axes; pad the batch to a multiple of {parts} rows "
        "(train.step.row_multiple)")


def _metrics(per_mb, sums, reward_stats, adv_sum, adv_sq, old_state, new_state):
  """Scalar and per-task metrics of one step (module doc)."""
  def ratio(num, den):
    return num / jnp.maximum(den, 1.0)

  rows = reward_stats.task_rows
  tokens = sums["tokens"]
  adv_mean = ratio(adv_sum, rows)
  synergy_term = synergy.synergy_per_task(new_state.synergy, new_state.synergy_seen)
  metrics = {k: per_mb[k].mean() for k in
             ("loss", "policy_loss", "kl_penalty", "entropy_bonus", "grad_norm")}
  metrics.update({
      "reward": ratio(reward_stats.task_reward_sum.sum(), rows.sum()),
      "kl": ratio(sums["kl"].sum(), tokens.sum()),
      "clip_fraction": ratio(sums["clipped"].sum(), tokens.sum()),
      "entropy": ratio(sums["entropy"].sum(), tokens.sum()),
      "logprob_mismatch": ratio(sums["mismatch"].sum(), tokens.sum()),
      "per_task/reward": ratio(reward_stats.task_reward_sum, rows),
      "per_task/advantage_std": jnp.sqrt(jnp.maximum(ratio(adv_sq, rows) - adv_mean**2, 0.0)),
      "per_task/kl": ratio(sums["kl"], tokens),
      "per_task/clip_fraction": ratio(sums["clipped"], tokens),
      "per_task/entropy": ratio(sums["entropy"], tokens),
      "per_task/logprob_mismatch": ratio(sums["mismatch"], tokens),
      "per_task/rows": rows,
      "per_task/tokens": tokens,
      "per_task/beta": old_state.kl.beta,
      "per_task/next_beta": new_state.kl.beta,
      "per_task/target_kl": new_state.kl.target_kl,
      "per_task/budget": old_state.budget,
      "per_task/utility": new_state.utility,
      "per_task/potential": new_state.potential,
      "per_task/progress": new_state.progress,
      "per_task/synergy": synergy_term,
  })
  return metrics


def make_train_step(model: Any, optimizer: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, mesh: Mesh, *,
                    state_sharding: TrainState | Any | None = None,
                    logprob_fn: LogprobFn | None = None,
                    donate: bool = True) -> Callable:
  """The jitted train step for `config` on `mesh`.

  Args:
    model: the policy (a `astor_jax.model.Transformer`); ignored when
      `logprob_fn` is given.
    optimizer: optax transformation (e.g. `state.make_optimizer(config)`).
    config: the validated job config (sections `rl`, `astor`, `sampler`, `tasks`).
    mesh: `Mesh(("data", "fsdp", "tensor"))`.
    state_sharding: a TrainState of shardings (`state.state_sharding`), or one
      sharding for all of it; default: replicated.
    logprob_fn: overrides the model's log-prob function (tests, other models).
    donate: donate the train and utility states' buffers.

  Returns:
    `train_step(train_state, utility_state, batch) -> (train_state, utility_state, metrics)`,
    jitted with explicit shardings: the batch as `batch.batch_sharding(mesh)`,
    utility state and metrics replicated.
  """
  if logprob_fn is None:
    logprob_fn = model_logprob_fn(model, config.model.logprob_chunk_size)
  replicated = NamedSharding(mesh, REPLICATED)
  train_sharding = replicated if state_sharding is None else state_sharding
  params_sharding = (state_sharding.params if isinstance(state_sharding, TrainState)
                     else train_sharding)
  step = build_train_step(logprob_fn, optimizer, astor_hparams(config), rl_hparams(config), mesh,
                          params_sharding)
  return jax.jit(
      _traced_in_mesh(step, mesh),
      in_shardings=(train_sharding, replicated, batch_sharding(mesh)),
      out_shardings=(train_sharding, replicated, replicated),
      donate_argnums=(0, 1) if donate else ())


def place_utility_state(utility_state: utility.UtilityState, mesh: Mesh) -> utility.UtilityState:
  """Replicates a (fresh or restored) UtilityState on `mesh`, as the train step expects."""
  return jax.device_put(utility_state, NamedSharding(mesh, REPLICATED))


def make_logprob_fn(model: Any, config: ml_collections.ConfigDict, mesh: Mesh, *,
                    params_sharding: Any | None = None,
                    logprob_fn: LogprobFn | None = None) -> Callable:
  """Jitted `(params, batch) -> logprobs [N, L] float32`, rows sharded like the batch.

  The loop uses it for the reference and old-policy log-probs of a rollout
  batch (fields `ref_logprobs`, `old_logprobs`). Token-aligned: column 0 is 0.

  The rows go through the model in `rl.minibatches x rl.microbatches` strided
  chunks, one after the other (`lax.map` inside the program), i.e. with the
  train step's rows per pass, whose activation memory the config already
  budgets; every device keeps its own rows, and the result equals the
  one-pass forward. `N` must be a multiple of `row_multiple(config, mesh)`.

  Args:
    model: the policy or reference model; ignored when `logprob_fn` is given.
    config: the job config (reads `model.logprob_chunk_size`, `rl.minibatches`,
      `rl.microbatches`).
    mesh: the device mesh.
    params_sharding: shardings of the params (default: replicated).
    logprob_fn: overrides the model's log-prob function.
  """
  if logprob_fn is None:
    logprob_fn = model_logprob_fn(model, config.model.logprob_chunk_size)
  replicated = NamedSharding(mesh, REPLICATED)
  num_devices = _batch_axis_size(mesh)
  minibatches, microbatches = int(config.rl.minibatches), int(config.rl.get("microbatches", 1))
  parts = minibatches * microbatches

  def rows_logprobs(params, rows):
    logprobs, _ = logprob_fn(params, rows["tokens"], rows["positions"], rows["input_mask"])
    return logprobs.astype(jnp.float32)

  def fn(params, batch: Batch):
    chex.assert_rank(batch.tokens, 2)
    rows = dict(tokens=batch.tokens, positions=batch.positions, input_mask=batch.input_mask)
    if parts == 1:
      return rows_logprobs(params, rows)
    _check_rows(batch.tokens.shape[0], num_devices, minibatches, microbatches)
    chunks = jax.tree.map(lambda x: _split_rows(x, parts, mesh), rows)
    return _join_rows(lax.map(functools.partial(rows_logprobs, params), chunks), mesh)

  params_sharding = replicated if params_sharding is None else params_sharding
  return jax.jit(_traced_in_mesh(fn, mesh), in_shardings=(params_sharding, batch_sharding(mesh)),
                 out_shardings=NamedSharding(mesh, TOKENS))
