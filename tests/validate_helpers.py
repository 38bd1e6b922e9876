"""What the validate-host tests share: where the scenarios are, and whether a process lives."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "scenarios"
"""The example scenarios (examples/scenarios/EXPECTED.md)."""
HOST_CASES = ROOT / "tests" / "host_scenarios"
"""Scenarios written for validate-host: madvise, the zero page, O_DIRECT, soft-dirty."""


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan waits for a reaper that may not be init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
