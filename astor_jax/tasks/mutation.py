"""First-order mutants of focal code, for the mutation-score part of test rewards.

Operators (classic mutation testing, as in mutmut/MutPy):
  comparison   <  <= > >= == != in / not in  swapped with their neighbour
  arithmetic   + <-> -, * -> +, // -> *, % -> //, also in augmented assignment
  boolean      and <-> or
  constant     an integer literal n -> n + 1; True <-> False

A mutant is the original *text* with one operator or literal replaced at its
exact position, so it keeps every line number: tests that read the source
(`inspect.getsource`) see the original file and learn nothing. Docstrings and
code outside function bodies are never mutated. Mutants are listed in source
order; `mutants(..., limit)` keeps an evenly spaced subset, so the choice is
deterministic.
"""

from __future__ import annotations

import ast
import io
import tokenize

_COMPARE_SWAP = {ast.Lt: "<=", ast.LtE: "<", ast.Gt: ">=", ast.GtE: ">", ast.Eq: "!=",
                 ast.NotEq: "==", ast.In: "not in", ast.NotIn: "in"}
_BINOP_SWAP = {ast.Add: "-", ast.Sub: "+", ast.Mult: "+", ast.FloorDiv: "*", ast.Mod: "//"}
_BOOL_SWAP = {ast.And: "or", ast.Or: "and"}


class _Edits(ast.NodeVisitor):
  """Collects (start, end, replacement) edits in character offsets of the source."""

  def __init__(self, source: str):
    self.source = source
    self.line_starts = [0]
    for line in source.splitlines(keepends=True):
      self.line_starts.append(self.line_starts[-1] + len(line))
    self.lines = source.splitlines(keepends=True)
    self.edits: list[tuple[int, int, str]] = []
    self._depth = 0

  def offset(self, lineno: int, col: int) -> int:
    line = self.lines[lineno - 1]
    # ast columns count UTF-8 bytes.
    return self.line_starts[lineno - 1] + len(line.encode()[:col].decode(errors="replace"))

  def span(self, node: ast.AST) -> tuple[int, int]:
    return (self.offset(node.lineno, node.col_offset),
            self.offset(node.end_lineno, node.end_col_offset))

  def operator_between(self, left: ast.AST, right: ast.AST) -> tuple[int, int] | None:
    """Character span of the operator token(s) between two operand nodes."""
    start, end = self.span(left)[1], self.span(right)[0]
    text = self.source[start:end]
    tokens = []
    try:
      for t in tokenize.generate_tokens(io.StringIO(text).readline):
        if t.type == tokenize.OP or (t.type == tokenize.NAME
                                     and t.string in ("in", "not", "and", "or")):
          tokens.append(t)
    except (tokenize.TokenError, SyntaxError):
      pass  # an unbalanced bracket at the end of the slice: the tokens so far suffice
    tokens = [t for t in tokens if t.string not in ("(", ")")]
    if not tokens:
      return None
    rel_lines = text.splitlines(keepends=True)
    rel_starts = [0]
    for line in rel_lines:
      rel_starts.append(rel_starts[-1] + len(line))
    first, last = tokens[0], tokens[-1]
    a = rel_starts[first.start[0] - 1] + first.start[1]
    b = rel_starts[last.end[0] - 1] + last.end[1]
    return start + a, start + b

  def visit_FunctionDef(self, node):
    self._depth += 1
    body = node.body
    if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)):
      body = body[1:]  # the docstring
    for stmt in body:
      self.visit(stmt)
    for deco in node.decorator_list:
      del deco  # decorators and defaults are definition-time code: not mutated
    self._depth -= 1

  visit_AsyncFunctionDef = visit_FunctionDef

  def visit_Compare(self, node):
    if self._depth:
      operands = [node.left, *node.comparators]
      for i, op in enumerate(node.ops):
        swap = _COMPARE_SWAP.get(type(op))
        span = self.operator_between(operands[i], operands[i + 1])
        if swap and span:
          self.edits.append((*span, swap))
    self.generic_visit(node)

  def visit_BinOp(self, node):
    swap = _BINOP_SWAP.get(type(node.op))
    if self._depth and swap:
      span = self.operator_between(node.left, node.right)
      if span:
        self.edits.append((*span, swap))
    self.generic_visit(node)

  def visit_AugAssign(self, node):
    swap = _BINOP_SWAP.get(type(node.op))
    if self._depth and swap:
      span = self.operator_between(node.target, node.value)
      if span:
        self.edits.append((*span, swap + "="))
    self.generic_visit(node)

  def visit_BoolOp(self, node):
    swap = _BOOL_SWAP.get(type(node.op))
    if self._depth and swap:
      for left, right in zip(node.values, node.values[1:]):
        span = self.operator_between(left, right)
        if span:
          self.edits.append((*span, swap))
    self.generic_visit(node)

  def visit_Constant(self, node):
    if self._depth and hasattr(node, "end_col_offset"):
      value = node.value
      start, end = self.span(node)
      if isinstance(value, bool):
        self.edits.append((start, end, str(not value)))
      elif isinstance(value, int) and self.source[start:end].isdigit():
        self.edits.append((start, end, str(value + 1)))


def all_mutants(source: str) -> list[str]:
  """Every first-order mutant of the functions in `source`, in source order."""
  try:
    tree = ast.parse(source)
  except SyntaxError:
    return []
  visitor = _Edits(source)
  visitor.visit(tree)
  out, seen = [], {source}
  for start, end, replacement in sorted(visitor.edits):
    mutant = source[:start] + replacement + source[end:]
    if mutant in seen:
      continue
    try:
      compile(mutant, "<mutant>", "exec")
    except (SyntaxError, ValueError):
      continue
    seen.add(mutant)
    out.append(mutant)
  return out


def mutants(source: str, limit: int) -> list[str]:
  """Up to `limit` mutants, evenly spaced over the source (deterministic)."""
  every = all_mutants(source)
  if len(every) <= limit:
    return every
  step = len(every) / limit
  return [every[int(i * step)] for i in range(limit)]
