"""What a run shows while it runs: metrics JSONL, TensorBoard scalars, progress, phase times.

Files under the workdir:

- `metrics.jsonl`: one JSON object per logged step, `{"phase": "rl", "step": 3,
  "reward/code_io": 0.41, ...}`; non-finite values are written as `null`.
- `tensorboard/`: the same scalars as TensorBoard events (tensorboardX).

A resumed run first cuts both streams back to the restored step (`resume`:
the JSONL is rewritten without the later records, TensorBoard gets a
`purge_step`), so the files of an interrupted-and-resumed run hold the same
records as an uninterrupted one.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import tqdm

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _finite_or_none(value: float) -> float | None:
  value = float(value)
  return value if math.isfinite(value) else None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads a metrics JSONL file; a torn last line (killed mid-write) is dropped."""
  records = []
  if not os.path.exists(path):
    return records
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        break
  return records


def truncate_after(path: str | os.PathLike, phase: str, step: int) -> None:
  """Drops records of `phase` with a step after `step` (and torn lines), atomically."""
  if not os.path.exists(path):
    return
  kept = [r for r in read_metrics(path) if r.get("phase") != phase or r.get("step", 0) <= step]
  tmp = f"{os.fspath(path)}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for record in kept:
      f.write(json.dumps(record) + "\n")
  os.replace(tmp, path)


class MetricWriter:
  """Appends scalars to `metrics.jsonl` and, optionally, TensorBoard.

  Non-finite values go to the JSONL as `null` and are left out of TensorBoard.

  Args:
    workdir: the run's directory.
    tensorboard: also write TensorBoard events under `workdir/tensorboard/<phase>`.
  """

  def __init__(self, workdir: str, *, tensorboard: bool):
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tensorboard_dir = os.path.join(workdir, TENSORBOARD_DIR) if tensorboard else None
    self._purge_after: dict[str, int] = {}
    self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
    self._tb: dict[str, Any] = {}

  def resume(self, phase: str, step: int) -> None:
    """Starts (or restarts) `phase` after `step`: later records of it are dropped.

    Call it before the phase's first `write`; 0 for a phase starting afresh.
    """
    if phase in self._tb:
      raise RuntimeError(f"MetricWriter.resume({phase!r}) after writing that phase")
    self._file.close()
    truncate_after(self.path, phase, step)
    self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
    self._purge_after[phase] = step

  def _tb_writer(self, phase: str):
    if self._tensorboard_dir is None:
      return None
    if phase not in self._tb:
      from tensorboardX import SummaryWriter  # heavy import, only when asked for

      purge = self._purge_after.get(phase)
      self._tb[phase] = SummaryWriter(
          os.path.join(self._tensorboard_dir, phase),
          purge_step=None if purge is None else purge + 1)
    return self._tb[phase]

  def write(self, phase: str, step: int, scalars: Mapping[str, float]) -> None:
    """Writes one record; flushed at once so a killed run keeps what it logged."""
    record = {"phase": phase, "step": int(step)}
    record.update({k: _finite_or_none(v) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    tb = self._tb_writer(phase)
    if tb is not None:
      for name, value in scalars.items():
        if math.isfinite(float(value)):
          tb.add_scalar(name, float(value), global_step=int(step))

  def flush(self) -> None:
    self._file.flush()
    for tb in self._tb.values():
      tb.flush()

  def close(self) -> None:
    self.flush()
    self._file.close()
    for tb in self._tb.values():
      tb.close()
    self._tb.clear()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class PhaseTimer:
  """Wall time per named phase of a step (`sample`, `score`, `ref_logprobs`, ...).

  Usage:
    timer = PhaseTimer()
    with timer("sample"):
      ...
    times = timer.pop()  # {"time/sample": 1.2, ...}, and the timer restarts
  """

  def __init__(self):
    self._seconds: dict[str, float] = collections.defaultdict(float)

  @contextlib.contextmanager
  def __call__(self, name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
      yield
    finally:
      self._seconds[name] += time.perf_counter() - start

  def add(self, name: str, seconds: float) -> None:
    self._seconds[name] += seconds

  def pop(self) -> dict[str, float]:
    """The accumulated seconds per phase as `time/<phase>` scalars; resets."""
    out = {f"time/{k}": v for k, v in self._seconds.items()}
    self._seconds.clear()
    return out


def progress_bar(*, total: int, initial: int, desc: str, enabled: bool):
  """A tqdm bar with ETA on stderr; a no-op bar when disabled."""
  return tqdm.tqdm(total=total, initial=initial, desc=desc, disable=not enabled,
                   dynamic_ncols=True, unit="step")
