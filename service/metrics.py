"""The Prometheus exporter: the simulation's metrics as runs progress, and the service's own.

:class:`PrometheusExporter` is an :class:`~cowsim.service.observer.Observer`.
The server tells it what its runs do; it keeps the values in its own
``CollectorRegistry`` (never prometheus_client's global one), and
:class:`MetricsHTTPServer` serves that registry at ``/metrics``::

    exporter = PrometheusExporter()
    http = MetricsHTTPServer(exporter.registry, host="127.0.0.1", port=0)
    port = http.start()        # 0 binds an ephemeral port; the one bound is returned
    server = CowsimServer(config, observer=exporter)

``cowsim serve --metrics-port 9464`` does this itself (:mod:`cowsim.service.server`).

**Simulation metrics** (simulated events and simulated seconds, labelled
``kernel`` and ``workload``, the :class:`~cowsim.service.observer.RunLabels`):
from every progress message's counter deltas —

* ``cowsim_cow_copies_total{cause}`` from ``cow_copies_<cause>`` (``fork``,
  ``zero_page``, ``unshare`` …; copies the deltas give no cause for are
  ``cause="other"``, so the causes always sum to ``cow_copies``);
* ``cowsim_wp_reuses_total`` from ``wp_reuses``;
* ``cowsim_page_faults_total{type}`` from ``faults_<type>`` (``anonymous``,
  ``wp`` …; likewise ``type="other"`` for the rest of ``page_faults``);
* ``cowsim_tlb_shootdowns_total``, ``cowsim_tlb_ipis_total``,
  ``cowsim_tlb_misses_total`` (modelled misses, not necessarily whole);
* ``cowsim_violations_total{kind}``: ``leak``, ``pin_diverged``, ``stale_pin``
  (the kernel oracles' ``violations_<kind>``), ``dma_lost_write`` (the
  workloads' ``dma_lost_writes``, the result's ``dma_lost_writes_total``) and
  ``stale_pin_read`` (``stale_pin_reads``, the result's
  ``stale_pin_reads_total``);

and from the histogram observations (:class:`cowsim.sim.HistogramDelta`,
buckets :data:`cowsim.sim.BOUNDS_SECONDS`): ``cowsim_request_latency_seconds``,
``cowsim_fault_latency_seconds``, ``cowsim_fork_pause_seconds``,
``cowsim_checkpoint_duration_seconds``, ``cowsim_io_latency_seconds``,
``cowsim_snapshot_duration_seconds``.  They count everything simulations did in
this server process, cancelled and failed runs included, and start from zero
when it restarts (as counters do; ``rate()`` copes).

**Service metrics**: ``cowsim_runs{state}`` (stored runs by state),
``cowsim_queue_depth``, ``cowsim_run_wall_seconds{kernel,workload}`` (wall time
of a run in its worker), ``cowsim_runs_finished_total{kernel,workload,state}``,
``cowsim_result_cache_hits_total{kernel,workload}``, and, named and labelled as
go-grpc-prometheus does, ``grpc_server_handled_total{grpc_type,grpc_service,
grpc_method,grpc_code}`` and ``grpc_server_handling_seconds{grpc_type,
grpc_service,grpc_method}``.

**Cardinality.** No run id or name is ever a label.  A run's (kernel, workload)
pair is capped (:class:`~cowsim.service.labels.BoundedPairs`, 64 by default;
later pairs are ``other``/``other``), and so are causes, types, kinds and gRPC
methods.  A pair's series are created at zero when it is first seen, every gRPC
method of the services given at every status code at start, so dashboards see
zeros rather than nothing.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from google.protobuf import descriptor_pool
from prometheus_client import start_http_server
from prometheus_client.registry import CollectorRegistry

from cowsim.service.families import Families
from cowsim.service.labels import OTHER, BoundedPairs, BoundedValues
from cowsim.service.metric_names import (
    COUNTER_HELP,
    COW_CAUSES,
    FAULT_TYPES,
    SIM_HISTOGRAMS,
    TLB_COUNTERS,
    VIOLATION_KINDS,
    WORKLOAD_VIOLATIONS,
)
from cowsim.service.observer import RunLabels
from cowsim.service.store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED
from cowsim.sim import BOUNDS_SECONDS, HistogramDelta

__all__ = ["COW_CAUSES", "FAULT_TYPES", "GRPC_BOUNDS_SECONDS", "RUN_STATES", "SIM_HISTOGRAMS",
           "VIOLATION_KINDS", "WALL_BOUNDS_SECONDS", "MetricsHTTPServer", "PrometheusExporter"]

log = logging.getLogger("cowsim.service")


MAX_SIM_HISTOGRAMS = 16
"""Histogram names beyond :data:`SIM_HISTOGRAMS` that may appear (a newer library's)."""

RUN_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
GRPC_CODES = tuple(code.name for code in grpc.StatusCode)

WALL_BOUNDS_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                       600.0, 1800.0, 3600.0, 10800.0)
"""Buckets of ``cowsim_run_wall_seconds``: a tiny run to a three-hour study."""
GRPC_BOUNDS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Buckets of ``grpc_server_handling_seconds``: client_golang's DefBuckets, as
go-grpc-prometheus uses."""

MAX_RUN_LABEL_PAIRS = 64
MAX_VALUES_PER_LABEL = 32
MAX_GRPC_METHODS = 64
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_METHOD = re.compile(r"/([A-Za-z0-9_.]+)/([A-Za-z0-9_]+)")
_RUN = ("kernel", "workload")


def _grpc_type(method: Any) -> str:
    """go-grpc-prometheus's grpc_type of a method descriptor."""
    if method.client_streaming:
        return "bidi_stream" if method.server_streaming else "client_stream"
    return "server_stream" if method.server_streaming else "unary"


