"""Remote runs: ``cowsim submit``, ``status``, ``watch``, ``cancel``, ``list`` and ``result``.

``cowsim run SPEC`` simulates on this machine; these commands hand the same
spec to a ``cowsim serve`` and talk about the run it becomes.  A remote run
lives through the states of the API (``cowsim.v1.RunState``)::

    submit ─→ QUEUED ─→ RUNNING ─→ SUCCEEDED      (the result is stored)
                 │          ├────→ FAILED         (error says why)
                 └──────────┴────→ CANCELLED      (cancelled while running: a partial result)

The commands and what they print (``RUN`` is the id ``submit`` printed):

* ``cowsim submit SPEC [--kernel K] [--seed N] [--pace F] [--request-id ID] [--wait] [--json]``
  sends the spec's text and prints ``RUN STATE`` (``--json``: ``{"run_id",
  "state"}``).  An identical earlier run (same spec, kernel, seed and cowsim
  version) is answered from the server's result cache at once; a repeated
  ``--request-id`` returns the run of the first submission instead of a new
  one.  With ``--wait`` it follows the run and prints the result as ``cowsim
  run`` does — ``--json``: the very JSON ``cowsim run SPEC --json`` prints, plus
  a ``run_id`` key;
* ``cowsim status RUN [--json]``: the run's state, progress and times;
* ``cowsim watch RUN``: a progress bar over simulated time on a terminal (one
  line per tenth of the run otherwise, for logs and CI), then the final state
  as the last line, ``RUN: STATE …``;
* ``cowsim cancel RUN``: cancel a queued or running run; prints its state after;
* ``cowsim list [--state S] [--kernel K] [--name N] [--limit N] [--json]``:
  runs newest first (every page of the server's answer);
* ``cowsim result RUN [--json]``: the result, rendered exactly as ``cowsim run``
  renders it; ``--json`` prints what ``cowsim run SPEC --json`` would print for
  the same spec, kernel and seed (``wall_seconds`` is the server's).

Before anything is sent, what can be checked here is: the options (``--seed``,
the server address, the token and CA files) and the spec *file* — read by the
rules ``cowsim run`` reads files by (a regular file, at most 4 MiB, UTF-8), so
a missing file is exit 2 without a network call.  Its *content* is validated
by the server, whose cowsim version is the one that will run it (a client one
release apart would otherwise refuse, or pass, the wrong specs); the server
answers with the same one-line message ``cowsim run`` prints, naming the file
and the field path (``tiny.yaml: field 'processes[0].memory': …``), and an
error about ``kernel``, ``seed`` or ``request_id`` is reported against the
option (``--kernel: …``).

Exit status, one line on stderr for every error:

* 0 — done; for ``submit --wait``, ``watch`` and ``result``: the run SUCCEEDED;
* 1 — the run FAILED, or was CANCELLED (it did not run to its duration: a
  script that waits for a result must not take a partial one for it; the
  partial result is still printed), or ``result`` of a run not finished yet;
  also a server error that is nobody's input (INTERNAL, UNKNOWN …);
* 2 — invalid input: an option, the spec (INVALID_ARGUMENT: the field path), a
  run id the server does not know (NOT_FOUND), a run over a server limit
  (RESOURCE_EXHAUSTED: which limit), missing or wrong credentials
  (UNAUTHENTICATED, PERMISSION_DENIED);
* 3 — the server could not be reached or did not answer in time (UNAVAILABLE,
  DEADLINE_EXCEEDED; also a server that is shutting down);
* 130 — Ctrl-C; a run being followed keeps running on the server (the message
  says how to cancel it).

Connection options, on every command: ``--server HOST:PORT`` (default
``$COWSIM_SERVER``), ``--token-file F`` (the bearer token a ``cowsim serve
--token-file`` expects; the same one-token file), ``--tls-ca PEM`` (TLS,
trusting these certificates: a server's self-signed ``--tls-cert``),
``--tls`` (TLS with the system's trusted roots) and ``--tls-server-name
NAME`` (the name the certificate must carry, when it is not the host dialled).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from cowsim.clients import render
from cowsim.clients.output import say
from cowsim.clients.service_client import Client, ServiceCallError
from cowsim.sim import InvalidInput, check_pace, check_seed, escape_control, format_seconds, read_text
from cowsim.v1 import cowsim_pb2 as pb

__all__ = ["COMMANDS", "SERVER_ENV", "add_commands", "connection_parser", "main", "run_record"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

COMMANDS = ("submit", "status", "watch", "cancel", "list", "result")
SERVER_ENV = "COWSIM_SERVER"
"""The environment variable ``--server`` defaults to."""
CALL_TIMEOUT_SECONDS = 30.0
"""The deadline of each unary call (a watch has none: a run may take hours)."""
MAX_SOURCE_NAME_CHARS = 256
"""The longest file name sent with a spec (the server refuses longer ones)."""
MAX_CREDENTIAL_FILE_BYTES = 1 << 20
"""The largest token or CA file read."""
LIST_PAGE_SIZE = 200
"""Runs asked for per ListRuns page (``list`` follows the page tokens to the end)."""
PROGRESS_LINE_FRACTION = 0.1
"""Off a terminal, ``watch`` prints a line each time the run has simulated this much more."""

STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
FINAL_STATES = frozenset({pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED})
OPTION_FOR_FIELD = {"kernel": "--kernel", "seed": "--seed", "request_id": "--request-id",
                    "pace": "--pace"}
"""Request fields filled from an option (of ``submit``; ``list --kernel``): an error about one
names the option, as the local commands do."""

INVALID_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                           grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                           grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
UNREACHABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


# -- the command line --------------------------------------------------------------------

def connection_parser() -> argparse.ArgumentParser:
    """The connection options every remote command takes (a parent parser)."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("server")
    group.add_argument("--server", metavar="HOST:PORT",
                       help=f"the cowsim serve to talk to (default: ${SERVER_ENV})")
    group.add_argument("--token-file", type=Path, metavar="F",
                       help="send the bearer token in this file (cowsim serve --token-file)")
    group.add_argument("--tls-ca", type=Path, metavar="PEM",
                       help="use TLS, trusting these certificates (e.g. the server's --tls-cert)")
    group.add_argument("--tls", action="store_true",
                       help="use TLS with the system's trusted certificates")
    group.add_argument("--tls-server-name", metavar="NAME",
                       help="the name the server's certificate carries, if not the host dialled")
    return options


