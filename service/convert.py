"""Between the store's records and the cowsim.v1 messages.

:func:`run_message` renders a :class:`~cowsim.service.store.RunRecord` as a
``Run`` (with its result for ``RUN_VIEW_FULL``); :func:`result_message` fills
the typed ``RunResult`` fields from the result dict, whose full JSON travels in
``result_json`` exactly as the worker produced it (``cowsim run --json``'s text).
:func:`sweep_message` renders a :class:`~cowsim.service.sweep_service.SweepView`
as a ``Sweep`` and :func:`sweep_progress_message` its counts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from cowsim.service.runs import Progress
from cowsim.service.store import RunRecord
from cowsim.service.sweep_service import SweepCounts, SweepView
from cowsim.v1 import cowsim_pb2 as pb

__all__ = ["STATE_NAMES", "STATE_VALUES", "progress_message", "result_message", "run_message",
           "sweep_message", "sweep_progress_message"]

STATE_VALUES: dict[str, pb.RunState.ValueType] = {
    "QUEUED": pb.RUN_STATE_QUEUED, "RUNNING": pb.RUN_STATE_RUNNING,
    "SUCCEEDED": pb.RUN_STATE_SUCCEEDED, "FAILED": pb.RUN_STATE_FAILED,
    "CANCELLED": pb.RUN_STATE_CANCELLED,
}
STATE_NAMES = {value: name for name, value in STATE_VALUES.items()}

_COUNTS = ("cow_copies_total", "wp_reuses_total", "page_faults_total", "tlb_shootdowns_total",
           "tlb_ipis_total", "tlb_misses_total", "dma_lost_writes_total", "leaks_total",
           "stale_pin_reads_total", "pin_diverged_total", "memory_peak_bytes")


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _latency(summary: Any) -> pb.LatencySummary:
    values = summary if isinstance(summary, Mapping) else {}
    return pb.LatencySummary(**{key: float(values.get(key, 0.0) or 0.0)
                                for key in ("p50", "p90", "p99", "p999", "max")})


def result_message(result_json: str) -> pb.RunResult:
    """The typed result of ``result_json`` (design.md's keys), with the JSON itself."""
    result = json.loads(result_json)
    metrics = result.get("metrics", {})
    message = pb.RunResult(
        status=str(result.get("status", "")), kernel=str(result.get("kernel", "")),
        era=str(result.get("era", "")), seed=_int(result.get("seed")),
        sim_seconds=float(result.get("sim_seconds") or 0.0),
        wall_seconds=float(result.get("wall_seconds") or 0.0),
        fork_pause_seconds=_latency(metrics.get("fork_pause_seconds")),
        request_latency_seconds=_latency(metrics.get("request_latency_seconds")),
        result_json=result_json)
    for name in _COUNTS:
        setattr(message, name, _int(metrics.get(name)))
    message.cow_copies_by_cause.update({str(k): _int(v) for k, v in
                                        metrics.get("cow_copies_by_cause", {}).items()})
    message.page_faults_by_type.update({str(k): _int(v) for k, v in
                                        metrics.get("page_faults_by_type", {}).items()})
    return message


def run_message(record: RunRecord, full: bool) -> pb.Run:
    """A stored run as a ``Run``; with ``full``, its result and spec too."""
    run = pb.Run(
        run_id=record.run_id, state=STATE_VALUES[record.state], name=record.name,
        kernel=record.kernel, seed=record.seed, workload=record.workload,
        request_id=record.request_id or "", sim_seconds=record.sim_seconds,
        sim_seconds_total=record.sim_seconds_total, events_processed=record.events_processed,
        attempts=record.attempts, error_message=record.error_message,
        error_field=record.error_field, pace=record.pace or 0.0)
    for name, seconds in (("create_time", record.create_time), ("start_time", record.start_time),
                          ("end_time", record.end_time)):
        stamp = _timestamp(seconds)
        if stamp is not None:
            getattr(run, name).CopyFrom(stamp)
    if full:
        run.spec = record.spec_text
        if record.result_json is not None:
            run.result.CopyFrom(result_message(record.result_json))
    return run


def progress_message(event: Progress) -> pb.RunProgress:
    message = pb.RunProgress(run_id=event.run_id, sim_seconds=event.sim_seconds,
                             sim_seconds_total=event.sim_seconds_total,
                             events_processed=event.events_processed)
    message.counter_deltas.update({name: float(value) for name, value in event.deltas.items()})
    return message


def sweep_progress_message(sweep_id: str, counts: SweepCounts) -> pb.SweepProgress:
    return pb.SweepProgress(sweep_id=sweep_id, total=counts.total, done=counts.done,
                            running=counts.running, queued=counts.queued, failed=counts.failed,
                            cached=counts.cached)


def sweep_message(view: SweepView, full: bool) -> pb.Sweep:
    """A sweep as a ``Sweep``: its members when the view has them; with ``full``, its text,
    sweep.json and (when the view has them: a final sweep) its tables."""
    record = view.record
    sweep = pb.Sweep(sweep_id=record.sweep_id, name=record.name,
                     state=STATE_VALUES[view.state], request_id=record.request_id or "",
                     progress=sweep_progress_message(record.sweep_id, view.counts),
                     points=record.points, replications=record.replications)
    for name, seconds in (("create_time", record.create_time), ("end_time", view.end_time)):
        stamp = _timestamp(seconds)
        if stamp is not None:
            getattr(sweep, name).CopyFrom(stamp)
    sweep.runs.extend(pb.SweepRun(point=m.point, replication=m.replication, seed=m.seed,
                                  key=m.key, run_id=m.run_id, state=STATE_VALUES[m.state])
                      for m in view.members)
    if full:
        sweep.sweep = record.spec_text
        sweep.sweep_json = record.manifest_json
        if view.tables is not None:
            sweep.runs_csv = view.tables.runs_csv
            sweep.summary_csv = view.tables.summary_csv
            sweep.failures_json = view.tables.failures_json
    return sweep
