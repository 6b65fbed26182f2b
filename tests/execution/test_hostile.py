"""The hostile suite: one test per attack a model-written program might make.

For each attack: the job ends within its deadline plus slack, gets the right
status, nothing escapes (no process outlives it, no host file or socket is
touched), and the pool then answers an ordinary job correctly.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from astor_jax.execution import ExecutionPool, Job, Limits, Result
from tests.execution.procs import SLACK_S, UID_BASE_NS, assert_no_strays

DEADLINE = Limits(timeout_s=1.5, max_processes=32, memory_mb=256, max_file_mb=8,
                  max_disk_mb=16, max_open_files=64, max_output_bytes=1 << 16)

# Set before any pool of this module starts: jobs must not be able to read it.
SECRET = "astor-secret-" + secrets.token_hex(8)
os.environ["ASTOR_TEST_SECRET"] = SECRET


def attack(pool: ExecutionPool, source: str, limits: Limits = DEADLINE, **job) -> Result:
  """Runs one hostile job; checks the deadline, the next job and strays."""
  start = time.monotonic()
  result = pool.run([Job(source, limits=limits, **job)])[0]
  elapsed = time.monotonic() - start
  assert elapsed <= limits.timeout_s + SLACK_S, (elapsed, result)
  assert result.wall_s <= limits.timeout_s + SLACK_S
  after = pool.run([Job("print(6 * 7)")])[0]
  assert (after.status, after.stdout) == ("ok", "42\n"), after
  assert_no_strays(pool, UID_BASE_NS)
  return result


def test_infinite_loop(ns_pool):
  r = attack(ns_pool, "while True:\n  pass\n")
  assert r.status == "timeout" and r.exit_code is None
  assert r.cpu_s > 0.2  # CPU of a killed job is still accounted


def test_sigterm_ignoring_sleeper(ns_pool):
  r = attack(ns_pool, "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                      "signal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)\n")
  assert r.status == "timeout"


def test_fork_bomb(ns_pool):
  r = attack(ns_pool, "import os\nwhile True:\n  try:\n    os.fork()\n  except OSError:\n"
                      "    pass\n")
  assert r.status == "timeout"


def test_thread_bomb(ns_pool):
  r = attack(ns_pool, "import threading, time\nwhile True:\n"
                      "  threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
  assert r.status == "error" and "can't start new thread" in r.stderr


@pytest.mark.parametrize("source", [
    "x = bytearray(1 << 34)\n",
    "chunks = []\nwhile True:\n  chunks.append(bytearray(1 << 20))\n",
])
def test_memory_bomb(ns_pool, source):
  r = attack(ns_pool, source)
  assert r.status == "memory" and "MemoryError" in r.stderr, r
  assert r.peak_memory_mb <= DEADLINE.memory_mb


def test_disk_fill(ns_pool):
  one_file = attack(ns_pool, "with open('big', 'wb') as f:\n  while True:\n"
                             "    f.write(b'x' * (1 << 20))\n")
  assert one_file.status == "error" and "File too large" in one_file.stderr
  many_files = attack(ns_pool, "i = 0\nwhile True:\n  with open(f'/tmp/f{i}', 'wb') as f:\n"
                               "    f.write(b'x' * (4 << 20))\n  i += 1\n")
  assert many_files.status == "error" and "No space left" in many_files.stderr


def test_fd_exhaustion(ns_pool):
  r = attack(ns_pool, "import os\nfds = []\nwhile True:\n"
                      "  fds.append(os.open('/dev/null', os.O_RDONLY))\n")
  assert r.status == "error" and "Too many open files" in r.stderr


def test_stdout_flood(ns_pool):
  r = attack(ns_pool, "import sys\nwhile True:\n  print('x' * 1000)\n"
                      "  sys.stderr.write('y' * 1000)\n")
  assert r.status == "output_limit" and r.wall_s < DEADLINE.timeout_s
  assert r.stdout_truncated and len(r.stdout) == DEADLINE.max_output_bytes


def test_double_forked_daemon_writing_later(ns_pool, tmp_path):
  drop = tmp_path / "drop"
  drop.mkdir()
  drop.chmod(0o777)  # only the sandbox, not file permissions, may stop the daemon
  marker = drop / "daemon-was-here"
  source = textwrap.dedent(f"""
      import os, time
      if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
          for _ in range(20):
            time.sleep(0.1)
            for path in ({str(marker)!r}, "/tmp/daemon-was-here"):
              try:
                open(path, "w").write("alive")
              except OSError:
                pass
        os._exit(0)
      print("parent exits")
      """)
  r = attack(ns_pool, source)
  assert r.status == "ok" and r.stdout == "parent exits\n"
  time.sleep(1.0)
  assert not marker.exists() and not os.path.exists("/tmp/daemon-was-here")


def test_socket_to_local_listener(ns_pool):
  tcp = socket.socket()
  tcp.bind(("127.0.0.1", 0))
  tcp.listen()
  unix = socket.socket(socket.AF_UNIX)
  abstract = "\0astor-test-" + secrets.token_hex(4)
  unix.bind(abstract)
  unix.listen()
  try:
    port = tcp.getsockname()[1]
    r = attack(ns_pool, f"import socket\nfor family, addr in ((socket.AF_INET, "
                        f"('127.0.0.1', {port})), (socket.AF_UNIX, {abstract!r})):\n"
                        "  try:\n    socket.socket(family).connect(addr)\n"
                        "    print('connected', family)\n"
                        "  except OSError as e:\n    print('refused', e.errno)\n")
    assert r.status == "ok" and "connected" not in r.stdout
    for listener in (tcp, unix):
      listener.settimeout(0)
      with pytest.raises(BlockingIOError):
        listener.accept()
  finally:
    tcp.close()
    unix.close()


def test_write_to_host_tmp(ns_pool):
  name = "astor-escape-" + secrets.token_hex(6)
  visible = f"/tmp/{name}-host"
  open(visible, "w").close()
  try:
    r = attack(ns_pool, f"import os\nopen('/tmp/{name}', 'w').write('x')\n"
                        f"print(os.path.exists({visible!r}), sorted(os.listdir('/tmp')))\n")
    assert r.status == "ok" and r.stdout == f"False {sorted(['job', name])}\n"
    assert not os.path.exists(f"/tmp/{name}")
  finally:
    os.remove(visible)


def test_reading_the_parent_environment_and_proc(ns_pool):
  source = textwrap.dedent(f"""
      import os, glob
      seen = [repr(dict(os.environ))]
      for path in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline") + [
          "/proc/{os.getpid()}/environ", "/proc/{ns_pool.server_pid}/environ"]:
        try:
          seen.append(open(path, "rb").read().decode("latin-1"))
        except OSError as e:
          seen.append(type(e).__name__)
      print(sorted(p for p in os.listdir("/proc") if p.isdigit()))
      print("\\n".join(seen))
      """)
  r = attack(ns_pool, source)
  assert r.status == "ok"
  assert SECRET not in r.stdout and SECRET not in r.stderr
  pids = eval(r.stdout.splitlines()[0])  # noqa: S307 - a list literal we printed
  assert len(pids) == 2 and "1" in pids  # its worker (pid 1 of the namespace) and itself
  assert "pytest" not in r.stdout


def test_killing_the_parent(ns_pool):
  workers = ns_pool.worker_pids()
  targets = [os.getpid(), os.getppid(), ns_pool.server_pid, *workers]
  source = ("import os, signal\n"
            f"for pid in [os.getppid(), 1, *{targets!r}]:\n"
            "  try:\n    os.kill(pid, signal.SIGKILL)\n    print('sent', pid)\n"
            "  except OSError as e:\n    print('denied', pid, e.errno)\n")
  r = attack(ns_pool, source)
  assert r.status == "ok"
  assert ns_pool.worker_pids() == workers
  for pid in targets:
    os.kill(pid, 0)  # all still alive


_KILL_ALL_SCRIPT = """
import json, os
from astor_jax.execution import ExecutionPool, Job, Limits
with ExecutionPool(1, Limits(timeout_s=2), isolation="namespaces") as pool:
  workers = pool.worker_pids()
  hostile = pool.run([Job("import os, time\\nif os.fork() == 0:\\n  time.sleep(30)\\n"
                          "os.kill(-1, 9)\\ntime.sleep(0.2)\\nprint('survived')\\n")])[0]
  after = pool.run([Job("print(6 * 7)")])[0]
  alive = all(os.path.exists(f"/proc/{p}") for p in workers + [pool.server_pid])
  print(json.dumps({"hostile": [hostile.status, hostile.stdout, hostile.wall_s],
                    "after": [after.status, after.stdout], "alive": alive,
                    "same_workers": workers == pool.worker_pids()}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) to give the test its own pid namespace")
def test_kill_all_processes(ns_pool):
  # The pool under test runs in a pid namespace of its own: were the sandbox
  # to fail, kill(-1) could only reach that namespace, never the test runner.
  proc = subprocess.run(
      ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, "-c",
       _KILL_ALL_SCRIPT], capture_output=True, text=True, timeout=120, cwd=os.getcwd())
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads(proc.stdout.splitlines()[-1])
  status, stdout, wall_s = report["hostile"]
  assert (status, stdout) == ("ok", "survived\n") and wall_s <= 2 + SLACK_S
  assert report["after"] == ["ok", "42\n"]
  assert report["alive"] and report["same_workers"]


