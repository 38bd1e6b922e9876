"""The Prometheus exporter end to end: a real server, real runs, scrapes over HTTP.

One server (two workers, the exporter on an ephemeral port) runs four tiny specs: a forking
server on 6.8 (then resubmitted: a cache hit), O_DIRECT reads under clear_refs on 5.10 (lost
DMA writes, diverged pins, checkpoint and I/O histograms), an RDMA buffer forked on 5.8 (leaks,
stale pin reads) and a long forking server on 5.15 that is scraped mid-run and cancelled.  The
scraped counters and histogram counts must equal the sums of the runs' results, per (kernel,
workload); the scrape must pass ``promtool check metrics`` (skipped only when promtool is
missing outside CI: with ``CI`` set, a missing promtool fails).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cowsim.clients.service_client import Client, ServiceCallError
from cowsim.service import Limits, ServerConfig
from cowsim.service.cli import parse_metrics_port
from cowsim.service.families import Families
from cowsim.service.labels import OTHER, BoundedPairs, BoundedValues
from cowsim.sim import BOUNDS_SECONDS, InvalidInput
from cowsim.v1 import cowsim_pb2 as pb
from tests.service_helpers import ServerThread, spec_text

LIMITS = Limits(workers=2, max_queued_runs=8, max_sim_seconds=60.0, max_frames=300_000)

ODIRECT = """\
name: odirect
duration: 0.2s
seed: 3
processes:
  - name: db
    memory: 4MiB
    threads: 2
    workloads:
      - kind: direct_io
        mode: odirect
        buffer: 1MiB
        iodepth: 8
        device_latency: 2ms
        write_during_io: 0.25
  - name: criu
    memory: 1MiB
    workloads:
      - {kind: checkpointer, target: db, interval: 20ms}
"""

RDMA = """\
name: rdma
duration: 0.2s
seed: 11
processes:
  - name: app
    memory: 4MiB
    threads: 2
    workloads:
      - {kind: direct_io, mode: pinned, buffer: 1MiB, dma_rate: 20k/s, fork_every: 20ms}
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode("utf-8"))


def samples(text: str) -> Samples:
    """Every sample of a scrape: (name, sorted labels) → value."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def total(values: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    return sum(value for (sample, keys), value in values.items()
               if sample == name and set(labels.items()) <= set(keys))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=0, limits=LIMITS,
                          data_dir=tmp_path_factory.mktemp("metrics"), cancel_grace_seconds=3.0)
    thread = ServerThread(config)
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.target) as c:
        yield c


@pytest.fixture(scope="module")
def finished(server: ServerThread, client: Client) -> dict[str, Any]:
    """Run the four specs (one cancelled mid-run after a scrape); their results and scrapes."""
    assert server.server.metrics_port is not None
    port = server.server.metrics_port
    short = [client.submit(spec_text(seed=21), kernel="6.8"),
             client.submit(ODIRECT, kernel="5.10"), client.submit(RDMA, kernel="5.8")]
    long_run = client.submit(spec_text(name="long", duration="30s", seed=22), kernel="5.15")
    live: dict[str, Any] = {}
    for message in client.watch(long_run.run_id, timeout_seconds=120):
        if message.HasField("progress") and message.progress.sim_seconds >= 1.0:
            live["scrape"] = samples(scrape(port))
            live["run"] = client.get(long_run.run_id, full=False)
            client.cancel(long_run.run_id)
            break
    runs = [client.wait(run.run_id, timeout_seconds=120) for run in [*short, long_run]]
    cached = client.submit_run(spec_text(seed=21), kernel="6.8")
    with pytest.raises(ServiceCallError):
        client.submit(spec_text(memory="lots"))
    # The server records an RPC (and a finished run) as its handler returns, which may be
    # just after the client has its answer: scrape until two scrapes a moment apart agree.
    text, deadline = scrape(port), time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(0.2)
        again = scrape(port)
        if again == text:
            break
        text = again
    return {"runs": runs, "cached": cached, "live": live, "text": text, "port": port}


def _expected(runs: list[pb.Run]) -> dict[tuple[str, str], dict[str, float]]:
    """Per (kernel, workload): the sums of the results' totals the exporter must match."""
    sums: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for run in runs:
        result = json.loads(run.result.result_json)
        metrics, expected = result["metrics"], sums[(result["kernel"], run.workload)]
        for key in ("cow_copies_total", "wp_reuses_total", "page_faults_total",
                    "tlb_shootdowns_total", "tlb_ipis_total", "tlb_misses_total",
                    "dma_lost_writes_total", "leaks_total", "pin_diverged_total",
                    "stale_pin_reads_total"):
            expected[key] += metrics[key]
        for cause, count in metrics["cow_copies_by_cause"].items():
            expected[f"cause:{cause}"] += count
        for name, summary in metrics["histograms"].items():
            expected[f"{name}:count"] += summary["count"]
            expected[f"{name}:sum"] += summary["sum"]
    return sums


