"""`ModelConfig`: the decoder's architecture and dtype policy, read from HF `config.json`.

One config describes Qwen2 / Qwen2.5(-Coder), Qwen3 and Llama 3. The architecture
is decided by the fields of the Hugging Face config (`model_type` plus the flags it
implies), never by a checkpoint's name:

| model_type | q/k/v bias | o bias | q/k RMSNorm | head_dim default |
|---|---|---|---|---|
| `qwen2` | always | never | no | hidden / heads |
| `qwen3` | `attention_bias` | `attention_bias` | yes | `head_dim` (128) |
| `llama` | `attention_bias` | `attention_bias` | no | hidden / heads |

RoPE: `rope_theta` plus an optional scaling dict (`rope_type` "default", "linear"
or "llama3"), read from either the transformers<5 keys (`rope_theta`,
`rope_scaling`) or the transformers>=5 key `rope_parameters`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")

# HF config keys that ModelConfig owns; everything else is carried in `hf_extra_json`
# so that a saved checkpoint keeps the fields we do not interpret (bos/eos ids,
# architectures, generation hints, ...).
_OWNED_HF_KEYS = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta", "rope_scaling",
    "rope_parameters", "rms_norm_eps", "tie_word_embeddings", "attention_bias", "mlp_bias",
    "max_position_embeddings", "hidden_act", "torch_dtype", "dtype", "initializer_range",
    "use_sliding_window", "sliding_window", "max_window_layers", "layer_types",
    "architectures",
)
_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                  "llama": "LlamaForCausalLM"}


class ModelConfigError(ValueError):
  """An HF config or a ModelConfig field is invalid; the message names the field and the fix."""


def resolve_dtype(name: str, field: str = "dtype"):
  """Maps a dtype string ("float32", "bfloat16", "float16") to a jnp dtype.

  Args:
    name: the dtype's name.
    field: the field the name came from, for the error message.

  Returns:
    The jnp dtype.

  Raises:
    ModelConfigError: for any other string, naming `field` and the allowed values.
  """
  if isinstance(name, str) and name in DTYPES:
    return DTYPES[name]
  raise ModelConfigError(
      f"{field}: got {name!r}, expected one of {', '.join(map(repr, DTYPES))}")


def _freeze(value: Any) -> Any:
  if isinstance(value, dict):
    return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
  if isinstance(value, list):
    return tuple(_freeze(v) for v in value)
  return value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture, dtype policy and memory options of the decoder (hashable, static).

  Attributes:
    model_type: "qwen2", "qwen3" or "llama" (HF `model_type`).
    vocab_size: rows of the embedding table V.
    hidden_size: model width D.
    intermediate_size: SwiGLU width F.
    num_layers: decoder blocks L.
    num_heads: query heads H.
    num_kv_heads: key/value heads K (GQA: H % K == 0; K == H is MHA).
    head_dim: per-head width Dh (not necessarily D / H, e.g. Qwen3).
    rope_theta: RoPE base.
    rope_scaling: None or a frozen mapping (tuple of (key, value) pairs) with
      `rope_type` in SUPPORTED_ROPE_TYPES and its parameters; a dict is accepted and
      frozen. See `rope_scaling_dict`.
    rms_norm_eps: epsilon of every RMSNorm.
    tie_word_embeddings: the LM head reuses the embedding table.
    attention_bias: biases on the q/k/v projections.
    attention_out_bias: bias on the output projection (Llama/Qwen3 `attention_bias`).
    mlp_bias: biases on the SwiGLU projections (Llama `mlp_bias`).
    qk_norm: RMSNorm over head_dim on queries and keys before RoPE (Qwen3).
    max_position_embeddings: carried to the HF config; not a hard limit here.
    param_dtype: storage dtype of the parameters ("float32" or "bfloat16").
    dtype: compute dtype of activations and matmuls; attention softmax, logits and
      log-softmax are always float32.
    remat_policy: gradient checkpointing of each block: "none", "full" (save
      nothing), "dots_saveable", "dots_with_no_batch_dims_saveable"
      (jax.checkpoint_policies).
    scan_layers: stack the blocks' params on a leading axis and run them with
      nn.scan (smaller programs, faster compiles for deep models). The default
      unrolled loop is faster at run time: measured on bench_6l decode (CPU, 16
      rows, 128 tokens) scan was about 3x slower, because each step slices every
      layer's cache out of the stacked array and writes it back.
    initializer_range: std of the N(0, std) init of every matrix and embedding.
    hf_extra_json: the HF config fields this class does not interpret, as JSON,
      written back by `to_hf_config`.
  """

  model_type: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10_000.0
  rope_scaling: Any = None
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  attention_out_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False
  max_position_embeddings: int = 32768
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat_policy: str = "none"
  scan_layers: bool = False
  initializer_range: float = 0.02
  hf_extra_json: str = "{}"

  def __post_init__(self):
    if isinstance(self.rope_scaling, dict):
      object.__setattr__(self, "rope_scaling", _freeze(self.rope_scaling))
    self.validate()

  def validate(self) -> None:
    """Raises ModelConfigError naming the first invalid field."""
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ModelConfigError(
          f"model_type: got {self.model_type!r}, expected one of "
          f"{', '.join(map(repr, SUPPORTED_MODEL_TYPES))}")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelConfigError(f"{name}: got {value!r}, expected a positive integer")
    if self.num_heads % self.num_kv_heads:
      raise ModelConfigError(
          f"num_kv_heads: got {self.num_kv_heads}, expected a divisor of num_heads "
          f"({self.num_heads})")
    if self.head_dim % 2:
      raise ModelConfigError(f"head_dim: got {self.head_dim}, expected an even number (RoPE)")
    if not self.rope_theta > 0:
      raise ModelConfigError(f"rope_theta: got {self.rope_theta!r}, expected a number > 0")
    if not self.rms_norm_eps > 0:
      raise ModelConfigError(f"rms_norm_eps: got {self.rms_norm_eps!r}, expected a number > 0")
    resolve_dtype(self.param_dtype, "param_dtype")
    resolve_dtype(self.dtype, "dtype")
    if self.remat_policy not in REMAT_POLICIES:
      raise ModelConfigError(
          f"remat_policy: got {self.remat_policy!r}, expected one of "
          f"{', '.join(map(repr, REMAT_POLICIES))}")
    scaling = self.rope_scaling_dict
    if scaling is not None:
      rope_type = scaling.get("rope_type", scaling.get("type", "default"))
      if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ModelConfigError(
            f"rope_scaling.rope_type: got {rope_type!r}, expected one of "
            f"{', '.join(map(repr, SUPPORTED_ROPE_TYPES))}")
      required = {"linear": ("factor",),
                  "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                             "original_max_position_embeddings")}.get(rope_type, ())
      for key in required:
        if key not in scaling:
          raise ModelConfigError(
              f"rope_scaling.{key}: missing for rope_type {rope_type!r}; add it to the config")

  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    """The RoPE scaling parameters as a dict, or None for plain RoPE."""
    return None if self.rope_scaling is None else dict(self.rope_scaling)

  @property
  def param_jnp_dtype(self):
    return resolve_dtype(self.param_dtype, "param_dtype")

  @property
  def compute_jnp_dtype(self):
    return resolve_dtype(self.dtype, "dtype")

  @property
  def num_params(self) -> int:
    """Number of parameters (embedding counted once when tied)."""
    d, f, h, k, dh = (self.hidden_size, self.intermediate_size, self.num_heads,
                      self.num_kv_heads, self.head_dim)
    attn = d * h * dh * 2 + d * k * dh * 2
    attn += (h + 2 * k) * dh * self.attention_bias + d * self.attention_out_bias
    attn += 2 * dh * self.qk_norm
    mlp = 3 * d * f + (2 * f + d) * self.mlp_bias
    layer = attn + mlp + 2 * d
    head = 0 if self.tie_word_embeddings else self.vocab_size * d
    return self.vocab_size * d + self.num_layers * layer + d + head

  def replace(self, **changes) -> ModelConfig:
    """A copy with `changes` applied (validated)."""
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf_config(cls, hf: dict[str, Any], **overrides) -> ModelConfig:
    """Builds a ModelConfig from a parsed HF `config.json`.

    Args:
      hf: the dict of `config.json`.
      **overrides: ModelConfig fields that are not part of the HF config
        (param_dtype, dtype, remat_policy, scan_layers).

    Returns:
      The config.

    Raises:
      ModelConfigError: unknown `model_type`, a missing required field, sliding
        window attention, or an activation other than SiLU, each naming the field.
    """
    if not isinstance(hf, dict):
      raise ModelConfigError(f"config.json: expected a JSON object, got {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ModelConfigError(
          f"model_type: got {model_type!r} in config.json, expected one of "
          f"{', '.join(map(repr, SUPPORTED_MODEL_TYPES))} (Qwen2/Qwen2.5, Qwen3, Llama 3)")

    def need(key):
      if key not in hf or hf[key] is None:
        raise ModelConfigError(f"{key}: missing from config.json (model_type {model_type!r})")
      return hf[key]

    if hf.get("hidden_act", "silu") != "silu":
      raise ModelConfigError(f"hidden_act: got {hf['hidden_act']!r}, expected 'silu' (SwiGLU)")
    if hf.get("use_sliding_window", False):
      raise ModelConfigError(
          "use_sliding_window: true in config.json, but sliding-window attention is not "
          "supported; set it to false (Qwen2.5/Qwen3 checkpoints ship with false)")
    num_heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    head_dim = hf.get("head_dim") or (hidden // num_heads)
    rope_params = dict(hf.get("rope_parameters") or {})
    rope_theta = rope_params.pop("rope_theta", hf.get("rope_theta", 10_000.0))
    if rope_params.get("rope_type", rope_params.get("type", "default")) == "default":
      rope_params = {}
    if not rope_params and hf.get("rope_scaling"):
      rope_params = dict(hf["rope_scaling"])
      rope_params.pop("rope_theta", None)
      if rope_params.get("rope_type", rope_params.get("type", "default")) == "default":
        rope_params = {}
    if rope_params and "rope_type" not in rope_params and "type" in rope_params:
      rope_params["rope_type"] = rope_params.pop("type")
    if model_type == "qwen2":
      qkv_bias, o_bias = True, False
    else:
      qkv_bias = o_bias = bool(hf.get("attention_bias", False))
    extra = {k: v for k, v in hf.items() if k not in _OWNED_HF_KEYS}
    fields = dict(
        model_type=model_type,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")),
        num_layers=int(need("num_hidden_layers")),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(head_dim),
        rope_theta=float(rope_theta),
        rope_scaling=rope_params or None,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=qkv_bias,
        attention_out_bias=o_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)) if model_type == "llama" else False,
        qk_norm=model_type == "qwen3",
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
        hf_extra_json=json.dumps(extra, sort_keys=True),
    )
    fields.update(overrides)
    return cls(**fields)

  def to_hf_config(self) -> dict[str, Any]:
    """The HF `config.json` dict that transformers (4.50+ and 5.x) loads as this model.

    Raises:
      ModelConfigError: when the flags cannot be expressed for `model_type` (e.g. a
        qwen2 config without q/k/v bias).
    """
    expected = {"qwen2": (True, False, False), "qwen3": (None, None, True),
                "llama": (None, None, False)}[self.model_type]
    if expected[0] is not None and (self.attention_bias, self.attention_out_bias) != expected[:2]:
      raise ModelConfigError(
          "attention_bias/attention_out_bias: qwen2 in transformers always has q/k/v bias "
          "and no output bias; set attention_bias=True, attention_out_bias=False")
    if expected[0] is None and self.attention_bias != self.attention_out_bias:
      raise ModelConfigError(
          f"attention_out_bias: {self.model_type} uses one attention_bias flag for q/k/v/o; "
          "set attention_out_bias equal to attention_bias")
    if self.qk_norm != expected[2]:
      raise ModelConfigError(
          f"qk_norm: {self.model_type} requires qk_norm={expected[2]}")
    if self.mlp_bias and self.model_type != "llama":
      raise ModelConfigError("mlp_bias: only model_type 'llama' supports MLP biases")
    hf = json.loads(self.hf_extra_json)
    rope = {"rope_type": "default"}
    if self.rope_scaling is not None:
      rope = self.rope_scaling_dict
    hf.update(
        architectures=[_ARCHITECTURES[self.model_type]],
        model_type=self.model_type,
        vocab_size=self.vocab_size,
        hidden_size=self.hidden_size,
        intermediate_size=self.intermediate_size,
        num_hidden_layers=self.num_layers,
        num_attention_heads=self.num_heads,
        num_key_value_heads=self.num_kv_heads,
        head_dim=self.head_dim,
        hidden_act="silu",
        rms_norm_eps=self.rms_norm_eps,
        tie_word_embeddings=self.tie_word_embeddings,
        max_position_embeddings=self.max_position_embeddings,
        initializer_range=self.initializer_range,
        # Both spellings: transformers<5 reads rope_theta/rope_scaling, 5.x
        # rope_parameters (and standardizes the old keys when it is absent).
        rope_theta=self.rope_theta,
        rope_scaling=None if self.rope_scaling is None else dict(rope),
        rope_parameters=dict(rope, rope_theta=self.rope_theta),
        torch_dtype=self.param_dtype,
        dtype=self.param_dtype,
    )
    if self.model_type != "qwen2":
      hf["attention_bias"] = self.attention_bias
    if self.model_type == "llama":
      hf["mlp_bias"] = self.mlp_bias
    if self.model_type in ("qwen2", "qwen3"):
      hf["use_sliding_window"] = False
    return hf


def default_head_dim(hidden_size: int, num_heads: int) -> int:
  """hidden_size / num_heads, the head width when a config does not give one."""
  if hidden_size % num_heads:
    raise ModelConfigError(
        f"num_heads: {num_heads} does not divide hidden_size {hidden_size}; give head_dim")
  return hidden_size // num_heads
