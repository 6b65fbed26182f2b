"""Rewards and metrics of the four tasks on tiny-world examples, scored in one batch."""

import math

import pytest

from astor_jax.tasks import text_metrics
from astor_jax.tasks.base import Reward, score_batch
from astor_jax.tasks.registry import TASKS


class CountingPool:
  """Forwards to the real pool and counts submissions."""

  def __init__(self, pool):
    self.pool = pool
    self.submits = 0

  def submit(self, jobs):
    self.submits += 1
    return self.pool.submit(jobs)


def wrong_completion(task, example):
  """A well-formed but incorrect answer for each task."""
  name = example["task"]
  if name == "code_io":
    if example["mode"] == "output":
      return "[ANSWER]'not the output'[/ANSWER]"
    return "[ANSWER]f(None)[/ANSWER]"
  if name == "code_gen":
    return f"```python\n{example['stub']}\n    return None\n```"
  if name == "test_gen":
    call = example["reference_tests"].splitlines()[0].split(" == ")[0]
    return f"```python\n{call} == 'not the output'\n```"
  return "zebra quantum"


MALFORMED = ["", "I think the answer is obvious.", "```python\ndef f(:\n    return\n```",
             "[ANSWER]f(1, [/ANSWER]"]
# Any non-empty text is a commit message; only an empty one is malformed.
MALFORMED_MESSAGES = ["", "  \n\t\n"]


def malformed(name):
  return MALFORMED_MESSAGES if name == "commit_msg" else MALFORMED


@pytest.fixture(scope="module")
def batch(pool, tasks, tiny_examples):
  """References, wrong and malformed answers for every task, scored in one submission."""
  items = []
  for name in TASKS:
    for e in tiny_examples[name]:
      items.append(("reference", e, tasks[name].reference_completion(e)))
      items.append(("wrong", e, wrong_completion(tasks[name], e)))
    for text in malformed(name):
      items.append(("malformed", tiny_examples[name][0], text))
  counting = CountingPool(pool)
  future = score_batch(tasks, [e for _, e, _ in items], [c for _, _, c in items], counting)
  rewards = future.result(timeout=300)
  return items, rewards, counting.submits


def test_one_submission_for_a_mixed_batch(batch):
  _, rewards, submits = batch
  assert submits == 1
  assert all(isinstance(r, Reward) for r in rewards)


@pytest.mark.parametrize("name", TASKS)
def test_reference_answers_get_reward_one(batch, name):
  items, rewards, _ = batch
  got = [(e["id"], r.value, r.reason) for (kind, e, _), r in zip(items, rewards)
         if kind == "reference" and e["task"] == name]
  assert got and all(value == 1.0 for _, value, _ in got), got


@pytest.mark.parametrize("name", TASKS)
def test_wrong_and_malformed_answers_get_zero_with_a_reason(batch, name):
  items, rewards, _ = batch
  got = [(kind, r) for (kind, e, _), r in zip(items, rewards)
         if kind != "reference" and e["task"] == name]
  assert len(got) == 4 + len(malformed(name))
  for kind, reward in got:
    assert reward.value == 0.0, (kind, reward)
    assert reward.reason


@pytest.mark.parametrize("name", TASKS)
def test_reference_answers_get_full_metrics(batch, tasks, name):
  items, rewards, _ = batch
  pairs = [(e, r) for (kind, e, _), r in zip(items, rewards)
           if kind == "reference" and e["task"] == name]
  metrics = tasks[name].metrics([e for e, _ in pairs], [r for _, r in pairs])
  assert set(tasks[name].metric_names) <= set(metrics)
  if name == "commit_msg":
    # METEOR's fragmentation penalty keeps an exact copy below 1: the maximum is
    # nltk's own value for identical strings.
    best = [text_metrics.meteor(e["message"], e["message"]) for e, _ in pairs]
    assert metrics["bleu"] == pytest.approx(100.0)
    assert metrics["rouge_l"] == pytest.approx(100.0)
    assert metrics["meteor"] == pytest.approx(100.0 * sum(best) / len(best))
  else:
    for key, value in metrics.items():
      assert value == pytest.approx(100.0), (key, metrics)


@pytest.mark.parametrize("name", TASKS)
def test_wrong_answers_get_zero_metrics(batch, tasks, name):
  items, rewards, _ = batch
  pairs = [(e, r) for (kind, e, _), r in zip(items, rewards)
           if kind == "wrong" and e["task"] == name]
  metrics = tasks[name].metrics([e for e, _ in pairs], [r for _, r in pairs])
  for key in tasks[name].metric_names:
    assert metrics[key] == 0.0, (key, metrics)


def test_code_io_accepts_any_input_that_produces_the_output(pool, tasks):
  example = {"task": "code_io", "id": "x", "difficulty": 1, "source": "test",
             "code": "def f(x):\n    return x % 3\n", "entry_point": "f", "input": "4",
             "output": "1", "mode": "input"}
  rewards = tasks["code_io"].score([example] * 4, [
      "[ANSWER]f(7)[/ANSWER]", "[ANSWER]assert f(10) == 1[/ANSWER]", "[ANSWER]1[/ANSWER]",
      "[ANSWER]f(6)[/ANSWER]"], pool)
  assert [r.value for r in rewards] == [1.0, 1.0, 1.0, 0.0]


