"""``cowsim serve``: the command-line face of :func:`cowsim.service.server.serve`.

    cowsim serve [--host H] [--port 50051] [--metrics-port 9464|0|off] [--data-dir DIR]
                 [--workers N] [--token-file F] [--tls-cert C --tls-key K]
                 [--worker-memory BYTES] [--max-queued N] [--max-sim-seconds S]
                 [--max-frames N] [--max-message-bytes N] [--drain-seconds S]
                 [--executor local|dask://HOST:PORT]

:func:`add_command` adds the subcommand to the ``cowsim`` parser and :func:`main`
runs it; options are checked before anything starts (one line, exit 2).
``--metrics-port`` serves Prometheus metrics at ``http://HOST:PORT/metrics``
(:mod:`cowsim.service.metrics`): 0 binds a free port (the start-up log line names
it), ``off`` serves none.  ``--executor dask://HOST:PORT`` sends the runs to a
Dask scheduler instead of ``--workers`` local processes
(:mod:`cowsim.service.dask_pool`); one that cannot be reached at start is exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from cowsim.service.auth import read_token
from cowsim.service.limits import Limits
from cowsim.service.server import ServerConfig, serve
from cowsim.sim import InvalidInput, parse_bytes

__all__ = ["add_command", "config_from_args", "main", "parse_executor", "parse_metrics_port"]

def add_command(commands: Any) -> None:
    serve_parser = commands.add_parser("serve", help="run the gRPC service")
    defaults = Limits()
    serve_parser.add_argument("--host", default="[::]", help="address to listen on ([::])")
    serve_parser.add_argument("--port", type=int, default=50051, help="gRPC port (0: any free)")
    serve_parser.add_argument("--metrics-port", default="9464",
                              help="Prometheus exporter port (0: any free; off: none)")
    serve_parser.add_argument("--data-dir", type=Path, default=Path("cowsim-data"),
                              help="where the run store lives")
    serve_parser.add_argument("--workers", type=int, default=defaults.workers,
                              help="runs simulated at once (one process each)")
    serve_parser.add_argument("--token-file", type=Path, help="require this bearer token")
    serve_parser.add_argument("--tls-cert", type=Path, help="PEM certificate (with --tls-key)")
    serve_parser.add_argument("--tls-key", type=Path, help="PEM private key (with --tls-cert)")
    serve_parser.add_argument("--worker-memory", default=str(defaults.worker_memory_bytes),
                              help="memory a run may use in its worker (e.g. 4GiB)")
    serve_parser.add_argument("--max-queued", type=int, default=defaults.max_queued_runs)
    serve_parser.add_argument("--max-sim-seconds", type=float, default=defaults.max_sim_seconds)
    serve_parser.add_argument("--max-frames", type=int, default=defaults.max_frames)
    serve_parser.add_argument("--max-message-bytes", type=int, default=defaults.max_message_bytes)
    serve_parser.add_argument("--drain-seconds", type=float, default=30.0,
                              help="on SIGTERM, how long running runs may take to finish")
    serve_parser.add_argument("--executor", default="local",
                              help="where runs go: local (worker processes, the default) or "
                                   "dask://HOST:PORT (a Dask scheduler)")


def _read(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}", source=option) from None


def parse_metrics_port(text: str) -> int | None:
    """``--metrics-port``: a port (0: any free), or ``off`` for no exporter (None)."""
    if text.strip().lower() == "off":
        return None
    if not text.strip().isdigit() or not 0 <= int(text) <= 65535:
        raise InvalidInput(f"a port is 0 … 65535 or 'off', not {text!r}",
                           source="--metrics-port")
    return int(text)


def parse_executor(text: str) -> str:
    """``--executor``: ``local`` or ``dask://HOST:PORT``."""
    if text == "local":
        return text
    host, _, port = text.removeprefix("dask://").rpartition(":")
    if text.startswith("dask://") and host and port.isdigit() and 0 < int(port) < 65536:
        return text
    raise InvalidInput(f"{text!r}: the executors of cowsim serve are local and "
                       "dask://HOST:PORT", source="--executor")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The server configuration the options describe; InvalidInput naming the option."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise InvalidInput("--tls-cert and --tls-key go together", source="--tls-cert")
    metrics_port = parse_metrics_port(str(args.metrics_port))
    executor = parse_executor(str(args.executor))
    if not 0 <= args.port <= 65535:
        raise InvalidInput(f"a port is 0 … 65535, not {args.port}", source="--port")
    try:
        memory = parse_bytes(args.worker_memory)
    except ValueError as exc:
        raise InvalidInput(str(exc), source="--worker-memory") from None
    try:
        limits = Limits(workers=args.workers, max_queued_runs=args.max_queued,
                        max_sim_seconds=args.max_sim_seconds, max_frames=args.max_frames,
                        worker_memory_bytes=memory, max_message_bytes=args.max_message_bytes)
    except ValueError as exc:
        raise InvalidInput(str(exc), source="serve") from None
    token = None
    if args.token_file is not None:
        try:
            token = read_token(args.token_file)
        except ValueError as exc:
            raise InvalidInput(str(exc), source="--token-file") from None
    return ServerConfig(
        host=args.host, port=args.port, metrics_port=metrics_port, data_dir=args.data_dir,
        limits=limits, token=token,
        tls_cert=_read(args.tls_cert, "--tls-cert") if args.tls_cert else None,
        tls_key=_read(args.tls_key, "--tls-key") if args.tls_key else None,
        drain_seconds=args.drain_seconds, executor=executor)


def main(args: argparse.Namespace) -> int:
    """Run ``cowsim serve`` until SIGTERM/SIGINT; 0 after a clean stop.  A server that
    cannot start (a port in use, a data directory it cannot write) is one line, exit 2."""
    config = config_from_args(args)
    logging.basicConfig(level=logging.INFO, format="cowsim serve: %(message)s")
    try:
        asyncio.run(serve(config))
    except (OSError, RuntimeError) as exc:
        raise InvalidInput(f"cannot start: {exc}", source="serve") from None
    return 0
