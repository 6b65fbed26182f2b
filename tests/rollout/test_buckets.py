"""Prompt buckets and left padding (host side)."""

import numpy as np
import pytest

from astor_jax.rollout import buckets


def test_choose_bucket_takes_the_smallest_that_fits():
  assert buckets.choose_bucket(1, (4, 8, 16)) == 4
  assert buckets.choose_bucket(4, (4, 8, 16)) == 4
  assert buckets.choose_bucket(5, (4, 8, 16)) == 8
  assert buckets.choose_bucket(16, (4, 8, 16)) == 16


def test_choose_bucket_names_the_config_field_when_too_long():
  with pytest.raises(ValueError, match="config.sampler.prompt_buckets"):
    buckets.choose_bucket(17, (4, 8, 16))


def test_left_pad_right_aligns_prompts():
  tokens, mask = buckets.left_pad([[5, 6, 7], [9]], 4, pad_id=0)
  np.testing.assert_array_equal(tokens, [[0, 5, 6, 7], [0, 0, 0, 9]])
  np.testing.assert_array_equal(mask, [[False, True, True, True], [False, False, False, True]])
  assert tokens.dtype == np.int32 and mask.dtype == bool


@pytest.mark.parametrize("prompts, match", [([[1], []], r"prompts\[1\] is empty"),
                                            ([[1, 2, 3]], "more than the bucket")])
def test_left_pad_rejects_bad_prompts(prompts, match):
  with pytest.raises(ValueError, match=match):
    buckets.left_pad(prompts, 2, pad_id=0)
