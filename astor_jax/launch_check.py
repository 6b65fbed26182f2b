r"""Will this config fit that topology? A compile-time memory check without accelerators.

  python -m astor_jax.launch_check --config=configs/paper/qwen25_coder_7b.py --topology=v5e-64
  python -m astor_jax.launch_check --config=configs/paper/qwen3_8b.py --topology=8xh100
  python -m astor_jax.launch_check --config=configs/astor.py --topology=cpu-8 --mode=analytic

It creates as many fake CPU devices as the topology has (XLA_FLAGS, set before
JAX starts), builds the job's mesh, and describes every array of the job
abstractly (`jax.eval_shape`, `jax.ShapeDtypeStruct` with `NamedSharding`s):
policy parameters, AdamW state, the frozen reference parameters, a rollout
batch. Then it lowers and compiles, for that mesh, the three programs a step
runs (the same functions the training loop jits):

  sampler      `rollout.sampler.generate`: prefill + decode of all
               `batch_prompts x group_size` rollouts, in row chunks when
               their KV cache would not fit (`sampler.chunk_rows`, auto)
  log-probs    `train.step.make_logprob_fn`: reference / old-policy log-probs
               of the rollout batch
  train step   `train.step.make_train_step`: advantages, loss, gradients,
               AdamW update, utility and KL calibration

and reads each executable's `memory_analysis()`. Per device, a phase needs the
program's arguments, outputs and temporaries, plus whatever is resident but
not an argument (the optimizer state while sampling, the reference parameters
while training). The largest phase must fit the device's usable HBM
(`astor_jax/topology.py`); otherwise the check prints what to change and exits
with status 1. Bad input exits with status 2.

Numbers come from XLA's CPU compiler partitioning the programs exactly as it
would for the accelerator (same shardings, same collectives), but buffer
assignment and fusion are the CPU backend's: TPU and GPU compilers usually
need somewhat less temporary memory. With `--mode=analytic` (or when
compiling fails) the check instead counts the bytes of every sharded array
from its shape and sharding (exact for parameters, optimizer state, batch and
KV cache) and estimates activations from the model's shapes (see
`analytic_train_temp`). The reference model is counted in the parameters'
dtype, sharded like the policy.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from astor_jax import config as config_lib
from astor_jax import topology as topology_lib

GIB = topology_lib.GIB
MODES = ("auto", "compile", "analytic")



def _define_flags() -> dict[str, flags.FlagHolder]:
  """The CLI flags; defined by `run()` only, so importing this module defines none."""
  return dict(
      config=config_flags.DEFINE_config_file(
          "config", None, "Config file with an optional variant, e.g. "
          "configs/paper/qwen3_8b.py:8xh100.", lock_config=False),
      topology=flags.DEFINE_string(
          "topology", None, "Target, e.g. v5e-64, v5p-128, v4-64, 8xh100, 16xh100, cpu-8; "
          "default: the config's `topology` field."),
      mode=flags.DEFINE_enum(
          "mode", "auto", MODES, "compile: XLA memory analysis; analytic: count sharded bytes "
          "and estimate activations; auto: compile, fall back to analytic if compiling fails."),
      hbm_gib=flags.DEFINE_float(
          "hbm_gib", None, "Override the per-device memory of the topology (GiB)."),
      json_out=flags.DEFINE_string("json_out", None, "Also write the report as JSON here."),
  )


_FLAGS: dict[str, flags.FlagHolder] = {}


class LaunchCheckError(ValueError):
  """Bad input for the check (config, topology, devices); the message names the fix."""


# ---------------------------------------------------------------------------- report


@dataclasses.dataclass
class ProgramMemory:
  """Per-device memory of one compiled (or estimated) program, in bytes."""

  name: str
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  source: str  # "compiled" or "analytic"
  seconds: float = 0.0
  note: str = ""

  @property
  def peak_bytes(self) -> int:
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


@dataclasses.dataclass
class Report:
  """What the check found; `fits` decides the exit status."""

  config_name: str
  topology: str
  topology_description: str
  mesh_shape: tuple[int, int, int]
  model_name: str
  num_params: int
  rollout_rows: int
  seq_len: int
  rows_per_pass: int
  sampler_rows_per_chunk: int
  params_bytes: int
  opt_bytes: int
  ref_bytes: int
  batch_bytes: int
  kv_cache_bytes: int
  programs: list[ProgramMemory]
  phases: dict[str, int]
  hbm_bytes: int
  usable_bytes: int
  warnings: list[str]
  advice: list[str]

  @property
  def peak_bytes(self) -> int:
    return max(self.phases.values())

  @property
  def fits(self) -> bool:
    return self.peak_bytes <= self.usable_bytes

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out.update(peak_bytes=self.peak_bytes, fits=self.fits)
    for program, raw in zip(self.programs, out["programs"]):
      raw["peak_bytes"] = program.peak_bytes
    return out


def _gib(n: float) -> str:
  return f"{n / GIB:8.2f}"


def _count(n: int) -> str:
  return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def format_report(report: Report) -> str:
  """The human-readable table `main` prints."""
  d, f, t = report.mesh_shape
  lines = [
      f"launch_check: {report.config_name}",
      f"  topology  {report.topology_description}",
      f"  model     {report.model_name}: {_count(report.num_params)} parameters",
      f"  mesh      data x fsdp x tensor = {d} x {f} x {t}",
      f"  batch     {report.rollout_rows} rollout rows x {report.seq_len} tokens; "
      f"{report.rows_per_pass} rows per forward/backward pass; the sampler generates "
      f"{report.sampler_rows_per_chunk} at once",
      "",
      "  per-device memory                               GiB",
      f"    policy parameters                        {_gib(report.params_bytes)}",
      f"    optimizer state                          {_gib(report.opt_bytes)}",
      f"    reference parameters                     {_gib(report.ref_bytes)}",
      f"    rollout batch (train step input)         {_gib(report.batch_bytes)}",
      f"    KV cache (one sampler row chunk)         {_gib(report.kv_cache_bytes)}",
  ]
  for p in report.programs:
    extra = f" ({p.source}{f', {p.seconds:.1f} s' if p.source == 'compiled' else ''})"
    lines.append(f"    {p.name + ': temporaries' + extra:<41}{_gib(p.temp_bytes)}")
    if p.note:
      lines.append(f"      {p.note}")
  lines.append("")
  for name, value in report.phases.items():
    lines.append(f"    {'peak while ' + name:<41}{_gib(value)}")
  frac = report.usable_bytes / report.hbm_bytes if report.hbm_bytes else 0.0
  lines.append(f"    {f'usable HBM ({frac:.0%} of {report.hbm_bytes / GIB:.1f} GiB)':<41}"
               f"{_gib(report.usable_bytes)}")
  lines += [f"  warning: {w}" for w in report.warnings]
  lines.append("")
  share = report.peak_bytes / report.usable_bytes if report.usable_bytes else math.inf
  if report.fits:
    lines.append(f"FITS: peak {report.peak_bytes / GIB:.2f} GiB per device, {share:.0%} of the "
                 f"usable {report.usable_bytes / GIB:.2f} GiB")
  else:
    worst = max(report.phases, key=report.phases.get)
    lines.append(f"DOES NOT FIT: {worst} needs {report.peak_bytes / GIB:.2f} GiB per device, "
                 f"{share:.0%} of the usable {report.usable_bytes / GIB:.2f} GiB. Change:")
    lines += [f"  - {a}" for a in report.advice]
  return "\n".join(lines)


# ---------------------------------------------------------------------------- inputs


def model_config(config: ml_collections.ConfigDict):
  """The ModelConfig the job would build, without loading any weights.

  Order: `model.hf_path/config.json` when it exists; else `model.shape_preset`
  (paper configs); else `model.preset` (the tiny world takes `data.vocab_size`).
  """
  from astor_jax.model import ModelConfig, get_preset

  m = config.model
  overrides = dict(param_dtype=m.param_dtype, dtype=m.dtype, remat_policy=m.remat_policy,
                   scan_layers=bool(m.get("scan_layers", False)))
  hf_config = os.path.join(m.hf_path, "config.json") if m.hf_path else ""
  if hf_config and os.path.isfile(hf_config):
    with open(hf_config) as f:
      return m.hf_path, ModelConfig.from_hf_config(json.load(f), **overrides)
  name = m.get("shape_preset") or m.preset
  if name == "hf":
    raise LaunchCheckError(
        "config.model.hf_path: no config.json there and no config.model.shape_preset; set "
        "--config.model.hf_path=/path/to/checkpoint or --config.model.shape_preset=<preset>")
  vocab = config.data.vocab_size if name == "tiny_world" else None
  try:
    return name, get_preset(name, vocab_size=vocab, **overrides)
  except ValueError as e:
    raise LaunchCheckError(str(e)) from None


def _validated(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Validates everything except the paths a run needs and this check does not."""
  config = ml_collections.ConfigDict(config.to_dict())
  if "required_fields" in config:
    config.required_fields = ()
  if config.model.preset == "hf" and not config.model.hf_path:
    config.model.hf_path = "<not needed by launch_check>"
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    raise LaunchCheckError(str(e)) from None
  return config


