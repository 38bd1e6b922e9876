"""Every failure scenario of kernel-semantics.md §4, on every era, as the reference says.

The expected pass/FAIL per era is read from examples/scenarios/EXPECTED.md (the
table written from the reference's rules, with a reason per FAIL), so the
document and the tests cannot drift apart.  The violation each failure must
also report is checked from the table below.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cowsim.sim.kernel import generation_for
from cowsim.sim.scenario import load_scenario, run_scenario

SCENARIOS = Path(__file__).resolve().parent.parent / "examples" / "scenarios"
ERA_COLUMNS = ["5.4", "5.8", "5.10", "5.15", "5.18", "6.1", "6.8"]
EXTRA_VERSIONS = {"5.4": "4.19", "5.15": "5.11", "6.1": "5.19", "6.8": "6.4"}
"""A second version per era, to check the whole era behaves alike."""


def expected_table() -> dict[str, list[bool]]:
    """file → [passes on era 1..7] from the EXPECTED.md table."""
    table: dict[str, list[bool]] = {}
    for line in (SCENARIOS / "EXPECTED.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0].endswith(".yaml"):
            table[cells[0]] = [not re.match(r"\**FAIL", cell) for cell in cells[1:]]
    return table


TABLE = expected_table()

# Violations a failing run must report (informational in the JSON, checked here).
VIOLATION_OF_FAILURE = {
    "4.1": "leak", "4.2": "pin_diverged", "4.3": "pin_diverged", "4.4a": "pin_diverged",
    "4.5": "pin_diverged", "4.7": "stale_pin",
}


def test_table_covers_every_example() -> None:
    files = sorted(path.name for path in SCENARIOS.glob("*.yaml"))
    assert files == sorted(TABLE)
    assert len(files) >= 10


CASES = [
    pytest.param(file, column, passes[index], id=f"{file}-{column}")
    for file, passes in TABLE.items()
    for index, column in enumerate(ERA_COLUMNS)
]


@pytest.mark.parametrize(("file", "version", "passes"), CASES)
def test_scenario_outcome_per_era(file: str, version: str, passes: bool) -> None:
    scenario = load_scenario(SCENARIOS / file)
    for each in {version, EXTRA_VERSIONS.get(version, version)}:
        result = run_scenario(scenario, generation_for(each), file)
        assert result.ok is passes, (each, [e.as_dict() for e in result.expectations])
        kinds = {violation.kind for violation in result.violations}
        section = file.split("-", 1)[0]
        if not passes and section in VIOLATION_OF_FAILURE:
            assert VIOLATION_OF_FAILURE[section] in kinds
        if passes and section != "4.6":
            assert not kinds, [v.detail for v in result.violations]
