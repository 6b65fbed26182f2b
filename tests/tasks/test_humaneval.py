"""All 164 HumanEval canonical solutions pass the code-generation scorer; corrupted ones fail."""

import pytest

from astor_jax.data import formats


@pytest.fixture(scope="module")
def problems():
  return formats.load_humaneval(formats.HUMANEVAL_PACKAGE)


def test_humaneval_has_164_problems(problems):
  assert len(problems) == 164
  assert len({p["id"] for p in problems}) == 164


def test_every_canonical_solution_passes(pool, tasks, problems):
  task = tasks["code_gen"]
  rewards = task.score(problems, [task.reference_completion(p) for p in problems], pool)
  failed = [(p["id"], r.reason, r.feedback[:200]) for p, r in zip(problems, rewards)
            if r.value != 1.0]
  assert not failed
  assert task.metrics(problems, rewards)["pass@1"] == 100.0


def test_corrupted_solutions_fail(pool, tasks, problems):
  """Even problems: a body that returns None; odd ones: the next problem's body."""
  task = tasks["code_gen"]
  completions = []
  for i, p in enumerate(problems):
    if i % 2 == 0:
      body = "    return None\n"
    else:
      other = problems[(i + 1) % len(problems)]
      body = other["reference"][len(other["stub"]):]
    completions.append(f"```python\n{p['stub']}{body}```")
  rewards = task.score(problems, completions, pool)
  passing = [p["id"] for p, r in zip(problems, rewards) if r.value != 0.0]
  assert not passing


def test_body_only_completions_are_joined_with_the_stub(pool, tasks, problems):
  """EvalPlus/HumanEval convention: a completion may continue the prompt."""
  task = tasks["code_gen"]
  body = problems[0]["reference"][len(problems[0]["stub"]):]
  reward = task.score([problems[0]], [f"```python\n{body}```"], pool)[0]
  assert reward.value == 1.0, reward
