"""Multi-process start-up from the environment, per-process shares, process-0 output."""

import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from astor_jax import distributed

SLURM_2x8 = {
    "SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[017-018]", "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
}


def test_no_cluster_variables_is_single_process():
  assert distributed.detect({}) == distributed.LaunchEnv("single")
  assert not distributed.detect({"HOME": "/root"}).multi_process


def test_explicit_variables():
  env = distributed.detect({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:8476",
                            "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3",
                            "JAX_LOCAL_DEVICE_IDS": "0,1"})
  assert env == distributed.LaunchEnv("explicit", "10.0.0.1:8476", 4, 3, (0, 1))


@pytest.mark.parametrize("env, named", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"}, "JAX_PROCESS_ID"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID=2"),
    ({"JAX_COORDINATOR_ADDRESS": "nohost", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     "JAX_COORDINATOR_ADDRESS"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES"),
    ({"ASTOR_DISTRIBUTED": "slurm"}, "SLURM_JOB_ID"),
    ({"ASTOR_DISTRIBUTED": "mpi"}, "ASTOR_DISTRIBUTED"),
])
def test_incomplete_environment_names_the_variable(env, named):
  with pytest.raises(distributed.LaunchError, match=named):
    distributed.detect(env)


def test_slurm_one_task_per_node_keeps_all_gpus():
  env = distributed.detect(SLURM_2x8)
  port = 4242 % 4096 + 65535 - 4096 + 1
  assert env == distributed.LaunchEnv("slurm", f"gpu017:{port}", 2, 1, None)


def test_slurm_one_task_per_gpu_keeps_its_gpu_and_port_override():
  env = distributed.detect({**SLURM_2x8, "SLURM_NTASKS": "16", "SLURM_PROCID": "13",
                            "SLURM_LOCALID": "5", "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
                            "JAX_COORDINATOR_PORT": "1234"})
  assert env == distributed.LaunchEnv("slurm", "gpu017:1234", 16, 13, (5,))


def test_slurm_single_task_and_off_switch_are_single_process():
  assert distributed.detect({**SLURM_2x8, "SLURM_NTASKS": "1"}).kind == "single"
  assert distributed.detect({**SLURM_2x8, "ASTOR_DISTRIBUTED": "off"}).kind == "single"


@pytest.mark.parametrize("node_list, first", [
    ("gpu17", "gpu17"), ("gpu17,gpu18", "gpu17"), ("gpu[017-020,031]", "gpu017"),
    ("gpu[3,7-9],cpu1", "gpu3"), ("n[001-004]-ib", "n001-ib"),
])
def test_first_slurm_host(node_list, first):
  assert distributed.first_slurm_host(node_list) == first


def test_tpu_pod_variables_defer_to_jax_detection():
  assert distributed.detect({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3",
                             "TPU_WORKER_ID": "2"}).kind == "tpu"
  assert distributed.detect({"MEGASCALE_COORDINATOR_ADDRESS": "t0"}).kind == "tpu"
  assert distributed.detect({"TPU_WORKER_HOSTNAMES": "localhost"}).kind == "single"
  assert distributed.detect({"ASTOR_DISTRIBUTED": "tpu"}) == distributed.LaunchEnv("tpu")


@pytest.mark.parametrize("n, count", [(10, 3), (3, 4), (128, 16), (0, 2)])
def test_process_slices_tile_the_items(n, count):
  shares = [distributed.process_slice(n, i, count) for i in range(count)]
  covered = np.concatenate([np.arange(n)[s] for s in shares])
  np.testing.assert_array_equal(covered, np.arange(n))
  sizes = [s.stop - s.start for s in shares]
  assert max(sizes) - min(sizes) <= 1


def test_any_process_in_one_process_is_the_flag():
  assert distributed.any_process(True) and not distributed.any_process(False)


