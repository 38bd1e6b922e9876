"""The run manager: submissions, the bounded queue, workers, cancellation and watchers.

Everything about a run's life happens here, on the server's event loop:

1. **Submit** (:meth:`RunManager.submit`): the spec text is validated by the
   library in a thread (:func:`cowsim.sim.parse_spec`, :func:`cowsim.sim.plan_run`
   with the server's budget, then :func:`cowsim.service.limits.check_plan`); the
   cache key is computed (:func:`cowsim.service.cache.cache_key`).  A known
   ``request_id`` returns its run (``replayed``); a completed run with the same key
   answers at once (``cached``); a full queue or a draining server refuses; else
   the run is stored QUEUED and queued.  Between the checks and the insert there is
   no ``await``, so two identical submissions cannot both slip through.
2. **Run**: one dispatcher task per worker slot takes jobs from the queue, marks
   the run RUNNING, and executes it (:class:`cowsim.service.pool.WorkerSlot`).
   Progress updates the run's live numbers, the observer (counter deltas and
   histogram observations) and every watcher.
3. **Finish**: the reply becomes the final state — SUCCEEDED with the result,
   CANCELLED (with the partial result when it stopped in a worker), or FAILED with
   a one-line error — stored in one transaction before anyone is told.
4. **Restart**: :meth:`RunManager.start` re-queues what the store says was in
   flight (:meth:`cowsim.service.store.RunStore.recover`).
5. **Drain** (:meth:`RunManager.drain`): new submissions are refused
   (UNAVAILABLE), running runs get ``drain_seconds`` to finish, and what is still
   running then is killed and left QUEUED in the store for the next start.

Scenario scripts (:meth:`RunManager.run_scenario`) go through the same queue and
workers but are not stored: the call waits for the result, and a deadline or a
client gone kills the worker.

**Batches.**  :meth:`RunManager.submit` is :meth:`RunManager.plan` (in a thread)
then :meth:`RunManager.admit` of one :class:`Candidate`; a sweep
(:mod:`cowsim.service.sweep_service`) plans all its runs first and admits them
in one call: all or none (the queue limit counts the whole batch), in one
SQLite transaction together with the sweep's own rows.

**Slots.**  A dispatcher drives a *slot*: anything with the
:class:`~cowsim.service.pool.WorkerSlot` interface (``start``, ``execute``,
``cancel``, ``kill``, ``stop``, ``busy``, ``killed``).  By default one local
worker process per slot; ``cowsim serve --executor dask://…`` passes
:class:`~cowsim.service.dask_pool.DaskSlot` s instead, which send each job to a
Dask cluster (:mod:`cowsim.service.dask_pool`).

**Changes.**  Every state change of a stored run wakes :meth:`RunManager.changed`,
which sweep watchers wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.context import SpawnProcess
from typing import Any, Protocol

import grpc

from cowsim.service.cache import cache_key
from cowsim.service.errors import ServiceError, invalid_input
from cowsim.service.limits import Limits, budget, check_plan, check_queue
from cowsim.service.observer import NullObserver, Observer, RunLabels, SafeObserver
from cowsim.service.pool import DIED, WorkerSlot, spawn_context
from cowsim.service.store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    RunRecord,
    RunStore,
)
from cowsim.service.worker import error_from_dict
from cowsim.sim import (
    Budget,
    HistogramDelta,
    InvalidInput,
    __version__,
    check_pace,
    parse_spec,
    plan_run,
)

__all__ = ["Candidate", "Planned", "Progress", "RunManager", "ScenarioOutcome", "Slot",
           "Submission", "new_run_id"]

log = logging.getLogger("cowsim.service")

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_SOURCE_NAME_CHARS = 256


@dataclass(frozen=True)
class Submission:
    """What :meth:`RunManager.submit` answers."""

    run: RunRecord
    cached: bool = False
    replayed: bool = False


@dataclass(frozen=True)
class Progress:
    """One progress event of a run, as watchers get it."""

    run_id: str
    sim_seconds: float
    sim_seconds_total: float
    events_processed: int
    deltas: dict[str, float]


@dataclass(frozen=True)
class ScenarioOutcome:
    results: list[dict[str, Any]]


@dataclass
class _Job:
    """A queue entry: a stored run (by id) or a scenario call waiting on ``future``."""

    run_id: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    future: asyncio.Future[dict[str, Any]] | None = None
    slot: Slot | None = None
    abandoned: bool = False


class Slot(Protocol):
    """Where a dispatcher runs its jobs, one at a time (:class:`WorkerSlot`'s interface)."""

    @property
    def busy(self) -> bool: ...

    @property
    def killed(self) -> bool: ...

    @property
    def process(self) -> SpawnProcess | None:
        """The local worker process, when the slot has one (a Dask slot has none)."""
        ...

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None: ...

    async def execute(self, job: dict[str, Any], on_progress: Any) -> dict[str, Any]: ...

    def cancel(self, grace_seconds: float) -> None: ...

    def kill(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Planned:
    """A validated, planned submission: what :meth:`RunManager.plan` answers."""

    spec_name: str
    kernel_label: str
    kernel_name: str
    seed: int
    workload: str
    key: str
    duration: float


@dataclass(frozen=True)
class Candidate:
    """A planned run waiting to be admitted (:meth:`RunManager.admit`)."""

    planned: Planned
    spec_text: str
    source_name: str
    request_id: str | None = None
    pace: float | None = None


def _labels(record: RunRecord) -> RunLabels:
    return RunLabels(kernel=record.kernel, workload=record.workload)


def new_run_id() -> str:
    """A fresh run id: 16 hex digits."""
    return secrets.token_hex(8)


def check_text_field(value: str, name: str, max_chars: int) -> str:
    if len(value) > max_chars:
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: at most {max_chars} "
                           "characters", field_violations=[(name, f"at most {max_chars} characters")])
    return value


class RunManager:
    """Runs for one server (see the module docstring)."""

    def __init__(self, store: RunStore, limits: Limits, observer: Observer | None = None, *,
                 cancel_grace_seconds: float = 5.0, slots: Sequence[Slot] | None = None) -> None:
        self.store = store
        self.limits = limits
        self.observer = SafeObserver(observer if observer is not None else NullObserver())
        self.cancel_grace_seconds = cancel_grace_seconds
        self.budget: Budget = budget(limits)
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.slots: list[Slot] = list(slots) if slots is not None else [
            WorkerSlot(spawn_context(), limits.worker_memory_bytes) for _ in range(limits.workers)]
        self.running: dict[str, Slot] = {}
        self.live: dict[str, Progress] = {}
        self.watchers: dict[str, set[asyncio.Queue[Progress | RunRecord]]] = {}
        self.finished: dict[str, asyncio.Event] = {}
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()

    # -- state changes -------------------------------------------------------------------

    def _state_changed(self, labels: RunLabels, old: str | None, new: str) -> None:
        """Tell the observer, and wake everyone waiting in :meth:`changed`."""
        self.observer.run_state_changed(labels, old, new)
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, timeout_seconds: float) -> None:
        """Return when some stored run changes state, or after ``timeout_seconds``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_seconds)

    # -- life of the manager -------------------------------------------------------------

    async def start(self) -> None:
        """Recover the store's queued runs and start one dispatcher per worker."""
        for record in self.store.all():
            self._state_changed(_labels(record), None, record.state)
        for record in self.store.recover():
            self.queue.put_nowait(_Job(run_id=record.run_id))
        self.observer.queue_depth(self.queue.qsize())
        for slot in self.slots:
            slot.start()  # warm: the first run does not wait for imports
            self._tasks.append(asyncio.create_task(self._dispatch(slot)))

    async def drain(self, drain_seconds: float) -> None:
        """Stop taking work; let running runs finish for ``drain_seconds``; kill the rest
        (they stay QUEUED in the store) and stop the workers."""
        self.draining = True
        deadline = time.monotonic() + drain_seconds
        while self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for slot in self.slots:
            if slot.busy:
                slot.kill()
        while self.running and time.monotonic() < deadline + 10:
            await asyncio.sleep(0.02)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self.queue.empty():
            job = self.queue.get_nowait()
            if job.future is not None and not job.future.done():
                job.future.set_exception(_unavailable())
        for slot in self.slots:
            slot.stop()

    # -- submitting ----------------------------------------------------------------------

    def plan(self, spec_text: str, source_name: str, kernel: str | None, seed: int | None
             ) -> Planned:
        """Validate and plan against this server's budget and limits (call it in a thread:
        a 4 MiB spec takes a while to parse); ServiceError naming the field or limit."""
        try:
            spec = parse_spec(spec_text, source_name)
            plan = plan_run(spec, kernel=kernel, seed=seed, budget=self.budget, source=source_name)
        except InvalidInput as exc:
            raise invalid_input(exc, "spec") from None
        check_plan(plan, self.limits)
        return Planned(spec_name=spec.name, kernel_label=plan.generation.label,
                        kernel_name=plan.kernel, seed=plan.seed, workload=spec.workload_label,
                        key=cache_key(plan.spec, plan.kernel, plan.seed, __version__),
                        duration=spec.duration)

    def _replay(self, request_id: str, key: str) -> Submission | None:
        earlier = self.store.by_request_id(request_id)
        if earlier is None:
            return None
        if earlier.cache_key != key:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"request_id {request_id!r} was used for a different run",
                               field_violations=[("request_id", "used for a different run")])
        return Submission(earlier, replayed=True)

    async def submit(self, spec_text: str, source_name: str, kernel: str | None,
                     seed: int | None, request_id: str | None, pace: float | None = None
                     ) -> Submission:
        """Validate, deduplicate, answer from the cache or queue (module docstring).  A
        paced run is asked for to be watched: it is queued even when the cache knows it."""
        if self.draining:
            raise _unavailable()
        if pace is not None:
            try:
                pace = check_pace(pace)
            except InvalidInput as exc:
                raise invalid_input(exc, "pace") from None
        if request_id is not None and not REQUEST_ID.fullmatch(request_id):
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               "request_id: 1-128 letters, digits or ._:-",
                               field_violations=[("request_id", "1-128 letters, digits or ._:-")])
        check_text_field(source_name, "source_name", MAX_SOURCE_NAME_CHARS)
        check_text_field(kernel or "", "kernel", 64)
        planned = await asyncio.to_thread(self.plan, spec_text, source_name, kernel, seed)
        # No await from here on: the checks and the insert are one step of the event loop.
        [submission] = self.admit([Candidate(planned, spec_text, source_name, request_id, pace)])
        return submission

    def admit(self, candidates: Sequence[Candidate], *, what: str = "run",
              also: Callable[[list[Submission]], None] | None = None) -> list[Submission]:
        """Admit planned runs, all or none, in one step of the event loop (no await):
        a known ``request_id`` replays its run, a known key is answered from the cache
        (a paced candidate never is), the rest must fit the queue *together* (``what``
        names them in the refusal).  The new records are inserted in one transaction, with
        ``also(submissions)`` (the caller's own rows; one submission per candidate, in
        order) inside it, and only then queued."""
        if self.draining:
            raise _unavailable()
        submissions: list[Submission] = []
        new: list[RunRecord] = []
        for candidate in candidates:
            planned = candidate.planned
            if candidate.request_id is not None:
                replay = self._replay(candidate.request_id, planned.key)
                if replay is not None:
                    submissions.append(replay)
                    continue
            cached = self.store.find_cached(planned.key) if candidate.pace is None else None
            if cached is not None:
                self.observer.cache_hit(_labels(cached))
                if candidate.request_id is None:
                    submissions.append(Submission(cached, cached=True))
                    continue
            record = RunRecord(
                run_id=new_run_id(), cache_key=planned.key, name=planned.spec_name,
                kernel=planned.kernel_label, kernel_name=planned.kernel_name,
                workload=planned.workload, seed=planned.seed, state=QUEUED,
                spec_text=candidate.spec_text, source_name=candidate.source_name,
                create_time=time.time(), sim_seconds_total=planned.duration,
                request_id=candidate.request_id, pace=candidate.pace)
            if cached is not None:  # a new request id for a cached result: its own record
                record.state, record.start_time, record.end_time = SUCCEEDED, None, time.time()
                record.result_json, record.result_status = cached.result_json, cached.result_status
                record.wall_seconds, record.sim_seconds = cached.wall_seconds, cached.sim_seconds
                record.events_processed = cached.events_processed
            submissions.append(Submission(record, cached=cached is not None))
            new.append(record)
        queued = sum(record.state == QUEUED for record in new)
        if queued:
            check_queue(self.queue.qsize(), len(self.running), self.limits, adding=queued,
                        what=what)
        with self.store.transaction():
            for record in new:
                self.store.insert(record)
            if also is not None:
                also(submissions)
        for record in new:
            self._state_changed(_labels(record), None, record.state)
            if record.state == QUEUED:
                self.queue.put_nowait(_Job(run_id=record.run_id))
        self.observer.queue_depth(self.queue.qsize())
        return submissions

    # -- running -------------------------------------------------------------------------

    async def _dispatch(self, slot: Slot) -> None:
        while True:
            job = await self.queue.get()
            self.observer.queue_depth(self.queue.qsize())
            if self.draining:
                if job.future is not None and not job.future.done():
                    job.future.set_exception(_unavailable())
                continue
            try:
                if job.run_id is not None:
                    await self._execute_run(slot, job.run_id)
                elif not job.abandoned and job.future is not None:
                    job.slot = slot
                    reply = await slot.execute(job.payload, lambda message: None)
                    if not job.future.done():
                        job.future.set_result(reply)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in the service: log it, keep the dispatcher alive
                log.exception("dispatching a job failed")
                if job.future is not None and not job.future.done():
                    job.future.set_exception(ServiceError(grpc.StatusCode.INTERNAL,
                                                          "internal error"))

    def _workload_job(self, record: RunRecord) -> dict[str, Any]:
        return {"kind": "workload", "spec_text": record.spec_text,
                "source_name": record.source_name, "kernel": record.kernel_name,
                "seed": record.seed, "budget": asdict(self.budget), "pace": record.pace}

    async def _execute_run(self, slot: Slot, run_id: str) -> None:
        record = self.store.get(run_id)
        if record is None or record.state != QUEUED:
            return  # cancelled while it waited
        record = self.store.update(run_id, state=RUNNING, start_time=time.time(),
                                   attempts=record.attempts + 1)
        labels = _labels(record)
        self._state_changed(labels, QUEUED, RUNNING)
        self.running[run_id] = slot
        self.finished.setdefault(run_id, asyncio.Event())

        def on_progress(message: dict[str, Any]) -> None:
            event = Progress(run_id, float(message["sim_seconds"]),
                             float(message["sim_seconds_total"]),
                             int(message["events_processed"]), dict(message["deltas"]))
            self.live[run_id] = event
            self.observer.run_progress(labels, event.deltas)
            histograms = _histogram_deltas(message.get("histograms", {}))
            if histograms:
                self.observer.run_observations(labels, histograms)
            self._tell(run_id, event)

        started = time.monotonic()
        try:
            reply = await slot.execute(self._workload_job(record), on_progress)
        finally:
            self.running.pop(run_id, None)
        wall_seconds = time.monotonic() - started
        self._finish(run_id, reply, wall_seconds, killed=slot.killed)

    def _finish(self, run_id: str, reply: dict[str, Any], wall_seconds: float, killed: bool
                ) -> None:
        live = self.live.pop(run_id, None)
        record = self.store.get(run_id)
        assert record is not None
        changes: dict[str, Any] = {"end_time": time.time(), "wall_seconds": wall_seconds}
        if live is not None:
            changes.update(sim_seconds=live.sim_seconds, events_processed=live.events_processed)
        result: dict[str, Any] | None = None
        if reply["type"] == "result":
            text = reply["result_json"]
            result = _loads(text)
            status = str(result.get("status", ""))
            changes.update(state=CANCELLED if status == "cancelled" else SUCCEEDED,
                           result_json=text, result_status=status,
                           sim_seconds=float(result.get("sim_seconds", 0.0)))
        elif reply["type"] == DIED and self.draining:
            changes = {"state": QUEUED}  # re-queued for the next start
        elif reply["type"] == DIED and (killed or record.cancel_requested):
            changes.update(state=CANCELLED)
        elif reply["type"] == DIED:
            code = reply.get("exitcode")
            how = f"signal {-code}" if isinstance(code, int) and code < 0 else f"exit code {code}"
            changes.update(state=FAILED, error_message=(
                f"the worker process died ({how}); the run may need more memory than this "
                f"server's worker_memory_bytes ({self.limits.worker_memory_bytes:,})"))
        else:
            changes.update(state=FAILED, **_error_columns(reply.get("error", {})))
        record = self.store.update(run_id, **changes)
        labels = _labels(record)
        self._state_changed(labels, RUNNING, record.state)
        if record.final:
            self.observer.run_finished(labels, record.state, wall_seconds, result)
            self._tell(run_id, record)
            event = self.finished.pop(run_id, None)
            if event is not None:
                event.set()

    # -- cancelling, watching, scenarios -------------------------------------------------

    async def cancel(self, run_id: str, wait_seconds: float = 5.0) -> RunRecord:
        """Cancel a run: a queued one at once, a running one at its next slice (its worker
        killed after the grace); waits up to ``wait_seconds`` for it to be final."""
        record = self.get(run_id)
        if record.final:
            return record
        if record.state == QUEUED:
            record = self.store.update(run_id, state=CANCELLED, end_time=time.time(),
                                       cancel_requested=True)
            self._state_changed(_labels(record), QUEUED, CANCELLED)
            self.observer.run_finished(_labels(record), CANCELLED, None, None)
            self._tell(run_id, record)
            return record
        self.store.update(run_id, cancel_requested=True)
        slot = self.running.get(run_id)
        event = self.finished.setdefault(run_id, asyncio.Event())
        if slot is not None:
            slot.cancel(self.cancel_grace_seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), wait_seconds)
        return self.get(run_id)

    def get(self, run_id: str) -> RunRecord:
        record = self.store.get(run_id)
        if record is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, f"no run {run_id!r}")
        live = self.live.get(run_id)
        if live is not None and record.state == RUNNING:
            record.sim_seconds, record.events_processed = live.sim_seconds, live.events_processed
        return record

    def _tell(self, run_id: str, item: Progress | RunRecord) -> None:
        for queue in self.watchers.get(run_id, ()):
            if queue.full() and isinstance(item, Progress):
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()  # a slow watcher loses old progress, never the end
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(item)

    async def watch(self, run_id: str) -> AsyncIterator[Progress | RunRecord]:
        """The run's progress from now on, then the run in its final state."""
        record = self.get(run_id)
        if record.final:
            yield record
            return
        queue: asyncio.Queue[Progress | RunRecord] = asyncio.Queue(maxsize=256)
        self.watchers.setdefault(run_id, set()).add(queue)
        try:
            live = self.live.get(run_id)
            if live is not None:
                yield live
            while True:
                item = await queue.get()
                if isinstance(item, RunRecord):
                    yield self.get(run_id)
                    return
                yield item
        finally:
            watchers = self.watchers.get(run_id)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del self.watchers[run_id]

    async def run_scenario(self, text: str, file_name: str, kernel: str) -> ScenarioOutcome:
        """Run a scenario script in a worker and wait; a cancelled call kills the worker."""
        if self.draining:
            raise _unavailable()
        check_text_field(file_name, "file_name", MAX_SOURCE_NAME_CHARS)
        check_text_field(kernel, "kernel", 64)
        check_queue(self.queue.qsize(), len(self.running), self.limits)
        job = _Job(payload={"kind": "scenario", "text": text, "file_name": file_name,
                            "kernel": kernel},
                   future=asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        self.observer.queue_depth(self.queue.qsize())
        assert job.future is not None
        try:
            reply = await job.future
        except asyncio.CancelledError:
            job.abandoned = True
            if job.slot is not None and job.slot.busy:
                job.slot.kill()
            raise
        if reply["type"] == "scenario":
            return ScenarioOutcome(results=list(reply["results"]))
        if reply["type"] == DIED:
            raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               "the worker process died running the scenario (out of memory?)",
                               quota_violations=[("worker_memory_bytes", "the worker died")])
        error = reply.get("error", {})
        if error.get("class") in ("invalid", "budget"):
            raise invalid_input(error_from_dict(error), "scenario")
        raise ServiceError(grpc.StatusCode.INTERNAL, str(error.get("message", "internal error")))


def _histogram_deltas(data: dict[str, Any]) -> dict[str, HistogramDelta]:
    """A progress message's histograms (plain data, :mod:`cowsim.service.worker`) as
    the library's :class:`~cowsim.sim.HistogramDelta`."""
    return {name: HistogramDelta(tuple(int(n) for n in delta["bucket_counts"]),
                                 int(delta["count"]), float(delta["sum_seconds"]))
            for name, delta in data.items()}


def _loads(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def _error_columns(error: dict[str, Any]) -> dict[str, str]:
    """A worker's error reply as the run's error_message and error_field."""
    if error.get("class") in ("invalid", "budget"):
        exc = error_from_dict(error)
        return {"error_message": str(exc), "error_field": exc.field}
    return {"error_message": str(error.get("message", "the run failed")), "error_field": ""}


def _unavailable() -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry later")
