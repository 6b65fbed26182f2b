"""A worker: one long-lived process that runs jobs one at a time, one fork each.

Process tree (namespaces mode; see isolation.py for what each step isolates):

  fork server
    └─ worker: pid 1 of its own pid namespace, inside its own user, network,
       UTS, IPC and mount namespaces (read-only minimal root, its own /tmp)
        └─ program (one per job): uid 1000 in a user namespace of its own, no
           capabilities, its own session, rlimits, working directory /tmp/job
           in the otherwise empty /tmp
            └─ anything the program starts

Because a worker runs one job at a time and is the init of its pid namespace,
every process in that namespace besides the worker belongs to the current
job: `kill(-1, SIGKILL)` from the worker ends the whole job, whatever it did
(setsid, double fork, fork bomb), and the kernel never lets a process leave a
pid namespace. Signals from the job to the worker are dropped (the kernel
protects a namespace's init), and orphans are reparented to it and reaped.
The worker enforces the wall-clock deadline and the output cap from outside
the job and kills all leftovers as soon as the program's process exits.

The same argument makes /tmp and the IPC namespace per worker rather than
per job: once `kill(-1)` has ended a job, nothing of it runs, so the worker
empties /tmp and removes every System V IPC object before the next job starts,
and nothing of one job reaches the next (see isolation.py). That keeps the
per-job work to one fork, a uid change, a user namespace (for what the kernel
keeps per uid, e.g. keyrings) and a few file operations.

In rlimits mode the worker is a subreaper instead: a job's orphans come back
to it, and it kills its children, repeatedly, until none is left.

Setup failures in the program's process travel to the worker on a pipe that
the program never holds: a type byte, a 4-byte length, a message.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback

from astor_jax.execution import isolation, linux, protocol, runner
from astor_jax.execution.job import PROGRAM_FILE, Job, Limits, Result

# shutil and tempfile are imported where used (rlimits mode, or a job that left
# a mess in /tmp): with the compression and random modules they pull in they
# would add ~45 memory mappings that every job's fork copies.

REC_ERROR = b"E"
_REC = struct.Struct("<cI")

# After the program's process tree is gone, how long to wait for output EOF.
_DRAIN_GRACE_S = 0.5
_EXIT_SETUP_FAILED = 126
_HIGH_FD = 64


def _record(fd: int, kind: bytes, payload: bytes) -> None:
  os.write(fd, _REC.pack(kind, len(payload)) + payload)


def _parse_records(data: bytes) -> list[tuple[bytes, bytes]]:
  records, i = [], 0
  while i + _REC.size <= len(data):
    kind, n = _REC.unpack_from(data, i)
    i += _REC.size
    records.append((kind, data[i:i + n]))
    i += n
  return records


def _children() -> list[int]:
  """Live child pids of this (single-threaded) process."""
  try:
    with open(f"/proc/self/task/{os.getpid()}/children") as f:
      return [int(p) for p in f.read().split()]
  except OSError:
    return []


def _reap(flags: int, usage: list) -> bool:
  """Reaps one child into `usage`; False when there is none (ready)."""
  try:
    pid, _, ru = os.wait4(-1, flags)
  except ChildProcessError:
    return False
  if pid == 0:
    return False
  usage.append(ru)
  return True


def sweep(usage: list, timeout_s: float = 5.0) -> None:
  """SIGKILLs and reaps every child of this process, repeatedly, until none is left.

  The caller is a subreaper, so a job's orphans (double-forked daemons) come
  back to it. Only our own unreaped children are signalled: their pids cannot
  have been reused.
  """
  end = time.monotonic() + timeout_s
  while True:
    kids = _children()
    for pid in kids:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    reaped = False
    while _reap(os.WNOHANG, usage):
      reaped = True
    if (not kids and not reaped) or time.monotonic() > end:
      return
    if kids and not reaped:
      time.sleep(0.0005)


def _to_high_fd(fd: int) -> int:
  return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)


class _Pipes:
  """The job's pipes and stdin, created in the worker before it forks."""

  def __init__(self, stdin: bytes, devnull: int):
    self.out_r, self.out_w = os.pipe()
    self.err_r, self.err_w = os.pipe()
    self.status_r, self.status_w = os.pipe()
    self.mark_r, self.mark_w = os.pipe()
    self.own_stdin = bool(stdin)
    if not self.own_stdin:
      self.stdin = devnull  # the worker's, kept open
      return
    self.stdin = os.memfd_create("stdin", os.MFD_CLOEXEC)
    view = memoryview(stdin)
    while view:
      view = view[os.write(self.stdin, view):]
    os.lseek(self.stdin, 0, os.SEEK_SET)

  def program_ends(self) -> list[int]:
    """What the worker closes once the program's process has them."""
    own = [self.stdin] if self.own_stdin else []
    return [self.out_w, self.err_w, self.mark_w, self.status_w, *own]

  def worker_ends(self) -> list[int]:
    return [self.out_r, self.err_r, self.status_r, self.mark_r]


