"""Helpers for the service tests: a real server on an ephemeral loopback port.

:class:`ServerThread` runs a :class:`~cowsim.service.CowsimServer` on its own
asyncio loop in a background thread of the test process (its workers are
spawned processes, stopped with the server); :func:`spec_text` makes tiny
workload specs (4 MiB, a fraction of a simulated second) that run in well under
a second.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cowsim.service import CowsimServer, Limits, NullObserver, RunLabels, ServerConfig


def spec_text(*, name: str = "tiny", duration: str = "0.2s", seed: int = 1,
              memory: str = "4MiB", rate: str = "1k/s") -> str:
    """A small forking-server spec (YAML)."""
    return f"""\
name: {name}
duration: {duration}
seed: {seed}
processes:
  - name: p
    memory: {memory}
    workloads:
      - kind: forking_server
        requests: {{rate: {rate}, write_fraction: 0.5, service: 8us}}
        fork: {{mode: periodic, first_at: 0.05s, every: 0.1s, snapshot: {{scan_rate: 1GiB/s}}}}
"""


class RecordingObserver(NullObserver):
    """Records what the server reports (called from the server's loop thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deltas: dict[str, float] = {}
        self.states: list[tuple[str | None, str]] = []
        self.finished: list[tuple[str, str, bool]] = []
        self.cache_hits = 0
        self.rpcs: list[tuple[str, str]] = []

    def run_progress(self, labels: RunLabels, deltas: Mapping[str, float]) -> None:
        with self.lock:
            for name, value in deltas.items():
                self.deltas[name] = self.deltas.get(name, 0) + value

    def run_state_changed(self, labels: RunLabels, old: str | None, new: str) -> None:
        with self.lock:
            self.states.append((old, new))

    def run_finished(self, labels: RunLabels, state: str, wall_seconds: float | None,
                     result: Mapping[str, Any] | None) -> None:
        with self.lock:
            self.finished.append((labels.workload, state, result is not None))

    def cache_hit(self, labels: RunLabels) -> None:
        with self.lock:
            self.cache_hits += 1

    def rpc_handled(self, method: str, code: str, seconds: float) -> None:
        with self.lock:
            self.rpcs.append((method, code))


def loopback_config(data_dir: Path, limits: Limits, **options: Any) -> ServerConfig:
    """A server on 127.0.0.1, an ephemeral port, storing in ``data_dir``."""
    return ServerConfig(host="127.0.0.1", port=0, data_dir=data_dir, limits=limits, **options)


class ServerThread:
    """A CowsimServer on a loop in a background thread (``with`` stops it on the way out)."""

    def __init__(self, config: ServerConfig, observer: NullObserver | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = CowsimServer(config, observer)
        self.port = self.call(self.server.start())

    def call(self, coroutine: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, drain_seconds: float = 0.0) -> None:
        self.call(self.server.stop(drain_seconds=drain_seconds))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()
