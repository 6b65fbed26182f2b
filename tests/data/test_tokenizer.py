"""Tiny-world tokenizer (HF format) and SFT corpus; prompts fit the tiny model's budget."""

import pytest
from transformers import AutoTokenizer

from astor_jax.data import tokenizer as tok
from astor_jax.data import world
from astor_jax.tasks import corpus
from astor_jax.tasks.registry import TASKS, get_task

SPEC = world.WorldSpec(seed=0, train_per_task=40, eval_per_task=16)
MAX_PROMPT_TOKENS = 150
MAX_ANSWER_TOKENS = 64


@pytest.fixture(scope="module")
def tasks():
  return {name: get_task(name) for name in TASKS}


@pytest.fixture(scope="module")
def examples():
  return {(name, split): world.examples(name, split, SPEC)
          for name in TASKS for split in ("train", "test")}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tasks, examples):
  """Trained like `corpus.train_tiny_world_tokenizer`, on a smaller world."""
  out = tmp_path_factory.mktemp("tokenizer")
  train = [e for name in TASKS for e in examples[name, "train"]]
  texts = [p + a for p, a in corpus.sft_pairs(tasks, train)]
  tok.train_tokenizer(texts, vocab_size=2048, out_dir=str(out))
  return str(out)


def test_loads_with_auto_tokenizer_and_has_special_tokens(saved):
  t = AutoTokenizer.from_pretrained(saved)
  assert (t.pad_token_id, t.bos_token_id, t.eos_token_id) == (0, 1, 2)
  assert (t.pad_token, t.bos_token, t.eos_token) == ("<pad>", "<s>", "</s>")
  assert 259 < len(t) <= 2048
  assert tok.load_tokenizer(saved).get_vocab() == t.get_vocab()


def test_loads_as_itself_next_to_a_model_config(saved, tmp_path):
  # A checkpoint directory holds config.json (model_type qwen2) beside the
  # tokenizer; AutoTokenizer alone would pick Qwen2Tokenizer and split differently.
  import json
  import shutil

  checkpoint = tmp_path / "checkpoint"
  shutil.copytree(saved, checkpoint)
  (checkpoint / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
  text = "def f(x):\n    return x * 3 + 1\n[ANSWER]f(2)[/ANSWER]"
  original, reloaded = tok.load_tokenizer(saved), tok.load_tokenizer(str(checkpoint))
  assert reloaded.encode(text) == original.encode(text)
  assert reloaded.get_vocab() == original.get_vocab()


@pytest.mark.parametrize("text", [
    "def f(xs):\n    total = 0\n    for v in xs:\n        total += v\n    return total\n",
    "[ANSWER]f([1, 2], 'ab')[/ANSWER]", "Ünïcödé ✓ 漢字 \t tabs", ""])
def test_any_text_round_trips(saved, text):
  t = AutoTokenizer.from_pretrained(saved)
  ids = t.encode(text, add_special_tokens=False)
  assert t.decode(ids) == text
  assert t.bos_token_id not in ids and t.eos_token_id not in ids


def test_prompts_and_answers_fit_the_tiny_model(saved, tasks, examples):
  t = AutoTokenizer.from_pretrained(saved)
  for name in TASKS:
    for split in ("train", "test"):
      for e in examples[name, split]:
        prompt = tasks[name].build_prompt(e)
        answer = tasks[name].reference_completion(e)
        assert len(t.encode(prompt, add_special_tokens=False)) <= MAX_PROMPT_TOKENS, prompt
        assert len(t.encode(answer, add_special_tokens=False)) <= MAX_ANSWER_TOKENS, answer


def test_sft_pairs_interleave_tasks_with_reference_answers(tasks):
  small = world.WorldSpec(seed=1, train_per_task=3, eval_per_task=1)
  pairs = corpus.tiny_world_sft_pairs(tasks, small)
  assert len(pairs) == 3 * len(TASKS)
  firsts = [world.examples(name, "train", small)[0] for name in TASKS]
  assert pairs[:len(TASKS)] == [(tasks[e["task"]].build_prompt(e),
                                 tasks[e["task"]].reference_completion(e)) for e in firsts]


def test_bad_vocab_size_and_missing_directory(tmp_path):
  with pytest.raises(ValueError, match="config.data.vocab_size"):
    tok.train_tokenizer(["abc"], vocab_size=100)
  with pytest.raises(FileNotFoundError, match="config.data.tokenizer_path"):
    tok.load_tokenizer(str(tmp_path))
