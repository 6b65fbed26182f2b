r"""Model merging: evaluate the merge of the per-task specialists' weights.

  python -m astor_jax.merge --method=task_arithmetic --base=runs/s/sft \
      --models=runs/s_io,runs/s_gen,runs/s_test,runs/s_commit --out=runs/merged/model
  python -m astor_jax.main --config=configs/baselines/merging.py:task_arithmetic \
      --config.model.hf_path=runs/merged/model --workdir=runs/merged

Arg: the merge method (uniform | task_arithmetic), optionally `scale=LAMBDA`
(task arithmetic's coefficient), then the usual base tokens
(astor_jax/method_configs.py).

The merged weights come from `astor_jax.merge` (formulas there): the uniform
average of the K specialists' final params, or task arithmetic,
base + lambda * sum_k (specialist_k - base), with the shared warm start (the SFT
params in the tiny world, the instruct checkpoint at paper scale) as the base.
This config only evaluates them: no training (`phases = ("eval",)`), the same
eval settings as every other method, the model read from `model.hf_path` (a
Hugging Face checkpoint directory, which `astor_jax.merge` writes together with
the tokenizer) and evaluated as the row "base" of its results table. The merge
settings are recorded under `merge`, so the run's config.json says how its
weights were made; `python -m astor_jax.reproduce` runs both steps.

[silent] lambda = 0.5: the paper does not give one. Task arithmetic (Ilharco et
al., 2023, https://arxiv.org/abs/2212.04089) picks lambda on held-out data;
lambda = 1/K is exactly the uniform average and lambda = 1 the plain sum, so
0.5 sits between for K = 4. Every method in the suite gets the same (zero)
tuning budget.
"""

import ml_collections

from astor_jax import method_configs

METHODS = ("uniform", "task_arithmetic")


def get_config(arg=None):
  c, values = method_configs.parse_arg(arg, __file__, options={"scale": "0.5"},
                               positional=("method", METHODS))
  try:
    scale = float(values["scale"])
  except ValueError:
    raise ValueError(f"configs/baselines/merging.py: scale={values['scale']!r} is not a "
                     "number; use e.g. scale=0.5") from None
  c.merge = ml_collections.ConfigDict()
  c.merge.method = values["method"]
  c.merge.scale = scale if values["method"] == "task_arithmetic" else 1.0 / len(c.tasks)
  c.phases = ("eval",)
  c.model.preset = "hf"
  c.model.hf_path = ""  # required: the directory `python -m astor_jax.merge` wrote
  c.data.tokenizer_path = ""  # empty: the tokenizer astor_jax.merge saved in model.hf_path
  # Without training phases, the model loaded from model.hf_path is the one
  # policy evaluated; the results table names its row "base".
  c.eval.sft_baseline = True
  return c
