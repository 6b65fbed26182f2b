"""Loaders read the public formats and name the file, line and fix for bad input."""

import gzip
import json

import pytest

from astor_jax.data import formats


def write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def test_humaneval_package_copy_and_a_gzipped_file(tmp_path):
  problems = formats.load_humaneval("package")
  assert problems[0]["id"] == "HumanEval/0" and problems[0]["entry_point"] == "has_close_elements"
  assert problems[0]["suites"][0]["code"].rstrip().endswith("check(has_close_elements)")
  record = {"task_id": "T/0", "prompt": "def g():\n", "canonical_solution": "    return 1\n",
            "test": "def check(c):\n    assert c() == 1\n", "entry_point": "g"}
  path = tmp_path / "he.jsonl.gz"
  with gzip.open(path, "wt") as fp:
    fp.write(json.dumps(record) + "\n")
  loaded = formats.load_humaneval(str(path))
  assert loaded[0]["reference"] == "def g():\n    return 1\n"


def test_mbpp_plain_and_sanitized_records(tmp_path):
  plain = {"task_id": 2, "text": "Find the shared elements.", "code":
           "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n",
           "test_list": ["assert set(similar_elements((3, 4), (4, 5))) == {4}"],
           "test_setup_code": "import math"}
  sanitized = {"task_id": 3, "prompt": "Is n not prime?", "code":
               "import math\ndef is_not_prime(n):\n    return n < 2\n",
               "test_list": ["assert is_not_prime(1) == True"], "test_imports": ["import math"]}
  loaded = formats.load_mbpp(write_jsonl(tmp_path / "m.jsonl", [plain, sanitized]))
  assert [e["entry_point"] for e in loaded] == ["similar_elements", "is_not_prime"]
  assert loaded[0]["suites"][0]["code"].startswith("import math\n")
  assert "Find the shared elements." in loaded[0]["stub"]
  assert loaded[1]["id"] == "mbpp/3"


def test_commit_field_aliases(tmp_path):
  path = write_jsonl(tmp_path / "c.jsonl", [{"patch": "+x", "commit_message": "Add x"},
                                            {"diff": "-y", "message": "Drop y"}])
  assert [e["message"] for e in formats.load_commits(path)] == ["Add x", "Drop y"]


def test_missing_files_name_the_config_field(tmp_path):
  with pytest.raises(formats.DataError, match="config.data.cruxeval_path"):
    formats.load_cruxeval(str(tmp_path / "nope.jsonl"))
  with pytest.raises(formats.DataError, match="config.data.aider_exercises_path"):
    formats.load_aider_exercises(str(tmp_path / "nope"))
  with pytest.raises(formats.DataError, match="no exercise"):
    formats.load_aider_exercises(str(tmp_path))


def test_bad_records_name_file_and_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps({"code": "x", "input": "1", "output": "1"}) + "\n{oops\n")
  with pytest.raises(formats.DataError, match=r"bad.jsonl:2: not valid JSON"):
    formats.load_cruxeval(str(path))
  path.write_text(json.dumps({"code": "def f(x): return x", "input": "1"}) + "\n")
  with pytest.raises(formats.DataError, match=r"bad.jsonl:1: record lacks output"):
    formats.load_cruxeval(str(path))
  path.write_text(json.dumps({"text": "t", "code": "def a(): pass",
                              "test_list": ["assert b() == 1"]}) + "\n")
  with pytest.raises(formats.DataError, match="none of the functions the tests call"):
    formats.load_mbpp(str(path))
  path.write_text(json.dumps({"diff": "+x", "msg": "  "}) + "\n")
  with pytest.raises(formats.DataError, match="message non-empty"):
    formats.load_commits(str(path))


def test_aider_exercise_without_reference_is_refused(tmp_path):
  ex = tmp_path / "hello-world"
  (ex / ".docs").mkdir(parents=True)
  (ex / ".docs" / "instructions.md").write_text("Say hello.")
  (ex / "hello_world.py").write_text("def hello():\n    pass\n")
  (ex / "hello_world_test.py").write_text("import unittest\n")
  with pytest.raises(formats.DataError, match="example.py"):
    formats.load_aider_exercises(str(tmp_path))
  (ex / ".meta").mkdir()
  (ex / ".meta" / "example.py").write_text("def hello():\n    return 'Hello, World!'\n")
  loaded = formats.load_aider_exercises(str(tmp_path))
  assert loaded[0]["modules"] == ["hello_world"] and loaded[0]["id"] == "aider/hello-world"


def test_test_gen_keeps_only_script_tested_functions():
  code_gen = formats.load_humaneval("package")[:2] + [{
      "task": "code_gen", "id": "aider/x", "difficulty": 0, "source": "aider", "entry_point": "",
      "suites": [{"name": "t", "code": "", "kind": "unittest", "module": "t"}],
      "reference": "", "stub": ""}]
  tests = formats.test_gen_from_code_gen(code_gen)
  assert [e["id"] for e in tests] == ["HumanEval/0/tests", "HumanEval/1/tests"]
  assert tests[0]["code"] == code_gen[0]["reference"]
