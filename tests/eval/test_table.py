"""Results table: the paper's ten columns, the average, Markdown and CSV, combining runs."""

import csv
import json
import os

import pytest

from astor_jax.eval import table

FULL = {
    "code_io": {"input_accuracy": 50.0, "output_accuracy": 25.0},
    "code_gen": {"pass@1": 10.0, "pass@2": 20.0},
    "test_gen": {"run_rate": 90.0, "line_coverage": 60.0, "branch_coverage": 40.0,
                 "mutation_score": 30.0},
    "commit_msg": {"bleu": 5.0, "rouge_l": 30.0, "meteor": 20.0},
}


def test_row_has_ten_percent_columns_and_their_mean():
  row = table.results_row(FULL)
  assert len(row) == 11
  assert row["CRUX-I"] == 50.0 and row["Commit METEOR"] == 20.0
  expected = (50 + 25 + 10 + 20 + 90 + 60 + 40 + 5 + 30 + 20) / 10
  assert row[table.AVERAGE] == pytest.approx(expected)


def test_partial_row_averages_present_columns_and_says_so(tmp_path):
  md_path, csv_path = table.write_results_table(
      {"specialist": {"code_gen": {"pass@1": 30.0, "pass@2": 50.0},
                      "code_io": {"input_accuracy": float("nan")}},
       "astor": FULL}, tmp_path)
  md = open(md_path).read().splitlines()
  assert md[0].endswith("| Average (of 2/10 metrics) |")
  specialist = md[2].split("|")
  assert specialist[1].strip() == "specialist"
  assert specialist[2].strip() == "-"
  assert specialist[-2].strip() == "40.00"
  with open(csv_path) as f:
    rows = list(csv.DictReader(f))
  assert [r["method"] for r in rows] == ["specialist", "astor"]
  assert rows[0]["CRUX-I"] == "" and float(rows[0]["Average"]) == pytest.approx(40.0)
  assert float(rows[1]["Average"]) == pytest.approx(table.results_row(FULL)["Average"])


@pytest.mark.parametrize("bad", [float("inf"), 100.5, -0.1])
def test_rejects_non_fraction(bad):
  with pytest.raises(ValueError, match="code_gen/pass@1"):
    table.results_row({"code_gen": {"pass@1": bad}})


def test_combine_runs_from_workdirs(tmp_path, capsys):
  for name, value in (("astor_run", 40.0), ("uniform_run", 20.0)):
    results = tmp_path / name / table.RESULTS_DIR
    os.makedirs(results)
    method = "astor" if name == "astor_run" else "uniform"
    (results / table.EVAL_FILE).write_text(json.dumps(
        {"methods": {"sft": {"code_gen": {"pass@1": 10.0}},
                     method: {"code_gen": {"pass@1": value}}}}))
  out = tmp_path / "combined"
  assert table.main([str(tmp_path / "astor_run"), str(tmp_path / "uniform_run"),
                     f"--out={out}"]) == 0
  rows = list(csv.DictReader(open(out / "results.csv")))
  assert [r["method"] for r in rows] == ["sft", "astor", "sft (uniform_run)", "uniform"]
  assert float(rows[3]["Gen pass@1"]) == pytest.approx(20.0)
  assert "| astor |" in capsys.readouterr().out


def test_combine_names_the_missing_file(tmp_path, capsys):
  assert table.main([str(tmp_path)]) == 2
  assert "eval.json: missing" in capsys.readouterr().err
