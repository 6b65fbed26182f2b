r"""Sampler throughput: our KV-cache sampler vs Tunix's Sampler and HF `generate`.

Workload (shared/bench/peers/README.md): the `bench_6l` model (Qwen2 block, 6
layers, d 256, 4 heads, vocab 2048, tied, N(0, 0.02) init, fp32), 16 prompts of
16 tokens, exactly 128 new tokens (no EOS), one warm-up call (includes
compilation), then the median of `--reps` calls. Modes: "sample" (temperature
1, top-p 1) and "greedy". Our `Sampler` runs with its defaults: on a
one-device CPU host a call is split over two host threads (`host_threads`).

Every measurement runs in a fresh process (ours included), so first-call times
and peak RSS compare like with like; with `--with-peers` the peers' own scripts
run right after ours in the same invocation, in alternating order over
`--rounds` rounds, and the table reports ratios against the faster peer.

  python -m bench.sampler_bench                       # ours only
  python -m bench.sampler_bench --with-peers --json-out /tmp/sampler.json

Peers: the scripts of shared/bench/peers (`--peer-scripts`) run in the venvs
that its run_all.sh creates under `$PEERS` (default ~/.cache/astor-peers).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import bench

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_PEER_SCRIPTS = REPO.parent / "shared" / "bench" / "peers"
MODES = ("sample", "greedy")


def run_ours(mode: str, reps: int, batch: int, prompt_len: int, new_tokens: int,
             decode_segments: int | None = None) -> dict:
  """Times our Sampler in this process; returns the peer scripts' JSON fields.

  `decode_segments` None is the Sampler's default (`sampler.auto_decode_segments`).
  """
  import jax
  import numpy as np

  from astor_jax.model import Transformer, get_preset, init_params
  from astor_jax.rollout.sampler import Sampler, auto_decode_segments

  config = get_preset("bench_6l")
  model = Transformer(config)
  params = jax.block_until_ready(init_params(model, jax.random.key(0)))
  segments = auto_decode_segments(new_tokens) if decode_segments is None else decode_segments
  sampler = Sampler(model, max_new_tokens=new_tokens, prompt_buckets=(prompt_len,), pad_id=0,
                    decode_segments=segments)
  rng = np.random.default_rng(0)
  prompts = rng.integers(3, config.vocab_size, (batch, prompt_len)).tolist()
  temperature = 1.0 if mode == "sample" else 0.0
  rng_key = jax.random.key(0)
  times = []
  for i in range(reps + 1):
    rng_key, call_key = jax.random.split(rng_key)
    start = time.perf_counter()
    out = sampler(params, prompts, call_key, temperature=temperature, top_p=1.0)
    lengths = np.asarray(out.lengths)  # waits for the device
    elapsed = time.perf_counter() - start
    assert int(lengths.sum()) == batch * new_tokens, lengths
    if i == 0:
      first = elapsed
    else:
      times.append(elapsed)
  compiles = sampler._generate._cache_size()  # noqa: SLF001 - a recompile would show here
  median = statistics.median(times)
  return {
      "framework": "astor_jax Sampler",
      "versions": {"jax": jax.__version__},
      "config": {"mode": mode, "batch": batch, "prompt_len": prompt_len,
                 "new_tokens": new_tokens, "reps": reps, "decode_segments": segments},
      "n_params": int(sum(x.size for x in jax.tree.leaves(params))),
      "compiled_programs": compiles,
      "warmup_incl_compile_s": round(first, 4),
      "times_s": [round(t, 4) for t in times],
      "median_s": round(median, 4),
      "min_s": round(min(times), 4),
      "new_tokens_per_s_median": round(batch * new_tokens / median, 1),
      "ms_per_decode_step_median": round(1000 * median / new_tokens, 3),
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
  }


def _run_json(command: list[str], env: dict, json_path: str) -> dict | None:
  """Runs one measurement process; its JSON, or None (with the log tail) on failure."""
  proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  if proc.returncode != 0 or not os.path.exists(json_path):
    tail = (proc.stdout + proc.stderr)[-2000:]
    print(f"FAILED ({proc.returncode}): {' '.join(command)}\n{tail}", file=sys.stderr)
    return None
  with open(json_path) as f:
    return json.load(f)


def measure(name: str, mode: str, args, workdir: str) -> dict | None:
  """One fresh-process measurement of `name` ("ours", "tunix" or "hf")."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
  json_path = os.path.join(workdir, f"{name}_{mode}_{time.monotonic_ns()}.json")
  common = ["--mode", mode, "--reps", str(args.reps), "--json-out", json_path]
  if name == "ours":
    command = [sys.executable, "-m", "bench.sampler_bench", "--single", *common,
               "--batch", str(args.batch), "--prompt-len", str(args.prompt_len),
               "--new-tokens", str(args.new_tokens)]
    if args.decode_segments is not None:
      command += ["--decode-segments", str(args.decode_segments)]
    if args.fresh_cpu_buffers:
      command.append("--fresh-cpu-buffers")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return _run_json(command, env, json_path)
  venv = "tunix" if name == "tunix" else "trl"
  python = os.path.join(args.peers, venv, "bin", "python")
  script = "tunix_sampler_bench.py" if name == "tunix" else "hf_generate_bench.py"
  if not os.path.exists(python):
    print(f"skipping {name}: no {python}; create it with shared/bench/peers/run_all.sh",
          file=sys.stderr)
    return None
  command = [python, os.path.join(args.peer_scripts, script), *common]
  return _run_json(command, env, json_path)


