"""The run contract (sim/run.py): progress deltas, cancellation, determinism, shortcuts, errors."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from cowsim.sim.driver import (
    WORKLOAD_COUNTERS,
    ProgressEvent,
    build,
    drive,
    result,
    run,
    simulate,
)
from cowsim.sim.errors import InvalidInput
from cowsim.sim.estimate import WORKLOAD_ESTIMATORS
from cowsim.sim.live import BOUNDS_SECONDS
from cowsim.sim.spec import json_schema, parse_spec
from cowsim.sim.workloads import kinds

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "workloads"

SPEC = """
name: contract
duration: 0.5s
seed: 3
machine: {cpus: 4}
processes:
  - name: server
    memory: 8MiB
    threads: 2
    workloads:
      - kind: forking_server
        requests: {rate: 20k/s, write_fraction: 0.6}
        fork: {mode: periodic, every: 100ms, snapshot: {scan_rate: 64MiB/s}}
  - name: db
    memory: 4MiB
    workloads:
      - kind: direct_io
        buffer: 1MiB
        iodepth: 4
        device_latency: 200us
        write_during_io: 0.3
      - kind: checkpointer
        target: db
        interval: 50ms
"""


def _stable(outcome: dict[str, object]) -> str:
    return json.dumps(dict(outcome, wall_seconds=None), sort_keys=True)


def test_progress_deltas_sum_to_the_final_counters() -> None:
    spec = parse_spec(SPEC)
    events: list[ProgressEvent] = []
    sim, _wall = simulate(spec, kernel="5.10", progress=events.append)
    assert len(events) >= 100
    assert events[-1].sim_seconds == pytest.approx(0.5)
    assert all(b.sim_seconds > a.sim_seconds for a, b in pairwise(events))
    assert all(b.events_processed >= a.events_processed for a, b in pairwise(events))
    totals: dict[str, float] = {}
    for event in events:
        for name, amount in event.counters.items():
            assert amount != 0
            totals[name] = totals.get(name, 0) + amount
    kernel_counters = {name: value for name, value in sim.kernel.counters.items() if value}
    assert {name: totals[name] for name in kernel_counters} == kernel_counters
    assert totals["cow_copies"] > 0
    machine = sim.machine.counters
    assert totals.get("tlb_shootdowns", 0) == machine.tlb_shootdowns > 0
    assert totals.get("tlb_ipis", 0) == machine.tlb_ipis
    assert totals["tlb_misses"] == pytest.approx(machine.tlb_misses)
    for name in WORKLOAD_COUNTERS:
        assert totals.get(name, 0) == sim.recorder.counter(name)
    assert set(totals) - set(kernel_counters) <= {"tlb_shootdowns", "tlb_ipis", "tlb_misses",
                                                  *WORKLOAD_COUNTERS}


def test_live_histogram_deltas_add_up_to_the_recorded_histograms() -> None:
    spec = parse_spec(SPEC)
    events: list[ProgressEvent] = []
    sim, _wall = simulate(spec, kernel="6.8", progress=events.append)
    outcome = result(sim, wall_seconds=None)
    counts: dict[str, int] = {}
    sums: dict[str, float] = {}
    buckets: dict[str, np.ndarray] = {}
    for event in events:
        for name, delta in event.histograms.items():
            assert len(delta.bucket_counts) == len(BOUNDS_SECONDS) + 1
            assert sum(delta.bucket_counts) == delta.count > 0
            assert delta.cumulative()[-1] == delta.count
            counts[name] = counts.get(name, 0) + delta.count
            sums[name] = sums.get(name, 0.0) + delta.sum_seconds
            buckets[name] = buckets.get(name, 0) + np.array(delta.bucket_counts)
    recorded = outcome["metrics"]["histograms"]
    with_buckets = sim.recorder.to_dict(include_buckets=True)["histograms"]
    assert {"request_latency_seconds", "fault_latency_seconds", "fork_pause_seconds",
            "io_latency_seconds", "checkpoint_duration_seconds"} <= set(counts)
    for name, summary in recorded.items():
        assert counts.get(name, 0) == summary["count"], name
        assert sums[name] == pytest.approx(summary["sum"], rel=1e-6), name
        # the live buckets are the recorder's own Prometheus buckets (exact at this size)
        assert np.cumsum(buckets[name]).tolist() == \
            [*with_buckets[name]["buckets"]["cumulative_counts"], summary["count"]], name


def test_same_spec_and_seed_are_byte_identical_with_or_without_listeners() -> None:
    spec = parse_spec(SPEC)
    quiet = run(spec)
    listened = run(spec, progress=lambda _event: None, cancel=lambda: False)
    assert _stable(quiet) == _stable(listened)
    assert quiet["status"] == "completed"


def test_cancellation_stops_within_one_slice_and_says_so() -> None:
    spec = parse_spec(SPEC.replace("duration: 0.5s", "duration: 20s"))
    seen: list[float] = []

    def cancel() -> bool:
        return bool(seen) and seen[-1] >= 1.0

    outcome = run(spec, progress=lambda event: seen.append(event.sim_seconds), cancel=cancel)
    assert outcome["status"] == "cancelled"
    assert 1.0 <= outcome["sim_seconds"] <= 1.0 + 0.1 + 1e-9  # one slice is at most 0.1 s
    assert outcome["sim_seconds"] == seen[-1]


SHORTENED = {  # example → the edits that keep it short
    "redis-snapshot.yaml": (("memory: 16GiB", "memory: 64MiB"), ("duration: 30s", "duration: 3s")),
    "prefork-web.yaml": (("duration: 10s", "duration: 1s"),),
    "db-odirect-checkpoint.yaml": (("duration: 10s", "duration: 1.5s"),),
    "rdma-fork.yaml": (("duration: 5s", "duration: 1s"),),
    "rdma-uffd-snapshot.yaml": (("duration: 3s", "duration: 1.2s"),),
}


@pytest.mark.parametrize("example", sorted(SHORTENED))
def test_shortcuts_change_nothing(example: str) -> None:
    """The skipped work (unchanged samples, steady-state ticks) gives the plain path's result,
    series included, on every example."""
    text = (EXAMPLES / example).read_text()
    for old, new in SHORTENED[example]:
        assert old in text
        text = text.replace(old, new)
    spec = parse_spec(text)
    kernel = "5.10" if "rdma" in example or "odirect" in example else "6.8"
    fast, _ = simulate(spec, kernel=kernel)
    plain, _ = simulate(spec, kernel=kernel, shortcuts=False)
    assert _stable(result(fast, None)) == _stable(result(plain, None))
    for process in spec.processes:
        for name in ("shared_pages", "exclusive_pages"):
            times_fast, values_fast = fast.recorder.series(name, process=process.name)
            times_plain, values_plain = plain.recorder.series(name, process=process.name)
            assert np.array_equal(times_fast, times_plain)
            assert np.array_equal(values_fast, values_plain)
            assert values_fast.size >= 1


def test_two_direct_io_processes_hold_separate_references() -> None:
    """Held-reference ids are global in the kernel; two processes doing O_DIRECT each must
    not collide (they once raised KernelOpError, re-raised by simpy as a TypeError)."""
    spec = parse_spec("""
