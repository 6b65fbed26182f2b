"""Task registry: names to task classes, and tasks built from a job config.

Task ids (the `task_ids` rows of a batch) are positions in `config.tasks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from astor_jax.execution import Limits
from astor_jax.tasks.base import Task
from astor_jax.tasks.code_gen import CodeGenTask
from astor_jax.tasks.code_io import CodeIOTask
from astor_jax.tasks.commit_msg import CommitMsgTask
from astor_jax.tasks.test_gen import TestGenTask

TASKS: dict[str, type[Task]] = {
    CodeIOTask.name: CodeIOTask,
    CodeGenTask.name: CodeGenTask,
    TestGenTask.name: TestGenTask,
    CommitMsgTask.name: CommitMsgTask,
}


def get_task(name: str, **options: Any) -> Task:
  """The task called `name`, built with keyword `options` of its constructor."""
  if name not in TASKS:
    raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
  return TASKS[name](**options)


def task_ids(names: Sequence[str]) -> dict[str, int]:
  """Task name -> id, in `config.tasks` order."""
  return {name: i for i, name in enumerate(names)}


def task_options(config) -> dict[str, dict[str, Any]]:
  """Constructor options of every task from `config.execution` and `config.task_opts`."""
  run_timeout_s = float(config.execution.timeout_s)
  limits = Limits(timeout_s=run_timeout_s + 3.0, memory_mb=int(config.execution.memory_mb))
  opts = config.task_opts
  return {
      "code_io": {"limits": limits, "run_timeout_s": run_timeout_s},
      "code_gen": {"limits": limits, "run_timeout_s": run_timeout_s,
                   "partial_credit": bool(opts.code_gen_partial_credit)},
      "test_gen": {"limits": limits, "run_timeout_s": run_timeout_s,
                   "max_mutants": int(opts.test_gen_max_mutants),
                   "weights": tuple(opts.test_gen_weights)},
      "commit_msg": {"max_diff_chars": int(opts.commit_max_diff_chars),
                     "weights": tuple(opts.commit_weights),
                     "use_wordnet": bool(opts.meteor_wordnet),
                     "rouge_stemmer": bool(opts.rouge_stemmer)},
  }


def make_tasks(config) -> dict[str, Task]:
  """The tasks of `config.tasks`, in that order, configured from the job config."""
  options = task_options(config)
  return {name: get_task(name, **options[name]) for name in config.tasks}
