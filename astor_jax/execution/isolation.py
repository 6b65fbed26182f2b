"""Namespaces, a minimal read-only root, privilege dropping and rlimits.

Two levels, from the outside in (see `worker.py` for the process tree):

* worker (once, at start): its own user namespace in which it is root, mapped
  to one unprivileged host uid per worker slot (root host) or to the caller's
  own uid (rootless host); its own network namespace with no interface up (no
  network at all) and UTS namespace; its own mount namespace whose root is a
  fresh tmpfs holding read-only bind mounts of exactly what the interpreter
  needs (system directories, the interpreter's prefixes and `sys.path`, any
  extra paths) and a few device nodes, then `pivot_root`ed into. Host files
  outside those paths (home directories, the repository, other users' /tmp)
  simply do not exist for jobs, and the paths that do are read-only. Last, a
  pid namespace of which the worker is pid 1, with a /proc that shows only
  the worker and its current job, an IPC namespace, and a size-capped tmpfs on
  /tmp. no_new_privs is set and the capability bounding set emptied once here.
* program (per job): the worker's own /tmp, emptied before the job (the
  working directory /tmp/job is the only thing in it) and again after it, its
  size set to the job's `max_disk_mb`; an unprivileged uid (JOB_UID) that owns
  nothing outside the job, in a user namespace of its own; no capabilities;
  its own session; rlimits; a scrubbed environment.

Why /tmp and the IPC namespace can be per worker rather than per job: a
worker runs one job at a time and is pid 1 of its pid namespace, so when it
empties /tmp (and removes every System V IPC object) after `kill(-1, SIGKILL)`
no process of the old job is alive to write anything, hold a file open or see
the next job's files. The only way from one job to the next is what is left
in those two places, and both are emptied; the host was never reachable from
either. A job cannot remount or unmount /tmp: it holds no capability in the
worker's user namespace, which owns the mount namespace.

How the job's uid is made. As root on the host, the worker's user namespace
maps two host uids (and gids): its own, `uid_base + 2 * slot`, as 0, and the
job's, `uid_base + 2 * slot + 1`, as JOB_UID; the job `setresuid`s to JOB_UID,
which clears every capability (the kernel drops them when all of a process's
uids leave 0) and, being another uid than the worker's, may not signal,
ptrace or read /proc of the worker. Rootless, only one uid can be mapped, so
the job keeps the worker's uid. Either way the job then enters a user
namespace of its own, where it is JOB_UID and drops the capabilities the new
namespace gave it: the kernel keeps keyrings per uid and user namespace, and
beyond the life of any process (the persistent keyring lasts days), so without
it one job could leave keys for the next one of its worker.

Where the host refuses namespaces the worker steps and the program's
namespaces are skipped: the job then runs in a fresh host temp directory, as
an unprivileged uid if the pool runs as root, with the rlimits, its own session
and no_new_privs.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import site
import sys
from collections.abc import Mapping, Sequence

from astor_jax.execution import linux
from astor_jax.execution.job import Limits

NAMESPACES = "namespaces"
RLIMITS_ONLY = "rlimits"

SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DEVICES = ("null", "zero", "full", "random", "urandom")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "shm": "/tmp"}

JOB_UID = 1000  # the program's uid inside its own user namespace
JOB_DIR_NS = "/tmp/job"  # working directory when namespaces are on
HOSTNAME = "sandbox"
# Host uids of the workers when the pool runs as root: base + slot. Far above
# any account a distribution creates, below the 2**31 that some tools choke on.
UID_RANGE_START = 1_500_000_000
MAX_WORKERS = 1024


UIDS_PER_SLOT = 2  # the worker's host uid and its jobs'


def default_uid_base() -> int:
  """A block of uids for MAX_WORKERS slots picked by our pid, so that pools
  running at once (e.g. test processes) rarely share uids."""
  return UID_RANGE_START + (os.getpid() % 250_000) * MAX_WORKERS * UIDS_PER_SLOT


def worker_host_uid(uid_base: int, slot: int) -> int:
  return uid_base + UIDS_PER_SLOT * slot


def job_host_uid(uid_base: int, slot: int) -> int:
  """Host uid of slot `slot`'s jobs (as root; JOB_UID inside the namespaces)."""
  return uid_base + UIDS_PER_SLOT * slot + 1


@dataclasses.dataclass(frozen=True)
class SandboxSpec:
  """How every worker of one pool isolates its jobs (sent to the fork server).

  Attributes:
    isolation: "namespaces" or "rlimits" (the mode actually used).
    read_only_paths: extra host paths jobs may read (namespaces mode).
    env: the jobs' environment, exactly.
    uid_base: host uid of worker slot 0 when the pool runs as root (see
      `worker_host_uid` and `job_host_uid` for the others).
    drop_uid: rlimits mode as root: run jobs as `uid_base + slot` (False
      only when that uid cannot read the interpreter; jobs then run as root
      without capabilities, which the pool's warning spells out).
  """

  isolation: str
  read_only_paths: tuple[str, ...] = ()
  env: Mapping[str, str] = dataclasses.field(default_factory=dict)
  uid_base: int = UID_RANGE_START
  drop_uid: bool = True


