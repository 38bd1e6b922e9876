"""The ``cowsim`` command line: exit codes, JSON, tables, and one-line errors for bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cowsim.clients.cli import main
from cowsim.sim.kernel.kernel import DEFAULT_MAX_VIOLATIONS

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


# -- hostile input: one line, exit 2, naming the field -------------------------------------


def test_version_comes_from_the_installed_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cowsim {metadata.version('cowsim')}"


@pytest.mark.parametrize(("kernel", "fragments"), [
    ("5.100", ["--kernel: kernel '5.100' is not a Linux release", "5.0–5.19"]),
    ("latest", ["--kernel: kernel 'latest' is not a kernel version", "4.0–4.20", "6.0–6.18",
                "A, A', B, C, C', D, E", "aa-mapcount", "'all'"]),
    ("6.19", ["--kernel: kernel 6.19 is newer than 6.18"]),
])
def test_kernel_option_errors_list_what_is_valid(capsys: pytest.CaptureFixture[str], kernel: str,
                                                 fragments: list[str]) -> None:
    code, out, err = run_cli(capsys, "scenario", "run", CHILD_UNMAP, "--kernel", kernel)
    assert (code, out, err.count("\n")) == (2, "", 1)
    for fragment in fragments:
        assert fragment in err


def test_a_kernel_in_the_file_is_blamed_on_the_file(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    path = write(tmp_path, Path(CHILD_UNMAP).read_text() + "\nkernel: '5.100'\n")
    code, _, err = run_cli(capsys, "scenario", "run", path)
    assert code == 2
    assert err.startswith(f"cowsim: {path}: field 'kernel': kernel '5.100'")
    assert "--kernel" not in err


@pytest.mark.parametrize(("text", "fragment"), [
    ('name: x\nsteps:\n  - {op: "wr\\nite", proc: p}\n', "step 0 (wr\\nite): field 'op'"),
    ("name: x\nsteps:\n  - {op: mmap, proc: p, region: r, pages: 2}\n"
     "  - {op: write, proc: p, region: r, value: 1, pages: 99999999999999999999999}\n",
     "step 1 (write): field 'pages': page index"),
    ("name: x\nsteps:\n  - {op: mmap, proc: p, region: r, pages: 2}\n"
     "  - {op: write, proc: p, region: r, value: 1, pages: 2.5}\n",
     "step 1 (write): field 'pages': a page selector is"),
    ("name: x\nsteps: 7\n", "field 'steps'"),
    ("7\n", "a scenario is a mapping"),
])
def test_hostile_scenarios_get_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                        text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    code, out, err = run_cli(capsys, "scenario", "run", path)
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert fragment in err
    assert "(top level)" not in err
    assert "pages.int" not in err


def test_pinning_256_gib_eight_times_is_refused_up_front(capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COWSIM_MAX_MEMORY", "8GiB")
    pins = "".join(f"  - {{op: pin, proc: p, region: r, id: i{n}}}\n" for n in range(8))
    path = write(tmp_path, "name: pins\nsteps:\n  - {op: mmap, proc: p, region: r, pages: 67108864}\n"
                           "  - {op: write, proc: p, region: r, value: 1}\n" + pins)
    code, _, err = run_cli(capsys, "scenario", "run", path, "--kernel", "6.8")
    assert (code, err.count("\n")) == (2, 1)
    assert "(pin): field 'pages': needs about" in err
    assert "held" in err


def test_at_the_frame_limit_the_scenario_is_refused_before_it_runs(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COWSIM_MAX_FRAMES", str(1 << 20))
    path = write(tmp_path, "name: edge\nsteps:\n  - {op: mmap, proc: p, region: r, pages: 1048576}\n"
                           "  - {op: write, proc: p, region: r, value: 1}\n")
    code, out, err = run_cli(capsys, "scenario", "run", path, "--kernel", "6.8")
    assert (code, out) == (2, "")
    assert "step 1 (write): field 'pages': needs up to" in err
    assert "COWSIM_MAX_FRAMES" in err


def test_a_million_leaks_are_counted_and_the_list_is_capped(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    path = write(tmp_path, "name: leaks\nsteps:\n"
                           "  - {op: mmap, proc: parent, region: buf, pages: 1000000}\n"
                           "  - {op: write, proc: parent, region: buf, value: 0x11}\n"
                           "  - {op: fork, proc: parent, child: child}\n"
                           "  - {op: vmsplice, proc: child, region: buf, pipe: p}\n"
                           "  - {op: munmap, proc: child, region: buf}\n"
                           "  - {op: write, proc: parent, region: buf, value: 0x22}\n")
    code, out, _ = run_cli(capsys, "scenario", "run", path, "--kernel", "5.4", "--json")
    assert code == 0
    result = json.loads(out)
    assert len(result["violations"]) == DEFAULT_MAX_VIOLATIONS
    assert result["counters"]["violations_leak"] == 1_000_000


def cli_import_rss_bytes() -> int:
    """The resident set of a process that has only imported the CLI (what a command has
    before it does any work; it grows as the CLI gains commands)."""
    # VmRSS, not ru_maxrss: Linux keeps the peak across fork and exec, so a probe started by
    # a large pytest process would report pytest's own peak.
    probe = subprocess.run([sys.executable, "-c", "import cowsim.clients.cli, pathlib; print(next("
                            "line.split()[1] for line in pathlib.Path('/proc/self/status')"
                            ".read_text().splitlines() if line.startswith('VmRSS')))"],
                           capture_output=True, text=True, check=True)
    return int(probe.stdout) * 1024


def wait_until_running(pid: int, rss_bytes: int, timeout: float = 60) -> None:
    """Until the process's resident set passes ``rss_bytes`` (it has built its model)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kib = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
        if rss_kib * 1024 > rss_bytes:
            return
        time.sleep(0.05)
    raise AssertionError("the command never got going")


def test_ctrl_c_during_a_scenario_run_exits_130(tmp_path: Path) -> None:
    path = write(tmp_path, "name: slow\nsteps:\n  - {op: mmap, proc: p, region: r, pages: 4000000}\n"
                 + "  - {op: write, proc: p, region: r, value: 1}\n  - {op: fork, proc: p, child: c}\n"
                 + "".join(f"  - {{op: write, proc: p, region: r, value: {v}}}\n"
                           f"  - {{op: clear_refs, proc: p}}\n" for v in range(2, 400)))
    process = subprocess.Popen([sys.executable, "-m", "cowsim.clients.cli", "scenario", "run", path,
                                "--kernel", "all"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    # 4 M pages of model state are about 100 MiB: half of that past the imports is work.
    wait_until_running(process.pid, rss_bytes=cli_import_rss_bytes() + (48 << 20))
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err == "cowsim: interrupted\n"
    assert out == ""
