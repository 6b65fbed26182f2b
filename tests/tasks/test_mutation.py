"""Mutants: one operator or literal changed in place, function bodies only."""

import ast

from astor_jax.tasks import mutation

SOURCE = '''LIMIT = 10


def f(xs, k=3):
    """Count items 2 and above."""
    n = 0
    for v in xs:
        if v >= 2 and (v % k != 0 or v in (1, 2)):
            n += v * 2 - 1
    return n if n < LIMIT else True
'''


def _changed_lines(a, b):
  return [i for i, (x, y) in enumerate(zip(a.splitlines(), b.splitlines())) if x != y]


def test_every_mutant_changes_one_line_in_place_and_compiles():
  mutants = mutation.all_mutants(SOURCE)
  assert len(mutants) >= 12
  assert len(set(mutants)) == len(mutants) and SOURCE not in mutants
  for m in mutants:
    assert len(m.splitlines()) == len(SOURCE.splitlines())
    changed = _changed_lines(SOURCE, m)
    assert len(changed) == 1
    # Never the module constant, the signature's default or the docstring.
    assert changed[0] >= 5
    compile(m, "m", "exec")
    # Line numbers of every statement are the original's.
    assert ([getattr(n, "lineno", None) for n in ast.walk(ast.parse(m))]
            == [getattr(n, "lineno", None) for n in ast.walk(ast.parse(SOURCE))])


def test_operators_are_covered():
  edits = set()
  for m in mutation.all_mutants(SOURCE):
    line = _changed_lines(SOURCE, m)[0]
    edits.add((SOURCE.splitlines()[line].strip(), m.splitlines()[line].strip()))
  expected = {
      ("n = 0", "n = 1"),
      ("if v >= 2 and (v % k != 0 or v in (1, 2)):", "if v > 2 and (v % k != 0 or v in (1, 2)):"),
      ("if v >= 2 and (v % k != 0 or v in (1, 2)):", "if v >= 2 or (v % k != 0 or v in (1, 2)):"),
      ("if v >= 2 and (v % k != 0 or v in (1, 2)):",
       "if v >= 2 and (v % k != 0 and v in (1, 2)):"),
      ("if v >= 2 and (v % k != 0 or v in (1, 2)):",
       "if v >= 2 and (v // k != 0 or v in (1, 2)):"),
      ("if v >= 2 and (v % k != 0 or v in (1, 2)):",
       "if v >= 2 and (v % k == 0 or v in (1, 2)):"),
      ("if v >= 2 and (v % k != 0 or v in (1, 2)):",
       "if v >= 2 and (v % k != 0 or v not in (1, 2)):"),
      ("n += v * 2 - 1", "n -= v * 2 - 1"),
      ("n += v * 2 - 1", "n += v + 2 - 1"),
      ("n += v * 2 - 1", "n += v * 2 + 1"),
      ("return n if n < LIMIT else True", "return n if n <= LIMIT else True"),
      ("return n if n < LIMIT else True", "return n if n < LIMIT else False"),
  }
  assert expected <= edits


def test_limit_keeps_an_evenly_spaced_deterministic_subset():
  every = mutation.all_mutants(SOURCE)
  few = mutation.mutants(SOURCE, 4)
  assert len(few) == 4 and few == mutation.mutants(SOURCE, 4)
  assert all(m in every for m in few)
  assert few[0] == every[0]
  assert mutation.mutants(SOURCE, 100) == every


def test_unparsable_code_has_no_mutants():
  assert mutation.all_mutants("def f(:\n") == []
