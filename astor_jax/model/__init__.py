"""Flax decoder family (Qwen2/2.5, Qwen3, Llama 3), HF checkpoints, sharding rules."""
