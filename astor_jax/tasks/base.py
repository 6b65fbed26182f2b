"""The task interface and batch scoring through one execution-pool submission.

An *example* is a JSON-serializable dict with at least `task` (the task name),
`id` (unique within the task), `difficulty` (an int; 0 when unknown) and
`source` (`tiny_world`, `cruxeval`, `humaneval`, ...), plus the task's own
fields listed in each task module's docstring.

Scoring is split so that the training loop can overlap it with device work:

  jobs = task.make_jobs(example, completion)           # host, cheap
  results = pool.run(jobs)                              # sandbox, slow
  reward = task.reward(example, completion, jobs, results)

`score_batch` does this for a batch of mixed tasks with a single
`pool.submit`, and returns a future. Rewards lie in [0, 1]; a malformed or
hostile completion gets 0 with a reason, never an exception.
"""

from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from astor_jax.execution import ExecutionPool, Job, Result

Example = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Reward:
  """A scored completion.

  Attributes:
    value: the training reward, in [0, 1].
    breakdown: named components (metric inputs such as `passed` or `bleu`).
    reason: one line saying why the value is what it is.
    feedback: failing tests' output, for a second attempt (code generation).
  """

  value: float
  breakdown: Mapping[str, float]
  reason: str
  feedback: str = ""

  def __post_init__(self):
    if not 0.0 <= self.value <= 1.0:
      raise ValueError(f"reward {self.value} outside [0, 1] ({self.reason})")


def zero(reason: str, **breakdown: float) -> Reward:
  """Reward 0 for a completion that could not be scored further."""
  return Reward(0.0, dict(breakdown), reason)


class Task(abc.ABC):
  """One code task: prompts, answer convention, reward and paper metrics."""

  name: ClassVar[str]
  metric_names: ClassVar[tuple[str, ...]]

  @abc.abstractmethod
  def build_prompt(self, example: Example) -> str:
    """The prompt text the policy completes."""

  @abc.abstractmethod
  def reference_completion(self, example: Example) -> str:
    """A known-correct completion in the task's answer format (SFT target)."""

  def make_jobs(self, example: Example, completion: str) -> list[Job]:
    """Sandbox jobs needed to score `completion` (none by default)."""
    del example, completion
    return []

  @abc.abstractmethod
  def reward(self, example: Example, completion: str, jobs: Sequence[Job],
             results: Sequence[Result]) -> Reward:
    """Scores `completion` from the results of `make_jobs`' jobs (same order)."""

  @abc.abstractmethod
  def metrics(self, examples: Sequence[Example], rewards: Sequence[Reward],
              retry_rewards: Sequence[Reward | None] | None = None) -> dict[str, float]:
    """The paper's metrics for this task, averaged over `examples`.

    Args:
      examples: the evaluated examples.
      rewards: first-attempt rewards, aligned with `examples`.
      retry_rewards: second-attempt rewards (code generation's pass@2); None
        where no second attempt was made.
    """

  def feedback_prompt(self, example: Example, completion: str, reward: Reward) -> str:
    """The prompt of a second attempt after a failed first one."""
    raise NotImplementedError(f"task {self.name!r} has no second attempt")

  def score(self, examples: Sequence[Example], completions: Sequence[str],
            pool: ExecutionPool) -> list[Reward]:
    """Scores a batch of this task's examples (blocking)."""
    return score_batch({self.name: self}, examples, completions, pool).result()

  def evaluate(self, examples: Sequence[Example], completions: Sequence[str],
               pool: ExecutionPool) -> dict[str, float]:
    """Scores single attempts and returns the task's metrics."""
    return self.metrics(examples, self.score(examples, completions, pool))


def score_batch(tasks_by_name: Mapping[str, Task], examples: Sequence[Example],
                completions: Sequence[str],
                pool: ExecutionPool) -> concurrent.futures.Future[list[Reward]]:
  """Scores a mixed-task batch with one `pool.submit`; returns a future of rewards.

  Jobs are built on the calling thread (cheap), all of them go to the pool in
  one submission, and rewards are computed when the results arrive, so the
  caller can run device work in between. Rewards of tasks without jobs (commit
  messages) are also computed then.

  Raises:
    KeyError: an example's `task` is not in `tasks_by_name`.
    ValueError: `examples` and `completions` differ in length.
  """
  if len(examples) != len(completions):
    raise ValueError(f"{len(examples)} examples but {len(completions)} completions")
  per_item: list[list[Job]] = []
  for example, completion in zip(examples, completions):
    task = _task_for(tasks_by_name, example)
    per_item.append(list(task.make_jobs(example, completion)))
  flat = [job for jobs in per_item for job in jobs]
  out: concurrent.futures.Future[list[Reward]] = concurrent.futures.Future()

  def finish(results: Sequence[Result]) -> None:
    rewards, start = [], 0
    for example, completion, jobs in zip(examples, completions, per_item):
      task = _task_for(tasks_by_name, example)
      rewards.append(task.reward(example, completion, jobs, results[start:start + len(jobs)]))
      start += len(jobs)
    out.set_result(rewards)

  def on_done(inner: concurrent.futures.Future) -> None:
    try:
      finish(inner.result())
    except BaseException as exc:  # noqa: BLE001 - delivered to the caller via the future
      out.set_exception(exc)

  if flat:
    pool.submit(flat).add_done_callback(on_done)
  else:
    try:
      finish([])
    except BaseException as exc:  # noqa: BLE001
      out.set_exception(exc)
  return out


def _task_for(tasks_by_name: Mapping[str, Task], example: Example) -> Task:
  name = example.get("task")
  if name not in tasks_by_name:
    raise KeyError(f"example {example.get('id')!r} has task {name!r}, which is not among "
                   f"the scored tasks {sorted(tasks_by_name)}")
  return tasks_by_name[name]


def mean(values: Sequence[float]) -> float:
  return float(sum(values) / len(values)) if values else 0.0
