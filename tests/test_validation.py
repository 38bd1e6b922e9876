"""One validation path: every invalid input is an InvalidInput naming its source and field."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cowsim.sim import errors
from cowsim.sim.errors import InvalidInput, KernelVersionError
from cowsim.sim.inputs import MAX_NODES, read_text
from cowsim.sim.kernel import KernelVersionError as KernelPackageVersionError
from cowsim.sim.kernel.generations import (
    NEWEST_KNOWN_VERSION,
    generation_for,
    generations_for,
)
from cowsim.sim.kernel.generations import (
    KernelVersionError as GenerationsVersionError,
)
from cowsim.sim.plan import check_seed, plan_run
from cowsim.sim.scenario import ScenarioError, parse_scenario
from cowsim.sim.spec import MAX_SEED, SpecError, parse_spec
from cowsim.sim.units import parse_bytes, parse_rate, parse_seconds

SPEC = """
name: tiny
duration: 0.2s
seed: 4
machine: {cpus: 2}
processes:
  - name: server
    memory: 4MiB
    workloads:
      - kind: forking_server
        requests: {rate: 20k/s}
        fork: {mode: periodic, every: 50ms}
  - name: db
    memory: 4MiB
    workloads:
      - {kind: direct_io, mode: odirect, buffer: 1MiB}
      - {kind: checkpointer, target: server, interval: 100ms}
