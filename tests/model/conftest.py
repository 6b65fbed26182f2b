"""Session fixture: tiny random Hugging Face checkpoints shared by the model tests."""

import pytest
import torch

from tests.model.helpers import hf_model, tiny_tokenizer


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
  """arch -> (checkpoint dir, torch model in eval mode), random non-trivial weights."""
  torch.manual_seed(0)
  out = {}
  for arch in ("qwen2", "qwen3", "llama"):
    model = hf_model(arch).eval()
    with torch.no_grad():
      for p in model.parameters():  # norms != 1, biases != 0: every tensor matters
        p.add_(0.05 * torch.randn_like(p))
    path = str(tmp_path_factory.mktemp(f"hf_{arch}"))
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    out[arch] = (path, model)
  return out

