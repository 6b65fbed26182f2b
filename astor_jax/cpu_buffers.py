r"""XLA:CPU: keep a program's temporary buffer mapped from one call to the next.

On the CPU backend every call of a compiled program allocates one block for
all of its temporaries (`posix_memalign`) and frees it when the call ends.
For the GRPO train step of the `6l128` benchmark that block is 568 MB. glibc
serves a block that large with a fresh `mmap` and gives it back with `munmap`
when it is freed, so every call touches about 139,000 new pages, and the
kernel faults in and zeroes each one: a sixth of that step's wall time
(bench/README.md, finding of 2026-12-06 19:02).

`keep_resident()` stops that, in two parts that only work together:

1. Single-device CPU computations run inline on the thread that calls them
   (`jax_cpu_enable_async_dispatch=False`), so the block is allocated from
   that thread's malloc arena. The training loop calls from the main thread,
   whose arena (glibc's main arena) is the only one that can grow past 64 MB
   without `mmap`. With asynchronous dispatch, the block comes from a
   worker thread's arena, which maps anything above 64 MB afresh every time.
2. glibc is told (`mallopt`) never to `mmap` an allocation and never to trim
   the heap, so a freed block stays mapped and the next call reuses its pages.

Measured (one process each, 2-core x86, `bench/grpo_bench.py --workload
6l128`): minor page faults per train step 138,600 -> 0; train phase 0.64-0.67
s -> 0.54-0.55 s; the sampler (two host threads with their own arenas) is
unchanged. Forcing one arena for all threads instead (`M_ARENA_MAX=1`)
removes the faults as well but makes the sampler's two threads contend for
it: its calls took 0.46 s instead of 0.34 s.

What it costs: the process's resident memory no longer shrinks after a peak
(peak RSS is unchanged: the block was resident during the call anyway), and
Python waits for each single-device CPU call instead of dispatching ahead.
The training loop does not rely on dispatching ahead for overlap: rewards are
scored by the sandbox pool's processes while the main thread runs the
reference pass. Nothing changes on GPU or TPU backends (the flag only
concerns JAX's CPU client, and the allocator is left alone there) nor for
computations over several CPU devices, which stay asynchronous.

Call it once, before the first JAX computation of the process, after
`jax.distributed.initialize` (it starts JAX's backends to learn which one is
the default): `astor_jax.main` does, per `config.cpu_resident_buffers`, and so
do the benchmarks.
"""

from __future__ import annotations

import ctypes
import platform
from typing import Any

# mallopt parameters (glibc <malloc.h>).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def _libc() -> Any | None:
  """The process's C library when it is glibc (the only one with these switches)."""
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return None
  libc = ctypes.CDLL(None)
  return libc if hasattr(libc, "mallopt") else None


def _backends_started() -> bool:
  """Whether JAX has created its backends (after which the dispatch mode is fixed)."""
  from jax._src import xla_bridge  # no public API says this

  started = getattr(xla_bridge, "backends_are_initialized", None)
  return bool(started and started())


def keep_resident(enable: bool = True) -> str:
  """Keeps XLA:CPU's per-call buffers mapped between calls (module doc).

  Args:
    enable: False leaves JAX and the allocator as they are.

  Returns:
    One line for the log saying what was done and why.

  Raises:
    RuntimeError: JAX's backends already exist, so the dispatch mode can no
      longer change (call this before the first computation), or glibc
      refused a setting.
  """
  if not enable:
    return "cpu_resident_buffers: off (XLA:CPU maps each call's temporaries afresh)"
  import jax

  if _backends_started():
    raise RuntimeError(
        "cpu_resident_buffers: JAX's backends are already running; call "
        "astor_jax.cpu_buffers.keep_resident() before the first JAX computation, "
        "or pass --config.cpu_resident_buffers=false")
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  backend = jax.default_backend()
  if backend != "cpu":
    return f"cpu_resident_buffers: nothing to do on the {backend} backend"
  libc = _libc()
  if libc is None:
    return ("cpu_resident_buffers: CPU calls run inline; the allocator is left as it is "
            f"(not glibc: {platform.system()} {platform.libc_ver()[0] or 'unknown libc'})")
  # (size_t) -1: the top of the heap is never given back to the kernel.
  for name, param, value in (("M_MMAP_MAX", M_MMAP_MAX, 0),
                             ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, -1)):
    if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
      raise RuntimeError(f"cpu_resident_buffers: glibc refused mallopt({name}, {value}); "
                         "pass --config.cpu_resident_buffers=false")
  return ("cpu_resident_buffers: CPU calls run inline and glibc keeps freed blocks "
          "mapped (no mmap, no heap trim)")
