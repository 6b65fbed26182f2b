"""TFDS array_record datasets read with grain: same examples, cached, checkpointable order."""

import json
import os

import pytest

from astor_jax.data import formats, pipeline, world
from configs.astor import get_config


def data_config(**overrides):
  c = get_config("smoke").data
  c.train_per_task, c.eval_per_task = 12, 4
  for key, value in overrides.items():
    c[key] = value
  return c


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  config = data_config()
  return config, data_dir, pipeline.task_sources(config, world.TASKS, data_dir)


def test_sources_hold_exactly_the_generated_examples(built):
  config, _, sources = built
  spec = pipeline.world_spec(config)
  for task in world.TASKS:
    for split in world.SPLITS:
      source = sources[task][split]
      expected = {e["id"]: e for e in world.examples(task, split, spec)}
      got = {source[i]["id"]: source[i] for i in range(len(source))}
      assert got == expected


def test_array_record_files_are_written_and_reused(built, monkeypatch):
  config, data_dir, _ = built
  files = [f for _, _, names in os.walk(data_dir) for f in names if ".array_record" in f]
  assert len(files) >= len(world.TASKS) * len(world.SPLITS)

  def no_generation(*args, **kwargs):
    raise AssertionError("a prepared dataset was generated again")

  monkeypatch.setattr(world, "iter_examples", no_generation)
  again = pipeline.task_sources(config, ["code_gen"], data_dir)
  assert len(again["code_gen"]["train"]) == config.train_per_task


def test_another_world_gets_another_dataset(built):
  config, data_dir, _ = built
  a = pipeline.builder_for("code_io", config, data_dir)
  b = pipeline.builder_for("code_io", data_config(world_seed=9), data_dir)
  assert a.builder_config.name != b.builder_config.name


def _take(iterator, n):
  return [next(iterator)["id"] for _ in range(n)]


def test_iteration_is_deterministic_and_resumable(built):
  _, _, sources = built
  source = sources["code_io"]["train"]
  first = _take(pipeline.example_iterator(source, seed=1), 30)
  assert first == _take(pipeline.example_iterator(source, seed=1), 30)
  assert first != _take(pipeline.example_iterator(source, seed=2), 30)
  assert sorted(first[:12]) == sorted(source[i]["id"] for i in range(12))  # one epoch

  it = pipeline.example_iterator(source, seed=1)
  _take(it, 7)
  state = json.loads(json.dumps(it.get_state()))  # survives a checkpoint round trip
  rest = _take(it, 10)
  resumed = pipeline.example_iterator(source, seed=1)
  resumed.set_state(state)
  assert _take(resumed, 10) == rest == first[7:17]


def test_files_source_hash_splits(tmp_path):
  crux = tmp_path / "crux.jsonl"
  crux.write_text("".join(json.dumps({"id": f"s{i}", "code": "def f(x):\n    return x\n",
                                      "input": str(i), "output": str(i)}) + "\n"
                          for i in range(30)))
  config = data_config(source="files", cruxeval_path=str(crux))
  sources = pipeline.task_sources(config, ["code_io"], str(tmp_path / "tfds"))
  ids = {s: {sources["code_io"][s][i]["id"] for i in range(len(sources["code_io"][s]))}
         for s in world.SPLITS}
  assert sum(map(len, ids.values())) == 60  # two directions per record
  assert not ids["train"] & ids["test"] and not ids["train"] & ids["validation"]
  for split, members in ids.items():
    for rid in members:
      assert pipeline.hash_split(rid, config.world_seed) == split


def test_files_source_without_paths_names_the_field(tmp_path):
  config = data_config(source="files")
  with pytest.raises(formats.DataError, match="config.data.cruxeval_path"):
    pipeline.task_sources(config, ["code_io"], str(tmp_path))
  with pytest.raises(formats.DataError, match="humaneval_path"):
    pipeline.task_sources(config, ["test_gen"], str(tmp_path))
