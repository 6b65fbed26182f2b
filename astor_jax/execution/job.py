"""What goes into the sandbox (`Job`, `Limits`) and what comes out (`Result`).

All three are frozen dataclasses of plain Python values, so they pickle to and
from the fork server unchanged. Bad values are rejected when they are built,
with a message naming the field and the allowed range: a bad job never reaches
a worker.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "killed", "sandbox_error")

# The program's own file in the job's working directory (`__file__`).
PROGRAM_FILE = "main.py"


def _number(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


@dataclasses.dataclass(frozen=True)
class Limits:
  """Resource limits of one job.

  Attributes:
    timeout_s: hard wall-clock deadline. At the deadline the job's whole
      process tree is SIGKILLed (status `timeout`), whatever it does.
    cpu_s: CPU-time limit per process (RLIMIT_CPU, rounded up to whole
      seconds); None means the same as `timeout_s`. Exceeding it is `timeout`.
    memory_mb: address-space limit per process (RLIMIT_AS). It includes the
      warm interpreter the program is forked from (a few tens of MB).
    max_processes: processes plus threads the job may have at once
      (RLIMIT_NPROC, counted per uid: as root a uid of the job's own; rootless
      the worker's, which counts the worker too; in rlimits mode per host
      uid, where it does not bind jobs that run as root).
    max_file_mb: largest file the job may write (RLIMIT_FSIZE).
    max_open_files: open file descriptors per process (RLIMIT_NOFILE).
    max_output_bytes: cap on stdout and on stderr, each. A job that writes
      more is killed at once: status `output_limit`, output truncated to the cap.
    max_disk_mb: size of the job's private /tmp (its working directory lives
      there; namespaces mode, where rlimits mode only has max_file_mb per file).
      Its stdin and extra files must fit in it too.
  """

  timeout_s: float = 10.0
  cpu_s: float | None = None
  memory_mb: int = 1024
  max_processes: int = 64
  max_file_mb: int = 64
  max_open_files: int = 256
  max_output_bytes: int = 1 << 20
  max_disk_mb: int = 128

  # (field, lowest, highest): inclusive, except timeout_s and cpu_s exclude 0.
  _RANGES = (
      ("timeout_s", 0.0, 86_400.0),
      ("cpu_s", 0.0, 86_400.0),
      ("memory_mb", 32, 1 << 20),
      ("max_processes", 1, 1 << 15),
      ("max_file_mb", 0, 1 << 20),
      ("max_open_files", 16, 1 << 16),
      ("max_output_bytes", 0, 1 << 30),
      ("max_disk_mb", 1, 1 << 20),
  )

  def __post_init__(self):
    for name, lo, hi in self._RANGES:
      value = getattr(self, name)
      if name == "cpu_s" and value is None:
        continue
      integral = isinstance(lo, int)
      kind = "an integer" if integral else "a number"
      ok = (_number(value) and (not integral or isinstance(value, int))
            and (lo < value if not integral else lo <= value) and value <= hi)
      if not ok:
        low = f"({lo}" if not integral else f"[{lo}"
        raise ValueError(f"Limits.{name}: got {value!r}, expected {kind} in {low}, {hi}]; "
                         f"pass e.g. Limits({name}={getattr(Limits, name) or 10})")

  @property
  def cpu_limit_s(self) -> int:
    """The RLIMIT_CPU value: whole seconds, at least 1."""
    return max(1, math.ceil(self.timeout_s if self.cpu_s is None else self.cpu_s))


@dataclasses.dataclass(frozen=True)
class Job:
  """One program to run in the sandbox.

  The program runs like `python main.py ARGV...` in a fresh, empty working
  directory (`__name__ == "__main__"`), with the parent's interpreter and its
  installed packages, but forked from a warm copy of it.

  Attributes:
    source: Python source (str), or raw bytes read like a source file (PEP 263
      coding cookie honored; undecodable bytes give a clean `error` result).
    stdin: text (UTF-8) or bytes fed to the program's standard input.
    argv: extra command-line arguments (`sys.argv[1:]`).
    files: extra files written into the working directory before the program
      starts: relative path -> text (UTF-8) or bytes. `main.py` is reserved.
    limits: this job's limits; None means the pool's.
    tests: optional test code run after `source`, in the same `__main__`
      namespace. With tests, the job is `ok` only if the tests ran to their
      end: a program that leaves early (`sys.exit(0)`, `os._exit(0)`, an
      exception) before they finish is an `error`, whatever its exit status.
      The tests must end by falling off their end (use
      `unittest.main(exit=False)`, not `unittest.main()`).
  """

  source: str | bytes
  stdin: str | bytes = ""
  argv: Sequence[str] = ()
  files: Mapping[str, str | bytes] = dataclasses.field(default_factory=dict)
  limits: Limits | None = None
  tests: str = ""

  def __post_init__(self):
    if not isinstance(self.tests, str):
      raise TypeError(f"Job.tests: got {type(self.tests).__name__}, expected str")
    if not isinstance(self.source, (str, bytes)):
      raise TypeError(f"Job.source: got {type(self.source).__name__}, expected str or bytes "
                      "(the program's Python source)")
    if not isinstance(self.stdin, (str, bytes)):
      raise TypeError(f"Job.stdin: got {type(self.stdin).__name__}, expected str or bytes")
    if isinstance(self.argv, (str, bytes)) or not all(isinstance(a, str) for a in self.argv):
      raise TypeError(f"Job.argv: got {self.argv!r}, expected a sequence of str "
                      "(e.g. argv=('--n', '3'))")
    if any("\0" in a for a in self.argv):
      raise ValueError("Job.argv: an argument contains a NUL character; remove it")
    object.__setattr__(self, "argv", tuple(self.argv))
    if not isinstance(self.files, Mapping):
      raise TypeError(f"Job.files: got {type(self.files).__name__}, expected a mapping "
                      "of relative path -> str or bytes")
    for path, content in self.files.items():
      check_relative_path(path)
      if not isinstance(content, (str, bytes)):
        raise TypeError(f"Job.files[{path!r}]: got {type(content).__name__}, "
                        "expected str or bytes")
    if self.limits is not None and not isinstance(self.limits, Limits):
      raise TypeError(f"Job.limits: got {type(self.limits).__name__}, expected Limits or None")

  def input_bytes(self) -> int:
    """Bytes of stdin plus extra files (both must fit the job's disk quota)."""
    size = lambda s: len(s.encode("utf-8", "surrogateescape")) if isinstance(s, str) else len(s)
    return size(self.stdin) + sum(size(c) for c in self.files.values())


def check_relative_path(path: Any) -> None:
  """Raises ValueError unless `path` is a safe relative file path in the job dir."""
  if not isinstance(path, str) or not path:
    raise ValueError(f"Job.files: key {path!r} is not a non-empty relative path string")
  parts = path.split("/")
  if (os.path.isabs(path) or "\0" in path or any(p in ("", ".", "..") for p in parts)):
    raise ValueError(f"Job.files: {path!r} must be a relative path inside the working "
                     "directory, without '.', '..' or empty parts (e.g. 'pkg/util.py')")
  if path == PROGRAM_FILE:
    raise ValueError(f"Job.files: {PROGRAM_FILE!r} is the program itself (Job.source); "
                     "give the extra file another name")


@dataclasses.dataclass(frozen=True)
class Result:
  """What happened to one job. A Result always comes back, whatever the program did.

  Attributes:
    status: one of
      `ok`: exited with status 0.
      `error`: exited with a non-zero status (e.g. an uncaught exception).
      `timeout`: hit the wall-clock deadline or its CPU-time limit.
      `memory`: ran out of its address-space limit (a MemoryError or an
        allocation failure reported on stderr).
      `output_limit`: wrote more than `max_output_bytes` to stdout or stderr.
      `killed`: terminated by a signal it caused (e.g. SIGSEGV, SIGABRT).
      `sandbox_error`: the sandbox itself failed; `stderr` says why. The job
        may or may not have run; never counts as the program's fault.
    exit_code: the exit status, or minus the signal number that ended it;
      None when the sandbox stopped it (timeout, output limit) or never ran it.
    stdout, stderr: decoded as UTF-8 (invalid bytes replaced), each capped at
      `max_output_bytes` bytes before decoding.
    stdout_truncated, stderr_truncated: whether the cap cut the stream.
    wall_s: wall-clock seconds from start until the job's last process ended.
    cpu_s: user plus system CPU seconds of all the job's processes.
    peak_memory_mb: peak resident memory of the job's largest process (this
      includes pages shared with the warm interpreter it was forked from).
    detail: why the sandbox chose this status when the exit status alone does
      not say (deadline, output cap, tests that did not finish, sandbox
      failure); empty otherwise.
  """

  status: str
  exit_code: int | None
  stdout: str = ""
  stderr: str = ""
  stdout_truncated: bool = False
  stderr_truncated: bool = False
  wall_s: float = 0.0
  cpu_s: float = 0.0
  peak_memory_mb: float = 0.0
  detail: str = ""

  @property
  def ok(self) -> bool:
    return self.status == "ok"

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)
