r"""GRPO step on the peer workloads, with the project's own sampler, log-prob fn and step.

Workloads (shared/bench/peers/README.md; the same for Tunix and TRL):

  tiny    `bench_tiny` (4 layers, d 256, 4 heads, vocab 2048), 64 new tokens
  6l128   `bench_6l` (6 layers, same widths), 128 new tokens

both with 4 prompts x G=4 completions per step, the toy word-level tokenizer,
prompts and reward of `bench.toy`, N(0, 0.02) init, fp32, temperature 1,
top-p 1, EOS stops a row, beta 0.04 with a reference-model forward (k3), clip
0.2, one AdamW step (lr 1e-4) per rollout batch, seq-mean-token-mean loss and
no remat.

One step, timed by phase (each phase ends when its results are on the host
or, for the train step, when the new parameters are ready):

  rollout   `Sampler` (prefill + KV-cache decode), batch rows, detokenize;
  ref       reference log-probs (`make_logprob_fn`) dispatched, the reward
            computed on the host meanwhile, then waited for;
  train     the jitted ASTOR train step (`make_train_step`) configured as plain
            GRPO: one task (so the step has no task-gradient synergy
            branch), the fixed calibrator (beta stays 0.04), one minibatch,
            no entropy bonus (the entropy is a forward-only metric).

As in the peers (`num_iterations = 1`), no separate old-policy forward runs:
with one minibatch the step takes its own log-probs under a stop-gradient as
the ratio's behaviour log-probs (`rl.old_logprobs` "auto"), as Tunix and TRL
do. The sampler runs its rollout rows as two parts on two host threads
(`Sampler`, `host_threads` auto on a one-device CPU host; `--host-threads 1`
for one call). Step 1 includes compilation;
the steady step is the mean of steps 2..N. Peak RSS is the process's
`ru_maxrss`, so run one workload per process (`bench.run` does).

  python -m bench.grpo_bench --workload tiny --steps 8 --json-out /tmp/tiny.json
  python -m bench.grpo_bench --workload 6l128 --prompts 8 --group-size 8  # scaling
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import resource
import statistics
import time
from typing import Any

import bench

REPO = pathlib.Path(__file__).resolve().parents[1]

# name -> (model preset, new tokens)
WORKLOADS = {"tiny": ("bench_tiny", 64), "6l128": ("bench_6l", 128)}
PHASES = ("rollout", "ref", "train")


def peak_rss_mb() -> float:
  """Peak resident set size of this process in MiB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_base_config():
  """`configs/astor.py`'s default config (configs/ is not a package)."""
  spec = importlib.util.spec_from_file_location("astor_config", REPO / "configs" / "astor.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def grpo_config(*, prompts: int, group_size: int, new_tokens: int, prompt_len: int,
                beta: float = 0.04, learning_rate: float = 1e-4):
  """The job config of the peers' plain GRPO: one task, fixed beta, one AdamW step per batch.

  Synergy (per-task gradient cosines) needs two tasks: with one the step
  leaves it out (`astor_jax/train/step.py`), as the peers do not compute it.

  Weight decay is optax.adamw's default (1e-4, what Tunix runs); gradients are
  clipped at global norm 1 (TRL's default `max_grad_norm`).
  """
  c = load_base_config()
  c.tasks = ("toy",)
  c.astor.curriculum_order = ("toy",)
  c.astor.schedule = "uniform"
  c.astor.calibrate = False
  c.astor.init_beta = beta
  # One task has no cross-task synergy: the step is built without it (the
  # interval is pushed past the run all the same).
  c.astor.synergy_interval = 1_000_000
  c.rl.batch_prompts = prompts
  c.rl.group_size = group_size
  c.rl.advantage = "grpo"
  c.rl.clip_eps = 0.2
  c.rl.loss_aggregation = "seq_mean_token_mean"
  c.rl.kl_estimator = "k3"
  c.rl.entropy_coef = 0.0
  c.rl.learning_rate = learning_rate
  c.rl.weight_decay = 1e-4
  c.rl.max_grad_norm = 1.0
  c.rl.minibatches = 1
  c.rl.microbatches = 1
  c.sampler.temperature = 1.0
  c.sampler.top_p = 1.0
  c.sampler.top_k = 0
  c.sampler.max_new_tokens = new_tokens
  c.sampler.prompt_buckets = (prompt_len,)
  c.model.remat_policy = "none"
  c.model.logprob_chunk_size = 0
  return c