def summarize(results: dict) -> dict:
  """Per (framework, mode): medians over rounds, and ratios against the faster peer."""
  table = {}
  for (name, mode), runs in results.items():
    if not runs:
      continue
    table[(name, mode)] = {
        "rounds": len(runs),
        "tokens_per_s": statistics.median(r["new_tokens_per_s_median"] for r in runs),
        "median_call_s": statistics.median(r["median_s"] for r in runs),
        "first_call_s": statistics.median(r["warmup_incl_compile_s"] if "warmup_incl_compile_s"
                                          in r else r["warmup_s"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }
  for mode in MODES:
    ours = table.get(("ours", mode))
    peers = [table[(p, mode)] for p in ("tunix", "hf") if (p, mode) in table]
    if ours and peers:
      ours["speedup_vs_faster_peer"] = round(
          ours["tokens_per_s"] / max(p["tokens_per_s"] for p in peers), 3)
    if ours and ("tunix", mode) in table:
      ours["first_call_vs_tunix"] = round(
          ours["first_call_s"] / table[("tunix", mode)]["first_call_s"], 3)
  return table


def print_table(table: dict) -> None:
  names = {"ours": "astor_jax Sampler", "tunix": "Tunix Sampler", "hf": "HF generate"}
  header = ("| mode | framework | new tokens/s | median call (s) | first call (s) | "
            "peak RSS (MB) | x faster peer | first / Tunix |")
  print(header)
  print("|---" * 8 + "|")
  for (name, mode), row in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0] != "ours")):
    print(f"| {mode} | {names[name]} | {row['tokens_per_s']:.0f} | {row['median_call_s']:.3f} | "
          f"{row['first_call_s']:.2f} | {row['peak_rss_mb']:.0f} | "
          f"{row.get('speedup_vs_faster_peer', '')} | {row.get('first_call_vs_tunix', '')} |")


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--mode", choices=MODES + ("both",), default="both")
  ap.add_argument("--reps", type=int, default=7)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--prompt-len", type=int, default=16)
  ap.add_argument("--new-tokens", type=int, default=128)
  ap.add_argument("--rounds", type=int, default=1, help="repeat every measurement")
  ap.add_argument("--decode-segments", type=int, default=None,
                  help="our Sampler's decode loops (default: sampler.auto_decode_segments; 1: "
                  "one loop attending to the whole cache)")
  ap.add_argument("--with-peers", action="store_true",
                  help="also run Tunix's Sampler and HF generate in this invocation")
  ap.add_argument("--peers", default=os.environ.get(
      "PEERS", os.path.join(os.path.expanduser("~"), ".cache", "astor-peers")),
                  help="directory with the peer venvs (tunix/, trl/) of run_all.sh")
  ap.add_argument("--peer-scripts", default=str(DEFAULT_PEER_SCRIPTS),
                  help="directory of tunix_sampler_bench.py and hf_generate_bench.py")
  bench.add_cpu_buffers_flag(ap)
  ap.add_argument("--json-out", default=None)
  ap.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)

  if args.single:  # a child process: one framework, one mode
    memory_note = bench.start_process(args)
    result = run_ours(args.mode, args.reps, args.batch, args.prompt_len, args.new_tokens,
                      args.decode_segments)
    result["cpu_buffers"] = memory_note
    print(json.dumps(result, indent=1))
    if args.json_out:
      with open(args.json_out, "w") as f:
        json.dump(result, f, indent=1)
    return

  modes = MODES if args.mode == "both" else (args.mode,)
  names = ("ours", "tunix", "hf") if args.with_peers else ("ours",)
  results = {(name, mode): [] for name in names for mode in modes}
  with tempfile.TemporaryDirectory() as workdir:
    for round_index in range(args.rounds):
      for mode in modes:
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
          print(f"round {round_index + 1}/{args.rounds}: {name} {mode} ...", file=sys.stderr,
                flush=True)
          result = measure(name, mode, args, workdir)
          if result is not None:
            results[(name, mode)].append(result)
  table = summarize(results)
  print_table(table)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump({"workload": {"model": "bench_6l", "batch": args.batch,
                              "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                              "reps": args.reps, "rounds": args.rounds},
                 "summary": [{"framework": n, "mode": m, **row} for (n, m), row in table.items()],
                 "runs": [{"framework": n, "mode": m, **r} for (n, m), rs in results.items()
                          for r in rs]}, f, indent=1)


if __name__ == "__main__":
  main()
