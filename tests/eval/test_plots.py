"""Training plots are written from metrics records, one PNG each."""

import matplotlib.image
import numpy as np

from astor_jax.eval import plots

TASKS = ("code_io", "code_gen")


def _records():
  out = [{"phase": "sft", "step": 1, "loss": 2.0}]
  for step in range(1, 5):
    r = {"phase": "rl", "step": step, "budget/code_io": 4 - step, "budget/code_gen": step,
         "beta/code_io": 0.04 * step, "beta/code_gen": 0.04, "reward/code_io": 0.1 * step,
         "reward/code_gen": None}
    if step % 2 == 0:
      r.update({f"synergy/{a}/{b}": (1.0 if a == b else -0.3) for a in TASKS for b in TASKS})
    out.append(r)
  return out


def test_writes_four_pngs(tmp_path):
  paths = plots.write_training_plots(_records(), TASKS, str(tmp_path))
  assert [p.rsplit("/", 1)[-1] for p in paths] == [
      "budgets.png", "beta.png", "reward.png", "synergy.png"]
  for path in paths:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100


def test_running_mean_matches_numpy():
  values = np.array([1.0, 3.0, 5.0, 7.0, 9.0])
  expected = [np.mean(values[max(0, i - 1):i + 1]) for i in range(len(values))]
  np.testing.assert_allclose(plots._running_mean(values, 2), expected)
