"""Sweeps in the service: SubmitSweep, GetSweep, ListSweeps, WatchSweep, CancelSweep.

A sweep on the server is what ``cowsim sweep`` is on a laptop — the same spec,
expanded and validated by the same code, giving the same tables — except that
its runs are the server's runs::

    SubmitSweep ─→ parse_sweep, plan_sweep        every point checked, nothing queued yet
               ─→ RunManager.plan, per point      the server's limits (max_sim_seconds …)
               ─→ RunManager.admit, all runs      one transaction: the sweep, its members,
                                                  its new runs; the queue limit counts them all
    runs go through the normal path               cached, stored, exported, in ListRuns
    GetSweep / WatchSweep                         counts read from the runs' rows
    once every run is final                       runs.csv, summary.csv from the stored results

**Expansion.**  :meth:`SweepManager.submit` parses the text
(:func:`cowsim.sim.parse_sweep`); a ``base`` given as a path is refused (the
server cannot read the client's files: ``cowsim sweep --server`` inlines it).
More than :data:`~cowsim.sim.MAX_SWEEP_RUNS` runs is RESOURCE_EXHAUSTED
(``max_sweep_runs``) from the sizes alone; then :func:`cowsim.sim.plan_sweep`
validates every point against the server's budget (an invalid point is
INVALID_ARGUMENT naming ``axes[1].values[2]`` as ``cowsim sweep`` names it),
and each point is planned again by :meth:`RunManager.plan
<cowsim.service.runs.RunManager.plan>` for the server's own limits
(RESOURCE_EXHAUSTED ``max_sim_seconds``, ``max_frames``).

**Admission.**  Each distinct run (key: :func:`cowsim.service.cache.cache_key`,
the result cache's) becomes a candidate with the request id
``sweep-SWEEP_ID-KEY``: a run is idempotent within its sweep, so nothing a
sweep stored is ever submitted twice.  A key the cache knows is answered at once
(a new run record holding the cached result, ``cached`` in the counts); the rest
must fit the queue together, else RESOURCE_EXHAUSTED ``max_queued_runs`` and
nothing is stored.  The sweep's own ``request_id`` (AIP-155) returns the first
submission's sweep; with another sweep text, INVALID_ARGUMENT on ``request_id``.

**State and tables.**  A sweep is QUEUED until a run starts, RUNNING while any
run is not final, then SUCCEEDED (every run SUCCEEDED), CANCELLED (CancelSweep
was asked) or FAILED.  Once final, its tables are built from the stored results
by :func:`cowsim.service.sweeps.manifest_tables` — the function ``cowsim sweep``
writes its directory with — so runs.csv and summary.csv are byte for byte the
local ones for the same sweep.  A run that FAILED or was CANCELLED is a
``failed`` row, its error message in ``error``.  A restart changes nothing: the
runs are recovered by the run manager, and the sweep is only rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import grpc

from cowsim.service.errors import ServiceError, invalid_input
from cowsim.service.runs import (
    MAX_SOURCE_NAME_CHARS,
    REQUEST_ID,
    Candidate,
    Planned,
    RunManager,
    Submission,
    check_text_field,
    new_run_id,
)
from cowsim.service.store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    SweepMember,
    SweepRecord,
)
from cowsim.service.sweep_table import csv_text
from cowsim.service.sweeps import SweepRun, describe, manifest_json, manifest_tables, sweep_runs
from cowsim.sim import MAX_SWEEP_RUNS, InvalidInput, SweepPlan, parse_sweep, plan_sweep

__all__ = ["MAX_SWEEP_CHARS", "POINT_SOURCE", "SweepCounts", "SweepManager", "SweepTablesText",
           "SweepView", "sweep_state"]

MAX_SWEEP_CHARS = 4 << 20
"""The longest sweep text accepted (the library's largest document)."""
POINT_SOURCE = "point.json"
"""The source name of a sweep run's spec (what ``cowsim sweep`` names a point's errors)."""
WATCH_POLL_SECONDS = 1.0
"""A sweep watcher looks at the counts at least this often (and whenever a run changes)."""
TABLE_CACHE_SIZE = 16


@dataclass(frozen=True)
class SweepCounts:
    """How many of a sweep's distinct runs are where."""

    total: int
    done: int
    running: int
    queued: int
    failed: int
    cached: int


@dataclass(frozen=True)
class SweepTablesText:
    """A final sweep's files, as ``cowsim sweep`` writes them."""

    runs_csv: str
    summary_csv: str
    failures_json: str


@dataclass(frozen=True)
class SweepView:
    """A sweep as an answer: its record, counts, state and (when asked for) members and
    tables."""

    record: SweepRecord
    counts: SweepCounts
    state: str
    end_time: float | None
    members: tuple[SweepMember, ...] = ()
    tables: SweepTablesText | None = None


def sweep_state(counts: SweepCounts, cancel_requested: bool) -> str:
    """QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED (the module docstring)."""
    if counts.running == 0 and counts.queued == 0:
        if counts.done == counts.total:
            return SUCCEEDED
        return CANCELLED if cancel_requested else FAILED
    if counts.running == 0 and counts.queued == counts.total:
        return QUEUED
    return RUNNING


@dataclass(frozen=True)
class _Expanded:
    """A sweep validated and planned, ready to admit."""

    plan: SweepPlan
    runs: list[SweepRun]
    planned: dict[str, Planned]
    """Key → the run's plan, one per distinct run, in sweep order."""
    manifest_text: str
    sweep_key: str


def _invalid(field: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}",
                        field_violations=[(field, message)])


