"""The tiny world: deterministic examples of the four tasks, in fixed splits.

Everything is a function of `WorldSpec` (seed, sizes, difficulty levels):

  code_io     a program and one call; even examples ask for the output, odd
              ones for an input (CRUXEval's two directions).
  code_gen    the program's English spec and signature; hidden tests are
              one assertion per input, inputs chosen to cover every branch.
  test_gen    the program as focal code; the reference answer is two
              assertions on the simplest inputs (shortest input and output
              text) that reach full line and branch coverage (checked with
              coverage.py when the world is built), so that a small policy can
              work their outputs out. The first of them (the one covering the
              most lines and branches) is shown in the prompt as an example
              test (`example_test`, like a docstring example): the answer
              format is given, and the policy must still work out the other
              (simplest) one's output for full coverage and mutation kills.
  commit_msg  an edit of the program as a unified diff, with its message.

Splits are disjoint by construction: a program's split is a hash of its code
and the seed (2/3 train, 1/6 validation, 1/6 test), so a test program never
appears in training, under any task, at any size. Within a split, examples
cycle through the difficulty levels, and no program repeats within a task
(code I/O may reuse a program with a different call).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from astor_jax.data import commits, programs

TASKS = ("code_io", "code_gen", "test_gen", "commit_msg")
SPLITS = ("train", "validation", "test")
_SPLIT_BUCKETS = {"train": range(0, 8), "validation": range(8, 10), "test": range(10, 12)}
_HIDDEN_TESTS = 5
# Two assertions, each of whose outputs a small policy must compute correctly
# for the tests to pass: with three on arbitrary inputs, a warm start that gets
# one output right a third of the time passed almost never (no reward variance).
_REFERENCE_TESTS = 2
_TEST_VALUE_CHARS = 12
_CANDIDATE_CALLS = 12
_TEST_CANDIDATE_CALLS = 24  # more candidates: more simple inputs to choose from
# Bumped whenever the generators change what they produce, so cached datasets
# (TFDS names carry `WorldSpec.fingerprint()`) are rebuilt instead of reused.
GENERATOR_VERSION = 3
_MAX_DRAWS_PER_EXAMPLE = 400


@dataclasses.dataclass(frozen=True)
class WorldSpec:
  """What determines the tiny world.

  Attributes:
    seed: world seed (`config.data.world_seed`).
    train_per_task: training examples per task.
    eval_per_task: validation and test examples per task (each).
    difficulties: levels drawn from, cycled in order (`config.data.difficulties`).
  """

  seed: int = 0
  train_per_task: int = 256
  eval_per_task: int = 48
  difficulties: tuple[int, ...] = programs.LEVELS

  def __post_init__(self):
    bad = [d for d in self.difficulties if d not in programs.LEVELS]
    if not self.difficulties or bad:
      raise ValueError(f"WorldSpec.difficulties: {self.difficulties!r} must be a non-empty "
                       f"list drawn from {programs.LEVELS} (config.data.difficulties)")

  def size(self, split: str) -> int:
    return self.train_per_task if split == "train" else self.eval_per_task

  def fingerprint(self) -> str:
    """A short hash of the spec, for cache directory names."""
    text = json.dumps({**dataclasses.asdict(self), "generator": GENERATOR_VERSION},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def split_of(key: str, seed: int) -> str:
  """The split a program belongs to (stable: depends only on its code and the seed)."""
  bucket = int(hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest(), 16) % 12
  return next(name for name, span in _SPLIT_BUCKETS.items() if bucket in span)


def _full_coverage(program: programs.Program, calls: Sequence[programs.Call]) -> bool:
  """coverage.py agrees that `calls` reach every line and branch of the program."""
  import coverage

  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "focal.py")
    with open(path, "w") as fp:
      fp.write(program.code)
    cov = coverage.Coverage(data_file=None, branch=True, include=[path], config_file=False)
    namespace: dict[str, Any] = {}
    cov.start()
    try:
      exec(compile(program.code, path, "exec"), namespace)  # noqa: S102 - our own program
      for call in calls:
        namespace[programs.FUNCTION_NAME](*call.args)
    finally:
      cov.stop()
    report = os.path.join(tmp, "coverage.json")
    cov.json_report(outfile=report)
    with open(report) as fp:
      totals = json.load(fp)["totals"]
  return (totals["covered_lines"] == totals["num_statements"]
          and totals["covered_branches"] == totals["num_branches"])


def _base(task: str, split: str, index: int, difficulty: int) -> dict[str, Any]:
  return {"task": task, "id": f"tw-{task}-{split}-{index:05d}", "difficulty": difficulty,
          "source": "tiny_world"}


def _code_io(rng, program, split, index):
  calls = programs.sample_calls(rng, program, 1)
  if not calls:
    return None
  call = calls[0]
  return {**_base("code_io", split, index, program.difficulty), "code": program.code,
          "entry_point": programs.FUNCTION_NAME, "input": call.args_source,
          "output": call.output_source, "mode": "output" if index % 2 == 0 else "input"}


def _code_gen(rng, program, split, index):
  calls = programs.sample_calls(rng, program, _CANDIDATE_CALLS)
  chosen = programs.covering_calls(program, calls, _HIDDEN_TESTS)
  if len(chosen) < 3 or len({c.output_source for c in chosen}) < 2:
    return None
  suites = [{"name": f"test_{i}", "code": c.assertion(), "kind": "script", "module": ""}
            for i, c in enumerate(chosen)]
  return {**_base("code_gen", split, index, program.difficulty),
          "instructions": program.instruction, "stub": program.signature,
          "entry_point": programs.FUNCTION_NAME, "suites": suites, "guard": None,
          "modules": ["solution"], "reference": program.code}


def _simplicity(call: programs.Call) -> tuple[int, str]:
  """Sort key: shorter input and output text first (`f(0) == 1` before `f(7) == 22`)."""
  return len(call.args_source) + len(call.output_source), call.args_source


def _test_gen(rng, program, split, index):
  calls = programs.sample_calls(rng, program, _TEST_CANDIDATE_CALLS, _TEST_VALUE_CHARS)
  # covering_calls prefers earlier calls on ties: the simplest inputs that cover.
  chosen = programs.covering_calls(program, sorted(calls, key=_simplicity), _REFERENCE_TESTS)
  if len(chosen) < 2 or not _full_coverage(program, chosen):
    return None
  # The prompt's example test comes first: the call covering the most arcs,
  # ties to the longer text, so that the one left to the policy is the simplest.
  chosen.sort(key=lambda c: (len(programs.traced_arcs(program, c.args)), _simplicity(c)),
              reverse=True)
  asserts = [c.assertion() for c in chosen]
  suites = [{"name": f"test_{i}", "code": a, "kind": "script", "module": ""}
            for i, a in enumerate(asserts)]
  return {**_base("test_gen", split, index, program.difficulty), "code": program.code,
          "entry_point": programs.FUNCTION_NAME, "suites": suites,
          "reference_tests": "\n".join(asserts) + "\n", "example_test": asserts[0],
          "modules": ["focal"]}


def _commit_msg(rng, program, split, index):
  commit = commits.sample_commit(rng, program)
  if commit is None:
    return None
  return {**_base("commit_msg", split, index, commit.difficulty), "diff": commit.diff,
          "message": commit.message}


_BUILDERS = {"code_io": _code_io, "code_gen": _code_gen, "test_gen": _test_gen,
             "commit_msg": _commit_msg}


def iter_examples(task: str, split: str, spec: WorldSpec) -> Iterator[dict[str, Any]]:
  """The split's examples of one task, in order (deterministic).

  Raises:
    ValueError: unknown task or split, or the world cannot produce that many
      distinct examples (lower `config.data.*_per_task` or add levels).
  """
  if task not in _BUILDERS:
    raise ValueError(f"unknown tiny-world task {task!r}; known: {', '.join(TASKS)}")
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
  rng = random.Random(f"tiny-world/{spec.seed}/{task}/{split}")
  seen: set[str] = set()
  count = spec.size(split)
  for index in range(count):
    difficulty = spec.difficulties[index % len(spec.difficulties)]
    for _ in range(_MAX_DRAWS_PER_EXAMPLE):
      program = programs.sample_program(rng, difficulty)
      if split_of(program.code, spec.seed) != split:
        continue
      if task != "code_io" and program.code in seen:
        continue
      example = _BUILDERS[task](rng, program, split, index)
      if example is not None:
        seen.add(program.code)
        yield example
        break
    else:
      raise ValueError(
          f"the tiny world ran out of distinct {task} programs of difficulty {difficulty} "
          f"for the {split} split after {index} examples; lower config.data."
          f"{'train' if split == 'train' else 'eval'}_per_task or widen "
          "config.data.difficulties")


def examples(task: str, split: str, spec: WorldSpec) -> list[dict[str, Any]]:
  """All examples of one task and split."""
  return list(iter_examples(task, split, spec))
