"""Weight merging: values against numpy, path-naming errors, checkpoints in, HF checkpoint out."""

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
import tokenizers

from astor_jax import merge
from astor_jax.train import checkpoint as ckpt_lib
from astor_jax.train import loop
from astor_jax.train import state as state_lib


def _tree(rng, scale=1.0):
  return {"embed": {"embedding": scale * rng.normal(size=(5, 3)).astype(np.float32)},
          "layers": [{"kernel": scale * rng.normal(size=(3, 3)).astype(np.float32)},
                     {"bias": rng.normal(size=(3,)).astype(ml_dtypes.bfloat16)}]}


def _leaves(tree):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def test_uniform_average_and_task_arithmetic_match_numpy():
  rng = np.random.default_rng(0)
  base = _tree(rng)
  models = [_tree(rng) for _ in range(3)]
  average = merge.uniform_average(models)
  arithmetic = merge.task_arithmetic(base, models, scale=0.7)
  for got_avg, got_ta, b, *ms in zip(_leaves(average), _leaves(arithmetic), _leaves(base),
                                     *[_leaves(m) for m in models]):
    tol = 2e-2 if got_avg.size == 3 else 1e-6  # the bfloat16 leaf rounds once at the end
    np.testing.assert_allclose(got_avg, np.mean(ms, axis=0), rtol=tol, atol=tol)
    np.testing.assert_allclose(got_ta, b + 0.7 * sum(m - b for m in ms), rtol=tol, atol=tol)
  # Results keep each parameter's dtype and the tree's structure.
  assert jax.tree.structure(average) == jax.tree.structure(models[0])
  assert average["layers"][1]["bias"].dtype == ml_dtypes.bfloat16
  assert arithmetic["embed"]["embedding"].dtype == np.float32


def test_task_arithmetic_at_one_over_k_is_the_average_and_at_zero_the_base():
  rng = np.random.default_rng(1)
  base = _tree(rng)
  models = [_tree(rng) for _ in range(4)]
  for a, b in zip(_leaves(merge.task_arithmetic(base, models, 0.25)),
                  _leaves(merge.uniform_average(models))):
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2)
  for a, b in zip(_leaves(merge.task_arithmetic(base, models, 0.0)), _leaves(base)):
    np.testing.assert_array_equal(a, b)


def test_mismatched_models_name_the_parameter_path():
  rng = np.random.default_rng(2)
  base = _tree(rng)
  missing = _tree(rng)
  del missing["layers"][0]["kernel"]
  missing["layers"][0]["other"] = np.zeros(3, np.float32)
  with pytest.raises(merge.MergeError, match=r"spec_b: parameter layers/0/kernel is missing"):
    merge.task_arithmetic(base, [_tree(rng), missing], 0.5, names=["spec_a", "spec_b"])
  misshapen = _tree(rng)
  misshapen["embed"]["embedding"] = np.zeros((6, 3), np.float32)
  with pytest.raises(merge.MergeError,
                     match=r"model 1: parameter embed/embedding has shape \(6, 3\), the base "
                           r"has \(5, 3\)"):
    merge.uniform_average([base, misshapen])
  with pytest.raises(merge.MergeError, match="no models"):
    merge.uniform_average([])
  with pytest.raises(merge.MergeError, match="--base"):
    merge.merge("task_arithmetic", [base])


def _fake_run(workdir, params, tokenizer_dir, steps=3):
  """A finished job's workdir as the loop leaves it: config.json, tokenizer/, checkpoints/."""
  os.makedirs(workdir)
  config = {"phases": ["sft", "rl", "eval"], "rl": {"steps": steps},
            "model": {"preset": "tiny_world", "hf_path": "", "param_dtype": "float32",
                      "dtype": "float32"},
            "data": {"tokenizer_path": tokenizer_dir}}
  with open(os.path.join(workdir, loop.CONFIG_FILE), "w") as f:
    json.dump(config, f)
  state = state_lib.create(params, optax.sgd(0.1), jax.random.PRNGKey(0))
  with ckpt_lib.Checkpointer(os.path.join(workdir, loop.CHECKPOINT_DIR), keep_last=2) as ckpt:
    # An earlier checkpoint with other params: the merge must take step rl.steps.
    ckpt.save(1, {"train": state._replace(params=jax.tree.map(jnp.zeros_like, params)),
                  "utility": {"beta": jnp.ones(4)}}, {"step": 1})
    ckpt.save(steps, {"train": state, "utility": {"beta": jnp.ones(4)}}, {"step": steps})


def test_cli_merges_run_workdirs_into_a_loadable_hf_checkpoint(tmp_path):
  from astor_jax.data.tokenizer import train_tokenizer
  from astor_jax.model import Transformer, get_preset, init_params
  from astor_jax.model.hf import load_pretrained

  tokenizer_dir = str(tmp_path / "tok")
  texts = [f"def f{i}(x):\n  return x + {i}\n" for i in range(50)]
  tokenizer = train_tokenizer(texts, vocab_size=300, out_dir=tokenizer_dir)
  model = Transformer(get_preset("tiny_world", vocab_size=len(tokenizer)))
  base = init_params(model, jax.random.PRNGKey(0))
  sft_dir = str(tmp_path / "sft")
  with ckpt_lib.Checkpointer(sft_dir, keep_last=1) as ckpt:
    ckpt.save(7, state_lib.create(base, optax.sgd(0.1), jax.random.PRNGKey(0)), {"done": True})
  specialists = []
  for i in range(2):
    params = jax.tree.map(lambda x, i=i: x + 0.01 * (i + 1), base)
    _fake_run(str(tmp_path / f"spec{i}"), params, tokenizer_dir)
    specialists.append(params)
  out = str(tmp_path / "merged")
  argv = ["--method=task_arithmetic", "--scale=0.5", f"--base={sft_dir}",
          f"--models={tmp_path / 'spec0'},{tmp_path / 'spec1'}", f"--out={out}"]
  assert merge.main(argv) == 0
  _, merged, _ = load_pretrained(out, load_tokenizer=False)
  expected = jax.tree.map(lambda b, s0, s1: b + 0.5 * ((s0 - b) + (s1 - b)), base, *specialists)
  for got, want in zip(jax.tree.leaves(merged), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  # The tokenizer travels with the weights, encoding as before.
  saved = tokenizers.Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
  assert saved.encode(texts[7]).ids == tokenizer.encode(texts[7])
  with open(os.path.join(out, merge.MERGE_FILE)) as f:
    assert json.load(f)["scale"] == 0.5
  assert not os.path.exists(out + ".tmp")


def test_cli_rejects_bad_input(tmp_path, capsys):
  assert merge.main(["--method=average", f"--models={tmp_path}", f"--out={tmp_path}/o"]) == 2
  assert "--method: unknown merge method 'average'" in capsys.readouterr().err
  assert merge.main(["--method=uniform", f"--out={tmp_path}/o"]) == 2
  assert "--models: missing" in capsys.readouterr().err
  assert merge.main(["--method=uniform", f"--models={tmp_path}", f"--out={tmp_path}/o"]) == 2
  assert "no complete checkpoint" in capsys.readouterr().err
