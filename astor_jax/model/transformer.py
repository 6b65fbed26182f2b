"""Flax decoder for Qwen2 / Qwen2.5(-Coder), Qwen3 and Llama 3.

    logits, cache = Transformer(config).apply(
        {"params": params}, tokens, positions, attention_mask, cache=None, cache_index=None)

One pre-norm block per layer: `x += Attn(RMSNorm(x)); x += SwiGLU(RMSNorm(x))`, with
grouped-query attention, rotary position embeddings applied at explicit
`positions` (so left-padded rows start at position 0), optional q/k RMSNorm
(Qwen3), optional biases, and tied or untied LM head. Numerics follow
transformers' PyTorch models: RMSNorm in float32, attention softmax in float32,
logits in float32.

Shapes: B rows, T new tokens, S key slots (S == T without a cache), D width,
H query heads, K key/value heads, G = H / K, Dh head width, V vocab.

KV cache: `Cache(k, v)`. With the default unrolled layers `k` and `v` are tuples
of per-layer arrays `[B, K, S, Dh]`; with `scan_layers` they are stacked arrays
`[L, B, K, S, Dh]`. The heads-before-slots layout makes both attention matmuls of
a decode step plain batched matmuls over the cache with no transposes. New keys
and values are written at slot `cache_index` (one slot offset for all rows:
prompts are left-padded to a common length) and the queries attend over the
first `S'` slots, `S'` the last axis of the caller's `attention_mask` [B, T, S']
(`cache_mask` builds it): a decode step pays only for the slots it can see.
Passes over more than `QUERY_BLOCK` tokens compute attention one block of
queries at a time (`attend`).

Parameters carry logical axis names (see sharding.py) and are initialized
N(0, initializer_range) for every matrix and embedding, zeros for biases and ones
for norm scales (transformers' convention; an N(0, 1) tied embedding makes a
random model repeat one token).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from astor_jax.model import sharding
from astor_jax.model.config import ModelConfig

Array = jax.Array
_NEG_INF = float(np.finfo(np.float32).min)


class Cache(NamedTuple):
  """Per-layer key/value cache (see the module docstring for the layout)."""

  k: Any
  v: Any


def init_cache(config: ModelConfig, batch_size: int, max_len: int, dtype=None) -> Cache:
  """Zero KV cache for `batch_size` rows and `max_len` slots.

  Args:
    config: the model config.
    batch_size: rows B.
    max_len: slots S (prompt bucket + new tokens).
    dtype: cache dtype (default: the compute dtype).

  Returns:
    A Cache: per-layer [B, K, S, Dh] tuples, or [L, B, K, S, Dh] with scan_layers.
  """
  dtype = config.compute_jnp_dtype if dtype is None else dtype
  shape = (batch_size, config.num_kv_heads, max_len, config.head_dim)
  if config.scan_layers:
    full = (config.num_layers,) + shape
    return Cache(jnp.zeros(full, dtype), jnp.zeros(full, dtype))
  return Cache(tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
               tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)))


def causal_mask(input_mask: Array) -> Array:
  """Causal + padding mask for a full forward without cache.

  mask[b, t, s] = input_mask[b, s] and s <= t.

  Args:
    input_mask: [B, T] bool, true for real tokens.

  Returns:
    [B, T, T] bool.
  """
  chex.assert_rank(input_mask, 2)
  t = input_mask.shape[1]
  tril = jnp.tril(jnp.ones((t, t), dtype=bool))
  return tril[None] & input_mask[:, None, :].astype(bool)


def cache_mask(key_mask: Array, cache_index: Array, num_queries: int) -> Array:
  """Mask for queries written at slots cache_index .. cache_index + T - 1.

  mask[b, t, s] = key_mask[b, s] and s <= cache_index + t.

  Args:
    key_mask: [B, S] bool, true for cache slots that hold (or are about to hold)
      real tokens.
    cache_index: int32 scalar, slot of the first query.
    num_queries: T.

  Returns:
    [B, T, S] bool.
  """
  chex.assert_rank(key_mask, 2)
  s = key_mask.shape[1]
  query_slot = cache_index + jnp.arange(num_queries, dtype=jnp.int32)
  visible = jnp.arange(s, dtype=jnp.int32)[None, :] <= query_slot[:, None]
  return visible[None] & key_mask[:, None, :].astype(bool)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
  """Inverse RoPE frequencies [Dh / 2] (float64 numpy, a trace-time constant).

  inv_freq[i] = theta^(-2i / Dh); "linear" divides all by `factor`; "llama3"
  (Llama 3.1) divides long wavelengths (> original_len / low_freq_factor) by
  `factor`, keeps short ones (< original_len / high_freq_factor), and
  interpolates smoothly in between.
  """
  dh = config.head_dim
  inv = 1.0 / (config.rope_theta ** (np.arange(0, dh, 2, dtype=np.int64).astype(np.float64)
                                      / dh))
  scaling = config.rope_scaling_dict
  if scaling is None:
    return inv
  rope_type = scaling.get("rope_type", "default")
  if rope_type == "linear":
    return inv / float(scaling["factor"])
  if rope_type == "llama3":
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * np.pi / inv
    scaled = np.where(wavelen > old_len / low, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return np.where(medium, smoothed, scaled)
  return inv


def rope_angles(config: ModelConfig, positions: Array) -> tuple[Array, Array]:
  """(sin, cos), each [B, T, Dh / 2] float32, of positions * inv_freq."""
  inv = jnp.asarray(rope_inv_freq(config), jnp.float32)
  angles = positions.astype(jnp.float32)[..., None] * inv
  return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: Array, sin: Array, cos: Array) -> Array:
  """Rotates halves of the last axis: [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin].

  Args:
    x: [B, T, N, Dh].
    sin, cos: [B, T, Dh / 2] float32.

  Returns:
    [B, T, N, Dh] in x's dtype (computed in float32).
  """
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  sin, cos = sin[:, :, None, :], cos[:, :, None, :]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


# Queries per block when a pass has more (long prompts, long training rows): the
# float32 scores of one block, [B, H, QUERY_BLOCK, S], are the largest attention
# temporary instead of [B, H, T, S].
QUERY_BLOCK = 512


def _attend_dense(q: Array, key: Array, value: Array, mask: Array, dtype) -> Array:
  """Softmax attention as two batched matmuls; shapes as `attend`."""
  scores = jnp.einsum("btkgd,bksd->bkgts", q, key.astype(dtype),
                      preferred_element_type=jnp.float32)
  scores = jnp.where(mask[:, None, None, :, :], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
  return jnp.einsum("bkgts,bksd->btkgd", probs, value.astype(dtype))


def attend(q: Array, key: Array, value: Array, mask: Array, dtype) -> Array:
  """Grouped-query softmax attention over the first `S' = mask.shape[-1]` key slots.

  out[b, t, k, g] = sum_{s < S'} softmax_s(q[b, t, k, g] . key[b, k, s] | mask[b, t, s])
                    value[b, k, s]

  Key slots at and after S' are never read (on XLA:CPU the prefix is copied
  before the matmuls, so a sampler sizes its cache to what it attends to
  rather than slicing a longer one every step). Passes with more than
  `QUERY_BLOCK` queries run block by block (`lax.map`, rematerialized in the
  backward pass), so the `[B, H, T, S']` scores never exist whole.

  Args:
    q: `[B, T, K, G, Dh]` queries, already scaled by `Dh ** -0.5`.
    key, value: `[B, K, S, Dh]`, S >= S'.
    mask: `[B, T, S']` bool; a query with no visible key gets a uniform average.
    dtype: the compute dtype (scores and softmax are float32).

  Returns:
    `[B, T, K, G, Dh]` in `dtype`.
  """
  chex.assert_rank([q, key, value, mask], [5, 4, 4, 3])
  b, t, k, g, dh = q.shape
  kv_len = mask.shape[-1]
  if kv_len > key.shape[2]:
    raise ValueError(f"attention mask covers {kv_len} key slots, the keys have {key.shape[2]}")
  if kv_len < key.shape[2]:
    key, value = key[:, :, :kv_len], value[:, :, :kv_len]
  if t <= QUERY_BLOCK:
    return _attend_dense(q, key, value, mask, dtype)
  blocks = -(-t // QUERY_BLOCK)
  pad = blocks * QUERY_BLOCK - t
  q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
  mask = jnp.pad(mask, ((0, 0), (0, pad), (0, 0)))
  q_blocks = q.reshape(b, blocks, QUERY_BLOCK, k, g, dh).swapaxes(0, 1)
  mask_blocks = mask.reshape(b, blocks, QUERY_BLOCK, kv_len).swapaxes(0, 1)
  block_fn = jax.checkpoint(lambda qm: _attend_dense(qm[0], key, value, qm[1], dtype))
  out = jax.lax.map(block_fn, (q_blocks, mask_blocks))  # [blocks, B, QUERY_BLOCK, K, G, Dh]
  return out.swapaxes(0, 1).reshape(b, blocks * QUERY_BLOCK, k, g, dh)[:, :t]


def _normal(config: ModelConfig):
  return nn.initializers.normal(stddev=config.initializer_range)


class RMSNorm(nn.Module):
  """y = scale * x / sqrt(mean(x^2) + eps), statistics in float32."""

  eps: float
  dtype: Any
  param_dtype: Any
  axis_name: str = "norm"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                             (self.axis_name,)),
                       (x.shape[-1],), self.param_dtype)
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * xf.astype(self.dtype)


class Attention(nn.Module):
  """Grouped-query attention with RoPE and an optional KV cache."""

  config: ModelConfig

  def _proj(self, name, shape, axes, rows, bias):
    """rows [B * T, D] @ kernel [D, N, Dh] -> [B * T, N, Dh] (one plain matmul, see MLP)."""
    cfg = self.config
    w = self.param(name + "_kernel", nn.with_logical_partitioning(_normal(cfg), axes), shape,
                   cfg.param_jnp_dtype)
    d, n, dh = shape
    y = rows @ w.astype(cfg.compute_jnp_dtype).reshape(d, n * dh)
    if bias:
      b = self.param(name + "_bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                  axes[1:]),
                     shape[1:], cfg.param_jnp_dtype)
      y = y + b.astype(cfg.compute_jnp_dtype).reshape(n * dh)
    return y.reshape(rows.shape[0], n, dh)

  @nn.compact
  def __call__(self, x: Array, sin: Array, cos: Array, mask: Array, layer_cache,
               cache_index) -> tuple[Array, Any]:
    cfg = self.config
    dtype = cfg.compute_jnp_dtype
    b, t, d = x.shape
    h, k, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    # Projections on [B * T, D] rows, as in the MLP: with "btd,dhk->bthk" the
    # weight gradients contract (b, t) and XLA:CPU transposes activations.
    rows = x.reshape(b * t, d)
    q = self._proj("q_proj", (d, h, dh), ("embed", "q_heads", "head_dim"), rows,
                   cfg.attention_bias).reshape(b, t, h, dh)
    key = self._proj("k_proj", (d, k, dh), ("embed", "kv_heads", "head_dim"), rows,
                     cfg.attention_bias).reshape(b, t, k, dh)
    value = self._proj("v_proj", (d, k, dh), ("embed", "kv_heads", "head_dim"), rows,
                       cfg.attention_bias).reshape(b, t, k, dh).transpose(0, 2, 1, 3)
    if cfg.qk_norm:
      q = RMSNorm(cfg.rms_norm_eps, dtype, cfg.param_jnp_dtype, "head_dim", name="q_norm")(q)
      key = RMSNorm(cfg.rms_norm_eps, dtype, cfg.param_jnp_dtype, "head_dim",
                    name="k_norm")(key)
    q = apply_rope(q, sin, cos) * jnp.asarray(dh ** -0.5, dtype)
    key = apply_rope(key, sin, cos).transpose(0, 2, 1, 3)  # [B, K, T, Dh]
    q = sharding.constrain(q, ("activation_batch", "activation_length", "activation_heads",
                               "activation_head_dim"))
    if layer_cache is not None:
      cache_k, cache_v = layer_cache
      start = (0, 0, cache_index, 0)
      key = jax.lax.dynamic_update_slice(cache_k, key.astype(cache_k.dtype), start)
      value = jax.lax.dynamic_update_slice(cache_v, value.astype(cache_v.dtype), start)
      layer_cache = (key, value)
    key = sharding.constrain(key, ("activation_batch", "activation_kv_heads",
                                   "activation_length", "activation_head_dim"))
    value = sharding.constrain(value, ("activation_batch", "activation_kv_heads",
                                       "activation_length", "activation_head_dim"))
    out = attend(q.reshape(b, t, k, h // k, dh), key, value, mask, dtype).reshape(b, t, h, dh)
    w_o = self.param("o_proj_kernel",
                     nn.with_logical_partitioning(_normal(cfg), ("q_heads", "head_dim", "embed")),
                     (h, dh, d), cfg.param_jnp_dtype)
    y = (out.reshape(b * t, h * dh) @ w_o.astype(dtype).reshape(h * dh, d)).reshape(b, t, d)
    if cfg.attention_out_bias:
      y = y + self.param("o_proj_bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                     ("embed",)),
                         (d,), cfg.param_jnp_dtype).astype(dtype)
    return y, layer_cache


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    dtype = cfg.compute_jnp_dtype
    d, f = cfg.hidden_size, cfg.intermediate_size

    def weight(name, shape, axes):
      return self.param(name, nn.with_logical_partitioning(_normal(cfg), axes), shape,
                        cfg.param_jnp_dtype).astype(dtype)

    def bias(name, size, axis):
      return self.param(name, nn.with_logical_partitioning(nn.initializers.zeros, (axis,)),
                        (size,), cfg.param_jnp_dtype).astype(dtype)

    # The matmuls run on [B * T, .] rows: the weight gradients then contract
    # one axis, where "btd,btf->df" made XLA:CPU copy the [B, T, F]
    # activations into a transposed layout (a quarter less train-step time on
    # the bench workloads).
    b, t, _ = x.shape
    rows = x.reshape(b * t, d)
    gate = rows @ weight("gate_proj_kernel", (d, f), ("embed", "mlp"))
    up = rows @ weight("up_proj_kernel", (d, f), ("embed", "mlp"))
    if cfg.mlp_bias:
      gate = gate + bias("gate_proj_bias", f, "mlp")
      up = up + bias("up_proj_bias", f, "mlp")
    hidden = sharding.constrain((jax.nn.silu(gate) * up).reshape(b, t, f),
                                ("activation_batch", "activation_length", "activation_mlp"))
    y = hidden.reshape(b * t, f) @ weight("down_proj_kernel", (f, d), ("mlp", "embed"))
    if cfg.mlp_bias:
      y = y + bias("down_proj_bias", d, "embed")
    return y.reshape(b, t, d)


class DecoderLayer(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.))."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array, layer_cache, sin: Array, cos: Array, mask: Array,
               cache_index) -> tuple[Array, Any]:
    cfg = self.config
    dtype, pdtype = cfg.compute_jnp_dtype, cfg.param_jnp_dtype
    attn_out, layer_cache = Attention(cfg, name="self_attn")(
        RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="input_layernorm")(x), sin, cos, mask,
        layer_cache, cache_index)
    x = x + attn_out
    x = x + MLP(cfg, name="mlp")(
        RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="post_attention_layernorm")(x))
    x = sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    return x, layer_cache


def head_logits(hidden: Array, head: Array, vocab_major: bool = False) -> Array:
  """logits = hidden @ head in the head's dtype, accumulated and returned in float32.

  Args:
    hidden: [..., D].
    head: [D, V], or [V, D] with `vocab_major` (a tied embedding as stored),
      already in the compute dtype.
    vocab_major: the head is [V, D].

  Returns:
    [..., V] float32.
  """
  if vocab_major:
    return _vocab_major_logits(hidden.astype(head.dtype), head)
  return jnp.einsum("...d,dv->...v", hidden.astype(head.dtype), head,
                    preferred_element_type=jnp.float32)


@jax.custom_vjp
def _vocab_major_logits(hidden: Array, head: Array) -> Array:
  """hidden [..., D] @ head [V, D]^T -> [..., V] float32 (see `_vocab_major_logits_bwd`)."""
  return jnp.einsum("...d,vd->...v", hidden, head, preferred_element_type=jnp.float32)


def _vocab_major_logits_fwd(hidden, head):
  return _vocab_major_logits(hidden, head), (hidden, head)


def _vocab_major_logits_bwd(residuals, d_logits):
  """Pullback with the head's gradient taken as (hidden^T @ d_logits)^T.

  Differentiated as written, XLA:CPU computes d_head = d_logits^T @ hidden and
  for that writes the whole [N, V] logit gradient a second time, transposed
  (the fused softmax pullback recomputed in a column-major copy: the step's
  most expensive op on the bench workloads). Transposing the [N, D] hidden
  states and the [D, V] product instead moves D / V as much; the barrier keeps
  XLA from folding the transposes back into the dot.
  """
  hidden, head = residuals
  d_hidden = jnp.einsum("...v,vd->...d", d_logits, head,
                        preferred_element_type=jnp.float32).astype(hidden.dtype)
  rows = hidden.reshape(-1, hidden.shape[-1])
  d_head_t = jnp.einsum("nd,nv->dv", rows, d_logits.reshape(-1, d_logits.shape[-1]),
                        preferred_element_type=jnp.float32)
  d_head = jax.lax.optimization_barrier(d_head_t).T.astype(head.dtype)
  return d_hidden, d_head


_vocab_major_logits.defvjp(_vocab_major_logits_fwd, _vocab_major_logits_bwd)


_REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _layer_class(config: ModelConfig):
  cls = DecoderLayer
  if config.remat_policy != "none":
    cls = nn.remat(cls, policy=_REMAT_POLICIES[config.remat_policy],
                   prevent_cse=not config.scan_layers)
  if config.scan_layers:
    cls = nn.scan(cls, variable_axes={"params": 0}, split_rngs={"params": True},
                  in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                  length=config.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
  return cls


class Transformer(nn.Module):
  """Decoder-only LM. See the module docstring for shapes, cache and numerics."""

  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.embed_tokens = self.param(
        "embed_tokens", nn.with_logical_partitioning(_normal(cfg), ("vocab", "embed")),
        (cfg.vocab_size, cfg.hidden_size), cfg.param_jnp_dtype)
    cls = _layer_class(cfg)
    if cfg.scan_layers:
      self.layers = cls(cfg, name="layers")
    else:
      self.layers = [cls(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
    self.norm = RMSNorm(cfg.rms_norm_eps, cfg.compute_jnp_dtype, cfg.param_jnp_dtype,
                        name="norm")
    if not cfg.tie_word_embeddings:
      self.lm_head = self.param(
          "lm_head", nn.with_logical_partitioning(_normal(cfg), ("embed", "vocab")),
          (cfg.hidden_size, cfg.vocab_size), cfg.param_jnp_dtype)

  def hidden_states(self, tokens: Array, positions: Array, attention_mask: Array,
                    cache: Cache | None = None, cache_index: Array | None = None,
                    ) -> tuple[Array, Cache | None]:
    """Final normed hidden states.

    Args:
      tokens: [B, T] int32.
      positions: [B, T] int32 RoPE positions.
      attention_mask: [B, T, S'] bool, true where query t may attend key slot s;
        only the first S' slots are read (S' == T without a cache).
      cache: None or a Cache with S >= S' slots.
      cache_index: int32 scalar slot of tokens[:, 0] in the cache (with a cache).

    Returns:
      (hidden [B, T, D] in the compute dtype, updated cache or None).
    """
    cfg = self.config
    chex.assert_rank([tokens, positions, attention_mask], [2, 2, 3])
    chex.assert_equal_shape([tokens, positions])
    b, t = tokens.shape
    if cache is None:
      chex.assert_shape(attention_mask, (b, t, t))
    else:
      if cache_index is None:
        raise ValueError("cache_index: required with a cache (slot of tokens[:, 0])")
      chex.assert_shape(attention_mask, (b, t, None))
    x = jnp.take(self.embed_tokens, tokens, axis=0).astype(cfg.compute_jnp_dtype)
    x = sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    sin, cos = rope_angles(cfg, positions)
    mask = attention_mask.astype(bool)
    if cache_index is not None:
      cache_index = jnp.asarray(cache_index, jnp.int32)
    if cfg.scan_layers:
      xs = None if cache is None else (cache.k, cache.v)
      x, new = self.layers(x, xs, sin, cos, mask, cache_index)
      new_cache = None if cache is None else Cache(*new)
    else:
      ks, vs = [], []
      for i, layer in enumerate(self.layers):
        layer_cache = None if cache is None else (cache.k[i], cache.v[i])
        x, layer_cache = layer(x, layer_cache, sin, cos, mask, cache_index)
        if layer_cache is not None:
          ks.append(layer_cache[0])
          vs.append(layer_cache[1])
      new_cache = None if cache is None else Cache(tuple(ks), tuple(vs))
    return self.norm(x), new_cache

  def head_weight(self) -> Array:
    """LM head as [D, V] in the parameter dtype (the embedding's transpose when tied)."""
    if self.config.tie_word_embeddings:
      return self.embed_tokens.T
    return self.lm_head

  def head_as_stored(self) -> tuple[Array, bool]:
    """(LM head in the parameter dtype, vocab_major): the tied embedding as [V, D], else [D, V].

    Contracting the embedding as stored (`head_logits(..., vocab_major=True)`)
    spares XLA:CPU a transposed copy of the embedding, and of the [N, V]
    logit gradients in the backward pass, that `head_weight().T` costs.
    """
    if self.config.tie_word_embeddings:
      return self.embed_tokens, True
    return self.lm_head, False

  def logits_from_hidden(self, hidden: Array) -> Array:
    """Logits [..., V] float32 from hidden states [..., D]."""
    head, vocab_major = self.head_as_stored()
    logits = head_logits(hidden, head.astype(self.config.compute_jnp_dtype), vocab_major)
    if logits.ndim == 3:
      logits = sharding.constrain(
          logits, ("activation_batch", "activation_length", "activation_vocab"))
    return logits

  def __call__(self, tokens: Array, positions: Array, attention_mask: Array,
               cache: Cache | None = None, cache_index: Array | None = None,
               ) -> tuple[Array, Cache | None]:
    """(logits [B, T, V] float32, updated cache or None); arguments as `hidden_states`."""
    hidden, cache = self.hidden_states(tokens, positions, attention_mask, cache, cache_index)
    return self.logits_from_hidden(hidden), cache


def example_inputs(batch_size: int = 1, length: int = 1) -> tuple[Array, Array, Array]:
  """Shape-only (tokens, positions, attention_mask) for `init` and `eval_shape`."""
  tokens = jnp.zeros((batch_size, length), jnp.int32)
  mask = jnp.ones((batch_size, length, length), bool)
  return tokens, tokens, mask


@functools.lru_cache(maxsize=16)
def _abstract_variables(model: Transformer) -> Any:
  """Boxed (logically partitioned) ShapeDtypeStructs of `model.init`; traced once per model."""
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *example_inputs()))


