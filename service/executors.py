"""Executors: where a sweep's runs go, behind one small interface.

A run is a pure function of (spec, kernel, seed, cowsim version), so a run can go
anywhere that has the same cowsim: a process on this machine or a Dask worker on
another.  An executor takes :class:`RunJob` s (the point's spec text, its seed,
the key it is stored under) and yields a :class:`RunOutcome` for each as it
finishes, in whatever order they finish::

    executor = open_executor("local", workers=2)
    try:
        for outcome in executor.submit(jobs):   # as they complete
            store(outcome)
    finally:
        executor.close()

Every executor runs :func:`execute` on the far side: the spec text is parsed
again by the library (:func:`cowsim.sim.parse_spec`) and run with
:func:`cowsim.sim.run`; an error is a reply (``{"error": "…"}``), never an
exception that would take the sweep down.  A worker that *dies* (killed, out of
memory) costs only the run it had: the run is tried again, at most
``attempts`` times in all, then reported failed.

* :class:`LocalExecutor` (``local``, the default): ``workers`` processes of the
  **spawn** context (gRPC does not survive fork), one pipe each, one job at a
  time each, so the parent knows which run a dead worker had.  Workers ignore
  SIGINT: Ctrl-C is the parent's to handle (it kills them on :meth:`close`).
* :class:`DaskExecutor` (``dask-local``: a LocalCluster of ``workers``
  single-threaded worker processes started for the sweep; ``dask://HOST:PORT``:
  an existing scheduler).  Dask reschedules the task of a lost worker and gives
  up after ``distributed.scheduler.allowed-failures`` (set to ``attempts - 1``
  for a LocalCluster; a remote scheduler keeps its own).  Dask is optional
  (``pip install 'cowsim[dask]'``) and imported only here, when asked for.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from typing import Any, Protocol

from cowsim.sim import InvalidInput, __version__, parse_spec, run

__all__ = ["MAX_ATTEMPTS", "DaskExecutor", "Executor", "ExecutorUnavailableError", "LocalExecutor",
           "RunJob", "RunOutcome", "check_executor", "execute", "open_executor"]

MAX_ATTEMPTS = 3
"""How many times a run whose worker died is tried, in all, before it is reported failed."""
MAX_WORKERS = 256

JobFunction = Callable[["RunJob"], dict[str, Any]]


@dataclass(frozen=True)
class RunJob:
    """One run of a sweep: the point's spec (JSON text), its seed, and its store key."""

    key: str
    spec_text: str
    seed: int
    version: str = __version__
    """The cowsim version the key was computed with; a worker with another refuses."""


@dataclass(frozen=True)
class RunOutcome:
    """A finished job: its result, or why it has none."""

    key: str
    result: dict[str, Any] | None
    error: str | None
    attempts: int = 1


class ExecutorUnavailableError(RuntimeError):
    """The executor cannot start or its scheduler cannot be reached (CLI exit 3)."""


class Executor(Protocol):
    """Runs jobs and yields their outcomes as they complete."""

    workers: int
    """How many runs it can have going at once."""

    def submit(self, jobs: Sequence[RunJob]) -> Iterator[RunOutcome]:
        """Run ``jobs``; yield one outcome per job, in the order they finish."""
        ...

    @property
    def running(self) -> int:
        """Runs in flight now (an estimate where the executor cannot tell)."""
        ...

    def close(self) -> None:
        """Stop the workers (runs still going are abandoned) and release everything."""
        ...


def execute(job: RunJob) -> dict[str, Any]:
    """Run one job where it landed: ``{"result": …}`` or ``{"error": "one line"}``."""
    if job.version != __version__:
        return {"error": f"this worker runs cowsim {__version__}, the sweep needs {job.version}"}
    try:
        spec = parse_spec(job.spec_text, "point.json")
        return {"result": run(spec, seed=job.seed)}
    except InvalidInput as exc:
        return {"error": str(exc)}
    except MemoryError:
        return {"error": "the run ran out of memory"}