def test_runs_finished_as_planned(finished: dict[str, Any]) -> None:
    states = [run.state for run in finished["runs"]]
    assert states == [pb.RUN_STATE_SUCCEEDED] * 3 + [pb.RUN_STATE_CANCELLED]
    assert finished["cached"].cached
    assert finished["live"]["run"].state == pb.RUN_STATE_RUNNING


def test_counters_equal_the_results(finished: dict[str, Any]) -> None:
    values = samples(finished["text"])
    expected = _expected(finished["runs"])
    assert len(expected) == 4
    assert any(e["dma_lost_writes_total"] > 0 for e in expected.values())
    assert any(e["leaks_total"] > 0 and e["stale_pin_reads_total"] > 0 for e in expected.values())
    for (kernel, workload), want in expected.items():
        run = {"kernel": kernel, "workload": workload}

        def got(name: str, run: dict[str, str] = run, **labels: str) -> float:
            return total(values, name, **run, **labels)

        assert got("cowsim_cow_copies_total") == want["cow_copies_total"], run
        for key, count in want.items():
            if key.startswith("cause:"):
                assert got("cowsim_cow_copies_total", cause=key.removeprefix("cause:")) == count
        assert got("cowsim_wp_reuses_total") == want["wp_reuses_total"]
        assert got("cowsim_page_faults_total") == want["page_faults_total"]
        assert got("cowsim_tlb_shootdowns_total") == want["tlb_shootdowns_total"]
        assert got("cowsim_tlb_ipis_total") == want["tlb_ipis_total"]
        # the result rounds the modelled misses (fractional) to a whole number
        assert got("cowsim_tlb_misses_total") == pytest.approx(want["tlb_misses_total"], abs=1)
        assert got("cowsim_violations_total", kind="leak") == want["leaks_total"]
        assert got("cowsim_violations_total", kind="pin_diverged") == want["pin_diverged_total"]
        assert got("cowsim_violations_total", kind="dma_lost_write") == \
            want["dma_lost_writes_total"]
        assert got("cowsim_violations_total", kind="stale_pin_read") == \
            want["stale_pin_reads_total"]


def test_histograms_equal_the_results(finished: dict[str, Any]) -> None:
    values = samples(finished["text"])
    seen = set()
    for (kernel, workload), want in _expected(finished["runs"]).items():
        run = {"kernel": kernel, "workload": workload}
        for key, count in want.items():
            if not key.endswith(":count"):
                continue
            name = "cowsim_" + key.removesuffix(":count")
            seen.add(name)
            assert total(values, f"{name}_count", **run) == count, (name, run)
            assert total(values, f"{name}_bucket", **run, le="+Inf") == count
            assert total(values, f"{name}_sum", **run) == pytest.approx(
                want[key.replace(":count", ":sum")], rel=1e-6, abs=1e-9)
    assert {"cowsim_request_latency_seconds", "cowsim_fault_latency_seconds",
            "cowsim_fork_pause_seconds", "cowsim_checkpoint_duration_seconds",
            "cowsim_io_latency_seconds"} <= seen
    le = {dict(keys)["le"] for (name, keys) in values if name == "cowsim_fork_pause_seconds_bucket"}
    assert len(le) == len(BOUNDS_SECONDS) + 1


def test_metrics_move_while_a_run_goes(finished: dict[str, Any]) -> None:
    live, run = finished["live"]["scrape"], {"kernel": "5.15", "workload": "forking_server"}
    assert total(live, "cowsim_runs", state="RUNNING") >= 1
    assert total(live, "cowsim_request_latency_seconds_count", **run) > 0
    assert total(live, "cowsim_page_faults_total", **run) > 0
    final = samples(finished["text"])
    assert total(live, "cowsim_request_latency_seconds_count", **run) < \
        total(final, "cowsim_request_latency_seconds_count", **run)


