"""A byte-level BPE tokenizer trained locally, saved in Hugging Face format.

The tiny world has no pretrained tokenizer to download, so one is trained with
`tokenizers` on the tiny world's own text (prompts and reference answers of
the training split). Byte-level BPE (GPT-2's pre-tokenizer) can encode any
string, so whatever the policy writes decodes back exactly.

The saved directory loads with `transformers.AutoTokenizer.from_pretrained`
as a `PreTrainedTokenizerFast` with `<pad>` (id 0), `<s>` (bos, id 1) and
`</s>` (eos, id 2). Like Qwen2's tokenizer, encoding adds no special tokens:
callers put bos/eos where they need them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
# tokenizer_config.json classes that name no model-specific tokenizer.
_GENERIC_FAST_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | None = None,
                    min_frequency: int = 2) -> PreTrainedTokenizerFast:
  """Trains a byte-level BPE tokenizer on `texts` and optionally saves it.

  Args:
    texts: training text (each string one document).
    vocab_size: total vocabulary size including the 256 byte symbols and the
      three special tokens (`config.data.vocab_size`).
    out_dir: if given, the tokenizer is saved there with `save_pretrained`.
    min_frequency: pairs seen fewer times are not merged.

  Raises:
    ValueError: `vocab_size` cannot hold the byte alphabet and special tokens.
  """
  floor = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
  if vocab_size < floor:
    raise ValueError(f"vocab_size {vocab_size} is too small for a byte-level tokenizer; "
                     f"set config.data.vocab_size >= {floor}")
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tokenizer.train_from_iterator(texts, trainer=trainer)
  fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS,
                                 eos_token=EOS, clean_up_tokenization_spaces=False)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
  return fast


def load_tokenizer(path: str):
  """A tokenizer directory (ours or any Hugging Face one) via AutoTokenizer.

  Raises:
    FileNotFoundError: `path` is not a directory with a tokenizer in it.
  """
  if not os.path.isdir(path) or not any(
      os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
    raise FileNotFoundError(
        f"config.data.tokenizer_path: {path!r} holds no tokenizer (tokenizer.json); "
        "leave it empty to train the tiny-world tokenizer into the workdir")
  # A generic fast tokenizer (ours, saved next to a model's config.json) must load
  # as itself: AutoTokenizer would otherwise pick the class of the config's
  # model_type (e.g. Qwen2Tokenizer), which splits text differently.
  config_file = os.path.join(path, "tokenizer_config.json")
  if os.path.exists(config_file) and os.path.exists(os.path.join(path, "tokenizer.json")):
    with open(config_file, encoding="utf-8") as f:
      tokenizer_class = json.load(f).get("tokenizer_class")
    if tokenizer_class in _GENERIC_FAST_CLASSES:
      return PreTrainedTokenizerFast.from_pretrained(path)
  return AutoTokenizer.from_pretrained(path)
