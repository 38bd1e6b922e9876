"""Generate cowsim's Grafana dashboards from code (grafana-foundation-sdk).

    python tools/gen_dashboards.py [--out DIR]

writes one JSON file per dashboard of :data:`DASHBOARDS` into
``deploy/grafana/dashboards/`` (or ``DIR``), where Grafana's provisioning
(``deploy/grafana/provisioning/dashboards/cowsim.yml``) picks them up.  The JSON is
checked in; ``tests/test_deploy.py`` regenerates it into a temporary directory and
fails when it differs, so edit this file and rerun it, never the JSON.

What the panels query are the exported metric names (an interface: docs/design.md,
"Metrics") and the recording rules of ``deploy/prometheus/rules/cowsim-recording.yml``
(names ``level:metric:rate1m``).  Every query that has ``kernel`` and ``workload``
labels selects on the template variables ``$kernel`` and ``$workload`` (multi-valued,
"All" is ``.*``); the service's own gauges (runs by state, queue depth) and the gRPC
metrics have no such labels and show the whole server.  Each query's legend names the
labels the series carry (``{{kernel}}`` …): ``tests/test_deploy_prometheus.py`` sends
every query to a real Prometheus and checks that each result has those labels.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "deploy" / "grafana" / "dashboards"

# Every panel reads the data source chosen in the ${datasource} variable (the
# provisioned Prometheus by default), so the same JSON works against any Prometheus.
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
RUN = 'kernel=~"$kernel", workload=~"$workload"'
"""The selector of the template variables, for metrics labelled by run."""
QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a panel and the legend of its series."""

    expr: str
    legend: str


def _target(query: Query, ref_id: str) -> prometheus.Dataquery:
    return (prometheus.Dataquery().expr(query.expr).legend_format(query.legend)
            .ref_id(ref_id).range())


def _targets(panel: Any, queries: tuple[Query, ...]) -> Any:
    for index, query in enumerate(queries):
        panel = panel.with_target(_target(query, chr(ord("A") + index)))
    return panel


def graph(title: str, description: str, unit: str, *queries: Query, stack: bool = False,
          width: int = 12) -> timeseries.Panel:
    """A time series panel: one line (or stacked area) per series of each query."""
    panel = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE)
             .unit(unit).height(8).span(width).fill_opacity(20 if stack else 0)
             .legend(common_builders.VizLegendOptions().show_legend(True)
                     .display_mode(common.LegendDisplayMode.TABLE)
                     .placement(common.LegendPlacement.BOTTOM).calcs(["max", "lastNotNull"]))
             .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                      .sort(common.SortOrder.DESCENDING)))
    if stack:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    return _targets(panel, queries)  # type: ignore[no-any-return]


def single(title: str, description: str, unit: str, *queries: Query,
           width: int = 6) -> stat.Panel:
    """A stat panel: the last value of each series."""
    panel = (stat.Panel().title(title).description(description).datasource(DATASOURCE)
             .unit(unit).height(4).span(width))
    return _targets(panel, queries)  # type: ignore[no-any-return]


def quantiles(bucket_rates: str, by: str, what: str) -> tuple[Query, ...]:
    """p50/p90/p99 by ``by`` of per-second bucket rates (a recording rule's or a rate())."""
    return tuple(Query(f"histogram_quantile({q}, sum by (le, {by}) ({bucket_rates}))",
                       f"p{round(q * 100)} {what}") for q in QUANTILES)


def run_variables(board: dashboard.Dashboard,
                  listing: str = "cowsim_wp_reuses_total") -> dashboard.Dashboard:
    """The data source, ``kernel`` and ``workload`` variables (workload follows kernel),
    listed from the series of ``listing``.

    ``cowsim_wp_reuses_total`` has one series per (kernel, workload) pair, created when
    the server first sees the pair, so it lists every pair cheaply."""
    board = board.with_variable(dashboard.DatasourceVariable("datasource").label("Data source")
                                .type("prometheus"))
    for name, query in (("kernel", f"label_values({listing}, kernel)"),
                        ("workload", f'label_values({listing}{{kernel=~"$kernel"}}, '
                                     "workload)")):
        board = board.with_variable(
            dashboard.QueryVariable(name).label(name.capitalize()).datasource(DATASOURCE)
            .query(query).multi(True).include_all(True).all_value(".*")
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(models.VariableSort.ALPHABETICAL_ASC))
    return board


