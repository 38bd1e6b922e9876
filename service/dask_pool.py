"""The worker pool on a Dask cluster: ``cowsim serve --executor dask://HOST:PORT``.

The run manager (:mod:`cowsim.service.runs`) drives *slots*, one job at a time
each.  By default a slot is a local worker process (:mod:`cowsim.service.pool`);
here it is a :class:`DaskSlot`, which sends the job to a Dask scheduler as one
task and waits for it in a thread, so the server's event loop never blocks::

    cluster = DaskCluster("dask://10.0.0.7:8786")     # ExecutorUnavailableError if unreachable
    slots = cluster.slots()                          # one per worker thread of the cluster
    manager = RunManager(store, limits, observer, slots=slots)

On the Dask worker the task is :func:`dask_task`: the same job function a local
worker runs (:func:`cowsim.service.worker.run_job`), so a run's states, result,
cache entry and metrics are what they are locally.  What differs:

* **Progress is coarse**: the worker cannot stream to the server, so the run's
  progress (every counter delta and histogram observation) arrives as one
  message when it ends.  Watchers see the run RUNNING, then final; the
  Prometheus counters and histograms get the whole run's deltas at its end.
* **Cancellation** goes through a ``distributed.Event`` named after the run,
  which the task reads at most every :data:`CANCEL_POLL_SECONDS`; a run that
  has not stopped after the grace is abandoned (its future cancelled; the task
  may finish on its worker, unheard).
* **Memory**: no RLIMIT_AS of the server's ``--worker-memory`` (the task runs in
  the Dask worker's own process, under Dask's memory management); the budget
  checked at submission still applies.  A Dask worker that dies fails the run
  once the scheduler gives up on the task (its ``allowed-failures``).
* **Slots**: as many as the cluster has worker threads when the server starts
  (``--workers`` when it has none yet); workers added later are not used.

Dask is the optional extra (``cowsim[dask]``), imported only when asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from cowsim.service.executors import DaskExecutor, check_executor
from cowsim.service.pool import DIED
from cowsim.service.worker import run_job

__all__ = ["CANCEL_POLL_SECONDS", "DaskCluster", "DaskSlot", "dask_task"]

CANCEL_POLL_SECONDS = 0.25
"""How often a task on a Dask worker asks whether its run was cancelled."""


def dask_task(job: dict[str, Any], cancel_event: str) -> dict[str, Any]:
    """A run on a Dask worker: :func:`~cowsim.service.worker.run_job`, cancelled when the
    ``distributed.Event`` named ``cancel_event`` is set."""
    import distributed  # optional (cowsim[dask]): runs on the Dask worker

    dask: Any = distributed  # partly typed: used through Any
    event = dask.Event(cancel_event)
    asked_at, answer = 0.0, False

    def cancelled() -> bool:
        nonlocal asked_at, answer
        now = time.monotonic()
        if now - asked_at >= CANCEL_POLL_SECONDS:
            asked_at = now
            try:
                answer = bool(event.is_set())
            except Exception:  # the scheduler is gone: nobody is waiting for this run
                answer = True
        return answer

    return run_job(job, cancelled)


class DaskCluster:
    """One connection to a Dask scheduler, shared by the slots (``--executor
    dask://HOST:PORT``; :class:`~cowsim.service.executors.ExecutorUnavailableError` when the
    scheduler cannot be reached within ``timeout_seconds``)."""

    def __init__(self, executor: str, fallback_workers: int, *,
                 timeout_seconds: float = 10.0) -> None:
        check_executor(executor, 1)
        if not executor.startswith("dask://"):
            raise ValueError(f"not a Dask executor: {executor!r}")
        self.address = f"tcp://{executor[len('dask://'):]}"
        self._executor = DaskExecutor(self.address, fallback_workers,
                                      timeout_seconds=timeout_seconds)
        self.client: Any = self._executor.client
        self.threads = self._executor.workers

    def slots(self) -> list[DaskSlot]:
        return [DaskSlot(self, number) for number in range(max(1, self.threads))]

    def close(self) -> None:
        self._executor.close()


class DaskSlot:
    """One run at a time on the cluster (the :class:`~cowsim.service.runs.Slot` interface)."""

    process = None
    """No local worker process: the run is on the cluster."""
    pid = None

    def __init__(self, cluster: DaskCluster, number: int) -> None:
        self.cluster = cluster
        self.number = number
        self.busy = False
        self.killed = False
        self._future: Any = None
        self._event: str | None = None
        self._jobs = 0
        self._kill_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Nothing to start: the cluster's workers are its own."""

    def _wait(self, job: dict[str, Any], key: str, event: str) -> dict[str, Any]:
        """Submit and wait (in a thread: the client's calls block)."""
        import distributed  # optional (cowsim[dask])

        dask: Any = distributed  # partly typed: used through Any
        client = self.cluster.client
        try:
            self._future = client.submit(dask_task, job, event, key=key, pure=False, retries=0)
            reply: dict[str, Any] = self._future.result()
            return reply
        except dask.KilledWorker as exc:
            return {"type": "error", "error": {"class": "internal", "message": (
                f"its Dask worker died ({exc})")[:300]}}
        except (asyncio.CancelledError, dask.client.FutureCancelledError):
            return {"type": DIED, "exitcode": None}
        except Exception as exc:  # the scheduler went away, a task that could not run …
            if self.killed:
                return {"type": DIED, "exitcode": None}
            return {"type": "error", "error": {"class": "internal", "message": (
                f"the Dask cluster failed the run: {type(exc).__name__}: {exc}")[:300]}}
        finally:
            with contextlib.suppress(Exception):
                dask.Event(event, client=client).clear()

    async def execute(self, job: dict[str, Any], on_progress: Callable[[dict[str, Any]], None]
                      ) -> dict[str, Any]:
        """Run ``job`` on the cluster; its reply (after its one progress message)."""
        self._jobs += 1
        key = f"cowsim-serve-{self.number}-{self._jobs}-{time.time_ns()}"
        self._event = f"{key}-cancel"
        self.busy, self.killed = True, False
        try:
            reply = await asyncio.to_thread(self._wait, job, key, self._event)
        finally:
            self.busy, self._future = False, None
            if self._kill_timer is not None:
                self._kill_timer.cancel()
                self._kill_timer = None
        progress = reply.pop("progress", None)
        if progress is not None:
            on_progress(progress)
        return reply

    def _in_thread(self, call: Callable[[], Any]) -> None:
        """Run a blocking client call off the event loop, fire and forget."""
        def quietly() -> None:
            with contextlib.suppress(Exception):
                call()
        asyncio.get_running_loop().run_in_executor(None, quietly)

    def cancel(self, grace_seconds: float) -> None:
        """Ask the task to stop (its Event); abandon it if it has not after the grace."""
        if not self.busy or self._event is None:
            return
        import distributed  # optional (cowsim[dask])

        dask: Any = distributed  # partly typed: used through Any
        event, client = self._event, self.cluster.client
        self._in_thread(lambda: dask.Event(event, client=client).set())
        if self._kill_timer is None:
            self._kill_timer = asyncio.get_running_loop().call_later(grace_seconds, self.kill)

    def kill(self) -> None:
        """Abandon the task now (its run ends as if its worker had been killed)."""
        self._kill_timer = None
        future = self._future
        if self.busy and future is not None:
            self.killed = True
            self._in_thread(future.cancel)

    def stop(self) -> None:
        if self.busy:
            self.kill()
