"""Hugging Face checkpoints <-> params: `load_pretrained` and `save_pretrained`.

A checkpoint directory holds `config.json`, the weights as one `model.safetensors`
or several shards listed in `model.safetensors.index.json`, and the tokenizer
files. Loading reads one tensor at a time from memory-mapped files, converts it to
our layout and dtype, and places it straight into its target sharding (each device
gets only its slice), so the host never holds more than one tensor of the model.
Every parameter comes from the files: a missing tensor, a shape that disagrees
with `config.json`, or an unexpected tensor is an error naming it.

Layout conversion (HF `nn.Linear.weight` is [out, in]): a kernel of ours is the
transpose of the HF weight reshaped to our axes, e.g. `q_proj_kernel [D, H, Dh] =
q_proj.weight [H * Dh, D].T.reshape(D, H, Dh)` and `o_proj_kernel [H, Dh, D] =
o_proj.weight [D, H * Dh].T.reshape(H, Dh, D)`; biases and norm scales only
reshape.

safetensors' numpy backend cannot represent bfloat16 (the dtype of every
Qwen/Llama release) and its flax backend materializes tensors on the default
device, so reading uses the file format directly (an 8-byte little-endian header
size, a JSON header of dtype/shape/offsets, then raw little-endian data) through
`numpy.memmap` with `ml_dtypes.bfloat16`; writing uses `safetensors.numpy`.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from typing import Any

import jax
import ml_dtypes
import numpy as np
from jax.sharding import Mesh

from astor_jax.model.config import ModelConfig, resolve_dtype
from astor_jax.model.sharding import LOGICAL_AXIS_RULES, LogicalRules, shardings_from_logical
from astor_jax.model.transformer import (
    Transformer,
    param_logical_axes,
    param_shapes,
)

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# HF checkpoints may carry buffers that are not parameters.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


class CheckpointError(ValueError):
  """A checkpoint directory does not match its config; the message names the tensor/file."""


class _SafetensorsFile:
  """Read-only memory-mapped view of one .safetensors file."""

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      (header_len,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    self.entries = header
    self._data_start = 8 + header_len
    self._mmap = None

  def keys(self) -> list[str]:
    return list(self.entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.entries[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    entry = self.entries[name]
    dtype = _ST_DTYPES.get(entry["dtype"])
    if dtype is None:
      raise CheckpointError(f"tensor {name} in {self.path}: unsupported dtype {entry['dtype']}")
    if self._mmap is None:
      self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
    start, end = entry["data_offsets"]
    raw = self._mmap[self._data_start + start:self._data_start + end]
    return raw.view(np.dtype(dtype).newbyteorder("<")).reshape(entry["shape"])


class _Checkpoint:
  """All tensors of a checkpoint directory, by HF name."""

  def __init__(self, path: str):
    index_path = os.path.join(path, INDEX_FILE)
    single_path = os.path.join(path, SINGLE_FILE)
    if os.path.exists(index_path):
      with open(index_path) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: no 'weight_map' object; re-save the checkpoint")
      files = {}
      for filename in sorted(set(weight_map.values())):
        file_path = os.path.join(path, filename)
        if not os.path.exists(file_path):
          raise CheckpointError(f"{file_path}: listed in {INDEX_FILE} but missing")
        files[filename] = _SafetensorsFile(file_path)
      self.where = {}
      for name, filename in weight_map.items():
        if name not in files[filename].entries:
          raise CheckpointError(f"tensor {name}: listed in {INDEX_FILE} under {filename} "
                                "but absent from that file")
        self.where[name] = files[filename]
    elif os.path.exists(single_path):
      file = _SafetensorsFile(single_path)
      self.where = {name: file for name in file.keys()}
    else:
      raise CheckpointError(
          f"{path}: no {SINGLE_FILE} or {INDEX_FILE}; save the model with safetensors "
          "(transformers: model.save_pretrained(dir, safe_serialization=True))")

  def names(self) -> set[str]:
    return set(self.where)


def read_hf_config(path: str) -> dict[str, Any]:
  """The parsed `config.json` of a checkpoint directory."""
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path}: not found; a Hugging Face checkpoint directory "
                            "needs config.json next to its *.safetensors")
  with open(config_path) as f:
    return json.load(f)


def _hf_name(path: tuple[str, ...], layer: int | None = None) -> str:
  """HF tensor name of our param at `path` (layer index for stacked scan params)."""
  if path == ("embed_tokens",):
    return "model.embed_tokens.weight"
  if path == ("lm_head",):
    return "lm_head.weight"
  if path == ("norm", "scale"):
    return "model.norm.weight"
  head, *rest = path
  if head == "layers":
    prefix = f"model.layers.{layer}"
  elif head.startswith("layers_"):
    prefix = f"model.layers.{int(head[len('layers_'):])}"
  else:
    raise KeyError(path)
  *modules, leaf = rest
  if leaf == "scale":
    return ".".join([prefix, *modules, "weight"])
  for suffix, hf_suffix in (("_kernel", "weight"), ("_bias", "bias")):
    if leaf.endswith(suffix):
      return ".".join([prefix, *modules, leaf[:-len(suffix)], hf_suffix])
  raise KeyError(path)


def _is_kernel(path: tuple[str, ...]) -> bool:
  return path[-1].endswith("_kernel") or path == ("lm_head",)


def _hf_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  """Shape of the HF tensor of one (per-layer) param of ours."""
  if path == ("embed_tokens",):
    return tuple(shape)
  if not _is_kernel(path):
    return (int(np.prod(shape)),)
  n_in = 2 if path[-1] == "o_proj_kernel" else 1
  return (int(np.prod(shape[n_in:])), int(np.prod(shape[:n_in])))


def _to_ours(path, hf_tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if _is_kernel(path):
    return hf_tensor.T.reshape(shape)
  return hf_tensor.reshape(shape)


def _to_hf(path, value: np.ndarray) -> np.ndarray:
  hf_shape = _hf_shape(path, value.shape)
  if _is_kernel(path):
    return np.ascontiguousarray(value.reshape(hf_shape[::-1]).T)
  return value.reshape(hf_shape)


def _flat_paths(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(tuple(k.key for k in keys), leaf) for keys, leaf in flat]


def _unflatten(items: dict[tuple[str, ...], Any]) -> dict:
  tree: dict = {}
  for path, value in items.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def _read(ckpt: _Checkpoint, name: str, expected_shape: tuple[int, ...],
          config: ModelConfig) -> np.ndarray:
  if name not in ckpt.where:
    raise CheckpointError(
        f"missing weight {name} (expected shape {list(expected_shape)} for model_type "
        f"{config.model_type!r}); the checkpoint does not match its config.json")
  got = ckpt.where[name].shape(name)
  if got != tuple(expected_shape):
    raise CheckpointError(
        f"tensor {name}: shape {list(got)} in {os.path.basename(ckpt.where[name].path)}, "
        f"expected {list(expected_shape)} from config.json (hidden_size={config.hidden_size}, "
        f"num_attention_heads={config.num_heads}, num_key_value_heads={config.num_kv_heads}, "
        f"head_dim={config.head_dim}, intermediate_size={config.intermediate_size}, "
        f"vocab_size={config.vocab_size})")
  return ckpt.where[name].get(name)


def load_params(path: str, model: Transformer, mesh: Mesh | None = None,
                rules: LogicalRules = LOGICAL_AXIS_RULES, strict: bool = True) -> Any:
  """Reads the params of `model` from the safetensors files in `path`.

  Args:
    path: checkpoint directory.
    model: the Transformer whose config matches the checkpoint.
    mesh: target mesh (params sharded by `rules`); None puts them on the default
      device.
    rules: logical -> mesh axis rules.
    strict: raise on tensors in the files that no param uses (besides RoPE buffers
      and a redundant `lm_head.weight` of a tied model).

  Returns:
    The params pytree (plain jax arrays in `model.config.param_dtype`).

  Raises:
    CheckpointError: a missing tensor, a shape mismatch or an unexpected tensor,
      naming it.
  """
  config = model.config
  dtype = config.param_jnp_dtype
  ckpt = _Checkpoint(path)
  shapes = param_shapes(model)
  if mesh is not None:
    shardings = dict(_flat_paths(
        shardings_from_logical(param_logical_axes(model), shapes, mesh, rules)))
  used: set[str] = set()
  out = {}
  for p, struct_ in _flat_paths(shapes):
    shape = tuple(struct_.shape)
    if config.scan_layers and p[0] == "layers":
      layer_shape = shape[1:]
      names = [_hf_name(p, i) for i in range(shape[0])]
      hf_shape = _hf_shape(p, layer_shape)

      def layer_value(i, p=p, names=names, hf_shape=hf_shape, layer_shape=layer_shape):
        return _to_ours(p, _read(ckpt, names[i], hf_shape, config), layer_shape).astype(dtype)

      for i in range(shape[0]):  # validate every layer before allocating anything
        _read(ckpt, names[i], hf_shape, config)

      def fetch(index, layer_value=layer_value, shape=shape):
        layers = range(shape[0])[index[0]] if index else range(shape[0])
        rest = tuple(index[1:]) if index else ()
        return np.stack([layer_value(i)[rest] for i in layers])
      used.update(names)
    else:
      name = _hf_name(p)
      value = _to_ours(p, _read(ckpt, name, _hf_shape(p, shape), config), shape).astype(dtype)
      used.add(name)

      def fetch(index, value=value):
        return value[index] if index else value
    if mesh is None:
      full = tuple(slice(None) for _ in shape)
      out[p] = jax.device_put(np.asarray(fetch(full)))
    else:
      out[p] = jax.make_array_from_callback(shape, shardings[p], fetch)
  if strict:
    unexpected = ckpt.names() - used
    unexpected = {n for n in unexpected if not n.endswith(_IGNORED_SUFFIXES)}
    if config.tie_word_embeddings:
      unexpected.discard("lm_head.weight")
    if unexpected:
      shown = ", ".join(sorted(unexpected)[:5])
      raise CheckpointError(
          f"{len(unexpected)} tensors in {path} match no parameter of a {config.model_type!r} "
          f"model (e.g. {shown}); check config.json (model_type, num_hidden_layers, "
          "tie_word_embeddings) or pass strict=False")
  return _unflatten(out)


def load_pretrained(path: str, dtype: str = "float32", mesh: Mesh | None = None, *,
                    compute_dtype: str | None = None, load_tokenizer: bool = True,
                    rules: LogicalRules = LOGICAL_AXIS_RULES, **config_overrides,
                    ) -> tuple[Transformer, Any, Any]:
  """Loads a Hugging Face checkpoint directory.

  Args:
    path: directory with config.json, *.safetensors (optionally sharded with
      model.safetensors.index.json) and tokenizer files.
    dtype: parameter dtype, "float32" or "bfloat16" (or "float16").
    mesh: target mesh; None loads onto the default device.
    compute_dtype: activation dtype (default: `dtype`).
    load_tokenizer: also load the tokenizer with transformers' AutoTokenizer.
    rules: logical -> mesh axis rules.
    **config_overrides: other ModelConfig fields (remat_policy, scan_layers).

  Returns:
    (model, params, tokenizer or None).

  Raises:
    FileNotFoundError: no config.json or no tokenizer files.
    ModelConfigError: unsupported model_type or a bad dtype string, naming the field.
    CheckpointError: missing, misshapen or unexpected tensors, naming the tensor.
  """
  resolve_dtype(dtype, "dtype")
  compute_dtype = dtype if compute_dtype is None else compute_dtype
  resolve_dtype(compute_dtype, "compute_dtype")
  config = ModelConfig.from_hf_config(read_hf_config(path), param_dtype=dtype,
                                      dtype=compute_dtype, **config_overrides)
  model = Transformer(config)
  params = load_params(path, model, mesh=mesh, rules=rules)
  tokenizer = load_tokenizer_from(path) if load_tokenizer else None
  return model, params, tokenizer


def load_tokenizer_from(path: str):
  """transformers' AutoTokenizer from a local directory (no network)."""
  if not any(os.path.exists(os.path.join(path, f))
             for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
    raise FileNotFoundError(
        f"{path}: no tokenizer.json / tokenizer_config.json; save the tokenizer there "
        "(tokenizer.save_pretrained(dir)) or pass load_tokenizer=False")
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _to_host(value: jax.Array) -> np.ndarray:
  """The full value on this host; across processes when the array spans several."""
  if isinstance(value, jax.Array) and not value.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(value, tiled=True))
  return np.asarray(jax.device_get(value))


