"""A run's timeline stays bounded: long runs are thinned evenly, the totals stay exact."""

from __future__ import annotations

import numpy as np

from cowsim.sim import parse_spec, run
from cowsim.sim.timeline import MAX_POINTS

SPEC = """
name: fine-timeline
duration: 3s
seed: 2
metrics_interval: 1ms
processes:
  - name: server
    memory: 2MiB
    workloads:
      - kind: forking_server
        requests: {rate: 2k/s, write_fraction: 0.5}
        fork: {mode: periodic, every: 0.5s, snapshot: {scan_rate: 64MiB/s}}
"""


def test_a_fine_interval_is_thinned_evenly_and_ends_on_the_totals() -> None:
    result = run(parse_spec(SPEC))
    series = result["series"]
    timeline = series["timeline"]
    times = np.array(timeline["t"])
    assert MAX_POINTS <= times.size <= 2 * MAX_POINTS  # 3,000 samples at 1 ms, thinned
    steps = np.diff(times[:-1])  # the last instant is the run's end, whatever the stride
    assert np.allclose(steps, steps[0])
    assert steps[0] > series["interval"]
    metrics = result["metrics"]
    assert timeline["counters"]["cow_copies"][-1] == metrics["cow_copies_total"] > 0
    assert timeline["counters"]["page_faults"][-1] == metrics["page_faults_total"]
    for name, histogram in timeline["histograms"].items():
        assert len(histogram["buckets"]) == times.size
        assert histogram["buckets"][-1][-1] == metrics["histograms"][name]["count"], name
    for points in series["run"].values():
        assert len(points["t"]) <= MAX_POINTS
        assert points["t"][-1] == max(points["t"])
