r"""ASTOR without cross-task synergy in the utility.

  python -m astor_jax.main --config=configs/ablations/no_synergy.py --workdir=runs/ablation
  python -m astor_jax.main --config=configs/ablations/no_synergy.py:smoke \
      --workdir=runs/smoke
  python -m astor_jax.main \
      --config=configs/ablations/no_synergy.py:base=paper/qwen25_coder_7b.py:8xh100 ...

ASTOR (configs/astor.py, or the base that `base=` names; arg syntax in
astor_jax/method_configs.py) with one change:

  astor.synergy_weight = 0: the utility is learning potential and progress
  only; the gradient cosines are still measured and logged (same compute), but
  no longer move budgets or KL coefficients.

Everything else, the rollout budget included, is the base's.
"""

from astor_jax import method_configs


def get_config(arg=None):
  c, _ = method_configs.parse_arg(arg, __file__)
  c.astor.synergy_weight = 0.0
  return c