def new_board(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return run_variables(dashboard.Dashboard(title).uid(uid).description(description)
                         .tags(["cowsim"]).time("now-1h", "now").refresh("30s")
                         .timezone("browser").readonly())


def service() -> dashboard.Dashboard:
    board = new_board("cowsim-service", "cowsim / service overview",
                      "The server: stored runs, queue, throughput, cache, gRPC.")
    board = (board.with_row(dashboard.Row("Runs"))
             .with_panel(graph("Runs by state", "Stored runs by state (all kernels and "
                               "workloads: cowsim_runs has no run labels).", "short",
                               Query("sum by (state) (cowsim_runs)", "{{state}}"), stack=True))
             .with_panel(graph("Queue depth", "Jobs waiting for a worker, per server; "
                               "CowsimQueueSaturated fires at 200.", "short",
                               Query("sum by (instance) (cowsim_queue_depth)", "{{instance}}")))
             .with_panel(graph("Throughput", "Runs reaching a final state per second.", "ops",
                               Query(f"kernel_workload_state:cowsim_runs_finished:rate1m{{{RUN}}}",
                                     "{{state}} {{kernel}} {{workload}}")))
             .with_panel(graph("Result cache hits", "Submissions answered from the result "
                               "cache per second.", "ops",
                               Query(f"kernel_workload:cowsim_result_cache_hits:rate1m{{{RUN}}}",
                                     "{{kernel}} {{workload}}")))
             .with_panel(graph("Run wall time", "Wall time of a run in its worker.", "s",
                               *quantiles("rate(cowsim_run_wall_seconds_bucket"
                                          f"{{{RUN}}}[$__rate_interval])", "kernel", "{{kernel}}"),
                               width=24)))
    grpc_rate = "grpc_service_method_code:grpc_server_handled:rate1m"
    return (board.with_row(dashboard.Row("gRPC"))
            .with_panel(graph("RPCs by method", "Completed RPCs per second.", "ops",
                              Query(f"sum by (grpc_method) ({grpc_rate})", "{{grpc_method}}"),
                              width=8))
            .with_panel(graph("gRPC errors", "The share of RPCs not ending OK, per method "
                              "(a gap: the method was not called).", "percentunit",
                              Query("grpc_service_method:grpc_server_handled:error_ratio_rate1m",
                                    "{{grpc_method}}"),
                              Query(f'sum by (grpc_code) ({grpc_rate}{{grpc_code!="OK"}})',
                                    "{{grpc_code}} /s"),
                              width=8))
            .with_panel(graph("gRPC latency", "Server handling time per method.", "s",
                              *quantiles("grpc_service_method_le:grpc_server_handling_seconds_"
                                         "bucket:rate1m", "grpc_method", "{{grpc_method}}"),
                              width=8)))


def cow_tlb() -> dashboard.Dashboard:
    board = new_board("cowsim-cow-tlb", "cowsim / COW and TLB",
                      "What the simulated kernels do: copy-on-write copies and reuses, page "
                      "faults, TLB shootdowns.  Rates are per wall-clock second of the "
                      "server, as the runs progress.")
    copies = f"kernel_workload_cause:cowsim_cow_copies:rate1m{{{RUN}}}"
    return (board
            .with_panel(graph("COW copies by cause", "Pages copied to break COW sharing, by "
                              "why the page was read-only.", "ops",
                              Query(f"sum by (cause) ({copies})", "{{cause}}"), stack=True))
            .with_panel(graph("COW copies by kernel", "All causes.", "ops",
                              Query(f"sum by (kernel) ({copies})", "{{kernel}}")))
            .with_panel(graph("Write faults: reused vs copied", "pgreuse: the write fault "
                              "found the page exclusive and kept it.", "ops",
                              Query(f"sum by (kernel) (kernel_workload:cowsim_wp_reuses:rate1m"
                                    f"{{{RUN}}})", "reused {{kernel}}"),
                              Query(f"sum by (kernel) ({copies})", "copied {{kernel}}")))
            .with_panel(graph("Page faults by type", "", "ops",
                              Query(f"sum by (type) (kernel_workload_type:cowsim_page_faults:"
                                    f"rate1m{{{RUN}}})", "{{type}}"), stack=True))
            .with_panel(graph("TLB shootdowns", "Flushes that had to reach other CPUs.", "ops",
                              Query(f"sum by (kernel) (kernel_workload:cowsim_tlb_shootdowns:"
                                    f"rate1m{{{RUN}}})", "{{kernel}}"), width=8))
            .with_panel(graph("TLB shootdown IPIs", "Inter-processor interrupts sent.", "ops",
                              Query(f"sum by (kernel) (kernel_workload:cowsim_tlb_ipis:rate1m"
                                    f"{{{RUN}}})", "{{kernel}}"), width=8))
            .with_panel(graph("TLB misses", "Misses the machine model charged.", "ops",
                              Query(f"sum by (kernel) (rate(cowsim_tlb_misses_total{{{RUN}}}"
                                    "[$__rate_interval]))", "{{kernel}}"), width=8)))


def latency() -> dashboard.Dashboard:
    board = new_board("cowsim-latency", "cowsim / latency",
                      "Quantiles of the simulated-time histograms (simulated seconds), "
                      "from per-second bucket rates summed across servers.")
    for title, metric, description in (
            ("Request latency", "request_latency_seconds", "Simulated requests."),
            ("Fault latency", "fault_latency_seconds", "Page faults, all types."),
            ("Fork pause", "fork_pause_seconds", "Time a process stood still in fork()."),
            ("Checkpoint duration", "checkpoint_duration_seconds",
             "A checkpoint's clear_refs and scan.")):
        rates = f"kernel_workload_le:cowsim_{metric}_bucket:rate1m{{{RUN}}}"
        board = board.with_panel(graph(title, description, "s",
                                       *quantiles(rates, "kernel", "{{kernel}}")))
    return board


def correctness() -> dashboard.Dashboard:
    board = new_board("cowsim-correctness", "cowsim / correctness",
                      "Correctness violations the simulated kernels showed, by kernel; "
                      "CowsimCorrectnessViolation alerts on any.")

    def kinds(selector: str, window: str) -> str:
        return (f"sum by (kernel) (increase(cowsim_violations_total{{{RUN}, {selector}}}"
                f"[{window}]))")

    for title, selector, description in (
            ("Lost DMA writes", 'kind="dma_lost_write"',
             "Device writes into a page that COW had replaced (the O_DIRECT + fork race)."),
            ("Leaks across fork", 'kind="leak"',
             "A child saw the parent's data written after the fork."),
            ("Stale pins", 'kind=~"stale_pin|stale_pin_read"',
             "Pinned pages no longer mapped, and reads through them."),
            ("Diverged pins", 'kind="pin_diverged"',
             "A pin and the mapping point at different pages.")):
        board = (board
                 .with_panel(single(f"{title} in range", description, "short",
                                    Query(kinds(selector, "$__range"), "{{kernel}}")))
                 .with_panel(graph(title, description, "short",
                                   Query(kinds(selector, "$__rate_interval"), "{{kernel}}"),
                                   width=18)))
    return board.with_panel(graph(
        "All violations by kind", "", "ops",
        Query(f"sum by (kernel, kind) (kernel_workload_kind:cowsim_violations:rate1m{{{RUN}}})",
              "{{kind}} {{kernel}}"), width=24))


WINDOWS = ("1s", "5s", "15s", "1m", "5m")
"""Choices of the timeline's ``$window`` (the rate window): a backfilled run is sampled
every ``metrics_interval`` (default 1s, 100ms to see a fork's burst), not every scrape."""
TIMELINE_DIR = "timeline"
"""The timeline's sub-folder of the dashboards: what it queries is backfilled, not scraped
(no recording rules, no service metrics), so the live checks of the top folder
(``tests/test_deploy_prometheus.py``) leave it to ``tests/test_backfill.py``."""


def timeline() -> dashboard.Dashboard:
    """One run's history in simulated time, as ``cowsim export openmetrics`` backfills it.

    Only the exported names (clients/openmetrics.py): the sampled gauges, the counters'
    cumulative values and the histograms' buckets, with rates over ``$window``."""
    board = (dashboard.Dashboard("cowsim / run timeline").uid("cowsim-run-timeline")
             .description("One run backfilled with cowsim export openmetrics RUN --start TIME "
                          "| promtool tsdb create-blocks-from openmetrics: memory, shared vs "
                          "exclusive pages, COW rate, latency quantiles and violations over "
                          "its simulated time (TIME + t).  Set the time range to the run's "
                          "and $window to about 10 samples (metrics_interval).")
             .tags(["cowsim", "timeline"]).time("now-1h", "now").timezone("browser").readonly())
    board = run_variables(board, "cowsim_memory_bytes")
    board = board.with_variable(
        dashboard.CustomVariable("window").label("Rate window").values(",".join(WINDOWS))
        .current(models.VariableOption(text=WINDOWS[0], value=WINDOWS[0], selected=True)))
    copies = f"cowsim_cow_copies_total{{{RUN}}}"
    board = (board.with_row(dashboard.Row("Memory"))
             .with_panel(graph("Memory", "Physical memory in use (the run).", "bytes",
                               Query(f'cowsim_memory_bytes{{{RUN}, process=""}}',
                                     "{{kernel}} {{workload}}")))
             .with_panel(graph("Shared vs exclusive pages", "Resident pages of each process "
                               "another process maps too (left to copy on write) and those it "
                               "maps alone.", "short",
                               Query(f"cowsim_shared_pages{{{RUN}}}", "shared {{process}}"),
                               Query(f"cowsim_exclusive_pages{{{RUN}}}",
                                     "exclusive {{process}}"))))
    board = (board.with_row(dashboard.Row("Copy on write"))
             .with_panel(graph("COW rate by cause", "Pages copied per simulated second, over "
                               "$window.", "ops",
                               Query(f"sum by (cause) (rate({copies}[$window]))", "{{cause}}"),
                               stack=True))
             .with_panel(graph("COW copies so far", "Cumulative copies by cause.", "short",
                               Query(f"sum by (cause) ({copies})", "{{cause}}")))
             .with_panel(graph("Page faults by type", "Faults per simulated second, over "
                               "$window.", "ops",
                               Query(f"sum by (type) (rate(cowsim_page_faults_total{{{RUN}}}"
                                     "[$window]))", "{{type}}"), stack=True))
             .with_panel(graph("Write faults: reused vs copied", "pgreuse: the write fault "
                               "found the page exclusive and kept it.", "ops",
                               Query(f"sum by (kernel) (rate(cowsim_wp_reuses_total{{{RUN}}}"
                                     "[$window]))", "reused {{kernel}}"),
                               Query(f"sum by (kernel) (rate({copies}[$window]))",
                                     "copied {{kernel}}"))))
    board = board.with_row(dashboard.Row("Latency"))
    for title, metric, description in (
            ("Request latency", "request_latency_seconds", "Simulated requests."),
            ("Fault latency", "fault_latency_seconds", "Page faults, all types."),
            ("Fork pause", "fork_pause_seconds", "Time a process stood still in fork().")):
        rates = f"rate(cowsim_{metric}_bucket{{{RUN}}}[$window])"
        board = board.with_panel(graph(title, f"{description}  Quantiles over $window.", "s",
                                       *quantiles(rates, "kernel", "{{kernel}}"), width=8))
    return (board.with_row(dashboard.Row("Correctness"))
            .with_panel(graph("Violations so far", "Cumulative correctness violations by "
                              "kind (leaks across fork, stale or diverged pins, lost DMA "
                              "writes).", "short",
                              Query(f"sum by (kind) (cowsim_violations_total{{{RUN}}})",
                                    "{{kind}}"), width=24)))


DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "cowsim-service.json": service,
    "cowsim-cow-tlb.json": cow_tlb,
    "cowsim-latency.json": latency,
    "cowsim-correctness.json": correctness,
    f"{TIMELINE_DIR}/cowsim-run-timeline.json": timeline,
}
"""Dashboard path (under the dashboards folder) → its builder."""


def render(board: dashboard.Dashboard) -> str:
    """The dashboard's JSON, stable: sorted keys, panel ids numbered from 1."""
    model: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    for number, panel in enumerate(model["panels"], start=1):
        panel["id"] = number
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate(out: Path = OUT) -> list[Path]:
    """Write every dashboard into ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in DASHBOARDS.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(make()), encoding="utf-8")
        written.append(path)
    return written


def panel_queries(model: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(panel title, target) of every query of a dashboard's JSON, rows included."""
    for panel in model["panels"]:
        for inner in (panel, *panel.get("panels", ())):
            for target in inner.get("targets") or ():
                yield inner["title"], target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder (default {OUT})")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
