"""cpu_buffers.keep_resident: a program's temporaries stay mapped between CPU calls."""

import json
import os
import platform
import subprocess
import sys

import pytest

from astor_jax import cpu_buffers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A fresh process (the dispatch mode is fixed when JAX's backends start): one
# device, one program with a [4096, 4096] float32 temporary (64 MiB, 16,384
# pages), the median of 7 calls' minor page faults once it is compiled and warm
# (the heap may still grow once while it settles, so not the mean).
_CHILD = r"""
import json, resource, sys
from astor_jax import cpu_buffers
note = cpu_buffers.keep_resident(sys.argv[1] == "on")
import jax, jax.numpy as jnp
x = jnp.ones((4096, 256), jnp.float32)
w = jnp.full((256, 4096), 1e-3, jnp.float32)
f = jax.jit(lambda x, w: jnp.tanh(x @ w) @ w.T)
for _ in range(2):
  f(x, w).block_until_ready()
faults = []
for _ in range(7):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x, w).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"note": note, "faults": sorted(faults)[3], "all": faults,
                  "backend": jax.default_backend()}))
"""

TEMP_PAGES = 4096 * 4096 * 4 // 4096


def _child(mode: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "xla_force_host_platform_device_count" not in f)
  proc = subprocess.run([sys.executable, "-c", _CHILD, mode], env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the allocator switches are glibc's")
def test_resident_buffers_stop_the_per_call_page_faults():
  fresh = _child("off")
  resident = _child("on")
  assert fresh["backend"] == resident["backend"] == "cpu"
  assert "off" in fresh["note"]
  assert "inline" in resident["note"] and "glibc" in resident["note"]
  # Without it every call faults the 64 MiB temporary in again ...
  assert fresh["faults"] > TEMP_PAGES / 2, fresh
  # ... with it the pages of the previous call are reused.
  assert resident["faults"] < TEMP_PAGES / 20, resident


def test_off_changes_nothing_and_late_calls_are_refused():
  import jax

  jax.devices()  # this process's backends are running (conftest's fake devices)
  assert "off" in cpu_buffers.keep_resident(False)
  assert jax.config.read("jax_cpu_enable_async_dispatch")
  with pytest.raises(RuntimeError, match=r"already running.*cpu_resident_buffers=false"):
    cpu_buffers.keep_resident(True)
  assert jax.config.read("jax_cpu_enable_async_dispatch")
