"""A worker: one long-lived process that runs jobs one at a time.

Process tree of one job (namespaces mode; pids as the host sees them):

  worker (subreaper; own user, network, mount namespaces; pivoted root)
    └─ launcher: unshares pid, mount, IPC namespaces; reaps the supervisor
        └─ supervisor: pid 1 of the job's pid namespace; private /tmp, /proc
            └─ program: nested user namespace, uid 1000, rlimits, own session
                 └─ anything the program starts

The worker enforces the wall-clock deadline and the output cap from outside:
it SIGKILLs the supervisor, and the kernel then kills every process of the pid
namespace. When the program exits, the supervisor kills whatever it left
behind. Every process carries a parent-death SIGKILL, so a dying worker takes
its job with it. In rlimits mode the supervisor is a subreaper and session
leader instead of a pid-namespace init, and the worker's sweep kills and reaps
any process that outlived it.

Status records (launcher, supervisor and program-setup to worker) travel on a
pipe the program never holds: a type byte, a 4-byte length, a payload.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback

from astor_jax.execution import isolation, linux, protocol, runner
from astor_jax.execution.job import PROGRAM_FILE, Job, Limits, Result

REC_PROGRAM_STATUS = b"S"
REC_ERROR = b"E"
_REC = struct.Struct("<cI")

# After the launcher is gone, how long to wait for the last output bytes.
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
  """Reaps one child; returns False when there is none (ready)."""
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

  Orphans of a job are reparented here (this process is a subreaper), so this
  catches double-forked daemons in rlimits mode. Only our own children are
  signalled, and their pids cannot be reused before we reap them.
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


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_usage() -> tuple[float, int]:
  """(CPU seconds, peak RSS in KiB) of all live descendants, read from /proc.

  CPU includes what each process already collected from its reaped children.
  """
  cpu_ticks, peak_kb = 0, 0
  todo, seen = _children(), set()
  while todo:
    pid = todo.pop()
    if pid in seen:
      continue
    seen.add(pid)
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      cpu_ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
      with open(f"/proc/{pid}/status") as f:
        for line in f:
          if line.startswith("VmHWM:"):
            peak_kb = max(peak_kb, int(line.split()[1]))
      with open(f"/proc/{pid}/task/{pid}/children") as f:
        todo += [int(p) for p in f.read().split()]
    except (OSError, ValueError, IndexError):
      continue
  return cpu_ticks / _CLOCK_TICKS, peak_kb


def _to_high_fd(fd: int) -> int:
  return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)


class _Pipes:
  """The job's pipes and stdin, created in the worker before it forks."""

  def __init__(self, stdin: bytes):
    self.out_r, self.out_w = os.pipe()
    self.err_r, self.err_w = os.pipe()
    self.status_r, self.status_w = os.pipe()
    self.mark_r, self.mark_w = os.pipe()
    self.stdin = os.memfd_create("stdin", os.MFD_CLOEXEC)
    view = memoryview(stdin)
    while view:
      view = view[os.write(self.stdin, view):]
    os.lseek(self.stdin, 0, os.SEEK_SET)

  def program_ends(self) -> list[int]:
    return [self.out_w, self.err_w, self.mark_w, self.stdin]

  def close_program_ends(self) -> None:
    for fd in self.program_ends():
      os.close(fd)


def _encode(text: str | bytes) -> bytes:
  return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


