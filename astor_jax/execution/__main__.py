r"""Runs Python files in the sandbox and prints one JSON Result per line.

  python -m astor_jax.execution prog.py [more.py ...] [--timeout-s 5] [--memory-mb 512]
      [--stdin input.txt] [--workers 2] [--isolation auto|namespaces|rlimits]

Each line is {"file": ..., "status": ..., "exit_code": ..., "stdout": ..., ...}
with every field of `Result`, in the order the files were given. Exit status:
0 when every job is `ok`, 1 when some job is not, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from astor_jax.execution.job import Job, Limits
from astor_jax.execution.pool import ISOLATION_CHOICES, ExecutionPool


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m astor_jax.execution",
      description="Run Python files in the astor_jax sandbox; print one JSON Result per line.")
  p.add_argument("files", nargs="+", metavar="FILE.py", help="programs to run, one job each")
  p.add_argument("--timeout-s", type=float, default=Limits.timeout_s,
                 help="wall-clock deadline per job (default %(default)s)")
  p.add_argument("--memory-mb", type=int, default=Limits.memory_mb,
                 help="address-space limit per process (default %(default)s)")
  p.add_argument("--stdin", metavar="PATH", help="file fed to every job's standard input")
  p.add_argument("--workers", type=int, default=None,
                 help="jobs at once (default: config.execution.num_workers)")
  p.add_argument("--isolation", choices=ISOLATION_CHOICES, default="auto")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    limits = Limits(timeout_s=args.timeout_s, memory_mb=args.memory_mb)
    sources = []
    for path in args.files:
      with open(path, "rb") as f:
        sources.append(f.read())
    stdin = b""
    if args.stdin:
      with open(args.stdin, "rb") as f:
        stdin = f.read()
    jobs = [Job(source=source, stdin=stdin) for source in sources]
    pool = ExecutionPool(args.workers, limits, isolation=args.isolation)
  except (OSError, ValueError, TypeError) as e:
    parser.exit(2, f"{parser.prog}: error: {e}\n")
  with pool:
    try:
      results = pool.run(jobs)
    except ValueError as e:
      parser.exit(2, f"{parser.prog}: error: {e}\n")
  for path, result in zip(args.files, results):
    print(json.dumps({"file": path, **result.to_json()}, ensure_ascii=False), flush=True)
  return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
  sys.exit(main())