def _sharded_bytes(tree: Any) -> int:
  """Per-device bytes of a pytree of ShapeDtypeStructs carrying shardings (largest shard)."""
  import jax
  import numpy as np

  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


def _abstract(shapes: Any, shardings: Any) -> Any:
  import jax

  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def _divided(n: int, k: int) -> int:
  """n / k when k divides n (the sharding rules replicate otherwise)."""
  return n // k if n % k == 0 else n


def analytic_train_temp(mc, rows_per_device: int, seq_len: int, tensor: int, chunk: int,
                        params_bytes: int, backward: bool = True) -> int:
  """Estimated temporaries of one forward(/backward) pass per device, in bytes.

  Per layer the backward pass needs what the remat policy saved: the layer
  input `[r, T, D]` ("full"); plus the projections ("dots_*"); plus the
  attention scores ("dots_saveable" saves batched dots too; "none" saves
  everything). One layer is recomputed and differentiated at a time (twice its
  forward working set: fp32 scores and probabilities `[r, H/t, T, T]`,
  q/k/v, SwiGLU `[r, T, F/t]` x 3). The LM head holds `[r, C, V/t]` fp32
  logits x 3 (C the log-prob chunk). Gradients take one copy of the
  parameters.

  Args:
    mc: the ModelConfig.
    rows_per_device: rows of one pass on one device (r).
    seq_len: tokens per row (T).
    tensor: size of the tensor mesh axis (t).
    chunk: `model.logprob_chunk_size` (0: the whole sequence).
    params_bytes: per-device bytes of the parameters.
    backward: False for a forward-only pass.
  """
  import numpy as np

  c = np.dtype(mc.compute_jnp_dtype).itemsize
  r, t_len = rows_per_device, seq_len
  heads = _divided(mc.num_heads, tensor) if mc.num_kv_heads % tensor == 0 else mc.num_heads
  kv_heads = _divided(mc.num_kv_heads, tensor)
  residual = r * t_len * mc.hidden_size * c
  scores = r * heads * t_len * t_len * 4
  qkv = r * t_len * (heads + 2 * kv_heads) * mc.head_dim * c
  mlp = r * t_len * _divided(mc.intermediate_size, tensor) * c
  layer = 6 * residual + 2 * scores + 2 * qkv + 3 * mlp
  saved = {
      "full": residual,
      "dots_with_no_batch_dims_saveable": 3 * residual + qkv + 2 * mlp,
      "dots_saveable": 3 * residual + qkv + 2 * mlp + scores,
      "none": layer,
  }[mc.remat_policy]
  logits = r * min(chunk or t_len, t_len) * _divided(mc.vocab_size, tensor) * 4 * 3
  if not backward:
    return layer + logits
  return mc.num_layers * saved + 2 * layer + logits + params_bytes


