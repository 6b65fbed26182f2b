r"""ASTOR without calibration: the utility schedule with one fixed KL coefficient.

  python -m astor_jax.main --config=configs/ablations/no_calibration.py --workdir=runs/ablation
  python -m astor_jax.main --config=configs/ablations/no_calibration.py:smoke \
      --workdir=runs/smoke
  python -m astor_jax.main \
      --config=configs/ablations/no_calibration.py:base=paper/qwen25_coder_7b.py:8xh100 ...

ASTOR (configs/astor.py, or the base that `base=` names; arg syntax in
configs/baselines/_method.py) with one change:

  astor.calibrate = False: every task keeps beta_k = astor.init_beta for the
  whole run (the uniform KL limit ASTOR's calibration replaces); the schedule
  is unchanged.

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
  c, _ = _method().parse_arg(arg, "ablations/no_calibration.py")
  c.astor.calibrate = False
  return c
