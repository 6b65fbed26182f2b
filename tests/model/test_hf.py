"""Checkpoint round trips, loading into a mesh, and bad checkpoints."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from astor_jax.model import ModelConfigError, forward, hf, make_mesh
from tests.model.helpers import padded_batch, torch_logits


def _tree_equal(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("arch,max_shard_bytes", [("qwen2", 4 * 2**30), ("llama", 40_000)])
def test_round_trip_identical_and_loads_in_transformers(arch, max_shard_bytes, hf_checkpoints,
                                                        tmp_path):
  from transformers import AutoModelForCausalLM
  path, torch_model = hf_checkpoints[arch]
  model, params, tokenizer = hf.load_pretrained(path)
  out = str(tmp_path / "saved")
  hf.save_pretrained(out, model, params, tokenizer, max_shard_bytes=max_shard_bytes)
  sharded = max_shard_bytes < 2**20
  assert os.path.exists(os.path.join(out, hf.INDEX_FILE)) == sharded
  if sharded:
    with open(os.path.join(out, hf.INDEX_FILE)) as f:
      assert len(set(json.load(f)["weight_map"].values())) > 1
  model2, params2, tokenizer2 = hf.load_pretrained(out)
  assert model2.config == model.config
  _tree_equal(params, params2)
  assert tokenizer2("w5 w7 w9")["input_ids"] == tokenizer("w5 w7 w9")["input_ids"]

  reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(reloaded) is type(torch_model)
  tokens, positions, mask = padded_batch(3, "left")
  ref = torch_logits(torch_model, tokens, positions, mask)
  np.testing.assert_array_equal(torch_logits(reloaded, tokens, positions, mask)[mask],
                                ref[mask])


def test_bfloat16_load_and_save(hf_checkpoints, tmp_path):
  path, _ = hf_checkpoints["qwen3"]
  model, params, _ = hf.load_pretrained(path, dtype="bfloat16", load_tokenizer=False)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  out = str(tmp_path / "bf16")
  hf.save_pretrained(out, model, params)
  _, params2, _ = hf.load_pretrained(out, dtype="bfloat16", load_tokenizer=False)
  model32, params32, _ = hf.load_pretrained(path, load_tokenizer=False)
  _tree_equal(params, params2)
  # bf16 params and compute; logits stay float32 and close to the fp32 model's.
  batch = [jnp.asarray(x) for x in padded_batch(6, "left")]
  logits = forward(model, params, *batch)
  assert logits.dtype == jnp.float32
  ref = forward(model32, params32, *batch)
  mask = np.asarray(batch[2])
  assert np.abs(np.asarray(logits) - np.asarray(ref))[mask].max() < 0.1 * np.abs(ref).max()
  # bf16 storage is the fp32 weights rounded to nearest bf16.
  np.testing.assert_array_equal(
      np.asarray(params["embed_tokens"]),
      np.asarray(params32["embed_tokens"]).astype(jnp.bfloat16))


def test_scan_layers_loads_the_same_model(hf_checkpoints):
  path, _ = hf_checkpoints["qwen3"]
  model, params, _ = hf.load_pretrained(path, load_tokenizer=False)
  smodel, sparams, _ = hf.load_pretrained(path, load_tokenizer=False, scan_layers=True)
  assert sparams["layers"]["self_attn"]["q_proj_kernel"].shape[0] == 2
  np.testing.assert_array_equal(np.asarray(sparams["layers"]["mlp"]["up_proj_kernel"][1]),
                                np.asarray(params["layers_1"]["mlp"]["up_proj_kernel"]))
  tokens, positions, mask = (jnp.asarray(x) for x in padded_batch(4, "left"))
  np.testing.assert_allclose(forward(smodel, sparams, tokens, positions, mask),
                             forward(model, params, tokens, positions, mask), atol=1e-5)


def test_sharded_load_and_forward_equal_single_device(hf_checkpoints):
  assert jax.device_count() == 8
  path, _ = hf_checkpoints["qwen2"]
  model, params, _ = hf.load_pretrained(path, load_tokenizer=False)
  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  _, sparams, _ = hf.load_pretrained(path, mesh=mesh, load_tokenizer=False)
  # Parameters really are split: width over fsdp, heads/MLP/vocab over tensor.
  q = sparams["layers_0"]["self_attn"]["q_proj_kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  assert q.addressable_shards[0].data.shape == (32, 2, 16)
  assert sparams["embed_tokens"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  _tree_equal(params, jax.device_get(sparams))

  tokens, positions, mask = padded_batch(5, "left", batch=4)
  single = forward(model, params, jnp.asarray(tokens), jnp.asarray(positions),
                   jnp.asarray(mask))
  batch_sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  with jax.set_mesh(mesh):
    inputs = [jax.device_put(jnp.asarray(x), batch_sharding) for x in (tokens, positions, mask)]
    logits = forward(model, sparams, *inputs)
  assert logits.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor")
  np.testing.assert_allclose(np.asarray(logits), np.asarray(single), atol=1e-5)


# ------------------------------------------------------------------ bad input


@pytest.fixture
def broken_copy(hf_checkpoints, tmp_path):
  """A writable copy of the llama checkpoint and its tensors (numpy)."""
  from safetensors.numpy import load_file
  src, _ = hf_checkpoints["llama"]
  dst = str(tmp_path / "broken")
  shutil.copytree(src, dst)
  return dst, load_file(os.path.join(dst, hf.SINGLE_FILE))


def _rewrite(path, tensors):
  from safetensors.numpy import save_file
  save_file(tensors, os.path.join(path, hf.SINGLE_FILE))


def test_unknown_model_type_is_named(broken_copy):
  path, _ = broken_copy
  cfg_path = os.path.join(path, hf.CONFIG_FILE)
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg["model_type"] = "gpt_neox"
  with open(cfg_path, "w") as f:
    json.dump(cfg, f)
  with pytest.raises(ModelConfigError, match=r"model_type: got 'gpt_neox'.*'qwen2'"):
    hf.load_pretrained(path)


def test_missing_weight_is_named(broken_copy):
  path, tensors = broken_copy
  del tensors["model.layers.1.mlp.up_proj.weight"]
  _rewrite(path, tensors)
  with pytest.raises(hf.CheckpointError,
                     match=r"missing weight model\.layers\.1\.mlp\.up_proj\.weight.*\[128, 64\]"):
    hf.load_pretrained(path, load_tokenizer=False)


def test_shape_mismatch_is_named(broken_copy):
  path, tensors = broken_copy
  tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
  _rewrite(path, tensors)
  with pytest.raises(hf.CheckpointError,
                     match=r"model\.layers\.0\.self_attn\.k_proj\.weight: shape \[16, 64\].*"
                           r"expected \[32, 64\]"):
    hf.load_pretrained(path, load_tokenizer=False)


def test_unexpected_weight_is_named(broken_copy):
  path, tensors = broken_copy
  tensors["model.layers.2.mlp.up_proj.weight"] = np.zeros((128, 64), np.float32)
  _rewrite(path, tensors)
  with pytest.raises(hf.CheckpointError, match=r"model\.layers\.2\.mlp\.up_proj\.weight"):
    hf.load_pretrained(path, load_tokenizer=False)


def test_wrong_dtype_string_is_named(hf_checkpoints):
  path, _ = hf_checkpoints["qwen2"]
  with pytest.raises(ModelConfigError, match=r"dtype: got 'fp16'.*'bfloat16'"):
    hf.load_pretrained(path, dtype="fp16")
  with pytest.raises(ModelConfigError, match=r"compute_dtype: got 'half'"):
    hf.load_pretrained(path, compute_dtype="half")


def test_missing_files_are_named(tmp_path, hf_checkpoints):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_pretrained(str(tmp_path))
  path, _ = hf_checkpoints["qwen2"]
  shutil.copy(os.path.join(path, hf.CONFIG_FILE), tmp_path / hf.CONFIG_FILE)
  with pytest.raises(hf.CheckpointError, match="model.safetensors"):
    hf.load_pretrained(str(tmp_path))
