"""Small code edits as unified diffs with reference commit messages (tiny world).

Each edit is a real change to a generated function, and its message is drawn
from a few phrasings that all say what the diff does. Several phrasings per
edit keep the task from being solved by rote: even a perfect model cannot
know which wording the reference used, so BLEU/ROUGE/METEOR rewards keep
some variance, as real commit messages do.

Edit kinds and their difficulty (how much of the diff must be understood):
  1  change a constant, add a docstring
  2  rename a variable, flip a comparison
  3  swap an arithmetic operator, add an early return for empty input
"""

from __future__ import annotations

import dataclasses
import difflib
import random
import re

from astor_jax.data.programs import Program

FILES = ("util.py", "calc.py", "text.py", "stats.py", "core.py", "helpers.py")
_RENAMES = {"total": ("acc", "result", "s"), "out": ("res", "result", "acc"),
            "n": ("count", "k", "c"), "v": ("item", "x", "val"), "ch": ("c", "letter", "char")}
_FLIPS = {">": ">=", ">=": ">", "<": "<=", "<=": "<", "==": "!=", "!=": "=="}
_OPS = {"+": ("-", "subtract", "add"), "-": ("+", "add", "subtract"),
        "*": ("+", "add", "multiply")}


@dataclasses.dataclass(frozen=True)
class Commit:
  before: str
  after: str
  filename: str
  message: str
  difficulty: int

  @property
  def diff(self) -> str:
    lines = difflib.unified_diff(self.before.splitlines(keepends=True),
                                 self.after.splitlines(keepends=True),
                                 f"a/{self.filename}", f"b/{self.filename}", n=1)
    return "".join(lines)


def _change_constant(rng, code):
  spots = [m for m in re.finditer(r"(?<![\w.'])(\d+)(?![\w'])", code) if m.start() > code.find(":")]
  if not spots:
    return None
  m = rng.choice(spots)
  old = int(m.group(1))
  new = old + rng.choice((1, 2, 3)) if old < 2 or rng.random() < 0.5 else old - 1
  after = code[:m.start()] + str(new) + code[m.end():]
  messages = (f"Change {old} to {new} in f", f"Use {new} instead of {old} in f",
              f"Replace the constant {old} with {new}")
  return after, rng.choice(messages), 1


def _add_docstring(rng, code, program):
  first = program.instruction.split(";")[0].split(". ")[0].rstrip(".")
  lines = code.split("\n")
  after = "\n".join([lines[0], f'    """{first}."""', *lines[1:]])
  messages = ("Add a docstring to f", "Document f", "Add docstring for f")
  return after, rng.choice(messages), 1


def _rename(rng, code):
  names = [n for n in _RENAMES if re.search(rf"\b{n}\b", code.split("\n", 1)[1])]
  names = [n for n in names if not re.search(rf"\b{n}\b", code.split("\n", 1)[0])]
  if not names:
    return None
  old = rng.choice(names)
  new = rng.choice([c for c in _RENAMES[old] if not re.search(rf"\b{c}\b", code)] or [None])
  if new is None:
    return None
  head, body = code.split("\n", 1)
  after = head + "\n" + re.sub(rf"\b{old}\b", new, body)
  messages = (f"Rename {old} to {new} in f", f"Rename variable {old} to {new}",
              f"Use {new} as the name for {old}")
  return after, rng.choice(messages), 2


def _flip(rng, code):
  spots = list(re.finditer(r" (>=|<=|==|!=|>|<) ", code))
  if not spots:
    return None
  m = rng.choice(spots)
  old = m.group(1)
  new = _FLIPS[old]
  after = code[:m.start(1)] + new + code[m.end(1):]
  messages = (f"Use {new} instead of {old} in f", f"Change the comparison from {old} to {new}",
              f"Fix the condition in f to use {new}")
  return after, rng.choice(messages), 2


def _swap_op(rng, code):
  spots = [m for m in re.finditer(r" ([+*-])=? ", code)]
  if not spots:
    return None
  m = rng.choice(spots)
  old = m.group(1)
  new, new_verb, old_verb = _OPS[old]
  after = code[:m.start(1)] + new + code[m.end(1):]
  messages = (f"Use {new} instead of {old} in f", f"{new_verb.capitalize()} instead of "
              f"{old_verb} in f", f"Fix f to {new_verb} rather than {old_verb}")
  return after, rng.choice(messages), 3


def _early_return(rng, code, program):
  name, kind = program.params[0]
  if kind not in ("list", "str"):
    return None
  value = "0" if rng.random() < 0.5 else ("[]" if kind == "list" else "''")
  lines = code.split("\n")
  after = "\n".join([lines[0], f"    if not {name}:", f"        return {value}", *lines[1:]])
  messages = (f"Return {value} early when {name} is empty", f"Handle empty {name} in f",
              f"Add an early return for empty {name}")
  return after, rng.choice(messages), 3


def sample_commit(rng: random.Random, program: Program) -> Commit | None:
  """One edit of `program` with its message, or None if the drawn edit does not apply."""
  code = program.code
  kind = rng.choice(("constant", "docstring", "rename", "flip", "op", "early"))
  if kind == "constant":
    edit = _change_constant(rng, code)
  elif kind == "docstring":
    edit = _add_docstring(rng, code, program)
  elif kind == "rename":
    edit = _rename(rng, code)
  elif kind == "flip":
    edit = _flip(rng, code)
  elif kind == "op":
    edit = _swap_op(rng, code)
  else:
    edit = _early_return(rng, code, program)
  if edit is None or edit[0] == code:
    return None
  after, message, difficulty = edit
  return Commit(code, after, rng.choice(FILES), message, difficulty)
