"""Executors and the sweep driver: same tables everywhere, dead workers, resume.

The sweeps here are a few runs of a 50 ms spec, so what is timed is mostly the
workers' start (spawned interpreters importing cowsim); a Dask LocalCluster runs
in-process (``processes=False``) except in the one test that needs real worker
processes.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from cowsim.service.executors import DaskExecutor, LocalExecutor, RunJob, execute
from cowsim.service.sweeps import SweepStore, run_sweep, sweep_runs
from cowsim.sim import SweepPlan, parse_sweep, plan_sweep

BASE: dict[str, Any] = {
    "name": "tiny", "duration": "50ms", "seed": 5,
    "processes": [{"name": "web", "memory": "1MiB", "workloads": [
        {"kind": "forking_server", "requests": {"rate": "10k/s"},
         "fork": {"mode": "periodic", "every": "10ms"}}]}],
}
RATE = "processes[web].workloads[forking_server].requests.rate"


def small_plan(duration: str = "50ms", replications: int = 2) -> SweepPlan:
    text = json.dumps({"name": "small", "base": dict(BASE, duration=duration),
                       "replications": replications,
                       "axes": [{"path": "kernel", "values": ["4.19", "6.8"]},
                                {"path": RATE, "name": "rate", "values": ["5k/s", "20k/s"]}]})
    return plan_sweep(parse_sweep(text, "small.json"), source="small.json")


def run_into(directory: Path, plan: SweepPlan, executor: Any) -> Any:
    runs = sweep_runs(plan)
    try:
        return run_sweep(plan, SweepStore.prepare(directory, plan, runs), executor, runs=runs)
    finally:
        executor.close()


def tables(directory: Path) -> tuple[bytes, bytes, Any, Any]:
    return ((directory / "runs.csv").read_bytes(), (directory / "summary.csv").read_bytes(),
            pq.read_table(directory / "runs.parquet"), pq.read_table(directory / "summary.parquet"))


def test_the_local_and_dask_executors_give_identical_tables(tmp_path: Path) -> None:
    plan = small_plan()
    local = run_into(tmp_path / "local", plan, LocalExecutor(2))
    dask = run_into(tmp_path / "dask", plan, DaskExecutor(None, 2, processes=False))
    assert local.ok
    assert dask.ok
    assert local.ran == dask.ran == 8
    runs_csv, summary_csv, runs_table, summary_table = tables(tmp_path / "local")
    other = tables(tmp_path / "dask")
    assert runs_csv == other[0]
    assert summary_csv == other[1]
    assert runs_table.equals(other[2])
    assert summary_table.equals(other[3])
    assert runs_table.num_rows == 8
    assert summary_table.num_rows == 4
    assert set(runs_table.column("status").to_pylist()) == {"completed"}
    assert min(runs_table.column("cow_copies_total").to_pylist()) > 0


def always_kill(job: RunJob) -> dict[str, Any]:
    """A job function for a test: the marked run always kills its worker."""
    if job.key == Path(os.environ["COWSIM_TEST_MARKER"]).read_text().strip():
        os.kill(os.getpid(), signal.SIGKILL)
    return execute(job)


def test_a_worker_killed_mid_sweep_loses_no_run() -> None:
    plan = small_plan(duration="300ms", replications=1)
    runs = sweep_runs(plan)
    executor = LocalExecutor(2)
    outcomes = []
    killed: str | None = None
    try:
        for outcome in executor.submit([RunJob(r.key, r.point.spec_text, r.seed) for r in runs]):
            outcomes.append(outcome)
            if killed is None and executor.busy:
                pid, killed = next(iter(executor.busy.items()))
                os.kill(pid, signal.SIGKILL)
    finally:
        executor.close()
    assert killed is not None
    assert sorted(o.key for o in outcomes) == sorted(r.key for r in runs)
    assert all(o.result is not None for o in outcomes)
    assert next(o.attempts for o in outcomes if o.key == killed) == 2


def test_a_run_that_keeps_killing_its_worker_fails_alone(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    plan = small_plan(replications=1)
    runs = sweep_runs(plan)
    marker = tmp_path / "marker"
    marker.write_text(runs[1].key)
    monkeypatch.setenv("COWSIM_TEST_MARKER", str(marker))
    report = run_into(tmp_path / "out", plan, LocalExecutor(2, function=always_kill))
    assert list(report.failures) == [runs[1].key]
    assert "died 3 times" in report.failures[runs[1].key]
    rows = pq.read_table(tmp_path / "out" / "runs.parquet").to_pylist()
    assert [row["status"] for row in rows] == ["completed", "failed", "completed", "completed"]
    assert rows[1]["cow_copies_total"] is None
    assert json.loads((tmp_path / "out" / "failures.json").read_text()) == report.failures


class Counting:
    """An executor wrapper that records the keys it is asked to run."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.workers = inner.workers
        self.keys: list[str] = []

    @property
    def running(self) -> int:
        return int(self.inner.running)

    def submit(self, jobs: list[RunJob]) -> Any:
        self.keys += [job.key for job in jobs]
        return self.inner.submit(jobs)

    def close(self) -> None:
        self.inner.close()


def test_a_resumed_sweep_runs_only_the_missing_runs(tmp_path: Path) -> None:
    plan = small_plan()
    first = Counting(DaskExecutor(None, 1, processes=False))
    run_into(tmp_path, plan, first)
    assert len(first.keys) == 8
    before = tables(tmp_path)
    runs = sweep_runs(plan)
    lost = [runs[0].key, runs[5].key]
    for key in lost:
        (tmp_path / "runs" / f"{key}.json").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}
    second = Counting(DaskExecutor(None, 1, processes=False))
    report = run_into(tmp_path, plan, second)
    assert sorted(second.keys) == sorted(lost)
    assert (report.ran, report.progress.reused) == (2, 6)
    assert {name: mtime for name, mtime in ((p.name, p.stat().st_mtime_ns)
                                            for p in (tmp_path / "runs").iterdir())
            if name in kept} == kept
    after = tables(tmp_path)
    assert after[:2] == before[:2]
    third = Counting(DaskExecutor(None, 1, processes=False))
    run_into(tmp_path, plan, third)
    assert third.keys == []
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


@pytest.mark.slow
def test_dask_with_worker_processes_survives_a_killed_worker() -> None:
    """Real worker processes: a LocalCluster of two, one killed while the sweep runs; the
    scheduler reschedules its task and no run is lost."""
    plan = small_plan(duration="300ms", replications=1)
    runs = sweep_runs(plan)
    executor = DaskExecutor(None, 2)
    outcomes = []
    try:
        pids = executor.client.run(os.getpid)
        assert len(pids) == 2
        assert os.getpid() not in pids.values()
        for outcome in executor.submit([RunJob(r.key, r.point.spec_text, r.seed) for r in runs]):
            outcomes.append(outcome)
            if len(outcomes) == 1:
                os.kill(next(iter(pids.values())), signal.SIGKILL)
    finally:
        executor.close()
    assert sorted(o.key for o in outcomes) == sorted(r.key for r in runs)
    assert all(o.result is not None for o in outcomes), [o.error for o in outcomes]
