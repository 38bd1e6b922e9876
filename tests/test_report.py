"""cowsim report DIR: a real sweep's report, its plots and findings, errors, and Chromium.

The sweep is real and small: the RDMA application of examples/workloads/rdma-fork.yaml
(a pinned DMA buffer and a fork every few ms) made tiny (8 MiB, 0.3 s), on 5.4 and 6.8
× three fork intervals × 2 replications = 12 runs, run in this process (about 3 s).
Its data have what the findings must see: 5.4 loses DMA writes and reads stale pins
(fork write-protects pinned pages up to 5.8), 6.8 has no violation but copies the
pinned buffer at each fork (more COW copies, a longer fork pause, a higher memory
peak), and the machine is given 10 MiB so that 6.8's 12 MiB peak exceeds it.
The expected numbers are read from the tables, not written down here.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from PIL import Image  # matplotlib's own dependency

from cowsim.clients.cli import main
from cowsim.clients.report_data import KEY_METRICS, AxisInfo, SweepData, load_sweep_dir
from cowsim.clients.report_findings import findings
from cowsim.clients.report_plots import choose_plots
from cowsim.service.executors import RunJob, RunOutcome, execute
from cowsim.service.sweeps import SweepStore, run_sweep, sweep_runs, write_tables
from cowsim.sim import format_bytes, format_seconds, parse_sweep, plan_sweep

AXIS = "fork_every_seconds"
BASE: dict[str, Any] = {
    "name": "rdma-tiny", "duration": "0.3s", "seed": 11,
    "machine": {"profile": "skylake-sp", "cpus": 4, "costs": {"memory_bytes": 10 * 2**20}},
    "processes": [{"name": "app", "memory": "8MiB", "threads": 2, "workloads": [
        {"kind": "direct_io", "mode": "pinned", "buffer": "4MiB", "block": "4KiB",
         "dma_rate": "20k/s", "fork_every": "100ms"}]}],
}
SWEEP: dict[str, Any] = {
    "name": "rdma-report", "base": BASE, "replications": 2, "seed": 3,
    "axes": [{"path": "kernel", "values": ["5.4", "6.8"]},
             {"path": "processes[app].workloads[direct_io].fork_every", "name": AXIS,
              "values": ["50ms", "100ms", "150ms"]}],
}


class InProcess:
    """An executor that runs each job here, one after another (the workers' own function)."""

    workers = 1
    running = 0

    def submit(self, jobs: Sequence[RunJob]) -> Iterator[RunOutcome]:
        for job in jobs:
            reply = execute(job)
            yield RunOutcome(job.key, reply.get("result"), reply.get("error"))

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("report") / "sweep"
    plan = plan_sweep(parse_sweep(json.dumps(SWEEP), "rdma.json"), source="rdma.json")
    runs = sweep_runs(plan)
    report = run_sweep(plan, SweepStore.prepare(directory, plan, runs), InProcess(), runs=runs)
    assert report.ok
    return directory


@pytest.fixture(scope="module")
def report_html(sweep_dir: Path) -> str:
    assert main(["report", str(sweep_dir)]) == 0
    return (sweep_dir / "report.html").read_text(encoding="utf-8")


def rows(directory: Path, table: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = pq.read_table(directory / f"{table}.parquet").to_pylist()
    return result


def texts(page: str, tag: str) -> list[str]:
    """The text of every <tag …>…</tag>, tags inside removed, entities decoded."""
    return [html.unescape(re.sub(r"<[^>]+>", "", m))
            for m in re.findall(rf"<{tag}\b[^>]*>(.*?)</{tag}>", page, re.S)]


# --- the page ---------------------------------------------------------------------------

def test_the_report_is_self_contained(report_html: str, sweep_dir: Path) -> None:
    assert report_html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(?:src|href|url)\s*[=(]\s*["']?\s*(?:https?:)?//""", report_html,
                         re.I)
    assert "<script" not in report_html.lower()
    assert "<link" not in report_html.lower()
    assert "@import" not in report_html
    assert not [p.name for p in sweep_dir.iterdir() if p.name.startswith(".report.html")]


def test_one_plot_per_measured_metric_against_the_swept_axis(report_html: str,
                                                             sweep_dir: Path) -> None:
    summary = rows(sweep_dir, "summary")
    measured = [m.column for m in KEY_METRICS
                if any(row[f"{m.column}_mean"] for row in summary)]
    # what this sweep measures, so that the check below cannot pass on an empty page
    assert {"cow_copies_total", "memory_peak_bytes", "fork_pause_p99_seconds",
            "violations_total"} <= set(measured)
    assert "request_latency_p99_seconds" not in measured  # no requests in this workload
    figures = re.findall(r'<figure class="plot[^"]*" id="([^"]+)" data-metric="([^"]+)" '
                         r'data-axis="([^"]+)">(.*?)</figure>', report_html, re.S)
    assert [(metric, axis) for _, metric, axis, _ in figures] == [(m, AXIS) for m in measured]
    for _, _, _, body in figures:
        assert body.count("<svg") == 1
        assert f"{AXIS} (seconds)" in html.unescape(body)  # the x label, as SVG text
        assert "kernel 5.4" in body
        assert "kernel 6.8" in body
    assert "Not plotted: p99 request latency: 0 in every run" in html.unescape(report_html)


def test_the_summary_table_formats_numbers_with_units(report_html: str, sweep_dir: Path) -> None:
    summary = rows(sweep_dir, "summary")
    table = html.unescape(report_html.split('id="summary"')[1].split("</table>")[0])
    assert table.count("<tr>") == 1 + len(summary)
    for row in summary:
        assert format_bytes(row["memory_peak_bytes_mean"]) in table
        assert format_seconds(row["fork_pause_p99_seconds_mean"]) in table
        assert format_seconds(row[AXIS]) in table
    assert 'class="bad"' in table  # the violations of 5.4 and the peaks of 6.8 are marked


def test_the_findings_name_the_kernel_differences_in_the_data(report_html: str,
                                                              sweep_dir: Path) -> None:
    found = texts(report_html, "li")
    runs = rows(sweep_dir, "runs")
    old = [run for run in runs if run["kernel"] == "5.4"]
    new = [run for run in runs if run["kernel"] == "6.8"]
    assert all(run["violations_total"] > 0 for run in old)
    assert not any(run["violations_total"] for run in new)
    worst = max(old, key=lambda run: run["violations_total"])
    violation = next(f for f in found if f.startswith("Correctness violations on 5.4"))
    assert "at 3 of 3 points (6 of 6 runs)" in violation
    assert f"the worst run has {worst['violations_total']:,} (" in violation
    assert f"dma lost writes {worst['dma_lost_writes_total']:,}" in violation
    assert f"{AXIS} = {format_seconds(worst[AXIS])}" in violation
    assert "No correctness violation on 6.8 (6 runs)." in found

    summary = rows(sweep_dir, "summary")
    pause = next(f for f in found if f.startswith("fork pause p99: the kernel changes"))
    assert "at 3 of 3 points compared" in pause
    for kernel in ("5.4", "6.8"):
        means = {format_seconds(r["fork_pause_p99_seconds_mean"]) for r in summary
                 if r["kernel"] == kernel}
        assert any(f"{kernel} {mean}" in pause for mean in means)

    memory = next(f for f in found if "memory peak exceeds the machine's memory" in f)
    peaks = [run["memory_peak_bytes"] for run in new]
    assert min(peaks) > 10 * 2**20 >= max(run["memory_peak_bytes"] for run in old)
    assert "at 3 of 6 points, on kernels 6.8 (3)" in memory
    assert f"worst {format_bytes(max(peaks))} against 10 MiB" in memory
    assert "5.4 stays within it" in memory


# --- findings and plot choice on tables made up here ---------------------------------------

def made_up(summary: list[dict[str, Any]], axes: Sequence[AxisInfo], design: str = "grid",
            memory: int | None = None) -> SweepData:
    """A SweepData with these summary rows, a completed run per row (mean as its value)."""
    runs = []
    for row in summary:
        row.setdefault("replications", 2)
        run = {"point": row["point"], "kernel": row["kernel"], "status": "completed",
               "replication": 0, **{a.column: row[a.column] for a in axes}}
        for metric in KEY_METRICS:
            run[metric.column] = row.get(f"{metric.column}_mean", 0)
        runs.append(run)
    return SweepData(directory=Path("made-up"), name="made-up", description=None, design=design,
                     replications=2, axes=tuple(axes),
                     kernels=tuple(dict.fromkeys(r["kernel"] for r in summary)),
                     summary=tuple(summary), runs=tuple(runs), failures={},
                     machine_memory={r["point"]: memory for r in summary} if memory else {},
                     memory_note=None if memory else "not known here")


RATE = AxisInfo("rate", "processes[0].workloads[0].requests.rate", (1000.0,), True, "/s")


def copies(point: int, kernel: str, mean: float, low: float, high: float) -> dict[str, Any]:
    return {"point": point, "kernel": kernel, "rate": 1000.0, "cow_copies_total_mean": mean,
            "cow_copies_total_ci95_low": low, "cow_copies_total_ci95_high": high}


@pytest.mark.parametrize(("other", "differs"), [
    ((200.0, 190.0, 210.0), True),    # 2× apart, intervals apart
    ((200.0, 90.0, 310.0), False),    # 2× apart, but the intervals overlap
    ((105.0, 104.0, 106.0), False),   # intervals apart, but only 5% apart
])
def test_a_kernel_difference_needs_a_gap_and_apart_intervals(other: tuple[float, float, float],
                                                              differs: bool) -> None:
    data = made_up([copies(0, "4.19", 100.0, 95.0, 105.0), copies(1, "6.8", *other)], [RATE])
    kernel = [f.text for f in findings(data) if f.kind == "kernel"]
    agree = " ".join(f.text for f in findings(data) if f.kind == "agree")
    if differs:
        assert kernel == ["COW copies: the kernel changes the answer at 1 of 1 points compared. "
                          "Largest gap at the one point: 6.8 200 [190, 210], 4.19 100 [95, 105]; "
                          "6.8 is 2.00× the lowest (4.19)."]
    else:
        assert kernel == []
        assert "COW copies" in agree


def test_memory_within_the_machine_says_the_headroom() -> None:
    row = {"point": 0, "kernel": "6.8", "rate": 1000.0, "memory_peak_bytes_mean": 2**30}
    found = findings(made_up([row], [RATE], memory=4 * 2**30))
    assert [f.text for f in found if f.kind == "memory"] == [
        "The memory peak stays within the machine's memory at all 1 points: the highest is "
        "1 GiB, 25% of 4 GiB, on 6.8 at the one point."]
    unknown = findings(made_up([dict(row)], [RATE]))
    assert any("memory is unknown" in f.text and "not known here" in f.text for f in unknown)


def axis(column: str, values: Sequence[Any], unit: str = "s", numeric: bool = True) -> AxisInfo:
    return AxisInfo(column, column, tuple(values), numeric, unit)


def grid(axes: Sequence[AxisInfo], design: str = "grid") -> SweepData:
    summary, point = [], 0
    combos: list[dict[str, Any]] = [{}]
    for a in axes:
        combos = [dict(c, **{a.column: v}) for c in combos for v in a.values]
    for kernel in ("5.10", "6.8"):
        for combo in combos:
            summary.append({"point": point, "kernel": kernel, **combo,
                            "cow_copies_total_mean": 1 + point})
            point += 1
    return made_up(summary, axes, design)


def test_plots_facet_by_the_second_axis_and_pin_the_third() -> None:
    a, b, c = axis("every", [1, 2, 3]), axis("rate", [10, 20], "/s"), axis("cpus", [2, 4, 8], "CPUs")
    plots, skipped = choose_plots(grid([a, b, c]))
    assert [(p.metric.column, p.axis.column) for p in plots] == [
        ("cow_copies_total", "every"), ("cow_copies_total", "rate"), ("cow_copies_total", "cpus")]
    assert (plots[0].facet, plots[0].pinned) == (b, {"cpus": 4})
    assert (plots[1].facet, plots[1].pinned) == (a, {"cpus": 4})
    assert (plots[2].facet, plots[2].pinned) == (a, {"rate": 20})
    assert plots[0].xlabel == "every (seconds)"
    assert plots[2].xlabel == "cpus (CPUs)"
    assert "memory peak: not measured in any run" in skipped


def test_plots_of_a_sampled_design_are_scattered_and_a_kernel_only_sweep_plots_kernels() -> None:
    plots, _ = choose_plots(grid([axis("every", [1, 2]), axis("rate", [10, 20])], design="lhs"))
    assert all(p.scatter and p.facet is None and not p.pinned for p in plots)
    plots, _ = choose_plots(grid([axis("mode", ["a", "b"], "", numeric=False)]))
    assert [(p.axis.column, p.facet.column if p.facet else None) for p in plots] == [
        ("kernel", "mode")]


# --- errors -------------------------------------------------------------------------------

def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], where: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert where in err
    return err


def test_errors_are_one_line_naming_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        sweep_dir: Path) -> None:
    missing = tmp_path / "missing"
    assert "no such directory" in one_line_error(capsys, ["report", str(missing)], str(missing))
    file = tmp_path / "file"
    file.write_text("x")
    assert "not a directory" in one_line_error(capsys, ["report", str(file)], str(file))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a sweep directory" in one_line_error(capsys, ["report", str(empty)], str(empty))
    (empty / "sweep.json").write_text("{not json")
    assert "cannot read sweep.json" in one_line_error(capsys, ["report", str(empty)], str(empty))
    (empty / "sweep.json").write_text('{"name": "x"}')
    assert "not a sweep's" in one_line_error(capsys, ["report", str(empty)], str(empty))

    unfinished = tmp_path / "unfinished"
    shutil.copytree(sweep_dir, unfinished)
    (unfinished / "summary.parquet").unlink()
    assert "has not finished" in one_line_error(capsys, ["report", str(unfinished)],
                                                 str(unfinished))
    (unfinished / "summary.parquet").write_bytes(b"PAR1 garbage")
    assert "cannot read summary.parquet" in one_line_error(capsys, ["report", str(unfinished)],
                                                           str(unfinished))


def rewrite_tables(directory: Path, lost: int | None) -> None:
    """Drop the stored results (all, or the first ``lost``) and write the tables again, as
    cowsim sweep does after runs that failed."""
    plan = plan_sweep(parse_sweep(json.dumps(SWEEP), "rdma.json"), source="rdma.json")
    runs = sweep_runs(plan)
    store = SweepStore(directory)
    gone = runs if lost is None else runs[:lost]
    for run in gone:
        store.path(run.key).unlink()
    write_tables(plan, runs, store, {run.key: "worker died 3 times" for run in gone})


def test_failed_runs_are_listed_and_a_sweep_with_none_completed_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], sweep_dir: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(sweep_dir, partial)
    rewrite_tables(partial, lost=1)
    assert main(["report", str(partial)]) == 0
    page = (partial / "report.html").read_text()
    failed = page.split('id="failures"')[1]
    assert failed.count("worker died 3 times") == 1
    assert any(f.startswith("1 of 12 runs failed") for f in texts(page, "li"))

    none = tmp_path / "none"
    shutil.copytree(sweep_dir, none)
    rewrite_tables(none, lost=None)
    assert "no completed runs" in one_line_error(capsys, ["report", str(none)], str(none))


