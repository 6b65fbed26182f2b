"""Evaluation runner: prompt fitting, chunked generation, pass@2 retries, failed scoring."""

import types

import jax
import numpy as np
import pytest

from astor_jax.data.tokenizer import train_tokenizer
from astor_jax.eval import runner
from astor_jax.tasks.base import Reward, Task

WORDS = ["alpha", "beta", "gamma", "delta", "retry", "ok", "bad"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return train_tokenizer([" ".join(WORDS)] * 20, 280, str(tmp_path_factory.mktemp("tok")))


class EchoTask(Task):
  """Reward 1 when the completion says "ok"; failed answers get a retry prompt."""

  name = "echo"
  metric_names = ("first", "second")

  def build_prompt(self, example):
    return example["prompt"]

  def reference_completion(self, example):
    return "ok"

  def reward(self, example, completion, jobs, results):
    ok = completion.strip() == "ok"
    return Reward(float(ok), {"passed": float(ok)}, "ok" if ok else "wrong")

  def feedback_prompt(self, example, completion, reward):
    return f"retry {example['prompt']}"

  def metrics(self, examples, rewards, retry_rewards=None):
    retry = retry_rewards or [None] * len(rewards)
    second = [max(r.value, s.value if s else 0.0) for r, s in zip(rewards, retry)]
    return {"first": 100 * float(np.mean([r.value for r in rewards])),
            "second": 100 * float(np.mean(second))}


class ScriptedSampler:
  """Answers "ok" to prompts that start with "retry" or "alpha", "bad" otherwise."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    self.calls = []

  def __call__(self, params, prompts, key, *, group_size, temperature, stop):
    self.calls.append(len(prompts))
    texts = [self.tokenizer.decode(p) for p in prompts]
    answers = [self.tokenizer.encode("ok" if t.startswith(("retry", "alpha")) else "bad")
               for t in texts]
    width = max(len(a) for a in answers)
    tokens = np.zeros((len(answers), width), np.int32)
    for i, a in enumerate(answers):
      tokens[i, :len(a)] = a
    return types.SimpleNamespace(tokens=tokens, lengths=np.array([len(a) for a in answers]))


def test_fitting_examples_skips_long_prompts(tokenizer):
  encode = runner.PromptEncoder(tokenizer, max_len=3)
  examples = [{"prompt": "alpha"}, {"prompt": " ".join(WORDS)}, {"prompt": "beta"}]
  kept, ids, skipped = runner.fitting_examples(EchoTask(), examples, encode, limit=5)
  assert kept == [examples[0], examples[2]] and skipped == 1
  assert ids[0] == tokenizer.encode("alpha")


def test_retries_failed_first_attempts_in_fixed_chunks(tokenizer):
  encode = runner.PromptEncoder(tokenizer, max_len=16)
  examples = [{"task": "echo", "prompt": p} for p in ("alpha", "beta", "gamma")]
  sampler = ScriptedSampler(tokenizer)
  evaluator = runner.Evaluator(
      sampler, encode, {"echo": EchoTask()}, {"echo": examples},
      {"echo": [encode(e["prompt"]) for e in examples]}, {"echo": 0}, pool=None,
      temperature=0.0, chunk_prompts=2)
  result = evaluator.evaluate(params=None, key=jax.random.PRNGKey(0))["echo"]
  assert result.metrics == {"first": pytest.approx(100 / 3), "second": 100.0}
  assert (result.examples, result.retries) == (3, 2)
  assert sampler.calls == [2, 2, 2]  # 3 prompts in 2 padded chunks, then 2 retries
  # Every example's completion and reward, the failed ones with their second attempt.
  assert [(s["completion"], s["reward"], s["reason"]) for s in result.samples] == [
      ("ok", 1.0, "ok"), ("bad", 0.0, "wrong"), ("bad", 0.0, "wrong")]
  assert [s["breakdown"] for s in result.samples] == [{"passed": 1.0}, {"passed": 0.0},
                                                      {"passed": 0.0}]
  assert "retry_completion" not in result.samples[0]
  assert [(s["retry_completion"], s["retry_reward"]) for s in result.samples[1:]] == [
      ("ok", 1.0), ("ok", 1.0)]


def test_failed_scoring_is_reward_zero(tokenizer, monkeypatch):
  def broken(*args):
    raise RuntimeError("sandbox died")

  monkeypatch.setattr(runner, "score_batch", broken)
  rewards = runner._score({"echo": EchoTask()}, [{"task": "echo"}] * 2, ["ok", "ok"], None)
  assert [r.value for r in rewards] == [0.0, 0.0]
  assert rewards[0].reason.startswith("scoring failed: RuntimeError")