def steady(xs: list[float]) -> dict:
  """The peer scripts' statistics: first value, mean of the rest, all values."""
  rest = xs[1:] if len(xs) > 1 else xs
  return {"first": round(xs[0], 4), "steady_mean": round(statistics.fmean(rest), 4),
          "all": [round(x, 4) for x in xs]}


@dataclasses.dataclass
class Setup:
  """Everything one GRPO workload runs with, built as the training loop builds it."""

  workload: str
  config: Any
  model: Any
  mesh: Any
  tokenizer: Any
  prompt_ids: list
  sampler: Any
  stop: Any
  train_step: Any
  logprob_fn: Any
  train_state: Any
  utility_state: Any
  ref_params: Any
  rollout_key: Any
  prompts: int
  group_size: int
  new_tokens: int
  n_params: int


def build(workload: str, *, steps: int = 8, prompts: int = 4, group_size: int = 4,
          new_tokens: int | None = None, layers: int | None = None, prompt_len: int = 16,
          seed: int = 0, host_threads: int = 0) -> Setup:
  """Model, states, sampler, log-prob fn and train step of `workload` (args as in `run`)."""
  import jax

  from astor_jax.astor import utility as utility_lib
  from astor_jax.astor.hparams import astor_hparams
  from astor_jax.model import Transformer, get_preset, init_params, make_mesh, param_shardings
  from astor_jax.rollout.sampler import Sampler, StopCondition
  from astor_jax.train import state as state_lib
  from astor_jax.train import step as step_lib
  from bench import toy

  preset, default_new_tokens = WORKLOADS[workload]
  new_tokens = new_tokens or default_new_tokens
  config = grpo_config(prompts=prompts, group_size=group_size, new_tokens=new_tokens,
                       prompt_len=prompt_len)
  overrides = {} if layers is None else {"num_layers": layers}
  model = Transformer(get_preset(preset, **overrides))
  mesh = make_mesh()
  key = jax.random.PRNGKey(seed)  # raw uint32 keys, as the loop uses
  init_key, rollout_key, train_key, schedule_key = jax.random.split(key, 4)
  params = init_params(model, init_key, mesh)
  # The frozen reference: the same weights in their own buffers (the step donates the policy's).
  ref_params = jax.tree.map(lambda x: x.copy(), params)

  tokenizer = toy.build_tokenizer(model.config.vocab_size)
  texts = toy.make_prompts(prompts * (steps + 2), model.config.vocab_size,
                           max_len=prompt_len - 1)
  prompt_ids = toy.encode_prompts(tokenizer, texts)
  sampler = Sampler(model, max_new_tokens=new_tokens, prompt_buckets=(prompt_len,),
                    pad_id=toy.PAD_ID, mesh=mesh, host_threads=host_threads)
  # Placed as the training loop places them (astor_jax/train/loop.py, RLPhase).
  optimizer = state_lib.make_optimizer(config)
  params_sharding = param_shardings(model, mesh)
  state_sharding = state_lib.state_sharding(params_sharding, optimizer, params, mesh)
  hp = astor_hparams(config)
  return Setup(
      workload=workload, config=config, model=model, mesh=mesh, tokenizer=tokenizer,
      prompt_ids=prompt_ids, sampler=sampler, stop=StopCondition(eos_ids=(toy.EOS_ID,)),
      train_step=step_lib.make_train_step(model, optimizer, config, mesh,
                                          state_sharding=state_sharding),
      logprob_fn=step_lib.make_logprob_fn(model, config, mesh,
                                          params_sharding=params_sharding),
      train_state=state_lib.create_sharded(params, optimizer, train_key, state_sharding),
      utility_state=step_lib.place_utility_state(
          utility_lib.init([len(prompt_ids)], hp, schedule_key), mesh),
      ref_params=ref_params, rollout_key=rollout_key, prompts=prompts,
      group_size=group_size, new_tokens=new_tokens,
      n_params=int(sum(x.size for x in jax.tree.leaves(params))))


