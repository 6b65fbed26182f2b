"""Training plots from `metrics.jsonl`, written at the end of a run (PNG, matplotlib Agg).

- `budgets.png`: prompts per task per step as a stacked area (the schedule).
- `beta.png`: beta_k per task over steps (the calibration), log scale.
- `reward.png`: mean training reward per task over steps (steps where a task
  got no prompts have no point), with a running mean over a tenth of the run.
- `synergy.png`: the last smoothed cross-task gradient-cosine matrix as a heatmap.

Scalar names read: `budget/<task>`, `beta/<task>`, `reward/<task>` and
`synergy/<task_a>/<task_b>` of the `rl` phase records.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PLOTS_DIR = "plots"


def _series(records: Sequence[Mapping[str, Any]], name: str) -> tuple[np.ndarray, np.ndarray]:
  steps, values = [], []
  for r in records:
    value = r.get(name)
    if value is not None:
      steps.append(r["step"])
      values.append(float(value))
  return np.asarray(steps), np.asarray(values)


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_budgets(records, tasks: Sequence[str], path: str) -> str:
  steps = np.asarray([r["step"] for r in records])
  budgets = np.asarray([[r.get(f"budget/{t}") or 0.0 for t in tasks] for r in records])
  fig, ax = plt.subplots(figsize=(7, 4))
  if len(steps):
    ax.stackplot(steps, budgets.T, labels=tasks, alpha=0.85)
  ax.set(xlabel="RL step", ylabel="prompts in the batch", title="Task budgets (schedule)")
  ax.legend(loc="upper left", fontsize="small")
  return _save(fig, path)


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
  """Mean of the last `window` values at each point (fewer at the start)."""
  sums = np.cumsum(np.insert(values, 0, 0.0))
  idx = np.arange(1, len(values) + 1)
  lo = np.maximum(idx - window, 0)
  return (sums[idx] - sums[lo]) / (idx - lo)


def plot_per_task(records, tasks: Sequence[str], prefix: str, title: str, ylabel: str,
                  path: str, log_y: bool = False, smooth: bool = False) -> str:
  """One line per task; with `smooth`, raw values faint and a running mean on top."""
  fig, ax = plt.subplots(figsize=(7, 4))
  for task in tasks:
    steps, values = _series(records, f"{prefix}/{task}")
    if not len(steps):
      continue
    window = max(1, len(steps) // 10)
    if smooth and window > 1:
      (line,) = ax.plot(steps, values, alpha=0.25)
      ax.plot(steps, _running_mean(values, window), color=line.get_color(),
              label=f"{task} (mean of {window})")
    else:
      ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=task)
  if log_y and ax.has_data():
    ax.set_yscale("log")
  ax.set(xlabel="RL step", ylabel=ylabel, title=title)
  ax.legend(loc="best", fontsize="small")
  return _save(fig, path)


def plot_synergy(records, tasks: Sequence[str], path: str) -> str:
  matrix = np.full((len(tasks), len(tasks)), np.nan)
  for r in reversed(records):
    keys = [f"synergy/{a}/{b}" for a in tasks for b in tasks]
    if any(r.get(k) is not None for k in keys):
      for i, a in enumerate(tasks):
        for j, b in enumerate(tasks):
          value = r.get(f"synergy/{a}/{b}")
          matrix[i, j] = np.nan if value is None else value
      break
  fig, ax = plt.subplots(figsize=(5, 4.5))
  image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
  ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
  ax.set_yticks(range(len(tasks)), tasks)
  for i in range(len(tasks)):
    for j in range(len(tasks)):
      if np.isfinite(matrix[i, j]):
        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize="small")
  fig.colorbar(image, ax=ax, label="gradient cosine (EMA)")
  ax.set_title("Cross-task synergy (last step)")
  return _save(fig, path)


def write_training_plots(records: Sequence[Mapping[str, Any]], tasks: Sequence[str],
                         out_dir: str) -> list[str]:
  """Writes the four training plots of the `rl` records into `out_dir`; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  rl = sorted((r for r in records if r.get("phase") == "rl"), key=lambda r: r["step"])
  join = lambda name: os.path.join(out_dir, name)
  return [
      plot_budgets(rl, tasks, join("budgets.png")),
      plot_per_task(rl, tasks, "beta", "Per-task KL coefficient", "beta_k", join("beta.png"),
                    log_y=True),
      plot_per_task(rl, tasks, "reward", "Training reward per task", "mean reward",
                    join("reward.png"), smooth=True),
      plot_synergy(rl, tasks, join("synergy.png")),
  ]
