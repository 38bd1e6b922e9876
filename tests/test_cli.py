"""The ``cowsim`` command line: exit codes, JSON, tables, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cowsim.clients.cli import main

SCENARIOS = Path(__file__).resolve().parent.parent / "examples" / "scenarios"
CHILD_UNMAP = str(SCENARIOS / "4.1-vmsplice-child-unmap.yaml")


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_failing_kernel_exits_1_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "scenario", "run", CHILD_UNMAP, "--kernel", "5.4", "--json")
    assert code == 1
    result = json.loads(out)
    assert set(result) == {"scenario", "file", "kernel", "era", "ok", "expectations",
                           "violations", "counters"}
    assert result["kernel"] == "5.4"
    assert result["era"] == "A"
    assert result["ok"] is False
    failed = [e for e in result["expectations"] if not e["ok"]]
    assert failed == [{"step": 6, "ok": False, "expected": 0x11, "observed": 0x22,
                       "what": "pipe p"}]
    assert result["violations"][0]["kind"] == "leak"
    assert result["violations"][0]["step"] == 5
    for name in ("page_faults", "cow_copies", "wp_reuses", "tlb_flushes"):
        assert name in result["counters"]


def test_fixed_kernel_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "scenario", "run", CHILD_UNMAP, "--kernel", "5.10")
    assert code == 0
    assert "PASS" in out
    assert "5.10" in out


def test_all_kernels_json_is_a_list_per_file_and_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    other = str(SCENARIOS / "4.3-clear-refs-pin.yaml")
    code, out, _ = run_cli(capsys, "scenario", "run", CHILD_UNMAP, other, "--kernel", "all",
                           "--json")
    results = json.loads(out)
    assert code == 1
    assert len(results) == 14
    assert [r["kernel"] for r in results[:7]] == ["5.4", "5.8", "5.10", "5.15", "5.18", "6.1",
                                                 "6.8"]


def test_matrix_and_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "scenario", "run", CHILD_UNMAP, "--kernel", "all",
                           "--markdown")
    assert code == 1
    lines = out.strip().splitlines()
    assert lines[0].startswith("| scenario | 5.4 (A) | 5.8 (A') |")
    assert lines[2].startswith("| 4.1-vmsplice-child-unmap.yaml | **FAIL (leak)** | pass |")
    code, out, _ = run_cli(capsys, "scenario", "run", CHILD_UNMAP, "--kernel", "all")
    assert "scenario × kernel generation" in out


def test_scenario_default_kernel_and_era_names(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    text = Path(CHILD_UNMAP).read_text() + '\nkernel: "5.4"\n'
    path = write(tmp_path, text)
    code, out, _ = run_cli(capsys, "scenario", "run", path, "--json")
    assert code == 1
    assert json.loads(out)["kernel"] == "5.4"
    code, out, _ = run_cli(capsys, "scenario", "run", path, "--kernel", "D", "--json")
    assert code == 0
    assert json.loads(out)["kernel"] == "6.1"


def test_kernels_lists_generations(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "kernels", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [g["era"] for g in listed] == ["A", "A'", "B", "C", "C'", "D", "E"]
    assert listed[2]["rules"]["wp_reuse"] == "page_count"
    code, out, _ = run_cli(capsys, "kernels")
    assert "09854ba94c6a" in out
    assert "aa-mapcount" in out


@pytest.mark.parametrize(("text", "fragment"), [
    ("steps: []", "field 'name'"),
    ("name: x\nsteps: []", "field 'steps'"),
    ("name: x\nsteps:\n  - {op: frobnicate}", "step 0 (frobnicate): field 'op': unknown op"),
    ("name: x\nsteps:\n  - {op: write, proc: p, region: r}", "step 0 (write): field 'value'"),
    ("name: x\nsteps:\n  - {op: mmap, proc: p, region: r, pages: 1}\n"
     "  - {op: write, proc: p, region: r, value: 1, colour: red}", "step 1 (write): field 'colour'"),
    ("name: x\nsteps:\n  - {op: mmap, proc: p, region: r, pages: 1}\n"
     "  - {op: write, proc: q, region: r, value: 1}", "step 1 (write): field 'proc'"),
    ("name: x\nsteps:\n  - {op: mmap, proc: p, region: r, pages: 2}\n"
     "  - {op: write, proc: p, region: r, pages: 5, value: 1}", "step 1 (write): field 'pages'"),
    ("name: x\nsteps:\n  - {op: mmap, proc: p, region: r, pages: 2}\n"
     "  - {op: mprotect, proc: p, region: r, prot: r}\n"
     "  - {op: write, proc: p, region: r, value: 1}", "step 2 (write): field 'region'"),
    ("name: x\nsteps:\n  - {op: release, id: nope}", "step 0 (release): field 'id'"),
    ("name: x\nsteps:\n  - {op: expect, counters: {bogus: 1}}", "step 0 (expect)"),
    ("name: x\nsteps:\n  - {op: write, proc: p, region: r, value: -1}", "field 'value'"),
    ("name: x\nsteps:\n  - {op: mmap, proc: p, region: r, pages: 4294967296}", "field 'pages'"),
    ("name: x\nkernel: '2.6'\nsteps:\n  - {op: exit, proc: p}", "field 'kernel'"),
    ("name: [unclosed", "not valid YAML"),
    ("- just\n- a list", "a mapping"),
])
def test_invalid_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    code, out, err = run_cli(capsys, "scenario", "run", path)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("cowsim: ")
    assert fragment in err
    assert path in err


def test_bad_kernel_option_and_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "scenario", "run", CHILD_UNMAP, "--kernel", "9x")
    assert code == 2
    assert "--kernel" in err
    assert err.count("\n") == 1
    code, _, err = run_cli(capsys, "scenario", "run", "/nonexistent.yaml")
    assert code == 2
    assert "/nonexistent.yaml: cannot read file" in err


def test_huge_sizes_are_refused_up_front(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    text = ("name: huge\nsteps:\n  - {op: mmap, proc: p, region: r, pages: 1000000000}\n"
            "  - {op: fork, proc: p, child: c}\n  - {op: write, proc: p, region: r, value: 1}\n")
    code, _, err = run_cli(capsys, "scenario", "run", write(tmp_path, text))
    assert code == 2
    assert "step 0 (mmap): field 'pages'" in err
    assert "model state" in err


def test_console_script_runs(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "cowsim.clients.cli", "scenario", "run", CHILD_UNMAP,
         "--kernel", "6.8", "--json"],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["ok"] is True


# -- hypothesis: malformed files never crash ---------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                     st.text(max_size=8), st.floats(allow_nan=True))
_fields = st.sampled_from(["op", "proc", "region", "pages", "value", "child", "id", "pipe",
                           "prot", "advice", "protect", "write", "expect", "counters",
                           "same_frame", "type", "cpu", "shared", "populate", "longterm"])
_ops = st.sampled_from(["mmap", "munmap", "write", "read", "fork", "exit", "mprotect", "madvise",
                        "clear_refs", "pagemap", "uffd_register", "uffd_wp", "gup", "pin",
                        "release", "vmsplice", "odirect_read", "odirect_write",
                        "io_uring_register", "dma_write", "dma_read", "lru_drain", "expect",
                        "nonsense"])
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)


@st.composite
def _step(draw: st.DrawFn) -> object:
    if draw(st.integers(0, 9)) == 0:
        return draw(_values)
    step: dict[str, object] = {"op": draw(_ops)}
    for field in draw(st.lists(_fields, max_size=5)):
        step[field] = draw(st.one_of(_values, st.sampled_from(["p", "r", "0-3", 1, 0, True])))
    return step


_documents = st.one_of(
    _values,
    st.fixed_dictionaries({"name": st.one_of(st.just("x"), _scalars),
                           "steps": st.lists(_step(), max_size=6)}),
    st.fixed_dictionaries({"name": st.just("x"),
                           "steps": st.lists(_step(), min_size=1, max_size=6)},
                          optional={"kernel": st.one_of(st.sampled_from(["5.10", "B", "zz"]),
                                                        _scalars),
                                    "extra": _scalars}),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(document=_documents, as_text=st.booleans(), garbage=st.text(max_size=40))
def test_malformed_scenarios_never_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             document: object, as_text: bool,
                                             garbage: str) -> None:
    text = garbage if as_text else yaml.safe_dump(document)
    path = write(tmp_path, text, "fuzz.yaml")
    code, out, err = run_cli(capsys, "scenario", "run", path, "--kernel", "6.8", "--json")
    assert code in (0, 1, 2)
    if code == 2:
        assert out == ""
        assert err.count("\n") == 1
        assert err.startswith(f"cowsim: {path}")
    else:
        json.loads(out)
