"""The remote-run commands (submit, status, watch, cancel, list, result) against a real server.

A server on an ephemeral loopback port (tests/service_helpers.py), one worker; the commands
run in-process through ``cowsim.clients.cli.main`` (capsys), and once through the installed
``cowsim`` console script.  Specs are 4 MiB and a fraction of a simulated second.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cowsim.clients import cli, service_cli
from cowsim.clients.service_client import Client
from cowsim.service import Limits, ServerConfig
from cowsim.sim import MAX_DOCUMENT_BYTES
from cowsim.v1 import cowsim_pb2 as pb
from tests.service_helpers import ServerThread, loopback_config, spec_text

TOKEN = "cli-token-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    config = loopback_config(tmp_path_factory.mktemp("data"),
                             Limits(workers=1, max_queued_runs=8, max_sim_seconds=60.0),
                             cancel_grace_seconds=3.0)
    with ServerThread(config) as thread:
        yield thread


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.target) as c:
        yield c


@pytest.fixture(autouse=True)
def _no_server_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(service_cli.SERVER_ENV, raising=False)


def _cowsim(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _spec(tmp_path: Path, name: str = "tiny.yaml", **options: Any) -> str:
    path = tmp_path / name
    path.write_text(spec_text(**options))
    return str(path)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _one_line(err: str) -> str:
    assert err.count("\n") == 1, err
    assert err.startswith("cowsim: "), err
    return err.strip()


def test_submit_wait_json_and_result_equal_cowsim_run(server: ServerThread, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path)
    status, out, _ = _cowsim(capsys, "run", spec, "--json", "--seed", "51", "--kernel", "5.10")
    assert status == 0
    local = json.loads(out)
    status, out, err = _cowsim(capsys, "submit", spec, "--server", server.target, "--seed", "51",
                               "--kernel", "5.10", "--wait", "--json")
    assert status == 0, err
    remote = json.loads(out)
    run_id = remote.pop("run_id")
    assert dict(remote, wall_seconds=None) == dict(local, wall_seconds=None)
    status, out, _ = _cowsim(capsys, "result", run_id, "--server", server.target, "--json")
    assert status == 0
    assert dict(json.loads(out), wall_seconds=None) == dict(local, wall_seconds=None)
    # without --json: the table `cowsim run` prints, the wall-time line aside
    _, local_text, _ = _cowsim(capsys, "run", spec, "--seed", "51", "--kernel", "5.10")
    status, remote_text, _ = _cowsim(capsys, "result", run_id, "--server", server.target)
    assert status == 0
    assert remote_text.splitlines()[:-1] == local_text.splitlines()[:-1]
    assert remote_text.splitlines()[-1].startswith("5.10: 0.2 s simulated in ")


def test_submit_json_shape_and_status(server: ServerThread, client: Client, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _cowsim(capsys, "submit", _spec(tmp_path, seed=52), "--server",
                             server.target, "--json")
    assert status == 0
    submitted = json.loads(out)
    assert set(submitted) == {"run_id", "state"}
    assert submitted["state"] in ("QUEUED", "RUNNING", "SUCCEEDED")
    client.wait(submitted["run_id"], timeout_seconds=60)
    status, out, _ = _cowsim(capsys, "status", submitted["run_id"], "--server", server.target,
                             "--json")
    assert status == 0
    record = json.loads(out)
    assert record["run_id"] == submitted["run_id"]
    assert record["state"] == "SUCCEEDED"
    assert (record["seed"], record["kernel"], record["sim_seconds"]) == (52, "6.8", 0.2)
    status, out, _ = _cowsim(capsys, "status", submitted["run_id"], "--server", server.target)
    assert status == 0
    assert submitted["run_id"] in out
    assert "SUCCEEDED" in out
    # submitted again: answered from the cache, at once
    status, out, _ = _cowsim(capsys, "submit", _spec(tmp_path, seed=52), "--server",
                             server.target)
    assert out.split()[:2] == [submitted["run_id"], "SUCCEEDED"]
    assert "cache" in out


def test_list_json_is_newest_first_over_every_page(server: ServerThread, client: Client,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [client.wait(client.submit(spec_text(name="listed", seed=seed)).run_id, 60).run_id
           for seed in (61, 62, 63)]
    monkeypatch.setattr(service_cli, "LIST_PAGE_SIZE", 1)  # three pages to follow
    status, out, _ = _cowsim(capsys, "list", "--server", server.target, "--name", "listed",
                             "--json")
    assert status == 0
    runs = json.loads(out)
    assert [run["run_id"] for run in runs] == ids[::-1]
    assert [run["seed"] for run in runs] == [63, 62, 61]
    assert all(run["state"] == "SUCCEEDED" for run in runs)
    status, out, _ = _cowsim(capsys, "list", "--server", server.target, "--json", "--limit", "2")
    assert len(json.loads(out)) == 2
    status, out, _ = _cowsim(capsys, "list", "--server", server.target, "--name", "listed")
    assert status == 0
    assert [line.split()[1] for line in out.splitlines() if line.split()[1:2]
            and line.split()[1] in ids] == ids[::-1]


def test_watch_ends_with_the_final_state(server: ServerThread, client: Client,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    run = client.submit(spec_text(seed=71, duration="0.3s"))
    status, out, _ = _cowsim(capsys, "watch", run.run_id, "--server", server.target)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"{run.run_id}: ")
    assert lines[-1].startswith(f"{run.run_id}: SUCCEEDED — 300 ms simulated")
    assert len(lines) <= 13  # off a terminal: a line per tenth at most


def test_cancel_a_queued_and_a_running_run(server: ServerThread, client: Client,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    running = client.submit(spec_text(seed=81, duration="50s"))
    for message in client.watch(running.run_id, timeout_seconds=60):
        if message.HasField("progress"):
            break  # it is running; the one worker is busy
    queued = client.submit(spec_text(seed=82, duration="50s"))
    assert client.get(queued.run_id).state == pb.RUN_STATE_QUEUED
    status, out, _ = _cowsim(capsys, "cancel", queued.run_id, "--server", server.target)
    assert status == 0
    assert out.startswith(f"{queued.run_id}: CANCELLED")
    status, out, _ = _cowsim(capsys, "cancel", running.run_id, "--server", server.target)
    assert status == 0
    assert out.startswith(f"{running.run_id}: ")
    assert client.wait(running.run_id, timeout_seconds=60).state == pb.RUN_STATE_CANCELLED
    # a cancelled run is exit 1: a partial result (or none) is not the result
    status, out, err = _cowsim(capsys, "result", running.run_id, "--server", server.target,
                               "--json")
    assert status == 1
    if out:
        assert json.loads(out)["status"] == "cancelled"
        assert "partial" in _one_line(err)
    status, out, err = _cowsim(capsys, "result", queued.run_id, "--server", server.target)
    assert (status, out) == (1, "")
    assert "cancelled before it started" in _one_line(err)
    status, out, _ = _cowsim(capsys, "watch", queued.run_id, "--server", server.target)
    assert status == 1
    assert out.splitlines()[-1].startswith(f"{queued.run_id}: CANCELLED")
    status, out, _ = _cowsim(capsys, "cancel", queued.run_id, "--server", server.target)
    assert status == 0
    assert "already finished" in out


def test_server_from_the_environment(server: ServerThread, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _cowsim(capsys, "list", "--json")
    assert status == 2
    assert _one_line(err) == ("cowsim: --server: no server given: pass --server HOST:PORT or "
                              "set COWSIM_SERVER")
    monkeypatch.setenv(service_cli.SERVER_ENV, server.target)
    status, out, _ = _cowsim(capsys, "list", "--json")
    assert status == 0
    assert isinstance(json.loads(out), list)


def test_an_unreachable_server_is_exit_3(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    target = f"127.0.0.1:{_free_port()}"
    for argv in (["list"], ["status", "0123456789abcdef"], ["submit", _spec(tmp_path)]):
        status, _, err = _cowsim(capsys, *argv, "--server", target)
        assert status == 3
        assert _one_line(err).startswith(f"cowsim: cannot reach the server at {target}: ")


def test_an_invalid_spec_says_what_cowsim_run_says(server: ServerThread, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bad = _spec(tmp_path, "bad.yaml", memory="lots")
    cases = [([bad], "processes[0].memory"), ([_spec(tmp_path), "--kernel", "9.99"], "--kernel"),
             ([_spec(tmp_path), "--seed", "-1"], "--seed")]
    for argv, field in cases:
        status, _, local = _cowsim(capsys, "run", *argv)
        assert status == 2
        status, out, remote = _cowsim(capsys, "submit", *argv, "--server", server.target)
        assert (status, out) == (2, "")
        assert field in _one_line(remote)
        assert remote == local
    status, _, err = _cowsim(capsys, "submit", _spec(tmp_path), "--server", server.target,
                             "--request-id", "bad id!")
    assert status == 2
    assert _one_line(err).startswith("cowsim: --request-id: ")
    status, _, err = _cowsim(capsys, "status", "not-hex", "--server", server.target)
    assert status == 2
    assert _one_line(err).startswith("cowsim: run id 'not-hex': ")
    status, _, err = _cowsim(capsys, "result", "0123456789abcdef", "--server", server.target)
    assert status == 2
    assert "no run '0123456789abcdef'" in _one_line(err)


def test_a_run_over_a_server_limit_is_exit_2(server: ServerThread, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _cowsim(capsys, "submit", _spec(tmp_path, duration="10min"), "--server",
                             server.target)
    assert status == 2
    assert "max_sim_seconds exceeded" in _one_line(err)


def test_a_missing_file_is_exit_2_without_the_server(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{_free_port()}"  # nothing listens: contacting it would be exit 3
    big = tmp_path / "big.yaml"
    big.write_text("#" * (MAX_DOCUMENT_BYTES + 1))
    for path in (str(tmp_path / "missing.yaml"), str(tmp_path), str(big)):
        status, _, local = _cowsim(capsys, "run", path)
        status, _, remote = _cowsim(capsys, "submit", path, "--server", target)
        assert status == 2
        assert remote == local
        _one_line(remote)


def test_a_failed_run_is_exit_1(server: ServerThread, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    failed = pb.Run(run_id="00ff", state=pb.RUN_STATE_FAILED,
                    error_message="worker process died (signal 9)")
    monkeypatch.setattr(Client, "get", lambda self, run_id, full=True: failed)
    status, out, err = _cowsim(capsys, "result", "00ff", "--server", server.target, "--json")
    assert (status, out) == (1, "")
    assert _one_line(err) == "cowsim: run 00ff failed: worker process died (signal 9)"


def test_ctrl_c_while_waiting_leaves_the_run_going(server: ServerThread, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: Client, run_id: str, timeout_seconds: float | None = None) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(Client, "watch", interrupted)
    status, _, err = _cowsim(capsys, "submit", _spec(tmp_path, seed=91, duration="0.3s"),
                             "--server", server.target, "--wait", "--json")
    assert status == 130
    assert _one_line(err).startswith("cowsim: interrupted (run ")


def test_the_console_script(server: ServerThread, tmp_path: Path) -> None:
    script = shutil.which("cowsim", path=str(Path(sys.executable).parent)) or "cowsim"
    env = dict(os.environ, **{service_cli.SERVER_ENV: server.target})
    done = subprocess.run([script, "submit", _spec(tmp_path, seed=92), "--wait", "--json"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["seed"] == 92
    assert result["status"] == "completed"
    assert result["run_id"]


# -- a server with a token (and TLS) --------------------------------------------------------

@pytest.fixture(scope="module")
def secure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread,
                                                                              Path]]:
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=tmp_path_factory.mktemp("secure"),
                          limits=Limits(workers=1), token=TOKEN, tls_cert=cert.read_bytes(),
                          tls_key=key.read_bytes())
    thread = ServerThread(config)
    yield thread, cert
    thread.stop()


def test_token_file_and_tls(secure_server: tuple[ServerThread, Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    server, cert = secure_server
    token, wrong, empty = tmp_path / "token", tmp_path / "wrong", tmp_path / "empty"
    token.write_text(TOKEN + "\n")
    wrong.write_text("not-the-token")
    empty.write_text("")
    # the certificate names localhost, not 127.0.0.1
    tls = ["--server", server.target, "--tls-ca", str(cert), "--tls-server-name", "localhost"]
    status, _, err = _cowsim(capsys, "list", *tls)
    assert status == 2
    assert "UNAUTHENTICATED" in _one_line(err)
    assert "pass --token-file" in err
    status, _, err = _cowsim(capsys, "list", *tls, "--token-file", str(wrong))
    assert status == 2
    assert "UNAUTHENTICATED" in _one_line(err)
    assert "check --token-file" in err
    status, _, err = _cowsim(capsys, "list", *tls, "--token-file", str(empty))
    assert status == 2
    assert _one_line(err).startswith("cowsim: --token-file: ")
    status, out, err = _cowsim(capsys, "submit", _spec(tmp_path, seed=93), *tls,
                               "--token-file", str(token), "--wait", "--json")
    assert status == 0, err
    assert json.loads(out)["seed"] == 93


def test_tls_to_a_plaintext_server_is_one_line_and_exit_3(
        server: ServerThread, secure_server: tuple[ServerThread, Path]) -> None:
    """gRPC's own log line of the failed handshake is not printed (cowsim.clients sets
    GRPC_VERBOSITY before grpc is imported)."""
    script = shutil.which("cowsim", path=str(Path(sys.executable).parent)) or "cowsim"
    env = {key: value for key, value in os.environ.items() if key != "GRPC_VERBOSITY"}
    done = subprocess.run([script, "list", "--server", server.target, "--tls-ca",
                           str(secure_server[1]), "--tls-server-name", "localhost"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 3
    assert _one_line(done.stderr).startswith(f"cowsim: cannot reach the server at {server.target}")
