"""Running a sweep: its runs stored one by one, so that it can stop anywhere and resume.

A planned sweep (:func:`cowsim.sim.sweep.plan_sweep`) is a list of runs, one per
(point, replication), each a pure function of (spec, kernel, seed, cowsim
version) and so keyed by :func:`cowsim.service.cache.cache_key` — the key of the
service's result cache.  :func:`run_sweep` sends the runs that are not stored
yet to an executor (:mod:`cowsim.service.executors`), stores each result the
moment it arrives, and at the end writes the tables.  The directory
(:class:`SweepStore`)::

    DIR/sweep.json          the sweep: its spec, root seed, columns, and every run's
                            point, replication, seed and key (what a report or a
                            GetSweep answer reads)
    DIR/runs/KEY.json       one finished run's result (as `cowsim run --json` prints it)
    DIR/runs.parquet|.csv   the tidy table, one row per run (cowsim.service.sweep_table)
    DIR/summary.parquet|.csv  one row per point: means and 95% intervals
    DIR/failures.json       the runs that failed this time, with why

Every file is written to a temporary name and renamed into place, so a run is
stored whole or not at all.  So:

* **Resume.**  Running the same sweep into the same DIR runs only the keys that
  have no ``runs/KEY.json``: an interrupted sweep (Ctrl-C, a crash, a reboot)
  goes on where it stopped, and a run stored once is never run again — nor in
  another sweep that shares the DIR and the point (the key is the run's identity,
  not its place in a sweep).
* **Failures.**  A run whose worker died is retried by the executor (at most
  ``MAX_ATTEMPTS`` tries); one that still has no result is a ``failed`` row in
  the table and a line in failures.json, and is tried again on the next resume.
* Two points with the same key (a sampled design that drew the same values) run
  once and share the result.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cowsim.service.cache import cache_key
from cowsim.service.executors import Executor, RunJob
from cowsim.service.sweep_table import METRICS, Row, summarize, write_atomic, write_table
from cowsim.sim import InvalidInput, SweepPlan, SweepPoint, __version__, generation_for

__all__ = ["SweepProgress", "SweepReport", "SweepRun", "SweepStore", "SweepTables", "describe",
           "manifest_json", "manifest_tables", "run_sweep", "sweep_runs", "table_columns",
           "write_table_files"]

FORMAT = 1
"""The version of sweep.json's layout."""


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: a point, a replication, its seed and its key."""

    point: SweepPoint
    replication: int
    seed: int
    key: str


def sweep_runs(plan: SweepPlan, version: str = __version__) -> list[SweepRun]:
    """Every run of ``plan`` in (point, replication) order, keyed like the result cache."""
    return [SweepRun(point, replication, seed, cache_key(point.spec, point.kernel, seed, version))
            for point in plan.points for replication, seed in enumerate(point.seeds)]


class SweepStore:
    """A sweep's directory (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs = root / "runs"

    @classmethod
    def prepare(cls, root: Path, plan: SweepPlan, runs: list[SweepRun],
                option: str = "--out") -> SweepStore:
        """Create (or reopen) ``root`` for ``plan`` and write sweep.json; a path that is not a
        directory, or a DIR holding a sweep of another name, is an InvalidInput."""
        if root.exists() and not root.is_dir():
            raise InvalidInput(f"{root} exists and is not a directory", source=option)
        manifest = root / "sweep.json"
        if manifest.exists():
            try:
                previous = json.loads(manifest.read_text()).get("name")
            except (OSError, ValueError, AttributeError):
                previous = None
            if previous != plan.sweep.name:
                raise InvalidInput(f"{root} holds sweep {previous!r}, not {plan.sweep.name!r}; "
                                   "give another --out", source=option)
        store = cls(root)
        try:
            store.runs.mkdir(parents=True, exist_ok=True)
            write_atomic(manifest, manifest_json(describe(plan, runs)).encode())
        except OSError as exc:
            raise InvalidInput(f"cannot write {root}: {exc.strerror or exc}", source=option) from None
        return store

    def path(self, key: str) -> Path:
        return self.runs / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def load(self, key: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.path(key).read_text())
        return result

    def store(self, key: str, result: dict[str, Any]) -> None:
        write_atomic(self.path(key), (json.dumps(result, sort_keys=True) + "\n").encode())


def describe(plan: SweepPlan, runs: list[SweepRun]) -> dict[str, Any]:
    """sweep.json: the sweep as validated, and every run's place in it."""
    return {
        "format": FORMAT,
        "name": plan.sweep.name,
        "cowsim_version": __version__,
        "source": plan.source,
        "sweep": plan.sweep.model_dump(mode="json"),
        "root_seed": plan.root_seed,
        "columns": list(plan.columns),
        "paths": list(plan.paths),
        "points": len(plan.points),
        "runs": [{"point": run.point.index, "replication": run.replication, "seed": run.seed,
                  "key": run.key, "kernel": run.point.kernel, "values": run.point.values}
                 for run in runs],
    }


def manifest_json(manifest: Mapping[str, Any]) -> str:
    """sweep.json's text, as ``cowsim sweep`` writes it."""
    return json.dumps(manifest, indent=1, sort_keys=True) + "\n"


