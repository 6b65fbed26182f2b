"""Commit-message metrics: BLEU (sacrebleu), ROUGE-L (rouge-score), METEOR (nltk).

All three are sentence-level scores of one hypothesis against one reference:

  bleu     sacrebleu.sentence_bleu(hyp, [ref]).score, in [0, 100], with
           sacrebleu's defaults (13a tokenizer, exponential smoothing,
           effective n-gram order, so short identical messages score 100).
  rouge_l  rouge_score's ROUGE-L F-measure, in [0, 1] (Porter stemming on by
           default, as most commit-message papers report it).
  meteor   nltk's METEOR, in [0, 1], on lower-cased word/punctuation tokens
           (`tokenize`), with WordNet synonyms when a WordNet database is found
           (see `wordnet.py`). Without one, the same nltk code runs with an empty
           synonym table: exact and Porter-stem matches only. `meteor_variant()`
           says which one is in use.
"""

from __future__ import annotations

import functools
import re

import sacrebleu
from nltk.translate.meteor_score import meteor_score as _nltk_meteor
from rouge_score import rouge_scorer

from astor_jax.tasks.wordnet import find_wordnet

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
  """Word and punctuation tokens (what METEOR aligns); nltk's METEOR lower-cases them."""
  return _TOKEN.findall(text)


class NoSynonyms:
  """A WordNet stand-in without synsets: METEOR's synonym stage then matches nothing."""

  def synsets(self, word, *args, **kwargs):
    del word, args, kwargs
    return []


def sentence_bleu(hypothesis: str, reference: str) -> float:
  """sacrebleu sentence BLEU in [0, 100]."""
  return float(sacrebleu.sentence_bleu(hypothesis, [reference]).score)


@functools.cache
def _rouge(use_stemmer: bool) -> rouge_scorer.RougeScorer:
  return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(hypothesis: str, reference: str, use_stemmer: bool = True) -> float:
  """ROUGE-L F-measure in [0, 1] (rouge_score takes the target first)."""
  return float(_rouge(use_stemmer).score(reference, hypothesis)["rougeL"].fmeasure)


def meteor_wordnet(use_wordnet: bool = True):
  """The synonym source METEOR uses: a WordNet reader, or `NoSynonyms`."""
  wordnet = find_wordnet() if use_wordnet else None
  return wordnet if wordnet is not None else NoSynonyms()


def meteor_variant(use_wordnet: bool = True) -> str:
  """`wordnet` (standard METEOR) or `exact+stem` (no WordNet available or wanted)."""
  return "exact+stem" if isinstance(meteor_wordnet(use_wordnet), NoSynonyms) else "wordnet"


def meteor(hypothesis: str, reference: str, use_wordnet: bool = True) -> float:
  """nltk METEOR in [0, 1] on `tokenize`d strings."""
  return float(_nltk_meteor([tokenize(reference)], tokenize(hypothesis),
                            wordnet=meteor_wordnet(use_wordnet)))