def param_logical_axes(model: Transformer) -> Any:
  """Pytree of logical-name PartitionSpecs, one per parameter."""
  return nn.get_partition_spec(_abstract_variables(model))["params"]


def param_shapes(model: Transformer) -> Any:
  """Pytree of ShapeDtypeStruct, one per parameter (nothing is allocated)."""
  return nn.unbox(_abstract_variables(model))["params"]


def param_shardings(model: Transformer, mesh: jax.sharding.Mesh,
                    rules: sharding.LogicalRules = sharding.LOGICAL_AXIS_RULES) -> Any:
  """Pytree of NamedSharding for the params of `model` on `mesh`."""
  return sharding.shardings_from_logical(param_logical_axes(model), param_shapes(model), mesh,
                                         rules)


def shard_params(params: Any, model: Transformer, mesh: jax.sharding.Mesh,
                 rules: sharding.LogicalRules = sharding.LOGICAL_AXIS_RULES) -> Any:
  """Places `params` onto `mesh` by the logical axis rules."""
  return jax.device_put(params, param_shardings(model, mesh, rules))


def init_params(model: Transformer, rng: Array, mesh: jax.sharding.Mesh | None = None) -> Any:
  """Random params (plain arrays), created directly in their sharding when `mesh` is given."""
  def init(key):
    return nn.unbox(model.init(key, *example_inputs()))["params"]

  if mesh is None:
    return jax.jit(init)(rng)
  return jax.jit(init, out_shardings=param_shardings(model, mesh))(rng)


@functools.partial(jax.jit, static_argnums=(0,))
def _forward(model: Transformer, params, tokens, positions, attention_mask):
  return model.apply({"params": params}, tokens, positions, attention_mask)[0]


def forward(model: Transformer, params: Any, tokens: Array, positions: Array,
            input_mask: Array) -> Array:
  """Jitted full forward without cache: logits [B, T, V] float32 under causal_mask(input_mask)."""
  return _forward(model, params, tokens, positions, causal_mask(input_mask))
