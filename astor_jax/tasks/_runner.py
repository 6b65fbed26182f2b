"""Trusted test runner that executes inside the sandbox (standard library only).

The host sends this file's text as the job's program, a `spec.json` file, and a
fresh random nonce on stdin. The spec lists *runs*: a program (model-written
code, or the focal function under test) and the test suites to run against it.

Why this shape (reward hacking):
  * The process that runs model code never holds the nonce. The runner forks a
    child per run *before* reading stdin; the child points fd 0 at /dev/null
    first thing, so only the parent ever reads the nonce, after every child
    has exited. The parent alone prints the result record, signed with an HMAC
    of the nonce, so printing a fake "all passed" line earns nothing.
  * A child reports each finished test on a private pipe and a final `done`;
    exiting early (`sys.exit`, `os._exit`, a signal, a timeout) leaves the run
    incomplete, and an incomplete run fails.
  * Files a run creates in the working directory (which also holds its
    TMPDIR) are deleted before the next run starts, and the host shuffles the
    order of runs, so tests gain nothing by leaving a marker that tells a later
    run (a mutant) from an earlier one.
  * The spec file is deleted before any child starts, so model code cannot read
    the hidden tests from disk; suites are executed after the program, in a
    copy of its namespace, so definitions cannot shadow the tests; `builtins`
    and `unittest.TestCase` are restored after the program ran, so patching
    them does not reach the tests; functions named in `guard` refuse to return
    objects whose class was defined by the program (an `__eq__` that is always
    true would otherwise pass any `assert f(x) == y`).
  Not covered: deliberate process introspection (ptrace, /proc, walking the
  garbage collector); the sandbox's isolation is the defence there.

Spec (JSON): {"runs": [{
    "name": str, "program": str, "program_file": str, "modules": [str],
    "suites": [{"name": str, "code": str, "kind": "script"|"functions"|"unittest",
                "module": str}],
    "guard": [str], "coverage": bool, "timeout_s": float, "stop_on_failure": bool}]}

Output: the last stdout line is `@@astor-runner <hmac-sha256 hex> <json>` where
the json is {"runs": [{"name", "complete", "status", "load_error", "tests":
[{"name", "ok", "error"}], "coverage", "output"}]}.
"""

import builtins
import hashlib
import hmac
import json
import linecache
import os
import select
import signal
import sys
import tempfile
import time
import traceback
import types
import unittest

MARKER = "@@astor-runner"
_ERROR_CHARS = 400
_OUTPUT_CHARS = 2000
_PLAIN_CONTAINERS = (list, tuple, set, frozenset)


def _short(text, limit=_ERROR_CHARS):
  text = text.strip()
  return text if len(text) <= limit else "..." + text[-limit:]


def _error_text(exc):
  """The program's and tests' frames and the exception line, short enough for a prompt."""
  own = _error_text.__code__.co_filename
  frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != own][-3:]
  text = "".join(traceback.format_list(frames))
  text += "".join(traceback.format_exception_only(type(exc), exc))
  return _short(text)


class _Reporter:
  """Writes JSON-line messages on the child's end of the result pipe."""

  def __init__(self, fd):
    self._fd = fd
    self._write = os.write
    self._dumps = json.dumps

  def send(self, message):
    data = (self._dumps(message) + "\n").encode()
    while data:
      data = data[self._write(self._fd, data):]


def _defined_by(value, modules, depth=0):
  """Returns the name of a class defined by the program found in `value`, or None."""
  for cls in type(value).__mro__:
    if getattr(cls, "__module__", None) in modules:
      return cls.__name__
  if depth > 8:
    return None
  if isinstance(value, _PLAIN_CONTAINERS):
    items = value
  elif isinstance(value, dict):
    items = list(value.keys()) + list(value.values())
  else:
    return None
  for item in items:
    found = _defined_by(item, modules, depth + 1)
    if found:
      return found
  return None


def _guarded(fn, modules):
  def wrapper(*args, **kwargs):
    out = fn(*args, **kwargs)
    bad = _defined_by(out, modules)
    if bad:
      raise TypeError(f"{getattr(fn, '__name__', 'function')} returned an instance of "
                      f"{bad}, a class defined by the solution; return built-in values")
    return out

  wrapper.__name__ = getattr(fn, "__name__", "wrapper")
  wrapper.__wrapped__ = fn
  return wrapper


def _register_source(filename, code):
  linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)