def test_segfault_via_ctypes(ns_pool):
  r = attack(ns_pool, "import ctypes\nctypes.string_at(0)\n")
  assert r.status == "killed" and r.exit_code == -11 and "SIGSEGV" in r.detail


@pytest.mark.parametrize("exit_call", ["import sys; sys.exit(0)", "import os; os._exit(0)"])
def test_exit_zero_before_tests_run(ns_pool, exit_call):
  r = attack(ns_pool, f"def solve(x):\n  return x\n{exit_call}\n",
             tests="assert solve(1) == 2\n")
  assert r.status == "error" and r.exit_code == 0
  assert "before its tests finished" in r.detail


def test_sysv_ipc_left_for_the_next_job():
  # One worker runs the jobs one after the other: a segment created by the
  # first must be gone for the second (it could carry answers between rollouts).
  create = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.shmget(0x5eed, 4096, 0o1000 | 0o666) >= 0, "
            "len(open('/proc/sysvipc/shm').read().splitlines()) - 1)\n")
  look = "print(len(open('/proc/sysvipc/shm').read().splitlines()) - 1)\n"
  try:
    pool = ExecutionPool(1, DEADLINE, isolation="namespaces")
  except RuntimeError as e:
    pytest.skip(f"namespaces unavailable here: {e}")
  with pool:
    results = pool.run([Job(create), Job(look), Job(create), Job(look)])
  assert [r.stdout for r in results] == ["True 1\n", "0\n", "True 1\n", "0\n"]


