"""Host-side sandbox pool that runs model-written code under hard limits.

  from astor_jax.execution import ExecutionPool, Job, Limits, Result

See pool.py for the API, isolation.py for what a job can and cannot do, and
worker.py for the process tree of one job. Names are imported on first use, so
that the fork server (which imports only the sandbox modules) stays small:
every job is forked from it, and a smaller heap forks faster.
"""

import importlib

_EXPORTS = {"ExecutionPool": "pool", "Job": "job", "Limits": "job", "Result": "job",
            "STATUSES": "job"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
