"""Rollouts: a jitted KV-cache sampler with prompt-length buckets."""
