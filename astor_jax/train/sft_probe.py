r"""How learnable the warm start leaves each task: reward and group variance by temperature.

  python -m astor_jax.train.sft_probe --config=configs/astor.py --workdir=runs/probe \
      --config.sft.cache_dir=runs/sft --prompts=32 --temperatures=0,0.7,1

Loads (or trains) the SFT warm start exactly as the job does, then samples the
first `--prompts` training prompts of every task, `--group_size` rollouts each
(one when greedy), at each temperature, scores them with the tasks' rewards and
prints per task: the mean reward, the fraction of rollouts with a nonzero
reward, the fraction of groups whose rewards differ (GRPO's advantages are zero
in the others, so they carry no gradient) and the most common zero-reward
reasons. Writes the same as JSON to `<workdir>/sft_probe.json`.

A diagnostic for choosing the tiny world's difficulty and the sampler
temperature (docs/reproduce.md, "Tiny-world learnability"); it changes no
checkpoint and runs no RL.
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/astor.py).",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Job directory (tokenizer, TFDS, SFT cache).")
_PROMPTS = flags.DEFINE_integer("prompts", 32, "Training prompts per task.")
_GROUP = flags.DEFINE_integer("group_size", 4, "Rollouts per prompt at T > 0.")
_TEMPS = flags.DEFINE_list("temperatures", ["0", "0.7", "1"], "Sampling temperatures.")


def summarize(values: np.ndarray, reasons: Sequence[str]) -> dict[str, Any]:
  """Statistics of one task's rewards, shaped [prompts, group]."""
  counts = collections.Counter(re.sub(r"\d+", "N", r.split(":")[0]) for r in reasons)
  return {
      "mean_reward": float(values.mean()),
      "nonzero": float(np.mean(values > 0)),
      "groups_with_variance": (float(np.mean(values.std(axis=1) > 1e-6))
                               if values.shape[1] > 1 else None),
      "zero_reasons": dict(counts.most_common(3)),
  }


def probe(job: Any, params: Any, prompts: int, group_size: int,
          temperatures: Sequence[float]) -> dict[str, dict[str, Any]]:
  """{temperature: {task: summary}} for the given policy params."""
  from astor_jax.tasks.base import score_batch

  out: dict[str, dict[str, Any]] = {}
  for t_index, temperature in enumerate(temperatures):
    per_task: dict[str, Any] = {}
    for k, (name, source) in enumerate(job.sources.items()):
      task = job.tasks[name]
      examples = [source["train"][i] for i in range(min(prompts, len(source["train"])))]
      encoded = [(e, job.encode(task.build_prompt(e))) for e in examples]
      encoded = [(e, p) for e, p in encoded if p is not None]
      g = 1 if temperature == 0 else group_size
      key = jax.random.fold_in(jax.random.PRNGKey(t_index), k)
      sampled = job.sampler(params, [p for _, p in encoded], key, group_size=g,
                            temperature=temperature, stop=job.encode.stop())
      tokens = np.asarray(sampled.tokens)[:, -job.sampler.max_new_tokens:]
      completions = job.encode.decode(tokens, np.asarray(sampled.lengths))
      rows = [e for e, _ in encoded for _ in range(g)]
      rewards = score_batch(job.tasks, rows, completions, job.pool).result()
      values = np.array([r.value for r in rewards], np.float64).reshape(len(encoded), g)
      per_task[name] = summarize(values, [r.reason for r in rewards if r.value == 0])
    out[str(temperature)] = per_task
  return out


def main(argv) -> None:
  del argv
  from astor_jax.train import loop, sft

  config = _CONFIG.value
  config.phases = ("sft",)
  workdir = os.path.abspath(_WORKDIR.value)
  temperatures = [float(t) for t in _TEMPS.value]
  found: dict[str, Any] = {}

  def run_phases(job, params):  # the job's own setup, then the probe instead of the phases
    result = sft.run(job.config, job.workdir, model=job.model, params=params,
                     rows=loop._sft_rows(job), mesh=job.mesh,  # noqa: SLF001
                     params_sharding=job.params_sharding, writer=job.writer,
                     should_stop=job.should_stop, progress=loop._progress_bar)  # noqa: SLF001
    if result.done:
      found.update(probe(job, result.params, _PROMPTS.value, _GROUP.value, temperatures))
    return loop.Outcome(finished=result.done)

  loop.train(config, workdir, run_phases=run_phases)
  with open(os.path.join(workdir, "sft_probe.json"), "w") as f:
    json.dump(found, f, indent=2)
  for temperature, per_task in found.items():
    print(f"T = {temperature}")
    for name, s in per_task.items():
      var = s["groups_with_variance"]
      print(f"  {name:10s} reward {s['mean_reward']:.3f}  nonzero {s['nonzero']:.2f}  "
            f"groups with variance {'-' if var is None else f'{var:.2f}'}  "
            f"zero: {s['zero_reasons']}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
