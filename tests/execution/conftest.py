"""Shared pools for the execution tests.

One namespaces pool per test module (module scope keeps the suite fast: a pool
starts in well under a second, a job costs milliseconds). Tests that need
namespaces skip with the host's reason where it refuses them.
"""

from __future__ import annotations

import pytest

from astor_jax.execution import ExecutionPool, Limits
from tests.execution.procs import UID_BASE_NS


@pytest.fixture(scope="module")
def ns_pool():
  try:
    pool = ExecutionPool(2, Limits(timeout_s=5.0), isolation="namespaces",
                         uid_base=UID_BASE_NS)
  except RuntimeError as e:
    pytest.skip(f"namespaces unavailable here: {e}")
  with pool:
    yield pool
