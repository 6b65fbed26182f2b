"""Answer extraction, following each benchmark's convention.

  code blocks   Aider and EvalPlus: the answer is a fenced block; a block tagged
                `python`/`py` wins over an untagged one, the first of a kind wins.
                A block cut off by the token limit (no closing fence) still counts:
                whether it parses is checked afterwards.
  answer tags   CRUXEval: `[ANSWER] ... [/ANSWER]`; without the closing tag, the
                rest of the line.
  messages      commit messages: the first non-empty line, without quotes or
                backticks around it (MCMD-style evaluation compares subjects).

Every function returns None for an answer without the expected shape, so
callers can give reward 0 with a reason.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)",
                    re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = ("python", "py", "python3")


def code_block(text: str) -> str | None:
  """The code of the answer's fenced block, or None if there is none."""
  blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
  for tag, code in blocks:
    if tag in _PYTHON_TAGS and code.strip():
      return code
  for tag, code in blocks:
    if not tag and code.strip():
      return code
  return None


def tagged_answer(text: str, tag: str = "ANSWER") -> str | None:
  """The text between `[TAG]` and `[/TAG]` (stripped), or None."""
  start = text.find(f"[{tag}]")
  if start < 0:
    return None
  rest = text[start + len(tag) + 2:]
  end = rest.find(f"[/{tag}]")
  answer = rest[:end] if end >= 0 else rest.split("\n", 1)[0]
  answer = answer.strip()
  return answer or None


def first_line(text: str) -> str | None:
  """The first non-empty line without surrounding quotes/backticks, or None."""
  for line in text.splitlines():
    line = line.strip().strip("`\"'").strip()
    if line:
      return line
  return None