def rollout(s: Setup, step: int):
  """Samples step `step`'s prompts; (host rows, lengths, completion texts)."""
  import jax

  from astor_jax.rollout.rows import to_batch_rows

  batch_prompts = s.prompt_ids[step * s.prompts:(step + 1) * s.prompts]
  out = s.sampler(s.train_state.params, batch_prompts, jax.random.fold_in(s.rollout_key, step),
                  group_size=s.group_size, temperature=1.0, top_p=1.0, stop=s.stop)
  rows = jax.device_get(to_batch_rows(out, s.group_size))
  tokens, lengths = jax.device_get((out.tokens, out.lengths))
  completions = s.tokenizer.batch_decode([t[:n] for t, n in zip(tokens, lengths)],
                                         skip_special_tokens=True)
  return rows, lengths, completions


def device_batch(s: Setup, rows: dict, step: int):
  """The train batch of a rollout on the mesh (rewards and reference log-probs still 0).

  `old_logprobs` holds the sampler's log-probs; the step (one minibatch) does
  not read them (module doc).
  """
  import numpy as np

  from astor_jax.train.batch import Batch, as_device_batch

  n = s.prompts * s.group_size
  return as_device_batch(Batch(
      tokens=rows["tokens"], positions=rows["positions"], input_mask=rows["input_mask"],
      completion_mask=rows["completion_mask"], task_ids=np.zeros((n,), np.int32),
      group_ids=rows["group_ids"],
      prompt_ids=np.repeat(np.arange(step * s.prompts, (step + 1) * s.prompts, dtype=np.int32),
                           s.group_size),
      rewards=np.zeros((n,), np.float32), old_logprobs=rows["sampler_logprobs"],
      ref_logprobs=np.zeros_like(rows["sampler_logprobs"]),
      sampler_logprobs=rows["sampler_logprobs"], row_mask=np.ones((n,), bool)), s.mesh)