def add_commands(commands: Any) -> None:
    """Add the remote-run subcommands to the ``cowsim`` parser."""
    connection = [connection_parser()]
    submit = commands.add_parser("submit", parents=connection,
                                 help="submit a workload spec to a cowsim server")
    submit.add_argument("spec", metavar="SPEC")
    submit.add_argument("--kernel", help="override the spec's kernel (version, era or what-if)")
    submit.add_argument("--seed", type=int, help="override the spec's seed (0 … 2**63-1)")
    submit.add_argument("--pace", type=float, metavar="F",
                        help="run at F simulated seconds per wall-clock second (1: real time) "
                             "so live dashboards show it; never answered from the cache")
    submit.add_argument("--request-id", metavar="ID",
                        help="make the submission idempotent: the same id is the same run")
    submit.add_argument("--wait", action="store_true",
                        help="follow the run and print its result as cowsim run does")
    submit.add_argument("--json", action="store_true",
                        help='print {"run_id", "state"}; with --wait, the result JSON')
    status = commands.add_parser("status", parents=connection, help="a remote run's state")
    status.add_argument("run", metavar="RUN")
    status.add_argument("--json", action="store_true", help="print the run as JSON")
    watch = commands.add_parser("watch", parents=connection,
                                help="follow a remote run's progress to its end")
    watch.add_argument("run", metavar="RUN")
    cancel = commands.add_parser("cancel", parents=connection,
                                 help="cancel a queued or running remote run")
    cancel.add_argument("run", metavar="RUN")
    listing = commands.add_parser("list", parents=connection, help="remote runs, newest first")
    listing.add_argument("--state", type=str.upper, choices=STATES, help="only runs in this state")
    listing.add_argument("--kernel", help="only runs of this kernel")
    listing.add_argument("--name", help="only runs of specs with this name")
    listing.add_argument("--limit", type=int, metavar="N", help="at most N runs (default: all)")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    result = commands.add_parser("result", parents=connection,
                                 help="a remote run's result, as cowsim run prints it")
    result.add_argument("run", metavar="RUN")
    result.add_argument("--json", action="store_true", help="print the result as JSON")


