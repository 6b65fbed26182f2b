"""Token-aligned log-probabilities and entropies, optionally chunked over the sequence.

    logprobs[:, t] = log p(tokens[:, t] | tokens[:, :t]),   logprobs[:, 0] = 0
    entropy[:, t]  = -sum_v p(v | tokens[:, :t]) log p(v | tokens[:, :t]),   entropy[:, 0] = 0

Both are computed from the hidden state at t - 1 and the LM head. With
`chunk_size > 0` the sequence is processed in chunks inside a `lax.scan` whose
body is rematerialized, so neither the forward nor the backward pass holds more
than `[B, chunk_size, V]` logits at a time (V is 152k for Qwen).
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

from astor_jax.model.transformer import Transformer, causal_mask, head_logits

Array = jax.Array


def _chunk_stats(head: Array, vocab_major: bool, hidden: Array,
                 targets: Array) -> tuple[Array, Array]:
  """(log p(target), entropy), each [B, C] float32, from hidden [B, C, D] and the head
  ([D, V], or [V, D] when `vocab_major`)."""
  logits = head_logits(hidden, head, vocab_major)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  # The target's logit by a one-hot select rather than a gather: the gather's
  # pullback is a scatter into [B, C, V], which XLA:CPU runs as a serial loop,
  # where the select's is one elementwise fusion.
  vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  target_logit = jnp.sum(jnp.where(vocab == targets[..., None], logits, 0.0), axis=-1)
  probs = jnp.exp(logits - log_z[..., None])
  entropy = log_z - jnp.sum(probs * logits, axis=-1)
  return target_logit - log_z, entropy


def token_logprobs(model: Transformer, params: Any, tokens: Array, positions: Array,
                   input_mask: Array, chunk_size: int = 0) -> tuple[Array, Array]:
  """Token-aligned log-probs and predictive entropies of `tokens` under the model.

  Args:
    model: the Transformer.
    params: its params.
    tokens: [B, T] int32.
    positions: [B, T] int32 (0 at the first real token of each row).
    input_mask: [B, T] bool, real tokens; attention uses causal_mask(input_mask).
    chunk_size: 0 computes all [B, T - 1, V] logits at once; > 0 scans over
      sequence chunks of this many positions (the last chunk is padded), never
      holding more than [B, chunk_size, V] logits, also in the backward pass.

  Returns:
    (logprobs [B, T] float32, entropy [B, T] float32), token-aligned as in the
    module docstring, 0 at t = 0 and wherever input_mask is false. Differentiable
    with respect to params.
  """
  chex.assert_rank([tokens, positions, input_mask], 2)
  chex.assert_equal_shape([tokens, positions, input_mask])
  chex.assert_type([tokens, positions], jnp.int32)
  if not isinstance(chunk_size, int) or chunk_size < 0:
    raise ValueError(f"chunk_size: got {chunk_size!r}, expected an integer >= 0")
  b, t = tokens.shape
  input_mask = input_mask.astype(bool)
  hidden, _ = model.apply({"params": params}, tokens, positions, causal_mask(input_mask),
                          method=Transformer.hidden_states)
  # The head is read (and cast) once, outside the chunk loop: inside it, the
  # rematerialized body would keep a copy per chunk for the backward pass.
  head, vocab_major = model.apply({"params": params}, method=Transformer.head_as_stored)
  head = head.astype(model.config.compute_jnp_dtype)
  hidden, targets = hidden[:, :-1], tokens[:, 1:]
  n = t - 1
  if n == 0:
    zeros = jnp.zeros((b, t), jnp.float32)
    return zeros, zeros
  if chunk_size == 0 or chunk_size >= n:
    logprobs, entropy = _chunk_stats(head, vocab_major, hidden, targets)
  else:
    num_chunks = -(-n // chunk_size)
    pad = num_chunks * chunk_size - n
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hidden = hidden.reshape(b, num_chunks, chunk_size, -1).swapaxes(0, 1)
    targets = targets.reshape(b, num_chunks, chunk_size).swapaxes(0, 1)

    @jax.checkpoint
    def body(carry, xs):
      return carry, _chunk_stats(head, vocab_major, *xs)

    _, (logprobs, entropy) = jax.lax.scan(body, None, (hidden, targets))
    logprobs = logprobs.swapaxes(0, 1).reshape(b, -1)[:, :n]
    entropy = entropy.swapaxes(0, 1).reshape(b, -1)[:, :n]
  valid = input_mask[:, 1:]
  zero = jnp.zeros((b, 1), jnp.float32)
  logprobs = jnp.concatenate([zero, jnp.where(valid, logprobs, 0.0)], axis=1)
  entropy = jnp.concatenate([zero, jnp.where(valid, entropy, 0.0)], axis=1)
  return logprobs, entropy
