"""The backfill path end to end (slow tier): a run's timeline in a real Prometheus.

A 3 s forking server (a fork at 1 s, ``metrics_interval: 100ms`` so the fork's COW burst
spans ten samples) runs locally with ``cowsim run --out``; ``cowsim export openmetrics
DIR --start T`` (T: a whole hour, two to three hours ago, well inside what the TSDB
accepts) writes it, ``promtool tsdb create-blocks-from openmetrics`` makes blocks of it,
and a Debian ``prometheus`` on loopback (an ephemeral port, a temporary folder, nothing
to scrape) serves those blocks.  Every query of the run timeline dashboard
(deploy/grafana/dashboards/timeline/), the variables set to the run's kernel and
workload and ``$window`` to 1s, goes to ``/api/v1/query_range`` over ``[T, T +
sim_seconds]`` every 100 ms, and must return exactly the run's values at the mapped
instants ``T + t``: the gauges and cumulative counters as the result's series hold them,
the rates as the counters' increase over the window (the samples fall on the window's
edges, so Prometheus extrapolates nothing), the quantiles as ``histogram_quantile`` of
the buckets' increase.  The cumulative COW copies at the end are the result's
``cow_copies_total``.

Skipped when prometheus or promtool is missing outside CI (with ``CI`` set it fails).
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.test_deploy_prometheus import free_port, get, prometheus_binary, substitute
from tools import gen_dashboards

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = (ROOT / "deploy" / "grafana" / "dashboards" / gen_dashboards.TIMELINE_DIR
             / "cowsim-run-timeline.json")
SPEC = """
name: backfill-fork
kernel: "6.8"
duration: 3s
seed: 1
metrics_interval: 100ms
machine: {cpus: 4}
processes:
  - name: server
    memory: 16MiB
    threads: 1
    workloads:
      - kind: forking_server
        requests: {rate: 2k/s, write_fraction: 0.5, service: 5us}
        fork: {mode: periodic, first_at: 1s, every: 10s, snapshot: {scan_rate: 16MiB/s}}