def analytic_sampler_temp(mc, prompts_per_device: int, rows_per_device: int, prompt_len: int,
                          cache_len: int, tensor: int) -> int:
  """Estimated temporaries of the sampler per device besides the KV cache, in bytes.

  For one row chunk (`prompts_per_device` prompts, `rows_per_device` rows):
  the prefill's own cache of the P prompt slots (all layers; the decode cache
  is grown from it), one layer's prefill working set (float32 scores and
  probabilities of one query block `[p, H/t, min(P, QUERY_BLOCK), P]`, SwiGLU
  and residual activations), the decode step's logits `[rows, V/t]` fp32
  (sampling keeps a few copies). `cache_len` (P + M) sizes nothing here: the
  decode cache is counted by `kv_cache_bytes`.
  """
  import numpy as np

  from astor_jax.model import transformer

  del cache_len
  c = np.dtype(mc.compute_jnp_dtype).itemsize
  heads = _divided(mc.num_heads, tensor) if mc.num_kv_heads % tensor == 0 else mc.num_heads
  kv_heads = _divided(mc.num_kv_heads, tensor)
  p = prompts_per_device
  query_block = min(prompt_len, transformer.QUERY_BLOCK)
  prompt_cache = 2 * mc.num_layers * p * kv_heads * prompt_len * mc.head_dim * c
  prefill = (2 * p * heads * query_block * prompt_len * 4
             + 3 * p * prompt_len * _divided(mc.intermediate_size, tensor) * c
             + 6 * p * prompt_len * mc.hidden_size * c)
  logits = 4 * max(rows_per_device, p) * _divided(mc.vocab_size, tensor) * 4
  return prompt_cache + prefill + logits


