"""deploy/: the checked-in dashboards are the generator's, the Prometheus files pass promtool.

* The dashboards in ``deploy/grafana/dashboards/`` must be exactly what
  ``python tools/gen_dashboards.py`` writes (regenerated into a temporary folder here).
* Every name a panel queries is an exported metric (service/metrics.py) or a recording
  rule of ``deploy/prometheus/rules/cowsim-recording.yml`` — a typo here would be a panel
  that is silently empty.  The run timeline (``dashboards/timeline/``) reads a backfilled
  run, where neither the rules nor the service's metrics exist: every name it queries is
  one ``cowsim export openmetrics`` writes (clients/openmetrics.py; ``tests/test_backfill.py``
  sends its queries to a real Prometheus).  ``tests/test_deploy_prometheus.py`` (slow) goes
  further and runs every query of the live dashboards (the top folder) against a real
  Prometheus scraping a server.
* ``promtool check config``, ``check rules`` and ``test rules`` (the alert unit tests in
  ``deploy/prometheus/tests/``) pass: skipped only when promtool is missing outside CI;
  with ``CI`` set a missing promtool fails (.ci/run installs Debian's ``prometheus``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cowsim.clients.openmetrics import GAUGES, openmetrics_text
from cowsim.service.metrics import PrometheusExporter
from cowsim.sim import parse_spec, run
from tools import gen_dashboards

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"

# A PromQL metric name: letters, digits, _ and : (recording rules have colons).
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if "CI" in os.environ:
            pytest.fail("promtool is missing (Debian package 'prometheus'; .ci/run installs it)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return found


def checked_in() -> dict[str, dict[str, Any]]:
    """Every dashboard JSON, sub-folders included, by its path under the folder."""
    folder = GRAFANA / "dashboards"
    return {path.relative_to(folder).as_posix(): json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(folder.rglob("*.json"))}


def test_the_dashboards_are_the_generators(tmp_path: Path) -> None:
    written = gen_dashboards.generate(tmp_path)
    assert {path.relative_to(tmp_path).as_posix() for path in written} == set(checked_in())
    for path in written:
        stored = GRAFANA / "dashboards" / path.relative_to(tmp_path)
        assert path.read_text(encoding="utf-8") == stored.read_text(encoding="utf-8"), \
            f"{stored} is stale: run python tools/gen_dashboards.py"


def test_every_dashboard_has_the_run_variables_and_queries() -> None:
    for name, model in checked_in().items():
        variables = {v["name"]: v for v in model["templating"]["list"]}
        assert {"datasource", "kernel", "workload"} <= set(variables), name
        for label in ("kernel", "workload"):
            assert variables[label]["query"].startswith("label_values("), name
        queries = list(gen_dashboards.panel_queries(model))
        assert queries, name
        for title, target in queries:
            assert target["expr"], (name, title)
            assert target["refId"], (name, title)
            # a query of a run-labelled metric selects on the variables
            if "kernel" in target["legendFormat"]:
                assert "$kernel" in target["expr"], title
                assert "$workload" in target["expr"], title


def _known_names() -> set[str]:
    """Every exported series name and recording rule name."""
    families = list(PrometheusExporter().registry.collect())
    # client_python names a counter's family without its _total; the series have it
    exported = {family.name + ("_total" if family.type == "counter" else "")
                for family in families}
    rules = yaml.safe_load((PROMETHEUS / "rules" / "cowsim-recording.yml").read_text())
    recorded = {rule["record"] for group in rules["groups"] for rule in group["rules"]}
    return exported | recorded | {"up"}


# A small run with a fork and every histogram the timeline draws: what it exports.
_TINY_FORK = """
name: names
kernel: "6.8"
duration: 300ms
seed: 1
metrics_interval: 100ms
processes:
  - name: server
    memory: 1MiB
    threads: 1
    workloads:
      - kind: forking_server
        requests: {rate: 2k/s, write_fraction: 0.5, service: 5us}
        fork: {mode: periodic, first_at: 100ms, every: 10s, snapshot: {scan_rate: 16MiB/s}}
"""


def _backfilled_names() -> set[str]:
    """Every series name ``cowsim export openmetrics`` writes for a run (its TYPE lines:
    a counter family's series end in _total, a histogram's are _bucket/_sum/_count)."""
    text = openmetrics_text(run(parse_spec(_TINY_FORK)), start=1_700_000_000.0)
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ")
            names.add(family + "_total" if kind == "counter" else family)
    return names


def test_the_backfilled_names_are_the_live_ones_plus_the_gauges() -> None:
    """A backfilled run's counters and histograms are named as the live exporter's."""
    gauges = {metric for metric, _, _ in GAUGES.values()}
    assert gauges <= _backfilled_names()
    assert _backfilled_names() - gauges <= _known_names()


def _names(expr: str) -> set[str]:
    """The metric names in a PromQL expression (a rough lexer: no strings, no keywords)."""
    text = re.sub(r'"[^"]*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # selectors (label names)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without)\s*\([^)]*\)", "", text)  # grouping labels
    return {token for token in _NAME.findall(text)
            if "_" in token and not token.startswith(("histogram_", "label_"))}


def test_every_queried_name_exists() -> None:
    live, backfilled = _known_names(), _backfilled_names()
    for name, model in checked_in().items():
        known = backfilled if name.startswith(f"{gen_dashboards.TIMELINE_DIR}/") else live
        for title, target in gen_dashboards.panel_queries(model):
            for metric in _names(target["expr"]):
                family = _HISTOGRAM_SERIES.sub("", metric)  # x_bucket is a series of x
                assert metric in known or family in known, (name, title, metric)


def test_prometheus_config_and_rules_pass_promtool() -> None:
    tool = promtool()
    for command in (["check", "config", str(PROMETHEUS / "prometheus.yml")],
                    ["check", "rules", *map(str, sorted((PROMETHEUS / "rules").glob("*.yml")))],
                    ["test", "rules", *map(str, sorted((PROMETHEUS / "tests").glob("*.yml")))]):
        done = subprocess.run([tool, *command], capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
                                 .read_text())
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "cowsim.yml")
                               .read_text())
    assert [p["type"] for p in providers["providers"]] == ["file"]
