"""Shared fixtures of the rollout tests: one tiny random Qwen2-style model."""

import jax
import pytest

from astor_jax.model import ModelConfig, Transformer, init_params

# Wide init (std 0.3, logits up to about 6) so that greedy decisions have clear
# margins and random models do not emit a few tokens forever; wider inits make
# fp32 rounding of the logits alone exceed the 1e-5 log-prob tolerance.
TINY = ModelConfig(model_type="qwen2", vocab_size=61, hidden_size=32, intermediate_size=64,
                   num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                   tie_word_embeddings=True, attention_bias=True, initializer_range=0.3)
PAD_ID = 0


@pytest.fixture(scope="session")
def tiny_model():
  model = Transformer(TINY)
  params = init_params(model, jax.random.key(0))
  return model, params
