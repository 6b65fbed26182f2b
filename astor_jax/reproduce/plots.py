"""Plots of the suite: average score per method with error bars, learning curves per task."""

from __future__ import annotations

import collections
import json
import math
import os
from collections.abc import Mapping, Sequence

from astor_jax.eval import table as table_lib
from astor_jax.reproduce.plan import PLOTS_DIR, SPECIALISTS, TASKS, TIMINGS_FILE, Plan
from astor_jax.reproduce.results import Summary, collect, write_results
from astor_jax.train import observe


def learning_curves(plan: Plan, runs: Sequence[str]) -> dict[str, dict[str, tuple[list, list]]]:
  """run -> task -> (steps, mean training reward over seeds) from the runs' metrics.jsonl.

  A specialist contributes only its own task. Steps where a task got no prompts
  (no reward logged) are left out of that seed's mean.
  """
  out: dict[str, dict[str, tuple[list, list]]] = {}
  for run in runs:
    tasks = [run.removeprefix("specialist_")] if run in SPECIALISTS else list(TASKS)
    sums: dict[str, dict[int, list[float]]] = {t: collections.defaultdict(list) for t in tasks}
    for seed in plan.seeds:
      path = os.path.join(plan.run_dir(seed, run), observe.METRICS_FILE)
      for record in observe.read_metrics(path):
        if record.get("phase") != "rl":
          continue
        for task in tasks:
          value = record.get(f"reward/{task}")
          if value is not None:
            sums[task][int(record["step"])].append(float(value))
    curves = {t: (sorted(s), [sum(s[k]) / len(s[k]) for k in sorted(s)])
              for t, s in sums.items() if s}
    if curves:
      out[run] = curves
  return out


def _smooth(values: Sequence[float], window: int) -> list[float]:
  """Trailing moving average over `window` points (the first points average fewer)."""
  out = []
  for i in range(len(values)):
    chunk = values[max(0, i - window + 1): i + 1]
    out.append(sum(chunk) / len(chunk))
  return out


def plot_average(summaries: Sequence[Summary], path: str) -> str:
  """Bar chart: each method's average score, error bar one std, dots the seeds."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  shown = [s for s in summaries if table_lib.AVERAGE in s.mean]
  fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(shown) + 2), 4.2))
  xs = range(len(shown))
  means = [s.mean[table_lib.AVERAGE] for s in shown]
  errs = [0.0 if math.isnan(s.std[table_lib.AVERAGE]) else s.std[table_lib.AVERAGE]
          for s in shown]
  colors = ["tab:red" if s.method.key in ("astor", "astor_ref") else
            ("tab:gray" if s.method.group == "ablation" else "tab:blue") for s in shown]
  ax.bar(xs, means, yerr=errs, capsize=4, color=colors, alpha=0.8)
  for x, s in zip(xs, shown):
    seeds = [r[table_lib.AVERAGE] for r in s.rows if table_lib.AVERAGE in r]
    ax.scatter([x] * len(seeds), seeds, color="black", s=10, zorder=3)
  ax.set_xticks(list(xs), [s.method.label for s in shown], rotation=30, ha="right")
  ax.set(ylabel="average of the ten metrics (%)",
         title="Average score per method (mean ± std over seeds)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_learning_curves(curves: Mapping[str, Mapping[str, tuple[list, list]]], path: str,
                         title: str) -> str:
  """One panel per task: mean training reward over RL steps, one line per run."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
  for ax, task in zip(axes.ravel(), TASKS):
    for run, by_task in curves.items():
      if task in by_task:
        steps, values = by_task[task]
        label = "specialist" if run in SPECIALISTS else run
        ax.plot(steps, _smooth(values, max(1, len(values) // 10)), label=label)
    ax.set(title=task, xlabel="RL step", ylabel="training reward")
    if ax.has_data():
      ax.legend(fontsize="x-small")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write_report(plan: Plan, budgets: Mapping[str, int] | None = None) -> list[str]:
  """Writes the results files and plots from whatever runs have finished; returns paths."""
  summaries = collect(plan)
  if not summaries:
    raise FileNotFoundError(f"{plan.workdir}: no finished run yet; run the suite first")
  timings = None
  timings_path = os.path.join(plan.workdir, TIMINGS_FILE)
  if os.path.exists(timings_path):
    with open(timings_path, encoding="utf-8") as f:
      timings = json.load(f)
  paths = list(write_results(plan, summaries, budgets, timings))
  plots = os.path.join(plan.workdir, PLOTS_DIR)
  os.makedirs(plots, exist_ok=True)
  paths.append(plot_average(summaries, os.path.join(plots, "average.png")))
  main_runs = [r for r in ("astor", "joint_uniform", "curriculum", *SPECIALISTS)
               if any(x.name == r for x in plan.runs)]
  ablation_runs = [r for r in ("astor", "no_schedule", "no_calibration", "no_synergy",
                               "kl_direction_flipped") if any(x.name == r for x in plan.runs)]
  for runs, name, title in ((main_runs, "learning_curves.png", "Training reward per task"),
                            (ablation_runs, "learning_curves_ablations.png",
                             "Training reward per task: ASTOR ablations")):
    curves = learning_curves(plan, runs)
    if curves:
      paths.append(plot_learning_curves(curves, os.path.join(plots, name), title))
  return paths