def test_code_gen_pass_at_2_uses_the_feedback_of_the_failed_attempt(pool, tasks, tiny_examples):
  task = tasks["code_gen"]
  example = tiny_examples["code_gen"][2]
  first = task.score([example], [wrong_completion(task, example)], pool)[0]
  assert first.value == 0.0 and "AssertionError" in first.feedback
  prompt = task.feedback_prompt(example, wrong_completion(task, example), first)
  assert prompt.startswith(task.build_prompt(example))
  assert first.feedback.strip() in prompt
  second = task.score([example], [task.reference_completion(example)], pool)[0]
  metrics = task.metrics([example, example], [first, first], [second, None])
  assert metrics == {"pass@1": 0.0, "pass@2": 50.0}


def test_code_gen_partial_credit_option(pool, tiny_examples):
  from astor_jax.tasks.code_gen import CodeGenTask

  example = tiny_examples["code_gen"][0]
  first_test = example["suites"][0]["code"]  # `assert f(ARGS) == OUT`
  args, out = first_test[len("assert f("):].rsplit(") == ", 1)
  body = f"    if ({args},) == ({args},):\n        return {out}\n    return None"
  partial = f"```python\n{example['stub']}\n{body}\n```"
  strict = CodeGenTask().score([example], [partial], pool)[0]
  lenient = CodeGenTask(partial_credit=True).score([example], [partial], pool)[0]
  n = len(example["suites"])
  assert strict.value == 0.0
  assert lenient.breakdown["tests_total"] == n
  assert 0.0 < lenient.value < 1.0


def test_pass_at_k_matches_the_combinatorial_definition():
  from itertools import combinations

  from astor_jax.tasks.code_gen import estimate_pass_at_k, pass_at_k

  for n in range(1, 7):
    for c in range(n + 1):
      for k in range(1, n + 1):
        subsets = list(combinations(range(n), k))
        exact = sum(any(i < c for i in s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(exact)
  assert estimate_pass_at_k([0, 5], 5, 1) == pytest.approx(50.0)
  assert math.isnan(estimate_pass_at_k([], 5, 1))
  with pytest.raises(ValueError, match="pass_at_k"):
    pass_at_k(3, 4, 1)


def test_test_gen_rewards_mutation_kills_not_just_coverage(pool, tasks, tiny_examples):
  task = tasks["test_gen"]
  example = next(e for e in tiny_examples["test_gen"] if e["difficulty"] >= 3)
  calls = [line.split(" == ")[0][len("assert "):]
           for line in example["reference_tests"].splitlines()]
  no_checks = "```python\n" + "\n".join(f"{c}\n" for c in calls) + "assert True\n```"
  rewards = task.score([example] * 2, [no_checks, task.reference_completion(example)], pool)
  weak, strong = rewards
  assert weak.breakdown["line_coverage"] == 1.0
  assert weak.breakdown.get("mutation_score", 0.0) < 1.0
  assert 0.0 < weak.value < strong.value == 1.0


def test_sandbox_failures_are_flagged(tasks, tiny_examples):
  from astor_jax.execution import Result

  failed = Result(status="sandbox_error", exit_code=None, stderr="worker died")
  for name in ("code_io", "code_gen", "test_gen"):
    example = tiny_examples[name][0]
    completion = tasks[name].reference_completion(example)
    jobs = tasks[name].make_jobs(example, completion)
    reward = tasks[name].reward(example, completion, jobs, [failed])
    assert reward.value == 0.0 and reward.breakdown["sandbox_error"] == 1.0
    assert "sandbox_error" in reward.reason


def test_make_tasks_follows_the_config():
  from astor_jax.tasks import make_tasks, task_ids
  from configs.astor import get_config

  config = get_config("smoke")
  config.tasks = ("commit_msg", "code_gen")
  config.task_opts.code_gen_partial_credit = True
  config.task_opts.commit_weights = (0.0, 1.0, 0.0)
  config.execution.timeout_s = 1.5
  made = make_tasks(config)
  assert list(made) == ["commit_msg", "code_gen"]
  assert task_ids(config.tasks) == {"commit_msg": 0, "code_gen": 1}
  assert made["code_gen"].partial_credit and made["code_gen"].run_timeout_s == 1.5
  assert made["code_gen"].limits.memory_mb == config.execution.memory_mb
  assert made["commit_msg"].weights == (0.0, 1.0, 0.0)


def test_test_gen_prompt_shows_the_example_test_and_copying_it_is_not_enough(
    pool, tasks, tiny_examples):
  task = tasks["test_gen"]
  for e in tiny_examples["test_gen"]:
    prompt = task.build_prompt(e)
    assert prompt.endswith(f"Example test: {e['example_test']}\n")
    assert e["code"].rstrip() in prompt
    without = {k: v for k, v in e.items() if k != "example_test"}
    assert "Example test" not in task.build_prompt(without)  # real-data examples
  # A branching program: the example alone passes but misses a branch, so it
  # earns less than the reference; a wrong second assertion earns nothing.
  example = next(e for e in tiny_examples["test_gen"] if e["difficulty"] in (2, 4))
  second = example["reference_tests"].splitlines()[1]
  copy_only = f"```python\n{example['example_test']}\n```"
  wrong_second = (f"```python\n{example['example_test']}\n"
                  f"{second.split(' == ')[0]} == 'not the output'\n```")
  copy, reference, wrong = task.score(
      [example] * 3, [copy_only, task.reference_completion(example), wrong_second], pool)
  assert reference.value == 1.0
  assert copy.breakdown["run"] == 1.0 and copy.breakdown["branch_coverage"] < 1.0
  assert 0.0 < copy.value < reference.value
  assert wrong.value == 0.0
