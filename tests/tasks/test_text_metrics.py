"""Commit-message metrics equal direct library calls; WordNet lookup and METEOR fallback."""

import logging

import pytest
import sacrebleu
from nltk.translate.meteor_score import meteor_score
from rouge_score import rouge_scorer

from astor_jax.tasks import text_metrics, wordnet
from astor_jax.tasks.commit_msg import CommitMsgTask

PAIRS = [
    ("Fix the off-by-one error in f", "Fix off-by-one error in f"),
    ("Rename total to acc", "Rename variable total to acc"),
    ("Repair the parser bug", "Fix a bug in the parser"),
    ("Add docstring", "Add a docstring to f"),
    ("zebra", "Change 3 to 5 in f"),
]


@pytest.fixture()
def no_wordnet(monkeypatch):
  """Hides every WordNet source; the cached lookup is redone before and after."""
  monkeypatch.setattr(wordnet, "nltk_data_wordnet", lambda: None)
  monkeypatch.setattr(wordnet, "candidate_dirs", lambda: [])
  wordnet.find_wordnet.cache_clear()
  yield
  wordnet.find_wordnet.cache_clear()


@pytest.mark.parametrize("hyp,ref", PAIRS)
def test_bleu_and_rouge_equal_the_libraries(hyp, ref):
  assert text_metrics.sentence_bleu(hyp, ref) == sacrebleu.sentence_bleu(hyp, [ref]).score
  direct = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(ref, hyp)
  assert text_metrics.rouge_l(hyp, ref) == direct["rougeL"].fmeasure
  plain = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(ref, hyp)
  assert text_metrics.rouge_l(hyp, ref, use_stemmer=False) == plain["rougeL"].fmeasure


@pytest.mark.parametrize("hyp,ref", PAIRS)
def test_meteor_equals_nltk_with_the_same_synonym_source(hyp, ref):
  source = text_metrics.meteor_wordnet()
  direct = meteor_score([text_metrics.tokenize(ref)], text_metrics.tokenize(hyp),
                        wordnet=source)
  assert text_metrics.meteor(hyp, ref) == direct


def test_commit_task_scores_and_metrics_equal_direct_calls():
  task = CommitMsgTask()
  example = {"task": "commit_msg", "id": "c", "difficulty": 1, "source": "test",
             "diff": "--- a/x.py\n+++ b/x.py\n", "message": PAIRS[0][1] + "\n\nbody text"}
  reward = task.reward(example, PAIRS[0][0] + "\nmore lines", [], [])
  hyp, ref = PAIRS[0]
  assert reward.breakdown["bleu"] == sacrebleu.sentence_bleu(hyp, [ref]).score
  assert reward.breakdown["rouge_l"] == rouge_scorer.RougeScorer(
      ["rougeL"], use_stemmer=True).score(ref, hyp)["rougeL"].fmeasure
  assert reward.breakdown["meteor"] == meteor_score(
      [text_metrics.tokenize(ref)], text_metrics.tokenize(hyp),
      wordnet=text_metrics.meteor_wordnet())
  assert 0.0 < reward.value < 1.0
  metrics = task.metrics([example], [reward])
  assert metrics == {"bleu": reward.breakdown["bleu"],
                     "rouge_l": 100 * reward.breakdown["rouge_l"],
                     "meteor": 100 * reward.breakdown["meteor"]}


def test_fallback_is_exact_and_stem_meteor(no_wordnet, caplog):
  with caplog.at_level(logging.WARNING, logger=wordnet.__name__):
    assert text_metrics.meteor_variant() == "exact+stem"
    text_metrics.meteor("fix it", "fix it")
  warnings = [r for r in caplog.records if "WordNet not found" in r.getMessage()]
  assert len(warnings) == 1
  hyp, ref = "fixes the bugs", "fixed a bug"
  direct = meteor_score([text_metrics.tokenize(ref)], text_metrics.tokenize(hyp),
                        wordnet=text_metrics.NoSynonyms())
  assert text_metrics.meteor(hyp, ref) == direct > 0.0  # stems still match
  # Synonyms do not match without WordNet.
  assert text_metrics.meteor("repair", "fix") == 0.0


def test_fallback_on_request_even_with_wordnet():
  assert text_metrics.meteor_variant(use_wordnet=False) == "exact+stem"
  assert text_metrics.meteor("repair", "fix", use_wordnet=False) == 0.0


requires_wordnet = pytest.mark.skipif(
    wordnet.find_wordnet() is None,
    reason="no WordNet database here (install wordnet-base or nltk's wordnet)")


@requires_wordnet
def test_real_meteor_matches_synonyms():
  source = wordnet.find_wordnet()
  assert text_metrics.meteor_variant() == "wordnet"
  hyp, ref = "repair the bug", "fix the bug"
  direct = meteor_score([hyp.split()], ref.split(), wordnet=source)
  assert text_metrics.meteor(ref, hyp) == direct
  assert direct > text_metrics.meteor(ref, hyp, use_wordnet=False)


@pytest.mark.skipif(not wordnet.is_wordnet_dir("/usr/share/wordnet"),
                    reason="Debian's wordnet-base is not installed")
def test_debian_database_opens_without_a_lexnames_file():
  reader = wordnet.open_wordnet("/usr/share/wordnet")
  assert reader.get_version() == "3.0"
  assert len(reader._lexnames) == 45
  assert reader.synset("dog.n.01").lexname() == "noun.animal"


def test_a_directory_without_wordnet_is_refused(tmp_path):
  assert not wordnet.is_wordnet_dir(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="wordnet-base"):
    wordnet.open_wordnet(str(tmp_path))
