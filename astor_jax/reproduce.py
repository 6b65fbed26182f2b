r"""The paper's main comparison at a scale you can afford: every method, equal compute, seeds.

  python -m astor_jax.reproduce --suite=tiny --seeds=3 --workdir=runs/repro
  python -m astor_jax.reproduce --suite=tiny --seeds=1 --workdir=runs/repro_quick --quick
  python -m astor_jax.reproduce --workdir=runs/repro --report_only   # tables and plots only
  python -m astor_jax.reproduce --suite=tiny --seeds=3 --workdir=W --dry_run   # the plan

Every run is a subprocess of the real job (`python -m astor_jax.main`), logged
to `<run>/reproduce.log`. Rerunning the same command resumes: a run whose
`results/eval.json` exists is finished and skipped, an interrupted one resumes
from its checkpoints (the job's own resume), and finished SFT warm starts are
loaded from their cache.

Per seed s (config.seed = s; the tiny world's data, `data.world_seed`, is the
same for every seed, so seeds vary initialization, sampling and training):

  warm_start            configs/astor.py with phases (sft, eval): trains the SFT warm
                        start into W/seed_<s>/sft (`sft.cache_dir`) and evaluates it
                        (the "SFT warm start" row). Every other run of the seed
                        loads that one warm start, so all methods start from the
                        same weights (the job checks a fingerprint of the SFT
                        settings, model and corpus).
  astor                 configs/astor.py
  joint_uniform         configs/baselines/joint_uniform.py
  curriculum            configs/baselines/curriculum.py, easy to hard: tasks ordered
                        by the warm start's average score on them, highest first.
  specialist_<task>     configs/baselines/specialist.py:<task>, x4 (equal compute: the
                        four share one run's rollout budget)
  merge_uniform,        `python -m astor_jax.merge` of the four specialists' final
  merge_task_arithmetic params (task arithmetic on the warm start), evaluated with
                        configs/baselines/merging.py
  no_schedule, no_calibration, no_synergy, kl_direction_flipped
                        configs/ablations/*.py

Every run gets the suite's overrides (the step counts below), the same tokenizer
(trained once by seed 0's warm start), one prepared dataset (W/tfds) and the
same eval settings. Before anything starts, the plan is checked for equal
compute: every method's rollouts (`rl.steps x rl.batch_prompts x rl.group_size`,
summed over its runs) must equal ASTOR's, and the model, data, sampler, SFT,
execution and eval settings must be the same in every run. Merging reuses the
specialists' runs: its compute is theirs.

Outputs: W/results.md and W/results.csv (methods x the ten metrics + average,
mean and sample std over the seeds that finished; the per-task specialists row
takes each task's columns from that task's specialist), W/results_per_seed.csv,
W/plots/average.png (average score per method, error bars one std, dots the
seeds), W/plots/learning_curves.png and learning_curves_ablations.png (training
reward per task over RL steps, mean over seeds, from each run's metrics.jsonl),
and W/timings.json (wall and CPU seconds of each job this workdir's commands ran:
`cpu_s` is user + system time of the job's processes, the measure that does not
depend on what else the machine runs).

Suites (`--suite`; `--quick` picks the quick sizes with the same table shape):

  tiny          configs/astor.py defaults but 48 RL steps: SFT 400 steps x 32, RL 48
                steps x 16 prompts x 8 rollouts, eval 48 examples per task.
  tiny --quick  configs/astor.py:smoke: SFT 60 steps, RL 6 steps x 8 prompts x 4
                rollouts, eval 8 examples per task.

Measured wall times on 2 CPU cores are in docs/reproduce.md.
"""

from __future__ import annotations

import ast
import collections
import csv
import dataclasses
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_collections

from astor_jax import method_configs
from astor_jax.eval import table as table_lib
from astor_jax.train import observe

TASKS = ("code_io", "code_gen", "test_gen", "commit_msg")
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")
SUITE_FILE = "suite.json"
TIMINGS_FILE = "timings.json"
LOG_FILE = "reproduce.log"
PLOTS_DIR = "plots"
REFERENCE_ROWS = ("sft", "base", "init")  # eval rows of a run that are not its method


# ------------------------------------------------------------------ the plan


@dataclasses.dataclass(frozen=True)
class Run:
  """One job of a seed.

  Attributes:
    name: its directory under W/seed_<s>/.
    config: config file under configs/; "" for the suite's base config itself.
    tokens: the method's tokens of the config arg (before the suite's base variant).
    kind: "warm_start", "train" or "merge" (merge the specialists, then evaluate).
  """

  name: str
  config: str
  tokens: tuple[str, ...] = ()
  kind: str = "train"


