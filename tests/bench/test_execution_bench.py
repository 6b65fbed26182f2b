"""bench.execution_bench's ceilings: verdicts in order, no timing asserted."""

import pytest

from bench import execution_bench


@pytest.mark.parametrize("mode", ["fork", "inprocess"])
def test_ceiling_runs_every_check_once_and_keeps_the_order(mode, tmp_path):
  marker = tmp_path / "ran"
  programs = [
      "assert 1 + 1 == 2",
      "assert False, 'fails'",
      "print('x' * 100000)\nimport sys\nsys.stderr.write('noise')",  # output is dropped
      "raise SystemExit(3)",
      "def f(n):\n  return n if n < 2 else f(n - 1) + f(n - 2)\nassert f(15) == 610",
      f"open({str(marker)!r}, 'a').write('.')",
  ] * 3
  verdicts, wall, cpu = execution_bench.run_ceiling(programs, 2, mode)
  assert verdicts == [True, False, True, False, True, True] * 3
  assert marker.read_text() == "..."  # each check ran exactly once
  assert wall > 0 and cpu >= 0
