r"""Per-task specialists: one single-task RL run per task, selected by the config arg.

  python -m astor_jax.main --config=configs/baselines/specialist.py:code_gen --workdir=runs/s_gen
  python -m astor_jax.main --config=configs/baselines/specialist.py:code_io,smoke --workdir=...
  python -m astor_jax.main \
      --config=configs/baselines/specialist.py:test_gen,base=paper/qwen3_8b.py:v5p-128 ...

Arg: the task (code_io | code_gen | test_gen | commit_msg), then the usual base
tokens (astor_jax/method_configs.py) and `budget=split|full`.

What defines the method: the whole batch goes to the one task
(`astor.schedule = "specialist"`), under plain GRPO's single fixed KL
coefficient (`astor.calibrate = False`). The model still evaluates on every
task; the paper's "specialists" row takes each task's columns from that task's
specialist.

Compute (`budget`):
  split (default)  equal compute: the K specialists share one multi-task run's
                   rollout budget. Each keeps `rl.steps` and `rl.group_size` and
                   takes `rl.batch_prompts / K` prompts per step, so it sees
                   exactly the rollouts of its task that the uniform joint run
                   does, with the same number of optimizer steps.
  full             each specialist gets the whole budget (K times the compute of
                   a multi-task run), for a comparison that favours the
                   specialists; the reproduction suite does not use it.
"""

from astor_jax import method_configs

TASKS = ("code_io", "code_gen", "test_gen", "commit_msg")
BUDGETS = ("split", "full")


def get_config(arg=None):
  c, values = method_configs.parse_arg(arg, __file__, options={"budget": "split"},
                               positional=("task", TASKS))
  task, budget = values["task"], values["budget"]
  if task not in c.tasks:
    raise ValueError(f"configs/baselines/specialist.py: task {task!r} is not one of the base "
                     f"config's tasks {tuple(c.tasks)}; pick one of them")
  if budget not in BUDGETS:
    raise ValueError(f"configs/baselines/specialist.py: budget={budget!r}; use budget=split "
                     "(equal compute, the default) or budget=full")
  c.astor.schedule = "specialist"
  c.astor.specialist_task = task
  method_configs.use_fixed_kl(c)
  if budget == "split":
    num_tasks = len(c.tasks)
    if c.rl.batch_prompts % num_tasks:
      raise ValueError(
          f"configs/baselines/specialist.py: rl.batch_prompts={c.rl.batch_prompts} of the base "
          f"config does not split equally among its {num_tasks} tasks; use a base whose "
          f"rl.batch_prompts is a multiple of {num_tasks}, or budget=full")
    c.rl.batch_prompts //= num_tasks
    if c.rl.batch_prompts % c.rl.minibatches:
      raise ValueError(
          f"configs/baselines/specialist.py: rl.minibatches={c.rl.minibatches} does not divide "
          f"the specialist's {c.rl.batch_prompts} prompts per step (the base's batch / "
          f"{num_tasks}); use a base with rl.minibatches dividing it")
  return c
