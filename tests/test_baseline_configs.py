"""Baseline and ablation configs: each changes only what defines its method, on any base."""

import importlib.util
import os

import pytest

from astor_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("code_io", "code_gen", "test_gen", "commit_msg")


def load(relative_path, arg=None):
  spec = importlib.util.spec_from_file_location(
      "_cfg_" + relative_path.replace("/", "_").replace(".", "_"),
      os.path.join(ROOT, "configs", relative_path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def flat(config):
  out = {}

  def walk(node, prefix):
    for key, value in node.items():
      if hasattr(value, "items"):
        walk(value, f"{prefix}{key}.")
      else:
        out[f"{prefix}{key}"] = value

  walk(config, "")
  return out


def changed(config, base):
  a, b = flat(config), flat(base)
  return {k: a.get(k) for k in set(a) | set(b) if a.get(k) != b.get(k) and k != "variant"}


# (config file, arg, base variant of configs/astor.py, the fields the method sets)
CASES = [
    ("baselines/joint_uniform.py", None, None,
     {"astor.schedule": "uniform", "astor.calibrate": False}),
    ("baselines/curriculum.py", "order=test_gen>code_io>code_gen>commit_msg", None,
     {"astor.schedule": "curriculum", "astor.calibrate": False,
      "astor.curriculum_order": ("test_gen", "code_io", "code_gen", "commit_msg")}),
    ("baselines/specialist.py", "code_gen", None,
     {"astor.schedule": "specialist", "astor.specialist_task": "code_gen",
      "astor.calibrate": False, "rl.batch_prompts": 4}),
    ("baselines/specialist.py", "commit_msg,smoke", "smoke",
     {"astor.schedule": "specialist", "astor.specialist_task": "commit_msg",
      "astor.calibrate": False, "rl.batch_prompts": 2}),
    ("baselines/specialist.py", "test_gen,budget=full", None,
     {"astor.schedule": "specialist", "astor.specialist_task": "test_gen",
      "astor.calibrate": False}),
    ("ablations/no_schedule.py", None, None, {"astor.schedule": "uniform"}),
    ("ablations/no_calibration.py", "smoke", "smoke", {"astor.calibrate": False}),
    ("ablations/no_synergy.py", None, None, {"astor.synergy_weight": 0.0}),
    ("ablations/kl_direction_flipped.py", None, None,
     {"astor.kl_direction": "tighten_high_utility"}),
]


@pytest.mark.parametrize("path,arg,variant,fields", CASES)
def test_method_changes_only_its_defining_fields(path, arg, variant, fields):
  config = load(path, arg)
  assert changed(config, load("astor.py", variant)) == fields
  config_lib.validate(config)
  assert config.variant == f"{path}:{arg or ''}"


def test_specialists_split_one_multi_task_budget():
  base = load("astor.py")
  rollouts = lambda c: c.rl.steps * c.rl.batch_prompts * c.rl.group_size  # noqa: E731
  total = sum(rollouts(load("baselines/specialist.py", t)) for t in TASKS)
  assert total == rollouts(base) == rollouts(load("baselines/joint_uniform.py"))
  assert rollouts(load("baselines/specialist.py", "code_io,budget=full")) == rollouts(base)


def test_merging_evaluates_a_checkpoint_only():
  config = load("baselines/merging.py", "task_arithmetic,scale=0.3,smoke")
  assert tuple(config.phases) == ("eval",)
  assert config.model.preset == "hf" and config.eval.sft_baseline
  assert (config.merge.method, config.merge.scale) == ("task_arithmetic", 0.3)
  assert load("baselines/merging.py", "uniform").merge.scale == 0.25
  with pytest.raises(config_lib.ConfigError, match="model.hf_path"):
    config_lib.validate(config)
  config.model.hf_path = "/some/merged/model"
  config_lib.validate(config)
  # Everything but the model source and the phases is the base's.
  assert set(changed(config, load("astor.py", "smoke"))) == {
      "phases", "model.preset", "model.hf_path", "merge.method", "merge.scale"}


def test_paper_base_passes_through():
  config = load("baselines/specialist.py", "code_io,base=paper/qwen25_coder_7b.py:8xh100")
  paper = load("paper/qwen25_coder_7b.py", "8xh100")
  assert config.rl.batch_prompts == paper.rl.batch_prompts // 4
  assert config.model.shape_preset == paper.model.shape_preset
  assert config.topology == "8xh100"
  ablation = load("ablations/no_synergy.py", "base=paper/qwen3_8b.py")
  assert changed(ablation, load("paper/qwen3_8b.py")) == {"astor.synergy_weight": 0.0}


@pytest.mark.parametrize("path,arg,message", [
    ("baselines/specialist.py", None, "missing the task"),
    ("baselines/specialist.py", "code_gen,code_io", "task given twice"),
    ("baselines/specialist.py", "code_gen,budget=half", "budget='half'"),
    ("baselines/specialist.py", "code_gen,speed=2", "unknown option 'speed'"),
    ("baselines/curriculum.py", "order=code_io>code_gen", "must name every task"),
    ("baselines/merging.py", "uniform,scale=big", "scale='big' is not a number"),
    ("ablations/no_schedule.py", "turbo", "unknown token 'turbo'"),
    ("ablations/no_schedule.py", "base=paper/nope.py", "no such config file"),
    ("baselines/joint_uniform.py", "smoke,default", "base given twice"),
])
def test_bad_args_name_the_problem_and_the_syntax(path, arg, message):
  with pytest.raises(ValueError, match=message):
    load(path, arg)


def test_specialist_rejects_a_batch_it_cannot_split(tmp_path):
  base = tmp_path / "odd_batch.py"
  astor_py = os.path.join(ROOT, "configs", "astor.py")
  base.write_text(
      "import importlib.util\n"
      f"spec = importlib.util.spec_from_file_location('a', {astor_py!r})\n"
      "module = importlib.util.module_from_spec(spec)\n"
      "spec.loader.exec_module(module)\n"
      "def get_config(arg=None):\n"
      "  c = module.get_config(arg)\n"
      "  c.rl.batch_prompts = 10\n"
      "  return c\n")
  with pytest.raises(ValueError, match="rl.batch_prompts=10 .* does not split equally"):
    load("baselines/specialist.py", f"code_gen,base={base}:smoke")
  assert load("baselines/specialist.py", f"code_gen,budget=full,base={base}").rl.batch_prompts == 10
