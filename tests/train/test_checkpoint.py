"""Checkpoints: round trip, retention, atomicity under kill -9, preemption signals."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astor_jax.train import checkpoint as ckpt_lib


def _state(step: int):
  return {
      "params": {"w": jnp.full((3, 4), float(step)), "b": jnp.arange(4, dtype=jnp.bfloat16)},
      "rng": jax.random.key(step),
      "legacy_rng": jax.random.PRNGKey(step),
      "step": jnp.int32(step),
  }


def _assert_trees_equal(a, b):
  a = ckpt_lib._keys_to_data(a)
  b = ckpt_lib._keys_to_data(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("async_save", [False, True])
def test_round_trip_keeps_values_dtypes_keys_and_host_state(tmp_path, async_save):
  with ckpt_lib.Checkpointer(tmp_path, keep_last=2, async_save=async_save) as ckpt:
    ckpt.save(7, _state(7), {"data": {"code_io": [3, 1]}, "x": np.float32(0.5)},
              {"reward_mean": 0.25})
    ckpt.wait()
    restored, host, step = ckpt.restore(_state(0))
  assert step == 7
  _assert_trees_equal(restored, _state(7))
  assert jax.random.key_impl(restored["rng"]) == jax.random.key_impl(_state(0)["rng"])
  assert host == {"data": {"code_io": [3, 1]}, "x": 0.5}


def test_restore_into_template_sharding(tmp_path):
  mesh = jax.make_mesh((8,), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  state = {"w": jax.device_put(jnp.arange(16.0), sharding)}
  with ckpt_lib.Checkpointer(tmp_path, keep_last=1) as ckpt:
    ckpt.save(1, state, {})
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            state)
    restored, _, _ = ckpt.restore(template)
  assert restored["w"].sharding == sharding
  np.testing.assert_array_equal(restored["w"], np.arange(16.0))


def test_keeps_last_n_and_best(tmp_path):
  rewards = {1: 0.9, 2: 0.1, 3: float("nan"), 4: 0.3, 5: 0.2}
  with ckpt_lib.Checkpointer(tmp_path, keep_last=2, keep_best=1) as ckpt:
    for step, reward in rewards.items():
      ckpt.save(step, _state(step), {}, {"reward_mean": reward})
    assert ckpt.all_steps() == [1, 4, 5]
    assert ckpt.best_step() == 1
  # The retention survives a restart: metrics are on disk next to each step.
  with ckpt_lib.Checkpointer(tmp_path, keep_last=2, keep_best=1) as ckpt:
    assert ckpt.best_step() == 1
    ckpt.save(6, _state(6), {}, {"reward_mean": 0.0})
    assert ckpt.all_steps() == [1, 5, 6]


def test_without_keep_best_only_last_n_survive(tmp_path):
  with ckpt_lib.Checkpointer(tmp_path, keep_last=1, keep_best=0) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, _state(step), {}, {"reward_mean": 1.0 / step})
    assert ckpt.all_steps() == [3]


def test_saving_an_existing_step_keeps_the_saved_one(tmp_path):
  with ckpt_lib.Checkpointer(tmp_path, keep_last=2) as ckpt:
    ckpt.save(2, _state(2), {"v": 1})
    ckpt.save(2, _state(5), {"v": 2})
    restored, host, _ = ckpt.restore(_state(0))
  assert host == {"v": 1}
  _assert_trees_equal(restored, _state(2))


def test_restore_without_checkpoint_raises(tmp_path):
  with ckpt_lib.Checkpointer(tmp_path, keep_last=1) as ckpt:
    assert ckpt.latest_step() is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
      ckpt.restore(_state(0))


# The child saves step 1, then starts saving step 2 and is killed with SIGKILL
# after every file of step 2 is written but before orbax's atomic rename commits
# it: the most damaging moment. Blocking in `finalize` makes the kill land there
# every time, without timing guesses.
_CHILD = textwrap.dedent("""
    import os, sys, time
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from astor_jax.train import checkpoint as ckpt_lib

    directory, marker = sys.argv[1], sys.argv[2]
    commit = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize_then_hang(self):
      if self.get_final().name == "2":
        open(marker, "w").close()
        time.sleep(600)
      await commit(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize_then_hang
    ckpt = ckpt_lib.Checkpointer(directory, keep_last=3)
    big = jnp.ones((512, 1024))
    ckpt.save(1, {"w": big * 1, "step": jnp.int32(1)}, {"pos": 1})
    ckpt.save(2, {"w": big * 2, "step": jnp.int32(2)}, {"pos": 2})
""")


def test_kill_9_during_save_leaves_last_complete_checkpoint(tmp_path):
  directory, marker = tmp_path / "ckpt", tmp_path / "in_save"
  child = subprocess.Popen([sys.executable, "-c", _CHILD, str(directory), str(marker)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    while not marker.exists():
      if child.poll() is not None:
        pytest.fail("child exited before reaching the save: " + child.stdout.read().decode())
      time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
  finally:
    child.wait()
    child.stdout.close()
  assert child.returncode == -signal.SIGKILL
  assert any("tmp" in name for name in os.listdir(directory)), "no half-written save to survive"

  template = {"w": jnp.zeros((512, 1024)), "step": jnp.int32(0)}
  with ckpt_lib.Checkpointer(directory, keep_last=3) as ckpt:
    assert ckpt.all_steps() == [1]
    restored, host, step = ckpt.restore(template)
    assert (step, host, int(restored["step"])) == (1, {"pos": 1}, 1)
    np.testing.assert_array_equal(restored["w"], np.ones((512, 1024)))
    # The resumed run saves step 2 again over the debris of the killed save.
    ckpt.save(2, {"w": template["w"] + 2, "step": jnp.int32(2)}, {"pos": 2})
    assert ckpt.all_steps() == [1, 2]
    assert int(ckpt.restore(template)[0]["step"]) == 2
  assert not any("tmp" in name for name in os.listdir(directory))


def test_preemption_guard_flags_first_signal_and_restores_handlers():
  before = signal.getsignal(signal.SIGTERM)
  with ckpt_lib.PreemptionGuard() as guard:
    assert guard.requested is None
    os.kill(os.getpid(), signal.SIGTERM)
    # Python runs handlers between bytecodes; give it a few.
    for _ in range(100):
      if guard.requested:
        break
      time.sleep(0.01)
    assert guard.requested == signal.SIGTERM
    assert guard.name == "SIGTERM"
    # A second signal would now kill the process: the default handler is armed.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
  assert signal.getsignal(signal.SIGTERM) == before
