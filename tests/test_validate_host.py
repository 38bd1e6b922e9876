"""validate-host: scenarios run for real on the host kernel, compared step by step with the model.

Two kinds of tests:

* the compiler, the comparison and the combination of runs on synthetic executor output
  (always run: they need no kernel features);
* the real thing: the executor built with the host's C compiler, every example scenario
  and the host-only cases of tests/host_scenarios/ run on the running kernel.  These need
  Linux, a C compiler and root (page frame numbers in pagemap); where one is missing they
  skip and say which.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cowsim.clients.cli import main
from cowsim.clients.validate_host import (
    FEATURE_REASONS,
    ExecutorOutput,
    StepReport,
    ValidateHostError,
    build_executor,
    combine_runs,
    compare,
    compile_plan,
    parse_output,
    release_generation,
    run_plan,
    validate_scenario,
)
from cowsim.sim import (
    PAGE_OUTCOMES,
    PageState,
    generation_for,
    load_scenario,
    page_outcome,
    parse_scenario,
    trace_scenario,
)
from tests.validate_helpers import EXAMPLES, HOST_CASES, running

needs_host = pytest.mark.skipif(
    not sys.platform.startswith("linux") or (shutil.which("cc") is None and shutil.which("gcc") is None),
    reason="validate-host runs real processes on Linux and builds its executor with a C compiler")
needs_root = pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() != 0,
    reason="page frame numbers in /proc/PID/pagemap (copied vs reused) need root")

CHILD_UNMAP = """
name: child unmap
steps:
  - {op: mmap, proc: parent, region: buf, pages: 1}
  - {op: write, proc: parent, region: buf, value: 0x11}
  - {op: fork, proc: parent, child: child}
  - {op: vmsplice, proc: child, region: buf, pipe: p}
  - {op: munmap, proc: child, region: buf}
  - {op: write, proc: parent, region: buf, value: 0x22}
  - {op: expect, pipe: p, value: 0x11}
