"""``cowsim export openmetrics``: a run's series as OpenMetrics with timestamps.

The text is checked the way it is used: ``promtool tsdb create-blocks-from
openmetrics`` must turn it into blocks (``promtool check metrics`` refuses
timestamps), and the samples must carry the run's values at ``start + t``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cowsim.clients.cli import main as cli_main
from cowsim.clients.export_cli import parse_start
from cowsim.clients.openmetrics import NoSeriesError, openmetrics_text
from cowsim.sim import InvalidInput, parse_spec, run

SPEC = """
name: tiny-fork
kernel: "6.8"
duration: 4s
seed: 1
machine: {cpus: 4}
processes:
  - name: server
    memory: 16MiB
    threads: 1
    workloads:
      - kind: forking_server
        requests: {rate: 2k/s, write_fraction: 0.5, service: 5us}
        fork: {mode: periodic, first_at: 1s, every: 10s, snapshot: {scan_rate: 16MiB/s}}
"""
START = 1_700_000_000.0


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return run(parse_spec(SPEC))


def _samples(text: str) -> list[tuple[str, float, float]]:
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, value, stamp = line.rsplit(" ", 2)
        out.append((series, float(value), float(stamp)))
    return out


def test_result_series_are_deterministic_and_in_the_json(result: dict[str, Any]) -> None:
    again = run(parse_spec(SPEC))
    assert json.dumps(result["series"], sort_keys=True) == json.dumps(again["series"], sort_keys=True)
    timeline = result["series"]["timeline"]
    assert timeline["t"][0] == 0.0
    assert timeline["t"][-1] == result["sim_seconds"]
    assert timeline["counters"]["cow_copies"][-1] == result["metrics"]["cow_copies_total"]
    request = timeline["histograms"]["request_latency_seconds"]
    assert request["buckets"][-1][-1] == result["metrics"]["histograms"][
        "request_latency_seconds"]["count"]


def test_text_shape(result: dict[str, Any]) -> None:
    text = openmetrics_text(result, START)
    assert text.endswith("# EOF\n")
    assert text.count("# EOF") == 1
    assert "# TYPE cowsim_memory_bytes gauge\n# UNIT cowsim_memory_bytes bytes\n" in text
    assert "# TYPE cowsim_cow_copies counter\n" in text
    assert "# TYPE cowsim_request_latency_seconds histogram\n" in text
    samples = _samples(text)
    memory = [(v, ts) for s, v, ts in samples if s.startswith("cowsim_memory_bytes{")]
    points = result["series"]["run"]["memory_bytes"]
    assert memory == [(v, START + t) for t, v in zip(points["t"], points["v"], strict=True)]
    fork = [v for s, v, _ in samples if s.startswith("cowsim_cow_copies_total{") and 'cause="fork"' in s]
    assert fork[-1] == result["metrics"]["cow_copies_by_cause"]["fork"]
    assert 'cowsim_shared_pages{kernel="6.8",workload="forking_server",process="server"}' in text


def test_no_series_is_refused() -> None:
    with pytest.raises(NoSeriesError):
        openmetrics_text({"kernel": "6.8"}, START)


@pytest.mark.parametrize(("text", "seconds"), [("1700000000", 1_700_000_000.0),
                                               ("2023-11-14T22:13:20Z", 1_700_000_000.0),
                                               ("2023-11-14T22:13:20", 1_700_000_000.0)])
def test_start_forms(text: str, seconds: float) -> None:
    assert parse_start(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-5", "nan"])
def test_bad_start(text: str) -> None:
    with pytest.raises(InvalidInput, match="--start"):
        parse_start(text)


def test_cli_local_result(result: dict[str, Any], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "result.json").write_text(json.dumps(result))
    assert cli_main(["export", "openmetrics", str(tmp_path), "--start", str(START)]) == 0
    assert capsys.readouterr().out == openmetrics_text(result, START)
    assert cli_main(["export", "openmetrics", str(tmp_path), "--start", "later"]) == 2
    (tmp_path / "old.json").write_text("{}")
    assert cli_main(["export", "openmetrics", str(tmp_path / "old.json")]) == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_creates_blocks(result: dict[str, Any], tmp_path: Path) -> None:
    source = tmp_path / "run.om"
    source.write_text(openmetrics_text(result, START))
    done = subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source),
                           str(tmp_path / "data")], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "data").glob("*/meta.json"))