def _run_suite(suite, namespace, reporter, index, stop_on_failure):
  """Runs one suite; returns False when `stop_on_failure` asks to stop early."""
  kind = suite.get("kind", "script")
  name = suite.get("name", f"suite{index}")
  filename = f"<test:{name}>"
  code = suite["code"]
  _register_source(filename, code)

  def report(test_name, ok, error=""):
    reporter.send({"type": "test", "name": test_name, "ok": ok, "error": error})
    return ok or not stop_on_failure

  if kind == "unittest":
    module = types.ModuleType(suite.get("module") or name)
    module.__file__ = filename
    sys.modules[module.__name__] = module
    try:
      exec(compile(code, filename, "exec"), module.__dict__)
    except BaseException as exc:  # noqa: BLE001 - a test file that fails to load fails
      return report(name, False, _error_text(exc))
    loaded = unittest.TestLoader().loadTestsFromModule(module)
    cases = []
    stack = [loaded]
    while stack:
      item = stack.pop(0)
      if isinstance(item, unittest.TestSuite):
        stack[:0] = list(item)
      else:
        cases.append(item)
    if not cases:
      return report(name, False, "the test file defines no tests")
    for case in cases:
      result = unittest.TestResult()
      try:
        case.run(result)
      except BaseException as exc:  # noqa: BLE001 - SystemExit raised inside a test
        if not report(case.id(), False, _error_text(exc)):
          return False
        continue
      problems = result.failures + result.errors
      if problems:
        ok, error = False, _short(problems[0][1])
      elif result.skipped:
        ok, error = False, "skipped: " + str(result.skipped[0][1])
      elif result.testsRun != 1 or result.unexpectedSuccesses:
        ok, error = False, "the test did not run to completion"
      else:
        ok, error = True, ""
      if not report(case.id(), ok, error):
        return False
    return True

  ns = dict(namespace)
  ns["__name__"] = f"test_{index}"
  try:
    exec(compile(code, filename, "exec"), ns)
  except BaseException as exc:  # noqa: BLE001 - SystemExit included: exiting is failing
    return report(name, False, _error_text(exc))
  if kind == "script":
    return report(name, True)
  # kind == "functions": module body (already passed) plus every test* function.
  if not report(name + "::<module>", True):
    return False
  for key in list(ns):
    fn = ns[key]
    if (key.startswith("test") and isinstance(fn, types.FunctionType)
        and fn.__code__.co_filename == filename):
      try:
        fn()
        ok, error = True, ""
      except BaseException as exc:  # noqa: BLE001
        ok, error = False, _error_text(exc)
      if not report(f"{name}::{key}", ok, error):
        return False
  return True


def _child(run, write_fd, out_fd):
  """Runs one program and its suites; never returns."""
  os.setpgrp()
  devnull = os.open(os.devnull, os.O_RDONLY)
  os.dup2(devnull, 0)
  os.dup2(out_fd, 1)
  os.dup2(out_fd, 2)
  sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
  sys.stdout = os.fdopen(1, "w", buffering=1)
  sys.stderr = os.fdopen(2, "w", buffering=1)
  for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
    signal.signal(sig, signal.SIG_DFL)
  reporter = _Reporter(write_fd)
  exit_now = os._exit

  cov = None
  program_file = os.path.abspath(run.get("program_file") or "solution.py")
  if run.get("coverage"):
    import coverage  # only the runs that measure coverage need it

    cov = coverage.Coverage(data_file=None, branch=True, include=[program_file],
                            config_file=False)
    cov.start()

  modules = list(run.get("modules") or ["solution"])
  module = types.ModuleType(modules[0])
  module.__file__ = program_file
  for name in modules:
    sys.modules[name] = module
  saved_builtins = dict(builtins.__dict__)
  saved_testcase = dict(vars(unittest.TestCase))
  saved_unittest = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "unittest"}
  load_error = None
  try:
    exec(compile(run["program"], program_file, "exec"), module.__dict__)
  except BaseException as exc:  # noqa: BLE001 - SystemExit included
    load_error = _error_text(exc)
  if cov is None:
    sys.settrace(None)
    sys.setprofile(None)
  builtins.__dict__.clear()
  builtins.__dict__.update(saved_builtins)
  for key in list(vars(unittest.TestCase)):
    if key not in saved_testcase:
      try:
        delattr(unittest.TestCase, key)
      except (AttributeError, TypeError):
        pass
  for key, value in saved_testcase.items():
    if key not in ("__dict__", "__weakref__"):
      try:
        setattr(unittest.TestCase, key, value)
      except (AttributeError, TypeError):
        pass
  sys.modules.update(saved_unittest)
  reporter.send({"type": "loaded", "error": load_error})

  if load_error is None:
    namespace = dict(module.__dict__)
    for name in run.get("guard") or ():
      if callable(namespace.get(name)):
        namespace[name] = _guarded(namespace[name], set(modules))
    stop = bool(run.get("stop_on_failure"))
    for index, suite in enumerate(run.get("suites") or ()):
      if not _run_suite(suite, namespace, reporter, index, stop):
        break

  coverage_totals = None
  if cov is not None:
    cov.stop()
    report_path = tempfile.mktemp(suffix=".json", dir=".")
    try:
      cov.json_report(outfile=report_path)
      with open(report_path) as fp:
        coverage_totals = json.load(fp)["totals"]
    except Exception as exc:  # noqa: BLE001 - e.g. the program never ran
      coverage_totals = {"error": _error_text(exc)}
  reporter.send({"type": "done", "coverage": coverage_totals})
  sys.stdout.flush()
  sys.stderr.flush()
  exit_now(0)


