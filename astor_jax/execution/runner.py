"""Runs the program inside the sandboxed process, like `python main.py ARGV...`.

This is the last step of a job: the process is already isolated and limited,
and its standard streams point at the job's pipes. What remains is to give the
program the interpreter state a fresh `python main.py` would give it, run it,
and exit with the status Python would exit with.

Completion flags go to a private pipe (`marker_fd`) prefixed with a per-job
random token: `T` when the tests ran to their end, `M` when the program died of
a MemoryError. The program runs in this same process, so a program written
against these internals could forge them; they stop honest mistakes and
generic tricks (an early `os._exit(0)`), not a targeted attack on this file.
"""

from __future__ import annotations

import atexit
import builtins
import io
import linecache
import os
import signal
import sys
import types
from collections.abc import Sequence

MARK_TESTS_DONE = b"T"
MARK_MEMORY = b"M"
TESTS_FILENAME = "<tests>"


def _new_stdio() -> tuple:
  """Standard streams on fds 0-2, as a non-interactive `python` makes them."""
  def stream(fd: int, mode: str, errors: str, line_buffering: bool = False):
    raw = io.FileIO(fd, mode, closefd=False)
    buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffered, encoding="utf-8", errors=errors,
                            line_buffering=line_buffering)
  return (stream(0, "r", "strict"), stream(1, "w", "strict"),
          stream(2, "w", "backslashreplace", line_buffering=True))


_stdio: tuple | None = None
# The worker's own streams: kept referenced, so that replacing them in a job
# does not finalize them there (a flush and ~50 page copies per job).
_worker_stdio: tuple = ()


def _fresh_stdio() -> None:
  """Fresh standard streams: the unused ones `prepare` made, else new ones."""
  stdin, stdout, stderr = _stdio if _stdio is not None else _new_stdio()
  sys.stdin = sys.__stdin__ = stdin
  sys.stdout = sys.__stdout__ = stdout
  sys.stderr = sys.__stderr__ = stderr


_signal_fixes: list[tuple[int, object]] | None = None
_mask_is_empty = False


def _fresh_signal_dispositions() -> list[tuple[int, object]]:
  """(signal, handler) for each disposition that differs from a fresh interpreter's."""
  # CPython's own: KeyboardInterrupt on SIGINT; SIGPIPE and SIGXFSZ ignored so
  # that writes fail with an exception instead of killing the process.
  wanted = {signal.SIGINT: signal.default_int_handler, signal.SIGPIPE: signal.SIG_IGN,
            signal.SIGXFSZ: signal.SIG_IGN}
  fixes = []
  for sig in signal.valid_signals():
    if sig in (signal.SIGKILL, signal.SIGSTOP):
      continue
    want = wanted.get(sig, signal.SIG_DFL)
    if signal.getsignal(sig) != want:
      fixes.append((sig, want))
  return fixes


def prepare(with_stdio: bool) -> None:
  """Called once by a worker whose signal dispositions and mask stay as they are:
  works out what each job must change, so that the job only changes that.

  With `with_stdio`, also makes the jobs' standard streams, once: the worker
  never uses them, so each job gets them as new. Fds 0-2 must then be of the
  kinds the jobs' are (stdin seekable, stdout and stderr pipes): the streams
  remember whether their fd is seekable.
  """
  global _signal_fixes, _mask_is_empty, _stdio, _worker_stdio
  _worker_stdio = (sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__,
                   sys.__stderr__)
  _signal_fixes = _fresh_signal_dispositions()
  _mask_is_empty = not signal.pthread_sigmask(signal.SIG_BLOCK, [])
  if with_stdio:
    _stdio = _new_stdio()


def _default_signals() -> None:
  """Signal dispositions of a fresh interpreter; nothing blocked.

  Only dispositions that differ from the worker's (known since `prepare`)
  are changed, which saves ~60 system calls per job.
  """
  fixes = _signal_fixes if _signal_fixes is not None else _fresh_signal_dispositions()
  for sig, want in fixes:
    try:
      signal.signal(sig, want)
    except (OSError, ValueError, RuntimeError):
      pass
  if not _mask_is_empty:
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _exit_code(exc: SystemExit) -> int:
  """The status `python` exits with for an uncaught SystemExit."""
  code = exc.code
  if code is None:
    return 0
  if isinstance(code, int):
    return code & 0xFF
  try:
    print(code, file=sys.stderr)
  except Exception:  # noqa: BLE001 - as CPython: a failing print still exits 1
    pass
  return 1


def _report_uncaught(exc: BaseException) -> None:
  # Drop this file's frame: the traceback starts in the program, as with `python`.
  tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
  exc.__traceback__ = tb
  try:
    sys.excepthook(type(exc), exc, tb)
  except Exception:  # noqa: BLE001 - a broken excepthook must not hide the error
    sys.__excepthook__(type(exc), exc, tb)


def _finish(code: int) -> None:
  """Interpreter shutdown as Py_FinalizeEx does it, then exit with `code`."""
  threading = sys.modules.get("threading")
  if threading is not None:
    try:
      threading._shutdown()  # joins non-daemon threads, like the real shutdown
    except BaseException:  # noqa: BLE001
      pass
  try:
    atexit._run_exitfuncs()
  except BaseException:  # noqa: BLE001
    pass
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except BaseException:  # noqa: BLE001
      if stream is sys.stdout and code == 0:
        code = 120  # CPython's status when flushing stdout fails at exit
  os._exit(code)


def run_program(path: str, argv: Sequence[str], tests: str, marker_fd: int,
                token: bytes) -> None:
  """Executes the program file at `path` as `__main__`; never returns."""
  _fresh_stdio()
  _default_signals()
  sys.argv = [path, *argv]
  sys.path.insert(0, os.path.dirname(path))
  module = types.ModuleType("__main__")
  module.__file__ = path
  module.__builtins__ = builtins
  module.__cached__ = None
  sys.modules["__main__"] = module

  def mark(flag: bytes) -> None:
    try:
      os.write(marker_fd, token + flag)
    except OSError:
      pass

  code = 0
  try:
    with open(path, "rb") as f:
      source = f.read()
    exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)
    if tests:
      lines = tests.splitlines(keepends=True)
      linecache.cache[TESTS_FILENAME] = (len(tests), None, lines, TESTS_FILENAME)
      exec(compile(tests, TESTS_FILENAME, "exec", dont_inherit=True), module.__dict__)
      mark(MARK_TESTS_DONE)
  except SystemExit as exc:
    code = _exit_code(exc)
  except KeyboardInterrupt as exc:
    _report_uncaught(exc)
    sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)  # CPython exits by the signal itself
    code = 130
  except BaseException as exc:  # noqa: BLE001 - the program's uncaught error
    if isinstance(exc, MemoryError):
      mark(MARK_MEMORY)
    _report_uncaught(exc)
    code = 1
  _finish(code)
