"""Every dashboard query against a real Prometheus scraping a real server (slow tier).

One ``cowsim serve`` (the in-process :class:`~tests.service_helpers.ServerThread`, exporter
on an ephemeral loopback port) and one Debian ``prometheus`` on loopback (an ephemeral
port, a temporary storage folder, scraping the exporter every second, evaluating the
recording and alerting rules of ``deploy/prometheus/rules/`` every second).  Four small
workloads run twice each (new seeds, so no cache answers them; the second round lands after
Prometheus has seen the first, so the rates move): a forking server on 6.8 and on 5.10,
O_DIRECT reads under a checkpointer on 5.10 (lost DMA writes, diverged pins) and an RDMA
buffer forked on 5.8 (leaks, stale pin reads).  A resubmission is a cache hit, a bad
submission a gRPC error.  Then every PromQL expression of every panel of every generated
dashboard (deploy/grafana/dashboards/) goes to ``/api/v1/query``, with the template
variables set to each (kernel, workload) pair of :data:`PAIRS`; each must return series
carrying the labels its legend names and the chosen kernel and workload where it has those
labels, and for at least one of the pairs a value that is neither 0 nor NaN, unless
:data:`MAY_BE_ZERO` says why not.  The ``label_values`` queries of the variables go to
``/api/v1/label/.../values`` and must list the pairs.

Skipped when prometheus is missing outside CI (with ``CI`` set it fails: .ci/run installs
Debian's ``prometheus``).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cowsim.clients.service_client import Client, ServiceCallError
from cowsim.service import Limits, ServerConfig
from tests.service_helpers import ServerThread, spec_text
from tests.test_service_metrics import ODIRECT, RDMA
from tools import gen_dashboards

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules"

#: The (kernel, workload) pairs the variables are set to: one clean, two with violations.
PAIRS = (("6.8", "forking_server"), ("5.10", "checkpointer+direct_io"), ("5.8", "direct_io"))
#: Grafana's built-in variables, as Grafana would fill them for a short time range.
BUILTINS = {"$__rate_interval": "30s", "$__interval": "1s", "$__range": "5m"}

#: Queries that return series but legitimately only 0 or NaN for these runs, and why:
#: (panel title, refId) → reason.  Keep it minimal: each entry is a panel whose numbers
#: this test does not check.
MAY_BE_ZERO: dict[tuple[str, str], str] = {
    ("Queue depth", "A"): "the runs have finished: nothing waits for a worker by now",
}


def free_port() -> int:
    """A port nobody listens on now (Prometheus takes no port 0 we could read back)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


