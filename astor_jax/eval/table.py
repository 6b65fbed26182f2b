r"""The paper's results table: methods x ten metrics + their average, as Markdown and CSV.

Columns, in the paper's order (values are percentages, higher is better):

| column | task | metric key |
|---|---|---|
| CRUX-I | code_io | input_accuracy (CRUXEval input prediction) |
| CRUX-O | code_io | output_accuracy (CRUXEval output prediction) |
| Gen pass@1 | code_gen | pass@1 (Aider-Polyglot style, greedy) |
| Gen pass@2 | code_gen | pass@2 (second attempt after test feedback) |
| Test run | test_gen | run_rate (Defects4J's compile rate: generated tests that load and run) |
| Test line cov | test_gen | line_coverage |
| Test branch cov | test_gen | branch_coverage |
| Commit BLEU | commit_msg | bleu |
| Commit ROUGE-L | commit_msg | rouge_l |
| Commit METEOR | commit_msg | meteor |
| Average | | mean of the columns present |

Task metrics come in as percentages, as the tasks' `metrics` return them
(`{"code_io": {"input_accuracy": 41.0, ...}}`). When a run evaluates only some
tasks, or a metric is NaN (no example of that kind), the column reads "-" and
the average is over the columns present (its header says how many of the ten).

Several runs (ASTOR and the baselines, each in its own workdir) combine into one
table with:

  python -m astor_jax.eval.table runs/astor runs/uniform runs/curriculum --out=results
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence

RESULTS_DIR = "results"
EVAL_FILE = "eval.json"


@dataclasses.dataclass(frozen=True)
class Column:
  header: str
  task: str
  metric: str


PAPER_COLUMNS: tuple[Column, ...] = (
    Column("CRUX-I", "code_io", "input_accuracy"),
    Column("CRUX-O", "code_io", "output_accuracy"),
    Column("Gen pass@1", "code_gen", "pass@1"),
    Column("Gen pass@2", "code_gen", "pass@2"),
    Column("Test run", "test_gen", "run_rate"),
    Column("Test line cov", "test_gen", "line_coverage"),
    Column("Test branch cov", "test_gen", "branch_coverage"),
    Column("Commit BLEU", "commit_msg", "bleu"),
    Column("Commit ROUGE-L", "commit_msg", "rouge_l"),
    Column("Commit METEOR", "commit_msg", "meteor"),
)
AVERAGE = "Average"

TaskMetrics = Mapping[str, Mapping[str, float]]


def results_row(task_metrics: TaskMetrics) -> dict[str, float]:
  """One method's row: `{column header: percent}` plus `Average` (absent columns left out).

  Raises:
    ValueError: a metric is not a number in [0, 100] (NaN means absent).
  """
  row = {}
  for col in PAPER_COLUMNS:
    value = task_metrics.get(col.task, {}).get(col.metric)
    if value is None:
      continue
    value = float(value)
    if math.isnan(value):
      continue
    if not 0.0 <= value <= 100.0:
      raise ValueError(f"{col.task}/{col.metric}: got {value}, expected a percentage in "
                       "[0, 100]")
    row[col.header] = value
  if row:
    row[AVERAGE] = sum(row.values()) / len(row)
  return row


def _average_header(rows: Mapping[str, Mapping[str, float]]) -> str:
  counts = {sum(1 for c in PAPER_COLUMNS if c.header in r) for r in rows.values()}
  if counts == {len(PAPER_COLUMNS)} or not counts:
    return AVERAGE
  return f"{AVERAGE} (of {'/'.join(map(str, sorted(counts)))} metrics)"


def format_markdown(rows: Mapping[str, Mapping[str, float]]) -> str:
  """`rows` maps a method name to its `results_row`; returns a Markdown table."""
  headers = ["Method"] + [c.header for c in PAPER_COLUMNS] + [_average_header(rows)]
  lines = ["| " + " | ".join(headers) + " |",
           "|---|" + "|".join("---:" for _ in headers[1:]) + "|"]
  for method, row in rows.items():
    cells = [f"{row[c.header]:.2f}" if c.header in row else "-" for c in PAPER_COLUMNS]
    cells.append(f"{row[AVERAGE]:.2f}" if AVERAGE in row else "-")
    lines.append("| " + " | ".join([method] + cells) + " |")
  return "\n".join(lines) + "\n"


def write_results_table(rows: Mapping[str, TaskMetrics], out_dir: str,
                        name: str = "results") -> tuple[str, str]:
  """Writes `<out_dir>/<name>.md` and `<name>.csv` for methods x paper metrics.

  Args:
    rows: method name -> task metrics (percentages), e.g. `{"astor": {"code_io": {...}}}`.
    out_dir: directory (created).
    name: file name stem.

  Returns:
    (markdown path, csv path).
  """
  os.makedirs(out_dir, exist_ok=True)
  table = {method: results_row(metrics) for method, metrics in rows.items()}
  md_path = os.path.join(out_dir, f"{name}.md")
  csv_path = os.path.join(out_dir, f"{name}.csv")
  _write_atomic(md_path, format_markdown(table))
  tmp = csv_path + ".tmp"
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["method"] + [c.header for c in PAPER_COLUMNS] + [AVERAGE])
    for method, row in table.items():
      writer.writerow([method] + [f"{row[h]:.4f}" if h in row else "" for h in
                                  [c.header for c in PAPER_COLUMNS] + [AVERAGE]])
  os.replace(tmp, csv_path)
  return md_path, csv_path


def _write_atomic(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def load_eval(workdir: str) -> dict[str, TaskMetrics]:
  """The method rows a finished run wrote to `<workdir>/results/eval.json`."""
  path = os.path.join(workdir, RESULTS_DIR, EVAL_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: missing; run the job's eval phase in {workdir} first")
  with open(path, encoding="utf-8") as f:
    return json.load(f)["methods"]


def combine(workdirs: Sequence[str]) -> dict[str, TaskMetrics]:
  """Rows of several runs; a method name seen twice gets its workdir's name appended."""
  rows: dict[str, TaskMetrics] = {}
  for workdir in workdirs:
    for method, metrics in load_eval(workdir).items():
      key = method if method not in rows else f"{method} ({os.path.basename(workdir)})"
      rows[key] = metrics
  return rows


def main(argv: Sequence[str]) -> int:
  out = "results"
  workdirs = []
  for arg in argv:
    if arg.startswith("--out="):
      out = arg.split("=", 1)[1]
    else:
      workdirs.append(arg)
  if not workdirs:
    print("usage: python -m astor_jax.eval.table WORKDIR [WORKDIR ...] [--out=DIR]",
          file=sys.stderr)
    return 2
  try:
    md_path, csv_path = write_results_table(combine(workdirs), out)
  except (FileNotFoundError, ValueError) as e:
    print(f"astor_jax.eval.table: error: {e}", file=sys.stderr)
    return 2
  with open(md_path, encoding="utf-8") as f:
    print(f.read(), end="")
  print(f"wrote {md_path} and {csv_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
