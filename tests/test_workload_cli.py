"""``cowsim run`` / ``compare`` / ``schema``: outputs, files, and one-line errors for bad specs."""

from __future__ import annotations

import json
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
