"""Worker processes: where simulations run, one job at a time, under a memory limit.

A worker is a process started with the **spawn** context (gRPC does not survive
``fork``) running :func:`worker_main`: it limits its own address space, then
answers jobs from its pipe until the pipe closes.  A job is a plain dict:

* ``{"kind": "workload", "spec_text", "source_name", "kernel", "seed", "budget"}``:
  the spec is validated again by the library (:func:`cowsim.sim.parse_spec`),
  and run with :func:`cowsim.sim.run` — the run contract, with a progress
  callback that sends ``{"type": "progress", ...}`` messages (deltas merged, at
  most every :data:`PROGRESS_INTERVAL_SECONDS`) and a cancel callback that reads
  the cancel :class:`multiprocessing.Event` (and notices a parent that died).
  Progress messages carry the counter deltas and the histogram observations
  (bucket counts) since the previous message; the last one also settles the
  workloads' counters the deltas may lack (:data:`SETTLED_COUNTERS`).
  The reply is ``{"type": "result", "result_json": ...}``, the JSON exactly as
  ``cowsim run --json`` prints it.
* ``{"kind": "scenario", "text", "file_name", "kernel"}``: the scenario is
  validated and run on each generation as ``cowsim scenario run`` does; the
  reply is ``{"type": "scenario", "results": [...]}``.

Failures are replies too, never tracebacks: ``{"type": "error", "error": ...}``
with the library's :class:`~cowsim.sim.InvalidInput` as plain data
(:func:`error_dict`), or ``"class": "memory"`` when the run exhausted the
worker's memory (``MemoryError`` under RLIMIT_AS).  A worker that dies
outright (a signal, the kernel's OOM killer) is noticed by its parent through
the pipe's end (:mod:`cowsim.service.pool`).

Only this module and the pools share the message format.

:func:`run_job` is the same job run in the calling process, for a Dask worker
(:mod:`cowsim.service.dask_pool`): no pipe and no memory limit of its own, its
progress merged into one message returned with the reply (``"progress"``), and
cancellation asked of a callback the caller gives.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

from cowsim.sim import (
    Budget,
    BudgetExceeded,
    Generation,
    InvalidInput,
    KernelVersionError,
    ProgressEvent,
    all_generations,
    generations_for,
    parse_scenario,
    parse_spec,
    run,
    run_scenario,
)

__all__ = ["PROGRESS_INTERVAL_SECONDS", "SETTLED_COUNTERS", "apply_memory_limit", "error_dict",
           "error_from_dict", "run_job", "worker_main"]

PROGRESS_INTERVAL_SECONDS = 0.05
"""The shortest wall time between two progress messages of one run."""


def _vm_size_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def apply_memory_limit(allowance_bytes: int) -> int:
    """Limit this process's address space (RLIMIT_AS) to what it uses now plus
    ``allowance_bytes`` (never above the hard limit); the soft limit set."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size_bytes() + allowance_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit


def error_dict(error: InvalidInput) -> dict[str, Any]:
    """An InvalidInput as plain data (exceptions with keyword arguments do not pickle)."""
    return {"class": "budget" if isinstance(error, BudgetExceeded) else "invalid",
            "message": error.message, "path": list(error.path), "source": error.source,
            "op": error.op}


def error_from_dict(data: dict[str, Any]) -> InvalidInput:
    """The InvalidInput (or BudgetExceeded) :func:`error_dict` described."""
    kind = BudgetExceeded if data.get("class") == "budget" else InvalidInput
    return kind(str(data.get("message", "")), path=tuple(data.get("path", ())),
                source=data.get("source"), op=data.get("op"))


SETTLED_COUNTERS = {"dma_lost_writes": "dma_lost_writes_total",
                    "stale_pin_reads": "stale_pin_reads_total"}
"""Counters of the workloads (the metrics recorder's, not the kernel's) that the result
totals, by the result key: the progress deltas may leave them out, so the run's last
message carries what its deltas have not (:meth:`_Progress.settle`)."""