def _pool_grpc_type(service: str, method: str) -> str:
    """The grpc_type of a method the default descriptor pool knows; ``unary`` else."""
    try:
        descriptor = descriptor_pool.Default().FindServiceByName(service)
    except KeyError:
        return "unary"
    found = descriptor.methods_by_name.get(method)
    return _grpc_type(found) if found is not None else "unary"


class PrometheusExporter:
    """The Observer that keeps cowsim's Prometheus metrics (see the module docstring).

    ``grpc_services``, protobuf service descriptors, name the services whose methods
    get their ``grpc_type`` from the descriptor and their series created at start
    (another method's type is looked up in the default descriptor pool, else ``unary``)."""

    def __init__(self, *, grpc_services: Iterable[Any] = (),
                 max_run_label_pairs: int = MAX_RUN_LABEL_PAIRS) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.families = families = Families()
        self.run_pairs = BoundedPairs(max_run_label_pairs)
        self.causes = BoundedValues(MAX_VALUES_PER_LABEL)
        self.fault_types = BoundedValues(MAX_VALUES_PER_LABEL)
        self.kinds = BoundedValues(MAX_VALUES_PER_LABEL)
        self.grpc_methods = BoundedPairs(MAX_GRPC_METHODS)
        self._lock = threading.Lock()
        self._seen_pairs: set[tuple[str, str]] = set()
        self._grpc_types: dict[tuple[str, str], str] = {}

        self.cow_copies = families.counter(
            "cowsim_cow_copies_total", COUNTER_HELP["cowsim_cow_copies_total"], (*_RUN, "cause"))
        self.wp_reuses = families.counter(
            "cowsim_wp_reuses_total", COUNTER_HELP["cowsim_wp_reuses_total"], _RUN)
        self.page_faults = families.counter(
            "cowsim_page_faults_total", COUNTER_HELP["cowsim_page_faults_total"], (*_RUN, "type"))
        self.tlb = {name: families.counter(metric, help_text, _RUN)
                    for name, (metric, help_text) in TLB_COUNTERS.items()}
        self.violations = families.counter(
            "cowsim_violations_total", COUNTER_HELP["cowsim_violations_total"], (*_RUN, "kind"))
        self.histograms = {name: families.histogram(f"cowsim_{name}", help_text, _RUN,
                                                    bounds=BOUNDS_SECONDS)
                           for name, help_text in SIM_HISTOGRAMS.items()}

        self.runs = families.gauge("cowsim_runs", "Stored runs, by state.", ("state",))
        self.queue = families.gauge("cowsim_queue_depth", "Jobs waiting for a worker.")
        self.run_wall = families.histogram(
            "cowsim_run_wall_seconds", "Wall time a run took in its worker.", _RUN,
            bounds=WALL_BOUNDS_SECONDS)
        self.runs_finished = families.counter(
            "cowsim_runs_finished_total", "Runs that reached a final state.", (*_RUN, "state"))
        self.cache_hits = families.counter(
            "cowsim_result_cache_hits_total", "Submissions answered from the result cache.",
            _RUN)
        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.grpc_handled = families.counter(
            "grpc_server_handled_total", "RPCs completed on the server, regardless of success "
            "or failure.", (*grpc_labels, "grpc_code"))
        self.grpc_seconds = families.histogram(
            "grpc_server_handling_seconds", "Wall time an RPC took until the server finished "
            "it.", grpc_labels, bounds=GRPC_BOUNDS_SECONDS)

        for state in RUN_STATES:
            self.runs.touch((state,))
        self.queue.touch(())
        for service in grpc_services:
            for method in service.methods:
                self._grpc_types[(service.full_name, method.name)] = _grpc_type(method)
                if method.client_streaming:
                    continue  # the observing interceptor does not time client streams
                self.grpc_methods(service.full_name, method.name)
                labels = (_grpc_type(method), service.full_name, method.name)
                self.grpc_seconds.touch(labels)
                for code in GRPC_CODES:
                    self.grpc_handled.touch((*labels, code))
        self.registry.register(families)

    # -- labels ------------------------------------------------------------------------

    def _run_labels(self, labels: RunLabels) -> tuple[str, str]:
        """The bounded (kernel, workload) of a run; a pair's series start at zero."""
        pair = self.run_pairs(labels.kernel, labels.workload)
        with self._lock:
            if pair in self._seen_pairs:
                return pair
            self._seen_pairs.add(pair)
        for cause in COW_CAUSES:
            self.cow_copies.touch((*pair, self.causes(cause)))
        for kind in FAULT_TYPES:
            self.page_faults.touch((*pair, self.fault_types(kind)))
        for kind in VIOLATION_KINDS:
            self.violations.touch((*pair, self.kinds(kind)))
        self.wp_reuses.touch(pair)
        for family in (*self.tlb.values(), self.cache_hits):
            family.touch(pair)
        for histogram in self.histograms.values():
            histogram.touch(pair)
        self.run_wall.touch(pair)
        return pair

    @staticmethod
    def _label_value(name: str, bound: BoundedValues) -> str:
        return bound(name) if _NAME.fullmatch(name) else OTHER

    # -- the Observer ------------------------------------------------------------------

    def run_progress(self, labels: RunLabels, deltas: Mapping[str, float]) -> None:
        pair = self._run_labels(labels)
        by_cause = by_type = 0.0
        for name, amount in deltas.items():
            if not amount > 0:
                continue  # counters only go up; a zero (or a bad value) adds nothing
            if name.startswith("cow_copies_"):
                cause = self._label_value(name.removeprefix("cow_copies_"), self.causes)
                self.cow_copies.add((*pair, cause), amount)
                by_cause += amount
            elif name.startswith("faults_"):
                kind = self._label_value(name.removeprefix("faults_"), self.fault_types)
                self.page_faults.add((*pair, kind), amount)
                by_type += amount
            elif name.startswith("violations_"):
                kind = self._label_value(name.removeprefix("violations_"), self.kinds)
                self.violations.add((*pair, kind), amount)
            elif name in WORKLOAD_VIOLATIONS:
                self.violations.add((*pair, self.kinds(WORKLOAD_VIOLATIONS[name])), amount)
            elif name in self.tlb:
                self.tlb[name].add(pair, amount)
            elif name == "wp_reuses":
                self.wp_reuses.add(pair, amount)
        unattributed = float(deltas.get("cow_copies", 0)) - by_cause
        if unattributed > 0:
            self.cow_copies.add((*pair, OTHER), unattributed)
        unattributed = float(deltas.get("page_faults", 0)) - by_type
        if unattributed > 0:
            self.page_faults.add((*pair, OTHER), unattributed)

    def run_observations(self, labels: RunLabels, histograms: Mapping[str, HistogramDelta]
                         ) -> None:
        pair = self._run_labels(labels)
        for name, delta in histograms.items():
            family = self.histograms.get(name)
            if family is None:
                if (not _NAME.fullmatch(name) or not name.endswith("_seconds")
                        or len(self.histograms) >= len(SIM_HISTOGRAMS) + MAX_SIM_HISTOGRAMS):
                    continue
                family = self.histograms[name] = self.families.histogram(
                    f"cowsim_{name}", f"The run contract's {name} (simulated seconds).", _RUN,
                    bounds=BOUNDS_SECONDS)
            family.add_buckets(pair, delta.bucket_counts, delta.sum_seconds)

    def run_state_changed(self, labels: RunLabels, old: str | None, new: str) -> None:
        self._run_labels(labels)
        if old is not None:
            self.runs.add((old,), -1)
        self.runs.add((new,), 1)

    def run_finished(self, labels: RunLabels, state: str, wall_seconds: float | None,
                     result: Mapping[str, Any] | None) -> None:
        pair = self._run_labels(labels)
        self.runs_finished.add((*pair, state), 1)
        if wall_seconds is not None:
            self.run_wall.observe(pair, wall_seconds)

    def cache_hit(self, labels: RunLabels) -> None:
        self.cache_hits.add(self._run_labels(labels), 1)

    def queue_depth(self, depth: int) -> None:
        self.queue.set((), depth)

    def rpc_handled(self, method: str, code: str, seconds: float) -> None:
        match = _METHOD.fullmatch(method)
        service, name = match.groups() if match else (OTHER, OTHER)
        service, name = self.grpc_methods(service, name)
        kind = self._grpc_types.get((service, name))
        if kind is None:
            kind = self._grpc_types[(service, name)] = _pool_grpc_type(service, name)
        code = code if code in GRPC_CODES else "UNKNOWN"
        self.grpc_handled.add((kind, service, name, code), 1)
        self.grpc_seconds.observe((kind, service, name), seconds)


class MetricsHTTPServer:
    """``/metrics`` for one registry, from prometheus_client's threaded HTTP server.

    ``host`` is the gRPC server's (``"[::]"`` and ``"0.0.0.0"`` listen everywhere,
    ``"127.0.0.1"`` on loopback only); ``port`` 0 binds an ephemeral port, which
    :meth:`start` returns and :attr:`port` keeps.  There is no TLS or token here:
    a scrape reads aggregate numbers only, and where that is too much, bind the
    exporter to a private address (or put it behind a proxy)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host.removeprefix("[").removesuffix("]")  # "[::]" → "::"
        self.port = port
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Listen (OSError when the address is taken); the port bound."""
        self._httpd, self._thread = start_http_server(self.port, addr=self.host,
                                                      registry=self.registry)
        self.port = int(self._httpd.server_port)
        return self.port

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
