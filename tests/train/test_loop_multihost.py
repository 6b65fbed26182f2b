"""The training loop across two processes (jax.distributed on localhost) against one process.

Two processes with 2 CPU devices each form one 4-device mesh and run the
tiny job (SFT, RL, eval; `tiny_config`). SIGTERM reaches process 1 only, after RL
step 1: both processes must agree to stop, save the same checkpoint
(multi-host orbax) and return. Relaunched, both restore it and train to the
end; a single process with 4 devices runs the same job from the same data
and SFT warm start as the reference. Asserted:

- every launch finishes (no process hangs in a collective); the first stops
  after step 1 on both processes, with reason SIGTERM and signal 15 on both;
- only process 0 wrote: one metrics record per step, one TensorBoard events
  file per phase and launch, the plots and results; process 1 printed no log
  lines; both processes return the evaluation table, equal to the one
  process's (greedy decoding);
- against one process: the sampled and scheduled scalars (rewards, budgets,
  completion lengths, zero-reward counts, skips) are equal; losses, KL,
  entropies, gradient norms and the final checkpointed state (params,
  optimizer state, UtilityState, rng, step) agree to rtol 1e-4 (state 1e-3,
  atol 1e-5). Not bitwise: XLA's cross-process all-reduce (gloo) adds the
  devices' partial sums in another order than the in-process one, so
  gradients and everything after them differ in the last bits (a three-step
  data-parallel SGD on 2 x 2 and 1 x 4 CPU devices already does). The
  policy's rewards are all 0 at this size, so the job trains with an entropy
  bonus: with a zero gradient, Adam would turn last-bit noise into full-size
  updates and the comparison would measure nothing.

One test function, so `pytest -n` runs the five processes on one worker.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from astor_jax.train import loop, observe
from tests.train import test_loop

pytestmark = pytest.mark.slow  # about 3 CPU-minutes; still part of `make test`

REPO = test_loop.REPO
STEPS = 2
PREEMPT_AFTER = 1

# A job process: `python -c _JOB shared workdir steps preempt_after outcome.json`; the launch
# comes from the JAX_* variables (explicit) or is a single process.
_JOB = textwrap.dedent("""
    import json, os, signal, sys
    from astor_jax import distributed
    distributed.initialize()
    import jax
    from astor_jax.train import loop
    from tests.train.test_loop import tiny_config

    shared, workdir, steps, preempt_after = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:5])
    config = tiny_config(shared)
    config.rl.steps = steps
    # A real gradient at every step (the tiny policy's rewards are all 0, and
    # Adam would blow last-bit noise in a zero gradient up to full-size steps).
    config.rl.entropy_coef = 0.01
    config.phases = ("sft", "rl", "eval")
    config.eval.sft_baseline = False
    if preempt_after and jax.process_index() == jax.process_count() - 1:
      real_step = loop.RLPhase.run_step

      def run_step(self, timer):
        out = real_step(self, timer)
        if self.step == preempt_after:
          os.kill(os.getpid(), signal.SIGTERM)  # this process only
        return out

      loop.RLPhase.run_step = run_step
    outcome = loop.train(config, workdir)
    # To a file, not stdout: collective backends (Gloo) log to stdout from their
    # own threads, and those lines can land inside ours.
    with open(sys.argv[5], "w") as f:
      json.dump({"process": jax.process_index(), "devices": jax.device_count(),
                 "finished": outcome.finished, "reason": outcome.stop_reason,
                 "signal": outcome.signal, "rl_step": outcome.rl_step,
                 "results": outcome.results}, f)
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(shared, workdir, *, processes, devices_per_process, preempt_after=0, cache_dir=""):
  """Starts the job's processes; returns the Popen handles."""
  port = _free_port()
  procs = []
  for pid in range(processes):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TPU_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                                "JAX_PROCESS_ID"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
               JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    if cache_dir:  # the relaunch reuses the first launch's executables
      env.update(JAX_COMPILATION_CACHE_DIR=cache_dir,
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(processes),
                 JAX_PROCESS_ID=str(pid), ASTOR_DISTRIBUTED="explicit")
    else:
      env["ASTOR_DISTRIBUTED"] = "off"
    outcome_path = f"{workdir}.outcome.{pid}.json"
    if os.path.exists(outcome_path):
      os.remove(outcome_path)  # a relaunch must not read the first launch's outcome
    proc = subprocess.Popen(
        [sys.executable, "-c", _JOB, shared, workdir, str(STEPS), str(preempt_after),
         outcome_path],
        cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.outcome_path = outcome_path
    procs.append(proc)
  return procs


def _wait(procs, log_prefix="", timeout_s=300):
  """(stdout, stderr, outcome dict) per process; all are killed if one fails or hangs."""
  deadline = time.monotonic() + timeout_s
  results = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=max(deadline - time.monotonic(), 1))
      if log_prefix:  # kept next to the run for a failure's post-mortem
        with open(f"{log_prefix}.{len(results)}.log", "w") as f:
          f.write(out + err)
      assert p.returncode == 0, f"process exited with {p.returncode}:\n{err[-3000:]}"
      with open(p.outcome_path) as f:
        results.append((out, err, json.load(f)))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  return results


