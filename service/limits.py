"""Limits: what one server accepts, so that no client can take it down.

A run is refused before it is queued, with RESOURCE_EXHAUSTED and a
``QuotaFailure`` naming the limit, when it would exceed one of

=====================  ======================================================
``max_sim_seconds``    the spec's simulated duration
``max_frames``         the page frames the library's estimate says the run needs
``worker_memory_bytes``  the model memory (the library's budget, against the
                       memory a worker may use: its RLIMIT_AS allowance)
``max_queued_runs``    jobs waiting for a worker (the bounded queue); at most
                       ``workers`` run at once
``max_message_bytes``  a request's size (gRPC answers RESOURCE_EXHAUSTED itself)
=====================  ======================================================

The library's own budget (``COWSIM_MAX_*`` environment variables, half the
physical memory) applies as well: :func:`budget` starts from it.  A worker
runs under ``setrlimit(RLIMIT_AS)`` of its own footprint plus
``worker_memory_bytes``, so a run the estimate misjudged fails alone with
"out of memory" and the server carries on (:mod:`cowsim.service.worker`).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from cowsim.service.errors import ServiceError
from cowsim.sim import Budget, RunPlan, format_bytes, format_seconds

__all__ = ["Limits", "budget", "check_plan", "check_queue"]


@dataclass(frozen=True)
class Limits:
    """A server's limits (see the module docstring); the defaults suit a small machine."""

    workers: int = 2
    """Runs simulated at once (one worker process each)."""
    max_queued_runs: int = 256
    max_sim_seconds: float = 7 * 86400.0
    max_frames: int = 1 << 26
    """64 Mi frames: 256 GiB of simulated memory."""
    worker_memory_bytes: int = 4 << 30
    max_message_bytes: int = (4 << 20) + (64 << 10)
    """A 4 MiB spec (the library's largest document) and the rest of the request."""

    def __post_init__(self) -> None:
        for name in ("workers", "max_queued_runs", "max_frames", "worker_memory_bytes",
                     "max_message_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not self.max_sim_seconds > 0:
            raise ValueError("max_sim_seconds must be positive")


def _exhausted(limit: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message,
                        quota_violations=[(limit, message)], reason="LIMIT_EXCEEDED",
                        metadata={"limit": limit})


def budget(limits: Limits) -> Budget:
    """The library budget a run is planned against: the environment's, with the model
    memory bounded by what a worker may use, and no profile files (a spec from the network
    must not make the server read its disk)."""
    return Budget.from_env().tightened(Budget(max_memory_bytes=limits.worker_memory_bytes,
                                              profile_files=False))


def check_plan(plan: RunPlan, limits: Limits) -> None:
    """Refuse a planned run longer or bigger than this server allows."""
    duration = plan.spec.duration
    if duration > limits.max_sim_seconds:
        raise _exhausted("max_sim_seconds",
                         f"duration {format_seconds(duration)} exceeds this server's limit of "
                         f"{format_seconds(limits.max_sim_seconds)} simulated (max_sim_seconds)")
    frames = plan.estimate.frames
    if frames > limits.max_frames:
        raise _exhausted("max_frames",
                         f"the run needs about {frames:,} page frames "
                         f"({format_bytes(frames * 4096)} simulated); this server allows "
                         f"{limits.max_frames:,} (max_frames)")


def check_queue(depth: int, running: int, limits: Limits, *, adding: int = 1,
                what: str = "run") -> None:
    """Refuse ``adding`` jobs (one run, or a sweep's runs: ``what``) that do not fit the
    queue together."""
    if depth + adding <= limits.max_queued_runs:
        return
    if adding == 1:
        raise _exhausted("max_queued_runs",
                         f"the queue is full: {depth} runs wait behind {running} running "
                         f"(max_queued_runs {limits.max_queued_runs}, workers {limits.workers})")
    raise _exhausted("max_queued_runs",
                     f"the {what}'s {adding} runs to queue do not fit: {depth} runs wait behind "
                     f"{running} running (max_queued_runs {limits.max_queued_runs}, workers "
                     f"{limits.workers})")
