"""The fork server: a warm interpreter that forks the pool's workers.

The pool starts it as a fresh `python -I` with a scrubbed environment, so it
holds nothing of the parent (no environment, no JAX threads, no model in
memory). It imports the sandbox code and the `preload` modules once, checks
whether this host allows namespaces by running one real job, then forks a
worker whenever the pool asks (at start, and to replace a dead one). Workers
inherit the warm interpreter, and each job is forked from its worker, so a job
costs one fork instead of an interpreter start. Before serving, the server
freezes its heap for the garbage collector (`gc.freeze`), so that collections
in workers and jobs never write to the pages they share with it.

Protocol on the control socket (SOCK_SEQPACKET, see protocol.py):
  pool -> server  ("init", options)               once
  server -> pool  ("hello", mode, reason, weak)   mode None: options rejected;
                                                  weak: jobs run as capless root
  pool -> server  ("spawn", slot) + [socket fd]   any number of times
  server -> pool  ("spawned", slot, pid)
The server exits when the pool closes the socket. A worker exits when its own
socket closes (the pool closes it, or the pool's process died), at the latest
when its current job's deadline has passed.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import os
import signal
import socket
import sys
import traceback

from astor_jax.execution import isolation, linux, protocol, worker
from astor_jax.execution.job import Job, Limits

PROBE_TIMEOUT_S = 60.0


def _fork_worker(slot: int, fd: int, spec: isolation.SandboxSpec,
                 control: socket.socket) -> int:
  pid = os.fork()
  if pid == 0:
    try:
      control.close()
      worker.main(slot, socket.socket(fileno=fd), spec)
    finally:
      os._exit(1)
  os.close(fd)
  return pid


def _trial(spec: isolation.SandboxSpec, control: socket.socket, job: Job, limits: Limits):
  """Runs `job` on a throwaway worker of `spec`: (Result, "") or (None, why not)."""
  ours, theirs = socket.socketpair()
  launcher = _fork_worker(0, os.dup(theirs.fileno()), spec, control)
  theirs.close()
  ours.settimeout(PROBE_TIMEOUT_S)
  worker_pid = 0
  try:
    hello = protocol.recv(ours)
    if hello[0] != "ready":
      return None, hello[1]
    worker_pid = hello[1]
    protocol.send(ours, ("job", 0, job, limits))
    return protocol.recv(ours)[2], ""
  except (EOFError, OSError) as e:
    return None, f"the test worker failed: {e}"
  finally:
    ours.close()
    for pid in {launcher, worker_pid} - {0}:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      try:
        os.waitpid(pid, 0)  # a direct child, or adopted: we are a subreaper
      except ChildProcessError:
        pass


def probe(spec: isolation.SandboxSpec, control: socket.socket) -> str:
  """Runs one job under `spec`; returns "" if it works, else why not."""
  job = Job(source="import os\nprint(os.getuid(), sorted(os.listdir('/proc'))[:1])\n")
  result, why = _trial(spec, control, job, Limits(timeout_s=PROBE_TIMEOUT_S / 2))
  if result is None:
    return why
  if result.status != "ok":
    return f"a test job ended with {result.status}: {result.detail or result.stderr[-800:]}"
  if not result.stdout.startswith(f"{isolation.JOB_UID} "):
    return f"a test job did not run as uid {isolation.JOB_UID}: {result.stdout!r}"
  return ""


_READABLE_PROBE = """
import os, sys
for path in sys.path[1:]:
  try:
    os.listdir(path)
  except FileNotFoundError:
    pass
  except PermissionError:
    print(path)
"""


def unreadable_paths(spec: isolation.SandboxSpec, control: socket.socket) -> list[str]:
  """Interpreter paths that a job of `spec` cannot read (rlimits mode as root)."""
  result, _ = _trial(spec, control, Job(source=_READABLE_PROBE), Limits())
  return result.stdout.split() if result is not None else []


def main(control_fd: int) -> None:
  control = socket.socket(fileno=control_fd)
  # Workers re-parent to us when their launcher exits; we reap them.
  linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
  (_, options), _ = protocol.recv_with_fds(control)
  for name in options["preload"]:
    try:
      importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - reported to the pool as a user error
      protocol.send_with_fds(control, ("hello", None, f"cannot import {name!r}: {e}", 0), [])
      return
  spec = isolation.SandboxSpec(isolation.NAMESPACES, tuple(options["read_only_paths"]),
                               dict(options["env"]), options["uid_base"])
  reason = "isolation='rlimits' was requested"
  if options["isolation"] in ("auto", isolation.NAMESPACES):
    reason = probe(spec, control)
  mode = isolation.NAMESPACES if not reason else isolation.RLIMITS_ONLY
  if mode != spec.isolation:
    spec = dataclasses.replace(spec, isolation=mode)
    if os.geteuid() == 0:
      unreadable = unreadable_paths(spec, control)
      if unreadable:
        spec = dataclasses.replace(spec, drop_uid=False)
        reason += (f"; moreover host uid {spec.uid_base}+ cannot read {unreadable[0]}, so "
                   "jobs run as root without capabilities: they can write files that root "
                   "owns wherever the file mode lets the owner write, and RLIMIT_NPROC does "
                   "not bind root, so only the wall-clock kill stops a fork bomb")
  protocol.send_with_fds(control, ("hello", mode, reason, not spec.drop_uid), [])
  signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel
  gc.freeze()  # workers and jobs share these pages; the collector must not touch them
  while True:
    try:
      message, fds = protocol.recv_with_fds(control)
    except (EOFError, OSError):
      break
    if message[0] == "spawn" and len(fds) == 1:
      pid = _fork_worker(message[1], fds[0], spec, control)
      protocol.send_with_fds(control, ("spawned", message[1], pid), [])
    else:
      for fd in fds:
        os.close(fd)
      break


if __name__ == "__main__":
  try:
    main(int(sys.argv[1]))
  except BaseException:  # noqa: BLE001
    traceback.print_exc()
  os._exit(0)