def test_job_holds_no_capability_and_runs_as_its_own_uid(ns_pool):
  # The bounding set of the job's fresh user namespace is full, but nothing can
  # be gained through it: no_new_privs, and no uid 0 exists in that namespace.
  r = attack(ns_pool, "import os\nstatus = dict(line.split(':', 1) for line in "
                      "open('/proc/self/status').read().splitlines())\n"
                      "print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups(), "
                      "*[int(status[k], 16) for k in ('CapInh', 'CapPrm', 'CapEff', "
                      "'CapAmb')], status['NoNewPrivs'].strip(), "
                      "open('/proc/self/uid_map').read().split()[:1], "
                      "os.listdir('/proc/self/fd') != [])\n")
  assert r.status == "ok" and r.stdout == "1000 1000 1000 [] 0 0 0 0 1 ['1000'] True\n", r


def test_files_left_in_tmp_do_not_reach_the_next_job():
  # One worker runs both jobs: whatever the first leaves in /tmp (even a
  # directory it made unreadable, a full disk) is gone for the second.
  leave = ("import os\nos.makedirs('/tmp/keep/deep')\nopen('/tmp/keep/deep/f', 'w').write('x')\n"
           "os.chmod('/tmp/keep', 0)\nopen('/tmp/note', 'w').write('answer')\n"
           "os.chdir('/tmp')\nfor _ in range(1200):\n  os.mkdir('d')\n  os.chdir('d')\n"
           "os.symlink('/etc/passwd', 'link')\n"
           "try:\n  open('/tmp/fill', 'wb').write(b'x' * (8 << 20))\nexcept OSError as e:\n"
           "  print(e.errno)\n")
  look = ("import os\nopen('/tmp/fits', 'wb').write(b'x' * (6 << 20))\n"
          "print(sorted(os.listdir('/tmp')), sorted(os.listdir('.')))\n")
  small = Limits(timeout_s=5, max_disk_mb=8, max_file_mb=16)
  try:
    pool = ExecutionPool(1, small, isolation="namespaces")
  except RuntimeError as e:
    pytest.skip(f"namespaces unavailable here: {e}")
  with pool:
    first, second, third = pool.run([Job(leave), Job(look),
                                     Job(look, limits=Limits(timeout_s=5, max_disk_mb=4))])
  assert first.status == "ok" and first.stdout == "28\n", first  # ENOSPC: 8 MB cap
  assert (second.status, second.stdout) == ("ok", "['fits', 'job'] ['main.py']\n"), second
  assert third.status == "error" and "No space left" in third.stderr, third  # 4 MB cap