"""


def _output(caps: dict[str, bool], lines: list[str], release: str = "6.8.0") -> ExecutorOutput:
    text = "caps " + " ".join(f"{k}={int(v)}" for k, v in caps.items()) + f"\nuname {release}\n"
    return parse_output(text + "\n".join(lines) + "\ndone\n")


ALL_CAPS = {"pfn": True, "soft_dirty": True, "swap": True, "io_uring": True, "odirect": True,
            "drain": True, "uffd_wp": True, "gup_test": False, "none": False}


RECORDED = [  # what the executor printed for CHILD_UNMAP's plan on a 6.18 kernel, as root
    "res 0 ok flt=0", "res 1 ok pm=0", "res 2 ok pm=0",
    "res 3 ok flt=1", "res 4 ok pm=8100000000153d09", "res 5 ok",
    "res 6 ok pm=8000000000153d09", "res 7 ok pm=8000000000153d09",
    "res 8 ok pm=8000000000153d09", "res 9 ok flt=0", "res 10 ok pm=8000000000153d09",
    "res 11 ok", "res 12 ok pm=8100000000153d09", "res 13 ok flt=1",
    "res 14 ok pm=8100000000153d38", "res 15 ok val=17"]


# --- the vocabulary -----------------------------------------------------------------------

@pytest.mark.parametrize(("before", "after", "word"), [
    (("absent", -1), ("absent", -1), "none"),
    (("absent", -1), ("present", 7), "faulted in"),
    (("present", 7), ("present", 7), "reused"),
    (("present", 7), ("present", 8), "copied"),
    (("present", 7), ("absent", -1), "unmapped"),
    (("present", 7), ("swapped", -1), "swapped out"),
    (("swapped", -1), ("present", 9), "swapped in"),
    (("swapped", -1), ("swapped", -1), "swapped"),
])
def test_page_outcome_names_what_a_step_did_to_a_frame(before: PageState, after: PageState,
                                                       word: str) -> None:
    assert page_outcome(before, after) == word
    assert word in PAGE_OUTCOMES


def test_the_trace_predicts_what_each_era_does() -> None:
    scenario = parse_scenario(CHILD_UNMAP, "child.yaml")
    era_a = trace_scenario(scenario, generation_for("5.4"))
    era_e = trace_scenario(scenario, generation_for("6.8"))
    # <=5.7 the parent reuses the page the pipe holds (CVE-2020-29374); 6.x copies
    assert era_a[5]["pages"] == ["reused"]
    assert era_a[6]["values"] == [0x22]
    assert era_e[5]["pages"] == ["copied"]
    assert era_e[6]["values"] == [0x11]
    assert era_e[1] == {"faults": 1, "pages": ["faulted in"], "counters": era_e[1]["counters"]}
    assert era_e[2]["child"] == {"buf": ["shared"]}


# --- compiling -----------------------------------------------------------------------------

def test_every_example_compiles_and_names_what_it_needs() -> None:
    needs: dict[str, set[str]] = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        plan = compile_plan(load_scenario(path), str(path))
        text = plan.text()
        assert text.startswith(f"scenario {len(plan.procs)} ")
        assert text.endswith("end\n")
        needs[path.name] = {c.requires for c in plan.commands} - {"-"}
    assert needs["4.3-clear-refs-odirect.yaml"] == {"none", "soft_dirty"}  # O_DIRECT in flight
    assert needs["4.1-vmsplice-child-unmap-swapped.yaml"] == {"swap"}
    assert "io_uring" in needs["4.2-pinned-dma-fork-child-alive.yaml"]
    assert "uffd_wp" in needs["4.5-uffd-wp-pinned-write-fault.yaml"]
    assert needs["4.6-mprotect-unnecessary-cow-drained.yaml"] == {"drain"}
    assert needs["4.7-ro-pin-zero-page.yaml"] == {"none"}  # a R/O pin needs gup_test
    assert needs["4.1-vmsplice-child-unmap.yaml"] == set()


def test_a_read_only_pin_is_skipped_with_its_reason() -> None:
    plan = compile_plan(load_scenario(EXAMPLES / "4.7-ro-pin-after-fork.yaml"))
    assert "gup_test" in plan.reasons[3]


def test_a_synchronous_odirect_read_carries_out_its_dma_and_release() -> None:
    plan = compile_plan(load_scenario(HOST_CASES / "odirect-sync.yaml"))
    assert plan.merged == {3: 2, 4: 2, 6: 5, 7: 5, 11: 10, 12: 10, 16: 15}
    assert any(c.text.startswith("odread 0 0 34 0") for c in plan.commands)


# --- comparing ----------------------------------------------------------------------------

def test_observations_equal_to_the_model_agree() -> None:
    scenario = parse_scenario(CHILD_UNMAP, "child.yaml")
    plan = compile_plan(scenario)
    output = _output(ALL_CAPS, RECORDED)
    result = validate_scenario(scenario, "child.yaml", [output], plan)
    assert [s["status"] for s in result["steps"]] == ["agree"] * 7
    assert result["era"] == "E"


def test_the_same_observations_disagree_with_another_eras_model() -> None:
    scenario = parse_scenario(CHILD_UNMAP, "child.yaml")
    plan = compile_plan(scenario)
    output = _output(ALL_CAPS, RECORDED)
    result = validate_scenario(scenario, "child.yaml", [output], plan, model=generation_for("5.4"))
    statuses = {s["step"]: s["status"] for s in result["steps"]}
    assert statuses[5] == "disagree"  # observed copied, era A predicts reused
    assert statuses[6] == "disagree"  # the pipe saw 0x11, era A predicts 0x22
    assert result["model"] == "5.4"


def test_a_wrong_fault_count_is_a_disagreement() -> None:
    scenario = parse_scenario(CHILD_UNMAP, "child.yaml")
    plan = compile_plan(scenario)
    lines = [line.replace("res 3 ok flt=1", "res 3 ok flt=2") for line in RECORDED]
    step = compare(plan, _output(ALL_CAPS, lines), trace_scenario(scenario, generation_for("6.8")))[1]
    assert step.status == "disagree"
    assert step.observed == {"faults": 2, "pages": ["faulted in"]}
    assert step.predicted == {"faults": 1, "pages": ["faulted in"]}


def test_a_skipped_state_change_skips_the_rest_with_the_reason() -> None:
    scenario = load_scenario(EXAMPLES / "4.1-vmsplice-child-unmap-swapped.yaml")
    plan = compile_plan(scenario)
    no_swap = dict(ALL_CAPS, swap=False)
    lines = []
    skipped_at = None
    for c in plan.commands:
        if skipped_at is not None:
            lines.append(f"res {c.seq} after {skipped_at}")
        elif c.requires == "swap":
            lines.append(f"res {c.seq} skip swap")
            skipped_at = c.seq
        else:
            lines.append(f"res {c.seq} ok")
    reports = compare(plan, _output(no_swap, lines),
                      trace_scenario(scenario, generation_for("6.8")))
    pageout = next(r for r in reports if r.op == "madvise")
    assert pageout.status == "skipped"
    assert pageout.reason == FEATURE_REASONS["swap"]
    later = reports[pageout.step + 1:]
    assert later
    assert all(r.status == "skipped" and r.reason and "depend" in r.reason for r in later)


def test_without_frame_numbers_copied_and_reused_are_not_told_apart() -> None:
    scenario = parse_scenario(CHILD_UNMAP, "child.yaml")
    plan = compile_plan(scenario)
    lines = [line.replace("0000153d09", "0000000000").replace("0000153d38", "0000000000")
             for line in RECORDED]
    reports = compare(plan, _output(dict(ALL_CAPS, pfn=False), lines),
                      trace_scenario(scenario, generation_for("6.8")))
    assert reports[5].observed == {"faults": 1, "pages": ["kept a frame"]}
    assert reports[5].status == "agree"
    assert reports[5].reason is not None
    assert "root" in reports[5].reason


def test_runs_combine_to_the_most_common_observation_and_say_so() -> None:
    def report(faults: int) -> StepReport:
        return StepReport(0, "write", "agree" if faults == 4 else "disagree", None,
                          {"faults": faults}, {"faults": 4})
    combined = combine_runs([[report(4)], [report(5)], [report(4)]])[0]
    assert combined.status == "agree"
    assert combined.observed == {"faults": 4}
    assert combined.reason is not None
    assert "1 of 3 runs" in combined.reason
    assert '"faults": 5' in combined.reason
    assert combine_runs([[report(5)], [report(5)], [report(4)]])[0].status == "disagree"


def test_a_release_maps_to_its_generation() -> None:
    assert release_generation("6.1.0-28-cloud-amd64")[1].era == "D"
    assert release_generation("5.10.0-33-amd64")[1].era == "B"
    with pytest.raises(ValidateHostError, match=r"3\.10"):
        release_generation("3.10.0-1160.el7.x86_64")


# --- the command line ---------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["validate-host", "no-such-file.yaml"],
    ["validate-host", "--runs", "0"],
    ["validate-host", "--timeout", "-1"],
    ["validate-host", "--model", "5.100"],
])
def test_invalid_input_is_one_line_and_exit_2(argv: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1


def test_an_invalid_scenario_is_refused_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps:\n  - {op: write, proc: a, region: r, value: -1}\n")
    assert main(["validate-host", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "step 0" in err
    assert "'value'" in err


# --- the real kernel ----------------------------------------------------------------------

def test_an_executor_that_hangs_is_killed_at_the_time_limit(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    fake = tmp_path / "fake-executor"
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nsleep 60 &\necho $! >> {pid_file}\nwait\n")
    fake.chmod(0o755)
    started = time.monotonic()
    with pytest.raises(ValidateHostError, match="did not finish within 1 s"):
        run_plan(fake, "scenario 0 0 0\nend\n", timeout_seconds=1)
    assert time.monotonic() - started < 10
    for pid in map(int, pid_file.read_text().split()):
        assert not running(pid)


@needs_host
@needs_root
def test_every_runnable_step_of_the_examples_agrees_with_the_model(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate-host", "--json", str(EXAMPLES), str(HOST_CASES)])
    results = json.loads(capsys.readouterr().out)
    assert len(results) == len(list(EXAMPLES.glob("*.yaml"))) + len(list(HOST_CASES.glob("*.yaml")))
    disagreements = [(r["file"], s) for r in results for s in r["steps"] if s["status"] == "disagree"]
    assert disagreements == []
    assert code == 0
    for result in results:
        assert set(result) == {"scenario", "file", "kernel", "era", "model", "steps"}
        assert result["kernel"] == os.uname().release
        for step in result["steps"]:
            assert step["status"] in ("agree", "skipped")
            if step["status"] == "skipped":
                assert step["reason"]
    # what no host lacks ran, and was compared, fault counts and frames included
    by_file = {Path(r["file"]).name: r for r in results}
    child = by_file["4.1-vmsplice-child-unmap.yaml"]["steps"]
    assert all(s["status"] == "agree" for s in child)
    assert child[5]["observed"] == {"faults": 1, "pages": ["copied"]}
    host_cases = [by_file[p.name] for p in HOST_CASES.glob("*.yaml")]
    runnable = sum(s["status"] == "agree" for r in host_cases for s in r["steps"])
    assert runnable >= 50


@needs_host
@needs_root
def test_another_generations_model_disagrees_with_this_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    """The comparison can fail: the host is not era A, whose model predicts the CVE."""
    code = main(["validate-host", "--json", "--model", "5.4",
                 str(EXAMPLES / "4.1-vmsplice-child-unmap.yaml")])
    result = json.loads(capsys.readouterr().out)[0]
    if release_generation(os.uname().release)[1].era == "A":
        pytest.skip("this host runs an era A kernel")
    assert code == 1
    statuses = {s["step"]: s["status"] for s in result["steps"]}
    assert statuses[5] == "disagree"
    assert statuses[6] == "disagree"


@needs_host
def test_the_executor_is_built_once_and_cached(tmp_path: Path) -> None:
    first = build_executor(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert build_executor(tmp_path) == first
    assert first.stat().st_mtime_ns == mtime
    output = run_plan(first, "scenario 1 0 0\ncmd 0 s - mmap 0 0 2 0 0\ncmd 1 s - write 0 0 5 0,1\n"
                             "cmd 2 o - peek 0 0 0,1\nend\n")
    assert output.release == os.uname().release
    assert output.results[1] == ["ok", "flt=2"]
    assert output.results[2] == ["ok", "val=5,5"]


@needs_host
def test_no_process_is_left_behind(tmp_path: Path) -> None:
    binary = build_executor(tmp_path)
    plan = compile_plan(load_scenario(HOST_CASES / "madvise-fork.yaml")).text()
    before = set(_children())
    run_plan(binary, plan)
    assert set(_children()) - before == set()



def _children() -> list[int]:
    """This test process's descendants still alive (any executor left behind would be)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,args="], capture_output=True, text=True,
                         check=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "vh-executor" in line]


def test_a_region_too_large_for_the_executor_stops_the_scenario_there() -> None:
    scenario = parse_scenario(
        "name: big\nsteps:\n  - {op: mmap, proc: a, region: r, pages: 1000000}\n"
        "  - {op: write, proc: a, region: r, value: 1}\n", "big.yaml")
    plan = compile_plan(scenario)
    assert plan.stops_at == 0
    assert "at most 4096" in plan.reasons[0]
    lines = ["res 0 skip none", "res 1 after 0", "res 2 after 0", "res 3 after 0"]
    result = validate_scenario(scenario, "big.yaml", [_output(ALL_CAPS, lines)], plan)
    assert [s["status"] for s in result["steps"]] == ["skipped", "skipped"]
    assert "at most 4096" in result["steps"][0]["reason"]
    assert "depend" in result["steps"][1]["reason"]
