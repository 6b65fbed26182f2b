"""Text built from examples through the tasks: SFT pairs and tokenizer training text.

These live with the tasks (not in `data/`) because the prompt and answer
formats are the tasks' own; `data/` stays below `tasks/` in the layer order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from astor_jax.data import world
from astor_jax.data.tokenizer import train_tokenizer
from astor_jax.tasks.base import Example, Task


def sft_pairs(tasks_by_name: Mapping[str, Task],
              examples: Sequence[Example]) -> list[tuple[str, str]]:
  """(prompt, reference completion) for each example, in order (the SFT corpus)."""
  return [(tasks_by_name[e["task"]].build_prompt(e),
           tasks_by_name[e["task"]].reference_completion(e)) for e in examples]


def tiny_world_sft_pairs(tasks_by_name: Mapping[str, Task],
                         spec: world.WorldSpec) -> list[tuple[str, str]]:
  """The warm-start corpus: every task's training split, tasks interleaved."""
  per_task = [world.examples(name, "train", spec) for name in tasks_by_name]
  interleaved = [e for group in zip(*per_task) for e in group]
  return sft_pairs(tasks_by_name, interleaved)


def tokenizer_texts(tasks_by_name: Mapping[str, Task], spec: world.WorldSpec) -> Iterator[str]:
  """Prompt + answer text of the training split (the tokenizer's corpus)."""
  for prompt, answer in tiny_world_sft_pairs(tasks_by_name, spec):
    yield prompt + answer


def train_tiny_world_tokenizer(tasks_by_name: Mapping[str, Task], spec: world.WorldSpec,
                               vocab_size: int, out_dir: str | None = None):
  """Trains (and saves, with `out_dir`) the tiny world's tokenizer."""
  return train_tokenizer(tokenizer_texts(tasks_by_name, spec), vocab_size, out_dir)


def train_tokenizer_on(tasks_by_name: Mapping[str, Task], examples: Sequence[Example],
                       vocab_size: int, out_dir: str | None = None):
  """Trains a tokenizer on the prompts and answers of given (training) examples.

  Same result as `train_tiny_world_tokenizer` when `examples` is the tiny
  world's training split, without generating it again (e.g. read from the
  TFDS sources).
  """
  texts = (p + a for p, a in sft_pairs(tasks_by_name, examples))
  return train_tokenizer(texts, vocab_size, out_dir)
