"""The gRPC service end to end: a real server on a loopback port, real gRPC clients.

One server is shared by the module (two workers, tight limits so that every limit can be
hit with tiny specs); the auth/TLS server has its own fixture.  Specs are 4 MiB and a
fraction of a simulated second, so each run takes well under a second.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cowsim.clients import cli
from cowsim.clients.service_client import Client, ServiceCallError
from cowsim.service import Limits, ServerConfig
from cowsim.service.store import SCHEMA, RunStore
from cowsim.sim import json_schema
from cowsim.v1 import cowsim_pb2 as pb
from tests.service_helpers import RecordingObserver, ServerThread, loopback_config, spec_text

ROOT = Path(__file__).resolve().parent.parent
LIMITS = Limits(workers=2, max_queued_runs=4, max_sim_seconds=60.0, max_frames=300_000,
                max_message_bytes=256 << 10)


@pytest.fixture(scope="module")
def observer() -> RecordingObserver:
    return RecordingObserver()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, observer: RecordingObserver
           ) -> Iterator[ServerThread]:
    config = loopback_config(tmp_path_factory.mktemp("data"), LIMITS, cancel_grace_seconds=3.0)
    with ServerThread(config, observer) as thread:
        yield thread


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.target) as c:
        yield c


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    capsys.readouterr()
    assert cli.main(list(argv)) in (0, 1)
    return json.loads(capsys.readouterr().out)


def test_submit_watch_result_equals_cowsim_run(client: Client, observer: RecordingObserver,
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    text = spec_text(seed=11)
    submitted = client.submit_run(text, source_name="tiny.yaml")
    assert not submitted.cached
    assert submitted.run.state in (pb.RUN_STATE_QUEUED,
                                                            pb.RUN_STATE_RUNNING)
    messages = list(client.watch(submitted.run.run_id, timeout_seconds=120))
    final = messages[-1].run
    assert final.state == pb.RUN_STATE_SUCCEEDED, final.error_message
    progress = [m.progress for m in messages[:-1]]
    assert all(m.HasField("progress") for m in messages[:-1])
    assert all(p.sim_seconds_total == pytest.approx(0.2) for p in progress)
    result = json.loads(final.result.result_json)
    # the typed fields are the JSON's
    assert final.result.cow_copies_total == result["metrics"]["cow_copies_total"]
    assert final.result.page_faults_total == result["metrics"]["page_faults_total"]
    assert final.result.status == "completed"
    assert dict(final.result.cow_copies_by_cause) == result["metrics"]["cow_copies_by_cause"]
    # identical to `cowsim run SPEC --json`, wall_seconds aside
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    local = _cli_json(capsys, "run", str(path), "--json", "--seed", "11")
    assert isinstance(local, dict)
    assert dict(result, wall_seconds=None) == dict(local, wall_seconds=None)
    fetched = client.get(final.run_id)
    assert fetched.result.result_json == final.result.result_json
    assert client.get(final.run_id, full=False).HasField("result") is False
    assert observer.deltas.get("cow_copies", 0) >= result["metrics"]["cow_copies_total"]


def test_identical_resubmission_is_answered_from_the_cache(client: Client,
                                                           observer: RecordingObserver) -> None:
    text = spec_text(seed=12)
    first = client.wait(client.submit(text).run_id, timeout_seconds=120)
    assert first.state == pb.RUN_STATE_SUCCEEDED
    hits = observer.cache_hits
    # the same spec written differently is the same run
    again = client.submit_run(text.replace("memory: 4MiB", "memory: 4194304"))
    assert again.cached
    assert again.run.run_id == first.run_id
    assert again.run.result.result_json == first.result.result_json
    assert observer.cache_hits == hits + 1


def test_a_paced_run_is_run_again_at_its_pace_with_the_same_result(client: Client) -> None:
    """A paced submission is for watching: the cache knows the run, yet it runs, held to
    its pace (0.2 s simulated at 0.5× takes at least 0.4 s), and gives the same result."""
    text = spec_text(seed=14)
    first = client.wait(client.submit(text).run_id, timeout_seconds=120)
    assert first.state == pb.RUN_STATE_SUCCEEDED
    paced = client.submit_run(text, pace=0.5)
    assert not paced.cached
    assert paced.run.pace == 0.5
    watched = list(client.watch(paced.run.run_id, timeout_seconds=120))
    final = watched[-1].run
    assert final.state == pb.RUN_STATE_SUCCEEDED, final.error_message
    assert final.pace == 0.5
    assert final.result.wall_seconds >= 0.4
    assert len(watched) > 2  # progress arrived while it ran
    assert (json.loads(final.result.result_json) | {"wall_seconds": None}
            == json.loads(first.result.result_json) | {"wall_seconds": None})
    assert client.get(first.run_id, full=False).pace == 0.0


def test_a_retried_submission_with_the_same_request_id_runs_once(client: Client) -> None:
    text = spec_text(seed=13)
    answers: list[pb.SubmitRunResponse] = []

    def submit() -> None:
        answers.append(client.submit_run(text, request_id="retry-13"))

    threads = [threading.Thread(target=submit) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({answer.run.run_id for answer in answers}) == 1
    assert sum(not answer.replayed for answer in answers) == 1
    run_id = answers[0].run.run_id
    assert client.wait(run_id, timeout_seconds=120).attempts == 1
    mine = [run for run in client.list_runs() if run.request_id == "retry-13"]
    assert [run.run_id for run in mine] == [run_id]
    with pytest.raises(ServiceCallError) as error:
        client.submit(spec_text(seed=14), request_id="retry-13")
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.field_violations[0][0] == "request_id"


@pytest.mark.parametrize(("text", "options", "field"), [
    (spec_text(memory="lots"), {}, "processes[0].memory"),
    (spec_text().replace("rate: 1k/s", "rate: -5/s"), {},
     "processes[0].workloads[0].requests.rate"),
    (spec_text(), {"kernel": "9.99"}, "kernel"),
    (spec_text(), {"seed": -1}, "seed"),
    ("{not yaml: [", {}, "spec"),
    (spec_text(), {"request_id": "bad id!"}, "request_id"),
    (spec_text().replace("processes:", "machine: {profile: /etc/cowsim-host.yaml}\nprocesses:"),
     {}, "machine.profile"),  # a server reads no file a spec names
    (spec_text(), {"pace": 0.0}, "pace"),
    (spec_text(), {"pace": float("nan")}, "pace"),
])
def test_invalid_input_names_the_field(client: Client, text: str, options: dict[str, object],
                                       field: str) -> None:
    with pytest.raises(ServiceCallError) as error:
        client.submit(text, source_name="bad.yaml", **options)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.field_violations[0][0] == field
    assert "\n" not in error.value.message
    assert "Traceback" not in error.value.message


@pytest.mark.parametrize(("text", "limit"), [
    (spec_text(duration="10min"), "max_sim_seconds"),
    (spec_text(memory="4GiB"), "max_frames"),
])
def test_runs_over_a_limit_are_refused(client: Client, text: str, limit: str) -> None:
    with pytest.raises(ServiceCallError) as error:
        client.submit(text)
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.value.quota_violations[0][0] == limit


def test_a_message_over_the_size_limit_is_refused(client: Client) -> None:
    text = spec_text() + "#" * (300 << 10) + "\n"
    with pytest.raises(ServiceCallError) as error:
        client.submit(text)
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_budget_exceeded_is_resource_exhausted(client: Client, monkeypatch: pytest.MonkeyPatch,
                                               server: ServerThread) -> None:
    manager = server.server.manager
    assert manager is not None
    monkeypatch.setattr(manager, "budget", manager.budget.tightened(
        type(manager.budget)(max_events=10)))
    with pytest.raises(ServiceCallError) as error:
        client.submit(spec_text(seed=15))
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.value.quota_violations[0][0] == "budget"


def test_a_full_queue_is_refused_and_cancellation_stops_runs(client: Client) -> None:
    long = [spec_text(duration="50s", seed=100 + i) for i in range(LIMITS.workers + 8)]
    runs: list[pb.Run] = []

    def submit_all() -> None:
        for text in long:
            runs.append(client.submit(text))

    with pytest.raises(ServiceCallError) as error:
        submit_all()
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.value.quota_violations[0][0] == "max_queued_runs"
    first = runs[0]
    for message in client.watch(first.run_id, timeout_seconds=120):
        if message.HasField("progress"):
            break  # it is running
    cancelled = [client.cancel(run.run_id) for run in runs]
    finals = [client.wait(run.run_id, timeout_seconds=120) for run in cancelled]
    assert all(run.state == pb.RUN_STATE_CANCELLED for run in finals)
    stopped = client.get(first.run_id)
    if stopped.HasField("result"):  # cancelled while running: its partial result
        assert stopped.result.status == "cancelled"
        assert stopped.result.sim_seconds < 50.0
    assert client.cancel(first.run_id).state == pb.RUN_STATE_CANCELLED  # idempotent


def test_list_runs_pages_newest_first_and_filters(client: Client) -> None:
    for seed in (21, 22, 23):
        client.wait(client.submit(spec_text(name="listed", seed=seed)).run_id, 120)
    pages: list[pb.Run] = []
    token = ""
    while True:
        page = client.list_page(page_size=1, page_token=token, name="listed")
        pages.extend(page.runs)
        token = page.next_page_token
        if not token:
            break
    assert [run.seed for run in pages] == [23, 22, 21]
    succeeded = list(client.list_runs(state=pb.RUN_STATE_SUCCEEDED, kernel="6.8"))
    assert {run.seed for run in pages} <= {run.seed for run in succeeded}
    assert all(run.kernel == "6.8" for run in succeeded)
    with pytest.raises(ServiceCallError) as error:
        client.list_page(page_token="garbage")
    assert error.value.field_violations[0][0] == "page_token"
    with pytest.raises(ServiceCallError) as error:
        client.list_page(page_token=page.next_page_token or _token(client), name="other")
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT


def _token(client: Client) -> str:
    return client.list_page(page_size=1, name="listed").next_page_token


def test_unknown_and_malformed_run_ids(client: Client) -> None:
    with pytest.raises(ServiceCallError) as error:
        client.get("0123456789abcdef")
    assert error.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ServiceCallError) as error:
        client.get("../etc/passwd")
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ServiceCallError) as error:
        list(client.watch("nothex"))
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_list_kernels_and_get_schema(client: Client) -> None:
    kernels = client.list_kernels()
    assert any(kernel.name == "6.8" for kernel in kernels)
    assert all(kernel.rules for kernel in kernels)
    assert json.loads(client.get_schema()) == json_schema()
    assert "steps" in json.loads(client.get_schema(pb.SCHEMA_KIND_SCENARIO))["properties"]


def test_run_scenario_equals_cowsim_scenario_run(client: Client,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "examples" / "scenarios" / "4.1-vmsplice-child-unmap.yaml"
    response = client.run_scenario(path.read_text(), file_name=str(path), kernel="all")
    local = _cli_json(capsys, "scenario", "run", str(path), "--kernel", "all", "--json")
    assert json.loads(response.result_json) == local
    assert len(response.results) > 1
    with pytest.raises(ServiceCallError) as error:
        client.run_scenario("name: x\nsteps:\n  - {op: teleport}\n", file_name="s.yaml")
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.field_violations[0][0] == "steps[0].op"


def test_health_and_reflection(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)  # the stubs lack the methods
        for service in ("", "cowsim.v1.CowsimService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answers = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        names = {service.name for service in answers[0].list_services_response.service}
    assert {"cowsim.v1.CowsimService", "grpc.health.v1.Health"} <= names


def test_a_worker_that_dies_fails_its_run_alone(client: Client, server: ServerThread) -> None:
    run = client.submit(spec_text(duration="50s", seed=31))
    for message in client.watch(run.run_id, timeout_seconds=120):
        if message.HasField("progress"):
            break
    manager = server.server.manager
    assert manager is not None
    slot = manager.running[run.run_id]
    assert slot.process is not None
    slot.process.kill()  # as the OOM killer would
    final = client.wait(run.run_id, timeout_seconds=120)
    assert final.state == pb.RUN_STATE_FAILED
    assert "worker process died" in final.error_message
    after = client.wait(client.submit(spec_text(seed=32)).run_id, timeout_seconds=120)
    assert after.state == pb.RUN_STATE_SUCCEEDED


def test_the_worker_memory_limit_makes_allocation_fail() -> None:
    code = ("from cowsim.service.worker import apply_memory_limit\n"
            "apply_memory_limit(64 << 20)\n"
            "try:\n    bytearray(512 << 20)\nexcept MemoryError:\n    print('MemoryError')\n")
    out = subprocess.run(["python", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "MemoryError"


def test_rpcs_are_observed(client: Client, observer: RecordingObserver) -> None:
    client.list_kernels()
    with pytest.raises(ServiceCallError):
        client.get("0123456789abcdef")
    assert ("/cowsim.v1.CowsimService/ListKernels", "OK") in observer.rpcs
    assert ("/cowsim.v1.CowsimService/GetRun", "NOT_FOUND") in observer.rpcs


# -- authentication and TLS ---------------------------------------------------------------

TOKEN = "s3cret-token-0123456789"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    return cert.read_bytes(), key.read_bytes()


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory: pytest.TempPathFactory, tls_files: tuple[bytes, bytes]
                  ) -> Iterator[ServerThread]:
    cert, key = tls_files
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=tmp_path_factory.mktemp("secure"),
                          limits=Limits(workers=1), token=TOKEN, tls_cert=cert, tls_key=key)
    thread = ServerThread(config)
    yield thread
    thread.stop()


def test_with_a_token_every_rpc_but_health_needs_it(secure_server: ServerThread,
                                                    tls_files: tuple[bytes, bytes]) -> None:
    cert = tls_files[0]
    for token in (None, "wrong-token"):
        with Client(secure_server.target, token=token, root_certificates=cert) as anonymous:
            with pytest.raises(ServiceCallError) as error:
                anonymous.list_kernels()
            assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(ServiceCallError) as error:
                list(anonymous.watch("0123456789abcdef"))
            assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
    with Client(secure_server.target, token=TOKEN, root_certificates=cert) as client:
        assert client.list_kernels()
        run = client.wait(client.submit(spec_text(seed=41)).run_id, timeout_seconds=120)
        assert run.state == pb.RUN_STATE_SUCCEEDED
    credentials = grpc.ssl_channel_credentials(root_certificates=cert)
    with grpc.secure_channel(secure_server.target, credentials) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_tls_server_refuses_plaintext(secure_server: ServerThread) -> None:
    with Client(secure_server.target, token=TOKEN, timeout_seconds=5) as plain, \
            pytest.raises(ServiceCallError) as error:
        plain.list_kernels()
    assert error.value.code == grpc.StatusCode.UNAVAILABLE


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for options in (["--port", str(port), "--metrics-port", "off"],
                        ["--port", "0", "--metrics-port", str(port)]):
            done = subprocess.run([sys.executable, "-m", "cowsim.clients.cli", "serve", "--host",
                                   "127.0.0.1", "--data-dir", str(tmp_path / "data"), *options],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 2
            assert done.stderr.count("\n") == 1
            assert "Address already in use" in done.stderr


def _slow_scenario(forks: int) -> str:
    steps = ["  - {op: mmap, proc: p, region: heap, pages: 262144}",
             "  - {op: write, proc: p, region: heap, value: 1}"]
    for i in range(forks):
        steps += [f"  - {{op: fork, proc: p, child: c{i}}}",
                  f"  - {{op: write, proc: p, region: heap, value: {i + 2}}}",
                  f"  - {{op: exit, proc: c{i}}}"]
    return "name: slow\nsteps:\n" + "\n".join(steps) + "\n"


def test_a_passed_deadline_stops_the_scenario_worker(client: Client, server: ServerThread) -> None:
    manager = server.server.manager
    assert manager is not None
    client.list_kernels()
    pids = [slot.pid for slot in manager.slots]
    with pytest.raises(ServiceCallError) as error:
        client.run_scenario(_slow_scenario(400), file_name="slow.yaml", kernel="6.8",
                            timeout_seconds=1.0)
    assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    # the worker running it is killed (not left to finish a run nobody waits for) ...
    deadline = time.monotonic() + 30
    while any(slot.busy for slot in manager.slots) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(slot.busy for slot in manager.slots)
    assert any(slot.process is None or not slot.process.is_alive() or slot.pid != pid
               for slot, pid in zip(manager.slots, pids, strict=True))
    # ... and the next call is served
    path = ROOT / "examples" / "scenarios" / "4.1-vmsplice-child-unmap.yaml"
    assert client.run_scenario(path.read_text(), file_name=str(path), kernel="6.8").results


def test_a_data_dir_from_before_paced_runs_is_migrated_in_place(tmp_path: Path) -> None:
    """A runs table without the ``pace`` column (cowsim before paced runs) gains it on
    open; the stored rows keep their values and read as unpaced."""
    old_schema = SCHEMA.replace(",\n    pace REAL\n", "\n")
    assert "pace" not in old_schema
    db = sqlite3.connect(tmp_path / "runs.sqlite3")
    db.executescript(old_schema)
    db.execute("INSERT INTO runs (run_id, cache_key, name, kernel, kernel_name, workload, seed, "
               "state, spec_text, source_name, create_time, sim_seconds_total) "
               "VALUES ('r1', 'k', 'old', '6.8', '6.8', 'idle', 1, 'SUCCEEDED', 'x', 's', 1.0, 2.0)")
    db.commit()
    db.close()
    store = RunStore(tmp_path)
    try:
        record = store.get("r1")
        assert record is not None
        assert (record.name, record.state, record.pace) == ("old", "SUCCEEDED", None)
    finally:
        store.close()