def interpreter_paths() -> list[str]:
  """Host directories the running interpreter reads from: prefixes and sys.path."""
  paths = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
           os.path.dirname(os.path.realpath(sys.executable))]
  try:
    paths += site.getsitepackages()
  except AttributeError:
    pass
  paths += [p for p in sys.path if p]
  out = []
  for p in paths:
    for q in (os.path.abspath(p), os.path.realpath(p)):
      if os.path.isdir(q) and q != "/":
        out.append(q)
  return out


def _minimal(paths: Sequence[str]) -> list[str]:
  """Sorted, deduplicated paths without those inside another listed path."""
  kept: list[str] = []
  for p in sorted(set(os.path.normpath(p) for p in paths), key=lambda p: (p.count("/"), p)):
    if not any(p == k or p.startswith(k.rstrip("/") + "/") for k in kept):
      kept.append(p)
  return kept


def _mount_flags(path: str) -> int:
  """Flags to keep when remounting a bind of `path` (locked ones must stay)."""
  f = os.statvfs(path).f_flag
  flags = 0
  for st, ms in ((os.ST_NOSUID, linux.MS_NOSUID), (os.ST_NODEV, linux.MS_NODEV),
                 (os.ST_NOEXEC, linux.MS_NOEXEC), (os.ST_NOATIME, linux.MS_NOATIME),
                 (os.ST_NODIRATIME, linux.MS_NODIRATIME), (os.ST_RELATIME, linux.MS_RELATIME)):
    if f & st:
      flags |= ms
  return flags


def _write(path: str, text: str) -> None:
  fd = os.open(path, os.O_WRONLY)
  try:
    os.write(fd, text.encode())
  finally:
    os.close(fd)


def _map_ids(pid: str, uid_map: str, gid_map: str, deny_setgroups: bool) -> None:
  if deny_setgroups:
    _write(f"/proc/{pid}/setgroups", "deny")  # required to map a gid without CAP_SETGID
  _write(f"/proc/{pid}/uid_map", uid_map)
  _write(f"/proc/{pid}/gid_map", gid_map)


def _enter_user_namespace(host_id: int, job_host_id: int) -> None:
  """Unshares a user namespace where we are root, mapped to `host_id` on the host
  (and JOB_UID to `job_host_id`, as root).

  Only a process holding CAP_SETUID in the parent namespace may map a uid
  other than its own, so as root a helper forked beforehand (still host root)
  writes the maps; without root we map our own uid and gid, and nothing else.
  """
  if os.geteuid() != 0:
    uid, gid = os.geteuid(), os.getegid()
    linux.unshare(linux.CLONE_NEWUSER)
    _map_ids("self", f"0 {uid} 1\n", f"0 {gid} 1\n", deny_setgroups=True)
    return
  go_r, go_w = os.pipe()
  done_r, done_w = os.pipe()
  me = os.getpid()
  helper = os.fork()
  if helper == 0:
    code = 1
    try:
      os.close(go_w)
      os.close(done_r)
      if os.read(go_r, 1) == b"1":
        ids = f"0 {host_id} 1\n{JOB_UID} {job_host_id} 1\n"
        _map_ids(str(me), ids, ids, deny_setgroups=False)
        code = 0
    except BaseException:  # noqa: BLE001 - the exit status says it failed
      pass
    os._exit(code)
  os.close(go_r)
  os.close(done_w)
  try:
    linux.unshare(linux.CLONE_NEWUSER)
    os.write(go_w, b"1")
  finally:
    os.close(go_w)
    os.close(done_r)
    _, status = os.waitpid(helper, 0)
  if os.waitstatus_to_exitcode(status) != 0:
    raise OSError(f"could not map the worker to host uid {host_id} (needs CAP_SETUID "
                  "on the host)")
  # Take the mapped ids (we are still host root's unmapped ids) and shed host
  # root's supplementary groups, which would otherwise keep group access.
  os.setgroups([])
  os.setresgid(0, 0, 0)
  os.setresuid(0, 0, 0)


