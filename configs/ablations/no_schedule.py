r"""ASTOR without scheduling: uniform task budgets, calibration kept.

  python -m astor_jax.main --config=configs/ablations/no_schedule.py --workdir=runs/ablation
  python -m astor_jax.main --config=configs/ablations/no_schedule.py:smoke \
      --workdir=runs/smoke
  python -m astor_jax.main \
      --config=configs/ablations/no_schedule.py:base=paper/qwen25_coder_7b.py:8xh100 ...

ASTOR (configs/astor.py, or the base that `base=` names; arg syntax in
astor_jax/method_configs.py) with one change:

  astor.schedule = "uniform": every step splits the batch equally among the
  tasks. The utilities are still computed and still drive the per-task KL
  coefficients, so this isolates the schedule (the paper's "w/o scheduling",
  which drops code-generation pass@1 from 41.5 to 31.9).

Everything else, the rollout budget included, is the base's.
"""

from astor_jax import method_configs


def get_config(arg=None):
  c, _ = method_configs.parse_arg(arg, __file__)
  c.astor.schedule = "uniform"
  return c
