"""Rollouts: a jitted KV-cache sampler with prompt-length buckets."""

from astor_jax.rollout.buckets import choose_bucket, left_pad
from astor_jax.rollout.rows import to_batch_rows
from astor_jax.rollout.sampler import (
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_REASONS,
    FINISH_STOP,
    Sampler,
    SamplerOutput,
    SamplingParams,
    StopCondition,
    generate,
)
from astor_jax.rollout.sampling import sample_tokens, top_k_top_p_keep

__all__ = [
    "FINISH_EOS",
    "FINISH_LENGTH",
    "FINISH_REASONS",
    "FINISH_STOP",
    "Sampler",
    "SamplerOutput",
    "SamplingParams",
    "StopCondition",
    "choose_bucket",
    "generate",
    "left_pad",
    "sample_tokens",
    "to_batch_rows",
    "top_k_top_p_keep",
]
