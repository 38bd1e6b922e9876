"""``cowsim run`` / ``compare`` / ``schema``: outputs, files, and one-line errors for bad specs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cowsim.clients.cli import main

SPEC = """
name: tiny
duration: 0.2s
seed: 4
machine: {cpus: 2}
processes:
  - name: server
    memory: 4MiB
    threads: 2
    workloads:
      - kind: forking_server
        requests: {rate: 20k/s, write_fraction: 0.5}
        fork: {mode: periodic, every: 50ms, snapshot: {scan_rate: 64MiB/s}}
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_run_json_and_out_dir_is_byte_identical(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, SPEC)
    assert main(["run", spec, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["kernel"] == "6.8"
    assert printed["metrics"]["cow_copies_total"] > 0
    for out in ("a", "b"):
        assert main(["run", spec, "--out", str(tmp_path / out)]) == 0
    first = (tmp_path / "a" / "result.json").read_bytes()
    assert first == (tmp_path / "b" / "result.json").read_bytes()
    assert json.loads(first)["wall_seconds"] is None  # wall time lives in timing.json
    assert json.loads((tmp_path / "a" / "timing.json").read_text())["wall_seconds"] > 0
    assert (tmp_path / "a" / "series" / "memory_bytes.csv").read_text().startswith("time_s,value")
    summary = capsys.readouterr().out
    assert "COW copies" in summary


def test_run_kernel_and_seed_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, SPEC)
    assert main(["run", spec, "--kernel", "5.10", "--seed", "9", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["kernel"], result["era"], result["seed"]) == ("5.10", "B", 9)


def test_compare_runs_each_kernel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, SPEC)
    assert main(["compare", spec, "--kernel", "5.4", "--kernel", "6.8", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["kernel"] for r in results] == ["5.4", "6.8"]
    assert main(["compare", spec, "--kernel", "5.4", "--kernel", "6.8"]) == 0
    table = capsys.readouterr().out
    assert "5.4 (A)" in table
    assert "6.8 (E)" in table


def test_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "WorkloadSpec"
    assert "processes" in schema["properties"]


@pytest.mark.parametrize(("edit", "fragment"), [
    (("duration: 0.2s", "duration: soon"), "field 'duration'"),
    (("memory: 4MiB", "memory: 4 furlongs"), "field 'processes[0].memory'"),
    (("rate: 20k/s", "rate: -5/s"), "field 'processes[0].workloads[0].requests.rate'"),
    (("kind: forking_server", "kind: mystery"), "field 'processes[0].workloads[0]'"),
    (("cpus: 2", "cpus: 5000"), "field 'machine.cpus'"),
    (("cpus: 2", "cpus: 2, costs: {ipi_base: 3}"), "field 'machine'"),
    (("mode: periodic, every: 50ms", "mode: periodic"), "'every'"),
    (("seed: 4", "seed: 4\ncolour: blue"), "field 'colour'"),
])
def test_invalid_specs_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            edit: tuple[str, str], fragment: str) -> None:
    spec = write(tmp_path, SPEC.replace(*edit))
    assert main(["run", spec]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert fragment in captured.err


def test_bad_kernel_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, SPEC)
    assert main(["run", spec, "--kernel", "nope"]) == 2
    assert "--kernel" in capsys.readouterr().err


def test_resident_memory_beyond_the_machine_is_refused(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, SPEC.replace("memory: 4MiB", "memory: 4TiB"))
    assert main(["run", spec]) == 2
    err = capsys.readouterr().err
    assert "field 'processes'" in err
    assert "exceeds the machine" in err


# -- hostile input: one line, exit 2, naming the option or the field -------------------------

TWO_IO = """
name: two-io
duration: 0.05s
processes:
  - name: a
    memory: 4MiB
    workloads:
      - {kind: direct_io, mode: odirect, buffer: 1MiB}
  - name: b
    memory: 4MiB
    workloads:
      - {kind: direct_io, mode: pinned, buffer: 1MiB}
      - {kind: direct_io, mode: odirect, buffer: 1MiB}
"""

CHECKPOINTED = """
name: checkpointed
duration: 0.2s
processes:
  - name: db
    memory: 4MiB
    workloads:
      - {kind: direct_io, mode: odirect, buffer: 1MiB, device_latency: 1ms}
  - name: criu
    memory: 1MiB
    workloads:
      - {kind: checkpointer, target: db, interval: 50ms}
"""


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("cowsim: ")
    assert "Traceback" not in captured.err
    return captured.err


@pytest.mark.parametrize(("option", "fragment"), [
    (["--seed", "-1"], "cowsim: --seed: a seed is 0 … 2**63-1, not -1"),
    (["--seed", str(2**64)], "cowsim: --seed: a seed is 0 … 2**63-1"),
    (["--seed", "many"], "--seed"),
    (["--kernel", "5.100"], "cowsim: --kernel: kernel '5.100' is not a Linux release"),
    (["--kernel", "latest"], "cowsim: --kernel: kernel 'latest' is not a kernel version"),
])
def test_bad_options_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str],
                               fragment: str) -> None:
    assert main(["run", write(tmp_path, SPEC), *option]) == 2
    assert fragment in one_line(capsys)


