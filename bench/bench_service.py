"""Service speed: GetRun under 50 concurrent clients, a run through the service, cached resubmits.

Starts a real ``cowsim serve`` (a subprocess: loopback, ephemeral gRPC and
metrics ports, a temporary data dir, ``--workers 2``) and measures, each
against a baseline measured in the same run (machines here are noisy and
shared; never read the absolute numbers alone):

1. **A run through the service** — the example prefork web server
   (examples/workloads/prefork-web.yaml: 1 GiB, 8 threads, a fork per
   connection; its duration cut to ``--duration``): SubmitRun, then WatchRun
   until the final message with the result, timed on the client from the
   submit to the parsed result.  Baselines: the same spec text parsed and run
   by :func:`cowsim.sim.run` in this process and serialised as ``cowsim run
   --json`` does (target: service ÷ in-process ≤ 1.2), and ``cowsim run SPEC
   --json`` as a subprocess (which includes the interpreter's start-up).  Each
   is timed ``--repeats`` times with a seed of its own (the spec's, then +1 …:
   a repeated seed would come from the cache) and the least time is kept.  The
   service's time includes the RPCs, the server's validation and planning, the
   worker's own parse of the text, progress messages over the worker's pipe,
   the result's JSON and its SQLite commit (synchronous=FULL); not the worker's
   start-up (the server starts its workers before it listens).  The three
   results must be equal, ``wall_seconds`` aside.
2. **GetRun** of that stored, finished run (RUN_VIEW_FULL, with its result JSON)
   from ``--clients`` threads, each with its own channel, ``--calls`` calls
   each: requests/s and the p50/p99 latency each client saw.  Baseline: the
   same load of ``grpc.health.v1.Health/Check`` (the cheapest RPC the server
   answers) through the same server and clients.  Both include the client side
   (Python threads under one GIL, on the same machine as the server).
3. **A cached resubmit** — the same spec, kernel and seed again, ``--resubmits``
   times, one after another: answered from the store (``cached``), p50/p99;
   and the same with a fresh ``request_id`` each time (a cache hit that stores
   a new run record: one SQLite commit).  Baseline: the uncached run of 1.

Run:  python bench/bench_service.py [--quick] [--workers 2] [--duration 4s] [--repeats 3]
      [--clients 50] [--calls 200] [--resubmits 50]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cowsim.clients.service_client import Client
from cowsim.sim import parse_spec, run
from cowsim.v1 import cowsim_pb2 as pb
from cowsim.v1 import cowsim_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
SPEC_FILE = ROOT / "examples" / "workloads" / "prefork-web.yaml"
SERVING = re.compile(r"serving on (\S+):(\d+)(?:, metrics on http://\S+:(\d+)/metrics)?")
START_TIMEOUT_SECONDS = 60.0


def cowsim_command() -> list[str]:
    """The ``cowsim`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("cowsim")
    if not script.exists():
        raise SystemExit(f"no cowsim console script beside {sys.executable} (pip install -e .)")
    return [str(script)]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    target: str
    metrics_port: int
    log: Path
    started_seconds: float


@contextmanager
def cowsim_serve(data_dir: Path, workers: int) -> Iterator[Server]:
    """``cowsim serve`` on ephemeral loopback ports until the block ends (then SIGTERM)."""
    log = data_dir / "serve.log"
    started = time.perf_counter()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*cowsim_command(), "serve", "--host", "127.0.0.1", "--port", "0",
             "--metrics-port", "0", "--data-dir", str(data_dir / "store"),
             "--workers", str(workers)], stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            match = SERVING.search(log.read_text(errors="replace"))
            if match is not None:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"cowsim serve did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.02)
        server = Server(process, f"127.0.0.1:{match.group(2)}", int(match.group(3)), log,
                        time.perf_counter() - started)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def spec_text(duration: str) -> str:
    text = SPEC_FILE.read_text()
    return re.sub(r"^duration: .*$", f"duration: {duration}", text, count=1, flags=re.M)


def stable(result: dict[str, Any]) -> dict[str, Any]:
    return dict(result, wall_seconds=None)


def percentiles(samples: list[float]) -> tuple[float, float]:
    values = np.asarray(samples)
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


# -- 1. one run through the service against the same run here ------------------------------

@dataclass
class RunTimes:
    """Best of the repeats (the least disturbed by whatever else the machine runs)."""

    local_s: float
    local_sim_s: float
    service_s: float
    service_sim_s: float
    cli_s: float
    equal: bool
    run_id: str
    outside_s: float = 0.0
    """The service's time outside the worker's simulation (least over the repeats)."""


def one_run(server: Server, text: str, seed: int, workdir: Path) -> RunTimes:
    """The spec with ``seed`` in process, through the service and by ``cowsim run``."""
    source = SPEC_FILE.name
    started = time.perf_counter()
    local = run(parse_spec(text, source), seed=seed)
    local_json = json.dumps(local, indent=2, sort_keys=True)
    local_s = time.perf_counter() - started

    with Client(server.target) as client:
        started = time.perf_counter()
        response = client.submit_run(text, source_name=source, seed=seed)
        final = client.wait(response.run.run_id)
        remote = json.loads(final.result.result_json)
        service_s = time.perf_counter() - started
    if response.cached or final.state != pb.RUN_STATE_SUCCEEDED:
        raise SystemExit(f"the service run did not run fresh to SUCCEEDED: cached="
                         f"{response.cached}, state {pb.RunState.Name(final.state)}")

    spec_path = workdir / source
    spec_path.write_text(text)
    started = time.perf_counter()
    printed = subprocess.run([*cowsim_command(), "run", str(spec_path), "--seed", str(seed),
                              "--json"], capture_output=True, check=True, text=True).stdout
    cli_s = time.perf_counter() - started
    cli = json.loads(printed)
    equal = stable(remote) == stable(json.loads(local_json)) == stable(cli)
    service_sim_s = float(remote["wall_seconds"])
    return RunTimes(local_s, float(local["wall_seconds"]), service_s, service_sim_s, cli_s,
                    equal, final.run_id, service_s - service_sim_s)


def best_runs(server: Server, text: str, repeats: int, workdir: Path) -> RunTimes:
    """:func:`one_run` ``repeats`` times, each with its own seed (a repeated seed would be
    answered from the cache); the least time of each, and the last run's id."""
    seed = re.search(r"^seed: (\d+)$", text, re.M)
    base = int(seed.group(1)) if seed is not None else 1
    outcomes = [one_run(server, text, base + index, workdir) for index in range(repeats)]
    return RunTimes(min(o.local_s for o in outcomes), min(o.local_sim_s for o in outcomes),
                    min(o.service_s for o in outcomes), min(o.service_sim_s for o in outcomes),
                    min(o.cli_s for o in outcomes), all(o.equal for o in outcomes),
                    outcomes[-1].run_id, min(o.outside_s for o in outcomes))


# -- 2. many clients at once ------------------------------------------------------------------

@dataclass
class Load:
    total_s: float
    latencies: list[float]

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.total_s


def concurrent_load(target: str, clients: int, calls: int,
                    make_call: Callable[[grpc.Channel], Callable[[], object]]) -> Load:
    """``clients`` threads, a channel each, ``calls`` calls each, started together."""
    barrier = threading.Barrier(clients + 1)
    per_client: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def client(index: int) -> None:
        with grpc.insecure_channel(target) as channel:
            call = make_call(channel)
            try:
                call()  # connect before the clock starts
            except BaseException as exc:
                errors.append(exc)
            barrier.wait()
            times = per_client[index]
            for _ in range(calls):
                started = time.perf_counter()
                try:
                    call()
                except grpc.RpcError as exc:
                    errors.append(exc)
                times.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    total_s = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{len(errors)} calls failed, the first: {errors[0]!r}")
    return Load(total_s, [t for times in per_client for t in times])


def get_run_call(run_id: str) -> Callable[[grpc.Channel], Callable[[], object]]:
    def make(channel: grpc.Channel) -> Callable[[], object]:
        stub = cowsim_pb2_grpc.CowsimServiceStub(channel)
        request = pb.GetRunRequest(run_id=run_id, view=pb.RUN_VIEW_FULL)
        return lambda: stub.GetRun(request, timeout=30)
    return make


def health_call(channel: grpc.Channel) -> Callable[[], object]:
    stub: Any = health_pb2_grpc.HealthStub(channel)  # the type stubs lack the methods
    request = health_pb2.HealthCheckRequest(service="")
    return lambda: stub.Check(request, timeout=30)


# -- 3. cached resubmits ------------------------------------------------------------------------

def resubmits(server: Server, text: str, count: int, with_request_ids: bool) -> list[float]:
    latencies = []
    with Client(server.target) as client:
        for index in range(count):
            request_id = f"bench-{os.getpid()}-{index}" if with_request_ids else ""
            started = time.perf_counter()
            response = client.submit_run(text, source_name=SPEC_FILE.name, request_id=request_id)
            latencies.append(time.perf_counter() - started)
            if not response.cached:
                raise SystemExit("a resubmit was not answered from the cache")
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="short: a 1 s run, 50 clients x 40 calls, 20 resubmits")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", help="simulated duration of the run (default 4s)")
    parser.add_argument("--repeats", type=int, help="runs of 1., best kept (default 3; quick 1)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--calls", type=int, help="GetRun calls per client (default 200)")
    parser.add_argument("--resubmits", type=int, help="cached resubmits (default 50)")
    args = parser.parse_args()
    duration = args.duration or ("1s" if args.quick else "4s")
    calls = args.calls or (40 if args.quick else 200)
    count = args.resubmits or (20 if args.quick else 50)
    repeats = args.repeats or (1 if args.quick else 3)
    text = spec_text(duration)

    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp, \
            cowsim_serve(Path(tmp), args.workers) as server:
        print(f"cowsim serve --workers {args.workers} on {server.target} (metrics port "
              f"{server.metrics_port}): listening {server.started_seconds:.2f} s after exec")

        times = best_runs(server, text, repeats, Path(tmp))
        ratio = times.service_s / times.local_s
        print(f"\n1. {SPEC_FILE.name} with duration {duration} (1 GiB, fork per connection), "
              f"kernel 6.8, best of {repeats} (seeds differ)")
        print(f"  in-process cowsim.sim.run + JSON:   {times.local_s:7.2f} s wall "
              f"(simulation {times.local_sim_s:.2f} s)")
        print(f"  service submit -> result:           {times.service_s:7.2f} s wall "
              f"(simulation in the worker {times.service_sim_s:.2f} s, the rest "
              f"{times.outside_s:.2f} s)")
        print(f"  cowsim run --json (a subprocess):   {times.cli_s:7.2f} s wall")
        print(f"  service / in-process = {ratio:.2f}   (target <= 1.2); service / cowsim run "
              f"CLI = {times.service_s / times.cli_s:.2f}; results equal (wall_seconds aside): "
              f"{'yes' if times.equal else 'NO'}")

        health = concurrent_load(server.target, args.clients, calls, health_call)
        get_run = concurrent_load(server.target, args.clients, calls, get_run_call(times.run_id))
        get_p50, get_p99 = percentiles(get_run.latencies)
        health_p50, health_p99 = percentiles(health.latencies)
        print(f"\n2. {args.clients} clients x {calls} calls, a channel each")
        print(f"  Health/Check: {health.per_second:8,.0f} requests/s, p50 {ms(health_p50)}, "
              f"p99 {ms(health_p99)}")
        print(f"  GetRun FULL:  {get_run.per_second:8,.0f} requests/s, p50 {ms(get_p50)}, "
              f"p99 {ms(get_p99)}")
        print(f"  GetRun / Health requests/s = {get_run.per_second / health.per_second:.2f}")

        cached = resubmits(server, text, count, with_request_ids=False)
        stored = resubmits(server, text, count, with_request_ids=True)
        cached_p50, cached_p99 = percentiles(cached)
        stored_p50, stored_p99 = percentiles(stored)
        print(f"\n3. {count} cached resubmits, one at a time")
        print(f"  same spec, kernel, seed:        p50 {ms(cached_p50)}, p99 {ms(cached_p99)}")
        print(f"  ... with a new request_id each: p50 {ms(stored_p50)}, p99 {ms(stored_p99)}")
        print(f"  cached p99 / uncached run = {cached_p99 / times.service_s:.4f}")

        stopping = time.perf_counter()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=60)
        stop_s = time.perf_counter() - stopping

    print(f"\nSIGTERM -> exit (nothing running): {stop_s:.2f} s\n")
    rows = [
        ("run via service / in-process", f"{ratio:.2f}x", "<= 1.2x",
         f"{times.service_s:.2f} s vs {times.local_s:.2f} s"),
        ("  service outside the simulation", f"{times.outside_s:.2f} s", "-",
         f"{times.outside_s / times.service_s:.1%} of the service's time"),
        ("GetRun, requests/s", f"{get_run.per_second:,.0f}", "-",
         f"{get_run.per_second / health.per_second:.2f}x Health/Check"),
        ("GetRun, p50 / p99", f"{ms(get_p50)} / {ms(get_p99)}", "-",
         f"{args.clients} clients"),
        ("cached resubmit, p50 / p99", f"{ms(cached_p50)} / {ms(cached_p99)}", "-",
         f"{cached_p99 / times.service_s:.4f}x the run"),
        ("  with new request_id", f"{ms(stored_p50)} / {ms(stored_p99)}", "-", "one commit"),
    ]
    widths = [max(len(row[i]) for row in [("measure", "value", "target", "baseline"), *rows])
              for i in range(4)]
    for row in [("measure", "value", "target", "baseline"), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
