"""The service under stress and failure (``-m slow``): many clients, SIGKILL, SIGTERM.

* 50 clients submit small runs at once: every run completes and is stored exactly once.
* The server is killed with SIGKILL mid-run and started again on the same data dir: the
  finished result is still there, byte for byte; the interrupted run is re-queued and
  finishes (its second attempt); nothing is left QUEUED or RUNNING.
* SIGTERM: the server exits 0 and leaves the running run QUEUED for the next start.

Servers for the failure tests are ``cowsim serve`` subprocesses; every process a test
starts is ended by its pid before the test returns.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowsim.clients.service_client import Client
from cowsim.service import Limits, ServerConfig
from cowsim.v1 import cowsim_pb2 as pb
from tests.service_helpers import ServerThread, spec_text

pytestmark = pytest.mark.slow


def test_fifty_concurrent_clients_each_run_completes_once(tmp_path: Path) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=tmp_path,
                          limits=Limits(workers=2, max_queued_runs=100))
    server = ServerThread(config)
    finals: dict[int, pb.Run] = {}
    errors: list[BaseException] = []

    def one(seed: int) -> None:
        try:
            with Client(server.target) as client:
                run = client.submit(spec_text(duration="0.05s", seed=seed),
                                    request_id=f"client-{seed}")
                finals[seed] = client.wait(run.run_id, timeout_seconds=300)
        except BaseException as exc:  # reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=one, args=(seed,)) for seed in range(1000, 1050)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
    finally:
        server.stop()
    assert not errors
    assert len(finals) == 50
    assert all(run.state == pb.RUN_STATE_SUCCEEDED for run in finals.values())
    with sqlite3.connect(tmp_path / "runs.sqlite3") as db:
        rows = db.execute("SELECT seed, attempts, state FROM runs").fetchall()
    assert sorted(seed for seed, _, _ in rows) == list(range(1000, 1050))
    assert all(attempts == 1 and state == "SUCCEEDED" for _, attempts, state in rows)


class ServeProcess:
    """``cowsim serve`` in a subprocess on an ephemeral port."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cowsim.clients.cli", "serve", "--host", "127.0.0.1",
             "--port", "0", "--metrics-port", "0", "--data-dir", str(data_dir), "--workers", "1",
             *extra],
            stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        self.port = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            found = re.search(r"serving on [^,\s]*:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
            if not line and self.process.poll() is not None:
                break
        assert self.port, "the server did not start"
        self._drain = threading.Thread(target=self.process.stderr.read, daemon=True)
        self._drain.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def children(self) -> list[int]:
        """The pids of the server's child processes (its workers)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:
                pids.append(int(entry.name))
        return pids

    def end(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


def _wait_gone(pids: list[int], seconds: float = 30.0) -> None:
    """Wait for ``pids`` to exit (orphaned workers notice their parent died); kill the rest."""
    deadline = time.monotonic() + seconds
    for pid in pids:
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] \
                if Path(f"/proc/{pid}").exists() else "X"
            if state == "Z":
                break
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for server in started:
        children = server.children()
        server.end()
        _wait_gone(children)


def _wait_running(client: Client, run_id: str) -> None:
    for message in client.watch(run_id, timeout_seconds=300):
        if message.HasField("progress"):
            return


def test_sigkill_mid_run_loses_nothing_and_the_run_finishes_after_restart(
        tmp_path: Path, serve: list[ServeProcess]) -> None:
    serve.append(ServeProcess(tmp_path))
    with Client(serve[0].target) as client:
        done = client.wait(client.submit(spec_text(seed=1)).run_id, timeout_seconds=300)
        assert done.state == pb.RUN_STATE_SUCCEEDED
        interrupted = client.submit(spec_text(duration="10s", seed=2))
        _wait_running(client, interrupted.run_id)
    workers = serve[0].children()
    serve[0].process.send_signal(signal.SIGKILL)
    serve[0].process.wait(timeout=30)
    _wait_gone(workers)
    serve.append(ServeProcess(tmp_path))
    with Client(serve[1].target) as client:
        assert client.get(done.run_id).result.result_json == done.result.result_json
        final = client.wait(interrupted.run_id, timeout_seconds=300)
        assert final.state == pb.RUN_STATE_SUCCEEDED
        assert final.attempts == 2
        assert final.result.status == "completed"
    with sqlite3.connect(tmp_path / "runs.sqlite3") as db:
        rows = db.execute("SELECT state, result_json IS NOT NULL FROM runs").fetchall()
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sorted(rows) == [("SUCCEEDED", 1), ("SUCCEEDED", 1)]


def test_sigterm_exits_cleanly_and_requeues_the_running_run(
        tmp_path: Path, serve: list[ServeProcess]) -> None:
    serve.append(ServeProcess(tmp_path, "--drain-seconds", "0"))
    with Client(serve[0].target) as client:
        run = client.submit(spec_text(duration="10s", seed=3))
        _wait_running(client, run.run_id)
    workers = serve[0].children()
    serve[0].process.send_signal(signal.SIGTERM)
    assert serve[0].process.wait(timeout=60) == 0
    _wait_gone(workers)
    with sqlite3.connect(tmp_path / "runs.sqlite3") as db:
        assert db.execute("SELECT state FROM runs").fetchall() == [("QUEUED",)]
