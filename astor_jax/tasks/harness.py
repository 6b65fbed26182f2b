"""Host side of the sandboxed test runner: build signed jobs, read verified records.

A job runs `_runner.py` (standard library only) with the run spec in a file and a
fresh nonce on stdin; the runner's parent process prints one record signed with
an HMAC of that nonce after all runs ended (see `_runner.py` for the threat
model). A record that is missing, unsigned or signed with another nonce reads as
a failed job, whatever the program printed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import importlib.resources
import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from astor_jax.execution import Job, Limits, Result

MARKER = "@@astor-runner"
SPEC_FILE = "spec.json"
_RUNNER_SOURCE = importlib.resources.files("astor_jax.tasks").joinpath("_runner.py").read_text()


@dataclasses.dataclass(frozen=True)
class Suite:
  """A test suite as the runner executes it.

  Attributes:
    name: shown in feedback and breakdowns.
    code: Python source.
    kind: `script` (one test: the code runs without raising, in a copy of the
      program's namespace), `functions` (the module body plus every top-level
      `test*` function, pytest style) or `unittest` (a unittest module that
      imports the program by module name).
    module: module name of a `unittest` suite.
  """

  name: str
  code: str
  kind: str = "script"
  module: str = ""

  def to_json(self) -> dict[str, str]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Run:
  """One program plus the suites run against it, in a fresh child process."""

  name: str
  program: str
  suites: tuple[Suite, ...]
  program_file: str = "solution.py"
  program_file_text: str | None = None
  modules: tuple[str, ...] = ("solution",)
  guard: tuple[str, ...] = ()
  coverage: bool = False
  timeout_s: float = 2.0
  stop_on_failure: bool = False

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["suites"] = [s.to_json() for s in self.suites]
    if self.program_file_text is None:
      del out["program_file_text"]
    return out


@dataclasses.dataclass(frozen=True)
class TestOutcome:
  name: str
  ok: bool
  error: str


@dataclasses.dataclass(frozen=True)
class RunOutcome:
  """What the runner verified about one run."""

  name: str
  complete: bool
  status: str
  load_error: str | None
  tests: tuple[TestOutcome, ...]
  coverage: Mapping[str, Any] | None
  output: str

  @property
  def passed(self) -> int:
    return sum(t.ok for t in self.tests)

  def all_passed(self, expected_tests: int) -> bool:
    """True only if the run completed and at least `expected_tests` tests all passed."""
    return (self.complete and self.load_error is None and len(self.tests) >= max(expected_tests, 1)
            and all(t.ok for t in self.tests))

  def failure_text(self, max_chars: int = 1200) -> str:
    """Load errors, failing tests and program output, for a retry prompt."""
    parts = []
    if self.load_error:
      parts.append(f"error while loading the code:\n{self.load_error}")
    parts += [f"{t.name} failed:\n{t.error}" for t in self.tests if not t.ok]
    if not self.complete:
      parts.append(f"the run did not finish: {self.status}")
    text = "\n\n".join(parts)
    return text if len(text) <= max_chars else text[:max_chars] + "\n..."


def runner_job(runs: Sequence[Run], limits: Limits | None = None,
               files: Mapping[str, str] | None = None) -> Job:
  """A job that executes `runs` under the runner with a fresh nonce on stdin."""
  spec = json.dumps({"runs": [r.to_json() for r in runs]})
  all_files = dict(files or {})
  all_files[SPEC_FILE] = spec
  return Job(source=_RUNNER_SOURCE, stdin=secrets.token_hex(16), files=all_files,
             limits=limits)


def read_record(job: Job, result: Result) -> tuple[tuple[RunOutcome, ...] | None, str]:
  """Verifies and parses the runner's record.

  Returns:
    (runs, "") when a record signed with the job's nonce is found, else
    (None, reason) where reason says why (sandbox status, missing record).
  """
  key = job.stdin.strip().encode()
  for line in reversed(result.stdout.splitlines()):
    if not line.startswith(MARKER + " "):
      continue
    parts = line.split(" ", 2)
    if len(parts) != 3:
      continue
    _, signature, payload = parts
    expected = hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
      continue
    data = json.loads(payload)
    runs = tuple(
        RunOutcome(name=r["name"], complete=bool(r["complete"]), status=r["status"],
                   load_error=r["load_error"],
                   tests=tuple(TestOutcome(t["name"], bool(t["ok"]), t["error"])
                               for t in r["tests"]),
                   coverage=r["coverage"], output=r["output"])
        for r in data["runs"])
    return runs, ""
  if result.status != "ok":
    return None, f"sandbox: {result.status}"
  if result.stdout_truncated:
    return None, "the program printed more than the output limit"
  return None, "no signed result record (the runner did not finish)"


def sandbox_flag(result: Result) -> dict[str, float]:
  """`{"sandbox_error": 1.0}` when the sandbox itself failed (not the program's fault).

  The reward is still 0, but the flag lets the training loop drop such rows
  instead of teaching the policy from an infrastructure failure.
  """
  return {"sandbox_error": 1.0} if result.status == "sandbox_error" else {}
