"""Running the plan: one subprocess of the real job per run, resumable, timed."""

from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from astor_jax.eval import table as table_lib
from astor_jax.reproduce.plan import LOG_FILE, SUITE_FILE, TIMINGS_FILE, Plan, flag_value


class RunFailed(RuntimeError):
  """A job of the suite exited with an error; the message names its log."""


def launch(argv: Sequence[str], log_path: str) -> int:
  """Runs one job, appending its output to `log_path`; returns its exit status."""
  with open(log_path, "a", encoding="utf-8") as log:
    log.write(f"\n$ {shlex.join(argv)}\n")
    log.flush()
    return subprocess.run(list(argv), stdout=log, stderr=subprocess.STDOUT, check=False,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")).returncode


def _tail(path: str, lines: int = 8) -> str:
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      return "".join(f.readlines()[-lines:])
  except OSError:
    return ""


def _write_json(path: str, data: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _check_suite_file(plan: Plan) -> None:
  """The workdir holds this suite (or nothing yet); adding seeds or methods is fine."""
  path = os.path.join(plan.workdir, SUITE_FILE)
  record = {"suite": plan.suite.name, "base": plan.suite.base,
            "overrides": [[p, flag_value(v)] for p, v in plan.suite.overrides + plan.extra]}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    for key, value in record.items():
      if saved.get(key) != value:
        raise ValueError(f"--workdir: {plan.workdir} holds suite {saved.get('suite')!r} with "
                         f"{key}={saved.get(key)!r}, not {value!r}; rerun with the same "
                         "--suite/--quick/--set flags to resume it, or use a new --workdir")
  os.makedirs(plan.workdir, exist_ok=True)
  _write_json(path, record)


def execute(plan: Plan, launcher: Callable[[Sequence[str], str], int] = launch,
            say: Callable[[str], None] | None = None) -> dict[str, dict[str, float]]:
  """Runs every unfinished job of the plan, seed by seed; returns wall/CPU seconds per job.

  Raises:
    RunFailed: a job failed (or was stopped by a signal); rerunning resumes.
  """
  say = say or (lambda line: print(line, flush=True))
  _check_suite_file(plan)
  plan.check_equal_compute()
  timings_path = os.path.join(plan.workdir, TIMINGS_FILE)
  timings: dict[str, dict[str, float]] = {}
  if os.path.exists(timings_path):
    with open(timings_path, encoding="utf-8") as f:
      timings = json.load(f)
  todo = [(s, r) for s in plan.seeds for r in plan.runs]
  for i, (seed, run) in enumerate(todo, 1):
    key = f"seed_{seed}/{run.name}"
    if plan.finished(seed, run.name):
      say(f"[{i}/{len(todo)}] {key}: finished, skipped")
      continue
    os.makedirs(plan.run_dir(seed, run.name), exist_ok=True)
    log_path = os.path.join(plan.run_dir(seed, run.name), LOG_FILE)
    say(f"[{i}/{len(todo)}] {key}: running (log: {log_path})")
    start, cpu_start = time.monotonic(), _children_cpu_s()
    steps = []
    if run.kind == "merge":
      from astor_jax.merge import MERGE_FILE

      if not os.path.exists(os.path.join(plan.merged_model_dir(seed, run.name), MERGE_FILE)):
        steps.append(plan.merge_command(run, seed))
    steps.append(plan.command(run, seed))
    for argv in steps:
      status = launcher(argv, log_path)
      if status:
        stopped = status > 128 or status < 0
        raise RunFailed(
            f"{key}: {'stopped by a signal' if stopped else f'failed with status {status}'}; "
            f"see {log_path}; rerun the same command to resume"
            + ("" if stopped else f"\n{_tail(log_path)}"))
    if not plan.finished(seed, run.name):
      raise RunFailed(f"{key}: the job ended without {table_lib.RESULTS_DIR}/"
                      f"{table_lib.EVAL_FILE}; see {log_path}")
    spent = timings.get(key, {"wall_s": 0.0, "cpu_s": 0.0})
    timings[key] = {"wall_s": spent["wall_s"] + time.monotonic() - start,
                    "cpu_s": spent["cpu_s"] + _children_cpu_s() - cpu_start}
    _write_json(timings_path, timings)
    say(f"[{i}/{len(todo)}] {key}: done in {timings[key]['wall_s']:.0f} s "
        f"({timings[key]['cpu_s']:.0f} CPU s)")
  return timings


def _children_cpu_s() -> float:
  """User + system seconds of this process's finished children."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime
