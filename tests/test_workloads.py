"""The machine and the workloads against hand-computed values and closed forms."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cowsim.sim.driver import PAGE_SIZE, build, run
from cowsim.sim.spec import parse_spec
from cowsim.sim.workloads.forking_server import Server, first_occurrences, lindley_finish

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "workloads"
ALL_KERNELS = ["5.4", "5.8", "5.10", "5.15", "5.18", "6.1", "6.8"]


def small_spec(pages: int = 1000, threads: int = 1, cpus: int = 8, extra: str = "",
               duration: str = "10ms") -> str:
    return f"""
name: small
duration: {duration}
machine: {{cpus: {cpus}}}
processes:
  - name: server
    memory: {pages * PAGE_SIZE}
    threads: {threads}
{extra}
"""


def forked_server(kernel: str, pages: int = 1000, threads: int = 1):  # type: ignore[no-untyped-def]
    spec = parse_spec(small_spec(pages, threads) + """
    workloads:
      - kind: forking_server
        requests: {rate: 1/s}
""")
    sim = build(spec, kernel=kernel)
    server = Server(sim, "server", spec.processes[0].workloads[0])  # type: ignore[arg-type]
    return sim, server


@pytest.mark.parametrize("kernel", ALL_KERNELS)
def test_fork_then_100_distinct_writes_copy_100_pages(kernel: str) -> None:
    sim, server = forked_server(kernel)
    server.fork(0.0, child_lifetime=10.0, dirty_pages=0)
    pages = np.random.default_rng(5).choice(1000, 100, replace=False)
    sim.call("server", sim.kernel.write, "server", "heap", pages, 9)
    assert sim.kernel.counters["cow_copies"] == 100
    assert sim.kernel.counters["cow_copies_fork"] == 100


@pytest.mark.parametrize("kernel", ["5.4", "6.8"])
def test_fork_pause_is_fixed_plus_per_pte(kernel: str) -> None:
    sim, server = forked_server(kernel)
    resumed = server.fork(0.0, child_lifetime=1.0, dirty_pages=0)
    costs = sim.costs
    expected = (costs.fork_fixed_ns + costs.fork_per_pte_ns * 1000) * 1e-9
    assert resumed == pytest.approx(expected, rel=1e-12)
    assert sim.recorder.summary("fork_pause_seconds")["max"] == pytest.approx(expected, rel=1e-12)


def test_single_threaded_process_sends_no_ipis() -> None:
    sim, server = forked_server("6.8", threads=1)
    server.fork(0.0, child_lifetime=10.0, dirty_pages=0)
    sim.call("server", sim.kernel.write, "server", "heap", np.arange(50), 3)
    assert sim.kernel.counters["tlb_flushes"] == 51  # the fork's flush_tlb_mm + 50 COW copies
    assert sim.machine.counters.tlb_ipis == 0
    assert sim.machine.counters.tlb_shootdowns == 0


def test_threads_on_8_cpus_send_7_ipis_per_whole_mm_flush() -> None:
    sim, server = forked_server("6.8", threads=8)
    assert len(sim.kernel.procs["server"].mm.cpus) == 8
    server.fork(0.0, child_lifetime=10.0, dirty_pages=0)
    assert sim.kernel.counters["tlb_flushes_mm"] == 1
    assert sim.machine.counters.tlb_ipis == 7
    pause = sim.recorder.summary("fork_pause_seconds")["max"]
    costs = sim.costs
    base = (costs.fork_fixed_ns + costs.fork_per_pte_ns * 1000) * 1e-9
    assert pause == pytest.approx(base + costs.shootdown_ns(7) * 1e-9, rel=1e-12)
    assert (sim.machine.owed_ns[sorted(sim.kernel.procs["server"].mm.cpus - {0})]
            == costs.ipi_receiver_ns).all()


def test_lindley_recursion_matches_a_step_by_step_queue() -> None:
    rng = np.random.default_rng(3)
    arrivals = np.sort(rng.random(200))
    service = rng.exponential(0.004, 200)
    finish = lindley_finish(arrivals, service, free_at=0.05)
    free = 0.05
    for arrival, work, got in zip(arrivals, service, finish, strict=True):
        free = max(free, arrival) + work
        assert got == pytest.approx(free, rel=1e-12)


def test_copied_pages_follow_the_closed_form() -> None:
    """After a fork, T seconds of uniform random writes at W pages/s over N pages copy
    N·(1 − exp(−W·T/N)) pages: P·(1 − exp(−W·T/N)) bytes per page (cost-model.md §4)."""
    pages, rate, seconds = 20_000, 40_000.0, 0.5
    spec = parse_spec(small_spec(pages, duration=f"{seconds}s") + f"""
    workloads:
      - kind: forking_server
        requests: {{rate: {rate:g}/s, write_fraction: 1.0, service: 1us}}
        fork: {{mode: periodic, first_at: 0s, every: 1000s, snapshot: {{scan_rate: 1KiB/s}}}}
""")
    result = run(spec, kernel="6.8")
    copies = result["metrics"]["cow_copies_total"]
    writes = result["processes"][0]["metrics"]["counters"]["requests"]
    expected = pages * (1 - math.exp(-writes / pages))
    # Occupancy variance: N·e^{-λ}(1 − (1+λ)e^{-λ}) with λ = writes/N.
    lam = writes / pages
    sigma = math.sqrt(pages * math.exp(-lam) * (1 - (1 + lam) * math.exp(-lam)))
    assert abs(copies - expected) < 5 * sigma + 1
    assert abs(writes - rate * seconds) < 5 * math.sqrt(rate * seconds)


@pytest.mark.parametrize(("kernel", "loses"), [("5.10", True), ("5.15", True), ("6.8", False)])
def test_checkpointed_odirect_database_loses_reads(kernel: str, loses: bool) -> None:
    spec = parse_spec((EXAMPLES / "db-odirect-checkpoint.yaml").read_text()
                      .replace("duration: 10s", "duration: 3s"))
    result = run(spec, kernel=kernel)
    lost = result["metrics"]["dma_lost_writes_total"]
    assert (lost > 0) is loses
    if loses:
        assert result["metrics"]["pin_diverged_total"] > 0


@pytest.mark.parametrize(("kernel", "breaks"), [("5.4", True), ("5.8", True), ("5.10", False),
                                                ("6.8", False)])
def test_rdma_buffer_with_fork(kernel: str, breaks: bool) -> None:
    spec = parse_spec((EXAMPLES / "rdma-fork.yaml").read_text().replace("duration: 5s",
                                                                        "duration: 1s"))
    metrics = run(spec, kernel=kernel)["metrics"]
    broken = metrics["dma_lost_writes_total"] + metrics["stale_pin_reads_total"]
    assert (broken > 0) is breaks


def test_same_spec_and_seed_give_byte_identical_results() -> None:
    spec = parse_spec((EXAMPLES / "prefork-web.yaml").read_text().replace("duration: 10s",
                                                                          "duration: 0.5s"))
    first = dict(run(spec), wall_seconds=None)
    second = dict(run(spec), wall_seconds=None)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    other_seed = dict(run(spec, seed=99), wall_seconds=None)
    assert json.dumps(other_seed, sort_keys=True) != json.dumps(first, sort_keys=True)


def test_result_has_the_interface_keys() -> None:
    spec = parse_spec((EXAMPLES / "redis-snapshot.yaml").read_text()
                      .replace("memory: 16GiB", "memory: 64MiB").replace("duration: 30s",
                                                                         "duration: 6s"))
    result = run(spec)
    for key in ("kernel", "seed", "sim_seconds", "wall_seconds", "metrics", "processes"):
        assert key in result
    metrics = result["metrics"]
    for key in ("cow_copies_total", "cow_copies_by_cause", "wp_reuses_total", "page_faults_total",
                "tlb_shootdowns_total", "tlb_ipis_total", "tlb_misses_total",
                "dma_lost_writes_total", "leaks_total", "stale_pin_reads_total",
                "memory_peak_bytes"):
        assert key in metrics
    assert set(metrics["fork_pause_seconds"]) == {"p50", "p99", "max"}
    assert set(metrics["request_latency_seconds"]) == {"p50", "p90", "p99", "p999", "max"}
    assert metrics["fork_pause_seconds"]["max"] > 0
    assert metrics["cow_copies_total"] > 0
    assert result["sim_seconds"] == pytest.approx(6.0)
    assert result["processes"][0]["name"] == "redis"


@pytest.mark.parametrize(("kernel", "breaks"), [("5.4", False), ("5.10", True), ("5.18", True),
                                                ("6.1", False), ("6.8", False)])
def test_uffd_wp_snapshot_of_a_pinned_buffer(kernel: str, breaks: bool) -> None:
    spec = parse_spec((EXAMPLES / "rdma-uffd-snapshot.yaml").read_text()
                      .replace("duration: 3s", "duration: 1.2s"))
    metrics = run(spec, kernel=kernel)["metrics"]
    assert metrics["page_faults_by_type"]["uffd_wp"] > 0
    broken = metrics["dma_lost_writes_total"] + metrics["stale_pin_reads_total"]
    assert (broken > 0) is breaks
    assert (metrics["pin_diverged_total"] > 0) is breaks


@pytest.mark.parametrize(("kernel", "leaks"), [("5.4", True), ("5.8", True), ("6.8", False)])
def test_pinned_dma_into_a_frame_a_forked_helper_maps_is_a_leak(kernel: str, leaks: bool) -> None:
    """The device's DMA goes through Kernel.dma_write, so the leak oracle sees it: without the
    5.9 early copy at fork, the parent's next write copies a pinned page away, the pinned frame
    stays mapped by the helper, and the device's data lands in the helper's memory."""
    spec = parse_spec((EXAMPLES / "rdma-fork.yaml").read_text().replace("duration: 5s",
                                                                        "duration: 1s"))
    outcome = run(spec, kernel=kernel)
    metrics = outcome["metrics"]
    assert (metrics["leaks_total"] > 0) is leaks
    if leaks:
        leak = next(v for v in outcome["violations"] if v["kind"] == "leak")
        assert "device via id" in leak["detail"]
        assert ".helper" in leak["detail"]


@given(st.lists(st.integers(0, 40), max_size=200))
def test_first_occurrences_is_numpy_unique_with_indices(values: list[int]) -> None:
    array = np.array(values, dtype=np.int64)
    unique, first = first_occurrences(array)
    expected_unique, expected_first = np.unique(array, return_index=True)
    assert unique.tolist() == expected_unique.tolist()
    assert first.tolist() == expected_first.tolist()