SPECIALISTS = tuple(f"specialist_{t}" for t in TASKS)
RUNS: tuple[Run, ...] = (
    Run("warm_start", "", kind="warm_start"),
    Run("astor", ""),
    Run("joint_uniform", "baselines/joint_uniform.py"),
    Run("curriculum", "baselines/curriculum.py"),
    *(Run(f"specialist_{t}", "baselines/specialist.py", (t,)) for t in TASKS),
    Run("merge_uniform", "baselines/merging.py", ("uniform",), kind="merge"),
    Run("merge_task_arithmetic", "baselines/merging.py", ("task_arithmetic",), kind="merge"),
    Run("no_schedule", "ablations/no_schedule.py"),
    Run("no_calibration", "ablations/no_calibration.py"),
    Run("no_synergy", "ablations/no_synergy.py"),
    Run("kl_direction_flipped", "ablations/kl_direction_flipped.py"),
)
RUNS_BY_NAME = {r.name: r for r in RUNS}


@dataclasses.dataclass(frozen=True)
class Method:
  """A row of the results: which runs make it.

  Attributes:
    key: its name in results.csv.
    label: its name in results.md.
    group: "main" (the paper's Table 1) or "ablation".
    runs: its runs; several runs (the specialists) give each task's columns from
      the run of that task.
  """

  key: str
  label: str
  group: str
  runs: tuple[str, ...]


METHODS: tuple[Method, ...] = (
    Method("sft", "SFT warm start", "main", ("warm_start",)),
    Method("astor", "ASTOR", "main", ("astor",)),
    Method("specialists", "Per-task specialists", "main", SPECIALISTS),
    Method("joint_uniform", "Joint uniform MTRL", "main", ("joint_uniform",)),
    Method("curriculum", "Curriculum RL", "main", ("curriculum",)),
    Method("merge_uniform", "Merging (average)", "main", ("merge_uniform",)),
    Method("merge_task_arithmetic", "Merging (task arithmetic)", "main",
           ("merge_task_arithmetic",)),
    Method("astor_ref", "ASTOR", "ablation", ("astor",)),
    Method("no_schedule", "w/o scheduling", "ablation", ("no_schedule",)),
    Method("no_calibration", "w/o calibration", "ablation", ("no_calibration",)),
    Method("no_synergy", "w/o synergy", "ablation", ("no_synergy",)),
    Method("kl_direction_flipped", "KL direction flipped", "ablation",
           ("kl_direction_flipped",)),
)
METHOD_KEYS = tuple(m.key for m in METHODS if m.key != "astor_ref")


@dataclasses.dataclass(frozen=True)
class Suite:
  """What every run starts from.

  Attributes:
    name: as given to --suite (plus "-quick").
    base: the base config as `FILE[:VARIANT]` under configs/: ASTOR itself, and the
      `base=` of every baseline and ablation config.
    overrides: `(field, value)` set in every run.
  """

  name: str
  base: str
  overrides: tuple[tuple[str, Any], ...] = ()

  @property
  def base_file(self) -> str:
    return self.base.partition(":")[0]

  @property
  def base_variant(self) -> str | None:
    return self.base.partition(":")[2] or None


# rl.steps = 48 (configs/astor.py: 60) keeps the three seeds of the full suite within
# three hours of one core's CPU time (docs/reproduce.md, "Time budget").
SUITES = {"tiny": Suite("tiny", "astor.py:default", (("rl.steps", 48),))}
QUICK_SUITES = {"tiny": Suite("tiny-quick", "astor.py:smoke")}


def get_suite(name: str, quick: bool = False) -> Suite:
  """`tiny`, or a paper-scale config `paper/<model>.py[:<target>]` (its own sizes).

  Raises:
    ValueError: an unknown suite, or --quick with a paper-scale one.
  """
  suites = QUICK_SUITES if quick else SUITES
  if name in suites:
    return suites[name]
  if name.startswith("paper/") and os.path.isfile(
      os.path.join(CONFIGS_DIR, name.partition(":")[0])):
    if quick:
      raise ValueError(f"--quick: only for the tiny suite; {name} runs the paper's sizes")
    return Suite(name, name)
  raise ValueError(f"--suite: unknown suite {name!r}; use tiny or a paper config such as "
                   "paper/qwen25_coder_7b.py:8xh100")


def rollout_budget(config: ml_collections.ConfigDict) -> int:
  """RL rollouts of one run: `rl.steps x rl.batch_prompts x rl.group_size` (0 without RL)."""
  if "rl" not in tuple(config.phases):
    return 0
  return int(config.rl.steps) * int(config.rl.batch_prompts) * int(config.rl.group_size)


def parse_value(text: str) -> Any:
  """A `--set` value: a Python literal (numbers, booleans, tuples) or else the string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def flag_value(value: Any) -> str:
  """How `--config.<field>=` spells `value` for ml_collections' config flags."""
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  return str(value)


