"""Device mesh, logical axis rules, and parameter/activation shardings.

Every parameter and the main activations carry logical axis names; the rules below
map them onto the three mesh axes:

- `data`: pure data parallelism (batch rows).
- `fsdp`: batch rows for activations, and the model width `embed` for parameters
  (ZeRO-3 style fully sharded parameters, gathered per layer by XLA).
- `tensor`: Megatron-style tensor parallelism over heads, MLP width and vocab.

A mesh axis that does not divide a dimension is dropped for that array (it is
replicated along that axis) instead of failing, so the same rules serve a 2-kv-head
model on a tensor=4 mesh, odd vocab sizes, and one CPU. Activation constraints are
applied only inside `jax.set_mesh(mesh)`; without a mesh context the model runs
unconstrained (one device, or shardings propagated from the inputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # Activations.
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # Parameters.
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a `Mesh(("data", "fsdp", "tensor"))`.

  Args:
    data: size of the data axis; -1 takes all devices left after fsdp * tensor.
    fsdp: size of the fsdp axis.
    tensor: size of the tensor axis.
    devices: devices to use (default: all of `jax.devices()`).

  Returns:
    The mesh, devices laid out in the given order (tensor fastest varying, so
    tensor-parallel groups are neighbours on the interconnect).

  Raises:
    ValueError: when the sizes do not multiply to the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  for name, value in (("fsdp", fsdp), ("tensor", tensor)):
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"mesh.{name}: got {value!r}, expected a positive integer")
  if data == -1:
    if n % (fsdp * tensor):
      raise ValueError(f"mesh.fsdp * mesh.tensor = {fsdp * tensor} does not divide the "
                       f"{n} devices; pick sizes whose product divides {n}")
    data = n // (fsdp * tensor)
  if not isinstance(data, int) or data <= 0 or data * fsdp * tensor != n:
    raise ValueError(f"mesh.data * mesh.fsdp * mesh.tensor = {data}*{fsdp}*{tensor} must equal "
                     f"the {n} devices; set mesh.data=-1 to take the rest")
  return Mesh(np.asarray(devices, dtype=object).reshape(data, fsdp, tensor), MESH_AXES)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int],
                    mesh_shape: dict[str, int], rules: LogicalRules = LOGICAL_AXIS_RULES,
                    ) -> PartitionSpec:
  """Maps logical axis names of one array to a PartitionSpec on a mesh.

  Each logical name takes the mesh axes its rule gives, minus axes that are
  already used by an earlier dimension, absent from the mesh, or whose size does
  not divide what is left of the dimension (those dimensions stay replicated
  along that axis).

  Args:
    names: one logical name (or None) per dimension.
    shape: the array's shape.
    mesh_shape: mesh axis name -> size.
    rules: (logical name, mesh axes) pairs; the first match wins.

  Returns:
    The PartitionSpec.
  """
  if len(names) != len(shape):
    raise ValueError(f"logical axes {tuple(names)} do not match shape {tuple(shape)}")
  table: dict[str, Any] = {}
  for logical, axes in rules:
    table.setdefault(logical, axes)
  used: set[str] = set()
  spec = []
  for name, dim in zip(names, shape):
    axes = table.get(name) if name is not None else None
    if axes is None:
      spec.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    kept, left = [], dim
    for axis in axes:
      size = mesh_shape.get(axis)
      if size is None or axis in used or left % size:
        continue
      kept.append(axis)
      used.add(axis)
      left //= size
    kept = [a for a in kept if mesh_shape[a] > 1]
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*spec)


def _context_mesh():
  get = getattr(jax.sharding, "get_abstract_mesh", None)
  mesh = get() if get is not None else None
  if mesh is None or mesh.empty or not set(MESH_AXES) & set(mesh.axis_names):
    return None
  return mesh


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op without `jax.set_mesh(mesh)`.

  The rules are flax's current `nn.logical_axis_rules` when set, else
  LOGICAL_AXIS_RULES.
  """
  mesh = _context_mesh()
  if mesh is None:
    return x
  rules = nn.get_logical_axis_rules() or LOGICAL_AXIS_RULES
  spec = logical_to_spec(names, x.shape, dict(mesh.shape), rules)
  return jax.lax.with_sharding_constraint(x, spec)


def shardings_from_logical(logical: Any, shapes: Any, mesh: Mesh,
                           rules: LogicalRules = LOGICAL_AXIS_RULES) -> Any:
  """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) given logical names.

  Args:
    logical: pytree of PartitionSpecs of logical names (as from
      `transformer.param_logical_axes`).
    shapes: pytree with the same structure, leaves with `.shape`.
    mesh: the target mesh.
    rules: logical -> mesh axis rules.

  Returns:
    Pytree of NamedSharding.
  """
  mesh_shape = dict(mesh.shape)
  return jax.tree.map(
      lambda names, x: NamedSharding(mesh, logical_to_spec(tuple(names), x.shape, mesh_shape,
                                                           rules)),
      logical, shapes, is_leaf=lambda v: isinstance(v, PartitionSpec))
