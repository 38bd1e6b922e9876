"""Workload speed: the ticked request model against plain simpy, and a 60 s Redis-like run.

1. A small-memory request workload (64 MiB, one thread, a snapshot fork every
   second) is run by cowsim, and a plain simpy model of the same requests
   (an arrival event and a service event per request, a single FIFO server)
   is run in the same process.  Reported: cowsim wall ÷ plain-simpy wall
   (target ≤ 3).
2. The 60 s Redis-like run: 64 GiB resident, 100k requests/s, a fork every
   20 s, on 64 CPUs.  Reported: wall time, simulated ÷ wall (target ≥ 2.5) and
   this process's peak RSS (target ≤ 2 GiB).

Run:  python bench/bench_workloads.py [--skip-redis] [--redis-memory 64GiB]
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

import numpy as np
import simpy

from cowsim.sim.driver import build, result
from cowsim.sim.spec import parse_spec

SMALL = """
name: small-requests
duration: {seconds}s
seed: 5
machine: {{cpus: 4}}
processes:
  - name: server
    memory: 64MiB
    threads: 1
    workloads:
      - kind: forking_server
        requests: {{rate: {rate}/s, write_fraction: 0.5, service: 5us}}
        fork: {{mode: periodic, every: 1s, snapshot: {{scan_rate: 256MiB/s}}}}
"""

REDIS = """
name: redis-60s
duration: 60s
seed: 1
machine: {{profile: skylake-sp, cpus: 64}}
processes:
  - name: redis
    memory: {memory}
    threads: 1
    workloads:
      - kind: forking_server
        requests:
          rate: 100k/s
          write_fraction: 0.5
          service: 5us
          keys: {{distribution: zipf, zipf_s: 0.99}}
        fork: {{mode: periodic, every: 20s, snapshot: {{scan_rate: 4GiB/s}}}}
"""


def plain_simpy(requests: int, rate: float, service: float, seed: int) -> float:
    """Wall seconds of a plain simpy FIFO server processing the same number of requests."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, requests).tolist()
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)
    latencies: list[float] = []

    def request(arrived: float) -> Any:
        with server.request() as slot:
            yield slot
            yield env.timeout(service)
        latencies.append(env.now - arrived)

    def source() -> Any:
        for gap in gaps:
            yield env.timeout(gap)
            env.process(request(env.now))

    env.process(source())
    started = time.perf_counter()
    env.run()
    return time.perf_counter() - started


def small(seconds: float, rate: float) -> None:
    spec = parse_spec(SMALL.format(seconds=seconds, rate=int(rate)))
    sim = build(spec)
    started = time.perf_counter()
    sim.env.run(until=spec.duration)
    cowsim_s = time.perf_counter() - started
    sim.flush()  # what the workloads keep back (observations, the requests counter)
    requests = int(sim.recorder.counter("requests"))
    plain_s = plain_simpy(requests, rate, 5e-6, seed=5)
    print(f"small request workload: {requests:,} requests, {seconds:g} s simulated")
    print(f"  cowsim (ticked, with kernel model): {cowsim_s:8.3f} s wall "
          f"({sim.env.events_processed:,} simpy events)")
    print(f"  plain simpy FIFO server:            {plain_s:8.3f} s wall")
    print(f"  cowsim / plain simpy = {cowsim_s / plain_s:.2f}   (target <= 3)")


def redis(memory: str) -> None:
    spec = parse_spec(REDIS.format(memory=memory))
    started = time.perf_counter()
    sim = build(spec)
    built_s = time.perf_counter() - started
    sim.env.run(until=spec.duration)
    wall_s = time.perf_counter() - started
    outcome = result(sim, wall_seconds=wall_s)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    metrics = outcome["metrics"]
    print(f"redis-like run: {memory} resident, 100k requests/s, fork every 20 s, 64 CPUs")
    print(f"  wall {wall_s:.1f} s (set-up {built_s:.1f} s); simulated / wall = "
          f"{spec.duration / wall_s:.2f}   (target >= 2.5)")
    print(f"  peak RSS {peak_rss / 2**30:.2f} GiB   (target <= 2 GiB)")
    print(f"  forks {int(sim.recorder.counter('forks'))}, fork pause max "
          f"{metrics['fork_pause_seconds']['max'] * 1e3:.0f} ms, COW copies "
          f"{metrics['cow_copies_total']:,}, request p99 "
          f"{metrics['request_latency_seconds']['p99'] * 1e3:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=100_000.0)
    parser.add_argument("--skip-redis", action="store_true")
    parser.add_argument("--redis-memory", default="64GiB")
    args = parser.parse_args()
    small(args.seconds, args.rate)
    if not args.skip_redis:
        redis(args.redis_memory)


if __name__ == "__main__":
    main()
