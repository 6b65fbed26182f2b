"""The smoke job end to end through the CLI: SFT + ASTOR RL + eval, and what it writes.

  python -m astor_jax.main --config=configs/astor.py:smoke --workdir=W

One run is checked for its metrics stream, checkpoints, TensorBoard events,
plots and the results table; a second invocation of the same command must
find every phase finished and change nothing.
"""

import csv
import glob
import json
import math
import os
import struct
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("code_io", "code_gen", "test_gen", "commit_msg")

pytestmark = pytest.mark.slow


def _run(workdir: str) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  # The job runs on the default single CPU device, as a user's would.
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  return subprocess.run(
      [sys.executable, "-m", "astor_jax.main", "--config=configs/astor.py:smoke",
       f"--workdir={workdir}", "--config.log.progress_bar=false"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _check_metrics_stream(smoke):
  records = _records(smoke["workdir"])
  phases = {r["phase"] for r in records}
  assert phases == {"sft", "rl", "eval"}
  rl = [r for r in records if r["phase"] == "rl"]
  assert [r["step"] for r in rl] == list(range(1, len(rl) + 1)) and len(rl) == 6
  for r in rl:
    for key in ("loss", "reward", "grad_norm", "kl", "entropy", "clip_fraction",
                "tokens_per_s", "time/sample", "time/train", "time/score_wait"):
      assert math.isfinite(r[key]), (r["step"], key)
    assert sum(r[f"budget/{t}"] for t in TASKS) == 8
    assert all(r[f"beta/{t}"] > 0 for t in TASKS)
  sft = [r for r in records if r["phase"] == "sft"]
  assert sft[-1]["loss"] < sft[0]["loss"]


def _check_checkpoints_and_sft_cache(smoke):
  workdir = smoke["workdir"]
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps[-1] == 6
  assert "60" in os.listdir(os.path.join(workdir, "sft"))


def _scalars(path: str) -> dict[str, list[float]]:
  """Scalars of a TensorBoard event file (TFRecord framing of Event protos)."""
  from tensorboardX.proto import event_pb2

  out: dict[str, list[float]] = {}
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos + 12 <= len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
    pos += 12 + length + 4
    for value in event.summary.value:
      out.setdefault(value.tag, []).append(value.simple_value)
  return out


def _check_tensorboard_events(smoke):
  for phase, tag in (("rl", "reward/commit_msg"), ("rl", "time/train"), ("sft", "loss")):
    files = glob.glob(os.path.join(smoke["workdir"], "tensorboard", phase, "events.out.*"))
    assert files, phase
    values = [v for path in files for v in _scalars(path).get(tag, [])]
    assert values and all(math.isfinite(v) for v in values), (phase, tag)


def _check_plots(smoke):
  for name in ("budgets", "beta", "reward", "synergy"):
    image = matplotlib.image.imread(os.path.join(smoke["workdir"], "plots", f"{name}.png"))
    assert image.ndim == 3 and image.shape[0] > 100


def _check_results_table(smoke):
  results = os.path.join(smoke["workdir"], "results")
  with open(os.path.join(results, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["method"] for r in rows] == ["sft", "astor"]
  for row in rows:
    values = [float(row[k]) for k in row if k != "method"]
    assert len(values) == 11 and all(0.0 <= v <= 100.0 for v in values)
  with open(os.path.join(results, "results.md")) as f:
    md = f.read()
  assert "| astor |" in md and "Average" in md
  with open(os.path.join(results, "eval.json")) as f:
    record = json.load(f)
  assert record["rl_step"] == 6 and set(record["methods"]["astor"]) == set(TASKS)
  # Every evaluated example's completion and reward, agreeing with the summary.
  with open(os.path.join(results, "eval_samples.jsonl")) as f:
    samples = [json.loads(line) for line in f]
  for method in ("sft", "astor"):
    for task in TASKS:
      mine = [s for s in samples if s["method"] == method and s["task"] == task]
      detail = record["details"][method][task]
      assert len(mine) == detail["examples"] > 0
      assert len({s["id"] for s in mine}) == len(mine)
      assert np.mean([s["reward"] for s in mine]) == pytest.approx(detail["mean_reward"])
      assert all(isinstance(s["completion"], str) and s["rl_step"] == 6 for s in mine)
      assert sum("retry_completion" in s for s in mine) == detail["retries"]


def _check_rerun_finds_everything_done(smoke):
  second = smoke["second"]
  assert second.returncode == 0, second.stderr[-4000:]
  assert "already" in second.stderr
  with open(os.path.join(smoke["workdir"], "metrics.jsonl")) as f:
    assert f.read() == smoke["metrics_text"]


def test_smoke_job_end_to_end(tmp_path):
  """One smoke run (one test, so `pytest -n` runs it once), then the same command again."""
  workdir = str(tmp_path / "run")
  first = _run(workdir)
  assert first.returncode == 0, first.stderr[-4000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    metrics_text = f.read()
  smoke = dict(workdir=workdir, first=first, second=_run(workdir), metrics_text=metrics_text)
  _check_metrics_stream(smoke)
  _check_checkpoints_and_sft_cache(smoke)
  _check_tensorboard_events(smoke)
  _check_plots(smoke)
  _check_results_table(smoke)
  _check_rerun_finds_everything_done(smoke)
