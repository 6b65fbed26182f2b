"""Unit-test generation for a focal function (Defects4J's role in the paper, in Python).

Example fields (besides `task`, `id`, `difficulty`, `source`):
  code             the focal code (correct implementation).
  entry_point      the focal function's name.
  suites           the benchmark's own tests of the focal code (`harness.Suite`
                   fields); they decide which mutants are detectable at all.
  reference_tests  known-good tests in the answer format (SFT target).
  example_test     optional: one known-good assertion shown in the prompt (the
                   tiny world's; its first reference test), as a docstring
                   example would be. Scoring does not change: the answer's
                   tests are scored on their own.
  modules          module names the focal code is importable as (default
                   `["focal"]`); the tests also see its names directly.

Answer: test code in a fenced ```python block: top-level `assert`s and/or
pytest-style `test_*` functions (at least one `assert`).

Scoring, all in one sandbox job:
  run       the tests against the correct code, under coverage.py (branch
            mode). They must all pass; otherwise reward 0 (the paper's
            compile/run rate counts this).
  coverage  line and branch coverage of the focal file. Code without branches
            has branch coverage equal to its line coverage.
  mutation  the tests against up to `max_mutants` first-order mutants
            (`mutation.py`). A mutant counts if the benchmark's own tests kill
            it (survivors of those are likely equivalent); the score is the
            fraction of counted mutants the answer's tests kill (fail, error
            or time out). Without counted mutants the component is dropped.
  reward    gate(run) x weighted mean of (line, branch, mutation) with
            `weights` (default 0.25, 0.25, 0.5): coverage alone is easy to
            game (call the function, assert nothing), mutation is not.

Runs are executed in a random order, and files they create are removed after
each run (see `_runner.py`), so tests cannot tell a mutant from the original
by leaving state behind.

Metrics (percent): run_rate, line_coverage, branch_coverage (failed answers
count 0), and mutation_score over examples with counted mutants.
"""

from __future__ import annotations

import ast
import math
import random
import secrets
from collections.abc import Sequence

from astor_jax.execution import Job, Limits, Result
from astor_jax.tasks import harness, mutation
from astor_jax.tasks.base import Example, Reward, Task, mean, zero
from astor_jax.tasks.code_gen import count_tests
from astor_jax.tasks.extract import code_block

FOCAL_FILE = "focal.py"
_ZERO = {"run": 0.0, "line_coverage": 0.0, "branch_coverage": 0.0}


def parse_tests(completion: str) -> tuple[str | None, str]:
  """The answer's test code, or (None, reason)."""
  code = code_block(completion)
  if code is None:
    return None, "no ```python code block in the answer"
  try:
    tree = ast.parse(code)
  except SyntaxError as exc:
    return None, f"syntax error on line {exc.lineno}: {exc.msg}"
  except (ValueError, MemoryError, RecursionError) as exc:
    return None, f"the tests cannot be parsed: {type(exc).__name__}"
  if not any(isinstance(node, ast.Assert) for node in ast.walk(tree)):
    return None, "the tests contain no assert statement"
  return code, ""


def coverage_fractions(totals) -> tuple[float, float] | None:
  """(line, branch) coverage in [0, 1] from coverage.py's JSON totals."""
  if not totals or "num_statements" not in totals:
    return None
  statements = totals["num_statements"]
  line = totals["covered_lines"] / statements if statements else 0.0
  branches = totals.get("num_branches", 0)
  branch = totals.get("covered_branches", 0) / branches if branches else line
  return line, branch


