"""What the suite runs: runs, methods, suites, and the plan that turns them into commands."""

from __future__ import annotations

import ast
import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from astor_jax import method_configs
from astor_jax.eval import table as table_lib

TASKS = ("code_io", "code_gen", "test_gen", "commit_msg")
CONFIGS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
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
        # Every job compiles the same few programs: compile them once per suite.
        ("compilation_cache_dir", os.path.join(self.workdir, "xla_cache")),
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
