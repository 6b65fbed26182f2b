"""ExecutionPool behaviour on ordinary programs: semantics, order, limits, bad input."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from astor_jax.execution import ExecutionPool, Job, Limits
from astor_jax.execution import pool as pool_module
from tests.execution.procs import UID_BASE_NS, assert_no_strays


def test_order_is_preserved_whatever_the_durations(ns_pool):
  jobs = [Job(f"import time; time.sleep({0.3 if i % 3 == 0 else 0}); print({i})")
          for i in range(9)]
  results = ns_pool.run(jobs)
  assert [r.stdout for r in results] == [f"{i}\n" for i in range(9)]
  assert all(r.status == "ok" and r.exit_code == 0 for r in results)


def test_submit_returns_a_future_and_empty_batches_work(ns_pool):
  future = ns_pool.submit([Job("print('a')"), Job("print('b')")])
  assert isinstance(future, concurrent.futures.Future)
  assert [r.stdout for r in future.result(timeout=30)] == ["a\n", "b\n"]
  assert ns_pool.run([]) == []


def test_program_sees_a_fresh_python_main(ns_pool):
  src = ("import os, sys\n"
         "print(__name__, os.path.basename(__file__), sys.argv[1:])\n"
         "print(sys.stdin.read().upper(), end='')\n"
         "print(sorted(os.listdir('.')), open('data/in.txt').read())\n"
         "print(os.getcwd() == os.environ['HOME'], sys.path[0] == os.getcwd())\n"
         "import helper; print(helper.VALUE)\n")
  r = ns_pool.run([Job(src, stdin="abc\n", argv=("-x", "y"),
                       files={"data/in.txt": "42", "helper.py": b"VALUE = 7\n"})])[0]
  assert r.status == "ok", r
  assert r.stdout.splitlines() == ["__main__ main.py ['-x', 'y']", "ABC",
                                   "['data', 'helper.py', 'main.py'] 42", "True True", "7"]


@pytest.mark.parametrize("src,status,code", [
    ("import sys; sys.exit(3)", "error", 3),
    ("import sys; sys.exit()", "ok", 0),
    ("import sys; sys.exit('bye')", "error", 1),
    ("raise ValueError('boom')", "error", 1),
    ("import os; os._exit(7)", "error", 7),
    ("", "ok", 0),
    ("def f(:\n", "error", 1),
])
def test_exit_statuses_match_python(ns_pool, src, status, code):
  r = ns_pool.run([Job(src)])[0]
  assert (r.status, r.exit_code) == (status, code), r


def test_uncaught_exception_traceback_starts_in_the_program(ns_pool):
  r = ns_pool.run([Job("def f():\n  1/0\nf()\n")])[0]
  assert r.stderr.startswith("Traceback (most recent call last):\n  File \"")
  assert "runner.py" not in r.stderr and r.stderr.rstrip().endswith("division by zero")


def test_tests_must_run_to_their_end(ns_pool):
  program = "def add(a, b):\n  return a + b\n"
  passing = Job(program, tests="assert add(1, 2) == 3\n")
  failing = Job(program, tests="assert add(1, 2) == 4\n")
  early_exit = Job(program + "import sys; sys.exit(0)\n", tests="assert False\n")
  early_os_exit = Job(program + "import os; os._exit(0)\n", tests="assert False\n")
  exit_in_call = Job("import sys\ndef add(a, b):\n  sys.exit(0)\n", tests="add(1, 2)\n")
  results = ns_pool.run([passing, failing, early_exit, early_os_exit, exit_in_call])
  assert [r.status for r in results] == ["ok", "error", "error", "error", "error"]
  assert [r.exit_code for r in results] == [0, 1, 0, 0, 0]
  assert "before its tests finished" in results[2].detail


def test_preloaded_packages_import_in_the_sandbox(ns_pool):
  src = ("import coverage, json, email.mime.text\n"
         "cov = coverage.Coverage(branch=True, data_file=None)\n"
         "cov.start()\nimport helper\nhelper.f(3)\ncov.stop()\n"
         "_, statements, _, missing, _ = cov.analysis2('helper.py')\n"
         "print(json.dumps([len(statements), len(missing)]))\n")
  helper = "def f(x):\n  if x > 0:\n    return 1\n  return 2\n"
  r = ns_pool.run([Job(src, files={"helper.py": helper})])[0]
  assert r.status == "ok", r.stderr
  assert json.loads(r.stdout) == [4, 1]


def test_cpu_time_limit_is_a_timeout(ns_pool):
  r = ns_pool.run([Job("while True:\n  pass\n", limits=Limits(timeout_s=20, cpu_s=1))])[0]
  assert r.status == "timeout" and r.exit_code == -24  # SIGXCPU, well before the deadline
  assert "CPU-time limit" in r.detail and r.cpu_s > 0.5 and r.wall_s < 20


def test_output_is_capped_and_flagged(ns_pool):
  limits = Limits(timeout_s=5, max_output_bytes=1000)
  r = ns_pool.run([Job("import sys; sys.stdout.write('x' * 999); sys.stderr.write('é')",
                       limits=limits)])[0]
  assert r.status == "ok" and len(r.stdout) == 999 and not r.stdout_truncated
  r = ns_pool.run([Job("print('y' * 5000)", limits=limits)])[0]
  assert r.status == "output_limit" and r.stdout == "y" * 1000 and r.stdout_truncated


def test_non_utf8_source_and_output_give_clean_results(ns_pool):
  bad_source = Job(b"print('hi')\n\xff\xfe\n")
  surrogate = Job("print('a')\n'\udcff'\n")
  latin1 = Job(b"# -*- coding: latin-1 -*-\nprint('caf\xe9')\n")
  bad_output = Job("import sys; sys.stdout.buffer.write(b'\\xff ok')")
  r = ns_pool.run([bad_source, surrogate, latin1, bad_output])
  assert [x.status for x in r] == ["error", "error", "ok", "ok"]
  assert "SyntaxError" in r[0].stderr and r[2].stdout == "café\n"
  assert r[3].stdout == "\ufffd ok"


def test_huge_stdin_does_not_deadlock_and_oversized_input_is_refused(ns_pool):
  big = "x" * (20 << 20)
  unread, read = ns_pool.run([Job("print('ignored')", stdin=big),
                              Job("import sys; print(len(sys.stdin.read()))", stdin=big)])
  assert (unread.status, unread.stdout) == ("ok", "ignored\n")
  assert (read.status, read.stdout) == ("ok", f"{20 << 20}\n")
  with pytest.raises(ValueError, match=r"jobs\[1\]: stdin plus files .* max_disk_mb"):
    ns_pool.run([Job("pass"), Job("pass", stdin=big, limits=Limits(max_disk_mb=8))])
  assert ns_pool.run([Job("print(1)")])[0].stdout == "1\n"


def test_bad_arguments_are_clear_errors_and_leave_the_pool_working(ns_pool):
  with pytest.raises(TypeError, match="wrap one job"):
    ns_pool.run(Job("pass"))
  with pytest.raises(TypeError, match=r"jobs\[0\]"):
    ns_pool.run(["print(1)"])
  assert ns_pool.run([Job("print(2)")])[0].stdout == "2\n"


@pytest.mark.parametrize("kwargs,match", [
    ({"num_workers": 0}, "num_workers"), ({"num_workers": 10**6}, "num_workers"),
    ({"isolation": "docker"}, "isolation"), ({"limits": {"timeout_s": 1}}, "limits"),
    ({"preload": "coverage"}, "preload"), ({"read_only_paths": ["rel"]}, "read_only_paths"),
    ({"env": {"A=B": "c"}}, "env"), ({"preload": ("no_such_module_xyz",)}, "no_such_module"),
])
def test_pool_arguments_are_validated(kwargs, match):
  with pytest.raises((ValueError, TypeError), match=match):
    ExecutionPool(**kwargs)


def test_dead_worker_is_replaced_and_its_job_reported(ns_pool):
  before = ns_pool.worker_pids()
  future = ns_pool.submit([Job("import time; time.sleep(3)")] * 2)
  time.sleep(0.5)
  os.kill(before[0], signal.SIGKILL)
  results = future.result(timeout=30)
  assert "sandbox_error" in [r.status for r in results]
  again = ns_pool.run([Job(f"print({i})") for i in range(4)])
  assert [r.stdout for r in again] == [f"{i}\n" for i in range(4)]
  assert before[0] not in ns_pool.worker_pids() and len(ns_pool.worker_pids()) == 2
  assert_no_strays(ns_pool, UID_BASE_NS)


def test_close_finishes_submitted_jobs_then_refuses(tmp_path):
  pool = ExecutionPool(1, Limits(timeout_s=5))
  future = pool.submit([Job("import time; time.sleep(0.2); print('done')")])
  server = pool.server_pid
  pool.close()
  assert future.result(timeout=1)[0].stdout == "done\n"
  with pytest.raises(RuntimeError, match="closed"):
    pool.run([Job("pass")])
  assert not os.path.exists(f"/proc/{server}") or _is_zombie_free(server)


def _is_zombie_free(pid: int) -> bool:
  with open(f"/proc/{pid}/stat") as f:
    return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_default_workers_follow_the_config():
  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "astor.py"
  spec = importlib.util.spec_from_file_location("_astor_config_for_execution_test", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  assert pool_module.DEFAULT_NUM_WORKERS == config.execution.num_workers
  with ExecutionPool.from_config(config.execution) as pool:
    assert pool.num_workers == config.execution.num_workers
    assert pool.limits.timeout_s == config.execution.timeout_s
    assert pool.limits.memory_mb == config.execution.memory_mb
    assert pool.run([Job("import coverage")])[0].ok


def test_cli_prints_one_json_result_per_file(tmp_path):
  (tmp_path / "a.py").write_text("print(input()[::-1])\n")
  (tmp_path / "b.py").write_bytes(b"\xff\n")
  (tmp_path / "in.txt").write_text("hello\n")
  proc = subprocess.run(
      [sys.executable, "-m", "astor_jax.execution", str(tmp_path / "a.py"),
       str(tmp_path / "b.py"), "--stdin", str(tmp_path / "in.txt"), "--timeout-s", "5",
       "--memory-mb", "512", "--workers", "2"], capture_output=True, text=True, timeout=120)
  lines = [json.loads(line) for line in proc.stdout.splitlines()]
  assert proc.returncode == 1, proc.stderr
  assert [(d["file"][-4:], d["status"], d["stdout"]) for d in lines] == [
      ("a.py", "ok", "olleh\n"), ("b.py", "error", "")]
  bad = subprocess.run([sys.executable, "-m", "astor_jax.execution", str(tmp_path / "a.py"),
                        "--timeout-s", "-1"], capture_output=True, text=True, timeout=60)
  assert bad.returncode == 2 and "Limits.timeout_s" in bad.stderr
