"""Tiny world: deterministic by seed, disjoint splits, correct I/O, graded difficulty."""

import dataclasses

import pytest

from astor_jax.data import programs, world

SPEC = world.WorldSpec(seed=5, train_per_task=16, eval_per_task=8)


@pytest.fixture(scope="module")
def generated():
  return {(t, s): world.examples(t, s, SPEC) for t in world.TASKS for s in world.SPLITS}


def test_same_seed_same_world(generated):
  for task in world.TASKS:
    assert world.examples(task, "validation", SPEC) == generated[task, "validation"]


def test_another_seed_another_world(generated):
  other = dataclasses.replace(SPEC, seed=6)
  for task in world.TASKS:
    assert world.examples(task, "test", other) != generated[task, "test"]


def test_sizes_ids_and_difficulty_cycle(generated):
  for (task, split), examples in generated.items():
    assert len(examples) == SPEC.size(split)
    assert len({e["id"] for e in examples}) == len(examples)
    assert [e["task"] for e in examples] == [task] * len(examples)
    if task != "commit_msg":  # commit difficulty is the edit's, not the program's
      assert [e["difficulty"] for e in examples] == [
          programs.LEVELS[i % 4] for i in range(len(examples))]


def _program_code(example):
  return {"code_io": "code", "code_gen": "reference", "test_gen": "code"}[example["task"]]


def test_splits_are_disjoint_across_tasks(generated):
  codes = {s: set() for s in world.SPLITS}
  for (task, split), examples in generated.items():
    if task == "commit_msg":
      continue
    for e in examples:
      code = e[_program_code(e)]
      assert world.split_of(code, SPEC.seed) == split
      codes[split].add(code)
  assert not codes["train"] & codes["test"]
  assert not codes["train"] & codes["validation"]
  assert not codes["validation"] & codes["test"]
  diffs = {s: {e["diff"] for e in generated["commit_msg", s]} for s in world.SPLITS}
  assert not diffs["train"] & diffs["test"]


def test_split_of_depends_only_on_code_and_seed():
  assert world.split_of("def f(x):\n    return x\n", 0) == world.split_of(
      "def f(x):\n    return x\n", 0)
  seen = {world.split_of(f"k{i}", 0) for i in range(200)}
  assert seen == set(world.SPLITS)


def test_io_pairs_and_hidden_tests_are_true(generated):
  for e in generated["code_io", "train"]:
    ns = {}
    exec(e["code"], ns)  # our own generated programs
    assert eval(f"f({e['input']})", ns) == eval(e["output"])
    assert e["mode"] in ("input", "output")
  for e in generated["code_gen", "train"] + generated["test_gen", "train"]:
    ns = {}
    exec(e.get("reference", e.get("code")), ns)
    for suite in e["suites"]:
      exec(suite["code"], dict(ns))


def test_test_gen_reference_is_two_simple_assertions(generated):
  # Two assertions on the simplest covering inputs: short enough that a small
  # policy can work the outputs out (module doc of world.py).
  for e in generated["test_gen", "train"] + generated["test_gen", "test"]:
    lines = e["reference_tests"].splitlines()
    assert len(lines) == 2 and all(line.startswith("assert f(") for line in lines)
    assert [s["code"] for s in e["suites"]] == lines
    assert all(len(line) <= 48 for line in lines), lines
  last_args = [e["reference_tests"].splitlines()[1].split(")")[0]
               for e in generated["test_gen", "train"]]
  # The assertion left to the policy (the second) is on an empty or zero input
  # where one covers something.
  assert sum(a.endswith(("f(0", "f([]", "f(''")) for a in last_args) >= len(last_args) // 2


def test_test_gen_example_test_is_the_first_reference_assertion(generated, tmp_path):
  for i, e in enumerate(generated["test_gen", "train"] + generated["test_gen", "test"]):
    first, second = e["reference_tests"].splitlines()
    assert e["example_test"] == first
    # The example covers at least as many lines and branches as the other one
    # (measured with coverage.py, as the scorer does, not the generator's tracer).
    focal = tmp_path / f"focal_{i}.py"
    focal.write_text(e["code"])
    assert _arcs(focal, first) >= _arcs(focal, second)


def _arcs(focal, assertion):
  """coverage.py's executed arcs of the focal file when `assertion`'s call runs."""
  import coverage

  ns = {}
  code = compile(focal.read_text(), str(focal), "exec")  # our own generated program
  cov = coverage.Coverage(branch=True, data_file=None)
  cov.start()
  try:
    exec(code, ns)
    eval(assertion[len("assert "):].split(" == ")[0], ns)
  finally:
    cov.stop()
  return len(cov.get_data().arcs(str(focal)) or ())


def test_fingerprint_names_the_generator_version():
  assert SPEC.fingerprint() == dataclasses.replace(SPEC).fingerprint()
  assert SPEC.fingerprint() != dataclasses.replace(SPEC, seed=6).fingerprint()
  original = world.GENERATOR_VERSION
  try:
    world.GENERATOR_VERSION = original + 1
    changed = SPEC.fingerprint()
  finally:
    world.GENERATOR_VERSION = original
  assert changed != SPEC.fingerprint()


def test_code_gen_instructions_and_stub(generated):
  for e in generated["code_gen", "test"]:
    assert e["stub"].startswith("def f(") and e["reference"].startswith(e["stub"])
    assert e["instructions"].endswith(".")
    assert len(e["suites"]) >= 3


def test_commit_diffs_and_messages(generated):
  for e in generated["commit_msg", "train"]:
    lines = e["diff"].splitlines()
    assert lines[0].startswith("--- a/") and lines[1].startswith("+++ b/")
    assert any(line.startswith("+") and not line.startswith("+++") for line in lines)
    assert e["message"] and "\n" not in e["message"]
    assert 1 <= e["difficulty"] <= 3


def test_bad_specs_are_refused_with_the_config_field():
  with pytest.raises(ValueError, match="config.data.difficulties"):
    world.WorldSpec(difficulties=(0, 5))
  with pytest.raises(ValueError, match="config.data.train_per_task"):
    world.examples("code_gen", "train", world.WorldSpec(train_per_task=2000, difficulties=(1,)))
  with pytest.raises(ValueError, match="unknown tiny-world task"):
    world.examples("poetry", "train", SPEC)