class Prometheus:
    """A prometheus process on loopback scraping ``target`` every second."""

    def __init__(self, target: str, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES / "cowsim-recording.yml"), str(RULES / "cowsim-alerts.yml")],
            "scrape_configs": [{"job_name": "cowsim",
                                "static_configs": [{"targets": [target]}]}],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log = (folder / "prometheus.log").open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            [prometheus_binary(), f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert answer["status"] == "success", (expr, answer)
        assert answer["data"]["resultType"] == "vector", expr
        return list(answer["data"]["result"])

    def wait(self, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll until ``expr`` returns something (ready, scraped, evaluated)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.log_text()
            try:
                result = self.query(expr)
                if result:
                    return result
            except OSError:
                pass  # not listening yet
            assert time.monotonic() < deadline, f"nothing for {expr}\n{self.log_text()}"
            time.sleep(0.5)

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(encoding="utf-8")[-3000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        if "CI" in os.environ:
            pytest.fail("prometheus is missing (Debian package 'prometheus'; .ci/run installs it)")
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    return found


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    prometheus_binary()  # skip before starting anything
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=0,
                          limits=Limits(workers=2, max_queued_runs=8, max_sim_seconds=60.0,
                                        max_frames=300_000),
                          data_dir=tmp_path_factory.mktemp("server"))
    server = ServerThread(config)
    started: Prometheus | None = None
    try:
        started = Prometheus(f"127.0.0.1:{server.server.metrics_port}",
                             tmp_path_factory.mktemp("prometheus"))
        started.wait('up{job="cowsim"} == 1')
        with Client(server.target) as client:
            for round_ in range(2):
                runs = [client.submit(spec_text(seed=40 + round_), kernel="6.8"),
                        client.submit(spec_text(seed=40 + round_), kernel="5.10"),
                        client.submit(ODIRECT.replace("seed: 3", f"seed: {50 + round_}"),
                                      kernel="5.10"),
                        client.submit(RDMA.replace("seed: 11", f"seed: {60 + round_}"),
                                      kernel="5.8")]
                for run in runs:
                    client.wait(run.run_id, timeout_seconds=120)
                # Prometheus has scraped this round's results before the next one starts
                started.wait(f'sum(cowsim_runs_finished_total{{state="SUCCEEDED"}}) '
                             f">= {len(runs) * (round_ + 1)}")
            assert client.submit_run(spec_text(seed=41), kernel="6.8").cached
            with pytest.raises(ServiceCallError):
                client.submit(spec_text(memory="lots"))  # INVALID_ARGUMENT: a gRPC error
        started.wait('sum(grpc_server_handled_total{grpc_code="INVALID_ARGUMENT"}) > 0')
        started.wait("sum(cowsim_result_cache_hits_total) > 0")
        time.sleep(3)  # a few rule evaluations after the last scrape
        yield started
    finally:
        if started is not None:
            started.stop()
        server.stop()
    assert started.process.poll() is not None


def substitute(expr: str, kernel: str, workload: str) -> str:
    """The expression as Grafana would send it with the variables set to one value each.

    Grafana regex-escapes a multi-value variable's value inside ``=~"…"``, and PromQL
    strings escape backslashes, so ``checkpointer+direct_io`` becomes ``checkpointer\\\\+…``."""
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    for name, value in (("kernel", kernel), ("workload", workload)):
        expr = expr.replace(f"${name}", re.escape(value).replace("\\", "\\\\"))
    assert "$" not in expr, expr
    return expr


def dashboards() -> dict[str, dict[str, Any]]:
    folder = ROOT / "deploy" / "grafana" / "dashboards"
    return {path.name: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(folder.glob("*.json"))}


def test_every_panel_query_returns_data_with_its_labels(prom: Prometheus) -> None:
    checked = 0
    for name, model in dashboards().items():
        for title, target in gen_dashboards.panel_queries(model):
            legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target["legendFormat"]))
            moved = False
            for kernel, workload in PAIRS:
                expr = substitute(target["expr"], kernel, workload)
                result = prom.query(expr)
                where = (name, title, target["refId"], expr)
                assert result, f"no data: {where}"
                for series in result:
                    labels = series["metric"]
                    assert legend_labels <= set(labels), (where, labels)
                    assert labels.get("kernel", kernel) == kernel, (where, labels)
                    assert labels.get("workload", workload) == workload, (where, labels)
                    value = float(series["value"][1])
                    moved |= value != 0 and not math.isnan(value)
                checked += 1
            if (title, target["refId"]) not in MAY_BE_ZERO:
                assert moved, f"only 0 or NaN for every pair: {name}: {title} {target['refId']}"
    assert checked >= len(PAIRS) * 30


def test_the_template_variables_list_the_runs(prom: Prometheus) -> None:
    for model in dashboards().values():
        for variable in model["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"])
            assert match, variable["query"]
            selector, label = match.groups()
            for kernel, workload in PAIRS:
                query = urllib.parse.urlencode(
                    {"match[]": substitute(selector, kernel, workload)})
                answer = get(f"{prom.url}/api/v1/label/{label}/values?{query}")
                assert answer["status"] == "success"
                assert {"kernel": kernel, "workload": workload}[label] in answer["data"]


def test_the_violation_shows_and_its_alert_fires(prom: Prometheus) -> None:
    """The lost DMA writes of the O_DIRECT runs reach the correctness panel and the alert."""
    lost = prom.query('sum by (kernel) (increase(cowsim_violations_total{kind="dma_lost_write",'
                      'workload="checkpointer+direct_io"}[5m]))')
    assert [series["metric"]["kernel"] for series in lost] == ["5.10"]
    assert float(lost[0]["value"][1]) > 0
    alerts = prom.wait('ALERTS{alertname="CowsimCorrectnessViolation",alertstate="firing"}')
    assert {(a["metric"]["kernel"], a["metric"]["kind"]) for a in alerts} >= \
        {("5.10", "dma_lost_write")}
    assert not prom.query('ALERTS{alertname=~"CowsimDown|CowsimRunsFailing|'
                          'CowsimQueueSaturated"}')
