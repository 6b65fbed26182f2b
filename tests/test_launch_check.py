"""Topologies, paper configs, launchers and the compile-time memory check."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from jax.sharding import AbstractMesh

from astor_jax import config as config_lib
from astor_jax import launch_check
from astor_jax import topology as topology_lib
from astor_jax.train import step as step_lib

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = ("qwen25_coder_7b", "qwen3_8b")


def load_config_module(relative: str):
  spec = importlib.util.spec_from_file_location(f"_cfg_{Path(relative).stem}", ROOT / relative)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_cli(*args, timeout=300):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  return subprocess.run([sys.executable, "-m", "astor_jax.launch_check", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------- topology


@pytest.mark.parametrize("name, devices, hosts, kind", [
    ("v5e-64", 64, 16, "TPU v5 lite"), ("v5litepod-8", 8, 1, "TPU v5 lite"),
    ("v5p-128", 64, 16, "TPU v5"), ("v4-64", 32, 8, "TPU v4"), ("v4-8", 4, 1, "TPU v4"),
    ("v2-8", 8, 1, "TPU v2"), ("8xh100", 8, 1, "NVIDIA H100 80GB HBM3"),
    ("16xH100", 16, 2, "NVIDIA H100 80GB HBM3"), ("cpu-8", 8, 1, "cpu"),
])
def test_topology_names(name, devices, hosts, kind):
  topo = topology_lib.parse(name)
  assert (topo.num_devices, topo.num_hosts, topo.device.device_kind) == (devices, hosts, kind)
  assert topo.num_hosts * topo.devices_per_host == topo.num_devices


@pytest.mark.parametrize("name, named", [
    ("v5p-127", "multiple of 2"), ("v5e-18", "multiple of 4"), ("12xh100", "multiple of 8"),
    ("a100", "unknown topology"), ("v5e-0", "v5e"),
])
def test_bad_topology_names_say_what_is_accepted(name, named):
  with pytest.raises(ValueError, match=named):
    topology_lib.parse(name)


def test_mesh_shape_resolution_and_layout_warnings():
  topo = topology_lib.parse("16xh100")
  assert topology_lib.mesh_shape(topo, -1, 8, 1) == (2, 8, 1)
  with pytest.raises(ValueError, match="config.mesh.data"):
    topology_lib.mesh_shape(topo, 4, 8, 1)
  with pytest.raises(ValueError, match="config.mesh.fsdp"):
    topology_lib.mesh_shape(topo, -1, 3, 1)
  assert topology_lib.check_mesh(topo, (2, 8, 1)) == []
  assert any("inter-node" in w for w in topology_lib.check_mesh(topo, (1, 16, 1)))
  assert any("tensor" in w for w in topology_lib.check_mesh(topo, (1, 1, 16)))


# ---------------------------------------------------------------------------- paper configs


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_every_target_meshes_and_paths_are_required(name):
  module = load_config_module(f"configs/paper/{name}.py")
  for target in module.TARGETS:
    c = module.get_config(target)
    assert (c.rl.batch_prompts, c.rl.group_size, c.rl.steps) == (128, 8, 400)
    assert c.topology == target and c.model.preset == "hf" and c.data.source == "files"
    shape = topology_lib.mesh_shape(topology_lib.parse(target), c.mesh.data, c.mesh.fsdp,
                                    c.mesh.tensor)
    # The 1024 rollouts split into the step's equal strided parts on every device (no
    # padding rows), and synergy is sketched (K whole gradients would not fit).
    mesh = AbstractMesh(shape, ("data", "fsdp", "tensor"))
    assert 1024 % step_lib.row_multiple(c, mesh) == 0
    assert c.astor.synergy_sketch_dim > 0
  c.model.hf_path = "/ckpt"
  for field in ("data.cruxeval_path", "data.mbpp_path", "data.aider_exercises_path",
                "data.commits_path"):
    with pytest.raises(config_lib.ConfigError, match=re.escape(f"config.{field}: empty")):
      config_lib.validate(c)
    section, key = field.split(".")
    c[section][key] = f"/inputs/{key}"
  config_lib.validate(c)
  with pytest.raises(ValueError, match="unknown target"):
    module.get_config("v5e-63")


# ---------------------------------------------------------------------------- launch_check


def smoke_config(**overrides):
  c = load_config_module("configs/astor.py").get_config("smoke")
  for path, value in overrides.items():
    section, key = path.split(".")
    c[section][key] = value
  return c


def test_analytic_accounting_follows_the_sharding():
  """Per-device parameter and optimizer bytes shrink with FSDP, not with data parallelism."""
  topo = topology_lib.parse("cpu-8")
  data = launch_check.check(smoke_config(), topo, mode="analytic", log=lambda _: None)
  fsdp = launch_check.check(smoke_config(**{"mesh.data": 1, "mesh.fsdp": 8}), topo,
                            mode="analytic", log=lambda _: None)
  mc = launch_check.model_config(smoke_config())[1]
  assert data.params_bytes == mc.num_params * 4  # replicated fp32
  assert fsdp.params_bytes < data.params_bytes / 4
  assert fsdp.opt_bytes < data.opt_bytes / 4
  assert data.fits and {p.source for p in data.programs} == {"analytic"}
  assert data.phases["training"] == data.programs[-1].peak_bytes + data.ref_bytes


def test_paper_model_replicated_on_8_devices_does_not_fit():
  module = load_config_module("configs/paper/qwen25_coder_7b.py")
  c = module.get_config("8xh100")
  c.mesh.data, c.mesh.fsdp = 8, 1
  report = launch_check.check(c, topology_lib.parse("8xh100"), mode="analytic",
                              log=lambda _: None)
  assert report.params_bytes > 28 * 2**30  # 7.6 B fp32 parameters on every device
  assert not report.fits
  assert any("--config.mesh.fsdp=8" in a for a in report.advice)
  assert "DOES NOT FIT" in launch_check.format_report(report)


def test_compiled_check_of_a_config_that_does_not_fit_fails_loudly(tmp_path):
  """The CLI end to end: fake devices, compile all three programs, exit 1 with advice.

  128 rollouts of 2048 tokens need about 5 GiB of train-step temporaries per
  device here, so a 2 GiB device cannot train them in one pass.
  """
  out = tmp_path / "report.json"
  result = run_cli("--config=configs/astor.py:smoke", "--topology=cpu-8", "--mode=compile",
                   "--hbm_gib=2", "--config.rl.batch_prompts=32",
                   "--config.sampler.max_new_tokens=1024",
                   "--config.sampler.prompt_buckets=(1024,)", f"--json_out={out}")
  assert result.returncode == 1, result.stderr[-3000:]
  assert "DOES NOT FIT: training needs" in result.stdout
  assert "--config.rl.minibatches" in result.stdout
  report = json.loads(out.read_text())
  assert report["topology"] == "cpu-8" and report["mesh_shape"] == [8, 1, 1]
  programs = {p["name"]: p for p in report["programs"]}
  assert set(programs) == {"sampler", "log-probs", "train step"}
  assert all(p["source"] == "compiled" and p["temp_bytes"] > 0 for p in programs.values())
  # The step's arguments hold this device's share of the parameters and AdamW moments.
  assert programs["train step"]["argument_bytes"] >= report["params_bytes"] + report["opt_bytes"]
  assert report["peak_bytes"] > report["usable_bytes"] and not report["fits"]


def test_cli_fits_and_bad_input():
  ok = run_cli("--config=configs/astor.py:smoke", "--topology=cpu-4", "--mode=analytic")
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "FITS: peak" in ok.stdout and "4 x cpu" in ok.stdout
  bad = run_cli("--config=configs/astor.py:smoke", "--topology=v5e-63")
  assert bad.returncode == 2 and "--topology" in bad.stderr and "multiple of 4" in bad.stderr
  mesh = run_cli("--config=configs/astor.py:smoke", "--topology=cpu-8", "--mode=analytic",
                 "--config.mesh.data=2")
  assert mesh.returncode == 2 and "config.mesh.data" in mesh.stderr


def test_topology_selects_the_paper_config_variant():
  argv = ["prog", "--config=configs/paper/qwen3_8b.py", "--topology=8xH100"]
  assert launch_check.select_variant(argv)[1] == "--config=configs/paper/qwen3_8b.py:8xh100"
  kept = ["prog", "--config=configs/astor.py", "--topology=cpu-8"]
  assert launch_check.select_variant(kept) == kept


def test_check_needs_enough_devices_in_process():
  with pytest.raises(launch_check.LaunchCheckError, match="python -m astor_jax.launch_check"):
    launch_check.check(smoke_config(), topology_lib.parse(f"cpu-{jax.device_count() * 2}"),
                       mode="analytic")


# ---------------------------------------------------------------------------- launchers


def test_colab_notebook_is_nbformat4_and_uses_real_commands():
  nb = json.loads((ROOT / "launch/colab_tpu.ipynb").read_text())
  assert nb["nbformat"] == 4 and nb["metadata"]["accelerator"] == "TPU"
  for cell in nb["cells"]:
    assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and "execution_count" in cell
  code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
  modules = set(re.findall(r"python -m ([\w.]+)", code))
  assert modules == {"astor_jax.main", "astor_jax.launch_check"}
  for module in modules:
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
  for path in re.findall(r"--config=([\w/.]+\.py)", code):
    assert (ROOT / path).is_file(), path
  assert "import jax\n" not in code  # the kernel must not hold the TPU


@pytest.fixture
def fake_gcloud(tmp_path):
  log = tmp_path / "gcloud.log"
  fake = tmp_path / "bin" / "gcloud"
  fake.parent.mkdir()
  fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" >> {log}\necho ---- >> {log}\n')
  fake.chmod(0o755)
  return log, f"{fake.parent}:{os.environ['PATH']}"


def test_tpu_vm_script_runs_the_job_on_all_workers(fake_gcloud):
  log, path = fake_gcloud
  result = subprocess.run(
      ["bash", str(ROOT / "launch/tpu_vm.sh"), "run", "pod", "zone-a",
       "--config=configs/paper/qwen25_coder_7b.py:v5e-64", "--workdir=gs://b/run one"],
      env={**os.environ, "PATH": path}, capture_output=True, text=True, timeout=30)
  assert result.returncode == 0, result.stderr
  calls = log.read_text().split("----\n")[0].splitlines()
  assert calls[:5] == ["compute", "tpus", "tpu-vm", "ssh", "pod"]
  assert "--worker=all" in calls and "--zone=zone-a" in calls
  command = next(c for c in calls if c.startswith("--command="))
  assert "ASTOR_DISTRIBUTED=tpu .venv/bin/python -m astor_jax.main" in command
  assert r"--workdir=gs://b/run\ one" in command  # quoted for the remote shell
  bad = subprocess.run(["bash", str(ROOT / "launch/tpu_vm.sh"), "launch"],
                       env={**os.environ, "PATH": path}, capture_output=True, text=True)
  assert bad.returncode == 2 and "unknown command" in bad.stderr


def test_slurm_script_is_valid_bash_and_points_at_real_paths():
  script = (ROOT / "launch/slurm_gpu.sbatch").read_text()
  subprocess.run(["bash", "-n", str(ROOT / "launch/slurm_gpu.sbatch")], check=True)
  assert "#SBATCH --ntasks-per-node=1" in script and "srun" in script
  assert "ASTOR_DISTRIBUTED=slurm" in script and "-m astor_jax.launch_check" in script
  default = re.search(r"CONFIG=\"\$\{CONFIG:-([\w/.]+\.py):", script).group(1)
  module = load_config_module(default)
  assert {"8xh100", "16xh100"} <= set(module.TARGETS)