# ---------------------------------------------------------------------------- programs


def _memory(name: str, lowered, note: str = "") -> ProgramMemory:
  start = time.perf_counter()
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  m = compiled.memory_analysis()
  if m is None:
    raise RuntimeError(f"{name}: this backend reports no memory analysis")
  return ProgramMemory(name, int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                       int(m.alias_size_in_bytes), int(m.temp_size_in_bytes), "compiled",
                       seconds, note)


@dataclasses.dataclass
class _Job:
  """Everything the programs need, built once."""

  config: ml_collections.ConfigDict
  mc: Any
  model: Any
  mesh: Any
  params: Any  # ShapeDtypeStructs with shardings
  train_state: Any
  utility_state: Any
  batch: Any
  state_sharding: Any
  optimizer: Any
  rollout_rows: int
  seq_len: int
  prompt_len: int
  sampler_prompts_per_chunk: int = 0  # set by `check` (0: all prompts at once)


def _build_job(config: ml_collections.ConfigDict, mc, mesh) -> _Job:
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec

  from astor_jax.astor import hparams as hparams_lib
  from astor_jax.astor import utility
  from astor_jax.model import Transformer
  from astor_jax.model import transformer as transformer_lib
  from astor_jax.train import batch as batch_lib
  from astor_jax.train import state as state_lib

  model = Transformer(mc)
  param_shapes = transformer_lib.param_shapes(model)
  param_shardings = transformer_lib.param_shardings(model, mesh)
  optimizer = state_lib.make_optimizer(config)
  state_sharding = state_lib.state_sharding(param_shardings, optimizer, param_shapes, mesh)
  state_shapes = jax.eval_shape(
      lambda p: state_lib.create(p, optimizer, jnp.zeros((2,), jnp.uint32)), param_shapes)
  train_state = _abstract(state_shapes, state_sharding)

  hp = hparams_lib.astor_hparams(config)
  prompts = [config.data.train_per_task] * len(config.tasks)
  utility_shapes = jax.eval_shape(lambda: utility.init(prompts, hp, jnp.zeros((2,), jnp.uint32)))
  replicated = NamedSharding(mesh, PartitionSpec())
  utility_state = _abstract(utility_shapes, jax.tree.map(lambda _: replicated, utility_shapes))

  rows = config.rl.batch_prompts * config.rl.group_size
  prompt_len = max(config.sampler.prompt_buckets)
  seq_len = prompt_len + config.sampler.max_new_tokens
  batch = _abstract(batch_lib.batch_spec(rows, seq_len), batch_lib.batch_sharding(mesh))
  return _Job(config, mc, model, mesh, train_state.params, train_state, utility_state, batch,
              state_sharding, optimizer, rows, seq_len, prompt_len)


def compile_train_step(job: _Job) -> ProgramMemory:
  """Lowers and compiles `make_train_step` for the job's mesh."""
  import jax

  from astor_jax.train import step as step_lib

  train_step = step_lib.make_train_step(job.model, job.optimizer, job.config, job.mesh,
                                        state_sharding=job.state_sharding)
  with jax.set_mesh(job.mesh):
    lowered = train_step.lower(job.train_state, job.utility_state, job.batch)
  return _memory("train step", lowered)


