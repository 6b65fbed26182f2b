"""Commit-message generation from a diff (MCMD-style), scored by text similarity.

Example fields (besides `task`, `id`, `difficulty`, `source`):
  diff     a unified diff.
  message  the reference commit message.

Answer: the message as plain text; its first non-empty line (the subject) is
compared with the reference's first line, as MCMD evaluates subjects.

Reward: the weighted mean of BLEU / 100, ROUGE-L F1 and normalized METEOR
(`text_metrics`), in [0, 1]. METEOR is divided by the reference's score
against itself (METEOR's fragmentation penalty keeps even an exact copy below 1),
so an exact message earns reward 1. No code runs, so the task needs no jobs.

Metrics (percent, averaged over examples): BLEU, ROUGE-L and METEOR, each
exactly the library's sentence-level value (un-normalized).
"""

from __future__ import annotations

from collections.abc import Sequence

from astor_jax.execution import Job, Result
from astor_jax.tasks import text_metrics
from astor_jax.tasks.base import Example, Reward, Task, mean, zero
from astor_jax.tasks.extract import first_line

_ZERO = {"bleu": 0.0, "rouge_l": 0.0, "meteor": 0.0}


def subject(message: str) -> str:
  return first_line(message) or ""


class CommitMsgTask(Task):
  """Commit messages rewarded by BLEU, ROUGE-L and METEOR.

  Args:
    max_diff_chars: longer diffs are cut (with a marker) in the prompt.
    weights: weights of (BLEU, ROUGE-L, METEOR) in the reward.
    use_wordnet: METEOR's synonym stage (False: exact + stem only).
    rouge_stemmer: Porter stemming in ROUGE-L.
  """

  name = "commit_msg"
  metric_names = ("bleu", "rouge_l", "meteor")

  def __init__(self, max_diff_chars: int = 2000, weights: Sequence[float] = (1.0, 1.0, 1.0),
               use_wordnet: bool = True, rouge_stemmer: bool = True):
    if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
      raise ValueError(f"commit_msg weights must be 3 non-negative numbers with a positive "
                       f"sum (bleu, rouge_l, meteor); got {tuple(weights)}")
    self.max_diff_chars = max_diff_chars
    self.weights = tuple(float(w) for w in weights)
    self.use_wordnet = use_wordnet
    self.rouge_stemmer = rouge_stemmer

  def build_prompt(self, example: Example) -> str:
    diff = example["diff"]
    if len(diff) > self.max_diff_chars:
      diff = diff[:self.max_diff_chars] + "\n[diff truncated]"
    return f"Write a one-line commit message for this diff.\n{diff.rstrip()}\n"

  def reference_completion(self, example: Example) -> str:
    return subject(example["message"])

  def scores(self, hypothesis: str, reference: str) -> dict[str, float]:
    """BLEU (0-100), ROUGE-L and METEOR (0-1) of two subjects."""
    return {
        "bleu": text_metrics.sentence_bleu(hypothesis, reference),
        "rouge_l": text_metrics.rouge_l(hypothesis, reference, self.rouge_stemmer),
        "meteor": text_metrics.meteor(hypothesis, reference, self.use_wordnet),
    }

  def reward(self, example: Example, completion: str, jobs: Sequence[Job],
             results: Sequence[Result]) -> Reward:
    del jobs, results
    reference = subject(example["message"])
    if not reference:
      raise ValueError(f"commit_msg example {example.get('id')!r} has an empty message")
    hypothesis = first_line(completion)
    if hypothesis is None:
      return zero("empty commit message", **_ZERO)
    scores = self.scores(hypothesis, reference)
    best_meteor = text_metrics.meteor(reference, reference, self.use_wordnet)
    parts = (scores["bleu"] / 100.0, scores["rouge_l"],
             min(scores["meteor"] / best_meteor, 1.0) if best_meteor > 0 else 0.0)
    value = sum(w * p for w, p in zip(self.weights, parts)) / sum(self.weights)
    value = min(max(value, 0.0), 1.0)
    return Reward(value, scores, f"bleu {scores['bleu']:.1f}, rouge-l {scores['rouge_l']:.2f}, "
                  f"meteor {scores['meteor']:.2f}")

  def metrics(self, examples: Sequence[Example], rewards: Sequence[Reward],
              retry_rewards=None) -> dict[str, float]:
    del examples, retry_rewards
    return {
        "bleu": mean([r.breakdown.get("bleu", 0.0) for r in rewards]),
        "rouge_l": 100.0 * mean([r.breakdown.get("rouge_l", 0.0) for r in rewards]),
        "meteor": 100.0 * mean([r.breakdown.get("meteor", 0.0) for r in rewards]),
    }
