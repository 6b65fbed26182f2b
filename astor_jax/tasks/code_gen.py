"""Code generation with hidden unit tests (Aider-Polyglot style, also HumanEval/MBPP).

Example fields (besides `task`, `id`, `difficulty`, `source`):
  instructions  what to build, in English (may be empty when the stub's
                docstring says it, as in HumanEval).
  stub          starter code shown to the model (a signature, a docstring, an
                Aider exercise's stub file).
  entry_point   the function the tests call; empty when the tests import
                names themselves (Aider's unittest files).
  suites        hidden tests: a list of `harness.Suite` fields (`name`, `code`,
                `kind` in script/functions/unittest, `module`).
  guard         names whose return values may not be instances of classes the
                solution defines (defaults to `[entry_point]` when set).
  modules       module names the solution is importable as (default
                `["solution"]`; an Aider exercise's tests import e.g. `two_fer`).
  reference     a known-correct solution.

Answer: the whole solution in a fenced ```python block (Aider's "whole" edit
format). As in EvalPlus, a completion that only continues the stub (a
function body) is prefixed with the stub, and the stub's imports are added
when the answer omits them.

Reward: 1 if the solution loaded and every hidden test ran and passed, else 0
(`partial_credit=True` gives the fraction of tests passed instead).

Metrics: pass@1 and pass@2 (percent). pass@2 follows Aider's benchmark: a
failed first attempt gets one more try whose prompt shows the failing tests'
output (`feedback_prompt`); a problem counts when either attempt passes.
`pass_at_k` is the unbiased estimator for k of n samples.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from typing import Any

from astor_jax.execution import Job, Limits, Result
from astor_jax.tasks import harness
from astor_jax.tasks.base import Example, Reward, Task, mean, zero
from astor_jax.tasks.extract import code_block

ANSWER_FORMAT = "Reply with the complete code in a ```python block."


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples with c correct (Chen et al., 2021, arXiv:2107.03374).

  pass@k = 1 - C(n - c, k) / C(n, k), computed as a stable product.
  """
  if not 0 <= c <= n or k < 1 or k > n:
    raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  prod = 1.0
  for i in range(n - c + 1, n + 1):
    prod *= 1.0 - k / i
  return 1.0 - prod


def count_tests(suite: Mapping[str, Any]) -> int:
  """How many test results a suite must report (read from its source)."""
  kind = suite.get("kind", "script")
  if kind == "script":
    return 1
  tree = ast.parse(suite["code"])
  if kind == "functions":
    return 1 + sum(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                   and n.name.startswith("test") for n in tree.body)
  count = 0  # unittest: test methods of classes at module level
  for node in tree.body:
    if isinstance(node, ast.ClassDef):
      count += sum(isinstance(n, ast.FunctionDef) and n.name.startswith("test")
                   for n in node.body)
  return count


def _defines(tree: ast.Module, name: str) -> bool:
  for node in tree.body:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
      if node.name == name:
        return True
    elif isinstance(node, ast.Assign):
      if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
        return True
    elif isinstance(node, ast.ImportFrom | ast.Import):
      if any((a.asname or a.name) == name for a in node.names):
        return True
  return False


def _parse(code: str) -> tuple[ast.Module | None, str]:
  try:
    return ast.parse(code), ""
  except SyntaxError as exc:
    return None, f"syntax error on line {exc.lineno}: {exc.msg}"
  except (ValueError, MemoryError, RecursionError) as exc:
    return None, f"the code cannot be parsed: {type(exc).__name__}"


def _stub_imports(stub: str) -> list[str]:
  tree, _ = _parse(stub)
  if tree is None:
    return []
  return [ast.get_source_segment(stub, n) or "" for n in tree.body
          if isinstance(n, ast.Import | ast.ImportFrom)]


def assemble_solution(example: Example, completion: str) -> tuple[str | None, str]:
  """The program to test, or (None, reason) when the answer is malformed."""
  code = code_block(completion)
  if code is None:
    return None, "no ```python code block in the answer"
  tree, reason = _parse(code)
  entry = example.get("entry_point") or ""
  stub = example.get("stub") or ""
  if tree is None or (entry and not _defines(tree, entry)):
    # A completion of the stub (a function body) is read after the stub.
    joined = stub.rstrip() + "\n" + code
    joined_tree, _ = _parse(joined) if stub else (None, "")
    if joined_tree is None or (entry and not _defines(joined_tree, entry)):
      return None, reason or f"the code does not define {entry}"
    code = joined
  missing = [line for line in _stub_imports(stub) if line and line not in code]
  if missing:
    code = "\n".join(missing) + "\n" + code
  return code, ""


