"""The worker pool, parent side: one slot per worker process, driven from asyncio.

A :class:`WorkerSlot` owns one worker process (:mod:`cowsim.service.worker`),
the parent's end of its pipe and its cancel event.  :meth:`WorkerSlot.execute`
sends a job and awaits the reply without blocking the event loop: the pipe's
file descriptor is watched with ``loop.add_reader``, progress messages go to a
callback as they arrive, and the reply (or the worker's death, seen as the end
of the pipe) completes the call.  A dead worker is replaced on the next job, so
a run that kills its worker fails alone.

Stopping a run: :meth:`WorkerSlot.cancel` sets the cancel event (the run
stops at its next slice and replies with a "cancelled" result); if it has not
replied after ``grace_seconds`` the process is killed.  :meth:`WorkerSlot.kill`
kills at once (a deadline that passed, a server shutting down).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.synchronize import Event
from typing import Any

from cowsim.service.worker import worker_main

__all__ = ["DIED", "WorkerSlot", "spawn_context"]

DIED = "died"
"""The reply type :meth:`WorkerSlot.execute` returns when the worker died mid-job."""


def spawn_context() -> SpawnContext:
    return multiprocessing.get_context("spawn")


class WorkerSlot:
    """One worker process and the job it runs."""

    def __init__(self, ctx: SpawnContext, allowance_bytes: int) -> None:
        self.ctx = ctx
        self.allowance_bytes = allowance_bytes
        self.process: SpawnProcess | None = None
        self.conn: Connection | None = None
        self.cancel_event: Event = ctx.Event()
        self.busy = False
        self.killed = False
        """True when the current job's worker was killed on purpose (cancel, deadline)."""
        self._kill_timer: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        """Start the worker process if it is not running."""
        if self.process is not None and self.process.is_alive() and self.conn is not None:
            return
        self._reap()
        parent, child = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(target=worker_main, name="cowsim-worker",
                                   args=(child, self.cancel_event, self.allowance_bytes),
                                   daemon=True)
        process.start()
        child.close()
        self.process, self.conn = process, parent

    def _reap(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.process is not None:
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout=5)
            self.process = None

    async def execute(self, job: dict[str, Any], on_progress: Callable[[dict[str, Any]], None]
                      ) -> dict[str, Any]:
        """Run ``job`` in the worker; its reply, or ``{"type": DIED, "exitcode": n}``."""
        self.start()
        assert self.conn is not None
        assert self.process is not None
        conn, process = self.conn, self.process
        self.cancel_event.clear()
        self.busy, self.killed = True, False
        loop = asyncio.get_running_loop()
        done: asyncio.Future[dict[str, Any]] = loop.create_future()

        def readable() -> None:
            try:
                while not done.done() and conn.poll():
                    message = conn.recv()
                    if message.get("type") == "progress":
                        on_progress(message)
                    else:
                        done.set_result(message)
            except (EOFError, OSError):
                if not done.done():
                    done.set_result({"type": DIED})

        try:
            try:
                conn.send(job)
            except (BrokenPipeError, OSError):
                done.set_result({"type": DIED})
            loop.add_reader(conn.fileno(), readable)
            try:
                reply = await done
            finally:
                loop.remove_reader(conn.fileno())
        finally:
            self.busy = False
            if self._kill_timer is not None:
                self._kill_timer.cancel()
                self._kill_timer = None
        if reply["type"] == DIED:
            process.join(timeout=5)
            reply["exitcode"] = process.exitcode
            self._reap()
        return reply

    def cancel(self, grace_seconds: float) -> None:
        """Ask the running job to stop; kill the worker if it has not after the grace."""
        self.cancel_event.set()
        if self._kill_timer is None and self.busy:
            loop = asyncio.get_running_loop()
            self._kill_timer = loop.call_later(grace_seconds, self.kill)

    def kill(self) -> None:
        """Kill the worker now (its job ends as DIED, with ``killed`` set)."""
        self._kill_timer = None
        if self.process is not None and self.process.is_alive():
            self.killed = True
            self.process.kill()

    def stop(self) -> None:
        """End the worker process (politely if idle, else killed) and wait for it."""
        if self.conn is not None and not self.busy:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.conn.send(None)
        elif self.busy:
            self.kill()
        self._reap()
