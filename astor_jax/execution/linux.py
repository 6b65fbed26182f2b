"""The few Linux system calls the sandbox needs that `os` does not expose.

Thin ctypes wrappers that raise `OSError` with the errno, so callers handle
them like any other `os` failure. Linux only; importing on another system
works, calling does not.
"""

from __future__ import annotations

import ctypes
import os

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <sys/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
MNT_DETACH = 0x2

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# The running interpreter's own C library (find_library would run ldconfig).
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str, *args) -> int:
  if result == -1:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}", *[str(a) for a in args[:1]])
  return result


def unshare(flags: int) -> None:
  """Moves the calling process into new namespaces (see unshare(2))."""
  _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
  """mount(2); `data` is the file system's option string (e.g. "size=64m")."""
  enc = lambda s: None if s is None else os.fsencode(s)
  _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags),
                     enc(data)), f"mount {target}", target)


def umount2(target: str, flags: int = 0) -> None:
  _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount {target}")


def _pivot_root_nr() -> int:
  """pivot_root's syscall number (glibc has no wrapper)."""
  machine = os.uname().machine
  numbers = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
  if machine not in numbers:
    raise OSError(f"pivot_root: syscall number unknown on {machine}")
  return numbers[machine]


def pivot_root(new_root: str, put_old: str) -> None:
  _check(_libc.syscall(ctypes.c_long(_pivot_root_nr()), os.fsencode(new_root),
                       os.fsencode(put_old)), "pivot_root")


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
  return _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                            ctypes.c_ulong(0), ctypes.c_ulong(0)), f"prctl({option})")


_DUMPABLE_ARGS = (ctypes.c_int(PR_SET_DUMPABLE), ctypes.c_ulong(1), ctypes.c_ulong(0),
                  ctypes.c_ulong(0), ctypes.c_ulong(0))


def set_dumpable() -> None:
  """prctl(PR_SET_DUMPABLE, 1) with its arguments made once (called in every job)."""
  _check(_libc.prctl(*_DUMPABLE_ARGS), "prctl(PR_SET_DUMPABLE)")


def sethostname(name: str) -> None:
  raw = name.encode()
  _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


class _CapHeader(ctypes.Structure):
  _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
  _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
              ("inheritable", ctypes.c_uint32)]


def last_capability() -> int:
  try:
    with open("/proc/sys/kernel/cap_last_cap") as f:
      return int(f.read())
  except OSError:
    return 40


def drop_bounding_set(last_cap: int) -> None:
  """Empties the capability bounding set (needs CAP_SETPCAP; else a no-op).

  Capabilities already held stay; no execve can gain any beyond them.
  """
  for cap in range(last_cap + 1):
    try:
      prctl(PR_CAPBSET_DROP, cap)
    except OSError:
      pass  # EINVAL for capabilities this kernel does not know; EPERM without CAP_SETPCAP


def drop_ambient_and_gain() -> None:
  """Empties the ambient set and sets no_new_privs (inherited by every child).

  no_new_privs makes sure no later execve (setuid binary, file capabilities)
  gives a capability back.
  """
  try:
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
  except OSError:
    pass  # kernels before 4.3 have no ambient set
  prctl(PR_SET_NO_NEW_PRIVS, 1)


_CAP_EMPTY = (_CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)())


def drop_capabilities(ambient_and_gain: bool = True) -> None:
  """Empties the effective, permitted and inheritable sets; with `ambient_and_gain`
  also the ambient set, and sets no_new_privs (skip both where a worker that set
  them is the caller's ancestor: they are inherited, and this runs in every job)."""
  if ambient_and_gain:
    drop_ambient_and_gain()
  header, data = _CAP_EMPTY
  _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


# System V IPC objects (<sys/ipc.h>): removed after each job of a worker.
IPC_RMID = 0
_SYSV = (("shm", "shmctl"), ("sem", "semctl"), ("msg", "msgctl"))


def remove_sysv_ipc() -> int:
  """Removes every System V shared-memory segment, semaphore set and message
  queue visible in this IPC namespace; returns how many.

  Runs after every job, so the usual case (nothing there: the files hold only
  their header line) reads raw bytes and allocates next to nothing.
  """
  removed = 0
  for kind, ctl in _SYSV:
    try:
      fd = os.open(f"/proc/sysvipc/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
      continue
    try:
      data = b""
      while chunk := os.read(fd, 1 << 16):
        data += chunk
    finally:
      os.close(fd)
    for line in data.splitlines()[1:]:
      ipc_id = int(line.split()[1])
      if getattr(_libc, ctl)(ctypes.c_int(ipc_id), ctypes.c_int(IPC_RMID),
                             ctypes.c_void_p(0) if kind != "sem" else ctypes.c_int(0)) == 0:
        removed += 1
  return removed


def effective_capabilities() -> int:
  """The CapEff mask of the calling process, from /proc/self/status."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("CapEff:"):
        return int(line.split()[1], 16)
  return 0
