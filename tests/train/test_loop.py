"""The training loop: exact resume after preemption and after kill -9 mid-save, guards, config.

The resume test runs a tiny job (2 tasks, 4 RL steps of 4 prompts x 2
rollouts on the 8 fake devices) straight, and once more interrupted: stopped
by SIGTERM after step 3 (it saves and returns), resumed in a child process
that is killed with SIGKILL while its step-4 checkpoint is being committed,
and resumed again to the end. Metrics and final state must equal the straight
run's bit for bit. It is one test function so that `pytest -n` runs the five
jobs once, on one worker.
"""

import concurrent.futures
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from astor_jax import config as config_lib
from astor_jax.train import checkpoint as ckpt_lib
from astor_jax.train import loop, observe

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 4
# Scalars that measure time, not results.
_TIMING = ("time/", "tokens_per_s")


def tiny_config(shared_dir: str):
  """The smallest job that still runs every part of the RL path."""
  spec = importlib.util.spec_from_file_location("_astor_config",
                                                os.path.join(REPO, "configs", "astor.py"))
  astor = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(astor)
  c = astor.get_config("smoke")
  c.tasks = ("code_io", "commit_msg")
  c.astor.curriculum_order = c.tasks
  c.phases = ("sft", "rl")
  c.data.train_per_task = 16
  c.data.eval_per_task = 4
  c.data.vocab_size = 512
  c.data.data_dir = os.path.join(shared_dir, "tfds")
  c.sampler.max_new_tokens = 12
  c.sampler.prompt_buckets = (320,)  # one bucket: one compile of each program
  c.rl.steps = STEPS
  c.rl.batch_prompts = 4
  c.rl.group_size = 2
  c.astor.synergy_interval = 2
  c.sft.steps = 4
  c.sft.batch_size = 8
  c.sft.cache_dir = os.path.join(shared_dir, "sft")
  c.checkpoint.every_steps = 2
  c.checkpoint.keep_last = 2
  c.checkpoint.keep_best = 1
  c.log.progress_bar = False
  return c


def _rl_records(workdir: str):
  records = [r for r in observe.read_metrics(os.path.join(workdir, observe.METRICS_FILE))
             if r["phase"] == "rl"]
  return [{k: v for k, v in r.items() if not k.startswith(_TIMING)} for r in records]


def _final_state(workdir: str):
  """(step, state item) of the run's latest RL checkpoint, restored without a template."""
  directory = os.path.join(workdir, loop.CHECKPOINT_DIR)
  with ckpt_lib.Checkpointer(directory, keep_last=2) as ckpt:
    step = ckpt.latest_step()
  return step, _restore_item(os.path.join(directory, str(step), "state"))


# The child resumes the interrupted run and hangs when orbax is about to commit
# the step-4 checkpoint (every file written, the atomic rename not yet done);
# the parent then kills it with SIGKILL.
_CHILD = textwrap.dedent("""
    import sys, time
    from orbax.checkpoint._src.path import atomicity
    from tests.train.test_loop import tiny_config
    from astor_jax.train import loop

    shared, workdir, marker = sys.argv[1:4]
    commit = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize_then_hang(self):
      final = self.get_final()
      if final.name == "4" and final.parent.name == "checkpoints":
        open(marker, "w").close()
        time.sleep(600)
      await commit(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize_then_hang
    loop.train(tiny_config(shared), workdir)
""")


@pytest.fixture
def compilation_cache(tmp_path):
  """A persistent XLA cache for a test's runs of the same programs (and its child process).

  Compiling dominates a tiny run; the cache only saves that time (the
  executables are the ones a fresh compile gives).
  """
  directory = str(tmp_path / "jax_cache")
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  previous = {name: getattr(jax.config, name) for name in names}
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield directory
  for name, value in previous.items():
    jax.config.update(name, value)


def _preempted_run(config, workdir, at_step):
  """`loop.train` with a SIGTERM delivered right after RL step `at_step` is logged."""
  real_write = observe.MetricWriter.write

  def write_then_preempt(self, phase, step, scalars):
    real_write(self, phase, step, scalars)
    if phase == "rl" and step == at_step:
      os.kill(os.getpid(), signal.SIGTERM)

  observe.MetricWriter.write = write_then_preempt
  try:
    return loop.train(config, workdir)
  finally:
    observe.MetricWriter.write = real_write


