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

Modules: `plan` (runs, methods, suites, the plan and its equal-compute check),
`running` (one subprocess of the real job per run, resumable, timed),
`results` (tables over seeds), `plots`, `cli` (the command line).
"""

from astor_jax.reproduce.cli import fail, main, run
from astor_jax.reproduce.plan import (
    CONFIGS_DIR,
    LOG_FILE,
    METHOD_KEYS,
    PLOTS_DIR,
    QUICK_SUITES,
    REFERENCE_ROWS,
    RUNS_BY_NAME,
    SPECIALISTS,
    SUITE_FILE,
    SUITES,
    TASKS,
    TIMINGS_FILE,
    Method,
    Plan,
    Run,
    Suite,
    flag_value,
    get_suite,
    load_config,
    parse_value,
    rollout_budget,
    run_metrics,
    set_field,
)
from astor_jax.reproduce.plots import (
    learning_curves,
    plot_average,
    plot_learning_curves,
    write_report,
)
from astor_jax.reproduce.results import (
    COLUMNS,
    Summary,
    collect,
    markdown_table,
    method_row,
    summarize,
    write_results,
)
from astor_jax.reproduce.running import RunFailed, execute, launch

__all__ = [
    "TASKS",
    "CONFIGS_DIR",
    "SUITE_FILE",
    "TIMINGS_FILE",
    "LOG_FILE",
    "PLOTS_DIR",
    "REFERENCE_ROWS",
    "Run",
    "SPECIALISTS",
    "RUNS_BY_NAME",
    "Method",
    "METHOD_KEYS",
    "Suite",
    "SUITES",
    "QUICK_SUITES",
    "get_suite",
    "rollout_budget",
    "parse_value",
    "flag_value",
    "Plan",
    "load_config",
    "set_field",
    "run_metrics",
    "RunFailed",
    "launch",
    "execute",
    "method_row",
    "COLUMNS",
    "Summary",
    "summarize",
    "collect",
    "markdown_table",
    "write_results",
    "learning_curves",
    "plot_average",
    "plot_learning_curves",
    "write_report",
    "fail",
    "main",
    "run",
]