class Plan:
  """The runs of a suite in one workdir: their commands, configs and state on disk.

  Args:
    workdir: the suite's directory W.
    suite: what every run starts from (base config and overrides).
    seeds: how many seeds (0 .. seeds-1).
    methods: the method keys to run (their runs, plus what they need).
    extra: overrides for every run (`--set`), applied after the suite's.
    python: the interpreter the subprocesses use.
  """

  def __init__(self, workdir: str, suite: Suite, seeds: int,
               methods: Sequence[str] = METHOD_KEYS,
               extra: Sequence[tuple[str, Any]] = (), python: str = sys.executable):
    self.workdir = os.path.abspath(workdir)
    self.suite = suite
    self.seeds = tuple(range(seeds))
    self.methods = tuple(methods)
    self.extra = tuple(extra)
    self.python = python
    needed = {"warm_start"}
    for method in METHODS:
      if method.key in self.methods or (method.key == "astor_ref" and "astor" in self.methods):
        needed.update(method.runs)
    if needed & {"merge_uniform", "merge_task_arithmetic"}:
      needed.update(SPECIALISTS)
    self.runs = tuple(r for r in RUNS if r.name in needed)
    # Paper-scale bases start from an instruct checkpoint (no SFT phase): their
    # warm start is that checkpoint, evaluated as is.
    self.pretrained = "sft" not in tuple(
        load_config(suite.base_file, suite.base_variant).phases)

  # ---------------------------------------------------------------- paths

  def seed_dir(self, seed: int) -> str:
    return os.path.join(self.workdir, f"seed_{seed}")

  def run_dir(self, seed: int, name: str) -> str:
    return os.path.join(self.seed_dir(seed), name)

  def sft_dir(self, seed: int) -> str:
    return os.path.join(self.seed_dir(seed), "sft")

  def tokenizer_dir(self) -> str:
    from astor_jax.train import loop

    return os.path.join(self.run_dir(0, "warm_start"), loop.TOKENIZER_DIR)

  def merged_model_dir(self, seed: int, name: str) -> str:
    return os.path.join(self.run_dir(seed, name), "model")

  def finished(self, seed: int, name: str) -> bool:
    return os.path.exists(os.path.join(self.run_dir(seed, name), table_lib.RESULTS_DIR,
                                       table_lib.EVAL_FILE))

  # ---------------------------------------------------------------- configs

  def config_file(self, run: Run) -> str:
    return run.config or self.suite.base_file

  def config_arg(self, run: Run, seed: int | None) -> str:
    if not run.config:
      return self.suite.base_variant or ""
    tokens = list(run.tokens)
    if run.name == "curriculum" and seed is not None:
      order = self.curriculum_order(seed)
      if order:
        tokens.append("order=" + ">".join(order))
    return ",".join(tokens + [f"base={self.suite.base}"])

  def overrides(self, run: Run, seed: int) -> list[tuple[str, Any]]:
    """Every `--config.<field>` of the run, in order: the suite's sizes, `--set`, then
    the fields the suite owns (seed, shared warm start, tokenizer, merged model)."""
    out: list[tuple[str, Any]] = list(self.suite.overrides) + list(self.extra) + [
        ("seed", seed),
        ("data.data_dir", os.path.join(self.workdir, "tfds")),
        ("log.progress_bar", False),
    ]
    if run.kind == "warm_start":
      out += [("phases", ("eval",) if self.pretrained else ("sft", "eval")),
              ("eval.sft_baseline", True)]
    else:
      out.append(("eval.sft_baseline", run.kind == "merge"))
    if not self.pretrained:
      # One tokenizer for all (trained by seed 0's warm start), one warm start per seed.
      if not (run.kind == "warm_start" and seed == 0):
        out.append(("data.tokenizer_path", self.tokenizer_dir()))
      if run.kind != "merge":
        out.append(("sft.cache_dir", self.sft_dir(seed)))
    elif run.kind == "merge":
      # The merged checkpoint carries the base model's tokenizer.
      out.append(("data.tokenizer_path", self.resolve_base().model.hf_path))
    if run.kind == "merge":
      out.append(("model.hf_path", self.merged_model_dir(seed, run.name)))
    return list(dict(out).items())  # one flag per field, the last value wins

  def command(self, run: Run, seed: int) -> list[str]:
    """The job's command line: `python -m astor_jax.main --config=... --workdir=...`."""
    config = os.path.join(CONFIGS_DIR, self.config_file(run)) + ":" + self.config_arg(run, seed)
    argv = [self.python, "-m", "astor_jax.main", f"--config={config}",
            f"--workdir={self.run_dir(seed, run.name)}"]
    argv += [f"--config.{path}={flag_value(value)}" for path, value in self.overrides(run, seed)]
    return argv

  def merge_command(self, run: Run, seed: int) -> list[str]:
    """`python -m astor_jax.merge` of the seed's specialists into the run's model dir."""
    config = self.resolve(run, seed)
    argv = [self.python, "-m", "astor_jax.merge", f"--method={config.merge.method}",
            "--models=" + ",".join(self.run_dir(seed, s) for s in SPECIALISTS),
            f"--out={self.merged_model_dir(seed, run.name)}"]
    if config.merge.method == "task_arithmetic":
      base = self.resolve_base().model.hf_path if self.pretrained else self.sft_dir(seed)
      argv += [f"--base={base}", f"--scale={config.merge.scale}"]
    return argv

  def resolve_base(self) -> ml_collections.ConfigDict:
    """The suite's base config with the suite's and --set overrides (not validated)."""
    config = load_config(self.suite.base_file, self.suite.base_variant)
    for path, value in list(self.suite.overrides) + list(self.extra):
      set_field(config, path, value)
    return config

  def resolve(self, run: Run, seed: int) -> ml_collections.ConfigDict:
    """The run's config as the job will see it (file, arg and overrides), validated."""
    from astor_jax import config as config_lib

    config = load_config(self.config_file(run), self.config_arg(run, None))
    for path, value in self.overrides(run, seed):
      set_field(config, path, value)
    try:
      config_lib.validate(config)
    except config_lib.ConfigError as e:
      raise ValueError(f"run {run.name}: {e} (for every run of the suite: "
                       "--set=FIELD=VALUE)") from None
    return config

  def curriculum_order(self, seed: int) -> tuple[str, ...]:
    """Tasks by the seed's warm-start average score, highest (easiest) first; () if unknown."""
    if not self.finished(seed, "warm_start"):
      return ()
    row = table_lib.results_row(run_metrics(self.run_dir(seed, "warm_start")))
    score = {}
    for task in TASKS:
      cols = [row[c.header] for c in table_lib.PAPER_COLUMNS if c.task == task and c.header in row]
      score[task] = sum(cols) / len(cols) if cols else 0.0
    return tuple(sorted(TASKS, key=lambda t: -score[t]))

  # ---------------------------------------------------------------- equal compute

  def check_equal_compute(self, seed: int = 0) -> dict[str, int]:
    """Checks that every method spends ASTOR's rollouts on the same setup.

    Returns:
      method key -> rollouts per seed (merging: its specialists' rollouts).

    Raises:
      ValueError: a method's budget or a shared setting differs, naming both.
    """
    configs = {r.name: self.resolve(r, seed) for r in self.runs}
    trained = [r.name for r in self.runs if r.kind == "train"]
    reference_name = "astor" if "astor" in configs else (trained or ["warm_start"])[0]
    reference = configs[reference_name]
    shared = _shared_settings(reference)
    for name, config in configs.items():
      got = _shared_settings(config)
      for field in sorted(set(shared) | set(got)):
        if field in _PER_RUN_FIELDS or (RUNS_BY_NAME[name].kind == "merge" and
                                        field in _MERGE_FIELDS):
          continue
        if shared.get(field) != got.get(field):
          raise ValueError(f"equal compute: run {name} has {field}={got.get(field)!r}, "
                           f"{reference_name} has {shared.get(field)!r}; every method must "
                           "share the model, data, sampler, SFT and eval settings")
    want = rollout_budget(reference)
    budgets = {}
    for method in METHODS:
      runs = [r for r in method.runs if r in configs]
      if not runs or method.key == "sft":
        continue
      if RUNS_BY_NAME[runs[0]].kind == "merge":
        runs = list(SPECIALISTS)
      budgets[method.key] = sum(rollout_budget(configs[r]) for r in runs)
      if budgets[method.key] != want:
        raise ValueError(f"equal compute: {method.key} spends {budgets[method.key]} rollouts "
                         f"per seed, {reference_name} {want}; give every method the same "
                         "rl.steps x rl.batch_prompts x rl.group_size in total")
    return budgets