def run(workload: str, *, steps: int = 8, prompts: int = 4, group_size: int = 4,
        new_tokens: int | None = None, layers: int | None = None, prompt_len: int = 16,
        seed: int = 0, host_threads: int = 0) -> dict:
  """Runs `steps` GRPO steps of `workload` in this process; returns the result record.

  Args:
    workload: a key of WORKLOADS.
    steps: GRPO steps (step 1 compiles).
    prompts: prompts per step.
    group_size: completions per prompt G.
    new_tokens: generation budget; None takes the workload's.
    layers: decoder layers; None takes the preset's (scaling runs vary it).
    prompt_len: prompt bucket (the peers' max_prompt_length, BOS included).
    seed: init / sampling seed.
    host_threads: the sampler's host threads (`Sampler`; 0: auto, 2 on a
      one-device CPU host).

  Returns:
    A dict with the peer scripts' fields (`global_step_s`, `generate_s`,
    `ref_logps_s`, `update_actor_s`, `rollout_tokens_per_s_steady`,
    `peak_rss_mb`, ...).
  """
  import jax
  import numpy as np

  from bench import toy

  s = build(workload, steps=steps, prompts=prompts, group_size=group_size,
            new_tokens=new_tokens, layers=layers, prompt_len=prompt_len, seed=seed,
            host_threads=host_threads)
  times = {"step": [], **{p: [] for p in PHASES}}
  tokens_per_step, reward_per_step, kl_per_step = [], [], []
  for step in range(steps):
    start = time.perf_counter()
    # ---- rollout: sample, build rows, bring tokens to the host as text
    rows, lengths, completions = rollout(s, step)
    rollout_done = time.perf_counter()
    # ---- reference log-probs on the device, reward on the host meanwhile
    batch = device_batch(s, rows, step)
    ref = s.logprob_fn(s.ref_params, batch)
    rewards = np.asarray(toy.target_fraction_reward(completions), np.float32)
    ref = jax.block_until_ready(ref)
    ref_done = time.perf_counter()
    # ---- train: the jitted step, done when the new params exist
    batch = batch._replace(rewards=jax.device_put(rewards, batch.rewards.sharding),
                           ref_logprobs=ref)
    s.train_state, s.utility_state, metrics = s.train_step(s.train_state, s.utility_state,
                                                           batch)
    jax.block_until_ready(s.train_state.params)
    end = time.perf_counter()
    metrics = jax.device_get(metrics)
    times["rollout"].append(rollout_done - start)
    times["ref"].append(ref_done - rollout_done)
    times["train"].append(end - ref_done)
    times["step"].append(end - start)
    tokens_per_step.append(int(lengths.sum()))
    reward_per_step.append(float(rewards.mean()))
    kl_per_step.append(float(metrics["kl"]))
    print(f"[astor_jax] {workload} step {step + 1}: {times['step'][-1]:.3f}s "
          f"(rollout {times['rollout'][-1]:.3f}, ref {times['ref'][-1]:.3f}, "
          f"train {times['train'][-1]:.3f}) reward {reward_per_step[-1]:.3f}", flush=True)

  steady_tokens = sum(tokens_per_step[1:]) if steps > 1 else tokens_per_step[0]
  steady_rollout = sum(times["rollout"][1:]) if steps > 1 else times["rollout"][0]
  return {
      "framework": "astor_jax",
      "workload": workload,
      "versions": {"jax": jax.__version__},
      "config": {"preset": WORKLOADS[workload][0], "layers": s.model.config.num_layers,
                 "steps": steps, "prompts_per_step": prompts, "G": group_size,
                 "new_tokens": s.new_tokens, "max_prompt_len": prompt_len, "beta": 0.04,
                 "clip_eps": 0.2, "learning_rate": 1e-4,
                 "sampler_host_threads": s.sampler.host_threads},
      "n_params": s.n_params,
      "global_step_s": steady(times["step"]),
      "generate_s": steady(times["rollout"]),
      "ref_logps_s": steady(times["ref"]),
      "update_actor_s": steady(times["train"]),
      "generated_tokens_per_step": tokens_per_step,
      "rollout_tokens_per_s_steady": round(steady_tokens / steady_rollout, 1),
      "mean_reward_per_step": [round(r, 4) for r in reward_per_step],
      "kl_per_step": [round(k, 6) for k in kl_per_step],
      "compiled_programs": {"sampler": s.sampler._generate._cache_size(),  # noqa: SLF001
                            "train_step": s.train_step._cache_size(),  # noqa: SLF001
                            "logprob_fn": s.logprob_fn._cache_size()},  # noqa: SLF001
      "peak_rss_mb": round(peak_rss_mb(), 1),
  }


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workload", choices=tuple(WORKLOADS), default="tiny")
  ap.add_argument("--steps", type=int, default=8)
  ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
  ap.add_argument("--group-size", type=int, default=4, help="completions per prompt (G)")
  ap.add_argument("--new-tokens", type=int, default=0, help="0: the workload's")
  ap.add_argument("--layers", type=int, default=0, help="0: the preset's")
  ap.add_argument("--host-threads", type=int, default=0,
                  help="the sampler's host threads (0: auto)")
  bench.add_cpu_buffers_flag(ap)
  ap.add_argument("--json-out", default=None)
  args = ap.parse_args(argv)
  if args.steps < 1:
    ap.error("--steps: must be >= 1")
  if args.host_threads < 0:
    ap.error("--host-threads: must be >= 0 (0: auto)")
  memory_note = bench.start_process(args)
  result = run(args.workload, steps=args.steps, prompts=args.prompts,
               group_size=args.group_size, new_tokens=args.new_tokens or None,
               layers=args.layers or None, host_threads=args.host_threads)
  result["cpu_buffers"] = memory_note
  print(json.dumps(result, indent=1))
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
