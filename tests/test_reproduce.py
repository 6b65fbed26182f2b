"""The reproduction suite on synthetic runs: plan, equal compute, resume, tables and plots.

A fake launcher stands in for `python -m astor_jax.main` / `astor_jax.merge`: it
writes what the job writes (results/eval.json, metrics.jsonl, the merged
model's merge.json), with metrics that depend on the run and the seed, so the
tables can be checked against numpy.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from astor_jax import reproduce
from astor_jax.eval import table as table_lib

TASKS = reproduce.TASKS
# Every metric of a run: a base score per run (percent), + seed, + a per-task offset.
SCORE = {"warm_start": 10.0, "astor": 40.0, "joint_uniform": 30.0, "curriculum": 25.0,
         "merge_uniform": 20.0, "merge_task_arithmetic": 22.0, "no_schedule": 33.0,
         "no_calibration": 36.0, "no_synergy": 38.0, "kl_direction_flipped": 35.0,
         **{f"specialist_{t}": 5.0 for t in TASKS}}
# The warm start is best on commit_msg, then code_io, test_gen, code_gen (easy -> hard).
TASK_OFFSET = {"code_io": 3.0, "code_gen": 1.0, "test_gen": 2.0, "commit_msg": 4.0}


def metrics_for(run, seed):
  out = {}
  for col in table_lib.PAPER_COLUMNS:
    value = SCORE[run] + seed + TASK_OFFSET[col.task]
    if run == f"specialist_{col.task}":
      value += 50.0  # a specialist is strong on its own task only
    out.setdefault(col.task, {})[col.metric] = value
  return out


def parse(argv):
  """--name=value flags of a command as a dict."""
  return dict(a[2:].split("=", 1) for a in argv if a.startswith("--"))


class FakeJobs:
  """Records commands; writes each job's outputs; can fail one job once."""

  def __init__(self, fail_on=None):
    self.calls = []
    self.fail_on = fail_on

  def __call__(self, argv, log_path):
    self.calls.append(list(argv))
    args = parse(argv)
    if argv[2] == "astor_jax.merge":
      os.makedirs(args["out"])
      with open(os.path.join(args["out"], "merge.json"), "w") as f:
        json.dump({"method": args["method"]}, f)
      return 0
    workdir = args["workdir"]
    run, seed = os.path.basename(workdir), int(args["config.seed"])
    if self.fail_on == (seed, run):
      self.fail_on = None
      with open(log_path, "a") as f:
        f.write("Traceback: boom\n")
      return 1
    os.makedirs(os.path.join(workdir, "results"), exist_ok=True)
    name = {"warm_start": "sft", "merge_uniform": "base",
            "merge_task_arithmetic": "base"}.get(run, run)
    with open(os.path.join(workdir, "results", "eval.json"), "w") as f:
      json.dump({"methods": {name: metrics_for(run, seed)}}, f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      for step in range(1, 5):
        record = {"phase": "rl", "step": step}
        record.update({f"reward/{t}": 0.1 * step + 0.01 * seed for t in TASKS})
        f.write(json.dumps(record) + "\n")
    return 0


def quick_plan(workdir, seeds=2, methods=reproduce.METHOD_KEYS):
  return reproduce.Plan(str(workdir), reproduce.QUICK_SUITES["tiny"], seeds, methods,
                        python="python")


def test_every_method_gets_the_same_rollouts():
  plan = quick_plan("/nonexistent")
  budgets = plan.check_equal_compute()
  assert set(budgets) >= {"astor", "specialists", "joint_uniform", "curriculum",
                          "merge_uniform", "no_schedule", "kl_direction_flipped"}
  assert len(set(budgets.values())) == 1 and budgets["astor"] > 0


def test_equal_compute_check_names_the_offender(monkeypatch):
  plan = quick_plan("/nonexistent")
  resolve = reproduce.Plan.resolve

  def more_steps(self, run, seed):
    config = resolve(self, run, seed)
    if run.name == "specialist_code_gen":
      config.rl.batch_prompts += 1  # may differ per run, but the sum must match
    return config

  monkeypatch.setattr(reproduce.Plan, "resolve", more_steps)
  with pytest.raises(ValueError, match="specialists spends .* rollouts"):
    plan.check_equal_compute()

  def other_sampler(self, run, seed):
    config = resolve(self, run, seed)
    if run.name == "curriculum":
      config.sampler.temperature += 0.25  # any value other than the suite's
    return config

  monkeypatch.setattr(reproduce.Plan, "resolve", other_sampler)
  with pytest.raises(ValueError, match="run curriculum has sampler.temperature="):
    plan.check_equal_compute()


def test_commands_share_the_warm_start_and_tokenizer(tmp_path):
  plan = quick_plan(tmp_path)
  jobs = FakeJobs()
  reproduce.execute(plan, launcher=jobs, say=lambda _: None)
  mains = [c for c in jobs.calls if c[2] == "astor_jax.main"]
  merges = [c for c in jobs.calls if c[2] == "astor_jax.merge"]
  assert len(mains) == 2 * len(plan.runs) and len(merges) == 2 * 2
  for argv in mains:
    args = parse(argv)
    seed_dir = os.path.join(str(tmp_path), f"seed_{args['config.seed']}")
    assert args["workdir"].startswith(seed_dir + os.sep)
    assert args["config.compilation_cache_dir"] == os.path.join(str(tmp_path), "xla_cache")
    if "merging.py" in args["config"]:
      assert args["config.model.hf_path"] == os.path.join(args["workdir"], "model")
      assert "config.sft.cache_dir" not in args
    else:
      assert args["config.sft.cache_dir"] == os.path.join(seed_dir, "sft")
    if not (args["workdir"].endswith("warm_start") and args["config.seed"] == "0"):
      assert args["config.data.tokenizer_path"] == plan.tokenizer_dir()
  # Merges come after the four specialists of their seed; task arithmetic on the warm start.
  order = [os.path.basename(parse(c)["workdir"]) if c[2] == "astor_jax.main" else "merge"
           for c in jobs.calls[:len(jobs.calls) // 2]]
  assert order.index("merge") > max(order.index(f"specialist_{t}") for t in TASKS)
  arithmetic = [c for c in merges if "--method=task_arithmetic" in c][0]
  assert f"--base={os.path.join(str(tmp_path), 'seed_0', 'sft')}" in arithmetic
  # Curriculum runs easy to hard by the warm start's per-task scores.
  curriculum = [c for c in mains if "curriculum.py" in c[3]][0]
  assert curriculum[3].endswith(":order=commit_msg>code_io>test_gen>code_gen,base=astor.py:smoke")


def test_resume_skips_finished_runs_and_reports_the_failure(tmp_path):
  plan = quick_plan(tmp_path, seeds=1)
  jobs = FakeJobs(fail_on=(0, "joint_uniform"))
  with pytest.raises(reproduce.RunFailed, match=r"seed_0/joint_uniform: failed with status 1; "
                                                r"see .*reproduce.log[\s\S]*boom"):
    reproduce.execute(plan, launcher=jobs, say=lambda _: None)
  done_before = len(jobs.calls)
  assert plan.finished(0, "astor") and not plan.finished(0, "joint_uniform")
  jobs.calls.clear()
  reproduce.execute(plan, launcher=jobs, say=lambda _: None)
  rerun = [os.path.basename(parse(c)["workdir"]) for c in jobs.calls if c[2] == "astor_jax.main"]
  assert rerun[0] == "joint_uniform" and "astor" not in rerun and "warm_start" not in rerun
  assert done_before + len(jobs.calls) == len(plan.runs) + 2 + 1  # + 2 merges + 1 failed try
  jobs.calls.clear()
  reproduce.execute(plan, launcher=jobs, say=lambda _: None)
  assert jobs.calls == []
  # Another suite in the same workdir is refused.
  other = reproduce.Plan(str(tmp_path), reproduce.SUITES["tiny"], 1)
  with pytest.raises(ValueError, match="holds suite 'tiny-quick'"):
    reproduce.execute(other, launcher=jobs, say=lambda _: None)


def test_report_tables_match_numpy_over_seeds(tmp_path):
  seeds = 3
  plan = quick_plan(tmp_path, seeds=seeds)
  reproduce.execute(plan, launcher=FakeJobs(), say=lambda _: None)
  paths = reproduce.write_report(plan, plan.check_equal_compute())
  with open(tmp_path / "results.csv") as f:
    rows = {r["method"]: r for r in csv.DictReader(f)}
  assert list(rows)[:7] == ["sft", "astor", "specialists", "joint_uniform", "curriculum",
                            "merge_uniform", "merge_task_arithmetic"]
  for method, run in (("astor", "astor"), ("sft", "warm_start"), ("merge_uniform",
                                                                   "merge_uniform")):
    per_seed = np.array([[v for t in metrics_for(run, s).values() for v in t.values()]
                         for s in range(seeds)])
    averages = per_seed.mean(axis=1)
    assert float(rows[method]["Average"]) == pytest.approx(averages.mean(), abs=1e-4)
    assert float(rows[method]["Average std"]) == pytest.approx(averages.std(ddof=1), abs=1e-4)
    assert float(rows[method]["CRUX-I"]) == pytest.approx(per_seed[:, 0].mean(), abs=1e-4)
  # Specialists: each task's columns from that task's specialist (the +50 diagonal).
  for col in table_lib.PAPER_COLUMNS:
    want = np.mean([metrics_for(f"specialist_{col.task}", s)[col.task][col.metric]
                    for s in range(seeds)])
    assert float(rows["specialists"][col.header]) == pytest.approx(want, abs=1e-4)
  assert rows["specialists"]["seeds"] == "3"
  md = (tmp_path / "results.md").read_text()
  assert "| ASTOR | 3 | " in md and "## ASTOR ablations" in md and "w/o scheduling" in md
  assert "± 1.00" in md  # seeds 0, 1, 2 shift every metric by one: std 1
  for name in ("average.png", "learning_curves.png", "learning_curves_ablations.png"):
    assert os.path.getsize(tmp_path / "plots" / name) > 1000
  assert str(tmp_path / "results.md") in paths
  with open(tmp_path / "results_per_seed.csv") as f:
    assert sum(1 for r in csv.DictReader(f) if r["method"] == "astor") == seeds


def test_partial_seeds_are_counted_and_curves_average_over_seeds(tmp_path):
  plan = quick_plan(tmp_path, seeds=2, methods=("astor",))
  jobs = FakeJobs(fail_on=(1, "astor"))
  with pytest.raises(reproduce.RunFailed):
    reproduce.execute(plan, launcher=jobs, say=lambda _: None)
  summaries = {s.method.key: s for s in reproduce.collect(plan)}
  assert summaries["astor"].seeds == (0,) and np.isnan(summaries["astor"].std["Average"])
  assert summaries["sft"].seeds == (0, 1)
  reproduce.execute(plan, launcher=jobs, say=lambda _: None)
  curves = reproduce.learning_curves(plan, ["astor"])
  steps, values = curves["astor"]["code_gen"]
  assert steps == [1, 2, 3, 4]
  np.testing.assert_allclose(values, [0.1 * s + 0.005 for s in steps])


def test_cli_rejects_bad_flags(tmp_path):
  def run(*flags):
    return subprocess.run([sys.executable, "-m", "astor_jax.reproduce", *flags],
                          capture_output=True, text=True, check=False)

  result = run("--suite=huge", f"--workdir={tmp_path}")
  assert result.returncode == 2 and "--suite: unknown suite 'huge'" in result.stderr
  result = run("--quick", "--dry_run", "--set=rl.stepz=3", f"--workdir={tmp_path}")
  assert result.returncode == 2 and "--set rl.stepz: no such config field" in result.stderr


def test_paper_suite_starts_every_method_from_the_instruct_checkpoint(tmp_path):
  paths = [("model.hf_path", "/data/qwen"), ("data.cruxeval_path", "/data/c.jsonl"),
           ("data.mbpp_path", "/data/m.jsonl"), ("data.aider_exercises_path", "/data/a"),
           ("data.commits_path", "/data/cm.jsonl")]
  plan = reproduce.Plan(str(tmp_path), reproduce.get_suite("paper/qwen3_8b.py"), 1, extra=paths,
                        python="python")
  assert plan.pretrained
  budgets = plan.check_equal_compute()
  assert set(budgets.values()) == {400 * 128 * 8}
  warm = parse(plan.command(reproduce.RUNS_BY_NAME["warm_start"], 0))
  assert warm["config.phases"] == "('eval',)" and "config.sft.cache_dir" not in warm
  merged = reproduce.RUNS_BY_NAME["merge_task_arithmetic"]
  assert "--base=/data/qwen" in plan.merge_command(merged, 0)
  argv = plan.command(merged, 0)
  assert [a for a in argv if a.startswith("--config.model.hf_path=")] == [
      f"--config.model.hf_path={plan.merged_model_dir(0, merged.name)}"]
  assert parse(argv)["config.data.tokenizer_path"] == "/data/qwen"
  with pytest.raises(ValueError, match="--quick: only for the tiny suite"):
    reproduce.get_suite("paper/qwen3_8b.py", quick=True)
  with pytest.raises(ValueError, match="run warm_start: config.model.hf_path"):
    reproduce.Plan(str(tmp_path), reproduce.get_suite("paper/qwen3_8b.py"), 1).check_equal_compute()
