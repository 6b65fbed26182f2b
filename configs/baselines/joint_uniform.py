r"""Joint multi-task RL with a uniform task mixture (the paper's "MTRL" baseline).

  python -m astor_jax.main --config=configs/baselines/joint_uniform.py --workdir=runs/uniform
  python -m astor_jax.main --config=configs/baselines/joint_uniform.py:smoke --workdir=runs/u
  python -m astor_jax.main \
      --config=configs/baselines/joint_uniform.py:base=paper/qwen25_coder_7b.py:8xh100 ...

Same model, data, sampler, RL budget and eval as the base config (configs/astor.py
unless `base=` names another; arg syntax in astor_jax/method_configs.py). What
defines the method: every step splits the batch equally among the tasks
(`astor.schedule = "uniform"`), and one fixed KL coefficient `astor.init_beta`
holds for every task (`astor.calibrate = False`), i.e. plain GRPO on the task
mixture.
"""

from astor_jax import method_configs


def get_config(arg=None):
  c, _ = method_configs.parse_arg(arg, __file__)
  c.astor.schedule = "uniform"
  method_configs.use_fixed_kl(c)
  return c
