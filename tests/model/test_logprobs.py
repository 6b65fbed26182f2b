"""token_logprobs: alignment, values vs numpy, chunking, gradients, remat, memory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astor_jax.model import ModelConfig, Transformer, forward, init_params, token_logprobs
from tests.model.helpers import padded_batch

CFG = ModelConfig(model_type="qwen2", vocab_size=96, hidden_size=32, intermediate_size=64,
                  num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  tie_word_embeddings=True, attention_bias=True)


@pytest.fixture(scope="module")
def setup():
  model = Transformer(CFG)
  params = init_params(model, jax.random.PRNGKey(0))
  batch = tuple(jnp.asarray(x) for x in padded_batch(7, "right"))
  return model, params, batch


def _numpy_reference(logits, tokens, mask):
  logits = logits.astype(np.float64)
  log_p = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
  log_p -= logits.max(-1, keepdims=True)
  b, t = tokens.shape
  lp, ent = np.zeros((b, t)), np.zeros((b, t))
  for i in range(b):
    for j in range(1, t):
      if mask[i, j]:
        lp[i, j] = log_p[i, j - 1, tokens[i, j]]
        ent[i, j] = -(np.exp(log_p[i, j - 1]) * log_p[i, j - 1]).sum()
  return lp, ent


@pytest.mark.parametrize("chunk_size", [0, 4])
def test_token_aligned_values_match_numpy(setup, chunk_size):
  model, params, (tokens, positions, mask) = setup
  fn = jax.jit(functools.partial(token_logprobs, model, chunk_size=chunk_size))
  lp, ent = fn(params, tokens, positions, mask)
  assert lp.dtype == ent.dtype == jnp.float32 and lp.shape == tokens.shape
  logits = np.asarray(forward(model, params, tokens, positions, mask))
  ref_lp, ref_ent = _numpy_reference(logits, np.asarray(tokens), np.asarray(mask))
  np.testing.assert_allclose(lp, ref_lp, atol=2e-5)
  np.testing.assert_allclose(ent, ref_ent, atol=2e-5)
  assert np.all(np.asarray(lp)[:, 0] == 0) and np.all(np.asarray(lp)[~np.asarray(mask)] == 0)
  assert np.all(np.asarray(ent)[:, 1:][np.asarray(mask)[:, 1:]] > 0)


def _loss(model, chunk_size, params, tokens, positions, mask):
  lp, ent = token_logprobs(model, params, tokens, positions, mask, chunk_size=chunk_size)
  return jnp.sum(lp) + 0.1 * jnp.sum(ent)


@pytest.fixture(scope="module")
def reference_grad(setup):
  model, params, batch = setup
  return jax.jit(jax.grad(functools.partial(_loss, model, 0)))(params, *batch)


@pytest.mark.parametrize("chunk_size,remat_policy", [(3, "none"), (0, "full"),
                                                     (3, "dots_with_no_batch_dims_saveable")])
def test_gradients_equal_unchunked_without_remat(setup, reference_grad, chunk_size,
                                                remat_policy):
  _, params, batch = setup
  ref = reference_grad
  other = Transformer(CFG.replace(remat_policy=remat_policy))
  got = jax.jit(jax.grad(functools.partial(_loss, other, chunk_size)))(params, *batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), got, ref)
  assert float(jnp.abs(got["embed_tokens"]).max()) > 0


def test_chunking_bounds_logit_memory():
  """With a large vocab, chunking shrinks the compiled program's temporaries."""
  cfg = CFG.replace(vocab_size=8192)
  model = Transformer(cfg)
  params = jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))
  b, t = 8, 64
  batch = (jax.ShapeDtypeStruct((b, t), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.int32),
           jax.ShapeDtypeStruct((b, t), jnp.bool_))

  def temp_bytes(chunk_size):
    grad = jax.jit(jax.grad(functools.partial(_loss, model, chunk_size)))
    return grad.lower(params, *batch).compile().memory_analysis().temp_size_in_bytes

  full_logits = b * (t - 1) * cfg.vocab_size * 4
  unchunked, chunked = temp_bytes(0), temp_bytes(4)
  assert unchunked > 2 * full_logits  # logits, probabilities and their cotangents
  # Chunks of 4 positions: a few [B, 4, V] buffers plus [D, V]-sized head gradients.
  assert chunked < full_logits and chunked < unchunked / 5