def test_service_metrics(finished: dict[str, Any]) -> None:
    values = samples(finished["text"])
    assert {state: total(values, "cowsim_runs", state=state) for state in
            ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")} == {
        "QUEUED": 0, "RUNNING": 0, "SUCCEEDED": 3, "FAILED": 0, "CANCELLED": 1}
    assert total(values, "cowsim_queue_depth") == 0
    assert total(values, "cowsim_result_cache_hits_total", kernel="6.8",
                 workload="forking_server") == 1
    assert total(values, "cowsim_result_cache_hits_total") == 1
    assert total(values, "cowsim_run_wall_seconds_count") == 4
    assert total(values, "cowsim_runs_finished_total", state="CANCELLED") == 1

    def handled(method: str, code: str = "OK") -> float:
        return total(values, "grpc_server_handled_total", grpc_service="cowsim.v1.CowsimService",
                     grpc_method=method, grpc_code=code)

    assert handled("SubmitRun") == 5
    assert handled("SubmitRun", "INVALID_ARGUMENT") == 1
    assert handled("CancelRun") == 1
    assert handled("WatchRun") >= 4
    assert handled("ListKernels") == 0  # created at zero, never called
    assert total(values, "grpc_server_handled_total", grpc_method="WatchRun",
                 grpc_type="server_stream") == handled("WatchRun")
    assert total(values, "grpc_server_handling_seconds_count", grpc_method="SubmitRun") == 6
    assert not any("run_id" in dict(keys) for _, keys in values)


def test_the_scrape_passes_promtool(finished: dict[str, Any]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if "CI" in os.environ:
            pytest.fail("promtool is missing (Debian package 'prometheus'; .ci/run installs it)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    checked = subprocess.run([promtool, "check", "metrics"], input=finished["text"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == ""
    assert checked.stderr.strip() == ""


# -- the pieces, without a server --------------------------------------------------------


def test_bucket_deltas_are_exposed_cumulatively() -> None:
    families = Families()
    latency = families.histogram("x_latency_seconds", "Latency.", ("k",), bounds=(0.001, 0.01))
    latency.add_buckets(("a",), (3, 1, 2), 0.5)
    latency.add_buckets(("a",), (0, 1, 0), 0.002)
    latency.observe(("a",), 0.01)  # on a bound: in it (le)
    latency.touch(("b",))
    (metric,) = list(families.collect())
    got = {(s.name, s.labels.get("k"), s.labels.get("le")): s.value for s in metric.samples}
    assert got[("x_latency_seconds_bucket", "a", "0.001")] == 3
    assert got[("x_latency_seconds_bucket", "a", "0.01")] == 6
    assert got[("x_latency_seconds_bucket", "a", "+Inf")] == 8
    assert got[("x_latency_seconds_count", "a", None)] == 8
    assert got[("x_latency_seconds_sum", "a", None)] == pytest.approx(0.512)
    assert got[("x_latency_seconds_count", "b", None)] == 0
    with pytest.raises(ValueError, match="3 bucket counts"):
        latency.add_buckets(("a",), (1, 2), 0.1)
    copies = families.counter("x_copies_total", "Copies.", ("k",))
    with pytest.raises(ValueError, match="cannot go down"):
        copies.add(("a",), -1)


def test_label_values_are_capped() -> None:
    kernels = BoundedValues(limit=2)
    assert [kernels(v) for v in ("6.8", "5.10", "4.19", "6.8")] == ["6.8", "5.10", OTHER, "6.8"]
    pairs = BoundedPairs(limit=1)
    assert pairs("6.8", "idle") == ("6.8", "idle")
    assert pairs("5.10", "idle") == (OTHER, OTHER)


@pytest.mark.parametrize(("text", "port"), [("9464", 9464), ("0", 0), ("off", None)])
def test_metrics_port_option(text: str, port: int | None) -> None:
    assert parse_metrics_port(text) == port


@pytest.mark.parametrize("text", ["70000", "-1", "none", ""])
def test_metrics_port_option_refuses(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"0 … 65535 or 'off'"):
        parse_metrics_port(text)


def test_no_exporter_unless_asked() -> None:
    assert ServerConfig().metrics_port is None
