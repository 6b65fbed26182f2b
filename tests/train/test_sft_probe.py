"""The warm-start probe's per-task summary (astor_jax/train/sft_probe.py)."""

import numpy as np

from astor_jax.train.sft_probe import summarize


def test_summary_counts_groups_with_variance_and_reasons():
  values = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
  reasons = ["3 of 5 tests failed", "4 of 5 tests failed", "syntax error on line 2: x"] + [
      "wrong prediction"] * 2
  s = summarize(values, reasons)
  assert s["mean_reward"] == np.mean(values)
  assert s["nonzero"] == 5 / 12
  assert s["groups_with_variance"] == 1 / 3  # only the second group has an advantage
  assert s["zero_reasons"] == {"N of N tests failed": 2, "wrong prediction": 2,
                               "syntax error on line N": 1}


def test_greedy_rows_have_no_group_variance():
  assert summarize(np.array([[1.0], [0.0]]), ["x"])["groups_with_variance"] is None
