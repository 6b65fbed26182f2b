r"""Curriculum multi-task RL: the tasks one after another in a fixed order.

  python -m astor_jax.main --config=configs/baselines/curriculum.py --workdir=runs/curriculum
  python -m astor_jax.main \
      --config=configs/baselines/curriculum.py:order=code_io>commit_msg>code_gen>test_gen,smoke \
      --workdir=runs/curriculum

Arg: `order=T1>T2>...` (every task of the base config exactly once; default: the
base's `tasks` order), then the usual base tokens (astor_jax/method_configs.py).

What defines the method (`astor.schedule = "curriculum"`,
astor_jax/astor/schedule.py): the RL steps are cut into K equal stages; in stage
k a fraction (1 - astor.floor) of the batch goes to the k-th task of the order
and the floor is shared equally, so earlier tasks are rehearsed. One fixed KL
coefficient for every task (`astor.calibrate = False`), as in plain GRPO.

Easy-to-hard: the paper's curriculum orders tasks from easy to hard. The
difficulty of a task depends on the model, so this file does not guess it: the
reproduction suite (`python -m astor_jax.reproduce`) measures each task's
average score of the shared SFT warm start and passes
`order=` from the highest-scoring task to the lowest. For a real model, order
by its zero-shot scores the same way.
"""

from astor_jax import method_configs


def get_config(arg=None):
  c, values = method_configs.parse_arg(arg, __file__, options={"order": ""})
  order = tuple(t for t in values["order"].split(">") if t) or tuple(c.tasks)
  if sorted(order) != sorted(c.tasks):
    raise ValueError(
        f"configs/baselines/curriculum.py: order={values['order']!r} must name every task of "
        f"the base config exactly once, separated by '>', e.g. order={'>'.join(c.tasks)}")
  c.astor.schedule = "curriculum"
  c.astor.curriculum_order = order
  method_configs.use_fixed_kl(c)
  return c
