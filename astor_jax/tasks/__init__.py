"""The four ASTOR code tasks: prompts, answer extraction, rewards and metrics.

  from astor_jax.tasks import get_task, make_tasks, score_batch
  tasks = make_tasks(config)                       # name -> Task, config.tasks order
  future = score_batch(tasks, examples, completions, pool)   # one pool submission
  rewards = future.result()                        # list[Reward], values in [0, 1]
"""

from astor_jax.tasks.base import Example, Reward, Task, score_batch
from astor_jax.tasks.registry import TASKS, get_task, make_tasks, task_ids

__all__ = ["Example", "Reward", "TASKS", "Task", "get_task", "make_tasks", "score_batch",
           "task_ids"]
