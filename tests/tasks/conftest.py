"""One sandbox pool per test process for the task tests, and small example fixtures."""

import pytest

from astor_jax.data import world
from astor_jax.execution import ExecutionPool
from astor_jax.tasks.registry import TASKS, get_task


@pytest.fixture(scope="session")
def pool():
  with ExecutionPool(num_workers=2, preload=("coverage",)) as p:
    yield p


@pytest.fixture(scope="session")
def tasks():
  return {name: get_task(name) for name in TASKS}


@pytest.fixture(scope="session")
def tiny_examples():
  """Four test-split examples per task (one per difficulty level)."""
  spec = world.WorldSpec(seed=3, train_per_task=4, eval_per_task=4)
  return {name: world.examples(name, "test", spec) for name in TASKS}