def _encode(text: str | bytes) -> bytes:
  return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


def _chown_tree(path: str, uid: int, walk: bool = True) -> None:
  os.chown(path, uid, uid)
  if not walk:
    os.chown(os.path.join(path, PROGRAM_FILE), uid, uid)
    return
  for root, dirs, files in os.walk(path):
    for name in dirs + files:
      os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)


def _write_files(workdir: str, job: Job) -> None:
  with open(os.path.join(workdir, PROGRAM_FILE), "wb") as f:
    f.write(_encode(job.source))
  for rel, content in job.files.items():
    path = os.path.join(workdir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(_encode(content))


def _close_all(fds) -> None:
  for fd in fds:
    try:
      os.close(fd)
    except OSError:
      pass


class Worker:
  """Runs jobs for one pool slot, in the process the fork server made."""

  def __init__(self, slot: int, spec: isolation.SandboxSpec, sock_fd: int = -1):
    self.slot = slot
    self.sock_fd = sock_fd
    self.spec = spec
    self.namespaces = spec.isolation == isolation.NAMESPACES
    self.last_cap = linux.last_capability()
    self.host_uid = (isolation.job_host_uid(spec.uid_base, slot)
                     if os.geteuid() == 0 and spec.drop_uid and not self.namespaces else None)
    self.host_pid = os.getpid()
    self.scratch = None
    # Namespaces mode: JOB_UID when the worker's user namespace maps it (root
    # host: jobs take it before making their own user namespace); None
    # (rootless): jobs keep the worker's uid.
    self.job_uid: int | None = None
    self.tmp_mb = 0  # the size cap /tmp has now
    self.devnull = -1  # stdin of jobs without any
    self.rlimit_cache: dict[Limits, tuple] = {}

  def setup(self) -> None:
    """Isolates this worker; in namespaces mode it returns in a new process, pid 1.

    Also installs the jobs' environment as this worker's own: every job
    inherits it as is, which saves each job rebuilding it.
    """
    env = {"HOME": isolation.JOB_DIR_NS, "TMPDIR": "/tmp", **self.spec.env}
    os.environ.clear()
    os.environ.update(env)
    if os.readlink("/proc/self") != str(os.getpid()):
      # Pids read from /proc would name other processes than os.kill reaches.
      raise OSError("/proc belongs to another pid namespace than this process; run the "
                    "pool where /proc matches (e.g. `unshare --pid --fork --mount-proc`)")
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if not self.namespaces:
      linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
      linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
      linux.drop_bounding_set(self.last_cap)
      import tempfile
      self.scratch = tempfile.mkdtemp(prefix="astor-exec-")
      os.chmod(self.scratch, 0o711)
      self._prepare_jobs()
      return
    isolation.enter_worker_namespaces(self.slot, self.spec)
    linux.unshare(linux.CLONE_NEWPID | linux.CLONE_NEWIPC)
    if os.fork() != 0:
      os._exit(0)  # the fork server (a subreaper) adopts and later reaps the worker
    # Our host pid, read through the host's /proc before our own covers it.
    self.host_pid = int(os.readlink("/proc/self"))
    isolation.mount_worker_proc()
    if os.getpid() != 1 or os.readlink("/proc/self") != "1":
      raise OSError("the worker is not pid 1 of a fresh pid namespace")
    for sig in signal.valid_signals():
      if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
        try:
          signal.signal(sig, signal.SIG_IGN if sig in (signal.SIGPIPE, signal.SIGXFSZ)
                        else signal.SIG_DFL)  # SIG_DFL: the kernel drops them for init
        except (OSError, ValueError):
          pass
    linux.prctl(linux.PR_SET_DUMPABLE, 0)  # jobs may not ptrace us or read our /proc
    isolation.mount_worker_tmp(Limits.max_disk_mb)
    self.tmp_mb = Limits.max_disk_mb
    self.job_uid = isolation.JOB_UID if isolation.job_uid_is_mapped() else None
    # Inherited by every job: no execve can give it a capability back.
    linux.drop_bounding_set(self.last_cap)
    linux.drop_ambient_and_gain()
    self._prepare_jobs()

  def _prepare_jobs(self) -> None:
    """What every job would otherwise redo: stdin for jobs without, signal fixes,
    standard streams (made while fds 0-2 are of the kinds the jobs' will be)."""
    self.devnull = _to_high_fd(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    try:
      saved = [_to_high_fd(fd) for fd in (0, 1, 2)]
    except OSError:  # a closed standard fd: each job makes its streams
      runner.prepare(with_stdio=False)
      return
    read_end, write_end = os.pipe()
    try:
      os.dup2(self.devnull, 0)
      os.dup2(write_end, 1)
      os.dup2(write_end, 2)
      runner.prepare(with_stdio=True)
    finally:
      for fd, old in enumerate(saved):
        os.dup2(old, fd)
      _close_all([*saved, read_end, write_end])

  def close(self) -> None:
    if self.scratch:
      import shutil
      shutil.rmtree(self.scratch, ignore_errors=True)

  # ------------------------------------------------------------ worker side
  def run(self, job: Job, limits: Limits) -> Result:
    """Runs one job to completion; always returns a Result."""
    start = time.monotonic()
    usage: list = []
    pipes = None
    workdir = isolation.JOB_DIR_NS
    try:
      if self.namespaces:
        self._fill_tmp(job, limits)
      else:
        import tempfile
        workdir = tempfile.mkdtemp(prefix="job-", dir=self.scratch)
        _write_files(workdir, job)
        if self.host_uid is not None:
          _chown_tree(workdir, self.host_uid)
      token = os.urandom(16)
      rlimits = self._rlimits(limits)
      pipes = _Pipes(_encode(job.stdin), self.devnull)
      program = os.fork()
      if program == 0:
        self._program(job, rlimits, pipes, workdir, token)  # never returns
      _close_all(pipes.program_ends())
      outcome = self._watch(program, pipes, limits, start, usage)
      return self._classify(job, limits, outcome, usage, token, start)
    except Exception:  # noqa: BLE001 - a sandbox bug must come back as a Result
      self._kill_all(usage)
      return Result(status="sandbox_error", exit_code=None, wall_s=time.monotonic() - start,
                    detail="worker failed: " + traceback.format_exc(limit=8))
    finally:
      if pipes is not None:
        _close_all(pipes.worker_ends())
      if self.namespaces:
        # Every process of the job is gone (_kill_all ran): nothing can race this.
        linux.remove_sysv_ipc()
        self._empty_tmp(job)
      elif workdir != isolation.JOB_DIR_NS:
        _force_rmtree(workdir)

  def _fill_tmp(self, job: Job, limits: Limits) -> None:
    """The job's working directory in the (empty) /tmp, sized for this job."""
    if limits.max_disk_mb != self.tmp_mb:
      isolation.resize_worker_tmp(limits.max_disk_mb)
      self.tmp_mb = limits.max_disk_mb
    os.mkdir(isolation.JOB_DIR_NS, 0o755)
    _write_files(isolation.JOB_DIR_NS, job)
    if self.job_uid is not None:
      _chown_tree(isolation.JOB_DIR_NS, self.job_uid, bool(job.files))

  def _empty_tmp(self, job: Job) -> None:
    """Leaves /tmp empty: the job's own files removed, or a fresh tmpfs mounted.

    Rootless, the job's uid is the worker's, so the job owns /tmp itself and
    could leave its mode, times or extended attributes for the next job: there
    a fresh tmpfs replaces it after every job.
    """
    job_dir = isolation.JOB_DIR_NS
    if self.job_uid is None:
      isolation.replace_worker_tmp(self.tmp_mb)
      return
    try:  # the usual case: only what _fill_tmp wrote is there
      if not job.files:
        os.unlink(os.path.join(job_dir, PROGRAM_FILE))
      os.rmdir(job_dir)
      if not os.listdir("/tmp"):
        return
    except OSError:
      pass
    import shutil
    try:
      for entry in os.scandir("/tmp"):
        if entry.is_dir(follow_symlinks=False):
          shutil.rmtree(entry.path)
        else:
          os.unlink(entry.path)
      if not os.listdir("/tmp"):
        return
    except (OSError, RecursionError):
      pass
    isolation.replace_worker_tmp(self.tmp_mb)

  def _kill_all(self, usage: list) -> None:
    """Kills and reaps every process of the job (everything but this worker)."""
    if self.namespaces:
      if os.getpid() != 1:  # never kill(-1) outside our own pid namespace
        raise RuntimeError("worker is not pid 1 of its pid namespace")
      try:
        os.kill(-1, signal.SIGKILL)
      except ProcessLookupError:
        pass
      while _reap(0, usage):
        pass
    else:
      sweep(usage)

  def _watch(self, program: int, pipes: _Pipes, limits: Limits, start: float,
             usage: list) -> dict:
    """Reads the job's streams until its processes are gone, enforcing the limits."""
    cap = limits.max_output_bytes
    streams = {pipes.out_r: bytearray(), pipes.err_r: bytearray()}
    truncated = {pipes.out_r: False, pipes.err_r: False}
    status, marks = bytearray(), bytearray()
    program_fd = os.pidfd_open(program)  # our unreaped child: the pid is ours
    poller = select.poll()
    live = set(pipes.worker_ends())
    for fd in [*live, program_fd]:
      poller.register(fd, select.POLLIN)
    deadline = start + limits.timeout_s
    stop_reason = None
    wait_status = None
    ended_at = None
    drain_until = None

    def stop(reason: str) -> None:
      nonlocal stop_reason
      if stop_reason is None:
        stop_reason = reason
      if self.namespaces:
        if os.getpid() == 1:
          try:
            os.kill(-1, signal.SIGKILL)
          except ProcessLookupError:
            pass
      else:
        # The program's own process group first (it is our unreaped child, so
        # its pid, which is also the group id, cannot have been reused), then
        # every child we have: orphans that left the group came back to us.
        for kill, pid in [(os.killpg, program)] + [(os.kill, p) for p in _children()]:
          try:
            kill(pid, signal.SIGKILL)
          except ProcessLookupError:
            pass

    try:
      while True:
        now = time.monotonic()
        if wait_status is not None:
          if not live:  # every writer is dead: all output is in
            break
          drain_until = drain_until or now + _DRAIN_GRACE_S
          if now >= drain_until:
            break
          wait_s = drain_until - now
        elif stop_reason is not None:
          stop(stop_reason)  # again: catches anything forked or reparented since
          wait_s = 0.05
        elif now >= deadline:
          stop("timeout")
          wait_s = 0.05
        else:
          wait_s = deadline - now
        for fd, _ in poller.poll(wait_s * 1000):
          if fd == program_fd:
            poller.unregister(program_fd)
            _, wait_status, ru = os.wait4(program, 0)
            usage.append(ru)
            ended_at = time.monotonic()
            self._kill_all(usage)  # nothing may outlive the program's process
            continue
          data = os.read(fd, 1 << 16)
          if not data:
            poller.unregister(fd)
            live.discard(fd)
          elif fd in streams:
            room = cap - len(streams[fd])
            streams[fd] += data[:max(room, 0)]
            if len(data) > room:
              truncated[fd] = True
              if stop_reason is None and wait_status is None:
                stop("output_limit")
          elif fd == pipes.status_r:
            status += data
          elif len(marks) < 4096:
            marks += data
    finally:
      os.close(program_fd)
    return {"stdout": bytes(streams[pipes.out_r]), "stderr": bytes(streams[pipes.err_r]),
            "stdout_truncated": truncated[pipes.out_r],
            "stderr_truncated": truncated[pipes.err_r], "status": bytes(status),
            "marks": bytes(marks), "stop_reason": stop_reason, "wait_status": wait_status,
            "ended_at": ended_at or time.monotonic()}

  def _classify(self, job: Job, limits: Limits, o: dict, usage: list, token: bytes,
                start: float) -> Result:
    cpu_s = sum(ru.ru_utime + ru.ru_stime for ru in usage)
    peak_mb = max((ru.ru_maxrss for ru in usage), default=0) / 1024.0
    stdout = o["stdout"].decode("utf-8", "replace")
    stderr = o["stderr"].decode("utf-8", "replace")
    common = dict(stdout=stdout, stderr=stderr, stdout_truncated=o["stdout_truncated"],
                  stderr_truncated=o["stderr_truncated"], wall_s=o["ended_at"] - start,
                  cpu_s=cpu_s, peak_memory_mb=peak_mb)
    errors = [p.decode("utf-8", "replace") for k, p in _parse_records(o["status"])
              if k == REC_ERROR]
    marks = o["marks"]
    if o["stop_reason"] == "timeout":
      return Result("timeout", None, **common,
                    detail=f"killed at the {limits.timeout_s:g} s wall-clock deadline")
    if o["stop_reason"] == "output_limit":
      return Result("output_limit", None, **common,
                    detail=f"wrote more than max_output_bytes={limits.max_output_bytes}")
    if errors:
      return Result("sandbox_error", None, **common, detail="; ".join(errors))
    code = os.waitstatus_to_exitcode(o["wait_status"])
    if code < 0:
      sig = -code
      if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= limits.cpu_limit_s):
        return Result("timeout", code, **common,
                      detail=f"exceeded its CPU-time limit of {limits.cpu_limit_s} s")
      if _out_of_memory(stderr):
        return Result("memory", code, **common, detail="allocation failure")
      name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
      return Result("killed", code, **common, detail=f"terminated by signal {name}")
    if code != 0 and (token + runner.MARK_MEMORY in marks or _out_of_memory(stderr)):
      return Result("memory", code, **common,
                    detail=f"ran out of its memory_mb={limits.memory_mb} address space")
    if code != 0:
      return Result("error", code, **common)
    if job.tests and token + runner.MARK_TESTS_DONE not in marks:
      return Result("error", code, **common,
                    detail="the program exited before its tests finished")
    return Result("ok", code, **common)

  # ------------------------------------------------------------ program side
  def _rlimits(self, limits: Limits) -> tuple:
    """isolation.rlimit_settings(limits), worked out once per distinct Limits."""
    settings = self.rlimit_cache.get(limits)
    if settings is None:
      if len(self.rlimit_cache) >= 64:
        self.rlimit_cache.clear()
      settings = self.rlimit_cache[limits] = isolation.rlimit_settings(limits)
    return settings

  def _program(self, job: Job, rlimits: tuple, pipes: _Pipes, workdir: str,
               token: bytes) -> None:
    """The program's process: the last isolation steps, then the program itself."""
    status_w = _to_high_fd(pipes.status_w)
    try:
      os.setsid()
      if self.namespaces:  # pid 1's death kills us: no PDEATHSIG needed
        outer_uid = 0
        if self.job_uid is not None:
          # All uids leave 0: the kernel clears every capability.
          os.setresgid(self.job_uid, self.job_uid, self.job_uid)
          os.setresuid(self.job_uid, self.job_uid, self.job_uid)
          outer_uid = self.job_uid
        # After the uid change, which resets it: our own /proc (uid_map, /dev/stdin).
        linux.set_dumpable()
        isolation.enter_program_user_namespace(outer_uid)
      else:
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if self.host_uid is not None:
          isolation.drop_to_uid(self.host_uid)
        linux.drop_capabilities()
        linux.set_dumpable()
      os.chdir(workdir)
      high = [_to_high_fd(fd) for fd in (pipes.stdin, pipes.out_w, pipes.err_w, pipes.mark_w)]
      for target, fd in enumerate(high[:3]):
        os.dup2(fd, target, inheritable=True)
      os.dup2(high[3], 3, inheritable=False)
      os.closerange(4, status_w)
      os.closerange(status_w + 1, 1 << 16)
      if not self.namespaces:  # the rest was set once, in setup()
        for name in ("HOME", "TMPDIR"):
          if name not in self.spec.env:
            os.environ[name] = workdir
      os.umask(0o022)
      isolation.apply_rlimits(rlimits)
      os.close(status_w)
    except BaseException:  # noqa: BLE001
      _safe_record(status_w, "program setup: " + traceback.format_exc(limit=4))
      os._exit(_EXIT_SETUP_FAILED)
    runner.run_program(os.path.join(workdir, PROGRAM_FILE), job.argv, job.tests, 3, token)
    os._exit(0)  # not reached


def _safe_record(fd: int, message: str) -> None:
  try:
    _record(fd, REC_ERROR, message.encode("utf-8", "replace")[:4000])
  except OSError:
    pass


def _force_rmtree(path: str) -> None:
  """rmtree that also removes what the job made unreadable (chmod 000 dirs)."""
  import shutil

  def fix(func, p, _):
    try:
      os.chmod(os.path.dirname(p), 0o700)
      if os.path.isdir(p) and not os.path.islink(p):
        os.chmod(p, 0o700)
      func(p)
    except OSError:
      pass
  for _ in range(3):
    if sys.version_info >= (3, 12):
      shutil.rmtree(path, onexc=fix)
    else:
      shutil.rmtree(path, onerror=fix)
    if not os.path.lexists(path):
      return


def _out_of_memory(stderr: str) -> bool:
  lines = stderr.rstrip().splitlines()
  if not lines:
    return False
  last = lines[-1]
  return (last.startswith("MemoryError") or "Cannot allocate memory" in last
          or "std::bad_alloc" in last or "out of memory" in last.lower())


def main(slot: int, sock: socket.socket, spec: isolation.SandboxSpec) -> None:
  """Worker process body (in the child the fork server made); never returns."""
  worker = Worker(slot, spec, sock.fileno())
  code = 0
  try:
    try:
      worker.setup()
    except Exception as e:  # noqa: BLE001 - reported to the pool, which decides
      protocol.send(sock, ("failed", f"{type(e).__name__}: {e}"))
      os._exit(1)
    protocol.send(sock, ("ready", worker.host_pid))
    while True:
      try:
        message = protocol.recv(sock)
      except (EOFError, OSError):
        break
      _, job_id, job, limits = message
      result = worker.run(job, limits)
      protocol.send(sock, ("result", job_id, result))
  except (BrokenPipeError, ConnectionError):
    code = 0
  except BaseException:  # noqa: BLE001
    traceback.print_exc(file=sys.stderr)
    code = 1
  finally:
    worker.close()
  os._exit(code)