def _outcome(job: RunJob, reply: dict[str, Any], attempts: int) -> RunOutcome:
    result = reply.get("result")
    return RunOutcome(job.key, result, None if result is not None else str(reply.get("error")),
                      attempts)


# --- the local process pool ---------------------------------------------------------------

def _worker_loop(conn: Connection, function: JobFunction) -> None:
    """A worker process: answer jobs from the pipe until it closes (or says None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            reply = function(job)
        except Exception as exc:  # a bug in a run is the run's failure, not the worker's
            reply = {"error": f"internal error: {type(exc).__name__}: {str(exc)[:300]}"}
        conn.send(reply)


@dataclass
class _Slot:
    process: SpawnProcess
    conn: Connection
    job: RunJob | None = None


class LocalExecutor:
    """A pool of spawned worker processes on this machine (see the module docstring)."""

    def __init__(self, workers: int, *, attempts: int = MAX_ATTEMPTS,
                 function: JobFunction = execute) -> None:
        self.workers = workers
        self.attempts = attempts
        self.function = function
        self._ctx = multiprocessing.get_context("spawn")
        self._slots: list[_Slot] = []

    @property
    def running(self) -> int:
        return sum(slot.job is not None for slot in self._slots)

    @property
    def busy(self) -> dict[int, str]:
        """Worker process id → the key of the run it has now."""
        return {slot.process.pid: slot.job.key for slot in self._slots
                if slot.job is not None and slot.process.pid is not None}

    def _start(self) -> _Slot:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_loop, args=(child, self.function),
                                    name="cowsim-sweep-worker", daemon=True)
        process.start()
        child.close()
        return _Slot(process, parent)

    def _retire(self, slot: _Slot) -> None:
        slot.conn.close()
        slot.process.join(timeout=5)
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join(timeout=5)
        self._slots.remove(slot)

    def _give(self, slot: _Slot, queue: deque[RunJob], tries: dict[str, int]) -> None:
        """Send the next queued job to an idle worker (a worker found dead is retired and
        the job stays queued)."""
        job = queue.popleft()
        try:
            slot.conn.send(job)
        except OSError:
            queue.appendleft(job)
            self._retire(slot)
            return
        slot.job = job
        tries[job.key] = tries.get(job.key, 0) + 1

    def submit(self, jobs: Sequence[RunJob]) -> Iterator[RunOutcome]:
        queue = deque(jobs)
        tries: dict[str, int] = {}
        while queue or self.running:
            while queue and (len(self._slots) < self.workers
                             or any(slot.job is None for slot in self._slots)):
                slot = next((s for s in self._slots if s.job is None), None)
                if slot is None:
                    slot = self._start()
                    self._slots.append(slot)
                self._give(slot, queue, tries)
            busy = [slot for slot in self._slots if slot.job is not None]
            ready = wait([slot.conn for slot in busy] + [slot.process.sentinel for slot in busy])
            for slot in busy:
                if slot.conn not in ready and slot.process.sentinel not in ready:
                    continue
                job = slot.job
                assert job is not None
                slot.job = None
                try:
                    reply = slot.conn.recv() if slot.conn.poll() else None
                except (EOFError, OSError):
                    reply = None
                if reply is not None:
                    if queue:  # the next job first: the worker runs while the parent stores
                        self._give(slot, queue, tries)
                    yield _outcome(job, reply, tries[job.key])
                    continue
                code = slot.process.exitcode
                self._retire(slot)
                if tries[job.key] < self.attempts:
                    queue.appendleft(job)
                else:
                    yield RunOutcome(job.key, None, f"its worker died {tries[job.key]} times "
                                     f"(last exit code {code})", tries[job.key])

    def close(self) -> None:
        for slot in list(self._slots):
            if slot.job is not None:
                slot.process.kill()
            else:
                with contextlib.suppress(OSError):
                    slot.conn.send(None)
        for slot in list(self._slots):
            self._retire(slot)


# --- Dask distributed ---------------------------------------------------------------------

class DaskExecutor:
    """Runs on a Dask cluster: a LocalCluster started for the sweep (``address=None``) or an
    existing scheduler at ``address`` (``tcp://HOST:PORT``)."""

    def __init__(self, address: str | None, workers: int, *, attempts: int = MAX_ATTEMPTS,
                 processes: bool = True, function: JobFunction = execute,
                 timeout_seconds: float = 10.0) -> None:
        try:
            import dask  # optional (cowsim[dask]): pyproject's banned-module-level-imports
            import distributed
        except ImportError:
            raise InvalidInput("the dask executors need the optional extra: pip install "
                               "'cowsim[dask]'", source="--executor") from None
        self._distributed: Any = distributed  # partly typed: used through Any
        self.function = function
        self._futures: list[Any] = []
        self._cluster: Any = None
        try:
            if address is None:
                with dask.config.set({"distributed.scheduler.allowed-failures": attempts - 1}):
                    self._cluster = self._distributed.LocalCluster(
                        n_workers=workers, threads_per_worker=1, processes=processes,
                        dashboard_address=None, silence_logs=logging.ERROR)
                self._client: Any = self._distributed.Client(self._cluster)
            else:
                self._client = self._distributed.Client(address, timeout=timeout_seconds)
        except (OSError, TimeoutError) as exc:
            self.close()
            raise ExecutorUnavailableError(f"cannot reach the Dask scheduler {address}: {exc}") from None
        threads = sum(self._client.nthreads().values())
        self.workers = threads or workers

    @property
    def running(self) -> int:
        return min(self.workers, sum(not future.done() for future in self._futures))

    @property
    def client(self) -> Any:
        return self._client

    def submit(self, jobs: Sequence[RunJob]) -> Iterator[RunOutcome]:
        by_key = {}
        for job in jobs:
            future = self._client.submit(self.function, job, key=f"cowsim-run-{job.key}",
                                         pure=False, retries=0)
            by_key[future.key] = job
            self._futures.append(future)
        for future in self._distributed.as_completed(list(self._futures)):
            job = by_key[future.key]
            try:
                reply = future.result()
            except self._distributed.KilledWorker as exc:
                yield RunOutcome(job.key, None, f"its worker died: {exc}"[:300])
            except Exception as exc:  # cancelled, lost connection: this run failed
                yield RunOutcome(job.key, None, f"{type(exc).__name__}: {exc}"[:300])
            else:
                yield _outcome(job, reply, 1)
        self._futures.clear()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._futures:
                self._client.cancel(self._futures)
            self._futures.clear()
        for closable in (getattr(self, "_client", None), self._cluster):
            if closable is not None:
                with contextlib.suppress(Exception):
                    closable.close()


def check_executor(name: str, workers: int) -> None:
    """Check ``--executor`` and ``--workers`` (nothing is started): InvalidInput naming the
    option."""
    if not 1 <= workers <= MAX_WORKERS:
        raise InvalidInput(f"workers are 1 … {MAX_WORKERS}, not {workers}", source="--workers")
    if name in ("local", "dask-local"):
        return
    if name.startswith("dask://"):
        host, _, port = name[len("dask://"):].rpartition(":")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return
        raise InvalidInput(f"{name!r}: give dask://HOST:PORT", source="--executor")
    raise InvalidInput(f"{name!r}: the executors are local, dask-local and dask://HOST:PORT",
                       source="--executor")


def open_executor(name: str, workers: int, *, attempts: int = MAX_ATTEMPTS) -> Executor:
    """The executor ``--executor`` names: ``local``, ``dask-local`` or ``dask://HOST:PORT``
    (checked by :func:`check_executor` first)."""
    check_executor(name, workers)
    if name == "local":
        return LocalExecutor(workers, attempts=attempts)
    if name == "dask-local":
        return DaskExecutor(None, workers, attempts=attempts)
    return DaskExecutor(f"tcp://{name[len('dask://'):]}", workers, attempts=attempts)
