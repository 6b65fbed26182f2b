r"""The paper's main setup: ASTOR on Qwen2.5-Coder-7B-Instruct, one variant per target.

  python -m astor_jax.main --config=configs/paper/qwen25_coder_7b.py:v5e-64 \
      --workdir=gs-or-local/runs/astor_q25c7b \
      --config.model.hf_path=/data/Qwen2.5-Coder-7B-Instruct \
      --config.data.cruxeval_path=/data/cruxeval.jsonl \
      --config.data.mbpp_path=/data/mbpp.jsonl \
      --config.data.aider_exercises_path=/data/aider_python_exercises \
      --config.data.commits_path=/data/commits.jsonl
  python -m astor_jax.launch_check --config=configs/paper/qwen25_coder_7b.py --topology=v5e-64

Batch 128 prompts x 8 rollouts, 400 steps (the paper). Targets (the variant):

  target   mesh (data, fsdp, tensor)  remat  grad-accum chunks
  v4-64    1 x 32 x 1                 full   16
  v5e-64   1 x 16 x 4                 full   64
  v5p-128  1 x 64 x 1                 full   2
  8xh100   1 x 8 x 1                  full   64
  16xh100  2 x 8 x 1                  full   32

Qwen2.5-Coder-7B: 28 layers, d 3584, 28 query / 4 KV heads, MLP 18944,
vocab 152064, 7.6B parameters. tensor=4 divides its heads, KV heads, MLP width
and vocab; on v5e's 16 GiB chips it cuts the per-layer weight all-gathers of
the sampler's decode steps (FSDP alone would gather every layer per token).
Fields beyond configs/astor.py are described in configs/paper/_base.py; the
memory plan per target is in docs/scale_out.md.
"""

import os

from astor_jax import method_configs

TARGETS = {
    "v4-64": dict(mesh=(1, 32, 1), microbatches=16, remat_policy="full"),
    "v5e-64": dict(mesh=(1, 16, 4), microbatches=64, remat_policy="full"),
    "v5p-128": dict(mesh=(1, 64, 1), microbatches=2, remat_policy="full"),
    "8xh100": dict(mesh=(1, 8, 1), microbatches=64, remat_policy="full"),
    "16xh100": dict(mesh=(2, 8, 1), microbatches=32, remat_policy="full"),
}
VARIANTS = tuple(TARGETS)


def _base():
  return method_configs.load_module(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "_base.py"))


def get_config(arg=None):
  return _base().build("qwen25_coder_7b.py", "qwen2.5-coder-7b", TARGETS, "v5e-64", arg)
