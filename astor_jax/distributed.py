r"""Multi-process JAX: start-up from the environment, process-0 logging, per-host shares.

One process runs per TPU VM or GPU node (the JAX multi-controller model). Every
process runs the same program; `jax.distributed.initialize` connects them, after
which `jax.devices()` lists all devices of the job and a `Mesh` over them spans
every host. `initialize()` below must run before anything touches a JAX backend.

How the job is found (first match wins, `ASTOR_DISTRIBUTED` may force a kind):

  explicit  JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES, JAX_PROCESS_ID
            (and optionally JAX_LOCAL_DEVICE_IDS=0,1,...): any launcher, e.g.
            torchrun-style scripts or Kubernetes without a JAX integration.
  slurm     srun inside an allocation with more than one task: SLURM_JOB_ID,
            SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID.
            The coordinator is the first node of the step on a port derived
            from the job id (JAX's own rule; JAX_COORDINATOR_PORT overrides).
            With one task per node each process keeps all of its node's GPUs;
            with one task per GPU it keeps GPU SLURM_LOCALID.
  tpu       a multi-host TPU slice: ASTOR_DISTRIBUTED=tpu (set by
            launch/tpu_vm.sh), or the variables GKE and multislice set
            (TPU_WORKER_HOSTNAMES with more than one host, MEGASCALE_*). JAX's
            own TPU detection then reads the workers from the TPU metadata.
  single    anything else (a laptop, one Colab TPU VM, one GPU box): no
            initialize call; one process owns all local devices.

`ASTOR_DISTRIBUTED=off` forces `single`; `ASTOR_DISTRIBUTED=explicit|slurm|tpu`
forces that kind and fails, naming the missing variable, if it is incomplete.

After start-up:

- `is_main_process()`, `main_print()` and `configure_logging()`: only process 0
  writes logs, metrics, plots and results; the others log warnings and errors.
  Checkpoints are different: every process must call orbax's save and restore
  (each writes its own shards; orbax lets process 0 write the metadata).
- `process_rows(sharding, shape)`: the rows of a global, row-sharded array
  that live on this process's devices. Each host builds only these rows of a
  batch (`jax.make_array_from_process_local_data`) and its execution pool
  scores exactly these rollouts: the sampler's output rows are already local
  there, so no rollout text crosses hosts.
- `process_slice(n)`: a contiguous per-process share of `n` items, for work
  that has no sharding of its own (evaluation examples, file shards).
- `local_rows(x)` and `global_array(sharding, local, shape)`: the two
  directions between a row-sharded global array and this host's rows of it
  (numpy, in `process_rows` order).
- `to_host(x)`: a whole global array as numpy on every host (an all-gather
  across processes); `allgather_json(obj)`: one JSON value per process, in
  process order (strings such as zero-reward reasons).
- `any_process(flag)`: true on every process when it is true on one. A
  SIGTERM reaches one host of a pod first; the loop must stop (and save) at
  the same step on all hosts, or the others wait forever in a collective.
- `barrier(name)`: every process waits here for the others (process 0 builds
  a shared file, the others read it after the barrier).

All of these are collective when there are several processes: every process
must call them, in the same order. In one process they cost nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

MODES = ("auto", "off", "explicit", "slurm", "tpu")
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")
_EXPLICIT_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class LaunchError(RuntimeError):
  """The environment describes an incomplete or inconsistent multi-process job."""


@dataclasses.dataclass(frozen=True)
class LaunchEnv:
  """What the environment says about this process.

  Attributes:
    kind: "explicit", "slurm", "tpu" or "single".
    coordinator_address: "host:port" of process 0's coordinator; None when JAX
      finds it itself ("tpu") or there is none ("single").
    num_processes: processes in the job; None when JAX finds it ("tpu").
    process_id: this process's index; None when JAX finds it ("tpu").
    local_device_ids: devices this process keeps; None keeps all local devices.
  """

  kind: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None

  @property
  def multi_process(self) -> bool:
    return self.kind != "single"


def detect(environ: Mapping[str, str] | None = None) -> LaunchEnv:
  """Reads the launch environment (see the module docstring); touches no backend.

  Args:
    environ: the environment to read; `os.environ` when None.

  Returns:
    The launch description.

  Raises:
    LaunchError: naming the variable to set or fix.
  """
  env = os.environ if environ is None else environ
  mode = env.get("ASTOR_DISTRIBUTED", "auto").strip().lower() or "auto"
  if mode not in MODES:
    raise LaunchError(f"ASTOR_DISTRIBUTED={mode!r}: use one of {', '.join(MODES)}")
  if mode == "off":
    return LaunchEnv("single")
  if mode == "explicit" or (mode == "auto" and "JAX_COORDINATOR_ADDRESS" in env):
    return _explicit(env)
  if mode == "slurm" or (mode == "auto" and _slurm_present(env)):
    return _slurm(env)
  if mode == "tpu" or (mode == "auto" and _tpu_pod_present(env)):
    return LaunchEnv("tpu")
  return LaunchEnv("single")


def _int_var(env: Mapping[str, str], name: str) -> int:
  raw = env.get(name)
  if raw is None:
    raise LaunchError(f"{name}: not set; export it (see astor_jax/distributed.py)")
  try:
    return int(raw)
  except ValueError:
    raise LaunchError(f"{name}={raw!r}: expected an integer") from None


def _local_device_ids(env: Mapping[str, str]) -> tuple[int, ...] | None:
  raw = env.get("JAX_LOCAL_DEVICE_IDS", "").strip()
  if not raw:
    return None
  try:
    return tuple(int(x) for x in raw.split(","))
  except ValueError:
    raise LaunchError(f"JAX_LOCAL_DEVICE_IDS={raw!r}: expected comma-separated "
                      "integers such as 0,1,2,3") from None


def _check_ids(num_processes: int, process_id: int, names: tuple[str, str]) -> None:
  if num_processes < 1:
    raise LaunchError(f"{names[0]}={num_processes}: must be at least 1")
  if not 0 <= process_id < num_processes:
    raise LaunchError(f"{names[1]}={process_id}: must be in [0, {num_processes}) "
                      f"({names[0]}={num_processes})")


def _explicit(env: Mapping[str, str]) -> LaunchEnv:
  missing = [v for v in _EXPLICIT_VARS if not env.get(v)]
  if missing:
    raise LaunchError(f"{missing[0]}: not set; an explicit launch needs all of "
                      f"{', '.join(_EXPLICIT_VARS)}")
  address = env["JAX_COORDINATOR_ADDRESS"].strip()
  if not re.fullmatch(r"[^\s:]+:\d+|\[[0-9a-fA-F:]+\]:\d+", address):
    raise LaunchError(f"JAX_COORDINATOR_ADDRESS={address!r}: expected host:port, "
                      "e.g. 10.0.0.1:8476")
  num = _int_var(env, "JAX_NUM_PROCESSES")
  pid = _int_var(env, "JAX_PROCESS_ID")
  _check_ids(num, pid, ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))
  return LaunchEnv("explicit", address, num, pid, _local_device_ids(env))


def _slurm_present(env: Mapping[str, str]) -> bool:
  # One task (e.g. an interactive salloc shell) is an ordinary single process.
  return all(v in env for v in _SLURM_VARS) and env.get("SLURM_NTASKS", "1") != "1"


def first_slurm_host(node_list: str) -> str:
  """The first host of a SLURM node list.

  Args:
    node_list: e.g. "gpu17", "gpu[017-020,031]", "a[1,3],b7" or "n[001-004]-ib".

  Returns:
    The first host name: "gpu17", "gpu017", "a1", "n001-ib".
  """
  node_list = node_list.strip()
  depth = 0
  for i, ch in enumerate(node_list):  # cut at the first top-level comma
    depth += ch == "["
    depth -= ch == "]"
    if ch == "," and depth == 0:
      node_list = node_list[:i]
      break
  m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", node_list)
  if not m:
    return node_list
  prefix, ranges, suffix = m.groups()
  first = re.split(r"[,-]", ranges)[0]
  return f"{prefix}{first}{suffix}"


def _slurm(env: Mapping[str, str]) -> LaunchEnv:
  missing = [v for v in _SLURM_VARS if v not in env]
  if missing:
    raise LaunchError(f"{missing[0]}: not set; run the job under srun inside an "
                      "sbatch/salloc allocation (see launch/slurm_gpu.sbatch)")
  num = _int_var(env, "SLURM_NTASKS")
  pid = _int_var(env, "SLURM_PROCID")
  _check_ids(num, pid, ("SLURM_NTASKS", "SLURM_PROCID"))
  job_id = _int_var(env, "SLURM_JOB_ID")
  port = env.get("JAX_COORDINATOR_PORT") or str(job_id % 2**12 + 65535 - 2**12 + 1)
  host = first_slurm_host(env["SLURM_STEP_NODELIST"])
  local_ids = _local_device_ids(env)
  if local_ids is None and _tasks_on_this_node(env) > 1:
    # One task per GPU: each process keeps the GPU matching its local rank.
    local_ids = (_int_var(env, "SLURM_LOCALID"),)
  return LaunchEnv("slurm", f"{host}:{port}", num, pid, local_ids)


def _tasks_on_this_node(env: Mapping[str, str]) -> int:
  """Tasks SLURM placed on this node (SLURM_STEP_TASKS_PER_NODE like "8(x2)" or "8,4")."""
  raw = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1"
  counts: list[int] = []
  for part in raw.split(","):
    m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
    if not m:
      return 1
    counts += [int(m.group(1))] * int(m.group(2) or 1)
  node_id = int(env.get("SLURM_NODEID", "0"))
  return counts[node_id] if node_id < len(counts) else counts[-1]


def _tpu_pod_present(env: Mapping[str, str]) -> bool:
  hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
  return len([h for h in hosts.split(",") if h.strip()]) > 1 or bool(
      env.get("MEGASCALE_COORDINATOR_ADDRESS"))


_STATE: dict[str, LaunchEnv] = {}


def initialize(environ: Mapping[str, str] | None = None,
               timeout_s: int = 300) -> LaunchEnv:
  """Starts JAX's distributed runtime as the environment asks; idempotent.

  Call it first thing in an entry point, before any JAX computation. In the
  `single` case it does nothing, so the same program runs on a laptop.

  Args:
    environ: the environment to read; `os.environ` when None.
    timeout_s: how long to wait for the other processes to join.

  Returns:
    The detected launch description.
  """
  if "env" in _STATE:
    return _STATE["env"]
  launch = detect(environ)
  if launch.multi_process:
    import jax  # here, not at import time: detect() must stay backend-free

    if launch.kind == "tpu":
      jax.distributed.initialize(initialization_timeout=timeout_s)
    else:
      # Every argument is given, so JAX's own cluster detection is skipped: it
      # would pin each SLURM process to one GPU even with one task per node.
      jax.distributed.initialize(
          coordinator_address=launch.coordinator_address,
          num_processes=launch.num_processes, process_id=launch.process_id,
          local_device_ids=list(launch.local_device_ids) if launch.local_device_ids else None,
          cluster_detection_method="deactivate", initialization_timeout=timeout_s)
  _STATE["env"] = launch
  return launch


def process_index() -> int:
  import jax

  return jax.process_index()


def process_count() -> int:
  import jax

  return jax.process_count()


def is_main_process() -> bool:
  """True on process 0, the one that writes logs, metrics, plots and results."""
  return process_index() == 0


def main_print(*args, **kwargs) -> None:
  """`print` on process 0 only (progress lines, tables)."""
  if is_main_process():
    print(*args, **kwargs)


def configure_logging() -> None:
  """Keeps INFO logs on process 0; other processes log warnings and errors only.

  Works for both `absl.logging` (which the entry points use) and the standard
  `logging` root logger.
  """
  from absl import logging as absl_logging

  if is_main_process():
    return
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger().setLevel(logging.WARNING)


def process_slice(n: int, index: int | None = None, count: int | None = None) -> slice:
  """This process's contiguous share of `n` items; shares differ by at most one.

  Args:
    n: number of items.
    index: process index (default `jax.process_index()`).
    count: number of processes (default `jax.process_count()`).

  Returns:
    A slice into the items; the slices of all processes tile `range(n)`.
  """
  index = process_index() if index is None else index
  count = process_count() if count is None else count
  if not 0 <= index < count:
    raise ValueError(f"process index {index} outside [0, {count})")
  base, extra = divmod(n, count)
  start = index * base + min(index, extra)
  return slice(start, start + base + (index < extra))


def process_rows(sharding, shape: Sequence[int]) -> np.ndarray:
  """Rows (indices along axis 0) of a global array held by this process's devices.

  With `sharding` the batch sharding of the step, these are the rollouts whose
  prompts this host provides and whose completions its execution pool scores;
  their order is the order `jax.make_array_from_process_local_data` expects for
  this process's local data.

  Args:
    sharding: a `jax.sharding.Sharding` of the global array.
    shape: the global shape.

  Returns:
    Sorted int64 row indices (replicated rows appear once).
  """
  n = int(shape[0])
  rows: set[int] = set()
  for index in sharding.addressable_devices_indices_map(tuple(shape)).values():
    rows.update(range(*index[0].indices(n)) if index else range(n))
  return np.array(sorted(rows), dtype=np.int64)


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any; every process must call it.

  Used for decisions that must be the same everywhere (stop and checkpoint
  after a SIGTERM, skip a step). One tiny all-gather; free in one process.
  """
  if process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils

  flags = multihost_utils.process_allgather(np.asarray([bool(flag)], dtype=np.int32))
  return bool(np.any(flags))


