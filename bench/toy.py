"""The peer benchmarks' toy world: word-level tokenizer, prompts and reward.

The peer scripts (`shared/bench/peers/toy_tokenizer.py`) define the workload
every framework runs; this module rebuilds the same objects for our side so
nothing of the peers is imported at run time:

- tokenizer: a `tokenizers` WordLevel vocabulary of `vocab_size` entries
  (`<pad>`=0, `<bos>`=1, `<eos>`=2, then `w3` ... `w{V-1}`), whitespace
  pre-tokenizer, wrapped in `transformers.PreTrainedTokenizerFast`;
- prompts: `random.Random(seed)` draws a length in [min_len, max_len] and that
  many words `w{3..V-1}` per prompt, in the same order of calls as the peers
  (so prompt i is the same string in every framework); the sampler sees
  `<bos>` + the prompt's words (Tunix prepends BOS, TRL gets it in the text);
- reward: the fraction of completion words whose id is 7 mod 16 (a random
  policy scores about 1/16, so rewards vary within a group).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
TARGET_MOD, TARGET_REM = 16, 7


def build_tokenizer(vocab_size: int = 2048):
  """The WordLevel tokenizer of the peer workloads (see the module doc)."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  vocab = {PAD: PAD_ID, BOS: BOS_ID, EOS: EOS_ID}
  vocab.update({f"w{i}": i for i in range(3, vocab_size)})
  tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
  tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS,
                                 pad_token=PAD)


def make_prompts(n: int, vocab_size: int = 2048, min_len: int = 8, max_len: int = 16,
                 seed: int = 0) -> list[str]:
  """`n` prompts of `min_len..max_len` random words, the peers' draw for the same seed."""
  rng = random.Random(seed)
  prompts = []
  for _ in range(n):
    length = rng.randint(min_len, max_len)
    prompts.append(" ".join(f"w{rng.randrange(3, vocab_size)}" for _ in range(length)))
  return prompts


def is_target(word: str) -> bool:
  """Whether a word is a "target" word: `w<id>` with id = 7 (mod 16)."""
  return (word.startswith("w") and word[1:].isdigit()
          and int(word[1:]) % TARGET_MOD == TARGET_REM)


def target_fraction_reward(completions: Sequence[str]) -> list[float]:
  """Reward per completion: the fraction of its words that are target words (0 if empty)."""
  rewards = []
  for text in completions:
    words = text.split()
    rewards.append(sum(is_target(w) for w in words) / len(words) if words else 0.0)
  return rewards


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
  """Token ids `[<bos>, words...]` of each prompt (no padding)."""
  return [[BOS_ID] + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
