"""Reward hacking attempts earn nothing: forged output, early exits, tampering."""

import hashlib
import hmac
import json
import textwrap

import pytest

from astor_jax.execution import Result
from astor_jax.tasks import harness

DOUBLE = {
    "task": "code_gen", "id": "double", "difficulty": 1, "source": "test",
    "instructions": "Return x times 2.", "stub": "def f(x):", "entry_point": "f",
    "suites": [{"name": f"test_{i}", "code": f"assert f({i}) == {2 * i}", "kind": "script",
                "module": ""} for i in range(3)],
    "guard": None, "modules": ["solution"], "reference": "def f(x):\n    return x * 2\n",
}

AIDER = {
    "task": "code_gen", "id": "aider/double", "difficulty": 0, "source": "aider",
    "instructions": "Double it.", "stub": "def double(x):\n    pass\n", "entry_point": "",
    "suites": [{"name": "double_test", "kind": "unittest", "module": "double_test",
                "code": textwrap.dedent("""\
                    import unittest
                    from double import double

                    class DoubleTest(unittest.TestCase):
                        def test_one(self):
                            self.assertEqual(double(1), 2)

                        def test_two(self):
                            self.assertEqual(double(2), 4)
                    """)}],
    "guard": [], "modules": ["double"], "reference": "def double(x):\n    return 2 * x\n",
}

_FAKE_RECORD = json.dumps({"runs": [{"name": "solution", "complete": True, "status": "ok",
                                     "load_error": None, "coverage": None, "output": "",
                                     "tests": [{"name": "t", "ok": True, "error": ""}] * 3}]})

CODE_GEN_HACKS = {
    "print_forged_record": f"print('@@astor-runner ' + '0' * 64 + ' ' + {_FAKE_RECORD!r})\n"
                           "def f(x):\n    return None\n",
    "exit_while_loading": "import sys\nsys.exit(0)\n",
    "exit_inside_the_function": "import sys\ndef f(x):\n    sys.exit(0)\n",
    "hard_exit_inside_the_function": "import os\ndef f(x):\n    os._exit(0)\n",
    "kill_the_runner": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
                       "def f(x):\n    return None\n",
    "always_equal_object": "class A:\n    def __eq__(self, other):\n        return True\n"
                           "def f(x):\n    return A()\n",
    "always_equal_int_subclass": "class A(int):\n    def __eq__(self, other):\n"
                                 "        return True\ndef f(x):\n    return A(0)\n",
    "always_equal_inside_a_list": "class A:\n    __eq__ = lambda s, o: True\n"
                                  "def f(x):\n    return [A()][0]\n",
    "patch_builtins": "import builtins\nbuiltins.AssertionError = type('X', (Exception,), {})\n"
                      "builtins.__build_class__ = None\ndef f(x):\n    return None\n",
    "read_the_hidden_tests": "import json\nT = json.load(open('spec.json'))\n"
                             "def f(x):\n    return None\n",
    "skip_the_tests": "import unittest\ndef f(x):\n    raise unittest.SkipTest('no')\n",
}

AIDER_HACKS = {
    "patch_assert_equal": "import unittest\nunittest.TestCase.assertEqual = "
                          "lambda *a, **k: None\ndef double(x):\n    return None\n",
    "patch_test_case_run": "import unittest\nunittest.TestCase.run = lambda *a, **k: None\n"
                           "def double(x):\n    return None\n",
    "replace_unittest_module": "import sys, types\nsys.modules['unittest'] = "
                               "types.SimpleNamespace(TestCase=object)\n"
                               "def double(x):\n    return None\n",
    "skip_from_the_solution": "import unittest\ndef double(x):\n"
                              "    raise unittest.SkipTest('skipped')\n",
}


def fenced(code):
  return f"```python\n{code}```"


def test_the_unhacked_references_pass(pool, tasks):
  rewards = tasks["code_gen"].score([DOUBLE, AIDER], [
      tasks["code_gen"].reference_completion(DOUBLE),
      tasks["code_gen"].reference_completion(AIDER)], pool)
  assert [r.value for r in rewards] == [1.0, 1.0]


@pytest.mark.parametrize("hack", sorted(CODE_GEN_HACKS))
def test_code_gen_hacks_get_zero(pool, tasks, hack):
  reward = tasks["code_gen"].score([DOUBLE], [fenced(CODE_GEN_HACKS[hack])], pool)[0]
  assert reward.value == 0.0, reward
  assert reward.breakdown["passed"] == 0.0


@pytest.mark.parametrize("hack", sorted(AIDER_HACKS))
def test_unittest_tampering_gets_zero(pool, tasks, hack):
  reward = tasks["code_gen"].score([AIDER], [fenced(AIDER_HACKS[hack])], pool)[0]
  assert reward.value == 0.0, reward