def local_rows(x) -> np.ndarray:
  """This process's rows of a global array sharded along axis 0, as numpy.

  The rows are those of `process_rows(x.sharding, x.shape)`, in that order;
  the inverse of `global_array`. In one process: the whole array.
  """
  import jax

  if process_count() == 1:
    return np.asarray(jax.device_get(x))
  rows = process_rows(x.sharding, x.shape)
  out = np.empty((len(rows),) + tuple(x.shape[1:]), dtype=x.dtype)
  all_rows = np.arange(x.shape[0])
  for shard in x.addressable_shards:
    index = tuple(shard.index) or (slice(None),)
    out[(np.searchsorted(rows, all_rows[index[0]]),) + index[1:]] = np.asarray(shard.data)
  return out


def global_array(sharding, local: np.ndarray, global_shape: Sequence[int]):
  """The global array whose rows on this process are `local` (`process_rows` order).

  Every process passes its own rows (`jax.make_array_from_process_local_data`);
  in one process `local` is the whole array and is placed with `device_put`.
  """
  import jax

  local = np.asarray(local)
  if process_count() == 1:
    if local.shape != tuple(global_shape):
      raise ValueError(f"global_array: one process holds every row; got {local.shape}, "
                       f"expected {tuple(global_shape)}")
    return jax.device_put(local, sharding)
  return jax.make_array_from_process_local_data(sharding, local, tuple(global_shape))


def to_host(x) -> np.ndarray:
  """The whole of a global array as numpy, on every process (collective)."""
  import jax

  if process_count() == 1 or x.is_fully_replicated:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def allgather_json(value) -> list:
  """`value` (anything `json.dumps` takes) from every process, in process order.

  Two small all-gathers: the encoded lengths, then the bytes padded to the
  longest. In one process: `[value]`.
  """
  if process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils

  data = np.frombuffer(json.dumps(value, sort_keys=True).encode(), dtype=np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(
      np.asarray([data.size], np.int32))).reshape(-1)
  padded = np.zeros((int(lengths.max()),), np.uint8)
  padded[:data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
  return [json.loads(row[:n].tobytes().decode()) for row, n in zip(gathered, lengths)]


def barrier(name: str) -> None:
  """Blocks until every process reached the barrier `name`; free in one process."""
  if process_count() == 1:
    return
  from jax.experimental import multihost_utils

  multihost_utils.sync_global_devices(name)