# -- what is checked here ----------------------------------------------------------------

@dataclass(frozen=True)
class Connection:
    """Where the server is and how to prove who we are: the Client's arguments."""

    target: str
    token: str | None = None
    root_certificates: bytes | None = None
    tls: bool = False
    server_name: str | None = None

    def client(self) -> Client:
        return Client(self.target, token=self.token, tls=self.tls,
                      root_certificates=self.root_certificates, server_name=self.server_name,
                      timeout_seconds=CALL_TIMEOUT_SECONDS)


def _read_small_file(path: Path, option: str) -> bytes:
    try:
        with path.open("rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise InvalidInput(f"cannot read {path}: not a regular file", source=option)
            raw = handle.read(MAX_CREDENTIAL_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}", source=option) from None
    if len(raw) > MAX_CREDENTIAL_FILE_BYTES:
        raise InvalidInput(f"{path} is larger than {MAX_CREDENTIAL_FILE_BYTES >> 20} MiB",
                           source=option)
    return raw


def _token(path: Path) -> str:
    """The one token of a token file, by the rules ``cowsim serve --token-file`` reads it."""
    try:
        token = _read_small_file(path, "--token-file").decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not UTF-8 text", source="--token-file") from None
    if not token or any(char.isspace() for char in token):
        raise InvalidInput(f"{path}: one token without spaces is expected",
                           source="--token-file")
    return token


def connection_from_args(args: argparse.Namespace) -> Connection:
    """The server and credentials the options (and ``$COWSIM_SERVER``) name; InvalidInput
    naming the option when one is missing or unreadable."""
    target = (args.server if args.server is not None else os.environ.get(SERVER_ENV, "")).strip()
    if not target:
        raise InvalidInput(f"no server given: pass --server HOST:PORT or set {SERVER_ENV}",
                           source="--server")
    if not target.isprintable() or " " in target:
        raise InvalidInput(f"{target!r} is not a server address (HOST:PORT)", source="--server")
    if args.tls_server_name is not None and not (args.tls or args.tls_ca is not None):
        raise InvalidInput("goes with TLS: --tls-ca PEM or --tls", source="--tls-server-name")
    token = _token(args.token_file) if args.token_file is not None else None
    roots = _read_small_file(args.tls_ca, "--tls-ca") if args.tls_ca is not None else None
    return Connection(target=target, token=token, root_certificates=roots, tls=args.tls,
                      server_name=args.tls_server_name)


def _source_name(path: str) -> str:
    """The file name sent with the spec (errors name it; ".json" selects JSON)."""
    if len(path) <= MAX_SOURCE_NAME_CHARS:
        return path
    return Path(path).name[-MAX_SOURCE_NAME_CHARS:]


# -- runs as text --------------------------------------------------------------------------

def state_name(state: pb.RunState.ValueType) -> str:
    """``RUN_STATE_SUCCEEDED`` → ``SUCCEEDED``."""
    return pb.RunState.Name(state).removeprefix("RUN_STATE_")


def _time(run: pb.Run, field: str) -> str | None:
    if not run.HasField(field):  # type: ignore[arg-type]
        return None
    stamp: Timestamp = getattr(run, field)
    return stamp.ToJsonString()


def _human_time(run: pb.Run, field: str, form: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    if not run.HasField(field):  # type: ignore[arg-type]
        return "—"
    stamp: Timestamp = getattr(run, field)
    return stamp.ToDatetime(tzinfo=UTC).strftime(form)


def run_record(run: pb.Run) -> dict[str, Any]:
    """A run as ``status --json`` and ``list --json`` print it (times in RFC 3339, UTC)."""
    return {
        "run_id": run.run_id, "state": state_name(run.state), "name": run.name,
        "kernel": run.kernel, "seed": run.seed, "workload": run.workload,
        "request_id": run.request_id or None,
        "create_time": _time(run, "create_time"), "start_time": _time(run, "start_time"),
        "end_time": _time(run, "end_time"),
        "sim_seconds": run.sim_seconds, "sim_seconds_total": run.sim_seconds_total,
        "events_processed": run.events_processed, "attempts": run.attempts,
        "error_message": run.error_message or None, "error_field": run.error_field or None,
        "pace": run.pace or None,
    }


def _progress_text(run: pb.Run) -> str:
    total = run.sim_seconds_total
    percent = f" ({100 * run.sim_seconds / total:.0f}%)" if total > 0 else ""
    return f"{format_seconds(run.sim_seconds)} of {format_seconds(total)} simulated{percent}"


def _final_line(run: pb.Run) -> str:
    """``RUN: STATE — …``: how a run ended (or where it is)."""
    line = f"{run.run_id}: {state_name(run.state)}"
    if run.state == pb.RUN_STATE_SUCCEEDED:
        wall = f" in {run.result.wall_seconds:.2f} s wall" if run.HasField("result") else ""
        return f"{line} — {format_seconds(run.sim_seconds)} simulated{wall}"
    if run.state == pb.RUN_STATE_FAILED:
        return f"{line} — {run.error_message or 'no reason given'}"
    return f"{line} — {_progress_text(run)}"


def _print_status(console: Console, run: pb.Run) -> None:
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column(style="bold")
    table.add_column()
    rows = [("run", run.run_id), ("state", state_name(run.state)),
            ("spec", f"{run.name} ({run.workload}) on kernel {run.kernel}, seed {run.seed}"),
            ("progress", f"{_progress_text(run)}, {run.events_processed:,} events"),
            ("created", _human_time(run, "create_time")),
            ("started", _human_time(run, "start_time")), ("ended", _human_time(run, "end_time")),
            ("attempts", str(run.attempts))]
    if run.request_id:
        rows.append(("request id", run.request_id))
    if run.error_message:
        rows.append(("error", run.error_message))
    for label, value in rows:
        table.add_row(label, render.plain(value))
    console.print(table)


def _print_list(console: Console, runs: list[pb.Run]) -> None:
    table = Table(title=f"{len(runs)} runs, newest first")
    table.add_column("run", no_wrap=True)  # whole: it is what the other commands take
    table.add_column("state", no_wrap=True)
    table.add_column("name")
    table.add_column("kernel")
    table.add_column("seed", justify="right")
    table.add_column("simulated", justify="right")
    table.add_column("created (UTC)")
    for run in runs:
        table.add_row(run.run_id, state_name(run.state), render.plain(run.name),
                      render.plain(run.kernel), str(run.seed),
                      f"{format_seconds(run.sim_seconds)} / {format_seconds(run.sim_seconds_total)}",
                      _human_time(run, "create_time", "%Y-%m-%d %H:%M:%S"))
    console.print(table)


def _print_outcome(console: Console, run: pb.Run, as_json: bool, with_run_id: bool) -> int:
    """A final run's result as ``cowsim run`` prints it; the exit status (module docstring)."""
    if run.state not in FINAL_STATES:
        say(f"run {run.run_id} is {state_name(run.state)}: no result yet "
            f"(cowsim watch {run.run_id} follows it to its end)")
        return EXIT_FAILED
    if run.state == pb.RUN_STATE_FAILED:
        say(f"run {run.run_id} failed: {run.error_message or 'no reason given'}")
        return EXIT_FAILED
    if not run.HasField("result"):
        say(f"run {run.run_id} was cancelled before it started: no result")
        return EXIT_FAILED
    result = json.loads(run.result.result_json)
    if as_json:
        print(json.dumps(dict(result, run_id=run.run_id) if with_run_id else result, indent=2,
                         sort_keys=True))
    else:
        render.run_summary(console, [result])
    if run.state == pb.RUN_STATE_CANCELLED:
        say(f"run {run.run_id} was cancelled at {_progress_text(run)}: the result is partial")
        return EXIT_FAILED
    return EXIT_OK


# -- following a run ----------------------------------------------------------------------

def _line(console: Console, text: str) -> None:
    """One line of user-visible text, never wrapped (scripts cut it), never styled."""
    console.print(render.plain(text), soft_wrap=True, highlight=False)


class _Lines:
    """Progress off a terminal: a line per tenth of the run, so logs stay short."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.printed_fraction = 0.0

    def update(self, run_id: str, sim_seconds: float, total_seconds: float) -> None:
        if total_seconds <= 0:
            return
        fraction = sim_seconds / total_seconds
        finished = fraction >= 1.0 and self.printed_fraction < 1.0
        if finished or fraction >= self.printed_fraction + PROGRESS_LINE_FRACTION:
            self.printed_fraction = fraction
            _line(self.console, f"{run_id}: RUNNING — {format_seconds(sim_seconds)} of "
                                f"{format_seconds(total_seconds)} simulated "
                                f"({100 * fraction:.0f}%)")


def _follow(client: Client, run: pb.Run, console: Console, mode: str) -> pb.Run:
    """Watch ``run`` to its end, showing progress by ``mode`` (``bar``: a rich progress bar
    over simulated time; ``lines``: a line per tenth; ``quiet``); the final run, in full."""
    if run.state in FINAL_STATES:
        return run if run.HasField("result") else client.get(run.run_id)
    lines = _Lines(console) if mode == "lines" else None
    first: tuple[float, int] | None = None  # (wall clock, events) at the first progress seen
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.fields[sim]} simulated · {task.fields[rate]} events/s"),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=mode != "bar") as bar:
        task: TaskID = bar.add_task(
            escape(escape_control(f"{run.name} on {run.kernel} ({state_name(run.state)})")),
            total=run.sim_seconds_total or None, sim="0 s", rate="0")
        description = escape(escape_control(f"{run.name} on {run.kernel}"))
        for message in client.watch(run.run_id):
            if message.HasField("run"):
                final = message.run
                return final if final.HasField("result") else client.get(final.run_id)
            progress = message.progress
            now = time.perf_counter()
            if first is None:  # a watcher may join late: the rate is over what it saw
                first = (now, progress.events_processed)
            rate = (progress.events_processed - first[1]) / max(now - first[0], 1e-9)
            bar.update(task, description=description, completed=progress.sim_seconds,
                       total=progress.sim_seconds_total or None,
                       sim=format_seconds(progress.sim_seconds), rate=f"{rate:,.0f}")
            if lines is not None:
                lines.update(run.run_id, progress.sim_seconds, progress.sim_seconds_total)
    return client.get(run.run_id)  # the stream ended without the final message


def _interrupted(run_id: str) -> int:
    say(f"interrupted (run {run_id} keeps running on the server; cowsim cancel {run_id} stops it)")
    return EXIT_INTERRUPTED


# -- the commands ---------------------------------------------------------------------------

def _submit(client: Client, args: argparse.Namespace, console: Console, text: str) -> int:
    response = client.submit_run(text, source_name=_source_name(args.spec),
                                 kernel=args.kernel or "", seed=args.seed,
                                 request_id=args.request_id or "", pace=args.pace)
    run = response.run
    if args.json and not args.wait:
        print(json.dumps({"run_id": run.run_id, "state": state_name(run.state)}))
        return EXIT_OK
    if not args.json:
        notes = (" (answered from the result cache)" if response.cached else "") + (
            " (the run of an earlier submission with this request id)" if response.replayed
            else "")
        _line(console, f"{run.run_id} {state_name(run.state)}{notes}")
    if not args.wait:
        return EXIT_OK
    try:
        final = _follow(client, run, console, "quiet" if args.json or not console.is_terminal
                        else "bar")
    except KeyboardInterrupt:
        return _interrupted(run.run_id)
    return _print_outcome(console, final, args.json, with_run_id=True)


def _status(client: Client, args: argparse.Namespace, console: Console) -> int:
    run = client.get(args.run, full=False)
    if args.json:
        print(json.dumps(run_record(run), indent=2))
    else:
        _print_status(console, run)
    return EXIT_OK


def _watch(client: Client, args: argparse.Namespace, console: Console) -> int:
    run = client.get(args.run, full=False)
    if not console.is_terminal:
        _line(console, f"{run.run_id}: {state_name(run.state)} — {run.name} on "
                                   f"kernel {run.kernel}")
    try:
        final = _follow(client, run, console, "bar" if console.is_terminal else "lines")
    except KeyboardInterrupt:
        return _interrupted(run.run_id)
    _line(console, _final_line(final))
    return EXIT_OK if final.state == pb.RUN_STATE_SUCCEEDED else EXIT_FAILED


def _cancel(client: Client, args: argparse.Namespace, console: Console) -> int:
    before = client.get(args.run, full=False)
    run = client.cancel(args.run)
    line = _final_line(run)
    if before.state in FINAL_STATES:
        line += " (it had already finished: nothing to cancel)"
    elif run.state not in FINAL_STATES:
        line += " (cancellation requested: its worker is stopping)"
    _line(console, line)
    return EXIT_OK


def _list(client: Client, args: argparse.Namespace, console: Console) -> int:
    if args.limit is not None and args.limit < 1:
        raise InvalidInput(f"a limit is at least 1, not {args.limit}", source="--limit")
    state = pb.RunState.Value(f"RUN_STATE_{args.state}") if args.state else \
        pb.RUN_STATE_UNSPECIFIED
    runs: list[pb.Run] = []
    page_size = LIST_PAGE_SIZE if args.limit is None else min(LIST_PAGE_SIZE, args.limit)
    for run in client.list_runs(page_size=page_size, state=state, kernel=args.kernel or "",
                                name=args.name or ""):
        runs.append(run)
        if args.limit is not None and len(runs) >= args.limit:
            break
    if args.json:
        print(json.dumps([run_record(run) for run in runs], indent=2))
    else:
        _print_list(console, runs)
    return EXIT_OK


def _result(client: Client, args: argparse.Namespace, console: Console) -> int:
    return _print_outcome(console, client.get(args.run), args.json, with_run_id=False)


_HANDLERS: dict[str, Callable[[Client, argparse.Namespace, Console], int]] = {
    "status": _status, "watch": _watch, "cancel": _cancel, "list": _list, "result": _result,
}


# -- errors --------------------------------------------------------------------------------

def describe(error: ServiceCallError, args: argparse.Namespace, target: str) -> str:
    """The one line to say for a refused call (module docstring)."""
    code, message = error.code, error.message
    if code == grpc.StatusCode.INVALID_ARGUMENT and error.field_violations:
        field, description = error.field_violations[0]
        option = OPTION_FOR_FIELD.get(field)
        if option is not None and getattr(args, field, None) is not None:
            return f"{option}: {description}"
        if field == "run_id":
            return f"run id {getattr(args, 'run', '')!r}: {description}"
        if field not in ("spec", "") and field not in message:
            return f"{message} (field '{field}')"
        return message
    if code == grpc.StatusCode.NOT_FOUND:
        return f"{message} on {target}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        limits = ", ".join(subject for subject, _ in error.quota_violations) or "a size limit"
        return f"refused by the server at {target} ({limits} exceeded): {message}"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        hint = "check --token-file" if args.token_file is not None else "pass --token-file F"
        return f"the server at {target} refused the credentials ({code.name}): {message}; {hint}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the server at {target} did not answer in time: {message}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the server at {target}: {message}"
    return f"the server at {target} failed ({code.name}): {message}"


def exit_status(error: ServiceCallError) -> int:
    """2 for the caller's input, 3 for an unreachable server, 1 for the rest."""
    if error.code in INVALID_CODES:
        return EXIT_INVALID
    if error.code in UNREACHABLE_CODES:
        return EXIT_UNREACHABLE
    return EXIT_FAILED


def main(args: argparse.Namespace, console: Console) -> int:
    """Run one remote-run command; the exit status (module docstring)."""
    connection = connection_from_args(args)
    text = None
    if args.command == "submit":
        if args.seed is not None:
            try:
                check_seed(args.seed, path=())
            except InvalidInput as exc:
                raise exc.within(source="--seed") from None
        if args.pace is not None:
            try:
                check_pace(args.pace, path=())
            except InvalidInput as exc:
                raise exc.within(source="--pace") from None
        text = read_text(args.spec)
    try:
        with connection.client() as client:
            if text is not None:
                return _submit(client, args, console, text)
            return _HANDLERS[args.command](client, args, console)
    except ServiceCallError as error:
        say(describe(error, args, connection.target)[:2000])
        return exit_status(error)