@pytest.mark.parametrize(("text", "edit", "fragment"), [
    (SPEC, ("duration: 0.2s", "duration: 1e400s"), "field 'duration': invalid duration '1e400s': too large"),
    (SPEC, ("rate: 20k/s", "rate: 1e30/s"), "field 'processes[0].workloads[0].requests.rate': must be"),
    (SPEC, ("rate: 20k/s", "rate: 1e12/s"), "field 'processes[0].workloads[0].requests.rate': must be"),
    (SPEC, ("seed: 4", "seed: 4\nmetrics_interval: 0"),
     "field 'metrics_interval': must be at least 1 ms"),
    (SPEC, ("every: 50ms", "every: 0"), "field 'processes[0].workloads[0].fork.every': must be at least"),
    (SPEC, ("duration: 0.2s", "duration: 1000h"),
     "field 'duration': needs about 3.68e9 simulated events (mostly forking_server: 3.6e9 ticks"),
    (SPEC, ("seed: 4", "seed: 4\nkernel: '5.100'"), "spec.yaml: field 'kernel': kernel '5.100'"),
    (CHECKPOINTED, ("device_latency: 1ms", "device_latency: 0"),
     "field 'processes[0].workloads[0].device_latency': must be at least 1 µs"),
    (CHECKPOINTED, ("interval: 50ms", "interval: 0"),
     "field 'processes[1].workloads[0].interval': must be at least 1 ms"),
])
def test_hostile_specs_get_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                    edit: tuple[str, str], fragment: str) -> None:
    assert main(["run", write(tmp_path, text.replace(*edit))]) == 2
    err = one_line(capsys)
    assert fragment in err
    assert "--kernel" not in err


def test_several_direct_io_workloads_run_or_fail_cleanly(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", write(tmp_path, TWO_IO), "--json"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if code == 0:
        assert json.loads(captured.out)["sim_seconds"] > 0
    else:
        assert code in (1, 2)
        assert captured.err.count("\n") == 1


def test_compare_all_runs_one_kernel_per_era(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, SPEC.replace("duration: 0.2s", "duration: 20ms"))
    assert main(["compare", spec, "--kernel", "all", "--json"]) == 0
    assert [r["era"] for r in json.loads(capsys.readouterr().out)] == ["A", "A'", "B", "C", "C'", "D",
                                                                      "E"]


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.startswith("."))


def test_out_is_checked_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slow = write(tmp_path, SPEC.replace("duration: 0.2s", "duration: 1h"))
    (tmp_path / "a-file").write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for out, fragment in [(tmp_path / "missing" / "out", "does not exist"),
                              (tmp_path / "a-file", "exists and is not a directory"),
                              (locked / "out", "is not writable")]:
            started = time.perf_counter()
            assert main(["run", slow, "--out", str(out)]) == 2
            assert time.perf_counter() - started < 10  # refused before an hour of simulation
            err = one_line(capsys)
            assert err.startswith("cowsim: --out: ")
            assert fragment in err
    finally:
        locked.chmod(0o755)
    assert leftovers(tmp_path) == []
    assert list(locked.iterdir()) == []


def test_out_replaces_an_existing_directory_only_when_complete(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, SPEC)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old run")
    assert main(["run", spec, "--out", str(out)]) == 0
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "result.json").read_text())["seed"] == 4
    assert leftovers(tmp_path) == []
    # A run that fails leaves the previous results alone.
    assert main(["run", write(tmp_path, SPEC.replace("seed: 4", "seed: -3"), "bad.yaml"),
                 "--out", str(out)]) == 2
    assert (out / "result.json").exists()
    assert leftovers(tmp_path) == []
    capsys.readouterr()


def test_ctrl_c_exits_130_and_leaves_no_partial_output(tmp_path: Path) -> None:
    spec = write(tmp_path, SPEC.replace("duration: 0.2s", "duration: 1h"))
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "cowsim.clients.cli", "run", spec, "--out",
                                str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not leftovers(tmp_path) and time.monotonic() < deadline:  # the run has begun
        time.sleep(0.05)
    assert leftovers(tmp_path), "the run never started"
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr == "cowsim: interrupted\n"
    assert stdout == ""
    assert not out.exists()
    assert leftovers(tmp_path) == []
