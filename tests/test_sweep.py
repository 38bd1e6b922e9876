"""Sweep specs: validation, expansion (grid, random, lhs), seeds, limits, and the statistics.

Everything here is in-process and runs nothing: the executors and the CLI are in
tests/test_sweep_executors.py and tests/test_sweep_cli.py.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from cowsim.service.sweep_table import METRICS, summarize, t_quantile_975
from cowsim.sim import (
    MAX_SWEEP_RUNS,
    SweepError,
    SweepPlan,
    load_sweep,
    parse_sweep,
    plan_sweep,
    sweep_json_schema,
)
from cowsim.sim.sweep import latin_hypercube

ROOT = Path(__file__).resolve().parent.parent

BASE: dict[str, Any] = {
    "name": "tiny", "duration": "50ms", "seed": 5,
    "processes": [{"name": "web", "memory": "1MiB", "workloads": [
        {"kind": "forking_server", "requests": {"rate": "10k/s"},
         "fork": {"mode": "periodic", "every": "10ms"}}]}],
}
RATE = "processes[web].workloads[forking_server].requests.rate"


def sweep(axes: list[dict[str, Any]], **fields: Any) -> str:
    return json.dumps({"name": "t", "base": BASE, "axes": axes, **fields})


def plan(axes: list[dict[str, Any]], **fields: Any) -> SweepPlan:
    return plan_sweep(parse_sweep(sweep(axes, **fields), "t.json"), source="t.json")


def test_a_grid_is_every_combination_last_axis_fastest() -> None:
    result = plan([{"path": "kernel", "values": ["4.19", "5.10", "6.8"]},
                   {"path": RATE, "name": "rate", "values": ["10k/s", 20000]}], replications=2)
    assert len(result.points) == 6
    assert result.runs == 12
    assert [(p.values["kernel"], p.values["rate"]) for p in result.points] == [
        (k, r) for k in ("4.19", "5.10", "6.8") for r in (10000.0, 20000.0)]
    assert result.paths == ("kernel", "processes[0].workloads[0].requests.rate")
    assert json.loads(result.points[1].spec.model_dump_json())["processes"][0]["workloads"][0][
        "requests"]["rate"] == 20000
    assert json.loads(result.points[3].spec_text)["kernel"] == "5.10"


def test_a_range_axis_with_steps_takes_the_fields_units() -> None:
    result = plan([{"path": "processes[0].workloads[0].fork.every", "name": "every",
                    "low": "10ms", "high": "40ms", "steps": 4},
                   {"path": "machine.cpus", "name": "cpus", "low": 1, "high": 8, "steps": 4,
                    "scale": "log"}])
    every = sorted({p.values["every"] for p in result.points})
    assert every == pytest.approx([0.01, 0.02, 0.03, 0.04])
    assert sorted({p.values["cpus"] for p in result.points}) == [1, 2, 4, 8]


def test_latin_hypercube_puts_one_point_in_every_stratum() -> None:
    unit = latin_hypercube(25, 4, np.random.default_rng(3))
    assert unit.shape == (25, 4)
    for column in unit.T:
        assert sorted(np.floor(column * 25).astype(int)) == list(range(25))


def test_an_lhs_design_is_stratified_over_each_axis_range() -> None:
    n = 16
    result = plan([{"path": RATE, "name": "rate", "low": "1k/s", "high": "17k/s"},
                   {"path": "processes[0].workloads[0].requests.write_fraction", "name": "w",
                    "low": 0.0, "high": 1.0}], design="lhs", samples=n)
    assert len(result.points) == n
    rates = np.array([p.values["rate"] for p in result.points])
    assert sorted(np.floor((rates - 1000) / 16000 * n).astype(int)) == list(range(n))
    writes = np.array([p.values["w"] for p in result.points])
    assert sorted(np.floor(writes * n).astype(int)) == list(range(n))
    again = plan([{"path": RATE, "name": "rate", "low": "1k/s", "high": "17k/s"},
                  {"path": "processes[0].workloads[0].requests.write_fraction", "name": "w",
                   "low": 0.0, "high": 1.0}], design="lhs", samples=n)
    assert [p.values for p in again.points] == [p.values for p in result.points]


def test_a_random_design_samples_integers_for_an_integer_field() -> None:
    result = plan([{"path": "machine.cpus", "name": "cpus", "low": 1, "high": 4}],
                  design="random", samples=40)
    cpus = [p.values["cpus"] for p in result.points]
    assert all(isinstance(c, int) for c in cpus)
    assert set(cpus) == {1, 2, 3, 4}


def _seeds(result: SweepPlan) -> dict[tuple[Any, ...], tuple[int, ...]]:
    return {tuple(sorted(p.values.items())): p.seeds for p in result.points}


def test_a_points_seeds_depend_on_the_point_not_on_the_other_points() -> None:
    full = _seeds(plan([{"path": "kernel", "values": ["4.19", "6.8"]},
                        {"path": RATE, "name": "rate", "values": [10000, 20000, 30000]}],
                       replications=3, seed=11))
    fewer_reordered = _seeds(plan([{"path": RATE, "name": "rate", "values": ["30k/s", 10000]},
                                   {"path": "kernel", "values": ["6.8"]}],
                                  replications=2, seed=11))
    for point, seeds in fewer_reordered.items():
        assert full[point][:2] == seeds
    every = list(itertools.chain.from_iterable(full.values()))
    assert len(set(every)) == len(every)  # replications and points are independent streams
    other_root = _seeds(plan([{"path": "kernel", "values": ["4.19", "6.8"]},
                              {"path": RATE, "name": "rate", "values": [10000, 20000, 30000]}],
                             replications=3, seed=12))
    assert not set(every) & set(itertools.chain.from_iterable(other_root.values()))


def test_the_root_seed_defaults_to_the_base_specs() -> None:
    assert plan([{"path": "kernel", "values": ["6.8"]}]).root_seed == 5


def one_line_error(text: str, name: str = "t.json") -> SweepError:
    with pytest.raises(SweepError) as caught:
        plan_sweep(parse_sweep(text, name), source=name)
    assert "\n" not in str(caught.value)
    return caught.value


def test_an_invalid_point_names_its_axis_and_value() -> None:
    error = one_line_error(sweep([{"path": "kernel", "values": ["6.8"]},
                                  {"path": RATE, "name": "rate", "values": ["10k/s", "2G/s"]}]))
    assert str(error).startswith("t.json: field 'axes[1].values[1]': axis 'rate' value '2G/s':")
    assert "at most" in str(error)


def test_an_invalid_kernel_value_names_the_kernel_axis() -> None:
    error = one_line_error(sweep([{"path": "kernel", "values": ["6.8", "9.99"]}]))
    assert "axes[0].values[1]" in str(error)
    assert "'9.99'" in str(error)


@pytest.mark.parametrize(("axis", "words"), [
    ({"path": "processes[3].memory", "values": ["1MiB"]}, "has 1 items in the base spec, no [3]"),
    ({"path": "processes[db].memory", "values": ["1MiB"]}, "no item named 'db'"),
    ({"path": "processes[0].memroy", "values": ["1MiB"]}, "memroy"),
    ({"path": "processes..memory", "values": ["1MiB"]}, "not a field path"),
    ({"path": "kernel", "values": [5.1]}, "quote them"),
    ({"path": RATE, "low": "1k/s"}, "needs 'values', or 'low' and 'high'"),
    ({"path": RATE, "low": "1k/s", "high": "2k/s"}, "a range needs 'steps'"),
    ({"path": RATE, "values": [1, 1]}, "listed twice"),
    ({"path": RATE, "name": "seed", "values": [1]}, "is a column of the sweep table"),
    ({"path": "name", "low": "a", "high": "b", "steps": 2}, "numeric field"),
])
def test_an_invalid_axis_is_one_line_naming_it(axis: dict[str, Any], words: str) -> None:
    assert words in str(one_line_error(sweep([axis])))


def test_a_huge_sweep_is_refused_from_its_size_naming_the_limit() -> None:
    values = list(range(1, 101))
    error = one_line_error(sweep([{"path": "machine.cpus", "values": values},
                                  {"path": "seed", "name": "spec_seed", "values": values}],
                                 replications=2))
    assert f"limit of {MAX_SWEEP_RUNS:,} runs" in str(error)
    assert "20,000 runs" in str(error)


def test_an_invalid_base_names_the_base() -> None:
    text = json.dumps({"name": "t", "base": dict(BASE, duration="0s"),
                       "axes": [{"path": "kernel", "values": ["6.8"]}]})
    assert "field 'base.duration'" in str(one_line_error(text))


def test_a_sampled_design_needs_samples() -> None:
    with pytest.raises(SweepError, match="needs 'samples'"):
        parse_sweep(sweep([{"path": RATE, "low": 1, "high": 2}], design="lhs"), "t.json")


def test_a_base_path_is_relative_to_the_sweep_file(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(
        {"name": "s", "base": "specs/base.yaml", "axes": [{"path": "kernel", "values": ["6.8"]}]}))
    spec, base_dir = load_sweep(tmp_path / "s.yaml")
    assert plan_sweep(spec, source="s.yaml", base_dir=base_dir).points[0].spec.name == "tiny"
    text = json.dumps({"name": "s", "base": "specs/base.yaml", "axes": [{"path": "kernel",
                                                                          "values": ["6.8"]}]})
    assert "needs a sweep file" in str(one_line_error(text))


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "sweeps").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_the_example_sweeps_are_valid(path: Path) -> None:
    spec, base_dir = load_sweep(path)
    result = plan_sweep(spec, source=str(path), base_dir=base_dir)
    assert result.runs >= 12
    assert "kernel" in result.columns


def test_the_schema_describes_axes_and_designs() -> None:
    schema = sweep_json_schema()
    assert {"name", "base", "axes", "design", "replications", "samples"} <= set(schema["properties"])
    assert schema["properties"]["design"]["enum"] == ["grid", "random", "lhs"]


def test_the_t_quantile_table_meets_its_expansion() -> None:
    assert t_quantile_975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile_975(30) == pytest.approx(2.0422725, abs=1e-6)
    assert t_quantile_975(31) == pytest.approx(2.0395134, abs=1e-5)
    assert t_quantile_975(1000) == pytest.approx(1.9623391, abs=1e-6)
    values = [t_quantile_975(df) for df in range(1, 200)]
    assert values == sorted(values, reverse=True)


def test_the_summary_is_the_mean_and_a_student_t_interval() -> None:
    rows: list[dict[str, Any]] = [{"point": 0, "kernel": "6.8", "status": "completed", "cow_copies_total": v}
            for v in (10, 12, 14)] + [{"point": 0, "kernel": "6.8", "status": "failed",
                                       "cow_copies_total": None},
                                      {"point": 1, "kernel": "5.10", "status": "completed",
                                       "cow_copies_total": 7}]
    for row in rows:
        for metric in METRICS:
            row.setdefault(metric, 0 if row["status"] == "completed" else None)
    first, second = summarize(rows, ["point", "kernel"])
    half = 4.3026527 * 2.0 / math.sqrt(3)
    assert (first["replications"], first["failed"]) == (3, 1)
    assert first["cow_copies_total_mean"] == pytest.approx(12.0)
    assert first["cow_copies_total_ci95_low"] == pytest.approx(12.0 - half)
    assert first["cow_copies_total_ci95_high"] == pytest.approx(12.0 + half)
    assert second["cow_copies_total_mean"] == 7
    assert second["cow_copies_total_ci95_low"] is None
