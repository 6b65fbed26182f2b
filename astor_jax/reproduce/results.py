"""Results: each run's eval metrics -> methods x metrics tables over seeds (Markdown, CSV)."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence

from astor_jax.eval import table as table_lib
from astor_jax.reproduce.plan import METHODS, SPECIALISTS, Method, Plan, run_metrics


def method_row(plan: Plan, method: Method, seed: int) -> dict[str, float] | None:
  """One seed's row of a method (percent, with the average), or None if unfinished."""
  if not all(plan.finished(seed, r) for r in method.runs):
    return None
  if len(method.runs) == 1:
    return table_lib.results_row(run_metrics(plan.run_dir(seed, method.runs[0])))
  combined = {}
  for run in method.runs:  # the specialists: task t's columns from specialist_t
    task = run.removeprefix("specialist_")
    combined[task] = run_metrics(plan.run_dir(seed, run)).get(task, {})
  return table_lib.results_row(combined)


COLUMNS = tuple(c.header for c in table_lib.PAPER_COLUMNS) + (table_lib.AVERAGE,)


@dataclasses.dataclass
class Summary:
  """A method's mean and sample std (ddof 1; NaN for one seed) per column over seeds."""

  method: Method
  seeds: tuple[int, ...]
  rows: tuple[dict[str, float], ...]
  mean: dict[str, float]
  std: dict[str, float]


def summarize(method: Method, rows_by_seed: Mapping[int, dict[str, float]]) -> Summary:
  seeds = tuple(sorted(rows_by_seed))
  rows = tuple(rows_by_seed[s] for s in seeds)
  mean, std = {}, {}
  for col in COLUMNS:
    values = [r[col] for r in rows if col in r]
    if not values:
      continue
    mu = sum(values) / len(values)
    mean[col] = mu
    std[col] = (math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))
                if len(values) > 1 else float("nan"))
  return Summary(method, seeds, rows, mean, std)


def collect(plan: Plan) -> list[Summary]:
  """Summaries of the plan's methods over the seeds where each finished (none: left out)."""
  out = []
  for method in METHODS:
    if not any(r.name in method.runs for r in plan.runs):
      continue
    rows = {s: row for s in plan.seeds if (row := method_row(plan, method, s)) is not None}
    if method.key == "sft" and plan.pretrained:
      method = dataclasses.replace(method, label="Base model (no RL)")
    if rows:
      out.append(summarize(method, rows))
  return out


def _cell(summary: Summary, col: str) -> str:
  if col not in summary.mean:
    return "-"
  std = summary.std[col]
  return f"{summary.mean[col]:.2f}" + ("" if math.isnan(std) else f" ± {std:.2f}")


def markdown_table(summaries: Iterable[Summary]) -> str:
  headers = ["Method", "Seeds"] + list(COLUMNS)
  lines = ["| " + " | ".join(headers) + " |",
           "|---|---:|" + "|".join("---:" for _ in COLUMNS) + "|"]
  for s in summaries:
    lines.append("| " + " | ".join([s.method.label, str(len(s.seeds))]
                                   + [_cell(s, c) for c in COLUMNS]) + " |")
  return "\n".join(lines) + "\n"


def write_results(plan: Plan, summaries: Sequence[Summary],
                  budgets: Mapping[str, int] | None = None,
                  timings: Mapping[str, Mapping[str, float]] | None = None,
                  ) -> tuple[str, str]:
  """Writes W/results.md, W/results.csv and W/results_per_seed.csv; returns the first two."""
  md_path = os.path.join(plan.workdir, "results.md")
  csv_path = os.path.join(plan.workdir, "results.csv")
  main = [s for s in summaries if s.method.group == "main"]
  ablation = [s for s in summaries if s.method.group == "ablation"]
  text = [f"# Reproduction: suite {plan.suite.name}, seeds {', '.join(map(str, plan.seeds))}\n",
          "Percent, higher is better; mean ± sample std over the seeds that finished "
          "(column Seeds). Average: mean of the ten metrics, per seed, then over seeds.\n",
          "## Main comparison\n", markdown_table(main)]
  if ablation:
    text += ["## ASTOR ablations\n", markdown_table(ablation)]
  specialists = _specialist_detail(plan)
  if specialists:
    text += ["## Each specialist on every task\n",
             "Mean over seeds; the specialists row above takes the diagonal.\n", specialists]
  if budgets:
    text += ["## Compute\n", "RL rollouts per seed (rl.steps x rl.batch_prompts x "
             "rl.group_size, summed over a method's runs; merging reuses the specialists' "
             "runs):\n", "\n".join(f"- {k}: {v}" for k, v in budgets.items()) + "\n"]
  if timings:
    wall = sum(t["wall_s"] for t in timings.values())
    cpu = sum(t["cpu_s"] for t in timings.values())
    text.append(f"Jobs run by this workdir's commands: {len(timings)}, {wall / 60:.1f} min "
                f"wall, {cpu / 60:.1f} min CPU (user + system; timings.json).\n")
  _write_text(md_path, "\n".join(text))
  tmp = csv_path + ".tmp"
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["method", "group", "seeds"] + [h for c in COLUMNS for h in (c, f"{c} std")])
    for s in summaries:
      cells = []
      for c in COLUMNS:
        cells += [_num(s.mean.get(c)), _num(s.std.get(c))]
      writer.writerow([s.method.key, s.method.group, len(s.seeds)] + cells)
  os.replace(tmp, csv_path)
  per_seed = os.path.join(plan.workdir, "results_per_seed.csv")
  with open(per_seed + ".tmp", "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["method", "seed"] + list(COLUMNS))
    for s in summaries:
      for seed, row in zip(s.seeds, s.rows):
        writer.writerow([s.method.key, seed] + [_num(row.get(c)) for c in COLUMNS])
  os.replace(per_seed + ".tmp", per_seed)
  return md_path, csv_path


def _num(value: float | None) -> str:
  return "" if value is None or math.isnan(value) else f"{value:.4f}"


def _write_text(path: str, text: str) -> None:
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def _specialist_detail(plan: Plan) -> str:
  rows = {}
  for run in SPECIALISTS:
    if not any(r.name == run for r in plan.runs):
      continue
    per_seed = [table_lib.results_row(run_metrics(plan.run_dir(s, run)))
                for s in plan.seeds if plan.finished(s, run)]
    if per_seed:
      rows[run] = {c: sum(r[c] for r in per_seed) / len(per_seed)
                   for c in COLUMNS if all(c in r for r in per_seed)}
  if not rows:
    return ""
  return table_lib.format_markdown(rows)
