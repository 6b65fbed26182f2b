"""Checkpoints: atomic orbax saves of the device state plus the host's JSON state.

A checkpoint holds two items:

- `state`: a pytree of arrays (the `TrainState` with params, optimizer state,
  step and rng; the `UtilityState` with budgets, beta_k, EMAs, synergy and
  prompt priorities). Typed PRNG keys are stored as their raw key data and
  re-wrapped on restore, so any pytree the step carries round-trips.
- `host`: a JSON dict with what lives on the host: the step, counters of
  skipped updates and failed reward jobs (the SFT cache adds its fingerprint).

Data positions: the data order is stateless, so the step is the whole
iterator position. SFT batch `i` is `sft.batch_indices(rows, batch, i, seed)`;
the RL prompts of a step are drawn by the schedule from the `UtilityState`
(its rng and per-prompt priorities, in `state`), and the rollout key is
`fold_in(rollout key of seed, step)`. A resumed run therefore draws the same
prompts and samples the same rollouts as an uninterrupted one; the
resume-equivalence test (`tests/train/test_loop.py`) checks it through the
budgets, rewards and every other logged scalar, and the final state.

Several processes: every process calls `save` and `restore` with the same
arguments (orbax's multi-host checkpointing: each process writes and reads its
own shards of the global arrays, process 0 writes the metadata, the `host`
JSON and the commit marker; the directory must be storage every host sees).
The `host` dict must therefore be the same on every process.

Saves are atomic: orbax writes into a temporary directory and renames it to
`<step>` only after every file (and the commit marker) is written, so a process
killed at any moment (kill -9 included) leaves the previous checkpoints intact;
a half-written temporary directory is removed when the next manager opens the
directory. Retention keeps the last `keep_last` checkpoints plus the
`keep_best` ones with the highest `best_metric` (mean training reward in the
loop; a NaN metric ranks lowest).

`PreemptionGuard` turns SIGTERM/SIGINT (a preemptible TPU VM being reclaimed,
Ctrl-C) into a flag the loop polls between steps: it saves and exits cleanly
instead of dying mid-step. A second signal falls back to the default handler,
which kills the process at once; the atomic saves keep that safe.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

STATE_ITEM = "state"
HOST_ITEM = "host"


def _is_typed_key(x: Any) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> Any:
  """Replaces typed PRNG keys by their uint32 key data (orbax stores plain arrays)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_typed_key(x) else x, tree)


def _abstract_with_key_data(tree: Any) -> Any:
  """Abstract arrays (shape, dtype, sharding) to restore into, keys as key data."""

  def leaf(x):
    if _is_typed_key(x):
      x = jax.random.key_data(x) if isinstance(x, jax.Array) else jax.eval_shape(
          jax.random.key_data, x)
    return ocp.utils.to_shape_dtype_struct(x)

  return jax.tree.map(leaf, tree)


def _data_to_keys(template: Any, restored: Any) -> Any:
  """Re-wraps restored key data as typed keys wherever `template` holds typed keys."""
  return jax.tree.map(
      lambda t, r: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
      if _is_typed_key(t) else r, template, restored)