def enter_worker_namespaces(slot: int, spec: SandboxSpec) -> None:
  """Worker-level isolation (see module docstring); raises OSError on failure.

  As root the new root is built first, while we are still host root and can
  read everything it shows (e.g. a Python under /root), then we become the
  slot's unprivileged uid. Rootless, the user namespace comes first (it is what
  allows the mounts) and the root is built inside it.
  """
  paths = list(SYSTEM_PATHS) + interpreter_paths() + list(spec.read_only_paths)
  hidden = [p for p in paths if p == "/tmp" or p.startswith("/tmp/")]
  if hidden:
    raise OSError(f"{hidden[0]} is under /tmp, which every job's private /tmp covers; "
                  "install the interpreter (or pass read_only_paths) outside /tmp")
  if os.geteuid() == 0:
    linux.unshare(linux.CLONE_NEWNS)
    _build_root(*_open_sources(paths))
    _enter_user_namespace(worker_host_uid(spec.uid_base, slot),
                          job_host_uid(spec.uid_base, slot))
    linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWNET | linux.CLONE_NEWUTS)
  else:
    _enter_user_namespace(0, 0)
    linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWNET | linux.CLONE_NEWUTS)
    _build_root(*_open_sources(paths))
  if os.getuid() != 0:
    raise OSError("not root inside the worker's user namespace")
  linux.sethostname(HOSTNAME)


def _open_sources(paths: Sequence[str]) -> tuple[list, list, int]:
  """O_PATH descriptors of everything the new root will show."""
  sources: list[tuple[str, int | None, str | None]] = []
  wanted = [p for p in paths if os.path.lexists(p)]
  # A symlinked path appears as the same link, plus a bind of where it points.
  wanted += [os.path.realpath(p) for p in wanted if os.path.islink(p)]
  for path in _minimal(wanted):
    if os.path.islink(path):
      sources.append((path, None, os.readlink(path)))  # e.g. /bin -> usr/bin
    elif os.path.isdir(path):
      sources.append((path, os.open(path, os.O_PATH | os.O_CLOEXEC), None))
  devices = [(d, os.open(f"/dev/{d}", os.O_PATH | os.O_CLOEXEC)) for d in DEVICES
             if os.path.exists(f"/dev/{d}")]
  proc_fd = os.open("/proc", os.O_PATH | os.O_CLOEXEC)
  return sources, devices, proc_fd


def _build_root(sources: list, devices: list, proc_fd: int) -> None:
  """Pivots into a tmpfs root holding read-only binds of the opened sources."""
  linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
  new_root = "/tmp"
  linux.mount("tmpfs", new_root, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV,
              "size=1m,nr_inodes=4096,mode=0755")

  def inside(path: str) -> str:
    return new_root + path

  ro_binds = []
  for path, fd, link in sources:
    target = inside(path)
    if link is not None:
      os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
      if not os.path.lexists(target):
        os.symlink(link, target)
      continue
    os.makedirs(target, mode=0o755, exist_ok=True)
    linux.mount(f"/proc/self/fd/{fd}", target, None, linux.MS_BIND | linux.MS_REC)
    ro_binds.append(target)
    os.close(fd)
  os.makedirs(inside("/dev"), mode=0o755)
  for name, fd in devices:
    target = inside(f"/dev/{name}")
    open(target, "w").close()
    linux.mount(f"/proc/self/fd/{fd}", target, None, linux.MS_BIND)
    os.close(fd)
  for name, link in DEV_LINKS.items():
    os.symlink(link, inside(f"/dev/{name}"))
  os.makedirs(inside("/proc"), mode=0o555)
  # A fully visible proc must exist in the mount namespace before a job's pid
  # namespace may mount its own; the job's /proc covers this one.
  linux.mount(f"/proc/self/fd/{proc_fd}", inside("/proc"), None, linux.MS_BIND | linux.MS_REC)
  os.close(proc_fd)
  os.makedirs(inside("/tmp"), mode=0o755, exist_ok=True)
  # Read-only: every bind and everything mounted below them.
  for target in _mounts_under(ro_binds):
    linux.mount(None, target, None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY
                | linux.MS_NOSUID | linux.MS_NODEV | _mount_flags(target))
  linux.mount(None, new_root, None, linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_NOSUID
              | linux.MS_NODEV)
  os.chdir(new_root)
  linux.pivot_root(".", ".")
  linux.umount2(".", linux.MNT_DETACH)
  os.chdir("/")


def _mounts_under(tops: Sequence[str]) -> list[str]:
  """Mount points equal to or below any of `tops`, parents first."""
  found = []
  with open("/proc/self/mountinfo") as f:
    for line in f:
      point = _unescape(line.split()[4])
      if any(point == t or point.startswith(t + "/") for t in tops):
        found.append(point)
  return sorted(set(found), key=lambda p: p.count("/"))


def _unescape(field: str) -> str:
  """Undoes mountinfo's octal escapes (\\040 for a space) without the codecs machinery."""
  out, i = [], 0
  while i < len(field):
    if field[i] == "\\" and field[i + 1:i + 4].isdigit():
      out.append(chr(int(field[i + 1:i + 4], 8)))
      i += 4
    else:
      out.append(field[i])
      i += 1
  return "".join(out)


