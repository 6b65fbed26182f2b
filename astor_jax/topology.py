r"""Accelerator topologies: device kind, HBM, counts, hosts and mesh layout.

A topology name says what a job runs on, the way Cloud TPU and GPU clusters
name it:

  v2-N, v3-N  TPU v2/v3 slice (Colab's legacy TPU is v2-8), N TensorCores = devices
  v4-N        TPU v4 slice, N TensorCores (N/2 chips, one JAX device per chip)
  v5e-N       TPU v5e slice ("v5litepod-N" is accepted too), N chips
  v5p-N       TPU v5p slice, N TensorCores (N/2 chips, one JAX device per chip)
  v6e-N       TPU v6e (Trillium) slice, N chips
  Nxh100      N NVIDIA H100 80GB (SXM) GPUs, 8 per node ("8xh100" is one node)
  Nxh200      N NVIDIA H200 141GB GPUs, 8 per node
  cpu-N       N fake CPU devices (tests and `launch_check` on small shapes)

`hbm_bytes` is the memory one JAX device has. `usable_fraction` is the share a
job may plan for: on TPU the runtime keeps a little back; on GPU our launchers
set `XLA_PYTHON_CLIENT_MEM_FRACTION=0.90` (JAX's default is 0.75), so a plan
that fits 90% fits the launcher's pool. Peak FLOP/s are dense bf16, from the
vendors' data sheets; they are the denominator of model-FLOPs utilization.

Mesh layout (the MaxText convention): the `("data", "fsdp", "tensor")` mesh is
laid out so that `tensor` and `fsdp` stay inside the fast interconnect (one TPU
slice's ICI, one GPU node's NVLink) and only `data` spans the slow one (DCN
between slices, InfiniBand/Ethernet between GPU nodes). `mesh_shape` resolves a
config's `mesh` fields for a topology and `check_mesh` says, naming the field,
when a shape cannot work there.
"""

from __future__ import annotations

import dataclasses
import re

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
  """One accelerator kind.

  Attributes:
    family: the topology prefix ("v5e", "h100", ...).
    platform: "tpu", "gpu" or "cpu".
    device_kind: what `jax.devices()[0].device_kind` reports for it.
    hbm_bytes: memory of one JAX device.
    peak_bf16_flops: dense bf16 FLOP/s of one JAX device.
    devices_per_host: JAX devices one host (VM or node) drives in a multi-host slice.
    cores_per_device: TensorCores per JAX device; v4 and v5p slice names count cores.
    usable_fraction: share of `hbm_bytes` a job may plan for.
    single_host_max: the largest slice that is still one host (v5e and v6e have
      8-chip single-host VMs but 4 chips per host in multi-host slices).
  """

  family: str
  platform: str
  device_kind: str
  hbm_bytes: int
  peak_bf16_flops: float
  devices_per_host: int
  cores_per_device: int = 1
  usable_fraction: float = 0.94
  single_host_max: int = 0  # 0: devices_per_host


DEVICES: dict[str, DeviceSpec] = {
    # v2 and v3 (Colab's legacy TPU runtime): each TensorCore is one JAX device.
    "v2": DeviceSpec("v2", "tpu", "TPU v2", 8 * GIB, 22.5e12, 8),
    "v3": DeviceSpec("v3", "tpu", "TPU v3", 16 * GIB, 61.5e12, 8),
    "v4": DeviceSpec("v4", "tpu", "TPU v4", 32 * GIB, 275e12, 4, cores_per_device=2),
    "v5e": DeviceSpec("v5e", "tpu", "TPU v5 lite", 16 * GIB, 197e12, 4, single_host_max=8),
    "v5p": DeviceSpec("v5p", "tpu", "TPU v5", 95 * GIB, 459e12, 4, cores_per_device=2),
    "v6e": DeviceSpec("v6e", "tpu", "TPU v6 lite", 32 * GIB, 918e12, 4, single_host_max=8),
    "h100": DeviceSpec("h100", "gpu", "NVIDIA H100 80GB HBM3", 80 * GIB, 989e12, 8,
                       usable_fraction=0.90),
    "h200": DeviceSpec("h200", "gpu", "NVIDIA H200", 141 * GIB, 989e12, 8,
                       usable_fraction=0.90),
    # Fake host devices for tests; the HBM figure is a nominal budget to check against.
    "cpu": DeviceSpec("cpu", "cpu", "cpu", 16 * GIB, 1e12, 8, usable_fraction=1.0),
}

_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}
_TPU_RE = re.compile(r"^(v2|v3|v4|v5e|v5litepod|v5lite|v5p|v6e)-(\d+)$")
_GPU_RE = re.compile(r"^(\d+)x(h100|h200)$")
_CPU_RE = re.compile(r"^cpu-(\d+)$")
EXAMPLES = ("v2-8", "v4-32", "v5e-8", "v5e-64", "v5p-128", "v6e-16", "8xh100", "16xh100", "cpu-8")


