"""Code I/O prediction (CRUXEval): predict a function's output, or an input.

Example fields (besides `task`, `id`, `difficulty`, `source`):
  code         source defining the function `entry_point` (CRUXEval: `f`).
  entry_point  the function's name.
  input        the argument list of the given call, as source (`[1, 2], 3`).
  output       the returned value, as source (`[2, 4]`).
  mode         `output`: given code and input, predict the output;
               `input`: given code and output, predict an input.

Answer (CRUXEval's convention): `[ANSWER]...[/ANSWER]` holding the value
(`[ANSWER][2, 4][/ANSWER]`), or for input prediction the call
(`[ANSWER]f([1, 2], 3)[/ANSWER]`); a full `assert f(...) == ...` is also read.

Correctness is decided by execution, as in CRUXEval: `f(input) == prediction`
for output prediction, `f(prediction) == output` for input prediction, so any
input that produces the output counts. Unlike CRUXEval's harness, predicted
values must be Python literals (numbers, strings, tuples, lists, dicts, sets,
booleans, None): no model-written code runs, so an object with an always-true
`__eq__` or a call to `exit()` cannot pass. CRUXEval's own answers are
literals, so this does not reject correct answers.

Metrics: input accuracy and output accuracy (percent).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

from astor_jax.execution import Job, Limits, Result
from astor_jax.tasks import harness
from astor_jax.tasks.base import Example, Reward, Task, mean, zero
from astor_jax.tasks.extract import tagged_answer

MODES = ("input", "output")


def _is_literal(node: ast.AST) -> bool:
  try:
    ast.literal_eval(node)
  except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
    return False
  return True


def _parse(text: str) -> ast.AST | None:
  try:
    tree = ast.parse(text.strip(), mode="exec")
  except (SyntaxError, ValueError, MemoryError, RecursionError):
    return None
  if len(tree.body) != 1:
    return None
  stmt = tree.body[0]
  if isinstance(stmt, ast.Assert):
    return stmt.test
  if isinstance(stmt, ast.Expr):
    return stmt.value
  return None


def _split_assertion(node: ast.AST) -> tuple[ast.AST, ast.AST] | None:
  if (isinstance(node, ast.Compare) and len(node.ops) == 1
      and isinstance(node.ops[0], ast.Eq)):
    return node.left, node.comparators[0]
  return None


def parse_output_answer(answer: str, entry_point: str) -> tuple[str | None, str]:
  """Returns (literal source, "") or (None, reason)."""
  node = _parse(answer)
  if node is None:
    return None, "the answer is not a single Python expression"
  sides = _split_assertion(node)
  if sides is not None and isinstance(sides[0], ast.Call):
    node = sides[1]
  if not _is_literal(node):
    return None, "the predicted output is not a Python literal"
  return ast.unparse(node), ""


def parse_input_answer(answer: str, entry_point: str) -> tuple[str | None, str]:
  """Returns (argument-list source, "") or (None, reason)."""
  node = _parse(answer)
  if node is None:
    return None, "the answer is not a single Python expression"
  sides = _split_assertion(node)
  if sides is not None:
    node = sides[0]
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
    if node.func.id != entry_point:
      return None, f"the answer calls {node.func.id}, not {entry_point}"
    args, keywords = node.args, node.keywords
  else:
    wrapped = _parse(f"{entry_point}({answer.strip()})")
    if not isinstance(wrapped, ast.Call):
      return None, f"the answer is neither a call of {entry_point} nor an argument list"
    args, keywords = wrapped.args, wrapped.keywords
  if any(isinstance(a, ast.Starred) for a in args) or any(k.arg is None for k in keywords):
    return None, "the predicted input uses * or ** unpacking"
  if not all(_is_literal(a) for a in args) or not all(_is_literal(k.value) for k in keywords):
    return None, "the predicted arguments are not Python literals"
  parts = [ast.unparse(a) for a in args] + [f"{k.arg}={ast.unparse(k.value)}" for k in keywords]
  return ", ".join(parts), ""


class CodeIOTask(Task):
  """CRUXEval-style input and output prediction, checked by execution.

  Args:
    limits: sandbox limits of one job (None: `Limits()` with `run_timeout_s`).
    run_timeout_s: wall-clock limit of running `f` once.
  """

  name = "code_io"
  metric_names = ("input_accuracy", "output_accuracy")

  def __init__(self, limits: Limits | None = None, run_timeout_s: float = 2.0):
    self.limits = limits
    self.run_timeout_s = run_timeout_s

  def build_prompt(self, example: Example) -> str:
    fn = example.get("entry_point", "f")
    if example["mode"] == "output":
      question = f"assert {fn}({example['input']}) == ??"
      ask = "Predict the output. Answer as [ANSWER]value[/ANSWER]."
    else:
      question = f"assert {fn}(??) == {example['output']}"
      ask = f"Predict an input. Answer as [ANSWER]{fn}(arguments)[/ANSWER]."
    return f"{ask}\n{example['code'].rstrip()}\n{question}\n"

  def reference_completion(self, example: Example) -> str:
    fn = example.get("entry_point", "f")
    if example["mode"] == "output":
      return f"[ANSWER]{example['output']}[/ANSWER]"
    return f"[ANSWER]{fn}({example['input']})[/ANSWER]"

  def _check(self, example: Example, completion: str) -> tuple[str | None, str]:
    """Returns (assertion source, "") or (None, reason) for a malformed answer."""
    if example.get("mode") not in MODES:
      raise ValueError(f"code_io example {example.get('id')!r}: mode must be one of {MODES}")
    answer = tagged_answer(completion)
    if answer is None:
      return None, "no [ANSWER]...[/ANSWER] in the completion"
    fn = example.get("entry_point", "f")
    if example["mode"] == "output":
      value, reason = parse_output_answer(answer, fn)
      if value is None:
        return None, reason
      return f"assert {fn}({example['input']}) == {value}", ""
    args, reason = parse_input_answer(answer, fn)
    if args is None:
      return None, reason
    return f"assert {fn}({args}) == {example['output']}", ""

  def make_jobs(self, example: Example, completion: str) -> list[Job]:
    assertion, _ = self._check(example, completion)
    if assertion is None:
      return []
    run = harness.Run(name="f", program=example["code"],
                      suites=(harness.Suite("prediction", assertion),),
                      timeout_s=self.run_timeout_s)
    limits = self.limits or Limits(timeout_s=self.run_timeout_s + 3.0)
    return [harness.runner_job([run], limits)]

  def reward(self, example: Example, completion: str, jobs: Sequence[Job],
             results: Sequence[Result]) -> Reward:
    assertion, reason = self._check(example, completion)
    if assertion is None:
      return zero(reason, correct=0.0)
    runs, why = harness.read_record(jobs[0], results[0])
    if runs is None:
      return zero(why, correct=0.0, **harness.sandbox_flag(results[0]))
    run = runs[0]
    if run.all_passed(expected_tests=1):
      return Reward(1.0, {"correct": 1.0}, "correct")
    return Reward(0.0, {"correct": 0.0}, "wrong prediction", feedback=run.failure_text())

  def metrics(self, examples: Sequence[Example], rewards: Sequence[Reward],
              retry_rewards=None) -> dict[str, float]:
    del retry_rewards
    out = {}
    for mode in MODES:
      values = [r.breakdown.get("correct", 0.0) for e, r in zip(examples, rewards)
                if e["mode"] == mode]
      out[f"{mode}_accuracy"] = 100.0 * mean(values) if values else float("nan")
    return out