def test_memory_is_unknown_when_the_base_is_gone(tmp_path: Path, sweep_dir: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(sweep_dir, moved)
    manifest = json.loads((moved / "sweep.json").read_text())
    manifest["sweep"]["base"] = "gone/base.yaml"
    (moved / "sweep.json").write_text(json.dumps(manifest))
    data = load_sweep_dir(moved)
    assert data.machine_memory == {}
    assert data.memory_note is not None
    assert "gone/base.yaml" in data.memory_note


# --- in a browser -------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--hide-scrollbars"]


def chromium(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="cowsim-chromium-") as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args,
                               page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120, check=False)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                    reason="chromium is not installed (apt-get install chromium); CI runs this")
def test_the_report_opens_in_headless_chromium(report_html: str, sweep_dir: Path,
                                               tmp_path: Path) -> None:
    assert CHROMIUM is not None, "CI=true: chromium must be installed (.ci/run's apt phase)"
    # the harness sees a page's errors: a script error on a page of our own
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    assert any("undefinedFunction" in m for m in console_messages(chromium(broken, "--dump-dom").stderr))

    page = sweep_dir / "report.html"
    dumped = chromium(page, "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert console_messages(dumped.stderr) == []
    dom = dumped.stdout
    figures = re.findall(r'<figure class="plot[^"]*" id="([^"]+)"', report_html)
    assert figures
    for figure in figures:
        body = dom.split(f'id="{figure}"', 1)[1].split("</figure>", 1)[0]
        assert "<svg" in body
        assert f"{AXIS} (seconds)" in html.unescape(body)  # the plot's x label, as the DOM has it

    shot = tmp_path / "shot.png"
    taken = chromium(page, "--window-size=1200,1600", f"--screenshot={shot}")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert console_messages(taken.stderr) == []
    with Image.open(shot) as image:
        assert image.size == (1200, 1600)
        counted = image.convert("RGB").getcolors(maxcolors=1 << 24)
        assert counted is not None
        colours = {colour for _, colour in counted if isinstance(colour, tuple)}
        # the plots are drawn: matplotlib's first two line colours (tab:blue, tab:orange)
        near = [any(all(abs(p - q) < 24 for p, q in zip(pixel, target, strict=True))
                    for pixel in colours) for target in ((31, 119, 180), (255, 127, 14))]
    assert near == [True, True]
    assert len(colours) > 200
