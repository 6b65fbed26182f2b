r"""Joint multi-task RL with a uniform task mixture (the paper's "MTRL" baseline).

  python -m astor_jax.main --config=configs/baselines/joint_uniform.py --workdir=runs/uniform
  python -m astor_jax.main --config=configs/baselines/joint_uniform.py:smoke --workdir=runs/u
  python -m astor_jax.main \
      --config=configs/baselines/joint_uniform.py:base=paper/qwen25_coder_7b.py:8xh100 ...

Same model, data, sampler, RL budget and eval as the base config (configs/astor.py
unless `base=` names another; arg syntax in configs/baselines/_method.py). What
defines the method: every step splits the batch equally among the tasks
(`astor.schedule = "uniform"`), and one fixed KL coefficient `astor.init_beta`
holds for every task (`astor.calibrate = False`), i.e. plain GRPO on the task
mixture.
"""

import importlib.util
import os


def _method():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_method.py")
  spec = importlib.util.spec_from_file_location("_baseline_method", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  method = _method()
  c, _ = method.parse_arg(arg, "baselines/joint_uniform.py")
  c.astor.schedule = "uniform"
  method.use_fixed_kl(c)
  return c
