"""Sweeps through the service, end to end: real gRPC on loopback, real worker processes.

The same sweep (2 kernels × 2 request rates of a 0.2 s spec) is run locally by ``cowsim
sweep`` and through the server; the server's runs.csv and summary.csv must be the local
files byte for byte, and ``cowsim sweep --server --out`` must write the local directory.
Then: a resubmission answered wholly from the result cache, the refusals (field paths,
limits, ids), and in the slow tier a restart mid-sweep and a Dask cluster behind
``serve --executor dask://``.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cowsim.clients import cli
from cowsim.clients.service_client import Client, ServiceCallError
from cowsim.service import Limits, ServerConfig
from cowsim.service.store import SCHEMA, RunStore
from cowsim.v1 import cowsim_pb2 as pb
from tests.service_helpers import RecordingObserver, ServerThread, loopback_config

BASE: dict[str, Any] = {
    "name": "tiny", "duration": "0.2s", "seed": 1,
    "processes": [{"name": "p", "memory": "4MiB", "workloads": [
        {"kind": "forking_server",
         "requests": {"rate": "1k/s", "write_fraction": 0.5, "service": "8us"},
         "fork": {"mode": "periodic", "first_at": "0.05s", "every": "0.1s",
                  "snapshot": {"scan_rate": "1GiB/s"}}}]}],
}
RATE = "processes[p].workloads[forking_server].requests.rate"
LIMITS = Limits(workers=2, max_queued_runs=8, max_sim_seconds=60.0, max_frames=300_000)


def sweep_text(name: str = "svc", kernels: tuple[str, ...] = ("5.10", "6.8"),
               rates: tuple[str, ...] = ("1k/s", "2k/s"), replications: int = 1,
               base: Any = None, duration: str = "0.2s") -> str:
    """A sweep spec as JSON text, its base inline."""
    return json.dumps({"name": name, "seed": 3, "replications": replications,
                       "base": base if base is not None else dict(BASE, duration=duration),
                       "axes": [{"path": "kernel", "values": list(kernels)},
                                {"path": RATE, "name": "rate", "values": list(rates)}]})


@pytest.fixture(scope="module")
def observer() -> RecordingObserver:
    return RecordingObserver()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, observer: RecordingObserver
           ) -> Iterator[ServerThread]:
    with ServerThread(loopback_config(tmp_path_factory.mktemp("data"), LIMITS), observer) as thread:
        yield thread


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.target) as c:
        yield c


def local_sweep(tmp_path: Path, text: str, name: str = "local") -> Path:
    """``cowsim sweep`` of the sweep on this machine; its directory."""
    path = tmp_path / f"{name}.json"
    path.write_text(text)
    out = tmp_path / name
    assert cli.main(["sweep", str(path), "--workers", "2", "--out", str(out)]) == 0
    return out


def started(observer: RecordingObserver) -> int:
    """Runs the server has started so far (QUEUED → RUNNING transitions)."""
    with observer.lock:
        return sum(1 for old, new in observer.states if (old, new) == ("QUEUED", "RUNNING"))


def test_a_sweep_through_the_server_gives_the_local_tables(
        client: Client, observer: RecordingObserver, server: ServerThread, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    text = sweep_text()
    submitted = client.submit_sweep(text, source_name="svc.json")
    sweep = submitted.sweep
    assert not submitted.replayed
    assert sweep.progress.total == 4
    assert sweep.points == 4
    assert sweep.replications == 1
    assert [(r.point, r.replication) for r in sweep.runs] == [(0, 0), (1, 0), (2, 0), (3, 0)]
    messages = list(client.watch_sweep(sweep.sweep_id, timeout_seconds=120))
    assert messages[-1].HasField("sweep")
    assert messages[-1].sweep.state == pb.RUN_STATE_SUCCEEDED
    progress = [m.progress for m in messages[:-1]]
    assert progress
    assert all(p.total == 4 for p in progress)
    assert progress[-1].done == 4
    assert progress[-1].queued == progress[-1].running == 0
    final = client.get_sweep(sweep.sweep_id)
    assert final.HasField("end_time")
    # every run is a stored run of the server, in ListRuns
    listed = {run.run_id for run in client.list_runs(name="tiny")}
    assert {run.run_id for run in final.runs} <= listed
    local = local_sweep(tmp_path, text)
    assert final.runs_csv.encode() == (local / "runs.csv").read_bytes()
    assert final.summary_csv.encode() == (local / "summary.csv").read_bytes()
    assert json.loads(final.failures_json) == {}
    assert {r.key for r in final.runs} == {p.stem for p in (local / "runs").glob("*.json")}
    # the basic view has no tables
    assert client.get_sweep(sweep.sweep_id, full=False).runs_csv == ""

    # the same sweep again, by the command line into a directory: the cache answers all
    before, hits = started(observer), observer.cache_hits
    path = tmp_path / "svc.json"
    path.write_text(text)
    out = tmp_path / "remote"
    capsys.readouterr()
    assert cli.main(["sweep", str(path), "--server", server.target, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("SUCCEEDED — 4 runs, 4 from the cache")
    assert started(observer) == before  # nothing simulated
    assert observer.cache_hits == hits + 4
    for name in ("runs.csv", "summary.csv"):
        assert (out / name).read_bytes() == (local / name).read_bytes()
    assert sorted(p.name for p in (out / "runs").iterdir()) == \
        sorted(p.name for p in (local / "runs").iterdir())
    for result in (local / "runs").iterdir():
        remote = json.loads((out / "runs" / result.name).read_text())
        assert dict(remote, wall_seconds=None) == dict(json.loads(result.read_text()),
                                                       wall_seconds=None)
    manifest, local_manifest = (json.loads((d / "sweep.json").read_text()) for d in (out, local))
    assert dict(manifest, source=None) == dict(local_manifest, source=None)
    assert (out / "runs.parquet").is_file()
    assert (out / "summary.parquet").is_file()


def test_the_request_id_replays_the_sweep(client: Client) -> None:
    text = sweep_text(name="replayed", rates=("3k/s",))
    first = client.submit_sweep(text, request_id="sweep-req-1").sweep
    again = client.submit_sweep(text, request_id="sweep-req-1")
    assert again.replayed
    assert again.sweep.sweep_id == first.sweep_id
    with pytest.raises(ServiceCallError) as error:
        client.submit_sweep(sweep_text(name="replayed", rates=("4k/s",)),
                            request_id="sweep-req-1")
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.field_violations[0][0] == "request_id"
    assert client.wait_sweep(first.sweep_id, timeout_seconds=120).state == \
        pb.RUN_STATE_SUCCEEDED
    assert first.sweep_id in {s.sweep_id for s in client.list_sweeps()}


@pytest.mark.parametrize(("text", "field"), [
    (sweep_text(rates=("1k/s", "lots")), "axes[1].values[1]"),
    (sweep_text(kernels=("5.10", "1.0")), "axes[0].values[1]"),
    (sweep_text(base="../workloads/redis.yaml"), "base"),
    (json.dumps({"name": "x", "base": BASE}), "axes"),
    (sweep_text(base=dict(BASE, duration="forever")), "base.duration"),
    ("name: [unclosed", "sweep"),
])
def test_an_invalid_sweep_is_refused_naming_the_field(client: Client, text: str,
                                                      field: str) -> None:
    before = len(list(client.list_sweeps()))
    with pytest.raises(ServiceCallError) as error:
        client.submit_sweep(text, source_name="bad.json")
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT, error.value.message
    assert error.value.field_violations[0][0] == field, error.value.field_violations
    assert "\n" not in error.value.message
    assert len(list(client.list_sweeps())) == before  # nothing stored


def test_too_many_runs_are_refused_before_anything_is_queued(client: Client) -> None:
    before_runs = len(list(client.list_runs()))
    nine = sweep_text(name="nine", kernels=("4.19", "5.10", "6.8"),
                      rates=("5k/s", "6k/s", "7k/s"))
    with pytest.raises(ServiceCallError) as error:
        client.submit_sweep(nine)
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.value.quota_violations[0][0] == "max_queued_runs"
    assert "sweep's 9 runs" in error.value.message
    huge = sweep_text(name="huge", rates=tuple(f"{k}k/s" for k in range(1, 12)),
                      replications=1000)
    with pytest.raises(ServiceCallError) as error:
        client.submit_sweep(huge)
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.value.quota_violations[0][0] == "max_sweep_runs"
    too_long = sweep_text(name="long", duration="2min")
    with pytest.raises(ServiceCallError) as error:
        client.submit_sweep(too_long)
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.value.quota_violations[0][0] == "max_sim_seconds"
    assert "point 0 (kernel='5.10', rate=1000.0)" in error.value.message
    assert len(list(client.list_runs())) == before_runs


def test_unknown_and_malformed_sweep_ids(client: Client) -> None:
    with pytest.raises(ServiceCallError) as error:
        client.get_sweep("0123456789abcdef")
    assert error.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ServiceCallError) as error:
        list(client.watch_sweep("not an id"))
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.field_violations[0][0] == "sweep_id"


def test_cancel_sweep_cancels_its_runs(client: Client) -> None:
    sweep = client.submit_sweep(sweep_text(name="cancelled", rates=("8k/s", "9k/s"),
                                           duration="20s")).sweep
    cancelled = client.cancel_sweep(sweep.sweep_id)
    assert cancelled.state == pb.RUN_STATE_CANCELLED
    final = client.get_sweep(sweep.sweep_id)
    assert all(r.state == pb.RUN_STATE_CANCELLED for r in final.runs)
    assert final.progress.failed == 4
    rows = final.runs_csv.splitlines()[1:]
    assert len(rows) == 4
    assert all(",failed," in row for row in rows)


def test_the_command_line_exit_codes(tmp_path: Path, server: ServerThread,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(sweep_text(rates=("1k/s", "lots")))
    capsys.readouterr()
    assert cli.main(["sweep", str(bad), "--server", server.target]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "axes[1].values[1]" in err[0]
    good = tmp_path / "good.json"
    good.write_text(sweep_text())
    assert cli.main(["sweep", str(good), "--server", f"127.0.0.1:{closed_port()}"]) == 3
    assert cli.main(["sweep", str(good), "--server", server.target, "--workers", "2"]) == 2


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_path_base_is_inlined_by_the_command_line(tmp_path: Path, server: ServerThread,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "base.json").write_text(json.dumps(BASE))
    path = tmp_path / "pathbase.json"
    path.write_text(sweep_text(name="pathbase", rates=("1k/s",), base="base.json"))
    capsys.readouterr()
    assert cli.main(["sweep", str(path), "--server", server.target, "--wait"]) == 0
    assert "SUCCEEDED" in capsys.readouterr().out.splitlines()[-1]


def test_old_data_dirs_get_the_sweep_tables_in_place(tmp_path: Path) -> None:
    """A data dir of the release before sweeps (runs only, no pace column) opens, and the
    sweep tables are there."""
    old = SCHEMA.split("CREATE TABLE IF NOT EXISTS sweeps")[0].replace(",\n    pace REAL", "")
    assert "pace" not in old
    with sqlite3.connect(tmp_path / "runs.sqlite3") as db:
        db.executescript(old)
    store = RunStore(tmp_path)
    try:
        assert store.list_sweeps() == []
        assert store.sweep_counts("0") == dict.fromkeys(
            ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "cached"), 0)
    finally:
        store.close()


@pytest.mark.slow
def test_a_sweep_survives_a_server_restart(tmp_path: Path) -> None:
    """One worker, 6 runs of 1 s simulated; the server stops (drain 0) after the first run
    ends; a new server on the same data dir finishes the sweep, to the local tables."""
    text = sweep_text(name="restart", rates=("1k/s", "2k/s", "3k/s"), duration="1s")
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data",
                          limits=Limits(workers=1))
    first = ServerThread(config)
    with Client(first.target) as c:
        sweep_id = c.submit_sweep(text).sweep.sweep_id
        for message in c.watch_sweep(sweep_id, timeout_seconds=120):
            if message.HasField("progress") and message.progress.done >= 1:
                break
    first.stop(drain_seconds=0)
    store = RunStore(config.data_dir)
    try:
        left = store.sweep_counts(sweep_id)
    finally:
        store.close()
    assert left["SUCCEEDED"] < 6  # the second server has runs to do
    assert left["QUEUED"] > 0
    second = ServerThread(config)
    try:
        with Client(second.target) as c:
            final = c.wait_sweep(sweep_id, timeout_seconds=300)
            assert final.state == pb.RUN_STATE_SUCCEEDED
            attempts = [c.get(r.run_id, full=False).attempts for r in final.runs]
            assert len({r.run_id for r in final.runs}) == 6  # nothing submitted twice
            assert max(attempts) >= 1
    finally:
        second.stop()
    local = local_sweep(tmp_path, text)
    assert final.runs_csv.encode() == (local / "runs.csv").read_bytes()
    assert final.summary_csv.encode() == (local / "summary.csv").read_bytes()


def test_serve_on_a_dask_cluster_gives_the_local_tables(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                       protocol="tcp", dashboard_address=None)
    try:
        address = cluster.scheduler_address.removeprefix("tcp://")
        observer = RecordingObserver()
        config = ServerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data",
                              limits=LIMITS, executor=f"dask://{address}")
        thread = ServerThread(config, observer)
        try:
            assert thread.server.cluster is not None
            with Client(thread.target) as c:
                text = sweep_text(name="dask")
                final = c.wait_sweep(c.submit_sweep(text).sweep.sweep_id, timeout_seconds=300)
                assert final.state == pb.RUN_STATE_SUCCEEDED
                # the runs' metrics arrive (as one progress message per run)
                result = json.loads(c.get(final.runs[0].run_id).result.result_json)
                assert observer.deltas.get("cow_copies", 0) >= \
                    result["metrics"]["cow_copies_total"] > 0
                # a cancelled run stops on its Dask worker (paced at real time, so that it is
                # still running after a second however fast the machine)
                run = c.submit(json.dumps(dict(BASE, duration="30s")), source_name="long.json",
                               pace=1.0)
                time.sleep(1.0)
                assert c.cancel(run.run_id).state == pb.RUN_STATE_CANCELLED
        finally:
            thread.stop()
    finally:
        cluster.close()
    local = local_sweep(tmp_path, text)
    assert final.runs_csv.encode() == (local / "runs.csv").read_bytes()
    assert final.summary_csv.encode() == (local / "summary.csv").read_bytes()


@pytest.mark.slow
def test_serve_with_an_unreachable_scheduler_exits_2_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    status = cli.main(["serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "off",
                       "--data-dir", str(tmp_path / "d"), "--executor",
                       f"dask://127.0.0.1:{closed_port()}"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Dask scheduler" in err[0]
