"""The run store: every run and result in SQLite, so a restart loses nothing finished.

One table, ``runs``, one row per run, in the data dir's ``runs.sqlite3``:

* **WAL** journal (readers never block the writer) with ``synchronous=FULL``:
  a committed transaction survives the process being killed (and a power cut).
* **Transactional**: every change is one ``with self._db:`` block, so a row is
  never half-updated — a run is QUEUED, RUNNING or final with its result, never
  SUCCEEDED without one.
* **Idempotent**: ``request_id`` is UNIQUE; **cached**: ``cache_key`` is indexed,
  and :meth:`RunStore.find_cached` returns the oldest SUCCEEDED run whose result
  was "completed" for a key.
* **Recoverable**: :meth:`RunStore.recover` turns RUNNING rows (a server that
  stopped mid-run) back into QUEUED and returns every queued run in submission
  order, for the server to run again; a run is a pure function of its inputs, so
  starting it over gives the result it would have given.

The ``seq`` column (autoincrement) orders runs: newest first is ``seq DESC``,
and a page token is the last ``seq`` seen.  The store is used from the server's
event loop thread only (one connection; the writes are small).

**Sweeps** (:mod:`cowsim.service.sweep_service`) live beside the runs: ``sweeps``
has one row per sweep (its spec text and ``sweep.json`` manifest), ``sweep_runs``
one row per (point, replication) naming the run it is.  A sweep owns no state of
its own beyond that: its counts and state are read from its runs' rows
(:meth:`RunStore.sweep_counts`), so a run that finishes, or a restart, moves the
sweep with it.  A sweep and all its runs are inserted in one transaction
(:meth:`RunStore.transaction`): a sweep is stored whole or not at all.  Both
tables are created in place (``IF NOT EXISTS``) in a data dir an older cowsim
wrote.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["FINAL_STATES", "STATES", "RunRecord", "RunStore", "SweepMember", "SweepRecord"]

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    request_id TEXT UNIQUE,
    cache_key TEXT NOT NULL,
    name TEXT NOT NULL,
    kernel TEXT NOT NULL,
    kernel_name TEXT NOT NULL,
    workload TEXT NOT NULL,
    seed INTEGER NOT NULL,
    state TEXT NOT NULL,
    spec_text TEXT NOT NULL,
    source_name TEXT NOT NULL,
    create_time REAL NOT NULL,
    start_time REAL,
    end_time REAL,
    wall_seconds REAL,
    sim_seconds REAL NOT NULL DEFAULT 0,
    sim_seconds_total REAL NOT NULL,
    events_processed INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error_message TEXT NOT NULL DEFAULT '',
    error_field TEXT NOT NULL DEFAULT '',
    result_status TEXT NOT NULL DEFAULT '',
    result_json TEXT,
    pace REAL
);
CREATE INDEX IF NOT EXISTS runs_cache_key ON runs (cache_key, state);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state);
CREATE TABLE IF NOT EXISTS sweeps (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep_id TEXT NOT NULL UNIQUE,
    request_id TEXT UNIQUE,
    sweep_key TEXT NOT NULL,
    name TEXT NOT NULL,
    source_name TEXT NOT NULL,
    spec_text TEXT NOT NULL,
    manifest_json TEXT NOT NULL,
    points INTEGER NOT NULL,
    replications INTEGER NOT NULL,
    create_time REAL NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    point INTEGER NOT NULL,
    replication INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    key TEXT NOT NULL,
    run_id TEXT NOT NULL,
    cached INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sweep_id, position)
);
"""
ADDED_COLUMNS = (("pace", "REAL"),)
"""Columns added after the first release of the schema, as (name, declaration)."""


@dataclass
class RunRecord:
    """One row of ``runs``."""

    run_id: str
    cache_key: str
    name: str
    kernel: str
    """The kernel label the result names (``"6.8"``): what ListRuns filters on."""
    kernel_name: str
    """The generation name the worker builds with (the plan's)."""
    workload: str
    seed: int
    state: str
    spec_text: str
    source_name: str
    create_time: float
    sim_seconds_total: float
    request_id: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    wall_seconds: float | None = None
    sim_seconds: float = 0.0
    events_processed: int = 0
    attempts: int = 0
    cancel_requested: bool = False
    error_message: str = ""
    error_field: str = ""
    result_status: str = ""
    result_json: str | None = None
    pace: float | None = None
    """Simulated seconds per wall-clock second the run is held to; None: unpaced."""
    seq: int = 0

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


_COLUMNS = tuple(item.name for item in fields(RunRecord))