def compile_logprobs(job: _Job) -> ProgramMemory:
  """Lowers and compiles `make_logprob_fn` (reference / old-policy log-probs)."""
  import jax

  from astor_jax.train import step as step_lib

  fn = step_lib.make_logprob_fn(job.model, job.config, job.mesh,
                                params_sharding=job.state_sharding.params)
  with jax.set_mesh(job.mesh):
    lowered = fn.lower(job.params, job.batch)
  return _memory("log-probs", lowered)


def _sampler_inputs(job: _Job):
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec

  from astor_jax.rollout import sampler as sampler_lib
  from astor_jax.train.batch import BATCH_AXES

  c = job.config
  prompts, rows = c.rl.batch_prompts, job.rollout_rows
  batch_shards = job.mesh.shape["data"] * job.mesh.shape["fsdp"]
  row_axes = BATCH_AXES if prompts % batch_shards == 0 else None
  on_rows = lambda *rest: NamedSharding(job.mesh, PartitionSpec(row_axes, *rest))  # noqa: E731
  spec = lambda shape, dtype, *rest: jax.ShapeDtypeStruct(  # noqa: E731
      shape, dtype, sharding=on_rows(*rest))
  sampling = sampler_lib.SamplingParams(
      temperature=spec((rows,), jnp.float32), top_p=spec((rows,), jnp.float32),
      top_k=spec((rows,), jnp.int32), max_new_tokens=spec((rows,), jnp.int32),
      eos_ids=spec((rows, 2), jnp.int32, None),
      stop_sequences=spec((rows, 1, 4), jnp.int32, None, None))
  tokens = spec((prompts, job.prompt_len), jnp.int32, None)
  mask = spec((prompts, job.prompt_len), jnp.bool_, None)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32,
                             sharding=NamedSharding(job.mesh, PartitionSpec()))
  return tokens, mask, key, sampling


def compile_sampler(job: _Job) -> ProgramMemory:
  """Lowers and compiles the sampler's `generate` for all rollouts of a step."""
  import functools

  import jax

  from astor_jax.rollout import sampler as sampler_lib

  c = job.config
  fn = jax.jit(functools.partial(
      sampler_lib.generate, job.model, group_size=c.rl.group_size,
      max_new_tokens=c.sampler.max_new_tokens, pad_id=0,
      prompts_per_chunk=job.sampler_prompts_per_chunk or None))
  with jax.set_mesh(job.mesh):
    lowered = fn.lower(job.params, *_sampler_inputs(job))
  return _memory("sampler", lowered)


def sampler_rows_per_chunk(job: _Job) -> int:
  """Rollout rows the sampler generates at once (one row chunk)."""
  prompts = job.sampler_prompts_per_chunk or job.config.rl.batch_prompts
  return prompts * job.config.rl.group_size


def choose_sampler_chunk(job: _Job, free_bytes: int) -> int:
  """Prompts per sampler row chunk, as the job's `Sampler` would choose them.

  `config.sampler.chunk_rows` when set; else (auto) chunks whose KV cache takes
  at most `sampler.AUTO_CACHE_SHARE` of `free_bytes`, the device memory left
  beside the parameters, optimizer state and reference model (what the Sampler
  measures on the device).
  """
  from astor_jax.rollout import sampler as sampler_lib

  c, mesh = job.config, job.mesh
  prompts, group = c.rl.batch_prompts, c.rl.group_size
  row_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  max_rows = int(c.sampler.get("chunk_rows", 0)) or sampler_lib.auto_chunk_rows(
      job.mc, job.prompt_len + c.sampler.max_new_tokens, free_bytes, row_shards=row_shards,
      kv_head_shards=mesh.shape["tensor"])
  if max_rows is None or max_rows >= prompts * group:
    return prompts
  try:
    return sampler_lib.prompts_per_chunk(prompts, group, max_rows, row_shards)
  except ValueError as e:
    raise LaunchCheckError(str(e)) from None


def kv_cache_bytes(job: _Job) -> int:
  """Per-device bytes of one sampler row chunk's KV cache, sharded as the model constrains it."""
  from astor_jax.rollout import sampler as sampler_lib

  mesh = job.mesh
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  rows = sampler_rows_per_chunk(job)
  rows_dev = rows // batch_shards if rows % batch_shards == 0 else rows
  slots = job.prompt_len + job.config.sampler.max_new_tokens
  return rows_dev * sampler_lib.kv_cache_bytes_per_row(job.mc, slots,
                                                      kv_head_shards=mesh.shape["tensor"])


