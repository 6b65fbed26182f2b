"""Process-tree checks for the execution tests: no job may leave a process behind."""

from __future__ import annotations

import os
import time

from astor_jax.execution import ExecutionPool
from astor_jax.execution.isolation import UIDS_PER_SLOT

# Generous: the CI machine has 2 cores shared by two pytest workers.
SLACK_S = 3.0


def children(pid: int) -> list[int]:
  try:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
      return [int(p) for p in f.read().split()]
  except OSError:
    return []


def descendants(pid: int) -> list[int]:
  out, todo = [], children(pid)
  while todo:
    p = todo.pop()
    out.append(p)
    todo += children(p)
  return out


def host_uid(pid: int) -> int | None:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("Uid:"):
          return int(line.split()[1])
  except OSError:
    return None
  return None


def assert_no_strays(pool: ExecutionPool, uid_base: int | None = None,
                     wait_s: float = 2.0) -> None:
  """Under the fork server there are exactly its workers, and under them nothing.

  With `uid_base`, also no host process runs as a worker's or a job's uid but
  the workers.
  """
  end = time.monotonic() + wait_s
  while True:
    workers = sorted(pool.worker_pids())
    tree = sorted(descendants(pool.server_pid))
    extra = []
    if uid_base is not None:
      uids = range(uid_base, uid_base + UIDS_PER_SLOT * pool.num_workers)
      extra = [int(p) for p in os.listdir("/proc") if p.isdigit()
               and host_uid(int(p)) in uids and int(p) not in workers]
    if tree == workers and not extra:
      return
    if time.monotonic() > end:
      raise AssertionError(f"stray processes: tree {tree} vs workers {workers}; "
                           f"other processes with worker uids: {extra}")
    time.sleep(0.05)



# Host uids of the shared namespaces pool: a block of its own per test process.
UID_BASE_NS = 1_900_000_000 + (os.getpid() % 1000) * 64
