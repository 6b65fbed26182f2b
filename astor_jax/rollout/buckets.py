"""Prompt-length buckets: left-pad a batch of prompts to one of a few lengths.

The sampler compiles one program per (number of prompts, bucket, group size),
so a run that draws prompts of any length compiles a handful of programs, never
one per step. Prompts are padded on the left so that the last prompt token of
every row sits in the same column and the first generated token of every row
is written to the same KV-cache slot. This runs on the host (numpy): it is the
boundary where user errors are raised.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def choose_bucket(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that holds `length` tokens.

  Args:
    length: the longest prompt of the batch, in tokens.
    buckets: increasing prompt lengths (`config.sampler.prompt_buckets`).

  Returns:
    The bucket.

  Raises:
    ValueError: when `length` exceeds the largest bucket.
  """
  for bucket in buckets:
    if length <= bucket:
      return int(bucket)
  raise ValueError(
      f"prompt of {length} tokens is longer than the largest prompt bucket "
      f"{max(buckets)}; add a larger bucket to config.sampler.prompt_buckets "
      "or truncate the prompt")


def left_pad(prompts: Sequence[Sequence[int]], bucket: int,
             pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token-id prompts to `bucket` columns.

  Args:
    prompts: B prompts, each a non-empty sequence of token ids.
    bucket: the padded length P (>= every prompt's length).
    pad_id: the id written in padding slots (never attended to).

  Returns:
    tokens `[B, P]` int32 and mask `[B, P]` bool (true on real tokens); row b
    holds prompt b in its last `len(prompts[b])` columns.

  Raises:
    ValueError: for an empty prompt or one longer than `bucket`.
  """
  tokens = np.full((len(prompts), bucket), pad_id, dtype=np.int32)
  mask = np.zeros((len(prompts), bucket), dtype=bool)
  for row, prompt in enumerate(prompts):
    length = len(prompt)
    if length == 0:
      raise ValueError(f"prompts[{row}] is empty; every prompt needs at least one token "
                       "(e.g. the tokenizer's BOS id)")
    if length > bucket:
      raise ValueError(f"prompts[{row}] has {length} tokens, more than the bucket {bucket}")
    tokens[row, bucket - length:] = np.asarray(prompt, dtype=np.int32)
    mask[row, bucket - length:] = True
  return tokens, mask