"""
KERNEL, WORKLOAD = "6.8", "forking_server"
WINDOW_MS = 1000
"""``$window`` (1s) in milliseconds."""
STEP_MS = 100


def ms(seconds: float) -> int:
    """A timestamp in milliseconds, as the export writes it (``%.3f``) and Prometheus keeps it."""
    return round(seconds * 1000)


def cowsim() -> list[str]:
    script = Path(sys.executable).with_name("cowsim")
    return [str(script)] if script.exists() else [shutil.which("cowsim") or "cowsim"]


def promtool_binary() -> str:
    prometheus_binary()  # the same package: fails in CI, skips elsewhere
    found = shutil.which("promtool")
    assert found is not None, "prometheus is installed but promtool is not"
    return found


@dataclass
class Backfilled:
    url: str
    start: int
    """T, Unix seconds."""
    result: dict[str, Any]

    def query_range(self, expr: str) -> list[dict[str, Any]]:
        end = self.start + float(self.result["sim_seconds"])
        answer = get(f"{self.url}/api/v1/query_range?" + urllib.parse.urlencode(
            {"query": expr, "start": self.start, "end": f"{end:.3f}", "step": STEP_MS / 1000}))
        assert answer["status"] == "success", (expr, answer)
        assert answer["data"]["resultType"] == "matrix", expr
        return list(answer["data"]["result"])


def _run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False,
                          **kwargs)
    assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
    return done


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backfilled]:
    prometheus, promtool = prometheus_binary(), promtool_binary()
    folder = tmp_path_factory.mktemp("backfill")
    (folder / "spec.yaml").write_text(SPEC, encoding="utf-8")
    _run([*cowsim(), "run", str(folder / "spec.yaml"), "--out", str(folder / "run")])
    result = json.loads((folder / "run" / "result.json").read_text(encoding="utf-8"))
    start = (int(time.time()) - 2 * 3600) // 3600 * 3600
    exported = _run([*cowsim(), "export", "openmetrics", str(folder / "run"),
                     "--start", str(start)])
    (folder / "run.om").write_text(exported.stdout, encoding="utf-8")
    _run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(folder / "run.om"),
          str(folder / "data")])
    (folder / "prometheus.yml").write_text("global: {}\n", encoding="utf-8")
    port = free_port()
    log = (folder / "prometheus.log").open("w", encoding="utf-8")
    process = subprocess.Popen(
        [prometheus, f"--config.file={folder / 'prometheus.yml'}",
         f"--storage.tsdb.path={folder / 'data'}", "--storage.tsdb.retention.time=30d",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (folder / "prometheus.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass  # not listening, or not ready (503)
            assert time.monotonic() < deadline, (folder / "prometheus.log").read_text()[-3000:]
            time.sleep(0.2)
        yield Backfilled(url, start, result)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
    assert process.poll() is not None


# What the run's series say each query must return: series key → {timestamp ms: value}.
Expected = dict[str, dict[int, float]]


def bucket_quantile(q: float, bounds: list[float], counts: list[float]) -> float:
    """PromQL's histogram_quantile of one histogram (cumulative ``counts`` per bound, the
    last +Inf)."""
    observations = counts[-1]
    if observations == 0:
        return math.nan
    rank = q * observations
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if index == len(counts) - 1:
        return bounds[-1]
    start, count = 0.0, counts[index]
    if index > 0:
        start = bounds[index - 1]
        count -= counts[index - 1]
        rank -= counts[index - 1]
    return start + (bounds[index] - start) * (rank / count)


class Run:
    """The result's series, on the mapped timestamps."""

    def __init__(self, backfilled: Backfilled) -> None:
        self.start = backfilled.start
        self.series = backfilled.result["series"]
        timeline = self.series["timeline"]
        self.stamps = [ms(self.start + t) for t in timeline["t"]]
        self.counters: dict[str, list[int]] = timeline["counters"]
        self.histograms: dict[str, dict[str, Any]] = timeline["histograms"]

    def points(self, points: dict[str, list[float]]) -> dict[int, float]:
        return {ms(self.start + t): float(v) for t, v in zip(points["t"], points["v"], strict=True)}

    def family(self, prefix: str, total: str | None = None) -> dict[str, list[float]]:
        """``{label value: values}`` of the ``<prefix><value>`` counters, and ``other`` for
        the rest of ``total`` (as the export, and the live exporter, attribute them)."""
        out = {name.removeprefix(prefix): [float(v) for v in values]
               for name, values in self.counters.items() if name.startswith(prefix)}
        if total is not None:
            out["other"] = [max(0.0, t - sum(values[i] for values in out.values()))
                            for i, t in enumerate(self.counters[total])]
        return out

    def cumulative(self, values: list[float]) -> dict[int, float]:
        return dict(zip(self.stamps, values, strict=True))

    def rate(self, values: list[float]) -> dict[int, float]:
        """The increase over the window ending at each instant a window after t=0, per second."""
        totals = self.cumulative(values)
        return {stamp: (value - totals[stamp - WINDOW_MS]) / (WINDOW_MS / 1000)
                for stamp, value in totals.items() if stamp - WINDOW_MS in totals}

    def total(self, family: dict[str, list[float]]) -> list[float]:
        return [sum(column) for column in zip(*family.values(), strict=True)]

    def quantile(self, name: str, q: float) -> dict[int, float]:
        histogram = self.histograms[name]
        bounds = [*map(float, histogram["le"]), math.inf]
        rows = dict(zip(self.stamps, histogram["buckets"], strict=True))
        return {stamp: bucket_quantile(q, bounds, [float(a - b) for a, b in zip(
                    row, rows[stamp - WINDOW_MS], strict=True)])
                for stamp, row in rows.items() if stamp - WINDOW_MS in rows}