def _json_safe(value: Any) -> Any:
  """Converts numpy scalars/arrays inside `value` to plain JSON types."""
  if isinstance(value, Mapping):
    return {str(k): _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  return value


def _rank_metric(name: str):
  def get(metrics: Mapping[str, float]) -> float:
    value = metrics.get(name, float("-inf"))
    return float("-inf") if value is None or math.isnan(value) else float(value)
  return get


class Checkpointer:
  """Keep-last-N plus keep-best orbax checkpoints of (device state, host JSON).

  Args:
    directory: where step directories `<step>/` are written (created).
    keep_last: how many of the most recent checkpoints to keep (>= 1).
    keep_best: how many best-by-`best_metric` checkpoints to keep besides (0: none).
    best_metric: the key of the `metrics` dict passed to `save` that ranks
      checkpoints (higher is better).
    async_save: write in a background thread; `save` returns once the arrays
      are copied off the device. `wait()` (and `close()`) block until written.
  """

  def __init__(self, directory: str | os.PathLike, *, keep_last: int, keep_best: int = 0,
               best_metric: str = "reward_mean", async_save: bool = False):
    if keep_last < 1:
      raise ValueError(f"keep_last: got {keep_last}, expected >= 1")
    self.directory = os.fspath(directory)
    self.best_metric = best_metric
    policies = [checkpoint_managers.LatestN(n=keep_last)]
    if keep_best:
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=_rank_metric(best_metric), reverse=False, n=keep_best,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        # best_fn makes orbax write the metrics next to each step; the ranking
        # itself is the preservation policy's.
        best_fn=_rank_metric(best_metric),
        best_mode="max",
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save,
        create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=(STATE_ITEM, HOST_ITEM))

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None when there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of every complete checkpoint kept, oldest first."""
    return sorted(self._manager.all_steps())

  def best_step(self) -> int | None:
    """The kept checkpoint with the highest `best_metric` (ties: the newest)."""
    rank = _rank_metric(self.best_metric)
    scored = [(rank(self._manager.metrics(s) or {}), s) for s in self.all_steps()]
    return max(scored)[1] if scored else None

  def save(self, step: int, state: Any, host: Mapping[str, Any],
           metrics: Mapping[str, float] | None = None) -> None:
    """Saves `state` (pytree of arrays) and `host` (JSON-able dict) as `step`.

    An existing checkpoint of the same step is kept as it is (a resumed run
    re-reaching a saved step writes nothing new).
    """
    if step in self._manager.all_steps():
      return
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    if self.best_metric not in metrics:
      metrics[self.best_metric] = float("nan")
    self._manager.save(
        step,
        args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(_keys_to_data(state)),
            HOST_ITEM: ocp.args.JsonSave(_json_safe(dict(host))),
        }),
        metrics=metrics,
        force=True)

  def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict[str, Any], int]:
    """Restores the checkpoint at `step` (default: the latest complete one).

    Args:
      template: a pytree shaped like the saved state (live arrays or
        `jax.ShapeDtypeStruct`s with shardings); restored arrays get its
        shapes, dtypes and shardings.
      step: which checkpoint; None for the latest.

    Returns:
      (state, host dict, step).

    Raises:
      FileNotFoundError: there is no complete checkpoint in the directory.
    """
    if step is None:
      step = self.latest_step()
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardRestore(_abstract_with_key_data(template)),
            HOST_ITEM: ocp.args.JsonRestore(),
        }))
    state = _data_to_keys(template, restored[STATE_ITEM])
    return state, dict(restored[HOST_ITEM]), step

  def wait(self) -> None:
    """Blocks until an asynchronous save in flight is written and committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class PreemptionGuard:
  """Turns SIGTERM/SIGINT into a flag polled between steps (a context manager).

  Inside the `with` block the first signal sets `requested` to its number and
  re-arms the default handler, so a second signal terminates at once. Handlers
  are only installed from the main thread (Python's rule); elsewhere the guard
  is inert. The previous handlers come back on exit.

  Args:
    signals: the signals to catch.
  """

  def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)):
    self._signals = tuple(signals)
    self._previous: dict[int, Any] = {}
    self.requested: int | None = None

  def _handle(self, signum, frame) -> None:
    del frame
    if self.requested is None:
      self.requested = signum
    signal.signal(signum, signal.SIG_DFL)

  def __enter__(self) -> PreemptionGuard:
    if threading.current_thread() is threading.main_thread():
      for s in self._signals:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous.clear()

  @property
  def name(self) -> str:
    """The caught signal's name ("SIGTERM"), or "" when none was caught."""
    return signal.Signals(self.requested).name if self.requested else ""