@dataclass
class SweepRecord:
    """One row of ``sweeps``."""

    sweep_id: str
    sweep_key: str
    """sha256 of the validated sweep and its run keys: what a replayed request_id must match."""
    name: str
    source_name: str
    spec_text: str
    manifest_json: str
    """sweep.json as ``cowsim sweep`` writes it (:func:`cowsim.service.sweeps.describe`)."""
    points: int
    replications: int
    create_time: float
    request_id: str | None = None
    cancel_requested: bool = False
    seq: int = 0


@dataclass(frozen=True)
class SweepMember:
    """One row of ``sweep_runs``: a (point, replication) of a sweep and the run it is."""

    position: int
    point: int
    replication: int
    seed: int
    key: str
    run_id: str
    cached: bool = False
    state: str = ""
    """The run's state (read with the member; not a column of ``sweep_runs``)."""
    end_time: float | None = None


_SWEEP_COLUMNS = tuple(item.name for item in fields(SweepRecord))
_MEMBER_COLUMNS = ("position", "point", "replication", "seed", "key", "run_id", "cached")


def _record(row: sqlite3.Row) -> RunRecord:
    values: dict[str, Any] = {name: row[name] for name in _COLUMNS}
    values["cancel_requested"] = bool(values["cancel_requested"])
    return RunRecord(**values)


