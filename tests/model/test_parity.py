"""Logits parity with transformers' PyTorch models, with and without the KV cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astor_jax.model import cache_mask, forward, hf, init_cache
from tests.model.helpers import padded_batch, torch_logits

ARCHS = ("qwen2", "qwen3", "llama")
TOL = 1e-4


@pytest.fixture(scope="module")
def loaded(hf_checkpoints):
  return {arch: hf.load_pretrained(path, load_tokenizer=False)[:2]
          for arch, (path, _) in hf_checkpoints.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers_left_and_right_padding(arch, hf_checkpoints, loaded):
  _, torch_model = hf_checkpoints[arch]
  model, params = loaded[arch]
  # One batch holding both paddings: rows 0-2 left-padded, rows 3-5 right-padded.
  parts = [padded_batch(0, "left"), padded_batch(1, "right")]
  tokens, positions, mask = (np.concatenate(x) for x in zip(*parts))
  ref = torch_logits(torch_model, tokens, positions, mask)
  got = np.asarray(forward(model, params, jnp.asarray(tokens), jnp.asarray(positions),
                           jnp.asarray(mask)))
  assert got.dtype == np.float32
  diff = np.abs(got - ref)[mask]
  assert diff.max() < TOL, (arch, diff.max())
  assert np.abs(ref).max() > 0.5  # the comparison is not between two near-zero tensors


def _decode_one_by_one(model, params, tokens, positions, mask, prefill):
  """Prefill `prefill` columns, then feed the rest one token at a time."""
  b, t = tokens.shape
  cfg = model.config
  cache = init_cache(cfg, b, t + 2)  # spare slots stay masked out

  @jax.jit
  def step(params, cache, tok, pos, key_mask, index):
    attn = cache_mask(key_mask, index, tok.shape[1])
    return model.apply({"params": params}, tok, pos, attn, cache, index)

  key_mask = jnp.zeros((b, t + 2), bool).at[:, :t].set(jnp.asarray(mask))
  outs = []
  logits, cache = step(params, cache, tokens[:, :prefill], positions[:, :prefill], key_mask,
                       jnp.int32(0))
  outs.append(logits)
  for i in range(prefill, t):
    logits, cache = step(params, cache, tokens[:, i:i + 1], positions[:, i:i + 1], key_mask,
                         jnp.int32(i))
    outs.append(logits)
  return np.concatenate([np.asarray(o) for o in outs], axis=1)


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_prefill_then_single_tokens_equals_full_forward(arch, hf_checkpoints, loaded):
  _, torch_model = hf_checkpoints[arch]
  model, params = loaded[arch]
  tokens, positions, mask = padded_batch(2, "left")
  full = np.asarray(forward(model, params, jnp.asarray(tokens), jnp.asarray(positions),
                            jnp.asarray(mask)))
  cached = _decode_one_by_one(model, params, jnp.asarray(tokens), jnp.asarray(positions),
                              mask, prefill=6)
  assert np.abs(cached - full)[mask].max() < 1e-5
  ref = torch_logits(torch_model, tokens, positions, mask)
  assert np.abs(cached - ref)[mask].max() < TOL


def test_kv_cache_with_scanned_layers(hf_checkpoints):
  path, torch_model = hf_checkpoints["qwen3"]
  model, params, _ = hf.load_pretrained(path, load_tokenizer=False, scan_layers=True)
  assert init_cache(model.config, 2, 5).k.shape == (2, 2, 2, 5, 24)  # [L, B, K, S, Dh]
  tokens, positions, mask = padded_batch(8, "left")
  cached = _decode_one_by_one(model, params, jnp.asarray(tokens), jnp.asarray(positions),
                              mask, prefill=7)
  ref = torch_logits(torch_model, tokens, positions, mask)
  assert np.abs(cached - ref)[mask].max() < TOL
