"""The peer frameworks' measurements: run `run_all.sh` and read its JSON results.

The peer scripts (Tunix, TRL / HF generate) are a measuring instrument kept
outside the package, by default in `../shared/bench/peers` next to the
repository (`--peer-scripts` or `$ASTOR_PEER_SCRIPTS` elsewhere); their venvs
live under `$PEERS` (default `~/.cache/astor-peers`, created by `run_all.sh`
on first use, about 3 minutes). Nothing of theirs is imported here: they run
as a subprocess and leave one JSON file per measurement.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# File stem under the results directory -> (framework, measurement).
GRPO_FILES = {
    "tunix_grpo_tiny": ("tunix", "grpo_tiny"),
    "trl_grpo_tiny": ("trl", "grpo_tiny"),
    "tunix_grpo_6l128": ("tunix", "grpo_6l128"),
    "trl_grpo_6l128": ("trl", "grpo_6l128"),
}
SAMPLER_FILES = {
    "tunix_sampler_sample": ("tunix", "sample"),
    "hf_generate_sample": ("hf", "sample"),
    "tunix_sampler_greedy": ("tunix", "greedy"),
    "hf_generate_greedy": ("hf", "greedy"),
}


def default_scripts_dir() -> str:
  """`$ASTOR_PEER_SCRIPTS`, else `../shared/bench/peers` relative to the repository."""
  return os.environ.get("ASTOR_PEER_SCRIPTS", str(REPO.parent / "shared" / "bench" / "peers"))


def default_venvs_dir() -> str:
  """`$PEERS`, else `~/.cache/astor-peers` (run_all.sh's default)."""
  return os.environ.get("PEERS", os.path.join(os.path.expanduser("~"), ".cache", "astor-peers"))


def run_all(scripts_dir: str, out_dir: str, venvs_dir: str, log_path: str) -> None:
  """Runs `run_all.sh` with OUT=out_dir and PEERS=venvs_dir; its output goes to `log_path`.

  Raises:
    FileNotFoundError: no run_all.sh in `scripts_dir` (names the flag to fix it).
    RuntimeError: the script failed (with the tail of its output).
  """
  script = os.path.join(scripts_dir, "run_all.sh")
  if not os.path.exists(script):
    raise FileNotFoundError(
        f"--peer-scripts: no run_all.sh in {scripts_dir}; point --peer-scripts (or "
        "$ASTOR_PEER_SCRIPTS) at the peers' benchmark folder")
  env = dict(os.environ, OUT=out_dir, PEERS=venvs_dir)
  with open(log_path, "w") as log:
    proc = subprocess.run(["bash", script], env=env, stdout=log, stderr=subprocess.STDOUT,
                          check=False)
  if proc.returncode != 0:
    with open(log_path) as f:
      tail = f.read()[-3000:]
    print(tail, file=sys.stderr)
    raise RuntimeError(f"{script} exited with {proc.returncode}; its per-job logs are in "
                       f"{out_dir}, its output in {log_path}")


def load_results(out_dir: str) -> dict[str, dict]:
  """Every `<name>.json` that run_all.sh wrote, by name (e.g. `tunix_grpo_tiny`)."""
  results = {}
  for path in sorted(glob.glob(os.path.join(out_dir, "*.json"))):
    with open(path) as f:
      results[pathlib.Path(path).stem] = json.load(f)
  return results


def grpo_view(raw: dict) -> dict:
  """The comparable figures of one peer GRPO run (Tunix's or TRL's field names)."""
  ref = raw.get("ref_logps_s") or raw.get("ref_logps_and_reward_s") or {}
  train = raw.get("update_actor_s") or raw.get("train_fwd_bwd_opt_s") or {}
  return {"first_step_s": raw["global_step_s"]["first"],
          "steady_step_s": raw["global_step_s"]["steady_mean"],
          "rollout_s": raw["generate_s"]["steady_mean"],
          "ref_s": ref.get("steady_mean"),
          "train_s": train.get("steady_mean"),
          "rollout_tokens_per_s": raw.get("rollout_tokens_per_s_steady"),
          "peak_rss_mb": raw["peak_rss_mb"],
          "n_params": raw.get("n_params")}


def sampler_view(raw: dict) -> dict:
  """The comparable figures of one sampler run (peer scripts' or ours, same fields)."""
  return {"tokens_per_s": raw["new_tokens_per_s_median"],
          "median_call_s": raw["median_s"],
          "first_call_s": raw.get("warmup_incl_compile_s", raw.get("warmup_s")),
          "peak_rss_mb": raw["peak_rss_mb"],
          "n_params": raw.get("n_params")}


def views(results: dict[str, dict]) -> dict:
  """{"grpo_tiny": {"tunix": {...}, "trl": {...}}, "sampler_sample": {"tunix": ..., "hf": ...}}."""
  out: dict[str, dict] = {}
  for stem, (framework, workload) in GRPO_FILES.items():
    if stem in results:
      out.setdefault(workload, {})[framework] = grpo_view(results[stem])
  for stem, (framework, mode) in SAMPLER_FILES.items():
    if stem in results:
      out.setdefault(f"sampler_{mode}", {})[framework] = sampler_view(results[stem])
  return out