def _read_messages(read_fd, deadline):
  chunks = []
  while True:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      return b"".join(chunks), True
    ready, _, _ = select.select([read_fd], [], [], remaining)
    if not ready:
      continue
    data = os.read(read_fd, 65536)
    if not data:
      return b"".join(chunks), False
    chunks.append(data)


def _execute(run):
  out_file = tempfile.TemporaryFile()
  read_fd, write_fd = os.pipe()
  pid = os.fork()
  if pid == 0:
    try:
      os.close(read_fd)
      _child(run, write_fd, out_file.fileno())
    finally:
      os._exit(1)
  os.close(write_fd)
  timeout_s = float(run.get("timeout_s", 2.0))
  raw, timed_out = _read_messages(read_fd, time.monotonic() + timeout_s)
  os.close(read_fd)
  if timed_out:
    for target in (-pid, pid):
      try:
        os.kill(target, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        pass
  _, wait_status = os.waitpid(pid, 0)
  try:
    os.killpg(pid, signal.SIGKILL)  # strays the program left behind
  except (ProcessLookupError, PermissionError):
    pass

  tampered = False
  path = run.get("program_file")
  if path:
    expected = run.get("program_file_text", run["program"])
    try:
      with open(path) as fp:
        tampered = fp.read() != expected
    except OSError:
      tampered = True
    if tampered:  # the tests rewrote the code under test; restore it for later runs
      with open(path, "w") as fp:
        fp.write(expected)

  tests, load_error, done, coverage_totals, corrupt = [], None, False, None, tampered
  for line in raw.decode(errors="replace").splitlines():
    try:
      message = json.loads(line)
      kind = message["type"]
    except Exception:  # noqa: BLE001 - anything unparsable marks the run corrupt
      corrupt = True
      break
    if kind == "test":
      tests.append({"name": str(message["name"]), "ok": message["ok"] is True,
                    "error": str(message.get("error", ""))})
    elif kind == "loaded":
      load_error = message.get("error")
    elif kind == "done":
      done = True
      coverage_totals = message.get("coverage")
  if timed_out:
    status = "timeout"
  elif tampered:
    status = "tampered with the program file"
  elif corrupt:
    status = "corrupt"
  elif not done:
    code = os.waitstatus_to_exitcode(wait_status)
    status = f"exited early ({'signal ' + str(-code) if code < 0 else 'status ' + str(code)})"
  else:
    status = "ok"
  out_file.seek(0)
  output = out_file.read(_OUTPUT_CHARS * 4).decode(errors="replace")
  out_file.close()
  return {"name": run.get("name", ""), "complete": done and not corrupt and not timed_out,
          "status": status, "load_error": load_error, "tests": tests,
          "coverage": coverage_totals, "output": _short(output, _OUTPUT_CHARS)}


def _snapshot(roots):
  paths = set()
  for root in roots:
    for dirpath, dirnames, filenames in os.walk(root):
      paths.add(dirpath)
      paths.update(os.path.join(dirpath, n) for n in dirnames + filenames)
  return paths


def _remove_new_files(roots, baseline):
  """Deletes what a run created, so no state passes from one run to the next."""
  for path in sorted(_snapshot(roots) - baseline, key=len, reverse=True):
    try:
      if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)
      else:
        os.unlink(path)
    except OSError:
      pass


def main():
  with open("spec.json") as fp:
    spec = json.load(fp)
  os.unlink("spec.json")
  for run in spec["runs"]:
    path = run.get("program_file")
    if path and not os.path.exists(path):
      with open(path, "w") as fp:
        fp.write(run.get("program_file_text", run["program"]))
  # Runs get a temp directory inside the working directory, which is cleaned.
  private_tmp = os.path.realpath("tmp")
  os.makedirs(private_tmp, exist_ok=True)
  os.environ["TMPDIR"] = private_tmp
  tempfile.tempdir = private_tmp
  roots = [os.path.realpath(".")]
  baseline = _snapshot(roots)
  results = []
  for run in spec["runs"]:
    results.append(_execute(run))
    _remove_new_files(roots, baseline)
  nonce = sys.stdin.read().strip().encode()
  payload = json.dumps({"runs": results}, sort_keys=True)
  signature = hmac.new(nonce, payload.encode(), hashlib.sha256).hexdigest()
  sys.stdout.write(f"\n{MARKER} {signature} {payload}\n")
  sys.stdout.flush()


if __name__ == "__main__":
  main()
