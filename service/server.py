"""The gRPC server: CowsimService, health and reflection on one grpc.aio server.

:class:`CowsimServer` puts the pieces together — the store under the data
dir (:mod:`~cowsim.service.store`), the run manager and its worker processes
(:mod:`~cowsim.service.runs`), the servicer (:mod:`~cowsim.service.api`),
``grpc.health.v1`` and server reflection, the observing and token
interceptors, and TLS when a certificate and key are given::

    server = CowsimServer(ServerConfig(port=0, data_dir=Path("data")))
    port = await server.start()          # the port bound (0: an ephemeral one)
    ...
    await server.stop()                  # NOT_SERVING, drain, re-queue, exit

With ``executor="dask://HOST:PORT"`` the runs go to a Dask cluster instead of
local worker processes (:mod:`cowsim.service.dask_pool`): the scheduler is
connected to before anything else starts, and one that cannot be reached makes
:meth:`CowsimServer.start` fail (``cowsim serve``: exit 2, one line).

With ``metrics_port`` set, the server also runs a
:class:`~cowsim.service.metrics.PrometheusExporter` (beside any observer passed
in) and serves it at ``http://HOST:PORT/metrics`` from the same host; port 0
binds an ephemeral one, found in :attr:`CowsimServer.metrics_port` and the
start-up log line.  ``metrics_port=None`` (the default here; ``cowsim serve
--metrics-port off``) runs no exporter.

:func:`serve` runs one until SIGTERM or SIGINT: health turns NOT_SERVING at
once, new submissions are refused, running runs get ``drain_seconds`` to
finish and the rest stay QUEUED in the store (run again at the next start),
then the gRPC server stops with a short grace for calls in flight.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cowsim.service.api import CowsimServicer
from cowsim.service.auth import TokenAuthInterceptor
from cowsim.service.dask_pool import DaskCluster
from cowsim.service.interceptors import ObservingInterceptor
from cowsim.service.limits import Limits
from cowsim.service.metrics import MetricsHTTPServer, PrometheusExporter
from cowsim.service.observer import NullObserver, Observer, ObserverGroup, SafeObserver
from cowsim.service.runs import RunManager, Slot
from cowsim.service.store import RunStore
from cowsim.service.sweep_service import SweepManager
from cowsim.v1 import cowsim_pb2, cowsim_pb2_grpc

__all__ = ["SERVICE_NAME", "CowsimServer", "ServerConfig", "serve"]

log = logging.getLogger("cowsim.service")

SERVICE_NAME = cowsim_pb2.DESCRIPTOR.services_by_name["CowsimService"].full_name


@dataclass(frozen=True)
class ServerConfig:
    """How to run a server (``cowsim serve``'s options)."""

    host: str = "[::]"
    port: int = 50051
    """0 binds an ephemeral port (:meth:`CowsimServer.start` returns it)."""
    metrics_port: int | None = None
    """Where the Prometheus exporter listens (``/metrics`` on ``host``); 0 binds an
    ephemeral port (:attr:`CowsimServer.metrics_port` says which), None runs no exporter.
    ``cowsim serve`` defaults to 9464."""
    data_dir: Path = Path("cowsim-data")
    limits: Limits = field(default_factory=Limits)
    token: str | None = None
    """With a token, every RPC but health needs ``authorization: Bearer <token>``."""
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    drain_seconds: float = 30.0
    """On stop: how long running runs may take to finish before they are re-queued."""
    cancel_grace_seconds: float = 5.0
    """After CancelRun: how long a run may take to stop before its worker is killed."""
    executor: str = "local"
    """Where runs go: ``local`` (``limits.workers`` worker processes) or
    ``dask://HOST:PORT`` (a Dask scheduler; :mod:`cowsim.service.dask_pool`)."""
    executor_timeout_seconds: float = 10.0
    """How long to try to reach a Dask scheduler at start."""


class CowsimServer:
    """One server (see the module docstring)."""

    def __init__(self, config: ServerConfig, observer: Observer | None = None,
                 interceptors: Sequence[aio.ServerInterceptor] = ()) -> None:
        self.config = config
        self.exporter: PrometheusExporter | None = None
        """The Prometheus exporter, when ``config.metrics_port`` is set."""
        self.metrics_http: MetricsHTTPServer | None = None
        self.metrics_port: int | None = None
        """The port the exporter listens on, once started."""
        observers: list[Observer] = [] if observer is None else [observer]
        if config.metrics_port is not None:
            health_service = health_pb2.DESCRIPTOR.services_by_name["Health"]
            self.exporter = PrometheusExporter(grpc_services=(
                cowsim_pb2.DESCRIPTOR.services_by_name["CowsimService"], health_service))
            observers.insert(0, self.exporter)
        self.observer: Observer = (ObserverGroup(observers) if len(observers) > 1 else
                                   SafeObserver(observers[0] if observers else NullObserver()))
        self.extra_interceptors = tuple(interceptors)
        self.store: RunStore | None = None
        self.manager: RunManager | None = None
        self.sweeps: SweepManager | None = None
        self.cluster: DaskCluster | None = None
        """The Dask connection, with ``executor="dask://…"``."""
        self.health = health.aio.HealthServicer()
        self.server: aio.Server | None = None
        self.port = 0
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        """Open the store, recover queued runs, start workers and listen; the port bound."""
        config = self.config
        check_can_listen(config.host, config.port)  # before anything starts
        if self.exporter is not None and config.metrics_port is not None:
            self.metrics_http = MetricsHTTPServer(self.exporter.registry, config.host,
                                                  config.metrics_port)
            try:
                self.metrics_port = self.metrics_http.start()
            except OSError as exc:
                raise RuntimeError(f"cannot serve metrics on {config.host}:"
                                   f"{config.metrics_port}: {exc.strerror or exc}") from None
        slots: list[Slot] | None = None
        if config.executor != "local":
            self.cluster = await asyncio.to_thread(
                DaskCluster, config.executor, config.limits.workers,
                timeout_seconds=config.executor_timeout_seconds)
            slots = list(self.cluster.slots())
            log.info("cowsim runs on the Dask cluster at %s (%d at once)", self.cluster.address,
                     len(slots))
        self.store = RunStore(config.data_dir)
        self.manager = RunManager(self.store, config.limits, self.observer,
                                  cancel_grace_seconds=config.cancel_grace_seconds, slots=slots)
        self.sweeps = SweepManager(self.manager)
        await self.manager.start()
        interceptors: list[aio.ServerInterceptor] = [ObservingInterceptor(self.observer)]
        interceptors.extend(self.extra_interceptors)
        if config.token is not None:
            interceptors.append(TokenAuthInterceptor(config.token))
        size = config.limits.max_message_bytes
        server = aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", max(size, 64 << 20)),
        ])
        cowsim_pb2_grpc.add_CowsimServiceServicer_to_server(
            CowsimServicer(self.manager, self.sweeps), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        address = f"{config.host}:{config.port}"
        if config.tls_cert is not None and config.tls_key is not None:
            credentials = grpc.ssl_server_credentials([(config.tls_key, config.tls_cert)])
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        await server.start()
        self.server = server
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.metrics_port is None:
            log.info("cowsim serving on %s:%d", config.host, self.port)
        else:
            # a wildcard address is no URL: name the loopback one, which it includes
            url_host = "localhost" if config.host in ("[::]", "::", "0.0.0.0", "") else config.host
            log.info("cowsim serving on %s:%d, metrics on http://%s:%d/metrics", config.host,
                     self.port, url_host, self.metrics_port)
        return self.port

    async def stop(self, drain_seconds: float | None = None) -> None:
        """NOT_SERVING, drain the runs (re-queue what is left), stop serving."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.manager is not None:
            await self.manager.drain(self.config.drain_seconds if drain_seconds is None
                                     else drain_seconds)
        if self.server is not None:
            await self.server.stop(grace=2.0)
        if self.store is not None:
            self.store.close()
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.close)
        if self.metrics_http is not None:  # last: a scrape during the drain still answers
            self.metrics_http.stop()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def check_can_listen(host: str, port: int) -> None:
    """Fail with one clear line (RuntimeError) when ``host:port`` cannot be bound, before
    gRPC tries and logs its own multi-line complaint.  Port 0 always can."""
    if port == 0:
        return
    name = host.strip("[]") or "::"
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    family, kind, proto, _name, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


async def serve(config: ServerConfig, observer: Observer | None = None) -> None:
    """Run a server until SIGTERM or SIGINT, then stop it gracefully."""
    server = CowsimServer(config, observer)
    await server.start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("cowsim stopping: draining runs")
    await server.stop()