@dataclass
class SweepProgress:
    """Where a sweep is: runs in all, stored (before and now), failed, running."""

    total: int
    done: int = 0
    """Runs stored, including those stored before this start."""
    reused: int = 0
    """Runs found stored at the start (not run again)."""
    failed: int = 0
    running: int = 0
    started: float = field(default_factory=time.monotonic)
    last_error: str | None = None


@dataclass(frozen=True)
class SweepReport:
    """How a sweep ended."""

    progress: SweepProgress
    ran: int
    """Runs executed by this start (completed or failed)."""
    failures: dict[str, str]
    """Key → why, for the runs with no result."""

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class SweepTables:
    """A sweep's two tables, rows and columns in order (what runs.* and summary.* hold)."""

    run_columns: list[str]
    runs: list[Row]
    summary_columns: list[str]
    summary: list[Row]


def _row(entry: Mapping[str, Any], result: Mapping[str, Any] | None, error: str | None) -> Row:
    """One runs-table row from a sweep.json run entry and its result (None: failed)."""
    row: Row = {"point": entry["point"], "replication": entry["replication"],
                **entry["values"], "kernel": entry["kernel"],
                "era": generation_for(entry["kernel"]).era,
                "seed": entry["seed"], "key": entry["key"],
                "status": "completed" if result is not None else "failed", "error": error}
    metrics = result.get("metrics", {}) if result is not None else None
    for name, read in METRICS.items():
        row[name] = read(metrics) if metrics is not None else None
    return row


def table_columns(columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """The runs table's columns and the summary's, for a sweep of these axis columns."""
    axes = list(columns)
    point = ["point", *axes, *([] if "kernel" in axes else ["kernel"]), "era"]
    runs = [*point[:1], "replication", *point[1:], "seed", "key", "status", "error", *METRICS]
    summary = [*point, "replications", "failed",
               *(f"{m}_{s}" for m in METRICS for s in ("mean", "ci95_low", "ci95_high"))]
    return runs, summary


def manifest_tables(manifest: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]],
                    failures: Mapping[str, str]) -> SweepTables:
    """The tables of a sweep from its sweep.json (:func:`describe`) and the results by key
    (a key without one is a failed row, its error from ``failures``).  The one way the
    tables are made: ``cowsim sweep`` from its directory, the server from its store."""
    rows = [_row(entry, results.get(entry["key"]),
                 None if entry["key"] in results else failures.get(entry["key"], "not run"))
            for entry in manifest["runs"]]
    run_columns, summary_columns = table_columns(manifest["columns"])
    point_columns = [c for c in summary_columns if c in run_columns]
    return SweepTables(run_columns, rows, summary_columns, summarize(rows, point_columns))


def write_table_files(root: Path, tables: SweepTables, failures: Mapping[str, str]) -> None:
    """runs.*, summary.* and failures.json into ``root``, each renamed into place."""
    write_table(tables.runs, tables.run_columns, root / "runs")
    write_table(tables.summary, tables.summary_columns, root / "summary")
    write_atomic(root / "failures.json",
                 (json.dumps(dict(failures), indent=1, sort_keys=True) + "\n").encode())


def write_tables(plan: SweepPlan, runs: list[SweepRun], store: SweepStore,
                 failures: dict[str, str]) -> None:
    """runs.*, summary.* and failures.json from what is stored (every run of the plan)."""
    results = {run.key: store.load(run.key) for run in runs if store.has(run.key)}
    write_table_files(store.root, manifest_tables(describe(plan, runs), results, failures),
                      failures)


def run_sweep(plan: SweepPlan, store: SweepStore, executor: Executor, *,
              runs: list[SweepRun] | None = None,
              on_progress: Callable[[SweepProgress], None] | None = None) -> SweepReport:
    """Run what is not stored yet, store each result as it arrives, write the tables.

    ``on_progress`` is called at the start, after each finished run and at the end.  An
    exception (Ctrl-C included) leaves every finished run stored and no table written."""
    runs = runs if runs is not None else sweep_runs(plan)
    keys = list(dict.fromkeys(run.key for run in runs))
    first = {run.key: run for run in reversed(runs)}
    missing = [key for key in keys if not store.has(key)]
    progress = SweepProgress(total=len(keys), done=len(keys) - len(missing),
                             reused=len(keys) - len(missing))
    jobs = [RunJob(key, first[key].point.spec_text, first[key].seed) for key in missing]
    progress.running = min(executor.workers, len(jobs))
    report = on_progress or (lambda _: None)
    report(progress)
    failures: dict[str, str] = {}
    outcomes = executor.submit(jobs)
    for outcome in outcomes:
        if outcome.result is not None:
            store.store(outcome.key, outcome.result)
            progress.done += 1
        else:
            failures[outcome.key] = outcome.error or "failed"
            progress.failed += 1
            progress.last_error = failures[outcome.key]
        progress.running = min(executor.running, len(jobs) - progress.done - progress.failed
                                + progress.reused)
        report(progress)
    progress.running = 0
    write_tables(plan, runs, store, failures)
    report(progress)
    return SweepReport(progress=progress, ran=len(jobs), failures=failures)
