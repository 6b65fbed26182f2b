"""rlimits-only mode (hosts without namespaces): the remaining protections hold.

Only attacks that this mode is documented to stop are run here: the fork and
kill(-1) attacks need namespaces (or a non-root uid) and live in test_hostile.
"""

from __future__ import annotations

import os
import textwrap
import time
import warnings

import pytest

from astor_jax.execution import ExecutionPool, Job, Limits
from astor_jax.execution import pool as pool_module
from tests.execution.procs import SLACK_S, assert_no_strays


@pytest.fixture(scope="module")
def rl_pool():
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    with ExecutionPool(1, Limits(timeout_s=1.5), isolation="rlimits") as pool:
      yield pool


def test_reports_its_mode_and_why(rl_pool):
  assert rl_pool.isolation == "rlimits" and "rlimits" in rl_pool.isolation_reason


def test_fresh_directory_and_scrubbed_environment(rl_pool):
  os.environ["ASTOR_FALLBACK_SECRET"] = "fallback-secret"
  r1, r2 = rl_pool.run([Job("import os; open('f', 'w'); print(os.getcwd(), sorted(os.environ))"),
                        Job("import os; print(os.getcwd(), os.listdir('.'))")])
  cwd1, keys = r1.stdout.split(" ", 1)
  assert r1.status == "ok" and "ASTOR_FALLBACK_SECRET" not in keys
  assert r2.stdout.split(" ", 1)[1] == "['main.py']\n" and r2.stdout.split()[0] != cwd1
  assert not os.path.exists(cwd1)  # removed after the job


def test_wall_clock_kill_takes_the_whole_tree(rl_pool, tmp_path):
  marker = tmp_path / "late"
  source = textwrap.dedent(f"""
      import os, signal, subprocess, sys, time
      subprocess.Popen([sys.executable, "-c", "import signal, time; "
                        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
      if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
          time.sleep(2.5)
          open({str(marker)!r}, "w").write("escaped")
        os._exit(0)
      signal.signal(signal.SIGTERM, signal.SIG_IGN)
      time.sleep(60)
      """)
  start = time.monotonic()
  r = rl_pool.run([Job(source)])[0]
  assert r.status == "timeout" and time.monotonic() - start <= 1.5 + SLACK_S
  assert_no_strays(rl_pool)
  time.sleep(1.5)
  assert not marker.exists()
  assert rl_pool.run([Job("print(1)")])[0].stdout == "1\n"


def test_daemon_left_behind_by_a_finished_job_is_killed(rl_pool):
  source = ("import os, time\nif os.fork() == 0:\n  os.setsid()\n"
            "  if os.fork() == 0:\n    time.sleep(60)\n  os._exit(0)\nprint('bye')\n")
  r = rl_pool.run([Job(source)])[0]
  assert r.status == "ok" and r.wall_s < 1.5
  assert_no_strays(rl_pool)


def test_output_cap_and_rlimits_apply(rl_pool):
  flood, fds = rl_pool.run([
      Job("while True:\n  print('x' * 50)\n", limits=Limits(timeout_s=1.5, max_output_bytes=100)),
      Job("import os\nwhile True:\n  os.open('/dev/null', os.O_RDONLY)\n",
          limits=Limits(timeout_s=1.5, max_open_files=32))])
  assert flood.status == "output_limit" and len(flood.stdout) == 100
  assert fds.status == "error" and "Too many open files" in fds.stderr


def test_warning_is_given_once_per_process(monkeypatch):
  monkeypatch.setattr(pool_module, "_warned", False)
  with pytest.warns(RuntimeWarning, match="without the sandbox's namespaces"):
    pool_module._warn_once("no user namespaces here")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    pool_module._warn_once("no user namespaces here")
