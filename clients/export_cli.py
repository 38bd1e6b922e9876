"""``cowsim export openmetrics RUN [--start TIME] [--server …]``: a run for backfill.

``RUN`` is a remote run's id (asked of ``--server``/``$COWSIM_SERVER`` like
``cowsim result``) or, when it names an existing path, a local ``result.json``
or the ``--out`` directory of ``cowsim run`` holding one.  The run's series and
counters are printed as OpenMetrics (:mod:`cowsim.clients.openmetrics`), simulated
time mapped to wall-clock time from ``--start`` (Unix seconds, or ISO 8601 such as
``2026-01-02T03:04:05Z``; without a zone, UTC), by default now minus the run's
simulated duration, so that the run ends now::

    cowsim export openmetrics 7f3a… --server localhost:50051 > run.om
    promtool tsdb create-blocks-from openmetrics run.om data/

Exit status as the remote commands': 0 printed; 1 the run has no result (not
finished, failed, cancelled before it started) or no series; 2 invalid input (an
option, an unreadable file, an unknown run); 3 the server cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cowsim.clients import service_cli
from cowsim.clients.openmetrics import NoSeriesError, openmetrics_text
from cowsim.clients.output import say
from cowsim.clients.service_client import ServiceCallError
from cowsim.sim import InvalidInput
from cowsim.v1 import cowsim_pb2 as pb

__all__ = ["add_commands", "main", "parse_start"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
MAX_RESULT_BYTES = 256 << 20
"""The largest local result file read."""


def add_commands(commands: Any) -> None:
    export = commands.add_parser("export", help="export a run for other tools")
    formats = export.add_subparsers(dest="format", metavar="FORMAT", required=True)
    om = formats.add_parser("openmetrics", parents=[service_cli.connection_parser()],
                            help="a run's series as OpenMetrics with timestamps (for "
                                 "promtool tsdb create-blocks-from openmetrics)")
    om.add_argument("run", metavar="RUN", help="a remote run id, or a result.json / --out dir")
    om.add_argument("--start", metavar="TIME",
                    help="wall-clock time of simulated t=0: Unix seconds or ISO 8601 "
                         "(default: now minus the run's simulated duration)")


def parse_start(text: str) -> float:
    """Unix seconds from ``--start``: a number, or an ISO 8601 time (UTC if no zone)."""
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise InvalidInput(f"{text!r} is neither Unix seconds nor an ISO 8601 time",
                               source="--start") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = moment.timestamp()
    if not math.isfinite(value) or value < 0:
        raise InvalidInput(f"{text!r} is not a time after 1970", source="--start")
    return value


def _local_result(path: Path) -> dict[str, Any]:
    file = path / "result.json" if path.is_dir() else path
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_RESULT_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror or exc}", source="RUN") from None
    if len(raw) > MAX_RESULT_BYTES:
        raise InvalidInput(f"{file} is larger than {MAX_RESULT_BYTES >> 20} MiB", source="RUN")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{file} is not a run result (JSON): {exc}", source="RUN") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{file} is not a run result (a JSON object)", source="RUN")
    return data


def _remote_result(args: argparse.Namespace) -> tuple[dict[str, Any] | None, int]:
    """The run's result from the server, or None and the exit status (said already)."""
    connection = service_cli.connection_from_args(args)
    try:
        with connection.client() as client:
            run = client.get(args.run)
    except ServiceCallError as error:
        say(service_cli.describe(error, args, connection.target)[:2000])
        return None, service_cli.exit_status(error)
    if not run.HasField("result"):
        state = service_cli.state_name(run.state)
        reason = (f": {run.error_message}" if run.state == pb.RUN_STATE_FAILED and run.error_message
                  else "")
        say(f"run {run.run_id} is {state}: no result to export{reason}")
        return None, EXIT_FAILED
    return json.loads(run.result.result_json), EXIT_OK


def main(args: argparse.Namespace) -> int:
    """Print the run as OpenMetrics; the exit status (module docstring)."""
    start = parse_start(args.start) if args.start is not None else None
    path = Path(args.run)
    if path.exists():
        result: dict[str, Any] | None = _local_result(path)
    else:
        result, status = _remote_result(args)
        if result is None:
            return status
    assert result is not None
    if start is None:
        start = time.time() - float(result.get("sim_seconds", 0.0))
    try:
        text = openmetrics_text(result, start)
    except NoSeriesError as exc:
        say(f"{args.run}: {exc}")
        return EXIT_FAILED
    print(text, end="")
    return EXIT_OK
