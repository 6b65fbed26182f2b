"""Host-side sandbox pool that runs model-written code under hard limits.

  from astor_jax.execution import ExecutionPool, Job, Limits, Result

See pool.py for the API, isolation.py for what a job can and cannot do, and
worker.py for the process tree of one job.
"""

from astor_jax.execution.job import STATUSES, Job, Limits, Result
from astor_jax.execution.pool import ExecutionPool

__all__ = ["ExecutionPool", "Job", "Limits", "Result", "STATUSES"]