class RunStore:
    """Runs in SQLite under ``data_dir`` (created if missing)."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "runs.sqlite3"
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)  # idempotent (IF NOT EXISTS); commits by itself
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns a data dir written by an older cowsim lacks (SQLite adds a
        column in place; the rows keep their values and get the column's default)."""
        present = {row["name"] for row in self._db.execute("PRAGMA table_info(runs)")}
        for column, declaration in ADDED_COLUMNS:
            if column not in present:
                self._db.execute(f"ALTER TABLE runs ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> Any:
        """``with self._transaction():`` — BEGIN IMMEDIATE … COMMIT (ROLLBACK on error);
        inside an open transaction, part of it."""
        return _Transaction(self._db)

    def transaction(self) -> Any:
        """``with store.transaction():`` — the writes inside are one transaction (a sweep
        and its runs are stored together or not at all)."""
        return _Transaction(self._db)

    # -- reading ------------------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord | None:
        row = self._db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _record(row) if row is not None else None

    def by_request_id(self, request_id: str) -> RunRecord | None:
        row = self._db.execute("SELECT * FROM runs WHERE request_id = ?", (request_id,)).fetchone()
        return _record(row) if row is not None else None

    def find_cached(self, cache_key: str) -> RunRecord | None:
        """The oldest run with this key that completed (a cancelled result is partial)."""
        row = self._db.execute(
            "SELECT * FROM runs WHERE cache_key = ? AND state = ? AND result_status = 'completed' "
            "ORDER BY seq LIMIT 1", (cache_key, SUCCEEDED)).fetchone()
        return _record(row) if row is not None else None

    def list_runs(self, *, state: str | None = None, kernel: str | None = None, name: str | None = None,
             before_seq: int | None = None, limit: int = 50) -> list[RunRecord]:
        """Runs newest first, filtered, older than ``before_seq`` (a page token)."""
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("state", state), ("kernel", kernel), ("name", name)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if before_seq is not None:
            where.append("seq < ?")
            args.append(before_seq)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._db.execute(sql + " ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()
        return [_record(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """How many runs are in each state."""
        rows = self._db.execute("SELECT state, COUNT(*) FROM runs GROUP BY state").fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update({row[0]: row[1] for row in rows})
        return counts

    def all(self) -> Iterator[RunRecord]:
        for row in self._db.execute("SELECT * FROM runs ORDER BY seq"):
            yield _record(row)

    # -- writing ------------------------------------------------------------------------

    def insert(self, record: RunRecord) -> RunRecord:
        """Store a new run; raises sqlite3.IntegrityError if its run or request id exists."""
        values = {name: getattr(record, name) for name in _COLUMNS if name != "seq"}
        with self._transaction():
            cursor = self._db.execute(
                f"INSERT INTO runs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()))
        record.seq = int(cursor.lastrowid or 0)
        return record

    def update(self, run_id: str, **changes: Any) -> RunRecord:
        """Change columns of one run in one transaction; the run as it now is."""
        unknown = set(changes) - set(_COLUMNS)
        if unknown or "seq" in changes or "run_id" in changes:
            raise ValueError(f"cannot update {sorted(unknown) or ['seq/run_id']}")
        with self._transaction():
            self._db.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in changes)} "
                             "WHERE run_id = ?", (*changes.values(), run_id))
        record = self.get(run_id)
        if record is None:
            raise KeyError(run_id)
        return record

    def recover(self) -> list[RunRecord]:
        """After a restart: runs that were RUNNING are QUEUED again (or CANCELLED if their
        cancellation had been asked for); every QUEUED run, in submission order."""
        with self._transaction():
            self._db.execute("UPDATE runs SET state = ?, end_time = ? WHERE state = ? "
                             "AND cancel_requested = 1", (CANCELLED, time.time(), RUNNING))
            self._db.execute("UPDATE runs SET state = ? WHERE state = ?", (QUEUED, RUNNING))
        rows = self._db.execute("SELECT * FROM runs WHERE state = ? ORDER BY seq", (QUEUED,))
        return [_record(row) for row in rows.fetchall()]


    # -- sweeps ---------------------------------------------------------------------------

    def insert_sweep(self, sweep: SweepRecord, members: list[SweepMember]) -> SweepRecord:
        """Store a sweep and its members (inside :meth:`transaction`, with its new runs)."""
        values = {name: getattr(sweep, name) for name in _SWEEP_COLUMNS if name != "seq"}
        with self._transaction():
            cursor = self._db.execute(
                f"INSERT INTO sweeps ({', '.join(values)}) VALUES "
                f"({', '.join('?' * len(values))})", tuple(values.values()))
            self._db.executemany(
                f"INSERT INTO sweep_runs (sweep_id, {', '.join(_MEMBER_COLUMNS)}) VALUES "
                f"(?, {', '.join('?' * len(_MEMBER_COLUMNS))})",
                [(sweep.sweep_id, *(getattr(m, c) for c in _MEMBER_COLUMNS)) for m in members])
        sweep.seq = int(cursor.lastrowid or 0)
        return sweep

    def get_sweep(self, sweep_id: str) -> SweepRecord | None:
        row = self._db.execute("SELECT * FROM sweeps WHERE sweep_id = ?", (sweep_id,)).fetchone()
        return _sweep(row) if row is not None else None

    def sweep_by_request_id(self, request_id: str) -> SweepRecord | None:
        row = self._db.execute("SELECT * FROM sweeps WHERE request_id = ?",
                               (request_id,)).fetchone()
        return _sweep(row) if row is not None else None

    def list_sweeps(self, *, before_seq: int | None = None, limit: int = 50) -> list[SweepRecord]:
        """Sweeps newest first, older than ``before_seq`` (a page token)."""
        where, args = ("WHERE seq < ?", (before_seq,)) if before_seq is not None else ("", ())
        rows = self._db.execute(f"SELECT * FROM sweeps {where} ORDER BY seq DESC LIMIT ?",
                                (*args, limit)).fetchall()
        return [_sweep(row) for row in rows]

    def sweep_members(self, sweep_id: str) -> list[SweepMember]:
        """A sweep's runs in (point, replication) order, with each run's state."""
        rows = self._db.execute(
            "SELECT m.*, r.state AS state, r.end_time AS end_time FROM sweep_runs m "
            "JOIN runs r ON r.run_id = m.run_id WHERE m.sweep_id = ? ORDER BY m.position",
            (sweep_id,)).fetchall()
        return [SweepMember(**{c: row[c] for c in _MEMBER_COLUMNS}, state=row["state"],
                            end_time=row["end_time"]) for row in rows]

    def sweep_counts(self, sweep_id: str) -> dict[str, int]:
        """How many of a sweep's distinct runs are in each state, and ``cached``."""
        rows = self._db.execute(
            "SELECT r.state, COUNT(*), SUM(cached) FROM (SELECT run_id, MAX(cached) AS cached "
            "FROM sweep_runs WHERE sweep_id = ? GROUP BY run_id) m JOIN runs r "
            "ON r.run_id = m.run_id GROUP BY r.state", (sweep_id,)).fetchall()
        counts = dict.fromkeys((*STATES, "cached"), 0)
        for state, count, cached in rows:
            counts[state] = count
            counts["cached"] += cached or 0
        return counts

    def sweep_end_time(self, sweep_id: str) -> float | None:
        """When the last of a sweep's runs ended."""
        row = self._db.execute("SELECT MAX(r.end_time) FROM sweep_runs m JOIN runs r ON "
                               "r.run_id = m.run_id WHERE m.sweep_id = ?", (sweep_id,)).fetchone()
        return row[0] if row is not None else None

    def request_sweep_cancel(self, sweep_id: str) -> None:
        with self._transaction():
            self._db.execute("UPDATE sweeps SET cancel_requested = 1 WHERE sweep_id = ?",
                             (sweep_id,))


def _sweep(row: sqlite3.Row) -> SweepRecord:
    values: dict[str, Any] = {name: row[name] for name in _SWEEP_COLUMNS}
    values["cancel_requested"] = bool(values["cancel_requested"])
    return SweepRecord(**values)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, or nothing when a transaction is already open (then the
    outer one commits or rolls back everything)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.outer = False

    def __enter__(self) -> None:
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if self.outer:
            self.db.execute("COMMIT" if kind is None else "ROLLBACK")