@dataclasses.dataclass(frozen=True)
class Topology:
  """A concrete slice or cluster.

  Attributes:
    name: canonical name, e.g. "v5e-64", "8xh100".
    device: the accelerator kind.
    num_devices: JAX devices in the whole job.
  """

  name: str
  device: DeviceSpec
  num_devices: int

  @property
  def platform(self) -> str:
    return self.device.platform

  @property
  def devices_per_host(self) -> int:
    """JAX devices per process (one process per TPU VM or GPU node)."""
    if self.num_devices <= max(self.device.single_host_max, self.device.devices_per_host):
      return self.num_devices
    return self.device.devices_per_host

  @property
  def num_hosts(self) -> int:
    return self.num_devices // self.devices_per_host

  @property
  def hbm_bytes(self) -> int:
    return self.device.hbm_bytes

  @property
  def usable_hbm_bytes(self) -> int:
    return int(self.device.hbm_bytes * self.device.usable_fraction)

  @property
  def peak_bf16_flops(self) -> float:
    """Dense bf16 FLOP/s of the whole topology."""
    return self.device.peak_bf16_flops * self.num_devices

  def describe(self) -> str:
    return (f"{self.name}: {self.num_devices} x {self.device.device_kind} "
            f"({self.hbm_bytes / GIB:.0f} GiB HBM each), {self.num_hosts} host(s) x "
            f"{self.devices_per_host} devices")


def parse(name: str) -> Topology:
  """Parses a topology name; raises ValueError naming the accepted forms.

  Args:
    name: e.g. "v5e-64", "v5p-128", "v4-32", "8xh100", "cpu-8" (case-insensitive).

  Returns:
    The topology.
  """
  text = name.strip().lower()
  if m := _TPU_RE.match(text):
    family = _ALIASES.get(m.group(1), m.group(1))
    count = int(m.group(2))
    device = DEVICES[family]
    if count <= 0 or count % device.cores_per_device:
      raise ValueError(
          f"topology {name!r}: {family} slice names count TensorCores "
          f"({device.cores_per_device} per chip); use a multiple of "
          f"{device.cores_per_device}, e.g. {family}-{8 * device.cores_per_device}")
    num_devices = count // device.cores_per_device
    _check_multi_host(name, num_devices, device)
    return Topology(f"{family}-{count}", device, num_devices)
  if m := _GPU_RE.match(text):
    count, family = int(m.group(1)), m.group(2)
    device = DEVICES[family]
    if count <= 0:
      raise ValueError(f"topology {name!r}: need at least one GPU, e.g. 8x{family}")
    _check_multi_host(name, count, device)
    return Topology(f"{count}x{family}", device, count)
  if m := _CPU_RE.match(text):
    count = int(m.group(1))
    if count <= 0:
      raise ValueError(f"topology {name!r}: need at least one device, e.g. cpu-8")
    return Topology(f"cpu-{count}", DEVICES["cpu"], count)
  raise ValueError(f"topology {name!r}: unknown topology; use one of the forms "
                   f"{', '.join(EXAMPLES)}")


def _check_multi_host(name: str, num_devices: int, device: DeviceSpec) -> None:
  per_host = device.devices_per_host
  if num_devices > max(per_host, device.single_host_max) and num_devices % per_host:
    raise ValueError(f"topology {name!r}: a multi-host {device.family} job has "
                     f"{per_host} devices per host; use a multiple of {per_host}")


def mesh_shape(topology: Topology, data: int, fsdp: int, tensor: int) -> tuple[int, int, int]:
  """Resolves the config's `mesh.data/fsdp/tensor` (data may be -1) for a topology.

  Args:
    topology: where the job runs.
    data: `config.mesh.data`, -1 for "all devices left after fsdp x tensor".
    fsdp: `config.mesh.fsdp`.
    tensor: `config.mesh.tensor`.

  Returns:
    `(data, fsdp, tensor)` whose product is `topology.num_devices`.

  Raises:
    ValueError: naming the `config.mesh` field to change.
  """
  n = topology.num_devices
  if fsdp <= 0 or tensor <= 0:
    raise ValueError(f"config.mesh: fsdp={fsdp} and tensor={tensor} must be positive")
  if data == -1:
    if n % (fsdp * tensor):
      raise ValueError(
          f"config.mesh.fsdp: fsdp x tensor = {fsdp * tensor} does not divide the "
          f"{n} devices of {topology.name}; pick fsdp and tensor whose product divides {n}")
    data = n // (fsdp * tensor)
  if data * fsdp * tensor != n:
    raise ValueError(
        f"config.mesh.data: data x fsdp x tensor = {data}x{fsdp}x{tensor} = "
        f"{data * fsdp * tensor} but {topology.name} has {n} devices; set "
        "--config.mesh.data=-1 or make the product equal the device count")
  return data, fsdp, tensor


def check_mesh(topology: Topology, shape: tuple[int, int, int]) -> list[str]:
  """Layout warnings for a resolved mesh shape (empty when the layout is sound).

  `tensor` all-reduces activations in every layer, so it must stay inside one
  host's NVLink (GPU) or one slice (TPU); `fsdp` all-gathers weights every layer
  and should stay inside the fast interconnect too. Only `data` crosses hosts
  cheaply on GPU clusters.

  Args:
    topology: where the job runs.
    shape: `(data, fsdp, tensor)`.

  Returns:
    Human-readable warnings, each naming the `config.mesh` field to change.
  """
  _, fsdp, tensor = shape
  warnings = []
  per_host = topology.devices_per_host
  if topology.platform == "gpu":
    if per_host % tensor:
      warnings.append(f"config.mesh.tensor={tensor} does not divide the {per_host} GPUs of "
                      "a node: tensor-parallel all-reduces would cross nodes; use 1, 2, 4 or 8")
    if fsdp * tensor > per_host:
      warnings.append(f"config.mesh.fsdp x tensor = {fsdp * tensor} spans more than one "
                      f"node of {per_host} GPUs: weights are all-gathered over the "
                      "inter-node network every layer; prefer fsdp x tensor <= "
                      f"{per_host} and data across nodes")
  return warnings


def all_names() -> tuple[str, ...]:
  """Example names, for `--help` texts and error messages."""
  return EXAMPLES