def _write_files(workdir: str, job: Job) -> None:
  with open(os.path.join(workdir, PROGRAM_FILE), "wb") as f:
    f.write(_encode(job.source))
  for rel, content in job.files.items():
    path = os.path.join(workdir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(_encode(content))


class Worker:
  """Runs jobs for one pool slot; lives in the process the fork server made."""

  def __init__(self, slot: int, spec: isolation.SandboxSpec, sock_fd: int = -1):
    self.slot = slot
    self.sock_fd = sock_fd
    self.spec = spec
    self.namespaces = spec.isolation == isolation.NAMESPACES
    self.last_cap = linux.last_capability()
    self.host_uid = (spec.uid_base + slot if os.geteuid() == 0 and spec.drop_uid
                     and not self.namespaces else None)
    self.scratch = None

  def setup(self) -> None:
    if os.readlink("/proc/self") != str(os.getpid()):
      # Pids read from /proc would name other processes than os.kill reaches.
      raise OSError("/proc belongs to another pid namespace than this process; run the "
                    "pool where /proc matches (e.g. `unshare --pid --fork --mount-proc`)")
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    if self.namespaces:
      isolation.enter_worker_namespaces(self.slot, self.spec)
    else:
      self.scratch = tempfile.mkdtemp(prefix="astor-exec-")
      os.chmod(self.scratch, 0o711)

  def close(self) -> None:
    if self.scratch:
      shutil.rmtree(self.scratch, ignore_errors=True)

  # ------------------------------------------------------------ worker side
  def run(self, job: Job, limits: Limits) -> Result:
    """Runs one job to completion; always returns a Result."""
    start = time.monotonic()
    usage: list = []
    pipes = None
    workdir = isolation.JOB_DIR_NS
    try:
      if not self.namespaces:
        workdir = tempfile.mkdtemp(prefix="job-", dir=self.scratch)
        if self.host_uid is not None:
          os.chown(workdir, self.host_uid, self.host_uid)
      token = os.urandom(16)
      pipes = _Pipes(_encode(job.stdin))
      launcher = os.fork()
      if launcher == 0:
        self._launcher(job, limits, pipes, workdir, token)  # never returns
      pipes.close_program_ends()
      os.close(pipes.status_w)
      outcome = self._watch(launcher, pipes, limits, start)
      sweep(usage)
      return self._classify(job, limits, outcome, usage, token, start)
    except Exception:  # noqa: BLE001 - a sandbox bug must come back as a Result
      sweep(usage)
      return Result(status="sandbox_error", exit_code=None, wall_s=time.monotonic() - start,
                    detail="worker failed: " + traceback.format_exc(limit=8))
    finally:
      if pipes is not None:
        for fd in (pipes.out_r, pipes.err_r, pipes.status_r, pipes.mark_r):
          try:
            os.close(fd)
          except OSError:
            pass
      if not self.namespaces and workdir != isolation.JOB_DIR_NS:
        _force_rmtree(workdir)

  def _watch(self, launcher: int, pipes: _Pipes, limits: Limits, start: float) -> dict:
    """Reads the job's streams until its processes are gone, enforcing the limits.

    To stop a job the worker SIGKILLs its own children: the launcher (whose
    death takes the supervisor, and with it the pid namespace, through their
    parent-death signals) and anything reparented to this subreaper. Only our
    own unreaped children are signalled, so no pid can have been reused.
    """
    cap = limits.max_output_bytes
    streams = {pipes.out_r: bytearray(), pipes.err_r: bytearray()}
    truncated = {pipes.out_r: False, pipes.err_r: False}
    status, marks = bytearray(), bytearray()
    poller = select.poll()
    live = {pipes.out_r, pipes.err_r, pipes.status_r, pipes.mark_r}
    for fd in live:
      poller.register(fd, select.POLLIN)
    deadline = start + limits.timeout_s
    stop_reason = None
    usage_at_stop = (0.0, 0)
    ended_at = None
    drain_until = None

    def kill(reason: str) -> None:
      nonlocal stop_reason, usage_at_stop
      if stop_reason is None:
        stop_reason = reason
        usage_at_stop = tree_usage()  # a killed pid namespace reports no rusage
      for pid in _children():
        try:
          os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
          pass

    while live:
      now = time.monotonic()
      if pipes.status_r not in live:
        ended_at = ended_at or now
        drain_until = drain_until or now + _DRAIN_GRACE_S
        if now >= drain_until:
          break
        wait_s = drain_until - now
      elif stop_reason is not None:
        kill(stop_reason)  # again: catches processes reparented to us since
        wait_s = 0.05
      elif now >= deadline:
        kill("timeout")
        wait_s = 0.05
      else:
        wait_s = deadline - now
      for fd, _ in poller.poll(wait_s * 1000):
        data = os.read(fd, 1 << 16)
        if not data:
          poller.unregister(fd)
          live.discard(fd)
        elif fd in streams:
          room = cap - len(streams[fd])
          streams[fd] += data[:max(room, 0)]
          if len(data) > room:
            truncated[fd] = True
            if stop_reason is None:
              kill("output_limit")
        elif fd == pipes.status_r:
          status += data
        elif len(marks) < 4096:
          marks += data
    return {"stdout": bytes(streams[pipes.out_r]), "stderr": bytes(streams[pipes.err_r]),
            "stdout_truncated": truncated[pipes.out_r],
            "stderr_truncated": truncated[pipes.err_r],
            "status": bytes(status), "marks": bytes(marks), "stop_reason": stop_reason,
            "usage_at_stop": usage_at_stop, "ended_at": ended_at or time.monotonic()}

  def _classify(self, job: Job, limits: Limits, o: dict, usage: list, token: bytes,
                start: float) -> Result:
    stop_cpu_s, stop_peak_kb = o["usage_at_stop"]
    cpu_s = max(sum(ru.ru_utime + ru.ru_stime for ru in usage), stop_cpu_s)
    peak_mb = max([ru.ru_maxrss for ru in usage] + [stop_peak_kb]) / 1024.0
    stdout = o["stdout"].decode("utf-8", "replace")
    stderr = o["stderr"].decode("utf-8", "replace")
    common = dict(stdout=stdout, stderr=stderr, stdout_truncated=o["stdout_truncated"],
                  stderr_truncated=o["stderr_truncated"], wall_s=o["ended_at"] - start,
                  cpu_s=cpu_s, peak_memory_mb=peak_mb)
    records = _parse_records(o["status"])
    errors = [p.decode("utf-8", "replace") for k, p in records if k == REC_ERROR]
    program = [struct.unpack("<i", p)[0] for k, p in records if k == REC_PROGRAM_STATUS]
    marks = o["marks"]
    if o["stop_reason"] == "timeout":
      return Result("timeout", None, **common,
                    detail=f"killed at the {limits.timeout_s:g} s wall-clock deadline")
    if o["stop_reason"] == "output_limit":
      return Result("output_limit", None, **common,
                    detail=f"wrote more than max_output_bytes={limits.max_output_bytes}")
    if errors:
      return Result("sandbox_error", None, **common, detail="; ".join(errors))
    if not program:
      return Result("sandbox_error", None, **common,
                    detail="the job's supervisor ended without reporting the program's status")
    code = os.waitstatus_to_exitcode(program[-1])
    if code < 0:
      sig = -code
      if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= limits.cpu_limit_s):
        return Result("timeout", code, **common,
                      detail=f"exceeded its CPU-time limit of {limits.cpu_limit_s} s")
      if _out_of_memory(stderr):
        return Result("memory", code, **common, detail="allocation failure")
      return Result("killed", code, **common,
                    detail=f"terminated by signal {signal.Signals(sig).name}"
                    if sig in signal.valid_signals() else f"terminated by signal {sig}")
    if code != 0 and (token + runner.MARK_MEMORY in marks or _out_of_memory(stderr)):
      return Result("memory", code, **common,
                    detail=f"ran out of its memory_mb={limits.memory_mb} address space")
    if code != 0:
      return Result("error", code, **common)
    if job.tests and token + runner.MARK_TESTS_DONE not in marks:
      return Result("error", code, **common,
                    detail="the program exited before its tests finished")
    return Result("ok", code, **common)

  # ------------------------------------------------------------ job side
  def _launcher(self, job: Job, limits: Limits, pipes: _Pipes, workdir: str,
                token: bytes) -> None:
    """First child: new namespaces, then the supervisor; reaps it and exits."""
    status_w = pipes.status_w
    try:
      linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
      for fd in (pipes.out_r, pipes.err_r, pipes.status_r, pipes.mark_r, self.sock_fd):
        if fd >= 0:
          os.close(fd)
      if self.namespaces:
        isolation.enter_job_namespaces()
      supervisor = os.fork()
      if supervisor == 0:
        self._supervisor(job, limits, pipes, workdir, token)  # never returns
      pipes.close_program_ends()
      while True:
        try:
          os.waitpid(supervisor, 0)
          break
        except InterruptedError:
          continue
      os._exit(0)
    except BaseException:  # noqa: BLE001
      _safe_record(status_w, "launcher: " + traceback.format_exc(limit=4))
      os._exit(_EXIT_SETUP_FAILED)

  def _supervisor(self, job: Job, limits: Limits, pipes: _Pipes, workdir: str,
                  token: bytes) -> None:
    """The job's init: prepares its files, starts the program, cleans up after it."""
    status_w = pipes.status_w
    try:
      linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
      if self.namespaces:
        if os.getpid() != 1:
          raise RuntimeError("supervisor is not pid 1 of a new pid namespace")
        isolation.prepare_job_filesystem(limits)
        os.mkdir(workdir, 0o755)
        _write_files(workdir, job)
      else:
        os.setsid()
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
        if self.host_uid is not None:
          isolation.drop_to_uid(self.host_uid)
        _write_files(workdir, job)
      linux.prctl(linux.PR_SET_DUMPABLE, 0)
      program = os.fork()
      if program == 0:
        self._program(job, limits, pipes, workdir, token)  # never returns
      if self.namespaces:
        # Only now: the program needs our CAP_SETFCAP at the moment it creates
        # its user namespace, to map our uid 0 into it (Linux >= 5.12).
        linux.drop_all_capabilities(self.last_cap)
      pipes.close_program_ends()
      program_status = None
      while program_status is None:
        pid, wait_status = os.waitpid(-1, 0)
        if pid == program:
          program_status = wait_status
      self._kill_leftovers()
      _record(status_w, REC_PROGRAM_STATUS, struct.pack("<i", program_status))
      os._exit(0)
    except BaseException:  # noqa: BLE001
      _safe_record(status_w, "supervisor: " + traceback.format_exc(limit=4))
      os._exit(_EXIT_SETUP_FAILED)

  def _kill_leftovers(self) -> None:
    """In the supervisor, after the program exited: no process may outlive it."""
    if self.namespaces:
      if os.getpid() == 1:  # never kill(-1) outside a private pid namespace
        try:
          os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
          pass
      while True:
        try:
          os.waitpid(-1, 0)
        except ChildProcessError:
          return
    else:
      sweep([])

  def _program(self, job: Job, limits: Limits, pipes: _Pipes, workdir: str,
               token: bytes) -> None:
    """The program's process: last isolation steps, then the program itself."""
    status_w = _to_high_fd(pipes.status_w)
    try:
      linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
      # The supervisor is non-dumpable (the program must not ptrace it or read
      # its /proc files); the program itself needs its own /proc files.
      linux.prctl(linux.PR_SET_DUMPABLE, 1)
      os.setsid()
      if self.namespaces:
        isolation.enter_program_user_namespace()
      linux.drop_all_capabilities(self.last_cap)
      os.chdir(workdir)
      high = [_to_high_fd(fd) for fd in (pipes.stdin, pipes.out_w, pipes.err_w, pipes.mark_w)]
      for target, fd in enumerate(high[:3]):
        os.dup2(fd, target, inheritable=True)
      os.dup2(high[3], 3, inheritable=False)
      os.closerange(4, status_w)
      os.closerange(status_w + 1, 1 << 16)
      env = dict(self.spec.env)
      env.setdefault("HOME", workdir)
      env.setdefault("TMPDIR", "/tmp" if self.namespaces else workdir)
      os.environ.clear()
      os.environ.update(env)
      os.umask(0o022)
      isolation.apply_rlimits(limits)
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
  def fix(func, p, _):
    try:
      os.chmod(os.path.dirname(p), 0o700)
      if os.path.isdir(p) and not os.path.islink(p):
        os.chmod(p, 0o700)
      func(p)
    except OSError:
      pass
  for _ in range(3):
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
  """Worker process body (called in the child the fork server made); never returns."""
  worker = Worker(slot, spec, sock.fileno())
  code = 0
  try:
    try:
      worker.setup()
    except Exception as e:  # noqa: BLE001 - reported to the pool, which decides
      protocol.send(sock, ("failed", f"{type(e).__name__}: {e}"))
      os._exit(1)
    protocol.send(sock, ("ready", os.getpid()))
    while True:
      try:
        message = protocol.recv(sock)
      except (EOFError, OSError):
        break
      kind, job_id, job, limits = message
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

