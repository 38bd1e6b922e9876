"""Sweep speed: a 200-run sweep on 1 and 2 local workers, and what the executor costs per run.

The sweep: a small forking server (4 MiB, 20k requests/s, a snapshot fork every
50 ms) over 2 kernels × 100 request rates, one replication: 200 runs of 2 s simulated,
about a tenth of a second each on the development VM.  (Shorter runs measure the pool's
fixed costs — starting two interpreters, storing each result — more than the parallelism:
at 200 ms a run, 13 ms of work, 2 workers are 1.5–1.6× faster than 1 there.)  Timed, each
into a fresh directory through the whole driver (plan, store every result, write the tables):

1. the same 200 jobs run one after another in this process (:func:`execute`,
   no executor, no storage): the floor;
2. ``LocalExecutor(1)`` and 3. ``LocalExecutor(2)`` via :func:`run_sweep`.

Reported: the speed-up 1 worker ÷ 2 workers (target ≥ 1.8 on 2 idle cores) and
the executor overhead as ratios: 1 worker ÷ in-process, and the overhead per run
((1 worker − in-process) ÷ runs) ÷ the mean in-process run.

Run:  python bench/bench_sweep.py [--rates 100] [--duration 2s]   (about a minute)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cowsim.service.executors import LocalExecutor, RunJob, execute
from cowsim.service.sweeps import SweepStore, run_sweep, sweep_runs
from cowsim.sim import SweepPlan, parse_sweep, plan_sweep


def sweep_plan(rates: int, duration: str) -> SweepPlan:
    base = {"name": "bench", "duration": duration, "seed": 3, "machine": {"cpus": 4},
            "processes": [{"name": "web", "memory": "4MiB", "workloads": [
                {"kind": "forking_server", "requests": {"rate": "20k/s"},
                 "fork": {"mode": "periodic", "every": "50ms"}}]}]}
    text = json.dumps({"name": "bench", "base": base, "axes": [
        {"path": "kernel", "values": ["5.10", "6.8"]},
        {"path": "processes[web].workloads[forking_server].requests.rate", "name": "rate",
         "low": "10k/s", "high": "30k/s", "steps": rates}]})
    return plan_sweep(parse_sweep(text, "bench.json"), source="bench.json")


def in_process(plan: SweepPlan) -> float:
    started = time.perf_counter()
    for run in sweep_runs(plan):
        reply = execute(RunJob(run.key, run.point.spec_text, run.seed))
        assert "result" in reply, reply
    return time.perf_counter() - started


def on_workers(plan: SweepPlan, workers: int) -> float:
    with tempfile.TemporaryDirectory() as directory:
        runs = sweep_runs(plan)
        store = SweepStore.prepare(Path(directory) / "out", plan, runs)
        executor = LocalExecutor(workers)
        started = time.perf_counter()
        try:
            report = run_sweep(plan, store, executor, runs=runs)
        finally:
            executor.close()
        elapsed = time.perf_counter() - started
        if not report.ok or report.ran != len(runs):
            raise SystemExit(f"the sweep did not finish: {report.failures}")
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, default=100, help="request rates (runs = 2 × this)")
    parser.add_argument("--duration", default="2s", help="each run's simulated duration")
    args = parser.parse_args()
    plan = sweep_plan(args.rates, args.duration)
    runs = plan.runs
    floor = in_process(plan)
    one = on_workers(plan, 1)
    two = on_workers(plan, 2)
    per_run = floor / runs
    print(f"{runs} runs of {args.duration}: in-process {floor:.1f} s ({per_run * 1e3:.0f} ms a run)")
    print(f"  1 local worker   {one:6.1f} s")
    print(f"  2 local workers  {two:6.1f} s")
    print(f"speed-up 2 workers vs 1: {one / two:.2f}  (target >= 1.8)")
    print(f"executor overhead: 1 worker / in-process = {one / floor:.2f}; per run "
          f"{(one - floor) / runs * 1e3:.1f} ms = {(one - floor) / runs / per_run:.2f} of a run")


if __name__ == "__main__":
    main()