class TestGenTask(Task):
  """Test generation rewarded by passing, coverage and mutation kills.

  Args:
    limits: base sandbox limits; the job timeout is derived from the runs.
    run_timeout_s: wall-clock limit of each run (tests x one program).
    max_mutants: mutants per example (each costs two runs).
    weights: weights of (line coverage, branch coverage, mutation score).
  """

  name = "test_gen"
  metric_names = ("run_rate", "line_coverage", "branch_coverage")
  __test__ = False  # not a pytest class

  def __init__(self, limits: Limits | None = None, run_timeout_s: float = 2.0,
               max_mutants: int = 6, weights: Sequence[float] = (0.25, 0.25, 0.5)):
    if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
      raise ValueError(f"test_gen weights must be 3 non-negative numbers with a positive "
                       f"sum (line, branch, mutation); got {tuple(weights)}")
    self.limits = limits
    self.run_timeout_s = run_timeout_s
    self.max_mutants = max_mutants
    self.weights = tuple(float(w) for w in weights)

  def build_prompt(self, example: Example) -> str:
    fn = example.get("entry_point") or "the code"
    prompt = (f"Write tests for {fn} with assert statements, in a ```python block.\n"
              f"```python\n{example['code'].rstrip()}\n```\n")
    if example.get("example_test"):
      prompt += f"Example test: {example['example_test'].strip()}\n"
    return prompt

  def reference_completion(self, example: Example) -> str:
    return f"```python\n{example['reference_tests'].rstrip()}\n```"

  def _mutants(self, example: Example) -> list[str]:
    return mutation.mutants(example["code"], self.max_mutants)

  def make_jobs(self, example: Example, completion: str) -> list[Job]:
    tests, _ = parse_tests(completion)
    if tests is None:
      return []
    code = example["code"]
    modules = tuple(example.get("modules") or ("focal",))
    answer = (harness.Suite("tests", tests, kind="functions"),)
    reference = tuple(harness.Suite(**s) for s in example["suites"])
    common = dict(program_file=FOCAL_FILE, program_file_text=code, modules=modules,
                  timeout_s=self.run_timeout_s)
    runs = [harness.Run(name="original", program=code, suites=answer, coverage=True, **common)]
    for i, mutant in enumerate(self._mutants(example)):
      runs.append(harness.Run(name=f"mutant{i}/tests", program=mutant, suites=answer,
                              stop_on_failure=True, **common))
      runs.append(harness.Run(name=f"mutant{i}/reference", program=mutant, suites=reference,
                              stop_on_failure=True, **common))
    random.Random(secrets.randbits(64)).shuffle(runs)
    timeout = len(runs) * self.run_timeout_s + 3.0
    base = self.limits or Limits()
    limits = Limits(**{**vars(base), "timeout_s": max(base.timeout_s, timeout), "cpu_s": None})
    return [harness.runner_job(runs, limits)]

  def reward(self, example: Example, completion: str, jobs: Sequence[Job],
             results: Sequence[Result]) -> Reward:
    tests, reason = parse_tests(completion)
    if tests is None:
      return zero(reason, **_ZERO)
    runs, why = harness.read_record(jobs[0], results[0])
    if runs is None:
      return zero(why, **_ZERO, **harness.sandbox_flag(results[0]))
    by_name = {r.name: r for r in runs}
    expected = count_tests({"code": tests, "kind": "functions"})
    original = by_name["original"]
    if not original.all_passed(expected):
      return Reward(0.0, dict(_ZERO), "the tests do not pass on the correct code",
                    feedback=original.failure_text())
    fractions = coverage_fractions(original.coverage)
    if fractions is None:
      return zero(f"coverage could not be measured: {original.coverage}", **_ZERO)
    line, branch = fractions
    ref_expected = sum(count_tests(s) for s in example["suites"])
    counted = killed = 0
    for i in range(len(self._mutants(example))):
      if by_name[f"mutant{i}/reference"].all_passed(ref_expected):
        continue  # the benchmark's own tests cannot tell this mutant apart
      counted += 1
      killed += not by_name[f"mutant{i}/tests"].all_passed(expected)
    breakdown = {"run": 1.0, "line_coverage": line, "branch_coverage": branch,
                 "mutants": float(counted)}
    parts = [(self.weights[0], line), (self.weights[1], branch)]
    if counted:
      score = killed / counted
      breakdown["mutation_score"] = score
      parts.append((self.weights[2], score))
    total = sum(w for w, _ in parts)
    value = sum(w * v for w, v in parts) / total if total else 0.0
    value = min(max(value, 0.0), 1.0)
    text = (f"tests pass; line {line:.0%}, branch {branch:.0%}"
            + (f", killed {killed}/{counted} mutants" if counted else ""))
    return Reward(value, breakdown, text)

  def metrics(self, examples: Sequence[Example], rewards: Sequence[Reward],
              retry_rewards=None) -> dict[str, float]:
    del examples, retry_rewards
    scores = [r.breakdown["mutation_score"] for r in rewards if "mutation_score" in r.breakdown]
    return {
        "run_rate": 100.0 * mean([r.breakdown.get("run", 0.0) for r in rewards]),
        "line_coverage": 100.0 * mean([r.breakdown.get("line_coverage", 0.0) for r in rewards]),
        "branch_coverage": 100.0 * mean([r.breakdown.get("branch_coverage", 0.0)
                                         for r in rewards]),
        "mutation_score": 100.0 * mean(scores) if scores else math.nan,
    }