def _killed_in_save(shared, workdir, cache_dir):
  """Runs `_CHILD` and kills it with SIGKILL inside its step-4 save; returns its status."""
  marker = os.path.join(shared, "in_save")
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  child = subprocess.Popen([sys.executable, "-c", _CHILD, shared, workdir, marker],
                           cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    while not os.path.exists(marker):
      if child.poll() is not None:
        pytest.fail("child ended before its step-4 save: " + child.stdout.read().decode())
      time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
  finally:
    child.wait()
    child.stdout.close()
  return child.returncode


def _assert_same_state(state_a, state_b):
  leaves_a, tree_a = jax.tree.flatten(state_a)
  leaves_b, tree_b = jax.tree.flatten(state_b)
  assert tree_a == tree_b
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _restore_item(path):
  import orbax.checkpoint as ocp

  return ocp.StandardCheckpointer().restore(path)


def test_interrupted_and_resumed_run_equals_straight_run(tmp_path, compilation_cache):
  shared, straight, interrupted = (str(tmp_path / n) for n in ("shared", "a", "b"))
  config = tiny_config(shared)

  # The straight run.
  outcome = loop.train(config, straight)
  assert outcome.finished and outcome.rl_step == STEPS
  records = _rl_records(straight)
  assert [r["step"] for r in records] == list(range(1, STEPS + 1))
  for r in records:
    assert np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) and r["skipped"] == 0.0
    assert r["budget/code_io"] + r["budget/commit_msg"] == 4
    assert 0.0 <= r["reward"] <= 1.0
  with open(os.path.join(straight, "results", loop.REASONS_FILE)) as f:
    reasons = json.load(f)
  zero_rows = sum(r["zero_reward/code_io"] + r["zero_reward/commit_msg"] for r in records)
  assert sum(sum(c.values()) for c in reasons["zero_reward_reasons"].values()) == zero_rows

  # SIGTERM after step 3: a clean stop with a checkpoint of step 3 (2 is a regular one).
  outcome = _preempted_run(config, interrupted, at_step=3)
  assert not outcome.finished
  assert (outcome.stop_reason, outcome.signal, outcome.rl_step) == ("SIGTERM", signal.SIGTERM, 3)
  ckpt_dir = os.path.join(interrupted, loop.CHECKPOINT_DIR)
  with ckpt_lib.Checkpointer(ckpt_dir, keep_last=2) as ckpt:
    assert ckpt.all_steps() == [2, 3]

  # Resumed in a child killed with SIGKILL inside its step-4 save: 2 and 3 survive.
  assert _killed_in_save(shared, interrupted, compilation_cache) == -signal.SIGKILL
  leftovers = os.listdir(ckpt_dir)
  assert sorted(n for n in leftovers if n.isdigit()) == ["2", "3"]
  assert any("tmp" in n for n in leftovers), "the kill did not land inside the save"
  assert [r["step"] for r in _rl_records(interrupted)] == [1, 2, 3, 4]  # 4 was logged

  # Resumed again to the end: the same records (step 4's replaced) and state, bit for bit.
  outcome = loop.train(config, interrupted)
  assert outcome.finished and outcome.rl_step == STEPS
  assert _rl_records(interrupted) == records
  step_a, state_a = _final_state(straight)
  step_b, state_b = _final_state(interrupted)
  assert step_a == step_b == STEPS
  _assert_same_state(state_a, state_b)
  # Training changed the policy: the equality above is not two untouched copies.
  with ckpt_lib.Checkpointer(config.sft.cache_dir, keep_last=1) as sft_ckpt:
    sft_state = _restore_item(os.path.join(config.sft.cache_dir, str(sft_ckpt.latest_step()),
                                           "state"))
  changed = jax.tree.map(lambda x, y: not np.array_equal(x, y), sft_state["params"],
                         state_a["train"]["params"])
  assert any(jax.tree.leaves(changed))

  # Rerunning a finished run does nothing.
  outcome = loop.train(config, straight)
  assert outcome.finished and outcome.rl_step == STEPS
  assert _rl_records(straight) == records

  # A resume that would change the results is refused; extending the run is not.
  changed_config = tiny_config(shared)
  changed_config.rl.learning_rate = 1e-3
  with pytest.raises(config_lib.ConfigError, match=r"config\.rl\.learning_rate: .*--workdir"):
    loop.check_resume_config(changed_config, straight)
  longer = tiny_config(shared)
  longer.rl.steps = 10
  longer.cpu_resident_buffers = not longer.cpu_resident_buffers  # memory, not results
  loop.check_resume_config(longer, straight)


def test_a_run_saved_before_a_field_existed_resumes_with_its_old_value(tmp_path):
  """A saved config without `sampler.host_threads` was one sampler call per batch."""
  config = tiny_config(str(tmp_path / "shared"))
  saved = json.loads(config.to_json())
  del saved["sampler"]["host_threads"]
  (tmp_path / loop.CONFIG_FILE).write_text(json.dumps(saved))
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.sampler\.host_threads: 0, .* started with 1; pass "
                           r"--config\.sampler\.host_threads=1"):
    loop.check_resume_config(config, str(tmp_path))
  config.sampler.host_threads = 1
  loop.check_resume_config(config, str(tmp_path))


