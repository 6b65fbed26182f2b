r"""How our GRPO step time grows with batch size, G, new tokens and model depth.

Starts from the `tiny` GRPO workload (4 prompts x G=4, 64 new tokens, 4
layers of d 256) and sweeps one factor at a time, each point in its own
process (`bench.grpo_bench`), with `--steps` steps (steady = mean of steps
2..N). For each factor it fits step time ~ x^k by least squares on log-log
axes, so a run's cost can be predicted: doubling a factor multiplies the
step by 2^k. Writes a PNG with one panel per factor (steady step and its
rollout / ref / train phases).

  python -m bench.scaling --steps 4 --json-out /tmp/scaling.json --plot /tmp/scaling.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

from bench import peers as peers_lib

BASE = {"prompts": 4, "group_size": 4, "new_tokens": 64, "layers": 4}
# axis -> (grpo_bench flag / BASE key, values swept; the base value is among them)
AXES = {
    "prompts per step": ("prompts", (2, 4, 8)),
    "G": ("group_size", (2, 4, 8)),
    "new tokens": ("new_tokens", (32, 64, 128)),
    "layers": ("layers", (2, 4, 8)),
}


def fit_exponent(xs, ys) -> float:
  """Least-squares slope of log(y) on log(x)."""
  lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
  mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
  den = sum((a - mx) ** 2 for a in lx)
  return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den


def measure(settings: dict, steps: int, workdir: str) -> dict:
  """One `bench.grpo_bench` process at `settings`; its record."""
  out = os.path.join(workdir, "point_{prompts}_{group_size}_{new_tokens}_{layers}.json".format(
      **settings))
  command = [sys.executable, "-m", "bench.grpo_bench", "--workload", "tiny", "--steps",
             str(steps), "--prompts", str(settings["prompts"]), "--group-size",
             str(settings["group_size"]), "--new-tokens", str(settings["new_tokens"]),
             "--layers", str(settings["layers"]), "--json-out", out]
  proc = subprocess.run(command, capture_output=True, text=True, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  if proc.returncode != 0 or not os.path.exists(out):
    raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n"
                       f"{(proc.stdout + proc.stderr)[-2000:]}")
  with open(out) as f:
    return json.load(f)


def run(steps: int) -> dict:
  """Every point of AXES (the base point once); returns points and fitted exponents."""
  cache: dict[tuple, dict] = {}
  points = []
  with tempfile.TemporaryDirectory(prefix="astor_scaling_") as workdir:
    for axis, (key, values) in AXES.items():
      for value in values:
        settings = dict(BASE, **{key: value})
        marker = tuple(sorted(settings.items()))
        if marker not in cache:
          print(f"scaling: {settings} ...", file=sys.stderr, flush=True)
          cache[marker] = measure(settings, steps, workdir)
        view = peers_lib.grpo_view(cache[marker])
        points.append({"axis": axis, "value": value, "settings": settings,
                       "steady_step_s": view["steady_step_s"], "rollout_s": view["rollout_s"],
                       "ref_s": view["ref_s"], "train_s": view["train_s"],
                       "first_step_s": view["first_step_s"],
                       "peak_rss_mb": view["peak_rss_mb"]})
  exponents = {}
  for axis in AXES:
    rows = [p for p in points if p["axis"] == axis]
    exponents[axis] = round(fit_exponent([p["value"] for p in rows],
                                         [p["steady_step_s"] for p in rows]), 3)
  return {"base": BASE, "steps": steps, "points": points, "exponents": exponents}


def plot(result: dict, path: str) -> None:
  """One log-log panel per swept factor: steady step and its phases."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(AXES), figsize=(4 * len(AXES), 3.6), sharey=True)
  for ax, axis in zip(axes, AXES):
    rows = [p for p in result["points"] if p["axis"] == axis]
    xs = [p["value"] for p in rows]
    for field, label, style in (("steady_step_s", "step", "o-"), ("rollout_s", "rollout", ".--"),
                                ("ref_s", "ref logp", ".--"), ("train_s", "train", ".--")):
      ax.plot(xs, [p[field] for p in rows], style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel(axis)
    ax.set_title(f"k = {result['exponents'][axis]:.2f}")
    ax.grid(True, which="both", alpha=0.3)
  axes[0].set_ylabel("seconds (steady mean)")
  axes[0].legend(fontsize=8)
  base = result["base"]
  fig.suptitle(f"astor_jax GRPO step scaling from {base['prompts']} prompts x "
               f"G={base['group_size']}, {base['new_tokens']} new tokens, {base['layers']} "
               "layers (d 256)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--steps", type=int, default=4, help="GRPO steps per point (>= 2)")
  ap.add_argument("--json-out", default=None)
  ap.add_argument("--plot", default=None, help="PNG path")
  args = ap.parse_args(argv)
  if args.steps < 2:
    ap.error("--steps: must be >= 2 (step 1 compiles)")
  result = run(args.steps)
  if args.plot:
    plot(result, args.plot)
    result["plot"] = os.path.basename(args.plot)  # next to the results JSON; no host path
  print(json.dumps(result, indent=1))
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
