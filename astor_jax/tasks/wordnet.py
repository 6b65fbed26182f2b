"""Finding a WordNet 3.0 database for METEOR without any download at run time.

Search order:
  1. nltk's own data (`nltk.data.find("corpora/wordnet")`), e.g. after
     `python -m nltk.downloader wordnet`.
  2. The directory in `$WNSEARCHDIR` (WordNet's own variable), then
     `/usr/share/wordnet` where Debian/Ubuntu's `wordnet-base` package puts the
     database (`make venv` installs it when it runs as root with apt-get).

Debian ships the database files but not `lexnames`, the table of the 45
lexicographer file names that nltk's reader loads first. That table is part of
the WordNet 3.0 format (see the `lexnames(5WN)` manual page), so the reader
below serves it from memory when the directory lacks it; nothing is written.

If no database is found, `find_wordnet()` returns None, logs one warning, and
METEOR falls back to its exact + Porter-stem stages (no synonym stage); see
`text_metrics.meteor`.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import warnings

import nltk.data
from nltk.corpus.reader.wordnet import WordNetCorpusReader

_LOG = logging.getLogger(__name__)
_SYSTEM_DIRS = ("/usr/share/wordnet",)
_REQUIRED = ("index.noun", "data.noun", "index.verb", "data.verb", "index.adj", "data.adj",
             "index.adv", "data.adv")

# WordNet 3.0 lexicographer files in file-number order, with their syntactic
# category (1 noun, 2 verb, 3 adjective, 4 adverb), as listed by lexnames(5WN).
_LEXNAMES = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1),
    ("noun.animal", 1), ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1),
    ("noun.cognition", 1), ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1),
    ("noun.food", 1), ("noun.group", 1), ("noun.location", 1), ("noun.motive", 1),
    ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1), ("noun.plant", 1),
    ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1),
    ("verb.body", 2), ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2),
    ("verb.competition", 2), ("verb.consumption", 2), ("verb.contact", 2),
    ("verb.creation", 2), ("verb.emotion", 2), ("verb.motion", 2), ("verb.perception", 2),
    ("verb.possession", 2), ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2),
    ("adj.ppl", 3),
)
LEXNAMES_TEXT = "".join(f"{i:02d}\t{name}\t{cat}\n" for i, (name, cat) in enumerate(_LEXNAMES))


class _SystemWordNetReader(WordNetCorpusReader):
  """nltk's reader over a system WordNet directory, with `lexnames` in memory if absent."""

  def open(self, file):
    if file == "lexnames" and not os.path.exists(os.path.join(str(self._root), file)):
      return io.StringIO(LEXNAMES_TEXT)
    return super().open(file)

  def map_wn(self, version="wordnet"):
    # The mapping to nltk's packaged WordNet only serves the multilingual
    # wordnets, which this reader does not load; the database is WordNet 3.0.
    del version
    return None


def is_wordnet_dir(path: str) -> bool:
  """True if `path` holds the WordNet database files nltk's reader needs."""
  return bool(path) and all(os.path.isfile(os.path.join(path, f)) for f in _REQUIRED)


def open_wordnet(path: str) -> WordNetCorpusReader:
  """An nltk WordNet reader over a database directory (nltk layout or Debian's)."""
  if not is_wordnet_dir(path):
    raise FileNotFoundError(
        f"{path!r} is not a WordNet 3.0 database directory (needs {', '.join(_REQUIRED)}); "
        "install Debian's wordnet-base or run `python -m nltk.downloader wordnet`")
  # nltk only reads data under the roots in nltk.data.path (its I/O sentinel);
  # registering the directory there is nltk's documented way to authorize it.
  resolved = os.path.realpath(path)
  if resolved not in nltk.data.path:
    nltk.data.path.append(resolved)
  with warnings.catch_warnings():
    # No Open Multilingual WordNet: only English synonyms are needed.
    warnings.simplefilter("ignore")
    return _SystemWordNetReader(resolved, None)


def candidate_dirs() -> list[str]:
  dirs = []
  if os.environ.get("WNSEARCHDIR"):
    dirs.append(os.environ["WNSEARCHDIR"])
  dirs += list(_SYSTEM_DIRS)
  return dirs


def nltk_data_wordnet():
  """nltk's own WordNet (`nltk.download("wordnet")`), or None if it is not installed."""
  from nltk.corpus import wordnet

  try:
    wordnet.ensure_loaded()
  except LookupError:
    return None
  return wordnet


@functools.cache
def find_wordnet():
  """nltk's WordNet if installed, else a system WordNet 3.0, else None (warned once)."""
  wordnet = nltk_data_wordnet()
  if wordnet is not None:
    return wordnet
  for path in candidate_dirs():
    if is_wordnet_dir(path):
      return open_wordnet(path)
  _LOG.warning(
      "WordNet not found (nltk data, $WNSEARCHDIR, %s): METEOR uses exact and stem "
      "matches only, without synonyms. Install it with `apt-get install wordnet-base` "
      "or `python -m nltk.downloader wordnet` for the standard METEOR.",
      ", ".join(_SYSTEM_DIRS))
  return None
