"""Attention: query blocks and key prefixes compute exactly the dense attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astor_jax.model import ModelConfig, Transformer, init_params, transformer

CONFIG = ModelConfig(model_type="qwen2", vocab_size=53, hidden_size=32, intermediate_size=48,
                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                     tie_word_embeddings=True, attention_bias=True, initializer_range=0.3)


@pytest.fixture(scope="module")
def model_and_params():
  model = Transformer(CONFIG)
  return model, init_params(model, jax.random.key(0))


def _batch(length=11):
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, CONFIG.vocab_size, (3, length)).astype(np.int32)
  input_mask = np.ones((3, length), bool)
  input_mask[1, :4] = False  # left padding
  positions = np.maximum(np.cumsum(input_mask, axis=1) - 1, 0).astype(np.int32)
  return tokens, positions, input_mask


def _loss_and_grads(model, params, tokens, positions, input_mask):
  def loss(p):
    logits, _ = model.apply({"params": p}, tokens, positions,
                            transformer.causal_mask(input_mask))
    return jnp.sum(jax.nn.log_softmax(logits)[..., 0] * input_mask), logits
  (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return logits, grads


@pytest.mark.parametrize("block", [4, 5])  # 11 queries: 3 blocks with 1 padded, 3 with 4
def test_query_blocks_equal_dense_attention(model_and_params, monkeypatch, block):
  model, params = model_and_params
  batch = _batch()
  fresh = lambda: jax.jit(lambda *args: _loss_and_grads(model, *args))  # traced anew
  dense_logits, dense_grads = fresh()(params, *batch)
  monkeypatch.setattr(transformer, "QUERY_BLOCK", block)
  blocked = fresh()
  assert "while" in blocked.lower(params, *batch).as_text()  # blocks in a loop (lax.map)
  logits, grads = blocked(params, *batch)
  np.testing.assert_allclose(logits, dense_logits, atol=1e-5, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(dense_grads)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_blocked_scores_are_one_block_at_a_time(monkeypatch):
  """Scores of 64 queries in blocks of 16 are f32 [.., 16, 64] at a time, never [.., 64, 64]."""
  q = jnp.zeros((1, 64, 2, 2, 8))
  kv = jnp.zeros((1, 2, 64, 8))
  mask = jnp.ones((1, 64, 64), bool)
  monkeypatch.setattr(transformer, "QUERY_BLOCK", 16)
  attend = lambda *args: transformer.attend(*args, jnp.float32)  # a fresh trace
  hlo = jax.jit(attend).lower(q, kv, kv, mask).as_text()
  assert "tensor<1x2x2x16x64xf32>" in hlo and "tensor<1x2x2x64x64xf32>" not in hlo


def test_a_key_prefix_equals_attention_over_the_sliced_cache():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(2, 1, 2, 2, 8)), jnp.float32)
  key = jnp.asarray(rng.normal(size=(2, 2, 10, 8)), jnp.float32)
  value = jnp.asarray(rng.normal(size=(2, 2, 10, 8)), jnp.float32)
  mask = jnp.asarray(rng.random((2, 1, 6)) < 0.7).at[:, :, 0].set(True)
  got = transformer.attend(q, key, value, mask, jnp.float32)
  want = transformer.attend(q, key[:, :, :6], value[:, :, :6], mask, jnp.float32)
  np.testing.assert_array_equal(got, want)
  # Slots past the prefix are never read: garbage there changes nothing.
  garbage = key.at[:, :, 6:].set(1e6)
  np.testing.assert_array_equal(transformer.attend(q, garbage, value, mask, jnp.float32), want)
  with pytest.raises(ValueError, match="key slots"):
    transformer.attend(q, key[:, :, :4], value[:, :, :4], mask, jnp.float32)