# Fields that legitimately differ between runs (what a method is, where it writes).
_PER_RUN_FIELDS = {
    "variant", "phases", "seed", "astor.", "rl.batch_prompts", "merge.", "eval.sft_baseline",
    "data.tokenizer_path", "sft.cache_dir", "log.", "checkpoint.",
}
# A merged model is loaded from its checkpoint, not built from the preset.
_MERGE_FIELDS = {"model.preset", "model.hf_path"}


def _shared_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The run's fields, flattened, minus what may differ between methods."""
  flat = {}

  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, (ml_collections.ConfigDict, dict)):
        walk(value, f"{prefix}{key}.")
      else:
        flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value

  walk(config, "")
  section = lambda f: f.split(".")[0] + "."  # noqa: E731
  return {f: v for f, v in flat.items()
          if f not in _PER_RUN_FIELDS and section(f) not in _PER_RUN_FIELDS}


def load_config(relative_path: str, arg: str | None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of configs/<relative_path>, as `--config=FILE:ARG` would call it."""
  path = os.path.join(CONFIGS_DIR, relative_path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: missing; run from a checkout of the repository "
                            "(the suite's configs live in configs/)")
  return method_configs.load_module(path).get_config(arg)


def set_field(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  """`config.<path> = value`, naming the field when it does not exist."""
  *parents, leaf = path.split(".")
  node = config
  for part in parents:
    if part not in node:
      raise ValueError(f"--set {path}: no such config field (no section {part!r})")
    node = node[part]
  if leaf not in node:
    raise ValueError(f"--set {path}: no such config field; see configs/astor.py")
  node[leaf] = value


# ------------------------------------------------------------------ running


class RunFailed(RuntimeError):
  """A job of the suite exited with an error; the message names its log."""


def launch(argv: Sequence[str], log_path: str) -> int:
  """Runs one job, appending its output to `log_path`; returns its exit status."""
  with open(log_path, "a", encoding="utf-8") as log:
    log.write(f"\n$ {shlex.join(argv)}\n")
    log.flush()
    return subprocess.run(list(argv), stdout=log, stderr=subprocess.STDOUT, check=False,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")).returncode


def _tail(path: str, lines: int = 8) -> str:
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      return "".join(f.readlines()[-lines:])
  except OSError:
    return ""


def _write_json(path: str, data: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _check_suite_file(plan: Plan) -> None:
  """The workdir holds this suite (or nothing yet); adding seeds or methods is fine."""
  path = os.path.join(plan.workdir, SUITE_FILE)
  record = {"suite": plan.suite.name, "base": plan.suite.base,
            "overrides": [[p, flag_value(v)] for p, v in plan.suite.overrides + plan.extra]}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    for key, value in record.items():
      if saved.get(key) != value:
        raise ValueError(f"--workdir: {plan.workdir} holds suite {saved.get('suite')!r} with "
                         f"{key}={saved.get(key)!r}, not {value!r}; rerun with the same "
                         "--suite/--quick/--set flags to resume it, or use a new --workdir")
  os.makedirs(plan.workdir, exist_ok=True)
  _write_json(path, record)


def execute(plan: Plan, launcher: Callable[[Sequence[str], str], int] = launch,
            say: Callable[[str], None] | None = None) -> dict[str, dict[str, float]]:
  """Runs every unfinished job of the plan, seed by seed; returns wall/CPU seconds per job.

  Raises:
    RunFailed: a job failed (or was stopped by a signal); rerunning resumes.
  """
  say = say or (lambda line: print(line, flush=True))
  _check_suite_file(plan)
  plan.check_equal_compute()
  timings_path = os.path.join(plan.workdir, TIMINGS_FILE)
  timings: dict[str, dict[str, float]] = {}
  if os.path.exists(timings_path):
    with open(timings_path, encoding="utf-8") as f:
      timings = json.load(f)
  todo = [(s, r) for s in plan.seeds for r in plan.runs]
  for i, (seed, run) in enumerate(todo, 1):
    key = f"seed_{seed}/{run.name}"
    if plan.finished(seed, run.name):
      say(f"[{i}/{len(todo)}] {key}: finished, skipped")
      continue
    os.makedirs(plan.run_dir(seed, run.name), exist_ok=True)
    log_path = os.path.join(plan.run_dir(seed, run.name), LOG_FILE)
    say(f"[{i}/{len(todo)}] {key}: running (log: {log_path})")
    start, cpu_start = time.monotonic(), _children_cpu_s()
    steps = []
    if run.kind == "merge":
      from astor_jax.merge import MERGE_FILE

      if not os.path.exists(os.path.join(plan.merged_model_dir(seed, run.name), MERGE_FILE)):
        steps.append(plan.merge_command(run, seed))
    steps.append(plan.command(run, seed))
    for argv in steps:
      status = launcher(argv, log_path)
      if status:
        stopped = status > 128 or status < 0
        raise RunFailed(
            f"{key}: {'stopped by a signal' if stopped else f'failed with status {status}'}; "
            f"see {log_path}; rerun the same command to resume"
            + ("" if stopped else f"\n{_tail(log_path)}"))
    if not plan.finished(seed, run.name):
      raise RunFailed(f"{key}: the job ended without {table_lib.RESULTS_DIR}/"
                      f"{table_lib.EVAL_FILE}; see {log_path}")
    spent = timings.get(key, {"wall_s": 0.0, "cpu_s": 0.0})
    timings[key] = {"wall_s": spent["wall_s"] + time.monotonic() - start,
                    "cpu_s": spent["cpu_s"] + _children_cpu_s() - cpu_start}
    _write_json(timings_path, timings)
    say(f"[{i}/{len(todo)}] {key}: done in {timings[key]['wall_s']:.0f} s "
        f"({timings[key]['cpu_s']:.0f} CPU s)")
  return timings


def _children_cpu_s() -> float:
  """User + system seconds of this process's finished children."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------ results


def run_metrics(run_dir: str) -> Mapping[str, Mapping[str, float]]:
  """The method row of a finished run's eval.json (task -> metric -> fraction).

  A training run's eval holds its method's row (and the warm start's as "sft"
  when `eval.sft_baseline` is on); a warm-start or merged-model run holds just
  one reference row. Raises ValueError when the file is ambiguous.
  """
  rows = table_lib.load_eval(run_dir)
  if len(rows) > 1:
    rows = {k: v for k, v in rows.items() if k not in REFERENCE_ROWS}
  if len(rows) != 1:
    raise ValueError(f"{run_dir}: expected one method row in {table_lib.RESULTS_DIR}/"
                     f"{table_lib.EVAL_FILE}, found {sorted(rows)}")
  return next(iter(rows.values()))


def method_row(plan: Plan, method: Method, seed: int) -> dict[str, float] | None:
  """One seed's row of a method (percent, with the average), or None if unfinished."""
  if not all(plan.finished(seed, r) for r in method.runs):
    return None
  if len(method.runs) == 1:
    return table_lib.results_row(run_metrics(plan.run_dir(seed, method.runs[0])))
  combined = {}
  for run in method.runs:  # the specialists: task t's columns from specialist_t
    task = run.removeprefix("specialist_")
    combined[task] = run_metrics(plan.run_dir(seed, run)).get(task, {})
  return table_lib.results_row(combined)


COLUMNS = tuple(c.header for c in table_lib.PAPER_COLUMNS) + (table_lib.AVERAGE,)


@dataclasses.dataclass
class Summary:
  """A method's mean and sample std (ddof 1; NaN for one seed) per column over seeds."""

  method: Method
  seeds: tuple[int, ...]
  rows: tuple[dict[str, float], ...]
  mean: dict[str, float]
  std: dict[str, float]


def summarize(method: Method, rows_by_seed: Mapping[int, dict[str, float]]) -> Summary:
  seeds = tuple(sorted(rows_by_seed))
  rows = tuple(rows_by_seed[s] for s in seeds)
  mean, std = {}, {}
  for col in COLUMNS:
    values = [r[col] for r in rows if col in r]
    if not values:
      continue
    mu = sum(values) / len(values)
    mean[col] = mu
    std[col] = (math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))
                if len(values) > 1 else float("nan"))
  return Summary(method, seeds, rows, mean, std)


