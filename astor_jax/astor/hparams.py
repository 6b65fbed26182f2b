"""Static hyperparameters of the ASTOR algorithm, read once from the job config.

The pure functions of `astor_jax.astor` take these frozen (hashable) dataclasses
instead of an `ml_collections.ConfigDict`, so they can be closed over or passed
as static arguments to `jax.jit`. Quantities that change during training
(per-task beta, budgets, utilities, targets) live in `UtilityState` arrays
instead, so changing them never recompiles.
"""

from __future__ import annotations

import dataclasses

import ml_collections


@dataclasses.dataclass(frozen=True)
class AstorHParams:
  """Hyperparameters of utility, schedule and calibration (config section `astor`).

  Attributes mirror `configs/astor.py` (documented there); the derived ones:
    num_tasks: K.
    batch_prompts: P, prompts per step (`rl.batch_prompts`).
    total_steps: RL steps (`rl.steps`), used by the curriculum schedule.
    specialist_index: index of `astor.specialist_task` in `config.tasks` (-1: none).
    curriculum_indices: task indices in curriculum order; tasks of `config.tasks`
      missing from `astor.curriculum_order` follow in `config.tasks` order.
    target_kl: per-task KL targets (`astor.target_kl_per_task`, or `target_kl`
      for every task when that is empty).
  """

  num_tasks: int
  batch_prompts: int
  total_steps: int
  schedule: str = "astor"
  tau: float = 0.5
  floor: float = 0.1
  ema_decay: float = 0.8
  potential_weight: float = 1.0
  progress_weight: float = 1.0
  progress_mode: str = "absolute"
  synergy_weight: float = 0.5
  synergy_interval: int = 5
  synergy_ema_decay: float = 0.8
  synergy_sketch_dim: int = 0
  priority_temperature: float = 0.25
  priority_staleness_weight: float = 0.1
  priority_staleness_horizon: int = 20
  zero_variance_penalty: float = 1.0
  specialist_index: int = -1
  curriculum_indices: tuple[int, ...] = ()
  calibrate: bool = True
  init_beta: float = 0.04
  target_kl: tuple[float, ...] = ()
  kl_horizon: float = 10.0
  kl_error_clip: float = 0.2
  utility_kl_strength: float = 0.5
  kl_direction: str = "loosen_high_utility"
  min_beta: float = 1e-4
  max_beta: float = 1.0

  def __post_init__(self):
    if not self.curriculum_indices:
      object.__setattr__(self, "curriculum_indices", tuple(range(self.num_tasks)))
    if not self.target_kl:
      object.__setattr__(self, "target_kl", (0.05,) * self.num_tasks)
    if len(self.target_kl) != self.num_tasks:
      raise ValueError(f"config.astor.target_kl_per_task: {len(self.target_kl)} values for "
                       f"{self.num_tasks} tasks; give one per task or leave it empty")
    if sorted(self.curriculum_indices) != list(range(self.num_tasks)):
      raise ValueError("config.astor.curriculum_order: must order every task of "
                       f"config.tasks exactly once; got indices {self.curriculum_indices}")


@dataclasses.dataclass(frozen=True)
class RLHParams:
  """Hyperparameters of the GRPO loss (config section `rl`, plus the generation budget).

  Attributes:
    advantage: estimator name in `advantages.ADVANTAGE_ESTIMATORS`.
    clip_eps: PPO ratio clip.
    loss_aggregation: name in `losses.LOSS_AGGREGATIONS`.
    entropy_coef: weight of the entropy bonus (0: off).
    kl_estimator: name in `calibrate.KL_ESTIMATORS`.
    minibatches: optimizer steps per rollout batch.
    microbatches: gradient-accumulation chunks per minibatch (same update, less
      activation memory).
    max_new_tokens: the generation budget; Dr.GRPO's constant length normalizer.
    old_is_current: the ratio's behaviour log-probs are the step's own under a
      stop-gradient (`rl.old_logprobs` "current", or "auto" with one
      minibatch), not the batch's `old_logprobs`.
  """

  advantage: str = "grpo"
  clip_eps: float = 0.2
  loss_aggregation: str = "seq_mean_token_mean"
  entropy_coef: float = 0.0
  kl_estimator: str = "k3"
  minibatches: int = 1
  microbatches: int = 1
  max_new_tokens: int = 96
  old_is_current: bool = False


def astor_hparams(config: ml_collections.ConfigDict) -> AstorHParams:
  """AstorHParams from a validated job config (see `astor_jax.config.validate`)."""
  a = config.astor
  tasks = tuple(config.tasks)
  order = [tasks.index(t) for t in a.curriculum_order if t in tasks]
  order += [i for i in range(len(tasks)) if i not in order]
  per_task = tuple(float(x) for x in a.get("target_kl_per_task", ()))
  return AstorHParams(
      num_tasks=len(tasks),
      batch_prompts=int(config.rl.batch_prompts),
      total_steps=int(config.rl.steps),
      schedule=a.schedule,
      tau=float(a.tau),
      floor=float(a.floor),
      ema_decay=float(a.ema_decay),
      potential_weight=float(a.potential_weight),
      progress_weight=float(a.progress_weight),
      progress_mode=a.get("progress_mode", "absolute"),
      synergy_weight=float(a.synergy_weight),
      synergy_interval=int(a.synergy_interval),
      synergy_ema_decay=float(a.synergy_ema_decay),
      synergy_sketch_dim=int(a.synergy_sketch_dim),
      priority_temperature=float(a.get("priority_temperature", 0.25)),
      priority_staleness_weight=float(a.priority_staleness_weight),
      priority_staleness_horizon=int(a.get("priority_staleness_horizon", 20)),
      zero_variance_penalty=float(a.get("zero_variance_penalty", 1.0)),
      specialist_index=tasks.index(a.specialist_task) if a.specialist_task in tasks else -1,
      curriculum_indices=tuple(order),
      calibrate=bool(a.calibrate),
      init_beta=float(a.init_beta),
      target_kl=per_task or (float(a.target_kl),) * len(tasks),
      kl_horizon=float(a.kl_horizon),
      kl_error_clip=float(a.get("kl_error_clip", 0.2)),
      utility_kl_strength=float(a.utility_kl_strength),
      kl_direction=a.kl_direction,
      min_beta=float(a.min_beta),
      max_beta=float(a.max_beta),
  )


def rl_hparams(config: ml_collections.ConfigDict) -> RLHParams:
  """RLHParams from a validated job config."""
  r = config.rl
  return RLHParams(
      advantage=r.advantage,
      clip_eps=float(r.clip_eps),
      loss_aggregation=r.loss_aggregation,
      entropy_coef=float(r.entropy_coef),
      kl_estimator=r.kl_estimator,
      minibatches=int(r.minibatches),
      microbatches=int(r.get("microbatches", 1)),
      max_new_tokens=int(config.sampler.max_new_tokens),
      old_is_current=old_logprobs_are_current(config),
  )


def old_logprobs_are_current(config: ml_collections.ConfigDict) -> bool:
  """Whether `rl.old_logprobs` resolves to "current" (the loop then runs no old-policy pass)."""
  mode = config.rl.get("old_logprobs", "auto")
  return mode == "current" or (mode == "auto" and int(config.rl.minibatches) == 1)

