r"""ASTOR without calibration: the utility schedule with one fixed KL coefficient.

  python -m astor_jax.main --config=configs/ablations/no_calibration.py --workdir=runs/ablation
  python -m astor_jax.main --config=configs/ablations/no_calibration.py:smoke \
      --workdir=runs/smoke
  python -m astor_jax.main \
      --config=configs/ablations/no_calibration.py:base=paper/qwen25_coder_7b.py:8xh100 ...

ASTOR (configs/astor.py, or the base that `base=` names; arg syntax in
astor_jax/method_configs.py) with one change:

  astor.calibrate = False: every task keeps beta_k = astor.init_beta for the
  whole run (the uniform KL limit ASTOR's calibration replaces); the schedule
  is unchanged.

Everything else, the rollout budget included, is the base's.
"""

from astor_jax import method_configs


def get_config(arg=None):
  c, _ = method_configs.parse_arg(arg, __file__)
  c.astor.calibrate = False
  return c
