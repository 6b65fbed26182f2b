"""SFT warm start: rows and masks, the stateless order, the loss, training and its cache."""

import importlib.util
import os

import jax
import numpy as np
import pytest

from astor_jax.data.tokenizer import train_tokenizer
from astor_jax.model import ModelConfig, Transformer, init_params, make_mesh, param_shardings
from astor_jax.train import observe, sft

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAIRS = [(f"Q: what is {a} + {b}?\nA: ", f"{a + b}") for a in range(8) for b in range(8)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  texts = [p + c for p, c in PAIRS] * 4
  return train_tokenizer(texts, 300, str(tmp_path_factory.mktemp("tok")))


def _config(steps=12):
  spec = importlib.util.spec_from_file_location("_astor_config",
                                                os.path.join(REPO, "configs", "astor.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("smoke")
  c.sft.steps = steps
  c.sft.batch_size = 8
  c.sft.learning_rate = 3e-3
  c.sft.warmup_steps = 2
  c.sft.checkpoint_every_steps = 5
  c.log.progress_bar = False
  return c


def _model(vocab_size):
  return Transformer(ModelConfig(model_type="qwen2", vocab_size=vocab_size, hidden_size=32,
                                 intermediate_size=64, num_layers=1, num_heads=2,
                                 num_kv_heads=1, head_dim=16, tie_word_embeddings=True))


def test_rows_mask_only_completion_and_eos(tokenizer):
  rows = sft.encode_pairs(tokenizer, PAIRS[:3] + [("x" * 400, "y")], max_len=64)
  assert rows.dropped == 1 and rows.tokens.shape == (3, 32)
  for i, (prompt, completion) in enumerate(PAIRS[:3]):
    p = tokenizer.encode(prompt, add_special_tokens=False)
    c = tokenizer.encode(completion, add_special_tokens=False) + [tokenizer.eos_token_id]
    n = len(p) + len(c)
    np.testing.assert_array_equal(rows.tokens[i, :n], p + c)
    assert (rows.tokens[i, n:] == tokenizer.pad_token_id).all()
    np.testing.assert_array_equal(np.flatnonzero(rows.loss_mask[i]), np.arange(len(p), n))
    assert rows.input_mask[i].sum() == n
    np.testing.assert_array_equal(rows.positions[i, :n], np.arange(n))


def test_rows_raise_when_nothing_fits(tokenizer):
  with pytest.raises(ValueError, match="fits in 4 tokens"):
    sft.encode_pairs(tokenizer, PAIRS[:2], max_len=4)


def test_batch_order_is_a_pure_function_of_the_step():
  num_rows, batch = 10, 4
  epoch0 = np.concatenate([sft.batch_indices(num_rows, batch, s, seed=3) for s in range(5)])
  # Every epoch is a permutation of all rows.
  assert sorted(epoch0[:10]) == list(range(10)) and sorted(epoch0[10:20]) == list(range(10))
  assert not np.array_equal(epoch0[:10], epoch0[10:20])
  np.testing.assert_array_equal(sft.batch_indices(num_rows, batch, 3, seed=3), epoch0[12:16])
  assert not np.array_equal(sft.batch_indices(num_rows, batch, 0, seed=4), epoch0[:4])


def test_loss_is_the_mean_nll_of_masked_tokens(tokenizer):
  model = _model(len(tokenizer))
  params = init_params(model, jax.random.PRNGKey(0))
  rows = sft.encode_pairs(tokenizer, PAIRS[:4], max_len=64)
  loss, count = sft.sft_loss(model, params, rows.tokens, rows.positions, rows.input_mask,
                             rows.loss_mask)
  logits = np.asarray(model.apply({"params": params}, rows.tokens, rows.positions,
                                  np.asarray(_causal(rows.input_mask)))[0], np.float64)
  top = logits.max(-1, keepdims=True)
  logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  nll = [-logp[i, t - 1, rows.tokens[i, t]] for i, t in zip(*np.nonzero(rows.loss_mask))]
  assert int(count) == len(nll)
  np.testing.assert_allclose(float(loss), np.mean(nll), rtol=1e-4)


def _causal(input_mask):
  from astor_jax.model import causal_mask

  return causal_mask(input_mask)


def test_run_trains_resumes_and_caches(tokenizer, tmp_path):
  mesh = make_mesh()
  model = _model(len(tokenizer))
  params = init_params(model, jax.random.PRNGKey(0), mesh)
  rows = sft.encode_pairs(tokenizer, PAIRS, max_len=64)
  workdir = str(tmp_path)

  def run(config, stop_after=None):
    calls = {"n": 0}

    def should_stop():
      calls["n"] += 1
      return "SIGTERM" if stop_after is not None and calls["n"] > stop_after else None

    with observe.MetricWriter(workdir, tensorboard=False) as writer:
      return sft.run(config, workdir, model=model, params=params, rows=rows, mesh=mesh,
                     params_sharding=param_shardings(model, mesh), writer=writer,
                     should_stop=should_stop, progress=observe.progress_bar)

  config = _config()
  straight = run(config)
  assert straight.done and not straight.skipped
  losses = [r["loss"] for r in observe.read_metrics(os.path.join(workdir, "metrics.jsonl"))]
  assert len(losses) == 12 and losses[-1] < 0.9 * losses[0]

  cached = run(config)
  assert cached.done and cached.skipped
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(cached.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  changed = _config()
  changed.sft.learning_rate = 1e-3
  with pytest.raises(ValueError, match="config.sft: the warm start cached"):
    run(changed)

  # Stopped after 7 steps, then resumed: the same params as the straight run.
  config.sft.cache_dir = str(tmp_path / "other")
  stopped = run(config, stop_after=7)
  assert not stopped.done and stopped.params is None
  resumed = run(config)
  assert resumed.done and not resumed.skipped
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cache_dir_is_absolute(tmp_path, monkeypatch):
  # orbax refuses relative checkpoint paths (an async save failed at SFT step
  # 100 with --config.sft.cache_dir=runs/x); the directory is made absolute.
  monkeypatch.chdir(tmp_path)
  c = _config()
  c.sft.cache_dir = "runs/shared_sft"
  assert sft.cache_dir(c, "w") == str(tmp_path / "runs" / "shared_sft")
  c.sft.cache_dir = ""
  assert sft.cache_dir(c, "w") == str(tmp_path / "w" / sft.DIR_NAME)
