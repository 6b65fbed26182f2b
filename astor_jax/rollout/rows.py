"""Sampler output -> the token-aligned batch rows of docs/design.md.

A row is the left-padded prompt followed by the right-padded completion,
`L = P + M` tokens. Log-probs and masks are token-aligned:
`sampler_logprobs[:, t] = log p(tokens[:, t] | tokens[:, :t])`, so the
completion's log-probs sit in columns `P .. P + length - 1` and every other
column is 0.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from astor_jax.rollout.sampler import SamplerOutput, prompt_positions


# Jitted: a dozen small eager ops would each compile on first use (about 0.5 s
# of a run's first step); one program compiles once per shape.
@functools.partial(jax.jit, static_argnames="group_size")
def to_batch_rows(output: SamplerOutput, group_size: int) -> dict[str, jax.Array]:
  """Builds the rollout fields of the train batch from a sampler call.

  positions[r, t] = (number of real prompt tokens of row r before t) for
  prompt columns and `prompt_len[r] + (t - P)` for completion tokens; pads get 0.

  Args:
    output: a SamplerOutput with N rows, P prompt and M completion columns.
    group_size: the G of the call (rows r and r' share a prompt iff r // G == r' // G).

  Returns:
    dict with `tokens [N, L] int32`, `positions [N, L] int32`, `input_mask [N, L] bool`,
    `completion_mask [N, L] bool`, `sampler_logprobs [N, L] float32` and
    `group_ids [N] int32` (`r // G`), `L = P + M`.
  """
  chex.assert_rank([output.prompt_tokens, output.tokens], 2)
  rows, prompt_len = output.prompt_tokens.shape
  max_new_tokens = output.tokens.shape[1]
  chex.assert_shape([output.completion_mask, output.logprobs], (rows, max_new_tokens))
  real_prompt_len = output.prompt_mask.sum(axis=-1).astype(jnp.int32)
  completion_positions = real_prompt_len[:, None] + jnp.arange(max_new_tokens, dtype=jnp.int32)
  completion_positions = jnp.where(output.completion_mask, completion_positions, 0)
  no_completion = jnp.zeros((rows, prompt_len), bool)
  return dict(
      tokens=jnp.concatenate([output.prompt_tokens, output.tokens], axis=1),
      positions=jnp.concatenate([prompt_positions(output.prompt_mask), completion_positions],
                                axis=1),
      input_mask=jnp.concatenate([output.prompt_mask, output.completion_mask], axis=1),
      completion_mask=jnp.concatenate([no_completion, output.completion_mask], axis=1),
      sampler_logprobs=jnp.concatenate(
          [jnp.zeros((rows, prompt_len), jnp.float32),
           jnp.where(output.completion_mask, output.logprobs, 0.0)], axis=1),
      group_ids=jnp.arange(rows, dtype=jnp.int32) // group_size,
  )
