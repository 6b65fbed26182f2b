r"""The paper's second model: ASTOR on Qwen3-8B, one variant per target.

  python -m astor_jax.main --config=configs/paper/qwen3_8b.py:v5p-128 \
      --workdir=runs/astor_qwen3_8b \
      --config.model.hf_path=/data/Qwen3-8B \
      --config.data.cruxeval_path=/data/cruxeval.jsonl \
      --config.data.mbpp_path=/data/mbpp.jsonl \
      --config.data.aider_exercises_path=/data/aider_python_exercises \
      --config.data.commits_path=/data/commits.jsonl
  python -m astor_jax.launch_check --config=configs/paper/qwen3_8b.py --topology=8xh100

Batch 128 prompts x 8 rollouts, 400 steps (the paper). Targets (the variant):

  target   mesh (data, fsdp, tensor)  remat  grad-accum chunks
  v4-64    1 x 32 x 1                 full   32
  v5e-64   1 x 16 x 4                 full   64
  v5p-128  1 x 64 x 1                 full   4
  8xh100   1 x 8 x 1                  full   64
  16xh100  2 x 8 x 1                  full   32
  32xh100  4 x 8 x 1                  full   16

Qwen3-8B: 36 layers, d 4096, 32 query / 8 KV heads of width 128 with q/k
RMSNorm, MLP 12288, vocab 151936, untied head, 8.2B parameters. Its KV cache
per token is 2.6x Qwen2.5-Coder-7B's (36 layers x 8 KV heads against 28 x 4),
which is what the v5e-64 plan has to budget for. Fields beyond configs/astor.py
are described in configs/paper/_base.py; the memory plan per target is in
docs/scale_out.md.
"""

import os

from astor_jax import method_configs

TARGETS = {
    "v4-64": dict(mesh=(1, 32, 1), microbatches=32, remat_policy="full"),
    "v5e-64": dict(mesh=(1, 16, 4), microbatches=64, remat_policy="full"),
    "v5p-128": dict(mesh=(1, 64, 1), microbatches=4, remat_policy="full"),
    "8xh100": dict(mesh=(1, 8, 1), microbatches=64, remat_policy="full"),
    "16xh100": dict(mesh=(2, 8, 1), microbatches=32, remat_policy="full"),
    "32xh100": dict(mesh=(4, 8, 1), microbatches=16, remat_policy="full"),
}
VARIANTS = tuple(TARGETS)


def _base():
  return method_configs.load_module(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "_base.py"))


def get_config(arg=None):
  return _base().build("qwen3_8b.py", "qwen3-8b", TARGETS, "v5p-128", arg)