class SweepManager:
    """The sweeps of one server, over its :class:`~cowsim.service.runs.RunManager`."""

    def __init__(self, manager: RunManager) -> None:
        self.manager = manager
        self.store = manager.store
        self._tables: OrderedDict[str, SweepTablesText] = OrderedDict()

    # -- submitting ----------------------------------------------------------------------

    def _expand(self, text: str, source: str) -> _Expanded:
        """Parse, size, validate and plan every run (in a thread)."""
        try:
            sweep = parse_sweep(text, source)
        except InvalidInput as exc:
            raise invalid_input(exc, "sweep") from None
        if not isinstance(sweep.base, dict):
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{source}: field 'base': a path ({sweep.base!r}) cannot be read by the server; "
                "give the base spec inline (cowsim sweep --server does)",
                field_violations=[("base", "give the base spec inline, not a path")])
        runs = sweep.size * sweep.replications
        if runs > MAX_SWEEP_RUNS:
            message = (f"{runs:,} runs ({sweep.size:,} points × {sweep.replications} "
                       f"replications) is more than the limit of {MAX_SWEEP_RUNS:,} runs "
                       "(max_sweep_runs); split the study")
            raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message,
                               quota_violations=[("max_sweep_runs", message)],
                               reason="LIMIT_EXCEEDED", metadata={"limit": "max_sweep_runs"})
        try:
            plan = plan_sweep(sweep, source=source, budget=self.manager.budget)
        except InvalidInput as exc:
            raise invalid_input(exc, "sweep") from None
        runs_of = sweep_runs(plan)
        planned: dict[str, Planned] = {}
        first_of_point: dict[int, Planned] = {}
        for run in runs_of:
            if run.key in planned:
                continue
            point = run.point
            base = first_of_point.get(point.index)
            if base is None:
                try:
                    base = self.manager.plan(point.spec_text, POINT_SOURCE, point.kernel, run.seed)
                except ServiceError as error:
                    where = ", ".join(f"{k}={v!r}" for k, v in point.values.items())
                    raise ServiceError(error.code, f"{source}: point {point.index} ({where}): "
                                       f"{error.message}", error.field_violations,
                                       error.quota_violations, error.reason,
                                       error.metadata) from None
                first_of_point[point.index] = base
            planned[run.key] = replace(base, seed=run.seed, key=run.key)
        manifest = describe(plan, runs_of)
        identity = json.dumps({"sweep": manifest["sweep"], "keys": [r.key for r in runs_of]},
                              sort_keys=True, separators=(",", ":"))
        return _Expanded(plan, runs_of, planned, manifest_json(manifest),
                         hashlib.sha256(identity.encode()).hexdigest())

    async def submit(self, text: str, source_name: str, request_id: str | None
                     ) -> tuple[SweepRecord, bool]:
        """Validate, expand and admit a sweep (module docstring); the sweep and whether it
        was a replay of ``request_id``."""
        if self.manager.draining:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE,
                               "the server is shutting down; retry later")
        if request_id is not None and not REQUEST_ID.fullmatch(request_id):
            raise _invalid("request_id", "1-128 letters, digits or ._:-")
        check_text_field(source_name, "source_name", MAX_SOURCE_NAME_CHARS)
        if len(text) > MAX_SWEEP_CHARS:
            raise _invalid("sweep", f"at most {MAX_SWEEP_CHARS >> 20} MiB of text")
        expanded = await asyncio.to_thread(self._expand, text, source_name)
        # No await from here on: the checks and the inserts are one step of the event loop.
        if request_id is not None:
            earlier = self.store.sweep_by_request_id(request_id)
            if earlier is not None:
                if earlier.sweep_key != expanded.sweep_key:
                    raise _invalid("request_id", "used for a different sweep")
                return earlier, True
        sweep_id = new_run_id()
        record = SweepRecord(
            sweep_id=sweep_id, sweep_key=expanded.sweep_key, name=expanded.plan.sweep.name,
            source_name=source_name, spec_text=text, manifest_json=expanded.manifest_text,
            points=len(expanded.plan.points), replications=expanded.plan.sweep.replications,
            create_time=time.time(), request_id=request_id)
        keys = list(expanded.planned)
        first: dict[str, SweepRun] = {}
        for run in expanded.runs:
            first.setdefault(run.key, run)
        candidates = [Candidate(expanded.planned[key], first[key].point.spec_text, POINT_SOURCE,
                                request_id=f"sweep-{sweep_id}-{key}") for key in keys]

        def store_sweep(submissions: list[Submission]) -> None:
            by_key = dict(zip(keys, submissions, strict=True))
            members = [SweepMember(position=position, point=run.point.index,
                                   replication=run.replication, seed=run.seed, key=run.key,
                                   run_id=by_key[run.key].run.run_id,
                                   cached=by_key[run.key].cached)
                       for position, run in enumerate(expanded.runs)]
            self.store.insert_sweep(record, members)

        self.manager.admit(candidates, what="sweep", also=store_sweep)
        return record, False

    # -- reading -------------------------------------------------------------------------

    def get(self, sweep_id: str) -> SweepRecord:
        record = self.store.get_sweep(sweep_id)
        if record is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, f"no sweep {sweep_id!r}")
        return record

    def counts(self, sweep_id: str) -> SweepCounts:
        states = self.store.sweep_counts(sweep_id)
        return SweepCounts(total=sum(states[s] for s in (QUEUED, RUNNING, SUCCEEDED, FAILED,
                                                          CANCELLED)),
                           done=states[SUCCEEDED], running=states[RUNNING],
                           queued=states[QUEUED], failed=states[FAILED] + states[CANCELLED],
                           cached=states["cached"])

    def view(self, record: SweepRecord, *, members: bool = True) -> SweepView:
        """The sweep as it is now (no tables: :meth:`full_view`)."""
        counts = self.counts(record.sweep_id)
        state = sweep_state(counts, record.cancel_requested)
        listed = self.store.sweep_members(record.sweep_id) if members else []
        end_time = None
        if state in (SUCCEEDED, FAILED, CANCELLED):
            end_time = self.store.sweep_end_time(record.sweep_id)
        return SweepView(record, counts, state, end_time, tuple(listed))

    async def full_view(self, record: SweepRecord) -> SweepView:
        """The sweep with its tables once it is final (built from the stored results in a
        thread, then kept for a few sweeps: a final sweep's tables never change)."""
        view = self.view(record)
        if view.state not in (SUCCEEDED, FAILED, CANCELLED):
            return view
        tables = self._tables.get(record.sweep_id)
        if tables is None:
            texts: dict[str, str] = {}
            failures: dict[str, str] = {}
            for member in view.members:
                if member.key in texts or member.key in failures:
                    continue
                run = self.store.get(member.run_id)
                if run is not None and run.state == SUCCEEDED and run.result_json is not None:
                    texts[member.key] = run.result_json
                elif run is not None:
                    failures[member.key] = run.error_message or f"the run was {run.state.lower()}"
            tables = await asyncio.to_thread(_tables_text, record.manifest_json, texts, failures)
            self._tables[record.sweep_id] = tables
            while len(self._tables) > TABLE_CACHE_SIZE:
                self._tables.popitem(last=False)
        self._tables.move_to_end(record.sweep_id)
        return replace(view, tables=tables)

    async def watch(self, sweep_id: str) -> AsyncIterator[SweepCounts | SweepView]:
        """The counts each time they change, then the sweep in its final state."""
        record = self.get(sweep_id)
        last: SweepCounts | None = None
        while True:
            counts = self.counts(sweep_id)
            if counts != last:
                last = counts
                yield counts
            if sweep_state(counts, self.get(sweep_id).cancel_requested) in (
                    SUCCEEDED, FAILED, CANCELLED):
                yield self.view(self.get(record.sweep_id))
                return
            await self.manager.changed(WATCH_POLL_SECONDS)

    async def cancel(self, sweep_id: str, wait_seconds: float = 5.0) -> SweepView:
        """Cancel every run of the sweep that is not final; wait up to ``wait_seconds`` for
        the running ones to stop."""
        self.get(sweep_id)
        self.store.request_sweep_cancel(sweep_id)
        pending = {m.run_id for m in self.store.sweep_members(sweep_id)
                   if m.state in (QUEUED, RUNNING)}
        for run_id in pending:
            await self.manager.cancel(run_id, wait_seconds=0)
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            counts = self.counts(sweep_id)
            if counts.running == 0 and counts.queued == 0:
                break
            await self.manager.changed(0.2)
        return self.view(self.get(sweep_id))

    def list_sweeps(self, before_seq: int | None, limit: int) -> list[SweepView]:
        return [self.view(record, members=False)
                for record in self.store.list_sweeps(before_seq=before_seq, limit=limit)]


def _tables_text(manifest_text: str, texts: dict[str, str], failures: dict[str, str]
                 ) -> SweepTablesText:
    """runs.csv, summary.csv and failures.json from sweep.json and the results' JSON."""
    results = {key: json.loads(text) for key, text in texts.items()}
    tables = manifest_tables(json.loads(manifest_text), results, failures)
    return SweepTablesText(runs_csv=csv_text(tables.runs, tables.run_columns),
                           summary_csv=csv_text(tables.summary, tables.summary_columns),
                           failures_json=json.dumps(failures, indent=1, sort_keys=True) + "\n")