def test_one_process_helpers_are_plain_copies():
  devices = np.array(jax.devices()[:8]).reshape(8, 1, 1)
  mesh = Mesh(devices, ("data", "fsdp", "tensor"))
  sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))
  x = np.arange(32, dtype=np.float32).reshape(16, 2)
  array = distributed.global_array(sharding, x, (16, 2))
  assert array.sharding == sharding
  np.testing.assert_array_equal(distributed.local_rows(array), x)
  np.testing.assert_array_equal(distributed.to_host(array), x)
  assert distributed.allgather_json({"a": [1]}) == [{"a": [1]}]
  distributed.barrier("nothing to wait for")
  with pytest.raises(ValueError, match="every row"):
    distributed.global_array(sharding, x[:8], (16, 2))


def test_process_rows_single_process_sees_every_row():
  devices = np.array(jax.devices()[:8]).reshape(4, 2, 1)
  mesh = Mesh(devices, ("data", "fsdp", "tensor"))
  sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))
  np.testing.assert_array_equal(distributed.process_rows(sharding, (16, 5)), np.arange(16))


_TWO_PROCESS_SCRIPT = textwrap.dedent("""
  import os
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  os.environ["JAX_PLATFORMS"] = "cpu"
  from astor_jax import distributed
  launch = distributed.initialize()
  import jax, sys, numpy as np
  # Results go to a file of our own: collective backends (Gloo) log to stdout
  # from their own threads, and those lines can land inside ours.
  out = open(sys.argv[1], "w")
  def emit(*args):
    print(*args, file=out, flush=True)
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  d = jax.devices()
  # Interleave the processes' devices so each owns non-contiguous rows.
  mesh = Mesh(np.array([d[0], d[2], d[1], d[3]]), ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  rows = distributed.process_rows(sharding, (8,))
  local = (10 * rows).astype(np.float32)  # what this host's pool would score
  rewards = jax.make_array_from_process_local_data(sharding, local, (8,))
  full = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, PartitionSpec()))(rewards)
  emit("process", jax.process_index(), "of", jax.process_count(), launch.kind,
       "rows", rows.tolist())
  distributed.main_print("GLOBAL", np.asarray(full.addressable_data(0)).tolist(), file=out,
                        flush=True)
  # A stop request seen by process 1 only is agreed on by both.
  emit("stop", distributed.any_process(jax.process_index() == 1),
       distributed.any_process(False))
  # Rows of a [8, 3] array: this host's rows in and out, the whole array on every host.
  tokens_local = np.stack([rows, rows + 100, rows + 200], axis=1).astype(np.int32)
  tokens = distributed.global_array(NamedSharding(mesh, PartitionSpec("data", None)),
                                    tokens_local, (8, 3))
  emit("roundtrip", np.array_equal(distributed.local_rows(tokens), tokens_local),
       np.array_equal(distributed.local_rows(rewards), local))
  emit("host", distributed.to_host(tokens)[:, 0].tolist())
  me = jax.process_index()
  emit("json", distributed.allgather_json({"process": me, "x": "a" * (1 + me)}))
  distributed.barrier("end")
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_on_localhost(tmp_path):
  script = tmp_path / "job.py"
  script.write_text(_TWO_PROCESS_SCRIPT)
  port = _free_port()
  procs = []
  for pid in range(2):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_"))}
    env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid), ASTOR_DISTRIBUTED="auto")
    procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / f"out{pid}.txt")],
                                  env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE))
  for p in procs:
    try:
      _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    assert p.returncode == 0, err[-2000:]
  outs = [(tmp_path / f"out{pid}.txt").read_text() for pid in range(2)]
  assert "process 0 of 2 explicit rows [0, 1, 4, 5]" in outs[0]
  assert "process 1 of 2 explicit rows [2, 3, 6, 7]" in outs[1]
  expected = f"GLOBAL {[float(10 * i) for i in range(8)]}"
  assert expected in outs[0]
  assert "GLOBAL" not in outs[1]  # only process 0 prints
  assert all("stop True False" in out for out in outs)
  assert all("roundtrip True True" in out for out in outs)
  assert all(f"host {list(range(8))}" in out for out in outs)
  gathered = [{"process": 0, "x": "a"}, {"process": 1, "x": "aa"}]
  assert all(f"json {gathered}" in out for out in outs)
