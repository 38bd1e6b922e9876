"""``cowsim sweep``: exit codes, one-line errors, the tables it writes, Ctrl-C and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from cowsim.clients import cli, sweep_cli
from cowsim.service.executors import RunJob, RunOutcome, execute

BASE: dict[str, Any] = {
    "name": "tiny", "duration": "50ms", "seed": 5,
    "processes": [{"name": "web", "memory": "1MiB", "workloads": [
        {"kind": "forking_server", "requests": {"rate": "10k/s"},
         "fork": {"mode": "periodic", "every": "10ms"}}]}],
}
RATE = "processes[web].workloads[forking_server].requests.rate"


def write_sweep(directory: Path, duration: str = "50ms", rates: Sequence[str] = ("5k/s", "20k/s"),
                replications: int = 1) -> Path:
    path = directory / "s.json"
    path.write_text(json.dumps({
        "name": "cli", "base": dict(BASE, duration=duration), "replications": replications,
        "axes": [{"path": "kernel", "values": ["4.19", "6.8"]},
                 {"path": RATE, "name": "rate", "values": list(rates)}]}))
    return path


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("cowsim: ")
    return err


def test_an_invalid_point_exits_2_with_one_line_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = write_sweep(tmp_path, rates=("5k/s", "5G/s"))
    assert cli.main(["sweep", str(sweep), "--out", str(tmp_path / "out")]) == 2
    line = one_line(capsys)
    assert "axis 'rate' value '5G/s'" in line
    assert "axes[1].values[1]" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("options", "words"), [
    (["--executor", "spark"], "--executor"),
    (["--executor", "dask://nohost"], "dask://HOST:PORT"),
    (["--workers", "0"], "--workers"),
])
def test_an_invalid_option_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 options: list[str], words: str) -> None:
    assert cli.main(["sweep", str(write_sweep(tmp_path)), *options]) == 2
    assert words in one_line(capsys)


def test_an_out_that_is_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert cli.main(["sweep", str(write_sweep(tmp_path)), "--out", str(tmp_path / "file")]) == 2
    assert "--out" in one_line(capsys)


def test_the_schema_and_a_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sweep", "--schema"]) == 0
    assert "axes" in json.loads(capsys.readouterr().out)["properties"]
    assert cli.main(["sweep", str(write_sweep(tmp_path)), "--dry-run", "--out",
                     str(tmp_path / "o")]) == 0
    assert "4 points × 1 replications = 4 runs (4 distinct), 0 stored" in capsys.readouterr().out
    assert cli.main(["sweep"]) == 2


class FailOne:
    """An in-process executor (the interface, no workers) whose second job fails."""

    workers = 1
    running = 0

    def submit(self, jobs: Sequence[RunJob]) -> Iterator[RunOutcome]:
        for number, job in enumerate(jobs):
            if number == 1:
                yield RunOutcome(job.key, None, "its worker died 3 times (last exit code -9)", 3)
            else:
                yield RunOutcome(job.key, execute(job)["result"], None)

    def close(self) -> None:
        pass


def test_a_failed_run_exits_1_with_the_tables_written_and_marked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep_cli, "open_executor", lambda name, workers: FailOne())
    out = tmp_path / "out"
    assert cli.main(["sweep", str(write_sweep(tmp_path)), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "1 runs failed" in captured.err
    assert "4 runs, 0 already stored, 3 run now, 1 failed" in captured.out
    lines = (out / "runs.csv").read_text().splitlines()
    assert len(lines) == 5
    assert sum(",failed,its worker died" in line for line in lines) == 1
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 5
    header = summary[0].split(",")
    assert header[:5] == ["point", "kernel", "rate", "era", "replications"]


def test_ctrl_c_exits_130_keeping_every_finished_run_and_a_rerun_resumes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = write_sweep(tmp_path, duration="400ms", rates=("5k/s", "10k/s", "20k/s"))
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "cowsim.clients.cli", "sweep", str(sweep), "--workers", "1",
         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(out.glob("runs/*.json")):
        assert time.monotonic() < deadline, "no run was stored"
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == "cowsim: interrupted"
    stored = list((out / "runs").glob("*.json"))
    assert 1 <= len(stored) < 6
    for path in stored:
        assert json.loads(path.read_text())["status"] == "completed"
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert not (out / "runs.csv").exists()
    assert cli.main(["sweep", str(sweep), "--workers", "2", "--out", str(out)]) == 0
    assert f"6 runs, {len(stored)} already stored, {6 - len(stored)} run now, 0 failed" in \
        capsys.readouterr().out
    assert len((out / "runs.csv").read_text().splitlines()) == 7
