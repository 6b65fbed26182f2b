"""Flax decoder family (Qwen2/2.5, Qwen3, Llama 3), HF checkpoints, sharding rules."""

from astor_jax.model.config import ModelConfig, ModelConfigError
from astor_jax.model.logprobs import token_logprobs
from astor_jax.model.presets import PRESETS, get_preset
from astor_jax.model.sharding import LOGICAL_AXIS_RULES, MESH_AXES, make_mesh
from astor_jax.model.transformer import (
    Cache,
    Transformer,
    cache_mask,
    causal_mask,
    forward,
    init_cache,
    init_params,
    param_shardings,
    shard_params,
)

__all__ = [
    "LOGICAL_AXIS_RULES",
    "MESH_AXES",
    "PRESETS",
    "Cache",
    "ModelConfig",
    "ModelConfigError",
    "Transformer",
    "cache_mask",
    "causal_mask",
    "forward",
    "get_preset",
    "init_cache",
    "init_params",
    "make_mesh",
    "param_shardings",
    "shard_params",
    "token_logprobs",
]
