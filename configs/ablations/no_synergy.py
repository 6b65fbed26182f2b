r"""ASTOR without cross-task synergy in the utility.

  python -m astor_jax.main --config=configs/ablations/no_synergy.py --workdir=runs/ablation
  python -m astor_jax.main --config=configs/ablations/no_synergy.py:smoke \
      --workdir=runs/smoke
  python -m astor_jax.main \
      --config=configs/ablations/no_synergy.py:base=paper/qwen25_coder_7b.py:8xh100 ...

ASTOR (configs/astor.py, or the base that `base=` names; arg syntax in
configs/baselines/_method.py) with one change:

  astor.synergy_weight = 0: the utility is learning potential and progress
  only; the gradient cosines are still measured and logged (same compute), but
  no longer move budgets or KL coefficients.

Everything else, the rollout budget included, is the base's.
"""

import importlib.util
import os


def _method():
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "baselines", "_method.py")
  spec = importlib.util.spec_from_file_location("_baseline_method", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  c, _ = _method().parse_arg(arg, "ablations/no_synergy.py")
  c.astor.synergy_weight = 0.0
  return c
