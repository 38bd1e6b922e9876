"""cowsim.service — the gRPC service: durable, idempotent, cached runs for many clients.

``cowsim serve`` (:mod:`~cowsim.service.cli`) runs a :class:`CowsimServer`:
the cowsim.v1 API (proto/cowsim/v1/cowsim.proto), health and reflection, on
grpc.aio.  The modules, from the leaves up:

* :mod:`~cowsim.service.errors` — one status per refusal, with google.rpc details;
* :mod:`~cowsim.service.limits` — what one server accepts (RESOURCE_EXHAUSTED);
* :mod:`~cowsim.service.cache` — the result cache key;
* :mod:`~cowsim.service.observer` — the hook a metrics exporter implements;
* :mod:`~cowsim.service.labels`, :mod:`~cowsim.service.families` — bounded label
  values, and metric families that add whole deltas (bucketed histograms);
* :mod:`~cowsim.service.store` — runs and results in SQLite;
* :mod:`~cowsim.service.worker`, :mod:`~cowsim.service.pool` — simulations in
  spawned worker processes under a memory limit;
* :mod:`~cowsim.service.dask_pool` — the same jobs on a Dask cluster
  (``cowsim serve --executor dask://…``);
* :mod:`~cowsim.service.runs` — the run manager: submit, queue, run, cancel, watch;
* :mod:`~cowsim.service.sweeps`, :mod:`~cowsim.service.sweep_table`,
  :mod:`~cowsim.service.executors` — sweeps run into a directory (``cowsim sweep``);
* :mod:`~cowsim.service.sweep_service` — sweeps on the server, over the run manager;
* :mod:`~cowsim.service.convert`, :mod:`~cowsim.service.api` — the servicer;
* :mod:`~cowsim.service.auth`, :mod:`~cowsim.service.interceptors` — bearer
  tokens and per-RPC observation;
* :mod:`~cowsim.service.metrics` — the Prometheus exporter and its ``/metrics``;
* :mod:`~cowsim.service.server` — the server and :func:`serve`.

It depends on :mod:`cowsim.sim`'s public API, :mod:`cowsim.v1` and
prometheus_client (which :mod:`cowsim.sim` never imports).
"""

from cowsim.service.limits import Limits
from cowsim.service.metrics import PrometheusExporter
from cowsim.service.observer import NullObserver, Observer, ObserverGroup, RunLabels
from cowsim.service.server import CowsimServer, ServerConfig, serve

__all__ = ["CowsimServer", "Limits", "NullObserver", "Observer", "ObserverGroup",
           "PrometheusExporter", "RunLabels", "ServerConfig", "serve"]