def _analytic_programs(job: _Job, params_bytes: int, opt_bytes: int, batch_bytes: int,
                       kv_bytes: int, rows_per_pass: int) -> list[ProgramMemory]:
  mesh = job.mesh
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  tensor = mesh.shape["tensor"]
  chunk = job.config.model.logprob_chunk_size
  per_dev = lambda n: -(-n // batch_shards)  # noqa: E731
  train_temp = analytic_train_temp(job.mc, per_dev(rows_per_pass), job.seq_len, tensor, chunk,
                                   params_bytes)
  # The log-prob fn runs the batch in minibatches x microbatches row chunks
  # (`train.step.make_logprob_fn`): one chunk's forward at a time, plus the
  # float32 [N, L] result.
  c = job.config
  logprob_rows = job.rollout_rows // (int(c.rl.minibatches) * int(c.rl.get("microbatches", 1)))
  logprob_temp = (analytic_train_temp(job.mc, per_dev(logprob_rows), job.seq_len, tensor,
                                      chunk, 0, backward=False)
                  + per_dev(job.rollout_rows) * job.seq_len * 4)
  chunk_rows = sampler_rows_per_chunk(job)
  sampler_temp = kv_bytes + analytic_sampler_temp(
      job.mc, per_dev(chunk_rows // c.rl.group_size), per_dev(chunk_rows), job.prompt_len,
      job.seq_len, tensor)
  return [
      ProgramMemory("sampler", params_bytes, 0, 0, sampler_temp, "analytic"),
      ProgramMemory("log-probs", params_bytes + batch_bytes, 0, 0, logprob_temp, "analytic"),
      ProgramMemory("train step", params_bytes + opt_bytes + batch_bytes, 0, 0, train_temp,
                    "analytic"),
  ]


# ---------------------------------------------------------------------------- the check


def check(config: ml_collections.ConfigDict, topology: topology_lib.Topology, *,
          mode: str = "auto", hbm_bytes: int | None = None,
          config_name: str = "<config>", log=print) -> Report:
  """Runs the check on the current process's (fake) devices.

  Args:
    config: the job config (validated here, except paths a run needs).
    topology: the target; the process must have at least its device count.
    mode: "compile", "analytic" or "auto".
    hbm_bytes: per-device memory to check against (default: the topology's).
    config_name: for the report.
    log: progress messages.

  Returns:
    The report; `report.fits` says whether the job fits.

  Raises:
    LaunchCheckError: bad config, mesh or device count, naming the fix.
  """
  import jax

  from astor_jax.model import make_mesh

  if mode not in MODES:
    raise LaunchCheckError(f"--mode={mode}: use one of {', '.join(MODES)}")
  config = _validated(config)
  name, mc = model_config(config)
  try:
    shape = topology_lib.mesh_shape(topology, config.mesh.data, config.mesh.fsdp,
                                    config.mesh.tensor)
  except ValueError as e:
    raise LaunchCheckError(str(e)) from None
  devices = jax.devices()
  if len(devices) < topology.num_devices:
    raise LaunchCheckError(
        f"--topology={topology.name}: needs {topology.num_devices} devices, this process has "
        f"{len(devices)}; run `python -m astor_jax.launch_check` as its own process (it sets "
        "up the fake devices before JAX starts)")
  mesh = make_mesh(*shape, devices=devices[:topology.num_devices])
  job = _build_job(config, mc, mesh)
  c = config
  batch_shards = shape[0] * shape[1]
  rows_per_pass = job.rollout_rows // c.rl.minibatches
  warnings = topology_lib.check_mesh(topology, shape)
  microbatches = int(c.rl.get("microbatches", 1))
  if microbatches > 1:
    from astor_jax.astor import hparams as hparams_lib

    fields = {f.name for f in dataclasses.fields(hparams_lib.RLHParams)}
    if "microbatches" in fields:
      rows_per_pass //= microbatches
    else:
      warnings.append(
          f"config.rl.microbatches={microbatches} is not implemented by the train step yet "
          "(astor_jax/train/step.py); every optimizer minibatch runs as one pass")
  if job.rollout_rows % batch_shards:
    raise LaunchCheckError(
        f"config.rl.batch_prompts: {job.rollout_rows} rollout rows do not split over the "
        f"{batch_shards} devices of the batch axes (mesh.data x mesh.fsdp); make "
        "batch_prompts x group_size a multiple of it")

  params_bytes = _sharded_bytes(job.params)
  opt_bytes = _sharded_bytes(job.train_state.opt_state)
  uses_reference = c.astor.init_beta > 0 or c.astor.calibrate
  ref_bytes = params_bytes if uses_reference else 0
  batch_bytes = _sharded_bytes(job.batch)
  hbm = topology.hbm_bytes if hbm_bytes is None else hbm_bytes
  usable = int(hbm * topology.device.usable_fraction)
  job.sampler_prompts_per_chunk = choose_sampler_chunk(
      job, usable - params_bytes - opt_bytes - ref_bytes)
  kv_bytes = kv_cache_bytes(job)

  programs: list[ProgramMemory] = []
  if mode in ("auto", "compile"):
    try:
      for builder in (compile_sampler, compile_logprobs, compile_train_step):
        log(f"launch_check: compiling {builder.__name__.removeprefix('compile_')} for "
            f"{topology.name} ...")
        programs.append(builder(job))
    except LaunchCheckError:
      raise
    except Exception as e:  # noqa: BLE001 - any compiler failure falls back to counting
      if mode == "compile":
        raise
      warnings.append(f"compiling failed ({type(e).__name__}: {str(e)[:200]}); "
                      "fell back to analytic accounting")
      programs = []
  if not programs:
    programs = _analytic_programs(job, params_bytes, opt_bytes, batch_bytes, kv_bytes,
                                  rows_per_pass)
  by_name = {p.name: p for p in programs}
  # Resident but not an argument of the phase's program.
  phases = {
      "sampling": by_name["sampler"].peak_bytes + opt_bytes + ref_bytes,
      "computing log-probs": by_name["log-probs"].peak_bytes + opt_bytes + ref_bytes,
      "training": by_name["train step"].peak_bytes + ref_bytes,
  }
  report = Report(
      config_name=config_name, topology=topology.name,
      topology_description=topology.describe(), mesh_shape=shape, model_name=name,
      num_params=mc.num_params, rollout_rows=job.rollout_rows, seq_len=job.seq_len,
      rows_per_pass=rows_per_pass, sampler_rows_per_chunk=sampler_rows_per_chunk(job),
      params_bytes=params_bytes, opt_bytes=opt_bytes,
      ref_bytes=ref_bytes, batch_bytes=batch_bytes, kv_cache_bytes=kv_bytes,
      programs=programs, phases=phases, hbm_bytes=hbm, usable_bytes=usable,
      warnings=warnings, advice=[])
  if not report.fits:
    report.advice = advice(report, config)
  return report


def advice(report: Report, config: ml_collections.ConfigDict) -> list[str]:
  """What to change, most effective first, each naming the config field."""
  data, fsdp, tensor = report.mesh_shape
  out = []
  resident = report.params_bytes + report.opt_bytes + report.ref_bytes
  if resident > 0.5 * report.usable_bytes:
    if data > 1:
      out.append(f"shard the weights over more devices: move data parallelism into FSDP, "
                 f"e.g. --config.mesh.data=1 --config.mesh.fsdp={data * fsdp}")
    else:
      out.append("the weights and optimizer state alone take "
                 f"{resident / GIB:.1f} GiB per device: use a topology with more devices")
  worst = max(report.phases, key=report.phases.get)
  if worst == "training":
    micro = int(config.rl.get("microbatches", 1))
    out.append(f"process fewer rows per pass ({report.rows_per_pass} now): raise "
               f"--config.rl.microbatches (now {micro}) or --config.rl.minibatches "
               f"(now {config.rl.minibatches})")
    if config.model.remat_policy != "full":
      out.append("save fewer activations: --config.model.remat_policy=full")
    if not config.model.logprob_chunk_size:
      out.append("never hold full [rows, seq, vocab] logits: --config.model.logprob_chunk_size=512")
  elif worst == "sampling":
    rows = report.sampler_rows_per_chunk
    out.append(f"the KV cache of {rows} rollouts generated at once takes "
               f"{report.kv_cache_bytes / GIB:.2f} GiB per device: generate fewer at once, "
               f"--config.sampler.chunk_rows={max(rows // 2, config.rl.group_size)} (now "
               f"{config.sampler.get('chunk_rows', 0)}, 0 is auto), or lower "
               "--config.sampler.max_new_tokens or the largest --config.sampler.prompt_buckets")
  else:
    out.append(f"the log-prob pass runs all {report.rollout_rows} rows at once: lower "
               "--config.model.logprob_chunk_size, the sequence length, or use more devices")
  if tensor == 1 and report.mesh_shape[1] > 1:
    out.append("split heads and MLP with tensor parallelism: e.g. --config.mesh.tensor=4 "
               f"--config.mesh.fsdp={max(fsdp // 4, 1)}")
  return out


# ---------------------------------------------------------------------------- CLI


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _config_targets(path: str) -> tuple[str, ...]:
  """The TARGETS a config file declares (paper configs), or ()."""
  if not os.path.isfile(path):
    return ()
  spec = importlib.util.spec_from_file_location("_launch_check_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return tuple(getattr(module, "TARGETS", ()))


def select_variant(argv: list[str]) -> list[str]:
  """`--config=F --topology=T` becomes `--config=F:T` when F has no variant and declares target T.

  A config that names a variant keeps it; checking it against another topology
  is allowed (its mesh must still fit the device count).
  """
  config_arg, topo = _flag_value(argv, "config"), _flag_value(argv, "topology")
  if not config_arg or not topo or ":" in config_arg:
    return argv
  try:
    canonical = topology_lib.parse(topo).name
  except ValueError:
    return argv  # reported after flag parsing
  if canonical not in _config_targets(config_arg):
    return argv
  out = list(argv)
  for i, arg in enumerate(out):
    if arg == f"--config={config_arg}":
      out[i] = f"--config={config_arg}:{canonical}"
    elif arg == "--config" and i + 1 < len(out) and out[i + 1] == config_arg:
      out[i + 1] = f"{config_arg}:{canonical}"
  return out


def _prepare_devices(num_devices: int) -> None:
  """Fake CPU devices for the topology; must run before JAX initializes a backend."""
  os.environ["JAX_PLATFORMS"] = "cpu"
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(kept + [
      f"--xla_force_host_platform_device_count={num_devices}"])


def fail(message: str, status: int = 2) -> None:
  print(f"launch_check: error: {message}", file=sys.stderr)
  sys.exit(status)


def main(argv) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; use --config, --topology, --mode")
  config = _FLAGS["config"].value
  if not isinstance(config, ml_collections.ConfigDict):
    fail("--config: pass a config file, e.g. --config=configs/paper/qwen25_coder_7b.py")
  name = _FLAGS["topology"].value or config.get("topology")
  if config.get("topology") and name and config.topology != name:
    print(f"launch_check: note: the config targets {config.topology}; checking it on {name}")
  if not name:
    fail("--topology: missing and the config has no `topology` field; pass e.g. "
         "--topology=v5e-64 (forms: " + ", ".join(topology_lib.all_names()) + ")")
  try:
    topology = topology_lib.parse(name)
  except ValueError as e:
    fail(f"--topology: {e}")
  if "jax" not in sys.modules:
    _prepare_devices(topology.num_devices)
  hbm_gib = _FLAGS["hbm_gib"].value
  hbm = None if hbm_gib is None else int(hbm_gib * GIB)
  try:
    report = check(config, topology, mode=_FLAGS["mode"].value, hbm_bytes=hbm,
                   config_name=flags.FLAGS["config"].config_filename)
  except LaunchCheckError as e:
    fail(str(e))
  print(format_report(report))
  if _FLAGS["json_out"].value:
    with open(_FLAGS["json_out"].value, "w") as f:
      json.dump(report.to_json(), f, indent=1)
  sys.exit(0 if report.fits else 1)


def run() -> None:
  _FLAGS.update(_define_flags())
  flags.mark_flag_as_required("config")
  app.run(main, argv=select_variant(sys.argv))


if __name__ == "__main__":
  run()
