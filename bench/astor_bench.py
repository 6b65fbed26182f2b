r"""The full ASTOR step on the embedded tiny world, timed by the training loop itself.

Runs `astor_jax.train.loop.train` on `configs/astor.py:smoke` (SFT warm start,
then `--steps` RL steps; no evaluation) and reads the loop's own phase timers
from `metrics.jsonl` (`time/<phase>`, `astor_jax/train/loop.py`,
`RLPhase.run_step`):

  schedule           the jitted schedule (budgets, prompt draw)
  sample             KV-cache decode + rows + detokenize
  score_submit       jobs built and handed to the execution pool
  logprobs_dispatch  batch checks, device put, reference log-probs dispatched (and
                     the old policy's with several minibatches: `rl.old_logprobs`)
  score_wait         waiting for the rewards (device log-probs run meanwhile)
  logprobs_wait      waiting for the log-probs after the rewards arrived
  train              the jitted ASTOR train step (utility, schedule, per-task KL)

On one CPU device with `cpu_resident_buffers` (the default) the log-prob pass
runs inline, inside `logprobs_dispatch`, while the pool's processes score, so
`logprobs_wait` is about 0 there and `score_wait` is what scoring added.

Overlap of reward scoring with device work: after each step (outside the
loop's timers) the bench re-scores the same completions alone and recomputes
the same log-prob passes alone (one, or two with an old-policy pass), so

  scoring hidden   = 1 - score_wait / score_alone        (clipped to [0, 1])
  log-probs hidden = 1 - (logprobs_dispatch + logprobs_wait) / logprobs_alone
  saved            = (score_alone + logprobs_alone) - window,
  window           = score_submit + logprobs_dispatch + score_wait + logprobs_wait

"scoring hidden" = 1 means the step never waited for its rewards: the pool
scored while the device computed log-probs. `saved` < 0 means running both at
once cost more than running them one after the other (two busy cores).

The re-measurement hooks wrap `RLPhase.run_step` and `RLPhase._rollout_batch`
(instrumentation only; the training is unchanged) and their time is taken out
of `time/step`. Steady figures are means over the steps after the first that
compiled nothing: the loop pads prompts to buckets (64, 128, ... tokens), and
the first step of a new bucket compiles the sampler, the log-prob fn and the
train step again (the record lists those steps and each step's row length).

  python -m bench.astor_bench --steps 8 --json-out /tmp/astor.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import resource
import statistics
import tempfile
import time

import bench

REPO = pathlib.Path(__file__).resolve().parents[1]
LOOP_PHASES = ("schedule", "sample", "score_submit", "logprobs_dispatch", "score_wait",
               "logprobs_wait", "train")
WINDOW = ("score_submit", "logprobs_dispatch", "score_wait", "logprobs_wait")


def smoke_config(steps: int, sft_cache_dir: str = ""):
  """`configs/astor.py:smoke` with `steps` RL steps, no eval, no TensorBoard, no progress bar."""
  spec = importlib.util.spec_from_file_location("astor_config", REPO / "configs" / "astor.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("smoke")
  c.phases = ("sft", "rl")
  c.rl.steps = steps
  c.log.tensorboard = False
  c.log.progress_bar = False
  c.checkpoint.every_steps = max(steps, 1)
  c.sft.cache_dir = sft_cache_dir
  return c


class _Probe:
  """Times scoring and log-probs of each step's batch on their own, after the step."""

  def __init__(self):
    self.records: list[dict] = []
    self.error = ""

  def install(self, loop) -> None:
    import jax

    from astor_jax.tasks.base import score_batch
    from astor_jax.train.batch import as_device_batch

    probe = self
    original_rollout = loop.RLPhase._rollout_batch  # noqa: SLF001 - instrumentation
    original_step = loop.RLPhase.run_step

    def rollout_batch(self, plan, key):
      out = original_rollout(self, plan, key)
      self._bench_rollout = out  # noqa: SLF001
      return out

    def run_step(self, timer):
      out = original_step(self, timer)
      start = time.perf_counter()
      record = {}
      try:
        host_batch, examples, completions, _ = self._bench_rollout  # noqa: SLF001
        t0 = time.perf_counter()
        score_batch(self.job.tasks, examples, completions, self.job.pool).result()
        record["score_alone_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        batch = as_device_batch(host_batch, self.job.mesh)
        passes = [self.logprob_fn(self.ref_params, batch)]
        if not self.old_is_current:
          passes.append(self.logprob_fn(self.train_state.params, batch))
        jax.block_until_ready(passes)
        record["logprobs_alone_s"] = time.perf_counter() - t0
      except Exception as e:  # noqa: BLE001 - the probe must never break the measured run
        probe.error = f"{type(e).__name__}: {e}"
      record["seq_len"] = int(self._bench_rollout[0].tokens.shape[1])  # noqa: SLF001
      # The step computed per-task gradient cosines iff (utility step before it) % interval == 0.
      done = int(jax.device_get(self.utility_state.step))
      record["synergy"] = (done - 1) % int(self.config.astor.synergy_interval) == 0
      # A count that grows after step 1 is a recompilation (e.g. a new prompt bucket).
      record["compiled_programs"] = {
          "sampler": self.job.sampler._generate._cache_size(),  # noqa: SLF001
          "logprob_fn": self.logprob_fn._cache_size(),  # noqa: SLF001
          "train_step": self.train_step._cache_size()}  # noqa: SLF001
      record["probe_s"] = time.perf_counter() - start
      probe.records.append(record)
      return out

    loop.RLPhase._rollout_batch = rollout_batch  # noqa: SLF001
    loop.RLPhase.run_step = run_step


def _mean(xs):
  return round(statistics.fmean(xs), 4) if xs else None


def compiling_steps(probes: list[dict]) -> list[bool]:
  """Whether each step compiled something: step 1, and any step whose program count grew."""
  out, previous = [], None
  for p in probes:
    counts = p.get("compiled_programs")
    out.append(previous is None or counts is None or counts != previous)
    previous = counts
  return out


def summarize(records: list[dict], probes: list[dict]) -> dict:
  """Per-phase first/steady times and the overlap figures (module doc).

  "steady" averages the steps after the first that compiled nothing (a new
  prompt bucket compiles the sampler, log-prob fn and train step again);
  "steady_all" averages every step after the first.
  """
  rl = [r for r in records if r.get("phase") == "rl"]
  probes = list(probes) + [{}] * (len(rl) - len(probes))
  for r, p in zip(rl, probes):
    r["time/step_without_probe"] = r["time/step"] - p.get("probe_s", 0.0)
  compiled = compiling_steps(probes[:len(rl)])
  steady_index = [i for i in range(1, len(rl)) if not compiled[i]]
  phases = {}
  for name in LOOP_PHASES + ("step_without_probe",):
    values = [r.get(f"time/{name}") or 0.0 for r in rl]
    phases[name] = {"first": round(values[0], 4) if values else None,
                    "steady_mean": _mean([values[i] for i in steady_index]),
                    "steady_all_mean": _mean(values[1:])}
  steady_rl = [rl[i] for i in steady_index]
  steady_probes = [probes[i] for i in steady_index]
  complete = bool(steady_probes) and all(
      "score_alone_s" in p and "logprobs_alone_s" in p for p in steady_probes)
  overlap = {}
  if complete:
    def loop_time(name):
      return [r.get(f"time/{name}") or 0.0 for r in steady_rl]

    score = [p["score_alone_s"] for p in steady_probes]
    logprobs = [p["logprobs_alone_s"] for p in steady_probes]
    window = [sum(parts) for parts in zip(*(loop_time(p) for p in WINDOW))]
    serial = [s + lp for s, lp in zip(score, logprobs)]

    def hidden(waits, alone):
      return [min(1.0, max(0.0, 1.0 - w / max(a, 1e-9))) for w, a in zip(waits, alone)]

    overlap = {
        "score_alone_s": _mean(score), "logprobs_alone_s": _mean(logprobs),
        "score_wait_s": _mean(loop_time("score_wait")),
        "logprobs_wait_s": _mean(loop_time("logprobs_wait")),
        "scoring_hidden_fraction": _mean(hidden(loop_time("score_wait"), score)),
        "logprobs_hidden_fraction": _mean(hidden(
            [d + w for d, w in zip(loop_time("logprobs_dispatch"), loop_time("logprobs_wait"))],
            logprobs)),
        "window_s": _mean(window), "serial_s": _mean(serial),
        "saved_s": _mean([s - w for s, w in zip(serial, window)])}
  train = [r.get("time/train") or 0.0 for r in rl]
  by_synergy = {}
  for flag, key in ((True, "with_synergy"), (False, "without_synergy")):
    chosen = [train[i] for i in steady_index if probes[i].get("synergy") is flag]
    by_synergy[key] = {"steps": len(chosen), "train_s": _mean(chosen)}
  return {"phases": phases, "overlap": overlap, "train_by_synergy": by_synergy,
          "steps": len(rl),
          "steady_steps": [i + 1 for i in steady_index],
          "compiling_steps": [i + 1 for i, c in enumerate(compiled) if c],
          "seq_len_per_step": [p.get("seq_len") for p in probes[:len(rl)]],
          "completion_tokens_per_step": [r.get("completion_tokens") for r in rl],
          "reward_per_step": [r.get("reward") for r in rl],
          "skipped_steps": int(sum(r.get("skipped") or 0 for r in rl))}


def run(steps: int, workdir: str, sft_cache_dir: str = "", fresh_cpu_buffers: bool = False
        ) -> dict:
  """Trains the smoke config in `workdir` with the probe installed; returns the record."""
  import jax

  from astor_jax.train import loop, observe

  config = smoke_config(steps, sft_cache_dir)
  config.cpu_resident_buffers = not fresh_cpu_buffers  # recorded in the workdir's config
  probe = _Probe()
  probe.install(loop)
  start = time.perf_counter()
  outcome = loop.train(config, workdir)
  total = time.perf_counter() - start
  if not outcome.finished:
    raise RuntimeError(f"the training run stopped early: {outcome.stop_reason}")
  records = observe.read_metrics(os.path.join(workdir, observe.METRICS_FILE))
  out = summarize(records, probe.records)
  sft = [r for r in records if r.get("phase") == "sft"]
  out.update({
      "framework": "astor_jax",
      "versions": {"jax": jax.__version__},
      "config": {"variant": "smoke", "rl_steps": steps,
                 "batch_prompts": int(config.rl.batch_prompts),
                 "group_size": int(config.rl.group_size),
                 "max_new_tokens": int(config.sampler.max_new_tokens),
                 "prompt_buckets": list(config.sampler.prompt_buckets),
                 "tasks": list(config.tasks), "execution_workers":
                 int(config.execution.num_workers), "sft_steps": int(config.sft.steps)},
      "sft_records": len(sft),
      "total_wall_s": round(total, 2),
      "probe_error": probe.error,
      "probes": probe.records,
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
  })
  return out


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--steps", type=int, default=8, help="RL steps (step 1 compiles)")
  ap.add_argument("--workdir", default="", help="run directory (default: a temporary one)")
  ap.add_argument("--sft-cache-dir", default="",
                  help="share the SFT warm start between runs (default: inside the workdir)")
  bench.add_cpu_buffers_flag(ap)
  ap.add_argument("--json-out", default=None)
  args = ap.parse_args(argv)
  if args.steps < 2:
    ap.error("--steps: must be >= 2 (step 1 compiles; steady figures need step 2 on)")
  # As astor_jax.main does before the job (the loop itself cannot: backends start first).
  memory_note = bench.start_process(args)
  if args.workdir:
    result = run(args.steps, args.workdir, args.sft_cache_dir, args.fresh_cpu_buffers)
  else:
    with tempfile.TemporaryDirectory(prefix="astor_bench_") as workdir:
      result = run(args.steps, workdir, args.sft_cache_dir, args.fresh_cpu_buffers)
  result["cpu_buffers"] = memory_note
  print(json.dumps({k: v for k, v in result.items() if k != "probes"}, indent=1))
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
