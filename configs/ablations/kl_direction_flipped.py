r"""ASTOR with the utility's effect on the KL coefficient flipped.

  python -m astor_jax.main --config=configs/ablations/kl_direction_flipped.py --workdir=runs/kl
  python -m astor_jax.main --config=configs/ablations/kl_direction_flipped.py:smoke \
      --workdir=runs/smoke
  python -m astor_jax.main \
      --config=configs/ablations/kl_direction_flipped.py:base=paper/qwen25_coder_7b.py:8xh100 ...

ASTOR (configs/astor.py, or the base that `base=` names; arg syntax in
astor_jax/method_configs.py) with one change:

  astor.kl_direction = "tighten_high_utility": a task still learning (high
  utility) gets a tighter (larger) beta_k and a saturated one a looser one, the
  opposite of our default reading of the paper (astor_jax/astor/calibrate.py).

Everything else, the rollout budget included, is the base's.
"""

from astor_jax import method_configs


def get_config(arg=None):
  c, _ = method_configs.parse_arg(arg, __file__)
  c.astor.kl_direction = "tighten_high_utility"
  return c