class _Progress:
    """The run contract's progress callback, merged and rate-limited into messages.

    A message is ``{"type": "progress", "sim_seconds", "sim_seconds_total",
    "events_processed", "deltas": {counter: amount}, "histograms": {name:
    {"bucket_counts": [...], "count": n, "sum_seconds": s}}}``: the counter deltas and
    histogram observations (:class:`cowsim.sim.HistogramDelta` as plain data) of every
    event since the previous message, summed."""

    def __init__(self, send: Callable[[dict[str, Any]], None],
                 interval_seconds: float = PROGRESS_INTERVAL_SECONDS) -> None:
        self.send = send
        self.interval_seconds = interval_seconds
        self.pending: dict[str, float] = {}
        self.histograms: dict[str, dict[str, Any]] = {}
        self.sent: dict[str, float] = dict.fromkeys(SETTLED_COUNTERS, 0)
        self.last: ProgressEvent | None = None
        self.dirty = False
        self.sent_at = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        for name, value in event.counters.items():
            self.pending[name] = self.pending.get(name, 0) + value
        for name, delta in event.histograms.items():
            merged = self.histograms.get(name)
            if merged is None:
                self.histograms[name] = {"bucket_counts": list(delta.bucket_counts),
                                         "count": delta.count, "sum_seconds": delta.sum_seconds}
                continue
            merged["bucket_counts"] = [a + b for a, b in zip(merged["bucket_counts"],
                                                             delta.bucket_counts, strict=True)]
            merged["count"] += delta.count
            merged["sum_seconds"] += delta.sum_seconds
        self.last, self.dirty = event, True
        now = time.monotonic()
        if now - self.sent_at >= self.interval_seconds:
            self.flush()
            self.sent_at = now

    def settle(self, outcome: dict[str, Any]) -> None:
        """Add to the pending deltas what the result counts of :data:`SETTLED_COUNTERS` and
        the messages did not carry, so that a run's deltas sum to its result."""
        metrics = outcome.get("metrics", {})
        for name, key in SETTLED_COUNTERS.items():
            missing = metrics.get(key, 0) - self.sent[name] - self.pending.get(name, 0)
            if missing > 0:
                self.pending[name] = self.pending.get(name, 0) + missing
                self.dirty = True

    def flush(self) -> None:
        if self.last is None or not self.dirty:
            return
        for name in SETTLED_COUNTERS:
            self.sent[name] += self.pending.get(name, 0)
        self.send({"type": "progress", "sim_seconds": self.last.sim_seconds,
                   "sim_seconds_total": self.last.sim_seconds_total,
                   "events_processed": self.last.events_processed, "deltas": self.pending,
                   "histograms": self.histograms})
        self.pending, self.histograms, self.dirty = {}, {}, False


Send = Callable[[dict[str, Any]], None]


def _run_workload(job: dict[str, Any], send: Send, cancel: Callable[[], bool],
                  interval_seconds: float = PROGRESS_INTERVAL_SECONDS) -> dict[str, Any]:
    source = job["source_name"]
    spec = parse_spec(job["spec_text"], source)
    progress = _Progress(send, interval_seconds)
    try:
        outcome = run(spec, kernel=job["kernel"], seed=job["seed"], progress=progress,
                      cancel=cancel, budget=Budget(**job["budget"]), pace=job.get("pace"))
    except InvalidInput as exc:  # refused inside the run: name the spec it came from
        raise exc.within(source=source) from None
    progress.settle(outcome)
    progress.flush()
    return {"type": "result", "result_json": json.dumps(outcome, indent=2, sort_keys=True)}


def _generations(option: str, scenario_kernel: str | None, file: str) -> list[Generation]:
    """The generations to run on: the option (``all`` too), else the script's own kernel,
    else one per era (as ``cowsim scenario run`` chooses)."""
    if option:
        try:
            return generations_for(option)
        except KernelVersionError as exc:
            raise exc.within("kernel") from None
    if scenario_kernel is None:
        return all_generations()
    try:
        return generations_for(scenario_kernel)
    except KernelVersionError as exc:
        raise exc.within("kernel", source=file) from None


def _run_scenario(job: dict[str, Any]) -> dict[str, Any]:
    file = job["file_name"]
    scenario = parse_scenario(job["text"], file)
    results = [run_scenario(scenario, generation, file).as_dict()
               for generation in _generations(job["kernel"], scenario.kernel, file)]
    return {"type": "scenario", "results": results}


def _execute(job: dict[str, Any], send: Send, cancel: Callable[[], bool],
             interval_seconds: float = PROGRESS_INTERVAL_SECONDS) -> dict[str, Any]:
    try:
        if job["kind"] == "workload":
            return _run_workload(job, send, cancel, interval_seconds)
        return _run_scenario(job)
    except MemoryError:
        return {"type": "error", "error": {"class": "memory", "message": "the run ran out of "
                                           "memory (the worker's memory limit)"}}
    except InvalidInput as exc:
        return {"type": "error", "error": error_dict(exc)}
    except Exception as exc:  # a bug: one line for the run's record, never a traceback
        return {"type": "error", "error": {"class": "internal", "message": f"internal error: "
                                           f"{type(exc).__name__}: {str(exc)[:300]}"}}


def run_job(job: dict[str, Any], cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Run one job here (a Dask worker's task): the reply a worker process would send, with
    ``"progress"``: the run's progress merged into one message (or None)."""
    messages: list[dict[str, Any]] = []
    reply = _execute(job, messages.append, cancel or (lambda: False), float("inf"))
    reply["progress"] = messages[-1] if messages else None
    return reply


def worker_main(conn: Connection, cancel_event: Event, allowance_bytes: int) -> None:
    """The worker's loop: jobs in, replies out, until the pipe closes or a None job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    parent = os.getppid()
    apply_memory_limit(allowance_bytes)

    def cancelled() -> bool:
        return cancel_event.is_set() or os.getppid() != parent

    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        reply = _execute(job, conn.send, cancelled)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return