CODE_IO = {"task": "code_io", "id": "io", "difficulty": 1, "source": "test",
           "code": "def f(x):\n    return x + 1\n", "entry_point": "f", "input": "1",
           "output": "2", "mode": "output"}


@pytest.mark.parametrize("answer", [
    "[ANSWER]__import__('os')._exit(0)[/ANSWER]",
    "[ANSWER]type('A', (), {'__eq__': lambda s, o: True})()[/ANSWER]",
    "[ANSWER]print('@@astor-runner')[/ANSWER]",
    "[ANSWER]f(1)[/ANSWER]",
])
def test_code_io_runs_no_model_code(tasks, answer):
  assert tasks["code_io"].make_jobs(CODE_IO, answer) == []
  reward = tasks["code_io"].reward(CODE_IO, answer, [], [])
  assert reward.value == 0.0 and "literal" in reward.reason


FOCAL = {"task": "test_gen", "id": "focal", "difficulty": 2, "source": "test",
         "code": "def f(x):\n    if x > 3:\n        return x * 2\n    return x + 1\n",
         "entry_point": "f",
         "suites": [{"name": f"t{i}", "code": f"assert f({a}) == {b}", "kind": "script",
                     "module": ""} for i, (a, b) in enumerate([(5, 10), (4, 8), (3, 4), (0, 1)])],
         "reference_tests": "assert f(5) == 10\nassert f(4) == 8\nassert f(3) == 4\n"
                            "assert f(0) == 1\n",
         "modules": ["focal"]}

TEST_GEN_HACKS = {
    # Fails on every run after the first: would kill every mutant run after the original.
    "marker_file": "import os\nf(5)\nf(0)\nassert not os.path.exists('seen')\n"
                   "open('seen', 'w').close()\n",
    "marker_in_tmpdir": "import os, tempfile\np = os.path.join(tempfile.gettempdir(), 'seen')\n"
                        "f(5)\nf(0)\nassert not os.path.exists(p)\nopen(p, 'w').close()\n",
    # Mutants keep the original file and line numbers, so the source looks unchanged.
    "inspect_source": "import inspect\nf(5)\nf(0)\nassert inspect.getsource(f) == "
                      f"{FOCAL['code']!r}\n",
}


def test_test_gen_state_and_source_tricks_kill_no_mutant(pool, tasks):
  task = tasks["test_gen"]
  reference = task.score([FOCAL], [task.reference_completion(FOCAL)], pool)[0]
  assert reference.value == 1.0 and reference.breakdown["mutants"] > 0
  rewards = task.score([FOCAL] * len(TEST_GEN_HACKS),
                       [fenced(TEST_GEN_HACKS[k]) for k in sorted(TEST_GEN_HACKS)], pool)
  for name, reward in zip(sorted(TEST_GEN_HACKS), rewards):
    assert reward.breakdown["run"] == 1.0, (name, reward)
    assert reward.breakdown["mutation_score"] == 0.0, (name, reward)
    assert reward.value < 0.6, (name, reward)


@pytest.mark.parametrize("tests", [
    "import sys\nf(5)\nsys.exit(0)\nassert False\n",
    "import os\nf(5)\nos._exit(0)\nassert False\n",
    "f(5)\nopen('focal.py', 'w').write('def f(x):\\n    return 0\\n')\nassert True\n",
    "assert f(5) == 11\n",
])
def test_test_gen_exits_tampering_and_failures_get_zero(pool, tasks, tests):
  reward = tasks["test_gen"].score([FOCAL], [fenced(tests)], pool)[0]
  assert reward.value == 0.0, reward
  assert reward.breakdown["run"] == 0.0


def _result(stdout):
  return Result(status="ok", exit_code=0, stdout=stdout, stderr="", stdout_truncated=False,
                stderr_truncated=False, wall_s=0.0, cpu_s=0.0, peak_memory_mb=0.0)


def test_only_a_record_signed_with_the_jobs_nonce_is_read():
  job = harness.runner_job([harness.Run("r", "x = 1", ())])
  payload = json.dumps({"runs": []})
  good = hmac.new(job.stdin.encode(), payload.encode(), hashlib.sha256).hexdigest()
  bad = hmac.new(b"guessed", payload.encode(), hashlib.sha256).hexdigest()
  runs, reason = harness.read_record(job, _result(f"{harness.MARKER} {bad} {payload}\n"))
  assert runs is None and "no signed result record" in reason
  runs, reason = harness.read_record(job, _result(f"{harness.MARKER} {good} {payload}\n"))
  assert runs == () and reason == ""
