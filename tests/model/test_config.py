"""ModelConfig <-> HF config, presets, initialization, masks and mesh rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from astor_jax.model import (
    PRESETS,
    ModelConfig,
    ModelConfigError,
    Transformer,
    cache_mask,
    causal_mask,
    get_preset,
    init_params,
    make_mesh,
)
from astor_jax.model.sharding import logical_to_spec
from astor_jax.model.transformer import param_logical_axes, param_shapes, rope_inv_freq
from tests.model.helpers import hf_model


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama"])
def test_hf_config_round_trip_through_transformers(arch):
  from transformers import AutoConfig
  hf = hf_model(arch).config.to_dict()
  config = ModelConfig.from_hf_config(hf)
  assert config.qk_norm == (arch == "qwen3")
  assert config.attention_bias == (arch in ("qwen2", "llama"))
  assert config.head_dim == (24 if arch == "qwen3" else 16)
  again = ModelConfig.from_hf_config(config.to_hf_config())
  assert again == config
  # transformers parses what we write into the same architecture.
  reparsed = AutoConfig.for_model(**config.to_hf_config()).to_dict()
  assert ModelConfig.from_hf_config(reparsed) == config


def test_old_style_rope_keys_and_llama3_frequencies():
  hf = dict(model_type="llama", vocab_size=10, hidden_size=64, intermediate_size=8,
            num_hidden_layers=1, num_attention_heads=4, rope_theta=10000.0,
            rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
  config = ModelConfig.from_hf_config(hf)
  assert config.rope_scaling_dict["rope_type"] == "llama3" and config.rope_theta == 10000.0
  inv = rope_inv_freq(config)
  plain = 1.0 / 10000.0 ** (np.arange(0, 16, 2) / 16)
  wavelen = 2 * np.pi / plain
  short, long_ = wavelen < 32 / 4, wavelen > 32 / 1
  assert short.any() and long_.any() and (~short & ~long_).any()
  np.testing.assert_allclose(inv[short], plain[short])
  np.testing.assert_allclose(inv[long_], plain[long_] / 8)
  mid = ~short & ~long_
  assert np.all((inv[mid] < plain[mid]) & (inv[mid] > plain[mid] / 8))


@pytest.mark.parametrize("hf,match", [
    (dict(model_type="mistral"), r"model_type: got 'mistral'"),
    (dict(model_type="qwen2", vocab_size=8, hidden_size=8, intermediate_size=8,
          num_attention_heads=2), r"num_hidden_layers: missing"),
    (dict(model_type="qwen2", vocab_size=8, hidden_size=8, intermediate_size=8,
          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=3),
     r"num_kv_heads: got 3, expected a divisor of num_heads \(2\)"),
    (dict(model_type="llama", vocab_size=8, hidden_size=8, intermediate_size=8,
          num_hidden_layers=1, num_attention_heads=2, rope_scaling={"rope_type": "yarn"}),
     r"rope_scaling.rope_type: got 'yarn'"),
    (dict(model_type="qwen2", vocab_size=8, hidden_size=8, intermediate_size=8,
          num_hidden_layers=1, num_attention_heads=2, use_sliding_window=True),
     r"use_sliding_window"),
])
def test_bad_hf_configs_name_the_field(hf, match):
  with pytest.raises(ModelConfigError, match=match):
    ModelConfig.from_hf_config(hf)


def test_bad_dtype_and_remat_fields():
  with pytest.raises(ModelConfigError, match=r"param_dtype: got 'f32'"):
    get_preset("tiny_world", param_dtype="f32")
  with pytest.raises(ModelConfigError, match=r"remat_policy: got 'some'"):
    get_preset("tiny_world", remat_policy="some")
  with pytest.raises(ValueError, match=r"model.preset: got 'gpt2'"):
    get_preset("gpt2")


def test_presets_have_published_sizes():
  sizes = {name: get_preset(name).num_params for name in PRESETS}
  assert round(sizes["bench_tiny"] / 1e6, 2) == 4.72  # peers/README.md
  assert round(sizes["bench_6l"] / 1e6, 2) == 6.82
  assert 1.5e6 <= sizes["tiny_world"] <= 3e6
  assert round(sizes["qwen2.5-0.5b"] / 1e6) == 494
  assert round(sizes["qwen2.5-coder-7b"] / 1e9, 2) == 7.62
  assert round(sizes["qwen3-8b"] / 1e9, 2) == 8.19
  assert round(sizes["llama3-8b"] / 1e9, 2) == 8.03
  assert get_preset("tiny_world", vocab_size=500).vocab_size == 500
  assert get_preset("bench_6l").model_type == "qwen2" and get_preset("bench_6l").num_kv_heads == 4


def test_init_is_small_normal_with_unit_norms():
  config = get_preset("tiny_world")
  params = init_params(Transformer(config), jax.random.PRNGKey(0))
  assert sum(x.size for x in jax.tree.leaves(params)) == config.num_params
  emb = np.asarray(params["embed_tokens"])
  assert abs(emb.std() - 0.02) < 1e-3 and abs(emb.mean()) < 1e-3
  layer = params["layers_0"]
  assert abs(np.asarray(layer["mlp"]["down_proj_kernel"]).std() - 0.02) < 1e-3
  np.testing.assert_array_equal(layer["input_layernorm"]["scale"], 1.0)
  np.testing.assert_array_equal(layer["self_attn"]["q_proj_bias"], 0.0)
  assert "lm_head" not in params  # tied


def test_every_param_has_logical_axes():
  config = get_preset("tiny_world").replace(qk_norm=True, model_type="qwen3",
                                            attention_bias=False, tie_word_embeddings=False)
  model = Transformer(config)
  axes = param_logical_axes(model)
  shapes = param_shapes(model)
  flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, P))
  flat_shapes = jax.tree.leaves(shapes)
  assert len(flat_axes) == len(flat_shapes) > 0
  for names, shape in zip(flat_axes, flat_shapes):
    assert len(names) == len(shape.shape) and all(isinstance(n, str) for n in names)
  assert tuple(axes["lm_head"]) == ("embed", "vocab")
  assert tuple(axes["layers_0"]["self_attn"]["q_norm"]["scale"]) == ("head_dim",)


def test_masks():
  input_mask = jnp.array([[False, True, True], [True, True, False]])
  np.testing.assert_array_equal(causal_mask(input_mask)[0],
                                [[0, 0, 0], [0, 1, 0], [0, 1, 1]])
  np.testing.assert_array_equal(causal_mask(input_mask)[1],
                                [[1, 0, 0], [1, 1, 0], [1, 1, 0]])
  key_mask = jnp.array([[False, True, True, True, True]])
  np.testing.assert_array_equal(cache_mask(key_mask, jnp.int32(2), 2)[0],
                                [[0, 1, 1, 0, 0], [0, 1, 1, 1, 0]])


def test_mesh_and_rules():
  mesh = make_mesh(data=-1, fsdp=2, tensor=2)
  assert mesh.axis_names == ("data", "fsdp", "tensor") and dict(mesh.shape)["data"] == 2
  with pytest.raises(ValueError, match="mesh.data"):
    make_mesh(data=3, fsdp=2, tensor=1)
  shape = dict(mesh.shape)
  assert logical_to_spec(("embed", "q_heads", "head_dim"), (64, 4, 16), shape) == P(
      "fsdp", "tensor", None)
  # A mesh axis that does not divide the dimension is dropped (replicated), not an error.
  assert logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 1, 16), shape) == P(
      "fsdp", None, None)
  assert logical_to_spec(("activation_batch", "activation_length"), (8, 5), shape) == P(
      ("data", "fsdp"), None)
  assert logical_to_spec(("activation_batch", "activation_length"), (2, 5), shape) == P(
      "data", None)
