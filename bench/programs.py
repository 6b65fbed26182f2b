r"""Where a GRPO step's time goes: each compiled program of the step on its own.

For one GRPO workload (`bench.grpo_bench`), compiles the three programs of a
step ahead of time and then calls each `--calls` times on a real rollout:

  sampler      `Sampler` (prefill + while-loop decode), one rollout batch
  logprob_fn   one reference log-prob pass over the batch rows
  train_step   the ASTOR train step as plain GRPO (fwd + bwd + AdamW)
  host         batch rows (`to_batch_rows`), device_get, detokenize, reward

For each: lower and compile seconds (wall and process CPU), XLA's cost
analysis (FLOPs, bytes; for the train step both branches of its synergy
`lax.cond` are counted although steady steps take the cheap one), HLO size,
and the median per-call wall and CPU seconds. Process CPU seconds (all
threads) change less than wall seconds when other jobs share the cores, so
they are the figure to compare between loaded runs. With `--dump-hlo DIR`
the optimized HLO of each program is written there.

  python -m bench.programs --workload both --calls 5 --json-out /tmp/programs.json

The JSON maps each workload to its record.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import bench


def cpu_seconds() -> float:
  """User + system CPU seconds of this process, all threads."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _timed(fn):
  wall, cpu = time.perf_counter(), cpu_seconds()
  out = fn()
  return out, time.perf_counter() - wall, cpu_seconds() - cpu


def _program_stats(lowered_fn, dump_dir: str, name: str) -> tuple[object, dict]:
  lowered, lower_wall, lower_cpu = _timed(lowered_fn)
  compiled, compile_wall, compile_cpu = _timed(lowered.compile)
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, list) else cost) or {}
  text = compiled.as_text() or ""
  if dump_dir:
    with open(os.path.join(dump_dir, f"{name}.optimized.hlo.txt"), "w") as f:
      f.write(text)
  return compiled, {"lower_s": round(lower_wall, 3), "lower_cpu_s": round(lower_cpu, 3),
                    "compile_s": round(compile_wall, 3), "compile_cpu_s": round(compile_cpu, 3),
                    "gflops": round(cost.get("flops", 0.0) / 1e9, 3),
                    "mbytes_accessed": round(cost.get("bytes accessed", 0.0) / 1e6, 1),
                    "hlo_lines": len(text.splitlines())}


def _calls(fn, calls: int) -> dict:
  walls, cpus = [], []
  for _ in range(calls):
    _, wall, cpu = _timed(fn)
    walls.append(wall)
    cpus.append(cpu)
  return {"call_s": round(statistics.median(walls), 4),
          "call_cpu_s": round(statistics.median(cpus), 4)}


def run(workload: str, calls: int, dump_dir: str = "") -> dict:
  """Compiles and times each program of `workload`'s step (module doc)."""
  import jax
  import numpy as np

  from astor_jax.rollout import sampler as sampler_lib
  from astor_jax.rollout.rows import to_batch_rows
  from bench import grpo_bench, toy

  if dump_dir:
    os.makedirs(dump_dir, exist_ok=True)
  s = grpo_bench.build(workload, steps=calls + 2)
  prompts = s.prompt_ids[:s.prompts]
  key = jax.random.fold_in(s.rollout_key, 0)
  sample_kwargs = dict(group_size=s.group_size, temperature=1.0, top_p=1.0, stop=s.stop)
  out = {"workload": workload, "calls": calls, "programs": {}}

  _, stats = _program_stats(lambda: s.sampler.lower(s.train_state.params, prompts, key,
                                                    **sample_kwargs), dump_dir, "sampler")
  first, wall, cpu = _timed(lambda: jax.block_until_ready(
      s.sampler(s.train_state.params, prompts, key, **sample_kwargs)))
  stats.update(first_call_s=round(wall, 3), first_call_cpu_s=round(cpu, 3))
  stats.update(_calls(lambda: jax.block_until_ready(
      s.sampler(s.train_state.params, prompts, key, **sample_kwargs)), calls))
  # A call split over host threads runs the lowered program once per part.
  stats["host_parts"] = sampler_lib.host_parts(len(prompts), s.sampler.host_threads)
  out["programs"]["sampler"] = stats

  def host():
    rows = jax.device_get(to_batch_rows(first, s.group_size))
    tokens, lengths = jax.device_get((first.tokens, first.lengths))
    texts = s.tokenizer.batch_decode([t[:n] for t, n in zip(tokens, lengths)],
                                     skip_special_tokens=True)
    return rows, np.asarray(toy.target_fraction_reward(texts), np.float32)

  (rows, rewards), wall, cpu = _timed(host)
  out["programs"]["host"] = {"first_call_s": round(wall, 3), **_calls(host, calls)}

  batch = grpo_bench.device_batch(s, rows, 0)
  _, stats = _program_stats(lambda: s.logprob_fn.lower(s.ref_params, batch), dump_dir,
                            "logprob_fn")
  ref, wall, cpu = _timed(lambda: jax.block_until_ready(s.logprob_fn(s.ref_params, batch)))
  stats.update(first_call_s=round(wall, 3), first_call_cpu_s=round(cpu, 3))
  stats.update(_calls(lambda: jax.block_until_ready(s.logprob_fn(s.ref_params, batch)), calls))
  out["programs"]["logprob_fn"] = stats

  batch = batch._replace(rewards=jax.device_put(rewards, batch.rewards.sharding),
                         ref_logprobs=ref)
  _, stats = _program_stats(lambda: s.train_step.lower(s.train_state, s.utility_state, batch),
                            dump_dir, "train_step")

  def train():
    s.train_state, s.utility_state, _ = s.train_step(s.train_state, s.utility_state, batch)
    return jax.block_until_ready(s.train_state.params)

  _, wall, cpu = _timed(train)  # utility step 0: takes the synergy branch
  stats.update(first_call_s=round(wall, 3), first_call_cpu_s=round(cpu, 3))
  stats.update(_calls(train, calls))
  out["programs"]["train_step"] = stats
  for stats in out["programs"].values():
    if stats.get("gflops") and stats.get("call_s"):
      stats["gflops_per_s"] = round(stats["gflops"] / stats["call_s"], 1)
  out["load_average"] = [round(x, 2) for x in os.getloadavg()]
  return out


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workload", choices=("tiny", "6l128", "both"), default="tiny")
  ap.add_argument("--calls", type=int, default=5, help="timed calls per program")
  ap.add_argument("--dump-hlo", default="", help="write optimized HLO text here")
  bench.add_cpu_buffers_flag(ap)
  ap.add_argument("--json-out", default=None)
  args = ap.parse_args(argv)
  memory_note = bench.start_process(args)
  workloads = ("tiny", "6l128") if args.workload == "both" else (args.workload,)
  results = {w: run(w, args.calls, os.path.join(args.dump_hlo, w) if args.dump_hlo else "")
             for w in workloads}
  for result in results.values():
    result["cpu_buffers"] = memory_note
    print_table(result)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(results, f, indent=1)


def print_table(result: dict) -> None:
  """Markdown table of one workload's programs."""
  columns = ("compile_s", "compile_cpu_s", "first_call_s", "call_s", "call_cpu_s", "gflops",
             "gflops_per_s", "hlo_lines")
  print("| program | " + " | ".join(columns) + " |")
  print("|---" * (len(columns) + 1) + "|")
  for name, stats in result["programs"].items():
    print(f"| {name} | " + " | ".join(str(stats.get(c, "")) for c in columns) + " |")
  print(f"{result['workload']}: load average {result['load_average']}")


if __name__ == "__main__":
  main()
