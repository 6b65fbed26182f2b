"""Evaluation: every task's held-out split, its paper metrics, one row of the results table.

For each task the runner encodes the prompts, generates one completion per
prompt (greedy at `eval.temperature = 0`, the pass@1 protocol), scores them in
the execution pool and asks the task for its metrics. Tasks with a second
attempt (code generation's pass@2, Aider's protocol) get one: every failed
first attempt is re-prompted with `task.feedback_prompt` (the failing tests'
output) and scored again.

Prompts that do not fit the largest prompt bucket are left out and counted
(`skipped_prompts` in the returned counts); a feedback prompt that does not fit
means no second attempt for that example (it counts as failed).

`PromptEncoder` is shared with the training loop so that the policy sees the
same prompt tokens in RL and in evaluation. With a tokenizer that has a chat
template (instruct checkpoints loaded with `model.preset = "hf"`) the prompt is
wrapped as one user turn with the generation prompt appended, as TRL does for
conversational data; the tiny-world tokenizer has none and gets raw text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from astor_jax.execution import ExecutionPool
from astor_jax.rollout.sampler import Sampler, StopCondition
from astor_jax.tasks.base import Example, Reward, Task, score_batch, zero


class PromptEncoder:
  """Text prompts -> token ids, with the tokenizer's chat template when it has one.

  Args:
    tokenizer: a transformers tokenizer.
    max_len: the largest prompt bucket; longer prompts are reported as None.
  """

  def __init__(self, tokenizer: Any, max_len: int):
    self.tokenizer = tokenizer
    self.max_len = max_len
    self.chat = bool(getattr(tokenizer, "chat_template", None))

  def __call__(self, text: str) -> list[int] | None:
    if self.chat:
      ids = self.tokenizer.apply_chat_template(
          [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
      if isinstance(ids, Mapping):  # transformers may return a BatchEncoding
        ids = ids["input_ids"]
      ids = list(ids)
    else:
      ids = self.tokenizer.encode(text, add_special_tokens=False)
    return ids if 0 < len(ids) <= self.max_len else None

  def stop(self) -> StopCondition:
    """Rows end at the tokenizer's EOS id."""
    return StopCondition(eos_ids=(int(self.tokenizer.eos_token_id),))

  def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
    """Completion texts of sampler rows, special tokens (EOS) dropped."""
    return self.tokenizer.batch_decode(
        [row[:n].tolist() for row, n in zip(np.asarray(tokens), np.asarray(lengths))],
        skip_special_tokens=True)


