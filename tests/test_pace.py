"""Paced runs (issue 8): ``pace=F`` holds a run to F simulated seconds per wall second.

The properties: the result is the one an unpaced run gives; simulated time never runs
ahead of the wall clock times the pace (progress events arrive as a machine would make
them); a paced run stops promptly when cancelled; an invalid pace is one line naming it.
The bounds checked are the ones sleeping guarantees (never ahead of the clock), not speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cowsim.sim import InvalidInput, ProgressEvent, check_pace, parse_spec, run
from cowsim.sim.driver import PACED_SLICE_WALL_SECONDS

SPEC = """
name: paced
duration: 0.6s
seed: 5
machine: {cpus: 4}
processes:
  - name: server
    memory: 4MiB
    threads: 2
    workloads:
      - kind: forking_server
        requests: {rate: 5k/s, write_fraction: 0.5}
        fork: {mode: periodic, every: 200ms}
"""


def _stable(outcome: dict[str, object]) -> str:
    return json.dumps(dict(outcome, wall_seconds=None), sort_keys=True)


def test_a_paced_run_gives_the_unpaced_result_and_never_runs_ahead_of_the_clock() -> None:
    spec = parse_spec(SPEC)
    pace = 2.0  # 0.6 s simulated in at least 0.3 s of wall time
    seen: list[tuple[float, float]] = []  # (wall seconds since the call, simulated seconds)
    started = time.monotonic()

    def progress(event: ProgressEvent) -> None:
        seen.append((time.monotonic() - started, event.sim_seconds))

    paced = run(spec, kernel="6.8", progress=progress, pace=pace)
    wall = time.monotonic() - started
    assert _stable(paced) == _stable(run(spec, kernel="6.8"))
    assert paced["metrics"]["cow_copies_total"] > 0
    assert wall >= spec.duration / pace
    assert seen
    assert seen[-1][1] == pytest.approx(spec.duration)
    for elapsed, sim_seconds in seen:  # the pacer sleeps until the clock catches up
        assert sim_seconds <= pace * elapsed + 1e-9


def test_slow_motion_cuts_slices_to_a_quarter_second_of_wall_time() -> None:
    """At pace 0.01 a 0.1 s slice would take 10 s: progress and cancellation come at least
    every PACED_SLICE_WALL_SECONDS instead, so a cancel is answered at the next slice."""
    spec = parse_spec(SPEC)
    events: list[ProgressEvent] = []
    started = time.monotonic()
    outcome = run(spec, kernel="6.8", progress=events.append, pace=0.01,
                  cancel=lambda: len(events) >= 2)
    assert outcome["status"] == "cancelled"
    assert len(events) == 2
    assert events[0].sim_seconds == pytest.approx(0.01 * PACED_SLICE_WALL_SECONDS)
    assert time.monotonic() - started < 30  # not the 60 s the whole run would take


@pytest.mark.parametrize("pace", [0, -1, float("nan"), float("inf"), 1e-4, 1e7, "2", True])
def test_an_invalid_pace_is_refused_naming_it(pace: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_pace(pace)
    assert caught.value.path == ("pace",)
    with pytest.raises(InvalidInput):
        run(parse_spec(SPEC), pace=pace)  # type: ignore[arg-type]


def test_cli_pace(tmp_path: Path) -> None:
    spec = tmp_path / "paced.yaml"
    spec.write_text(SPEC)
    cli = [sys.executable, "-m", "cowsim.clients.cli", "run", str(spec), "--kernel", "6.8", "--json"]
    done = subprocess.run([*cli, "--pace", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["wall_seconds"] >= 0.2
    bad = subprocess.run([*cli, "--pace", "nan"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("cowsim: --pace: ")