def job_uid_is_mapped() -> bool:
  """Whether JOB_UID exists in this (the worker's) user namespace (root host)."""
  with open("/proc/self/uid_map") as f:
    return any(line.split()[0] == str(JOB_UID) for line in f)


def mount_worker_proc() -> None:
  """In the worker, pid 1 of its new pid namespace: a /proc showing only it and its job."""
  linux.mount("proc", "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)


def _tmp_options(max_disk_mb: int) -> str:
  return f"size={max_disk_mb}m,nr_inodes={max(1024, max_disk_mb * 256)},mode=1777"


def mount_worker_tmp(max_disk_mb: int) -> None:
  """In the worker: a fresh tmpfs on /tmp, the home of its jobs' files."""
  linux.mount("tmpfs", "/tmp", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV,
              _tmp_options(max_disk_mb))


def resize_worker_tmp(max_disk_mb: int) -> None:
  """Sets the (empty) /tmp's size cap to a job's `max_disk_mb`."""
  linux.mount(None, "/tmp", None, linux.MS_REMOUNT | linux.MS_NOSUID | linux.MS_NODEV,
              _tmp_options(max_disk_mb))


def replace_worker_tmp(max_disk_mb: int) -> None:
  """Detaches /tmp whatever it holds and mounts an empty one (the slow way to empty it)."""
  linux.umount2("/tmp", linux.MNT_DETACH)
  mount_worker_tmp(max_disk_mb)


def enter_program_user_namespace(outer_uid: int) -> None:
  """In the program's process: a nested user namespace where it is JOB_UID, mapped
  to `outer_uid` of the worker's namespace (its own uid there), with no capabilities.

  The namespace is the job's own, and with it every per-user-namespace thing
  the kernel keeps for a uid beyond its processes' lives: the user, user
  session and persistent keyrings (which would otherwise carry data from one
  job of the worker to the next). Rootless (`outer_uid` 0) it is called while
  still holding CAP_SETFCAP in the worker's namespace, which Linux >= 5.12
  requires to map that namespace's uid 0 into a child one.
  """
  linux.unshare(linux.CLONE_NEWUSER)
  _write("/proc/self/setgroups", "deny")
  _write("/proc/self/uid_map", f"{JOB_UID} {outer_uid} 1\n")
  _write("/proc/self/gid_map", f"{JOB_UID} {outer_uid} 1\n")
  os.setresgid(JOB_UID, JOB_UID, JOB_UID)
  os.setresuid(JOB_UID, JOB_UID, JOB_UID)
  # The full set a new namespace gives its creator; the ambient set is empty and
  # no_new_privs set since the worker's setup.
  linux.drop_capabilities(ambient_and_gain=False)


def drop_to_uid(uid: int) -> None:
  """Rlimits mode as root: become an unprivileged host uid (drops capabilities)."""
  os.setgroups([])
  os.setresgid(uid, uid, uid)
  os.setresuid(uid, uid, uid)


def rlimit_settings(limits: Limits) -> tuple[tuple[int, tuple[int, int]], ...]:
  """The job's per-process limits, as (resource, (soft, hard)); soft == hard so the
  program cannot raise them, none above the caller's own hard limit."""
  mb = 1 << 20
  cpu = limits.cpu_limit_s
  settings = (
      # One second of grace between SIGXCPU and SIGKILL, as ulimit users expect.
      (resource.RLIMIT_CPU, cpu, cpu + 1),
      (resource.RLIMIT_AS, limits.memory_mb * mb, limits.memory_mb * mb),
      (resource.RLIMIT_NPROC, limits.max_processes, limits.max_processes),
      (resource.RLIMIT_FSIZE, limits.max_file_mb * mb, limits.max_file_mb * mb),
      (resource.RLIMIT_NOFILE, limits.max_open_files, limits.max_open_files),
      (resource.RLIMIT_CORE, 0, 0),
      (resource.RLIMIT_MEMLOCK, 0, 0),
      (resource.RLIMIT_MSGQUEUE, 0, 0),
  )
  out = []
  for which, soft, hard in settings:
    _, old_hard = resource.getrlimit(which)
    if old_hard != resource.RLIM_INFINITY:
      soft, hard = min(soft, old_hard), min(hard, old_hard)
    out.append((which, (soft, hard)))
  return tuple(out)


def apply_rlimits(settings: Sequence[tuple[int, tuple[int, int]]]) -> None:
  """Sets the limits `rlimit_settings` worked out (in the worker, before the fork)."""
  for which, limit in settings:
    resource.setrlimit(which, limit)
