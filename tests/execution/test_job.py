"""Job, Limits and Result validation: bad input fails at construction, naming the field."""

import math
import pickle

import pytest

from astor_jax.execution import STATUSES, Job, Limits, Result


@pytest.mark.parametrize("field,value", [
    ("timeout_s", -1), ("timeout_s", 0), ("timeout_s", 1e9), ("timeout_s", math.nan),
    ("timeout_s", math.inf), ("timeout_s", True), ("timeout_s", "3"),
    ("cpu_s", -2.0), ("cpu_s", 0),
    ("memory_mb", -512), ("memory_mb", 10), ("memory_mb", 1 << 40), ("memory_mb", 512.5),
    ("max_processes", 0), ("max_processes", 10**9),
    ("max_file_mb", -1), ("max_open_files", 3), ("max_output_bytes", -5),
    ("max_output_bytes", 1 << 40), ("max_disk_mb", 0),
])
def test_limits_reject_bad_values_naming_the_field(field, value):
  with pytest.raises(ValueError, match=rf"Limits\.{field}: got"):
    Limits(**{field: value})


def test_limits_cpu_defaults_to_timeout_rounded_up():
  assert Limits(timeout_s=2.5).cpu_limit_s == 3
  assert Limits(timeout_s=0.1).cpu_limit_s == 1
  assert Limits(timeout_s=10, cpu_s=4.2).cpu_limit_s == 5


@pytest.mark.parametrize("kwargs,error,match", [
    ({"source": None}, TypeError, "Job.source"),
    ({"source": 42}, TypeError, "Job.source"),
    ({"source": "", "stdin": 3}, TypeError, "Job.stdin"),
    ({"source": "", "argv": "abc"}, TypeError, "Job.argv"),
    ({"source": "", "argv": [1]}, TypeError, "Job.argv"),
    ({"source": "", "argv": ["a\0b"]}, ValueError, "NUL"),
    ({"source": "", "files": {"../x": "a"}}, ValueError, "relative path"),
    ({"source": "", "files": {"/etc/x": "a"}}, ValueError, "relative path"),
    ({"source": "", "files": {"a//b": "a"}}, ValueError, "relative path"),
    ({"source": "", "files": {"main.py": "a"}}, ValueError, "main.py"),
    ({"source": "", "files": {"a.txt": 1}}, TypeError, "Job.files"),
    ({"source": "", "files": ["a"]}, TypeError, "Job.files"),
    ({"source": "", "limits": {"timeout_s": 1}}, TypeError, "Job.limits"),
    ({"source": "", "tests": 1}, TypeError, "Job.tests"),
])
def test_job_rejects_malformed_fields(kwargs, error, match):
  with pytest.raises(error, match=match):
    Job(**kwargs)


def test_job_accepts_bytes_and_nested_files_and_counts_input():
  job = Job(source=b"\xff", stdin="é", argv=["a"], files={"pkg/m.py": b"12", "t.txt": "abc"})
  assert job.argv == ("a",)
  assert job.input_bytes() == 2 + 2 + 3


def test_result_round_trips_and_statuses_are_the_documented_ones():
  r = Result("ok", 0, stdout="x")
  assert pickle.loads(pickle.dumps(r)) == r and r.ok
  assert set(r.to_json()) == {"status", "exit_code", "stdout", "stderr", "stdout_truncated",
                              "stderr_truncated", "wall_s", "cpu_s", "peak_memory_mb", "detail"}
  assert STATUSES == ("ok", "error", "timeout", "memory", "output_limit", "killed",
                      "sandbox_error")