name: two-dio
duration: 0.2s
processes:
  - name: a
    memory: 2MiB
    workloads: [{kind: direct_io, buffer: 1MiB, iodepth: 4, device_latency: 100us}]
  - name: b
    memory: 2MiB
    workloads: [{kind: direct_io, buffer: 1MiB, iodepth: 4, device_latency: 100us}]
""")
    outcome = run(spec)
    completed = {p["name"]: p["metrics"]["counters"]["io_completed"] for p in outcome["processes"]}
    assert completed["a"] > 100
    assert completed["b"] > 100


def test_a_kernel_error_inside_a_workload_names_the_workload() -> None:
    spec = parse_spec(SPEC)
    sim = build(spec)
    sim.kernel.mprotect("db", "heap", "r")  # the direct I/O's GUP for write now fails: EFAULT
    with pytest.raises(InvalidInput) as caught:
        drive(sim)
    error = caught.value
    assert error.field.startswith("processes[1].workloads[0]")
    assert "EFAULT" in str(error)


def test_every_workload_kind_has_a_starter_an_estimator_and_a_spec_model() -> None:
    """Adding a workload means a spec model, a registered starter and an estimator: none of
    the three may be missing."""
    schema = json_schema()
    spec_kinds = {definition["properties"]["kind"]["const"]
                  for definition in schema["$defs"].values()
                  if "kind" in definition.get("properties", {})}
    assert set(kinds()) == set(WORKLOAD_ESTIMATORS) == spec_kinds
    assert len(spec_kinds) >= 4