"""

SCENARIO = "name: x\nsteps:\n  - {op: mmap, proc: p, region: r, pages: 4}\n"


def spec_error(text: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        plan_run(parse_spec(text, "spec.yaml"), source="spec.yaml")
    return caught.value


def scenario_error(text: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_scenario(text, "s.yaml")
    return caught.value


def test_error_classes_are_one_type() -> None:
    assert issubclass(ScenarioError, InvalidInput)
    assert issubclass(SpecError, InvalidInput)
    assert KernelPackageVersionError is GenerationsVersionError is errors.KernelVersionError
    assert issubclass(errors.BudgetExceeded, InvalidInput)
    legacy = ScenarioError("f.yaml", "bad", step=3, op="write", field="pages")
    assert (legacy.path, legacy.source, legacy.op, legacy.file, legacy.reason) == (
        ("steps", 3, "pages"), "f.yaml", "write", "f.yaml", "bad")
    assert str(legacy) == "f.yaml: step 3 (write): field 'pages': bad"


@pytest.mark.parametrize(("edit", "path", "field"), [
    (("memory: 4MiB", "memory: 4 furlongs"), ("processes", 0, "memory"), "processes[0].memory"),
    (("rate: 20k/s", "rate: -5/s"), ("processes", 0, "workloads", 0, "requests", "rate"),
     "processes[0].workloads[0].requests.rate"),
    (("buffer: 1MiB", "buffer: 1MiB, device_latency: 0"),
     ("processes", 1, "workloads", 0, "device_latency"), "processes[1].workloads[0].device_latency"),
    (("interval: 100ms", "interval: 0"), ("processes", 1, "workloads", 1, "interval"),
     "processes[1].workloads[1].interval"),
    (("target: server", "target: nobody"), ("processes", 1, "workloads", 1, "target"),
     "processes[1].workloads[1].target"),
    (("every: 50ms", "every: 0"), ("processes", 0, "workloads", 0, "fork", "every"),
     "processes[0].workloads[0].fork.every"),
    (("seed: 4", "seed: 4\nmetrics_interval: 0"), ("metrics_interval",), "metrics_interval"),
    (("seed: 4", "seed: -1"), ("seed",), "seed"),
    (("seed: 4", f"seed: {MAX_SEED + 1}"), ("seed",), "seed"),
    (("duration: 0.2s", "duration: 1e400s"), ("duration",), "duration"),
    (("name: db", "name: server"), ("processes", 1, "name"), "processes[1].name"),
    (("cpus: 2", "cpus: 2, costs: {ipi_base_ns: .nan}"), ("machine", "costs", "ipi_base_ns"),
     "machine.costs.ipi_base_ns"),
    (("cpus: 2", "cpus: 2, costs: {nope_ns: 1}"), ("machine",), "machine"),
    (("cpus: 2", "cpus: 2, profile: nope"), ("machine", "profile"), "machine.profile"),
    (("seed: 4", "seed: 4\nkernel: '5.100'"), ("kernel",), "kernel"),
])
def test_spec_errors_carry_the_field_path(edit: tuple[str, str], path: tuple[object, ...],
                                          field: str) -> None:
    error = spec_error(SPEC.replace(*edit))
    assert error.path == path
    assert error.field == field
    assert error.source == "spec.yaml"
    assert str(error).startswith(f"spec.yaml: field '{field}': ")
    assert "(top level)" not in str(error)
    assert "forking_server." not in str(error)


@pytest.mark.parametrize(("text", "path", "op"), [
    (SCENARIO + "  - {op: write, proc: p, region: r, value: 1, pages: 99999999999999999999}",
     ("steps", 1, "pages"), "write"),
    (SCENARIO + "  - {op: write, proc: p, region: r, value: 1, pages: 1.5}", ("steps", 1, "pages"),
     "write"),
    (SCENARIO + "  - {op: pin, proc: p, region: r, id: i, pages: [0, x]}", ("steps", 1, "pages"),
     "pin"),
    (SCENARIO + "  - {op: expect, proc: p, region: r, value: big}", ("steps", 1, "value"), "expect"),
    (SCENARIO + "  - {op: gup, proc: p, region: r, id: i, write: 3}", ("steps", 1, "write"), "gup"),
    (SCENARIO + "  - {op: expect, expect: 1}", ("steps", 1, "expect"), "expect"),
    (SCENARIO + "  - {op: frobnicate}", ("steps", 1, "op"), "frobnicate"),
])
def test_scenario_errors_carry_step_and_field(text: str, path: tuple[object, ...], op: str) -> None:
    error = scenario_error(text)
    assert isinstance(error, ScenarioError)
    assert (error.path, error.op, error.step, error.source) == (path, op, 1, "s.yaml")
    assert str(error).startswith(f"s.yaml: step 1 ({op}): field '{path[2]}': ")
    assert ".int" not in str(error)
    assert "(top level)" not in str(error)


def test_a_selector_error_says_what_a_selector_may_be() -> None:
    error = scenario_error(SCENARIO + "  - {op: write, proc: p, region: r, value: 1, pages: {a: 1}}")
    assert "a page index like 3, a range like '0-15', a list like [0, 2, 5]" in error.message


def test_a_newline_inside_an_op_name_stays_on_one_line() -> None:
    error = scenario_error('name: x\nsteps:\n  - {op: "wr\\nite\\u202e", proc: p}\n')
    assert "\n" not in str(error)
    assert "wr\\nite\\u202e" in str(error)


def test_hostile_documents_are_refused_quickly(tmp_path: Path) -> None:
    laughs = "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdefg", "bcdefgh", strict=True))
    started = time.perf_counter()
    error = scenario_error(laughs)
    assert f"more than {MAX_NODES:,} values" in error.message
    assert "nested deeper" in scenario_error("[" * 200 + "]" * 200).message
    assert time.perf_counter() - started < 5
    with pytest.raises(InvalidInput, match="not a regular file"):
        read_text("/dev/zero")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (5 << 20))
    with pytest.raises(InvalidInput, match="larger than"):
        read_text(big)


def test_units_refuse_non_finite_and_huge_text() -> None:
    for parse in (parse_seconds, parse_rate):
        with pytest.raises(ValueError, match="finite"):
            parse("1e400")
    with pytest.raises(ValueError, match="finite"):
        parse_seconds("1e400s")
    started = time.perf_counter()
    with pytest.raises(ValueError, match="exponent"):
        parse_seconds("1e999999999s")
    with pytest.raises(ValueError, match="longer than"):
        parse_bytes("1" * 1000)
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize(("name", "fragment"), [
    ("5.100", "is not a Linux release (5.x ended at 5.19)"),
    ("4.21", "is not a Linux release"),
    ("latest", "is not a kernel version"),
    ("3.10", "older than 4.0"),
    ("6.19", "newer than 6.18, the newest release cowsim knows"),
    ("7.0", "use 6.18 or era E"),
])
def test_kernel_names_must_be_real_releases(name: str, fragment: str) -> None:
    with pytest.raises(KernelVersionError) as caught:
        generation_for(name)
    assert fragment in str(caught.value)
    assert caught.value.path == ()


def test_kernel_errors_list_what_is_valid() -> None:
    with pytest.raises(KernelVersionError) as caught:
        generations_for("latest")
    message = caught.value.message
    for valid in ("4.0–4.20", "5.0–5.19", "6.0–6.18", "A'", "C'", "aa-mapcount", "'all'"):
        assert valid in message
    assert f"6.{NEWEST_KNOWN_VERSION[1]}" in message
    assert generation_for("6.18").era == "E"
    assert generation_for("4.20").era == "A"
    assert generation_for("5.10.200").version == (5, 10)
    assert [g.era for g in generations_for("all")] == ["A", "A'", "B", "C", "C'", "D", "E"]


def test_override_errors_have_no_source_and_spec_errors_do() -> None:
    spec = parse_spec(SPEC, "spec.yaml")
    with pytest.raises(KernelVersionError) as caught:
        plan_run(spec, kernel="5.100", source="spec.yaml")
    assert (caught.value.path, caught.value.source) == (("kernel",), None)
    assert str(caught.value.within(source="--kernel")).startswith("--kernel: field 'kernel': ")
    with pytest.raises(InvalidInput) as seed:
        plan_run(spec, seed=-1)
    assert seed.value.path == ("seed",)
    assert check_seed(MAX_SEED) == MAX_SEED
    with pytest.raises(InvalidInput):
        check_seed(True)
    plan = plan_run(spec, kernel="B", seed=7, source="spec.yaml")
    assert (plan.kernel, plan.seed, plan.generation.era) == ("5.10", 7, "B")
    assert plan.max_frames >= 2 * 1024
