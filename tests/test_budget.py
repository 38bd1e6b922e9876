"""The up-front budget: what cannot finish is refused with its estimate; what is accepted fits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cowsim.sim import simulate
from cowsim.sim.budget import ENVIRONMENT, Budget, available_memory_bytes
from cowsim.sim.errors import BudgetExceeded, InvalidInput
from cowsim.sim.kernel import all_generations, generation_for
from cowsim.sim.plan import plan_run
from cowsim.sim.scenario import Scenario, ScenarioError, parse_scenario, run_scenario
from cowsim.sim.scenario.capacity import LRU_SLACK_FRAMES, scenario_footprint
from cowsim.sim.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = sorted((ROOT / "examples" / "workloads").glob("*.yaml"))
SCENARIOS = sorted((ROOT / "examples" / "scenarios").glob("*.yaml"))
GiB = 1 << 30


def bench_spec() -> str:
    text = (ROOT / "bench" / "bench_workloads.py").read_text()
    return text.split('REDIS = """')[1].split('"""')[0]


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.name)
def test_every_example_spec_is_accepted(path: Path) -> None:
    plan = plan_run(load_spec(path), source=str(path), budget=Budget())
    assert plan.max_frames == plan.estimate.frames


def test_the_benchmark_spec_is_accepted() -> None:
    spec = parse_spec(bench_spec().format(memory="64GiB"), "bench.yaml")
    plan = plan_run(spec, budget=Budget())
    assert plan.estimate.memory_bytes < 4 * GiB
    assert plan.max_frames >= 2 * (64 * GiB // 4096)  # the resident set and a snapshot child


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_example_scenario_runs_within_its_bound(path: Path) -> None:
    scenario = parse_scenario(path.read_text(), str(path))
    for generation in all_generations():
        result = run_scenario(scenario, generation, str(path))
        assert result.frames_peak <= result.max_frames


def test_environment_variables_override_the_defaults() -> None:
    env = {ENVIRONMENT["max_events"]: "5M", ENVIRONMENT["max_memory_bytes"]: "2GiB",
           ENVIRONMENT["max_frames"]: "1M"}
    budget = Budget.from_env(env)
    assert (budget.max_events, budget.max_memory_bytes, budget.max_frames) == (
        5_000_000, 2 * GiB, 1_000_000)
    assert budget.memory_limit_bytes() <= 2 * GiB
    assert Budget.from_env({}) == Budget()
    with pytest.raises(InvalidInput) as caught:
        Budget.from_env({ENVIRONMENT["max_events"]: "lots"})
    assert caught.value.source == "COWSIM_MAX_EVENTS"
    assert Budget(max_events=10).tightened(Budget(max_memory_bytes=GiB)) == Budget(
        max_events=10, max_memory_bytes=GiB)


def test_a_thousand_hours_is_refused_with_the_estimate() -> None:
    text = (ROOT / "examples" / "workloads" / "redis-snapshot.yaml").read_text()
    spec = parse_spec(text.replace("duration: 30s", "duration: 1000h"), "r.yaml")
    with pytest.raises(BudgetExceeded) as caught:
        plan_run(spec, source="r.yaml", budget=Budget())
    assert caught.value.path == ("duration",)
    assert "3.6e9 ticks of 1 ms over 1000 h" in str(caught.value)
    assert "COWSIM_MAX_EVENTS" in str(caught.value)


def test_per_tick_arrays_are_bounded() -> None:
    text = (ROOT / "examples" / "workloads" / "redis-snapshot.yaml").read_text()
    spec = parse_spec(text.replace("rate: 50k/s", "rate: 1G/s").replace("seed: 1", "seed: 1\ntick: 1s"),
                      "r.yaml")
    with pytest.raises(BudgetExceeded) as caught:
        plan_run(spec, source="r.yaml", budget=Budget())
    assert caught.value.field == "processes[0].workloads[0].requests.rate"
    assert "1e9 in a tick" in str(caught.value)


def test_held_references_count_pinning_256_gib_eight_times() -> None:
    pins = "".join(f"  - {{op: pin, proc: p, region: r, id: i{n}}}\n" for n in range(8))
    text = ("name: pins\nsteps:\n  - {op: mmap, proc: p, region: r, pages: 67108864}\n"
            "  - {op: write, proc: p, region: r, value: 1}\n" + pins)
    scenario = Scenario.model_validate(yaml.safe_load(text))
    with pytest.raises(BudgetExceeded) as caught:
        scenario_footprint(scenario, budget=Budget(max_memory_bytes=8 * GiB), file="pins.yaml")
    error = caught.value
    assert error.op == "pin"
    assert error.step is not None
    assert error.step >= 2
    assert "held" in error.message
    whole = scenario_footprint(scenario)
    assert whole.memory_bytes > 8 * 12 * 67108864  # eight 256 GiB pins: 12 bytes per held page


def test_at_the_frame_limit_the_write_is_refused_up_front() -> None:
    text = ("name: edge\nsteps:\n  - {op: mmap, proc: p, region: r, pages: 1048576}\n"
            "  - {op: write, proc: p, region: r, value: 1}\n")
    with pytest.raises(BudgetExceeded) as caught:
        scenario_footprint(Scenario.model_validate(yaml.safe_load(text)),
                           budget=Budget(max_frames=1048576), file="edge.yaml")
    assert (caught.value.step, caught.value.op) == (1, "write")
    assert "page frames" in caught.value.message


def test_accepted_at_the_limit_means_it_runs() -> None:
    text = ("name: edge\nsteps:\n  - {op: mmap, proc: p, region: r, pages: 4096}\n"
            "  - {op: write, proc: p, region: r, value: 1}\n  - {op: fork, proc: p, child: c}\n"
            "  - {op: pin, proc: p, region: r, id: i}\n  - {op: write, proc: p, region: r, value: 2}\n"
            "  - {op: write, proc: c, region: r, value: 3}\n")
    scenario = Scenario.model_validate(yaml.safe_load(text))
    exact = scenario_footprint(scenario).frames
    for generation in all_generations():
        result = run_scenario(scenario, generation, budget=Budget(max_frames=exact))
        assert result.max_frames == exact
        assert result.frames_peak <= exact - LRU_SLACK_FRAMES
    with pytest.raises(BudgetExceeded):
        run_scenario(scenario, generation_for("6.8"), budget=Budget(max_frames=exact - 2))


_ops = st.sampled_from(["write", "read", "fork", "exit", "munmap", "mprotect_r", "mprotect_rw",
                        "pageout", "dontneed", "clear_refs", "pin", "gup", "vmsplice", "release",
                        "odirect_read", "uffd", "lru_drain", "mmap"])


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    steps: list[dict[str, object]] = [{"op": "mmap", "proc": "p0", "region": "a",
                                       "pages": draw(st.integers(1, 8)),
                                       "shared": draw(st.booleans())}]
    procs = ["p0"]
    children = 0
    for _ in range(draw(st.integers(1, 14))):
        op = draw(_ops)
        proc = draw(st.sampled_from(procs))
        pages = draw(st.one_of(st.none(), st.just(0), st.just("0-1")))
        base: dict[str, object] = {"proc": proc, "region": "a"}
        if pages is not None:
            base["pages"] = pages
        if op == "fork":
            children += 1
            procs.append(f"c{children}")
            steps.append({"op": "fork", "proc": proc, "child": f"c{children}"})
        elif op in ("write", "read"):
            steps.append({"op": op, **base, **({"value": 7} if op == "write" else {})})
        elif op in ("mprotect_r", "mprotect_rw"):
            steps.append({"op": "mprotect", "proc": proc, "region": "a", "prot": op[-2:].strip("_")})
        elif op in ("pageout", "dontneed"):
            steps.append({"op": "madvise", **base, "advice": op})
        elif op == "clear_refs":
            steps.append({"op": "clear_refs", "proc": proc})
        elif op in ("pin", "gup", "odirect_read"):
            steps.append({"op": op, **base, "id": f"i{len(steps)}"})
        elif op == "vmsplice":
            steps.append({"op": op, **base, "pipe": "q"})
        elif op == "uffd":
            steps.append({"op": "uffd_register", "proc": proc, "region": "a"})
            steps.append({"op": "uffd_wp", **base, "protect": True})
        elif op == "release":
            held = [s["id"] for s in steps if "id" in s and s["op"] != "release"]
            if held:
                steps.append({"op": "release", "id": draw(st.sampled_from(held))})
        elif op == "lru_drain":
            steps.append({"op": "lru_drain"})
        elif op in ("exit", "munmap") and proc != "p0":
            steps.append({"op": op, "proc": proc, **({"region": "a"} if op == "munmap" else {})})
    return Scenario.model_validate({"name": "random", "steps": steps})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_the_frames_bound_holds_on_every_generation(scenario: Scenario) -> None:
    for generation in all_generations():
        steps = list(scenario.steps)
        while steps:
            candidate = Scenario(name="random", steps=steps)
            try:
                result = run_scenario(candidate, generation)
            except BudgetExceeded:  # a CapacityError: the bound was wrong
                raise
            except ScenarioError as refused:  # the kernel refused a step: check the steps before
                steps = steps[:refused.step if refused.step is not None else 0]
                continue
            bound = result.max_frames - LRU_SLACK_FRAMES
            assert result.frames_peak <= bound + generation.lru_batch_pages
            break


def test_spec_runs_stay_within_the_planned_frames() -> None:
    text = (ROOT / "examples" / "workloads" / "prefork-web.yaml").read_text()
    spec = parse_spec(text.replace("duration: 10s", "duration: 1s").replace("memory: 1GiB",
                                                                            "memory: 64MiB"), "p.yaml")
    plan = plan_run(spec, budget=Budget())
    sim, _wall = simulate(spec, kernel=plan.kernel, seed=plan.seed, max_frames=plan.max_frames)
    assert sim.kernel.frames.max_frames == plan.max_frames
    assert sim.kernel.frames.nr_used - 1 <= plan.max_frames


def test_this_process_limits_bound_the_memory() -> None:
    code = ("import resource; from cowsim.sim.budget import available_memory_bytes as a; "
            "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.RLIM_INFINITY)); print(a())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    assert 0 < int(out) < 3 << 30
    assert available_memory_bytes() > 0
