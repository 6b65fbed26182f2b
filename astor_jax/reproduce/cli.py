"""`python -m astor_jax.reproduce`: flags, validation at the boundary, and the report."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

from astor_jax.reproduce.plan import METHOD_KEYS, Plan, get_suite, parse_value
from astor_jax.reproduce.plots import write_report
from astor_jax.reproduce.running import RunFailed, execute


def fail(message: str) -> None:
  """Prints one line naming the flag and the fix, exits with status 2."""
  print(f"astor_jax.reproduce: error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv: Sequence[str]) -> None:
  from absl import flags

  if len(argv) > 1:
    fail(f"unexpected arguments {list(argv[1:])}; see --help")
  f = flags.FLAGS
  if not f.workdir:
    fail("--workdir: missing; pass --workdir=DIR (created if absent)")
  seeds = f.seeds if f.seeds is not None else (1 if f.quick else 3)
  if seeds < 1:
    fail(f"--seeds: got {seeds}, expected a positive integer")
  methods = tuple(m for m in f.only.split(",") if m) if f.only else METHOD_KEYS
  unknown = [m for m in methods if m not in METHOD_KEYS]
  if unknown:
    fail(f"--only: unknown method {unknown[0]!r}; use some of {', '.join(METHOD_KEYS)}")
  extra = []
  for item in f.set:
    path, eq, value = item.partition("=")
    if not eq:
      fail(f"--set: {item!r} is not FIELD=VALUE; e.g. --set=astor.tau=1.0")
    extra.append((path.removeprefix("config."), parse_value(value)))
  try:
    plan = Plan(f.workdir, get_suite(f.suite, f.quick), seeds, methods, extra)
    if os.path.exists(plan.workdir) and not os.path.isdir(plan.workdir):
      fail(f"--workdir: {plan.workdir} is a file; pass a directory")
    budgets = plan.check_equal_compute()
    if f.dry_run:
      print(f"equal compute: {budgets}")
      for seed in plan.seeds:
        for run in plan.runs:
          state = "finished" if plan.finished(seed, run.name) else "to run"
          print(f"# seed_{seed}/{run.name} ({state})")
          if run.kind == "merge":
            print("  " + shlex.join(plan.merge_command(run, seed)))
          print("  " + shlex.join(plan.command(run, seed)))
      return
    if not f.report_only:
      execute(plan)
    for path in write_report(plan, budgets):
      print(f"wrote {path}")
  except (ValueError, FileNotFoundError, RunFailed) as e:
    fail(str(e))


def run() -> None:
  from absl import app, flags

  flags.DEFINE_string("suite", "tiny", "Which suite: tiny.")
  flags.DEFINE_integer("seeds", None, "Seeds per method (0 .. seeds-1); default 3, with "
                                      "--quick 1.")
  flags.DEFINE_string("workdir", None, "Directory of the suite (created; resumed if present).")
  flags.DEFINE_bool("quick", False, "The quick sizes (same table shape, minutes not hours).")
  flags.DEFINE_string("only", "", f"Comma-separated methods to run (default all: "
                                  f"{', '.join(METHOD_KEYS)}).")
  flags.DEFINE_multi_string("set", [], "FIELD=VALUE override for every run of every method "
                                       "(equal tuning), e.g. --set=astor.tau=1.0.")
  flags.DEFINE_bool("report_only", False, "Only write results and plots from finished runs.")
  flags.DEFINE_bool("dry_run", False, "Check equal compute and print every command; run nothing.")
  app.run(main)