class CodeGenTask(Task):
  """Whole-solution code generation scored by hidden tests.

  Args:
    limits: sandbox limits of one job (None: `Limits()` with a timeout of
      `run_timeout_s` plus start-up slack).
    run_timeout_s: wall-clock limit for loading the solution and running all
      of its tests.
    partial_credit: reward the fraction of passed tests instead of 0/1.
  """

  name = "code_gen"
  metric_names = ("pass@1", "pass@2")

  def __init__(self, limits: Limits | None = None, run_timeout_s: float = 3.0,
               partial_credit: bool = False):
    self.limits = limits
    self.run_timeout_s = run_timeout_s
    self.partial_credit = partial_credit

  def build_prompt(self, example: Example) -> str:
    instructions = (example.get("instructions") or "").strip()
    head = f"{instructions}\n" if instructions else ""
    return f"{head}{ANSWER_FORMAT}\n```python\n{example['stub'].rstrip()}\n```\n"

  def reference_completion(self, example: Example) -> str:
    return f"```python\n{example['reference'].rstrip()}\n```"

  def feedback_prompt(self, example: Example, completion: str, reward: Reward) -> str:
    """Aider's second try: the first answer, the failing tests' output, a request to fix."""
    failure = reward.feedback or reward.reason
    return (f"{self.build_prompt(example)}{completion.rstrip()}\n"
            f"The tests failed:\n{failure.strip()}\n"
            f"The tests are correct; fix the code. {ANSWER_FORMAT}\n")

  def _guard(self, example: Example) -> tuple[str, ...]:
    if "guard" in example and example["guard"] is not None:
      return tuple(example["guard"])
    entry = example.get("entry_point") or ""
    return (entry,) if entry else ()

  def make_jobs(self, example: Example, completion: str) -> list[Job]:
    program, _ = assemble_solution(example, completion)
    if program is None:
      return []
    modules = tuple(example.get("modules") or ("solution",))
    run = harness.Run(
        name="solution", program=program,
        suites=tuple(harness.Suite(**s) for s in example["suites"]),
        program_file=f"{modules[0]}.py", modules=modules, guard=self._guard(example),
        timeout_s=self.run_timeout_s)
    limits = self.limits or Limits(timeout_s=self.run_timeout_s + 3.0)
    return [harness.runner_job([run], limits)]

  def reward(self, example: Example, completion: str, jobs: Sequence[Job],
             results: Sequence[Result]) -> Reward:
    expected = sum(count_tests(s) for s in example["suites"])
    program, reason = assemble_solution(example, completion)
    if program is None:
      return zero(reason, passed=0.0, tests_passed=0.0, tests_total=float(expected))
    runs, why = harness.read_record(jobs[0], results[0])
    if runs is None:
      return zero(why, passed=0.0, tests_passed=0.0, tests_total=float(expected),
                  **harness.sandbox_flag(results[0]))
    run = runs[0]
    passed = run.all_passed(expected)
    n_ok = float(run.passed) if run.complete else 0.0
    breakdown = {"passed": float(passed), "tests_passed": n_ok, "tests_total": float(expected)}
    if passed:
      return Reward(1.0, breakdown, f"all {expected} tests passed")
    value = min(n_ok / expected, 1.0) if self.partial_credit and expected else 0.0
    if run.load_error:
      why = "the solution raised while loading"
    elif not run.complete:
      why = f"the run did not finish ({run.status})"
    else:
      why = f"{expected - int(n_ok)} of {expected} tests failed"
    return Reward(value, breakdown, why, feedback=run.failure_text())

  def metrics(self, examples: Sequence[Example], rewards: Sequence[Reward],
              retry_rewards: Sequence[Reward | None] | None = None) -> dict[str, float]:
    first = [r.breakdown.get("passed", 0.0) for r in rewards]
    retry = list(retry_rewards) if retry_rewards is not None else [None] * len(rewards)
    second = [max(p, r.breakdown.get("passed", 0.0) if r is not None else 0.0)
              for p, r in zip(first, retry)]
    return {"pass@1": 100.0 * mean(first), "pass@2": 100.0 * mean(second)}


def estimate_pass_at_k(correct_counts: Sequence[int], n: int, k: int) -> float:
  """Mean unbiased pass@k (percent) over problems with `n` samples each."""
  if not correct_counts:
    return math.nan
  return 100.0 * mean([pass_at_k(n, c, k) for c in correct_counts])
