"""Tiny random Hugging Face models and padded batches for the model tests (offline)."""

import numpy as np
import torch

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              rms_norm_eps=1e-6)


def hf_model(arch: str):
  from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
  )
  if arch == "qwen2":
    return Qwen2ForCausalLM(Qwen2Config(**COMMON, tie_word_embeddings=True))
  if arch == "qwen3":
    # head_dim != hidden / heads, as in the real Qwen3 models.
    return Qwen3ForCausalLM(Qwen3Config(**COMMON, head_dim=24, tie_word_embeddings=False))
  if arch == "llama":
    # llama3 RoPE scaling with a short original context so that all three
    # frequency bands (kept, interpolated, divided) occur for head_dim 16.
    return LlamaForCausalLM(LlamaConfig(
        **COMMON, rope_theta=10_000.0, attention_bias=True, mlp_bias=True,
        tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32}))
  raise ValueError(arch)


def tiny_tokenizer():
  """A WordLevel tokenizer over VOCAB words, wrapped for transformers."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
  vocab.update({f"w{i}": i for i in range(3, VOCAB)})
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                 eos_token="<eos>", unk_token="<pad>")



def padded_batch(seed: int, side: str, batch: int = 3, length: int = 10):
  """(tokens, positions, input_mask) numpy arrays with padding on `side`."""
  rng = np.random.RandomState(seed)
  tokens = rng.randint(3, VOCAB, (batch, length)).astype(np.int32)
  lengths = np.resize([length - 3, length, length - 1, length - 5], batch)
  idx = np.arange(length)[None, :]
  if side == "left":
    mask = idx >= (length - lengths)[:, None]
  else:
    mask = idx < lengths[:, None]
  tokens = np.where(mask, tokens, 0).astype(np.int32)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  return tokens, positions, mask


def torch_logits(model, tokens, positions, mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens, dtype=torch.long),
                 attention_mask=torch.tensor(mask.astype(np.int64)),
                 position_ids=torch.tensor(positions, dtype=torch.long)).logits.numpy()