# Scalars decided by sampling, scoring and scheduling: equal, not only close.
_EXACT = ("phase", "step", "reward", "budget/", "zero_reward/", "completion_",
          "truncated_fraction", "skipped")


def _assert_close_records(expected, actual):
  assert len(actual) == len(expected)
  for want, got in zip(expected, actual):
    assert got.keys() == want.keys()
    for key, value in want.items():
      if key.startswith(_EXACT) or value is None or got[key] is None:
        assert got[key] == value, (want["step"], key, got[key], value)
      else:
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-6,
                                   err_msg=f"step {want['step']}: {key}")


def _assert_close_state(expected, actual):
  leaves, tree = jax.tree.flatten(expected)
  actual_leaves, actual_tree = jax.tree.flatten(actual)
  assert actual_tree == tree
  for want, got in zip(leaves, actual_leaves):
    want, got = np.asarray(want), np.asarray(got)
    if np.issubdtype(want.dtype, np.floating):
      np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
    else:  # steps, rng key data, prompt counters
      np.testing.assert_array_equal(got, want)


def _final_state(workdir):
  """(step, state) of the run's latest RL checkpoint, restored onto this process's device.

  The checkpoint names the devices that wrote it (another process's ids for a
  two-process run), so it is restored into an explicit one-device target.
  """
  import orbax.checkpoint as ocp

  directory = os.path.join(workdir, loop.CHECKPOINT_DIR)
  step = max(int(n) for n in os.listdir(directory) if n.isdigit())
  path = os.path.join(directory, str(step), "state")
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata.tree)
  return step, checkpointer.restore(path, target)


def test_two_processes_match_one_process(tmp_path):
  start = time.monotonic()
  shared, ref_dir, multi_dir = (str(tmp_path / n) for n in ("shared", "one", "two"))
  cache = str(tmp_path / "jax_cache")
  first_results = _wait(_launch(shared, multi_dir, processes=2, devices_per_process=2,
                                preempt_after=PREEMPT_AFTER, cache_dir=cache),
                        log_prefix=f"{multi_dir}.first")
  # The SIGTERM reached process 1 only; both stopped after the same step.
  for pid, (_, _, outcome) in enumerate(first_results):
    assert outcome == {"process": pid, "devices": 4, "finished": False, "reason": "SIGTERM",
                       "signal": 15, "rl_step": PREEMPT_AFTER, "results": None}
  assert [r["step"] for r in test_loop._rl_records(multi_dir)] == [PREEMPT_AFTER]

  # Resumed on two processes, and the reference on one process with 4 devices
  # (the same data and SFT warm start, from `shared`), side by side.
  second = _launch(shared, multi_dir, processes=2, devices_per_process=2, cache_dir=cache)
  reference = _launch(shared, ref_dir, processes=1, devices_per_process=4)
  second_results = _wait(second, log_prefix=f"{multi_dir}.second")
  (_, _, ref_outcome), = _wait(reference, log_prefix=f"{ref_dir}.run")
  ref_results = ref_outcome.pop("results")
  assert ref_outcome == {"process": 0, "devices": 4, "finished": True, "reason": "",
                         "signal": 0, "rl_step": STEPS}
  for pid, (_, _, outcome) in enumerate(second_results):
    results = outcome.pop("results")
    assert outcome == {"process": pid, "devices": 4, "finished": True, "reason": "",
                       "signal": 0, "rl_step": STEPS}
    # Evaluation: every process has the table; it is the one process's (greedy decoding).
    assert list(results) == ["astor"]
    np.testing.assert_equal(results, ref_results)

  # Only process 0 wrote the run's files and printed its log lines.
  records = observe.read_metrics(os.path.join(multi_dir, observe.METRICS_FILE))
  sft_steps = [r["step"] for r in records if r["phase"] == "sft"]
  assert sft_steps == sorted(set(sft_steps)) and sft_steps
  assert [r["step"] for r in records if r["phase"] == "rl"] == list(range(1, STEPS + 1))
  assert [r["step"] for r in records if r["phase"] == "eval"] == [STEPS]
  for phase, launches in (("sft", 1), ("rl", 2), ("eval", 1)):
    events = os.listdir(os.path.join(multi_dir, observe.TENSORBOARD_DIR, phase))
    # One events file per launch that wrote the phase (RL: before and after the stop).
    assert len(events) == launches, (phase, events)
  assert os.listdir(os.path.join(multi_dir, "plots"))
  for name in (loop.REASONS_FILE, loop.EVAL_SAMPLES_FILE, "eval.json", "results.md", "results.csv"):
    assert os.path.exists(os.path.join(multi_dir, "results", name)), name
  for results in (first_results, second_results):
    assert "astor_jax:" in results[0][1]
    assert "astor_jax:" not in results[1][1], results[1][1][-2000:]

  # The metrics and final state of one process with the same 4 devices.
  _assert_close_records(test_loop._rl_records(ref_dir), test_loop._rl_records(multi_dir))
  step_ref, state_ref = _final_state(ref_dir)
  step_multi, state_multi = _final_state(multi_dir)
  assert step_ref == step_multi == STEPS
  _assert_close_state(state_ref, state_multi)
  assert int(np.asarray(state_multi["train"]["step"])) == STEPS
  print(f"two-process test took {time.monotonic() - start:.0f} s")
