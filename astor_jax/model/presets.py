"""Named model shapes: the embedded tiny world, the peer benchmark models, real models.

- `tiny_world`: the embedded default policy (Qwen2 block: q/k/v bias, GQA 4 query
  heads / 2 kv heads, tied embeddings), about 2 M parameters at vocab 2048 so SFT
  and RL run on two CPU cores in minutes.
- `bench_tiny`, `bench_6l`: exactly the peer benchmark models of
  `bench/peers/README.md` (Qwen2 block, tied embeddings, SwiGLU width 4 d, RoPE
  theta 1e4, eps 1e-6, fp32, d 256, 4 heads MHA, vocab 2048; 4 or 6 layers:
  4.72 M and 6.82 M parameters).
- `qwen2.5-0.5b`, `qwen2.5-coder-7b`, `qwen3-8b`, `llama3-8b`: the published
  shapes (Qwen2.5-0.5B, Qwen2.5-Coder-7B(-Instruct), Qwen3-8B, Llama-3.1-8B with its
  llama3 RoPE scaling) for compile-time memory checks and GPU benchmarks; weights
  come from `hf.load_pretrained`.
"""

from __future__ import annotations

from astor_jax.model.config import ModelConfig

_LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

_PRESETS: dict[str, dict] = {
    "tiny_world": dict(model_type="qwen2", vocab_size=2048, hidden_size=192,
                       intermediate_size=512, num_layers=4, num_heads=4, num_kv_heads=2,
                       head_dim=48, rope_theta=10_000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, attention_bias=True,
                       max_position_embeddings=2048),
    "bench_tiny": dict(model_type="qwen2", vocab_size=2048, hidden_size=256,
                       intermediate_size=1024, num_layers=4, num_heads=4, num_kv_heads=4,
                       head_dim=64, rope_theta=10_000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, attention_bias=True,
                       max_position_embeddings=2048),
    "bench_6l": dict(model_type="qwen2", vocab_size=2048, hidden_size=256,
                     intermediate_size=1024, num_layers=6, num_heads=4, num_kv_heads=4,
                     head_dim=64, rope_theta=10_000.0, rms_norm_eps=1e-6,
                     tie_word_embeddings=True, attention_bias=True,
                     max_position_embeddings=2048),
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896,
                         intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2,
                         head_dim=64, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, attention_bias=True,
                         max_position_embeddings=32768),
    "qwen2.5-coder-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584,
                             intermediate_size=18944, num_layers=28, num_heads=28,
                             num_kv_heads=4, head_dim=128, rope_theta=1_000_000.0,
                             rms_norm_eps=1e-6, tie_word_embeddings=False,
                             attention_bias=True, max_position_embeddings=32768),
    "qwen3-8b": dict(model_type="qwen3", vocab_size=151936, hidden_size=4096,
                     intermediate_size=12288, num_layers=36, num_heads=32, num_kv_heads=8,
                     head_dim=128, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                     tie_word_embeddings=False, qk_norm=True, max_position_embeddings=40960),
    "llama3-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096,
                      intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                      head_dim=128, rope_theta=500_000.0, rope_scaling=_LLAMA31_ROPE,
                      rms_norm_eps=1e-5, tie_word_embeddings=False,
                      max_position_embeddings=131072),
}

PRESETS = tuple(_PRESETS)


def get_preset(name: str, vocab_size: int | None = None, **overrides) -> ModelConfig:
  """The ModelConfig of a named preset.

  Args:
    name: one of PRESETS.
    vocab_size: replaces the preset's vocabulary size (e.g. a locally trained
      tokenizer's); None keeps it.
    **overrides: other ModelConfig fields (param_dtype, dtype, remat_policy,
      scan_layers, ...).

  Returns:
    The config.

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  if name not in _PRESETS:
    raise ValueError(f"model.preset: got {name!r}, expected one of {', '.join(PRESETS)} "
                     "(or 'hf' with model.hf_path)")
  fields = dict(_PRESETS[name])
  if vocab_size is not None:
    fields["vocab_size"] = vocab_size
  fields.update(overrides)
  return ModelConfig(**fields)