class _Poisoned:
  """A reward-like value that no Reward may hold (NaN), as a broken scorer could return."""

  value = float("nan")
  reason = "poisoned"


def test_guards_skip_bad_updates_and_count_failed_scoring(tmp_path, monkeypatch):
  """Step 1: scoring raises (all rewards 0, counted); step 2: NaN reward; step 3: NaN loss."""
  config = tiny_config(str(tmp_path / "shared"))
  config.rl.steps = 3
  calls = {"score": 0, "train": 0}
  real_score, real_collect = loop.score_batch, loop._collect_rewards

  def score(*args):
    calls["score"] += 1
    future = real_score(*args)
    if calls["score"] == 1:
      future = concurrent.futures.Future()
      future.set_exception(RuntimeError("sandbox died"))
    return future

  def collect(future, examples):
    rewards = real_collect(future, examples)
    return [_Poisoned()] + rewards[1:] if calls["score"] == 2 else rewards

  real_init = loop.RLPhase.__init__

  def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    step = self.train_step

    def train_step(*a):
      calls["train"] += 1
      train_state, utility_state, metrics = step(*a)
      if calls["train"] == 2:
        metrics = dict(metrics, loss=metrics["loss"] * float("nan"))
      return train_state, utility_state, metrics

    self.train_step = train_step

  monkeypatch.setattr(loop, "score_batch", score)
  monkeypatch.setattr(loop, "_collect_rewards", collect)
  monkeypatch.setattr(loop.RLPhase, "__init__", init)
  workdir = str(tmp_path / "guarded")
  outcome = loop.train(config, workdir)

  assert outcome.finished and outcome.rl_step == 3
  records = _rl_records(workdir)
  assert [r["skipped"] for r in records] == [0.0, 1.0, 1.0]
  assert records[0]["reward"] == 0.0 and np.isfinite(records[0]["loss"])
  assert calls["train"] == 2  # the NaN-reward step never reached the train step
  _, state = _final_state(workdir)
  assert int(state["train"]["step"]) == 1  # only step 1's update was applied
  assert int(state["utility"]["step"]) == 1
  with open(os.path.join(workdir, "results", loop.REASONS_FILE)) as f:
    reasons = json.load(f)
  assert reasons["skipped_updates"] == 2
  failed = sum(n for task in reasons["zero_reward_reasons"].values()
               for reason, n in task.items() if reason.startswith("scoring failed: RuntimeError"))
  assert failed == config.rl.batch_prompts * config.rl.group_size


def _save_hf_checkpoint(directory):
  """A tiny-world-shaped policy and a tokenizer written as a Hugging Face checkpoint."""
  from astor_jax.data.tokenizer import train_tokenizer
  from astor_jax.model import get_preset, init_params
  from astor_jax.model import transformer as transformer_lib
  from astor_jax.model.hf import save_pretrained

  texts = ["def f(x):\n    return x * 3 + 1\n[ANSWER]f(2)[/ANSWER]\n"] * 20
  tokenizer = train_tokenizer(texts, 300, str(directory / "tokenizer"))
  model = transformer_lib.Transformer(get_preset("tiny_world", vocab_size=len(tokenizer)))
  params = init_params(model, jax.random.PRNGKey(7))
  save_pretrained(str(directory / "hf"), model, params, tokenizer)
  config = tiny_config(str(directory / "shared"))
  config.model.preset = "hf"
  config.model.hf_path = str(directory / "hf")
  return config, tokenizer, params


def test_hf_preset_loads_the_model_from_hf_path(tmp_path):
  from astor_jax.model import make_mesh

  config, tokenizer, params = _save_hf_checkpoint(tmp_path)
  model, loaded = loop._build_model(config, tokenizer, make_mesh())
  assert model.config.vocab_size == len(tokenizer)
  _assert_same_state(params, loaded)


def test_hf_preset_loads_the_same_tokenizer_from_hf_path(tmp_path):
  config, tokenizer, _ = _save_hf_checkpoint(tmp_path)
  loaded = loop._load_or_train_tokenizer(config, str(tmp_path / "w"), {}, {})
  text = "def f(x):\n    return x * 3 + 1\n[ANSWER]f(2)[/ANSWER]"
  assert loaded.encode(text) == tokenizer.encode(text)
  assert len(loaded) == len(tokenizer)


def test_stop_check_reports_signal_before_wall_time():
  guard = ckpt_lib.PreemptionGuard()
  assert loop.StopCheck(guard, 0.0)() is None  # 0: no limit
  assert loop.StopCheck(guard, 1e-9)() == "max_wall_time_s"
  guard.requested = signal.SIGTERM
  assert loop.StopCheck(guard, 1e-9)() == "SIGTERM"