def _hf_tensors(model: Transformer, params: Any) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, host array) pairs, one tensor at a time."""
  for p, value in _flat_paths(params):
    if model.config.scan_layers and p[0] == "layers":
      for i in range(value.shape[0]):
        yield _hf_name(p, i), _to_hf(p, _to_host(value[i]))
    else:
      yield _hf_name(p), _to_hf(p, _to_host(value))


def save_pretrained(path: str, model: Transformer, params: Any, tokenizer: Any = None,
                    max_shard_bytes: int = 4 * 2**30) -> None:
  """Writes `params` as a Hugging Face checkpoint that transformers loads back.

  Writes config.json (`model.config.to_hf_config()`), the weights in the params'
  dtype as `model.safetensors` or, above `max_shard_bytes`, as
  `model-0000k-of-0000n.safetensors` shards with `model.safetensors.index.json`,
  and the tokenizer's files when one is given. At most one shard is held on the
  host at a time. With several processes (jax.distributed) every process must
  call this (tensors are gathered collectively); only process 0 writes.

  Args:
    path: output directory (created; old weight files in it are replaced).
    model: the Transformer.
    params: its params (possibly sharded; gathered tensor by tensor).
    tokenizer: a transformers tokenizer or None.
    max_shard_bytes: largest shard file.
  """
  from safetensors.numpy import save_file

  shapes = param_shapes(model)
  got = jax.tree.map(lambda x: tuple(x.shape), params)
  want = jax.tree.map(lambda x: tuple(x.shape), shapes)
  if got != want:
    raise CheckpointError("params: do not match model.config (different tree or shapes); "
                          "save the params that belong to this model")
  writer = jax.process_index() == 0
  if writer:
    os.makedirs(path, exist_ok=True)
    for stale in os.listdir(path):
      if stale.endswith(".safetensors") or stale == INDEX_FILE:
        os.remove(os.path.join(path, stale))
    dtype_name = np.dtype(jax.tree.leaves(params)[0].dtype).name
    hf_config = model.config.to_hf_config()
    hf_config["torch_dtype"] = hf_config["dtype"] = dtype_name
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
      json.dump(hf_config, f, indent=2, sort_keys=True)

  tmp_names: list[str] = []
  weight_map: dict[str, int] = {}
  total, current, size = 0, {}, 0

  def flush():
    name = f"shard-{len(tmp_names):05d}.tmp"
    if writer:
      save_file(current, os.path.join(path, name), metadata={"format": "pt"})
    tmp_names.append(name)

  for name, array in _hf_tensors(model, params):
    if current and size + array.nbytes > max_shard_bytes:
      flush()
      current, size = {}, 0
    current[name] = array
    weight_map[name] = len(tmp_names)
    size += array.nbytes
    total += array.nbytes
  flush()
  if not writer:
    return
  n = len(tmp_names)
  if n == 1:
    os.replace(os.path.join(path, tmp_names[0]), os.path.join(path, SINGLE_FILE))
  else:
    final = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for tmp, dst in zip(tmp_names, final):
      os.replace(os.path.join(path, tmp), os.path.join(path, dst))
    with open(os.path.join(path, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total},
                 "weight_map": {k: final[v] for k, v in sorted(weight_map.items())}}, f,
                indent=2)
  if tokenizer is not None:
    tokenizer.save_pretrained(path)
