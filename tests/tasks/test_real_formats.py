"""One record of each real format, loaded from files and scored: reference 1, wrong 0."""

import json
import textwrap

import pytest

from astor_jax.data import formats
from astor_jax.tasks.base import score_batch

CRUX = {"id": "sample_7", "code": "def f(text, n):\n    return text[:n].upper() + '!'\n",
        "input": "'hello', 2", "output": "'HE!'"}
MBPP = {"task_id": 11, "text": "Write a function to remove the first and last occurrence of "
        "a given character from the string.",
        "code": "def remove_Occ(s, ch):\n    s = s.replace(ch, '', 1)\n"
                "    i = s.rfind(ch)\n    return s if i < 0 else s[:i] + s[i + 1:]\n",
        "test_list": ['assert remove_Occ("hello","l") == "heo"',
                      'assert remove_Occ("abcda","a") == "bcd"',
                      'assert remove_Occ("PHP","P") == "H"'],
        "test_setup_code": "", "challenge_test_list": []}
COMMIT = {"diff": "--- a/util.py\n+++ b/util.py\n@@ -1,2 +1,2 @@\n def f(x):\n"
                  "-    return x + 1\n+    return x + 2\n", "msg": "Use 2 instead of 1 in f"}


def write_aider_exercise(root):
  ex = root / "practice" / "two-fer"
  (ex / ".docs").mkdir(parents=True)
  (ex / ".meta").mkdir()
  (ex / ".docs" / "instructions.md").write_text("Say 'One for X, one for me.'; X is 'you' "
                                                "when no name is given.\n")
  (ex / "two_fer.py").write_text("def two_fer(name):\n    pass\n")
  (ex / "two_fer_test.py").write_text(textwrap.dedent("""\
      import unittest

      from two_fer import (
          two_fer,
      )


      class TwoFerTest(unittest.TestCase):
          def test_no_name_given(self):
              self.assertEqual(two_fer(), "One for you, one for me.")

          def test_a_name_given(self):
              self.assertEqual(two_fer("Alice"), "One for Alice, one for me.")
      """))
  (ex / ".meta" / "example.py").write_text(
      "def two_fer(name='you'):\n    return f'One for {name}, one for me.'\n")
  (ex / ".meta" / "config.json").write_text(json.dumps({"files": {
      "solution": ["two_fer.py"], "test": ["two_fer_test.py"], "example": [".meta/example.py"]}}))


@pytest.fixture(scope="module")
def real_examples(tmp_path_factory):
  root = tmp_path_factory.mktemp("formats")
  (root / "crux.jsonl").write_text(json.dumps(CRUX) + "\n")
  (root / "mbpp.jsonl").write_text(json.dumps(MBPP) + "\n")
  (root / "commits.jsonl").write_text(json.dumps(COMMIT) + "\n")
  write_aider_exercise(root / "aider")
  humaneval = formats.load_humaneval(formats.HUMANEVAL_PACKAGE)[:1]
  mbpp = formats.load_mbpp(str(root / "mbpp.jsonl"))
  return {
      "cruxeval": formats.load_cruxeval(str(root / "crux.jsonl")),
      "mbpp": mbpp,
      "aider": formats.load_aider_exercises(str(root / "aider")),
      "commits": formats.load_commits(str(root / "commits.jsonl")),
      "humaneval_tests": formats.test_gen_from_code_gen(humaneval),
      "mbpp_tests": formats.test_gen_from_code_gen(mbpp),
  }


WRONG = {
    "code_io": lambda e: ("[ANSWER]'nope'[/ANSWER]" if e["mode"] == "output"
                          else "[ANSWER]f('', 0)[/ANSWER]"),
    "code_gen": lambda e: "```python\ndef remove_Occ(s, ch):\n    return s\n"
                          "def two_fer(name='you'):\n    return name\n```",
    "test_gen": lambda e: f"```python\nassert {e['entry_point']} is None\n```",
    "commit_msg": lambda e: "Delete everything",
}


@pytest.fixture(scope="module")
def scored(pool, tasks, real_examples):
  examples = [e for group in real_examples.values() for e in group]
  completions = [tasks[e["task"]].reference_completion(e) for e in examples]
  completions += [WRONG[e["task"]](e) for e in examples]
  rewards = score_batch(tasks, examples * 2, completions, pool).result(timeout=300)
  n = len(examples)
  return examples, rewards[:n], rewards[n:]


@pytest.mark.parametrize("fmt", ["cruxeval", "mbpp", "aider", "commits", "humaneval_tests",
                                 "mbpp_tests"])
def test_each_format_scores_reference_one_and_wrong_zero(scored, real_examples, fmt):
  examples, good, bad = scored
  ids = {e["id"] for e in real_examples[fmt]}
  assert ids
  for e, g, b in zip(examples, good, bad):
    if e["id"] in ids:
      assert g.value == 1.0, (e["id"], g)
      assert b.value == 0.0, (e["id"], b)


def test_cruxeval_gives_both_directions(real_examples):
  modes = sorted(e["mode"] for e in real_examples["cruxeval"])
  assert modes == ["input", "output"]


def test_aider_prompt_shows_instructions_and_stub(tasks, real_examples):
  example = real_examples["aider"][0]
  prompt = tasks["code_gen"].build_prompt(example)
  assert "One for X" in prompt and "def two_fer(name):" in prompt
  assert example["modules"] == ["two_fer"]


def test_humaneval_test_gen_metrics_are_full(scored, tasks, real_examples):
  examples, good, _ = scored
  pairs = [(e, r) for e, r in zip(examples, good) if e["id"] == "HumanEval/0/tests"]
  metrics = tasks["test_gen"].metrics([e for e, _ in pairs], [r for _, r in pairs])
  assert metrics["run_rate"] == metrics["line_coverage"] == metrics["branch_coverage"] == 100.0
  assert metrics["mutation_score"] == 100.0