def expected(run: Run, title: str, ref: str) -> Expected:
    """The series key (its legend's labels) → values, of every timeline panel query."""
    processes = run.series["processes"]
    copies = run.family("cow_copies_", "cow_copies")
    faults = run.family("faults_", "page_faults")
    violations = run.family("violations_")  # the kernel's, and the workload's two:
    for counter, kind in (("dma_lost_writes", "dma_lost_write"),
                          ("stale_pin_reads", "stale_pin_read")):
        violations[kind] = [float(v) for v in run.counters[counter]]
    assert run.total(copies) == [float(v) for v in run.counters["cow_copies"]]
    table: dict[tuple[str, str], Callable[[], Expected]] = {
        ("Memory", "A"): lambda: {f"{KERNEL} {WORKLOAD}": run.points(
            run.series["run"]["memory_bytes"])},
        ("Shared vs exclusive pages", "A"): lambda: {
            f"shared {p}": run.points(processes[p]["shared_pages"]) for p in processes},
        ("Shared vs exclusive pages", "B"): lambda: {
            f"exclusive {p}": run.points(processes[p]["exclusive_pages"]) for p in processes},
        ("COW rate by cause", "A"): lambda: {k: run.rate(v) for k, v in copies.items()},
        ("COW copies so far", "A"): lambda: {k: run.cumulative(v) for k, v in copies.items()},
        ("Page faults by type", "A"): lambda: {k: run.rate(v) for k, v in faults.items()},
        ("Write faults: reused vs copied", "A"): lambda: {f"reused {KERNEL}": run.rate(
            [float(v) for v in run.counters["wp_reuses"]])},
        ("Write faults: reused vs copied", "B"): lambda: {f"copied {KERNEL}": run.rate(
            run.total(copies))},
        ("Violations so far", "A"): lambda: {k: run.cumulative(v)
                                             for k, v in violations.items()},
    }
    for panel, metric in (("Request latency", "request_latency_seconds"),
                          ("Fault latency", "fault_latency_seconds"),
                          ("Fork pause", "fork_pause_seconds")):
        for index, q in enumerate(gen_dashboards.QUANTILES):
            table[(panel, chr(ord("A") + index))] = functools.partial(
                lambda name, quantile: {f"p{round(quantile * 100)} {KERNEL}":
                                        run.quantile(name, quantile)}, metric, q)
    assert (title, ref) in table, f"the test does not know what {title} {ref} shows"
    return table[(title, ref)]()


def legend(template: str, labels: dict[str, str]) -> str:
    return template.replace("{{", "{").replace("}}", "}").format(**labels)


def same(got: float, want: float) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)


def test_the_timeline_dashboard_shows_the_run(backfilled: Backfilled) -> None:
    model = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    run = Run(backfilled)
    checked = 0
    for title, target in gen_dashboards.panel_queries(model):
        expr = substitute(target["expr"].replace("$window", f"{WINDOW_MS // 1000}s"),
                          KERNEL, WORKLOAD)
        want = expected(run, title, target["refId"])
        got = {legend(target["legendFormat"], series["metric"]):
               {ms(float(stamp)): float(value) for stamp, value in series["values"]}
               for series in backfilled.query_range(expr)}
        where = (title, target["refId"], expr)
        # histogram_quantile of no observations is NaN: Prometheus returns those points too
        assert set(got) == {key for key, points in want.items()
                            if any(not math.isnan(v) for v in points.values())}, (where, got)
        for key, points in got.items():
            assert points, (where, key)
            wanted = want[key]
            for stamp, value in wanted.items():
                if math.isnan(value) and stamp not in points:
                    continue
                assert stamp in points, (where, key, stamp - ms(backfilled.start))
                assert same(points[stamp], value), (where, key, stamp - ms(backfilled.start),
                                                    points[stamp], value)
                checked += 1
    assert checked > 300


def test_the_fork_burst_and_the_totals_show(backfilled: Backfilled) -> None:
    """The copies at the end are the result's; the COW rate peaks while the child lives."""
    result, end = backfilled.result, backfilled.start + float(backfilled.result["sim_seconds"])
    selector = f'kernel="{KERNEL}", workload="{WORKLOAD}"'
    answer = get(f"{backfilled.url}/api/v1/query?" + urllib.parse.urlencode(
        {"query": f"sum(cowsim_cow_copies_total{{{selector}}})", "time": f"{end:.3f}"}))
    assert float(answer["data"]["result"][0]["value"][1]) == result["metrics"]["cow_copies_total"]
    assert result["metrics"]["cow_copies_total"] > 0
    rates = backfilled.query_range(f"sum(rate(cowsim_cow_copies_total{{{selector}}}[1s]))")
    values = [(float(stamp) - backfilled.start, float(value)) for stamp, value in rates[0]["values"]]
    peak = max(values, key=lambda point: point[1])
    assert 1.0 < peak[0] <= 2.1, values  # the fork at 1 s, the child's second
    assert peak[1] > 0, values
    assert all(value == 0 for t, value in values if t < 1.0), values


def test_the_variables_list_the_run(backfilled: Backfilled) -> None:
    model = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    lists = {v["name"]: v["query"] for v in model["templating"]["list"] if v["type"] == "query"}
    assert set(lists) == {"kernel", "workload"}
    for label, query in lists.items():
        inner = query.removeprefix("label_values(").removesuffix(f", {label})")
        answer = get(f"{backfilled.url}/api/v1/label/{label}/values?" + urllib.parse.urlencode(
            {"match[]": substitute(inner, KERNEL, WORKLOAD)}))
        assert answer["data"] == [{"kernel": KERNEL, "workload": WORKLOAD}[label]], answer