def collect(plan: Plan) -> list[Summary]:
  """Summaries of the plan's methods over the seeds where each finished (none: left out)."""
  out = []
  for method in METHODS:
    if not any(r.name in method.runs for r in plan.runs):
      continue
    rows = {s: row for s in plan.seeds if (row := method_row(plan, method, s)) is not None}
    if method.key == "sft" and plan.pretrained:
      method = dataclasses.replace(method, label="Base model (no RL)")
    if rows:
      out.append(summarize(method, rows))
  return out


def _cell(summary: Summary, col: str) -> str:
  if col not in summary.mean:
    return "-"
  std = summary.std[col]
  return f"{summary.mean[col]:.2f}" + ("" if math.isnan(std) else f" ± {std:.2f}")


def markdown_table(summaries: Iterable[Summary]) -> str:
  headers = ["Method", "Seeds"] + list(COLUMNS)
  lines = ["| " + " | ".join(headers) + " |",
           "|---|---:|" + "|".join("---:" for _ in COLUMNS) + "|"]
  for s in summaries:
    lines.append("| " + " | ".join([s.method.label, str(len(s.seeds))]
                                   + [_cell(s, c) for c in COLUMNS]) + " |")
  return "\n".join(lines) + "\n"


def write_results(plan: Plan, summaries: Sequence[Summary],
                  budgets: Mapping[str, int] | None = None,
                  timings: Mapping[str, Mapping[str, float]] | None = None,
                  ) -> tuple[str, str]:
  """Writes W/results.md, W/results.csv and W/results_per_seed.csv; returns the first two."""
  md_path = os.path.join(plan.workdir, "results.md")
  csv_path = os.path.join(plan.workdir, "results.csv")
  main = [s for s in summaries if s.method.group == "main"]
  ablation = [s for s in summaries if s.method.group == "ablation"]
  text = [f"# Reproduction: suite {plan.suite.name}, seeds {', '.join(map(str, plan.seeds))}\n",
          "Percent, higher is better; mean ± sample std over the seeds that finished "
          "(column Seeds). Average: mean of the ten metrics, per seed, then over seeds.\n",
          "## Main comparison\n", markdown_table(main)]
  if ablation:
    text += ["## ASTOR ablations\n", markdown_table(ablation)]
  specialists = _specialist_detail(plan)
  if specialists:
    text += ["## Each specialist on every task\n",
             "Mean over seeds; the specialists row above takes the diagonal.\n", specialists]
  if budgets:
    text += ["## Compute\n", "RL rollouts per seed (rl.steps x rl.batch_prompts x "
             "rl.group_size, summed over a method's runs; merging reuses the specialists' "
             "runs):\n", "\n".join(f"- {k}: {v}" for k, v in budgets.items()) + "\n"]
  if timings:
    wall = sum(t["wall_s"] for t in timings.values())
    cpu = sum(t["cpu_s"] for t in timings.values())
    text.append(f"Jobs run by this workdir's commands: {len(timings)}, {wall / 60:.1f} min "
                f"wall, {cpu / 60:.1f} min CPU (user + system; timings.json).\n")
  _write_text(md_path, "\n".join(text))
  tmp = csv_path + ".tmp"
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["method", "group", "seeds"] + [h for c in COLUMNS for h in (c, f"{c} std")])
    for s in summaries:
      cells = []
      for c in COLUMNS:
        cells += [_num(s.mean.get(c)), _num(s.std.get(c))]
      writer.writerow([s.method.key, s.method.group, len(s.seeds)] + cells)
  os.replace(tmp, csv_path)
  per_seed = os.path.join(plan.workdir, "results_per_seed.csv")
  with open(per_seed + ".tmp", "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["method", "seed"] + list(COLUMNS))
    for s in summaries:
      for seed, row in zip(s.seeds, s.rows):
        writer.writerow([s.method.key, seed] + [_num(row.get(c)) for c in COLUMNS])
  os.replace(per_seed + ".tmp", per_seed)
  return md_path, csv_path


def _num(value: float | None) -> str:
  return "" if value is None or math.isnan(value) else f"{value:.4f}"


def _write_text(path: str, text: str) -> None:
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def _specialist_detail(plan: Plan) -> str:
  rows = {}
  for run in SPECIALISTS:
    if not any(r.name == run for r in plan.runs):
      continue
    per_seed = [table_lib.results_row(run_metrics(plan.run_dir(s, run)))
                for s in plan.seeds if plan.finished(s, run)]
    if per_seed:
      rows[run] = {c: sum(r[c] for r in per_seed) / len(per_seed)
                   for c in COLUMNS if all(c in r for r in per_seed)}
  if not rows:
    return ""
  return table_lib.format_markdown(rows)


# ------------------------------------------------------------------ plots


def learning_curves(plan: Plan, runs: Sequence[str]) -> dict[str, dict[str, tuple[list, list]]]:
  """run -> task -> (steps, mean training reward over seeds) from the runs' metrics.jsonl.

  A specialist contributes only its own task. Steps where a task got no prompts
  (no reward logged) are left out of that seed's mean.
  """
  out: dict[str, dict[str, tuple[list, list]]] = {}
  for run in runs:
    tasks = [run.removeprefix("specialist_")] if run in SPECIALISTS else list(TASKS)
    sums: dict[str, dict[int, list[float]]] = {t: collections.defaultdict(list) for t in tasks}
    for seed in plan.seeds:
      path = os.path.join(plan.run_dir(seed, run), observe.METRICS_FILE)
      for record in observe.read_metrics(path):
        if record.get("phase") != "rl":
          continue
        for task in tasks:
          value = record.get(f"reward/{task}")
          if value is not None:
            sums[task][int(record["step"])].append(float(value))
    curves = {t: (sorted(s), [sum(s[k]) / len(s[k]) for k in sorted(s)])
              for t, s in sums.items() if s}
    if curves:
      out[run] = curves
  return out


def _smooth(values: Sequence[float], window: int) -> list[float]:
  """Trailing moving average over `window` points (the first points average fewer)."""
  out = []
  for i in range(len(values)):
    chunk = values[max(0, i - window + 1): i + 1]
    out.append(sum(chunk) / len(chunk))
  return out


def plot_average(summaries: Sequence[Summary], path: str) -> str:
  """Bar chart: each method's average score, error bar one std, dots the seeds."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  shown = [s for s in summaries if table_lib.AVERAGE in s.mean]
  fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(shown) + 2), 4.2))
  xs = range(len(shown))
  means = [s.mean[table_lib.AVERAGE] for s in shown]
  errs = [0.0 if math.isnan(s.std[table_lib.AVERAGE]) else s.std[table_lib.AVERAGE]
          for s in shown]
  colors = ["tab:red" if s.method.key in ("astor", "astor_ref") else
            ("tab:gray" if s.method.group == "ablation" else "tab:blue") for s in shown]
  ax.bar(xs, means, yerr=errs, capsize=4, color=colors, alpha=0.8)
  for x, s in zip(xs, shown):
    seeds = [r[table_lib.AVERAGE] for r in s.rows if table_lib.AVERAGE in r]
    ax.scatter([x] * len(seeds), seeds, color="black", s=10, zorder=3)
  ax.set_xticks(list(xs), [s.method.label for s in shown], rotation=30, ha="right")
  ax.set(ylabel="average of the ten metrics (%)",
         title="Average score per method (mean ± std over seeds)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_learning_curves(curves: Mapping[str, Mapping[str, tuple[list, list]]], path: str,
                         title: str) -> str:
  """One panel per task: mean training reward over RL steps, one line per run."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
  for ax, task in zip(axes.ravel(), TASKS):
    for run, by_task in curves.items():
      if task in by_task:
        steps, values = by_task[task]
        label = "specialist" if run in SPECIALISTS else run
        ax.plot(steps, _smooth(values, max(1, len(values) // 10)), label=label)
    ax.set(title=task, xlabel="RL step", ylabel="training reward")
    if ax.has_data():
      ax.legend(fontsize="x-small")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write_report(plan: Plan, budgets: Mapping[str, int] | None = None) -> list[str]:
  """Writes the results files and plots from whatever runs have finished; returns paths."""
  summaries = collect(plan)
  if not summaries:
    raise FileNotFoundError(f"{plan.workdir}: no finished run yet; run the suite first")
  timings = None
  timings_path = os.path.join(plan.workdir, TIMINGS_FILE)
  if os.path.exists(timings_path):
    with open(timings_path, encoding="utf-8") as f:
      timings = json.load(f)
  paths = list(write_results(plan, summaries, budgets, timings))
  plots = os.path.join(plan.workdir, PLOTS_DIR)
  os.makedirs(plots, exist_ok=True)
  paths.append(plot_average(summaries, os.path.join(plots, "average.png")))
  main_runs = [r for r in ("astor", "joint_uniform", "curriculum", *SPECIALISTS)
               if any(x.name == r for x in plan.runs)]
  ablation_runs = [r for r in ("astor", "no_schedule", "no_calibration", "no_synergy",
                               "kl_direction_flipped") if any(x.name == r for x in plan.runs)]
  for runs, name, title in ((main_runs, "learning_curves.png", "Training reward per task"),
                            (ablation_runs, "learning_curves_ablations.png",
                             "Training reward per task: ASTOR ablations")):
    curves = learning_curves(plan, runs)
    if curves:
      paths.append(plot_learning_curves(curves, os.path.join(plots, name), title))
  return paths


# ------------------------------------------------------------------ command line


def fail(message: str) -> None:
  """Prints one line naming the flag and the fix, exits with status 2."""
  print(f"astor_jax.reproduce: error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv: Sequence[str]) -> None:
  from absl import flags

  if len(argv) > 1:
    fail(f"unexpected arguments {list(argv[1:])}; see --help")
  f = flags.FLAGS
  if not f.workdir:
    fail("--workdir: missing; pass --workdir=DIR (created if absent)")
  seeds = f.seeds if f.seeds is not None else (1 if f.quick else 3)
  if seeds < 1:
    fail(f"--seeds: got {seeds}, expected a positive integer")
  methods = tuple(m for m in f.only.split(",") if m) if f.only else METHOD_KEYS
  unknown = [m for m in methods if m not in METHOD_KEYS]
  if unknown:
    fail(f"--only: unknown method {unknown[0]!r}; use some of {', '.join(METHOD_KEYS)}")
  extra = []
  for item in f.set:
    path, eq, value = item.partition("=")
    if not eq:
      fail(f"--set: {item!r} is not FIELD=VALUE; e.g. --set=astor.tau=1.0")
    extra.append((path.removeprefix("config."), parse_value(value)))
  try:
    plan = Plan(f.workdir, get_suite(f.suite, f.quick), seeds, methods, extra)
    if os.path.exists(plan.workdir) and not os.path.isdir(plan.workdir):
      fail(f"--workdir: {plan.workdir} is a file; pass a directory")
    budgets = plan.check_equal_compute()
    if f.dry_run:
      print(f"equal compute: {budgets}")
      for seed in plan.seeds:
        for run in plan.runs:
          state = "finished" if plan.finished(seed, run.name) else "to run"
          print(f"# seed_{seed}/{run.name} ({state})")
          if run.kind == "merge":
            print("  " + shlex.join(plan.merge_command(run, seed)))
          print("  " + shlex.join(plan.command(run, seed)))
      return
    if not f.report_only:
      execute(plan)
    for path in write_report(plan, budgets):
      print(f"wrote {path}")
  except (ValueError, FileNotFoundError, RunFailed) as e:
    fail(str(e))


def run() -> None:
  from absl import app, flags

  flags.DEFINE_string("suite", "tiny", "Which suite: tiny.")
  flags.DEFINE_integer("seeds", None, "Seeds per method (0 .. seeds-1); default 3, with "
                                      "--quick 1.")
  flags.DEFINE_string("workdir", None, "Directory of the suite (created; resumed if present).")
  flags.DEFINE_bool("quick", False, "The quick sizes (same table shape, minutes not hours).")
  flags.DEFINE_string("only", "", f"Comma-separated methods to run (default all: "
                                  f"{', '.join(METHOD_KEYS)}).")
  flags.DEFINE_multi_string("set", [], "FIELD=VALUE override for every run of every method "
                                       "(equal tuning), e.g. --set=astor.tau=1.0.")
  flags.DEFINE_bool("report_only", False, "Only write results and plots from finished runs.")
  flags.DEFINE_bool("dry_run", False, "Check equal compute and print every command; run nothing.")
  app.run(main)


if __name__ == "__main__":
  run()