_ROOTLESS_SCRIPT = """
import json, os
from astor_jax.execution import ExecutionPool, Job, Limits
with ExecutionPool(1, Limits(timeout_s=3), isolation="namespaces") as pool:
  mark = ("import os\\nos.setxattr('/tmp', 'user.note', b'answer')\\n"
          "os.chmod('/tmp', 0o700)\\nopen('/tmp/note', 'w').write('answer')\\n")
  look = ("import os\\nprint(oct(os.stat('/tmp').st_mode), os.listxattr('/tmp'), "
          "sorted(os.listdir('/tmp')), os.getuid())\\n")
  results = pool.run([Job(mark), Job(look)])
  print(json.dumps([os.geteuid()] + [[r.status, r.stdout, r.stderr[-500:]] for r in results]))
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) to run the pool as a non-root uid")
def test_rootless_job_owns_tmp_but_leaves_nothing_on_it():
  # Rootless, a job's uid is its worker's, so it owns /tmp itself: mode and
  # extended attributes it sets there must not reach the next job.
  proc = subprocess.run(
      ["unshare", "--user", "--map-user=1234", "--map-group=1234", sys.executable, "-c",
       _ROOTLESS_SCRIPT], capture_output=True, text=True, timeout=120, cwd=os.getcwd())
  if proc.returncode != 0 and "namespaces" in proc.stderr:
    pytest.skip(f"no nested namespaces here: {proc.stderr[-300:]}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  euid, mark, look = json.loads(proc.stdout.splitlines()[-1])
  assert euid == 1234 and mark[0] == "ok", mark
  assert look[:2] == ["ok", "0o41777 [] ['job'] 1000\n"], look


_KEYCTL = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "libc.syscall.restype = ctypes.c_long\n"
           "SYS_ADD_KEY, SYS_KEYCTL, KEYCTL_SEARCH, KEYCTL_GET_PERSISTENT = 248, 250, 10, 22\n"
           "RINGS = {'user': -4, 'user_session': -5}\n"
           "RINGS['persistent'] = libc.syscall(SYS_KEYCTL, KEYCTL_GET_PERSISTENT, -1, -2)\n")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers of x86_64")
def test_keys_left_in_keyrings_do_not_reach_the_next_job():
  # Keyrings outlive processes (the persistent one by days): one job's keys
  # must not be there for the next job of the same worker.
  leave = _KEYCTL + ("print(sorted(name for name, ring in RINGS.items() if ring > 0 and "
                     "libc.syscall(SYS_ADD_KEY, b'user', b'note', b'answer', 6, ring) > 0))\n")
  look = _KEYCTL + ("print(sorted(name for name, ring in RINGS.items() if ring > 0 and "
                    "libc.syscall(SYS_KEYCTL, KEYCTL_SEARCH, ring, b'user', b'note', 0) > 0))\n")
  try:
    pool = ExecutionPool(1, DEADLINE, isolation="namespaces")
  except RuntimeError as e:
    pytest.skip(f"namespaces unavailable here: {e}")
  with pool:
    left, seen = pool.run([Job(leave), Job(look)])
  assert left.status == "ok" and left.stdout != "[]\n", left  # the keys were made
  assert (seen.status, seen.stdout) == ("ok", "[]\n"), seen