@dataclasses.dataclass
class TaskEval:
  """One task's evaluation.

  Attributes:
    metrics: the task's paper metrics (percent).
    examples: how many examples were evaluated.
    skipped_prompts: examples left out because the prompt does not fit.
    retries: second attempts made.
    mean_reward: mean first-attempt reward.
    samples: per example, in order: its `id`, the `completion`, its `reward`,
      `reason` and `breakdown`, and for a second attempt the same fields
      prefixed `retry_` (what a reviewer reads to see what a metric counted).
  """

  metrics: dict[str, float]
  examples: int
  skipped_prompts: int
  retries: int
  mean_reward: float
  samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  def summary(self) -> dict[str, Any]:
    """Every field but `samples` (the per-task details of `results/eval.json`)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.name != "samples"}


def _sample_record(prefix: str, completion: str, reward: Reward) -> dict[str, Any]:
  return {f"{prefix}completion": completion, f"{prefix}reward": float(reward.value),
          f"{prefix}reason": reward.reason,
          f"{prefix}breakdown": {k: float(v) for k, v in reward.breakdown.items()}}


def fitting_examples(task: Task, examples: Sequence[Example], encode: PromptEncoder,
                     limit: int) -> tuple[list[Example], list[list[int]], int]:
  """The first `limit` examples whose prompt fits, their token ids, and how many did not fit."""
  kept, ids, skipped = [], [], 0
  for example in examples:
    if len(kept) == limit:
      break
    tokens = encode(task.build_prompt(example))
    if tokens is None:
      skipped += 1
      continue
    kept.append(example)
    ids.append(tokens)
  return kept, ids, skipped


def _score(tasks: Mapping[str, Task], examples: Sequence[Example], completions: Sequence[str],
           pool: ExecutionPool) -> list[Reward]:
  """Blocking scoring; a failed scoring call gives reward 0 with the reason, never a crash."""
  try:
    return score_batch(tasks, examples, completions, pool).result()
  except Exception as e:  # noqa: BLE001 - a broken sandbox must not end the evaluation
    return [zero(f"scoring failed: {type(e).__name__}: {e}") for _ in examples]


class Evaluator:
  """Runs the evaluation of a policy on fixed examples (built once, called per policy).

  Args:
    sampler: the rollout engine.
    encode: prompt encoder (shared with training).
    tasks: task name -> Task, in `config.tasks` order.
    examples: task name -> held-out examples (already limited and fitting).
    prompt_ids: task name -> their prompt token ids.
    skipped: task name -> examples left out for length.
    pool: the execution pool.
    temperature: sampling temperature (0: greedy).
    chunk_prompts: prompts per sampler call (bounds memory; one compile per bucket).
  """

  def __init__(self, sampler: Sampler, encode: PromptEncoder, tasks: Mapping[str, Task],
               examples: Mapping[str, Sequence[Example]],
               prompt_ids: Mapping[str, Sequence[Sequence[int]]], skipped: Mapping[str, int],
               pool: ExecutionPool, *, temperature: float, chunk_prompts: int):
    self.sampler = sampler
    self.encode = encode
    self.tasks = tasks
    self.examples = examples
    self.prompt_ids = prompt_ids
    self.skipped = skipped
    self.pool = pool
    self.temperature = temperature
    self.chunk_prompts = chunk_prompts

  def _generate(self, params: Any, prompts: Sequence[Sequence[int]], key: jax.Array) -> list[str]:
    """One completion per prompt, in chunks of a fixed size (the last one padded)."""
    out: list[str] = []
    for start in range(0, len(prompts), self.chunk_prompts):
      chunk = list(prompts[start:start + self.chunk_prompts])
      real = len(chunk)
      chunk += [chunk[-1]] * (self.chunk_prompts - real)
      result = self.sampler(params, chunk, jax.random.fold_in(key, start), group_size=1,
                            temperature=self.temperature, stop=self.encode.stop())
      tokens, lengths = jax.device_get((result.tokens, result.lengths))
      out.extend(self.encode.decode(tokens[:real], lengths[:real]))
    return out

  def evaluate_task(self, name: str, params: Any, key: jax.Array) -> TaskEval:
    task, examples = self.tasks[name], list(self.examples[name])
    if not examples:
      return TaskEval({}, 0, self.skipped[name], 0, float("nan"))
    completions = self._generate(params, self.prompt_ids[name], key)
    rewards = _score(self.tasks, examples, completions, self.pool)
    retry_rewards: list[Reward | None] | None = None
    retries = 0
    samples = [{"id": example.get("id", str(i)), **_sample_record("", text, reward)}
               for i, (example, text, reward) in enumerate(zip(examples, completions, rewards))]
    if type(task).feedback_prompt is not Task.feedback_prompt:
      retry_rewards = [None] * len(examples)
      failed = [i for i, r in enumerate(rewards) if r.value < 1.0]
      second = []
      for i in failed:
        ids = self.encode(task.feedback_prompt(examples[i], completions[i], rewards[i]))
        if ids is not None:
          second.append((i, ids))
      if second:
        texts = self._generate(params, [ids for _, ids in second], jax.random.fold_in(key, 1))
        scored = _score(self.tasks, [examples[i] for i, _ in second], texts, self.pool)
        for (i, _), text, reward in zip(second, texts, scored):
          retry_rewards[i] = reward
          samples[i].update(_sample_record("retry_", text, reward))
        retries = len(second)
    metrics = task.metrics(examples, rewards, retry_rewards)
    return TaskEval(dict(metrics), len(examples), self.skipped[name], retries,
                    float(np.mean([r.value for r in rewards])), samples)

  def evaluate(self, params: Any, key: jax.Array) -> dict[str, TaskEval]:
    """All tasks; task i uses `fold_in(key, i)`."""
    return {name: self.evaluate_task(name, params, jax.random.fold_in(key, i))
            for i, name in enumerate(self.tasks)}


def task_metrics(results: Mapping[str, TaskEval]) -> dict[str, dict[str, float]]:
  """task -> metrics, the shape `eval.table.write_results_table` takes."""
  return {name: dict(r.metrics) for name, r in results.items()}
