"""Fuzzing the CLI with mutated examples: never a traceback, a hang or an out-of-memory crash.

Each example takes a scenario and a workload spec from ``examples/``, mutates
them (values replaced by hostile ones — huge, negative, zero, NaN, infinite,
wrong types, control characters, deep nesting — keys deleted or added) and
runs ``cowsim`` on each in a subprocess under a memory limit (RLIMIT_AS) and a
timeout.  Small budgets (the ``COWSIM_MAX_*`` variables) keep accepted runs
short.  Whatever the input: exit 0, 1 or 2, no traceback, no internal error,
and exactly one line on stderr for exit 2.
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "examples" / "scenarios").glob("*.yaml"))
WORKLOADS = sorted((ROOT / "examples" / "workloads").glob("*.yaml"))
MEMORY_LIMIT = 2 << 30
TIMEOUT_SECONDS = 90
ENV = {
    **os.environ,
    "OPENBLAS_NUM_THREADS": "1",
    "COWSIM_MAX_EVENTS": "20000",
    "COWSIM_MAX_PAGE_TOUCHES": "50M",
    "COWSIM_MAX_MEMORY": "768MiB",
    "COWSIM_MAX_BATCH": "1M",
}

HOSTILE: list[Any] = [
    0, -1, 1, 2**31, 2**63, 2**64, 10**30, -(10**30), 1e308, -1e-300, 0.5,
    math.nan, math.inf, -math.inf,
    "1e400s", "1e400", "1e999999999", "-5/s", "0s", "0", "", "0/s", "1e12/s", "1e30/s", "1000h",
    "10ms", "50ms", "1TiB", "4K", "64GiB", "0-1073741824", "99999999999999999999999", "5.100",
    "latest", "all", "x" * 300, "a\nb\x1b[31m\u202e", "[/]", True, False, None, [], {}, [1, 2, 3],
    {"a": 1}, [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]],
]
# A fresh copy of each drawn value: a later mutation may edit inside an inserted list or
# dict, which must not change HOSTILE itself (hypothesis replays draws and would see
# different documents: FlakyStrategyDefinition).
hostile_values = st.one_of(st.sampled_from(HOSTILE).map(copy.deepcopy), st.integers(),
                           st.floats(), st.text(max_size=12))


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path inside a document."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield (*prefix, index)
            yield from paths(child, (*prefix, index))


def parent_of(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        document = document[part]
    return document


@st.composite
def mutated(draw: st.DrawFn, files: list[Path]) -> tuple[Any, bool]:
    """A parsed example with 1–4 hostile mutations, and whether to write it as JSON."""
    document: Any = yaml.safe_load(draw(st.sampled_from(files)).read_text())
    for _ in range(draw(st.integers(1, 4))):
        candidates = list(paths(document))
        if not candidates or not isinstance(document, dict | list):
            break
        path = draw(st.sampled_from(candidates))
        parent = parent_of(document, path)
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "nest"]))
        if action == "replace":
            parent[path[-1]] = draw(hostile_values)
        elif action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["colour", "kind", "op", "\n", "x" * 80]))] = draw(hostile_values)
        elif action == "nest":
            value = parent[path[-1]]
            for _ in range(draw(st.integers(1, 80))):
                value = [value]
            parent[path[-1]] = value
    return document, draw(st.booleans())


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_cowsim(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cowsim.clients.cli", *args, str(path)],
                          capture_output=True, text=True, timeout=TIMEOUT_SECONDS, env=ENV,
                          preexec_fn=limit_memory, check=False)


def write(directory: Path, name: str, document: Any, as_json: bool) -> Path:
    path = directory / (name + (".json" if as_json else ".yaml"))
    path.write_text(json.dumps(document) if as_json else yaml.safe_dump(document))
    return path


def check(completed: subprocess.CompletedProcess[str]) -> None:
    err = completed.stderr
    assert completed.returncode in (0, 1, 2), err
    assert "Traceback" not in err, err
    assert "internal error" not in err, err
    if completed.returncode == 2:
        assert err.count("\n") == 1, err
        assert err.startswith("cowsim: "), err


def fuzz_once(tmp_path: Path, scenario: tuple[Any, bool], spec: tuple[Any, bool]) -> None:
    scenario_file = write(tmp_path, "scenario", *scenario)
    spec_file = write(tmp_path, "spec", *spec)
    with ThreadPoolExecutor(2) as pool:  # the two runs side by side: one per core
        scenario_run = pool.submit(run_cowsim, scenario_file, "scenario", "run", "--json")
        spec_run = pool.submit(run_cowsim, spec_file, "run", "--json")
        for done in (scenario_run, spec_run):
            check(done.result())


@settings(max_examples=22, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(scenario=mutated(SCENARIOS), spec=mutated(WORKLOADS))
def test_mutated_examples_never_crash(tmp_path: Path, scenario: tuple[Any, bool],
                                      spec: tuple[Any, bool]) -> None:
    fuzz_once(tmp_path, scenario, spec)


#: The slow tier's examples: about 2 s each (two cowsim subprocesses), so CI runs 80 (about
#: 3 minutes, the budget of .ci/run) and COWSIM_LONG_TESTS=1 the full 400.
LONG_FUZZ_EXAMPLES = 400 if os.environ.get("COWSIM_LONG_TESTS", "") not in ("", "0") else 80


@pytest.mark.slow
@settings(max_examples=LONG_FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(scenario=mutated(SCENARIOS), spec=mutated(WORKLOADS))
def test_mutated_examples_never_crash_long(tmp_path: Path, scenario: tuple[Any, bool],
                                           spec: tuple[Any, bool]) -> None:
    fuzz_once(tmp_path, scenario, spec)
