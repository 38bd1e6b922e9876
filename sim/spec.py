"""Workload specs: a machine, a kernel, a duration, a seed, and processes running workloads.

A spec is YAML or JSON validated by these pydantic models; quantities carry
explicit units (``"64GiB"``, ``"250us"``, ``"100k/s"``, ``"1GiB/s"``).
:func:`json_schema` exports the JSON Schema generated from the models, and
:func:`load_spec` turns any validation failure into one :class:`SpecError`
(an :class:`~cowsim.sim.errors.InvalidInput`) naming the file and the field
path (``processes[0].workloads[1].rate``).

Each process starts with ``memory`` of private anonymous memory, written
before the run (its resident set), and ``threads`` threads placed on CPUs.
Its workloads run side by side:

* ``forking_server``: an open-loop request stream over the resident set,
  forking periodically for a snapshot child (Redis BGSAVE) or per connection
  for workers (prefork servers, PostgreSQL backends);
* ``direct_io``: O_DIRECT reads into a buffer (references held for the I/O,
  DMA at completion), or a long-term pinned buffer (io_uring fixed buffers,
  RDMA) that a device writes and reads;
* ``checkpointer``: clear_refs 4 on a target process every interval, then a
  pagemap scan and a copy of the soft-dirty pages (CRIU-style incremental dump);
* ``tracker``: a userfaultfd write-protect live snapshot of a target process.

Ranges
------

Every number has a range, so that a spec cannot ask for infinite time or
memory by its shape alone (whether it fits *this* machine is
:mod:`cowsim.sim.budget`'s question):

================================  ==========================================
seed                              0 … 2**63-1
duration                          > 0, at most :data:`MAX_DURATION_SECONDS` (a year)
tick                              :data:`MIN_TICK_SECONDS` (1 µs) … the duration
metrics_interval, fork ``every``,  at least :data:`MIN_INTERVAL_SECONDS` (1 ms): each
``fork_every``, checkpointer and   event of these re-arms itself, so a zero interval
tracker ``interval``               would stop simulated time
``device_latency``                at least :data:`MIN_LATENCY_SECONDS` (1 µs; the
                                  fastest devices take a few), at most 60 s
connection ``lifetime``           at least 1 µs (a worker must exist for a while)
request ``service``               0 … 10 s
request and DMA rates             at most :data:`MAX_RATE` (10⁹/s); connections 10⁶/s
``scan_rate``                     1 KiB/s … 1 PiB/s
``memory``, ``buffer``            one page … 4 TiB (the model's largest region)
``block``                         1 B … 1 GiB; ``dirty_pages`` at most 2**30
cpus, threads, iodepth            1 … 1024 (iodepth 4096)
processes, workloads              at most 256 processes, 16 workloads each
================================  ==========================================

Process names are 1–64 letters, digits, ``_`` or ``-``: the workloads name
the children they fork ``NAME.childN`` and ``NAME.helperN``, so ``.`` is theirs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from cowsim.sim.errors import InvalidInput
from cowsim.sim.inputs import invalid_from_pydantic, parse_document, read_text
from cowsim.sim.units import Bytes, Rate, Seconds, format_bytes, format_rate, format_seconds, parse_bytes

__all__ = [
    "MAX_DURATION_SECONDS",
    "MAX_RATE",
    "MAX_SEED",
    "MIN_INTERVAL_SECONDS",
    "MIN_LATENCY_SECONDS",
    "MIN_TICK_SECONDS",
    "Checkpointer",
    "DirectIO",
    "ForkingServer",
    "MachineSpec",
    "ProcessSpec",
    "SpecError",
    "Tracker",
    "WorkloadSpec",
    "check_spec",
    "json_schema",
    "load_spec",
    "parse_spec",
]

PAGE_BYTES = 4096
MAX_SEED = 2**63 - 1
"""Seeds are 0 … 2**63-1 (what numpy's SeedSequence and a signed 64-bit field both hold)."""
MAX_DURATION_SECONDS = 365 * 86400.0
"""The longest duration a spec may ask for (a year); the budget decides what fits."""
MIN_TICK_SECONDS = 1e-6
MIN_INTERVAL_SECONDS = 1e-3
"""The shortest period of a self-re-arming event (sampler, forks, checkpoints, snapshots)."""
MIN_LATENCY_SECONDS = 1e-6
MAX_RATE = 1e9
"""The highest request or DMA rate (per second) a workload may ask for."""
MAX_REGION_BYTES = 1 << 42
"""4 TiB: the kernel model's largest region (2**30 pages)."""



def within(low: float, high: float, show: Callable[[float], str], why: str = "",
           low_open: bool = False) -> AfterValidator:
    """A range check whose message names the range in the field's unit (and why)."""
    def check(value: float) -> float:
        if value < low or (low_open and value == low) or value > high:
            bound = f"more than {show(low)}" if low_open else f"at least {show(low)}"
            reason = f" ({why})" if why else ""
            raise ValueError(f"must be {bound} and at most {show(high)}{reason}, not {show(value)}")
        return value
    return AfterValidator(check)


def _seed_text(value: float) -> str:
    text = str(value) if isinstance(value, int) else f"{value:.0f}"
    return "2**63-1" if value == MAX_SEED else text if len(text) <= 24 else text[:20] + "…"


def _name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise ValueError("a process name is 1 to 64 letters, digits, '_' or '-' ('.' is for the "
                         "children the workloads fork)")
    return value


Duration = Annotated[Seconds, within(0, MAX_DURATION_SECONDS, format_seconds, low_open=True)]
Interval = Annotated[Seconds, within(MIN_INTERVAL_SECONDS, MAX_DURATION_SECONDS, format_seconds,
                                     "a shorter period would stall simulated time")]
Offset = Annotated[Seconds, within(0, MAX_DURATION_SECONDS, format_seconds)]
EventRate = Annotated[Rate, within(0, MAX_RATE, format_rate, low_open=True)]
RegionBytes = Annotated[Bytes, within(PAGE_BYTES, MAX_REGION_BYTES, format_bytes,
                                      "one page to the model's largest region")]
ProcessName = Annotated[str, AfterValidator(_name)]


def _parse_byte_rate(value: Any) -> Any:
    """"1GiB/s" → bytes per second (a plain number is bytes per second)."""
    if isinstance(value, str) and value.strip().endswith("/s"):
        return float(parse_bytes(value.strip()[:-2]))
    if isinstance(value, bool):
        raise ValueError("a byte rate like '1GiB/s'")
    return value


ByteRate = Annotated[float, BeforeValidator(_parse_byte_rate),
                     within(1024, float(1 << 50), lambda v: format_bytes(v) + "/s")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MachineSpec(_Model):
    """The machine: a named cost profile, a CPU count and any cost overrides."""

    profile: Annotated[str, Field(max_length=64)] = "skylake-sp"
    cpus: int = Field(default=8, ge=1, le=1024)
    costs: dict[Annotated[str, Field(max_length=64)], Annotated[float, Field(ge=0, le=1e18)]] = Field(
        default_factory=dict, max_length=64,
        description="overrides of CostModel fields, e.g. ipi_base_ns")


class KeySpec(_Model):
    """Which pages requests touch: uniform, zipf (rank^-s) or a hot set."""

    distribution: Literal["uniform", "zipf", "hotset"] = "uniform"
    zipf_s: float = Field(default=0.99, gt=0, le=20)
    hot_fraction: float = Field(default=0.1, gt=0, le=1)
    hot_probability: float = Field(default=0.9, ge=0, le=1)


class RequestSpec(_Model):
    rate: EventRate
    write_fraction: float = Field(default=0.5, ge=0, le=1)
    pages_per_request: int = Field(default=1, ge=1, le=4096)
    service: Annotated[Seconds, within(0, 10, format_seconds)] = 10e-6
    keys: KeySpec = KeySpec()


class SnapshotChild(_Model):
    """A BGSAVE-like child: scans the whole resident set at a rate, then exits."""

    scan_rate: ByteRate = 1 << 30


class ConnectionWorkers(_Model):
    """Prefork / PostgreSQL-backend-like workers: one fork per connection."""

    rate: Annotated[Rate, within(0, 1e6, format_rate, low_open=True)]
    lifetime: Annotated[Seconds, within(MIN_LATENCY_SECONDS, MAX_DURATION_SECONDS,
                                        format_seconds)] = 1.0
    dirty_pages: int = Field(default=64, ge=0, le=1 << 30,
                             description="pages each worker writes (its private copies)")


class ForkSpec(_Model):
    mode: Literal["periodic", "per_connection"]
    every: Interval | None = None
    first_at: Offset | None = None
    snapshot: SnapshotChild = SnapshotChild()
    connections: ConnectionWorkers | None = None

    @model_validator(mode="after")
    def _mode_fields(self) -> ForkSpec:
        if self.mode == "periodic" and self.every is None:
            raise ValueError("periodic forking needs 'every'")
        if self.mode == "per_connection" and self.connections is None:
            raise ValueError("per_connection forking needs 'connections'")
        return self


class ForkingServer(_Model):
    kind: Literal["forking_server"]
    requests: RequestSpec
    fork: ForkSpec | None = None


class DirectIO(_Model):
    """O_DIRECT reads into a buffer, or a long-term pinned buffer a device uses."""

    kind: Literal["direct_io"]
    mode: Literal["odirect", "pinned"] = "odirect"
    buffer: RegionBytes = 1 << 20
    block: Annotated[Bytes, within(1, 1 << 30, format_bytes)] = 4096
    iodepth: int = Field(default=8, ge=1, le=4096)
    device_latency: Annotated[Seconds, within(MIN_LATENCY_SECONDS, 60, format_seconds,
                                              "the fastest devices take microseconds")] = 50e-6
    latency_distribution: Literal["fixed", "exponential", "lognormal"] = "lognormal"
    latency_sigma: float = Field(default=0.5, ge=0, le=4)
    write_during_io: float = Field(
        0.0, ge=0, le=1,
        description="probability that another thread writes the page while its I/O is in flight",
    )
    dma_rate: EventRate | None = Field(default=None,
                                       description="pinned mode: device transfers per second")
    fork_every: Interval | None = Field(default=None,
                                        description="pinned mode: the process forks a helper")


class Checkpointer(_Model):
    kind: Literal["checkpointer"]
    target: ProcessName
    interval: Interval
    first_at: Offset | None = None


class Tracker(_Model):
    """A userfaultfd write-protect live-snapshot tracker on a target process."""

    kind: Literal["tracker"]
    target: ProcessName
    interval: Interval
    first_at: Offset | None = None
    method: Literal["uffd_wp"] = "uffd_wp"


Workload = Annotated[ForkingServer | DirectIO | Checkpointer | Tracker, Field(discriminator="kind")]


class ProcessSpec(_Model):
    name: ProcessName
    memory: RegionBytes = 1 << 20
    threads: int = Field(default=1, ge=1, le=1024)
    workloads: list[Workload] = Field(default_factory=list, max_length=16)


class WorkloadSpec(_Model):
    """A whole run: machine, kernel, duration, seed and processes."""

    name: Annotated[str, Field(max_length=200)] = "workload"
    description: Annotated[str, Field(max_length=10_000)] | None = None
    kernel: Annotated[str, Field(max_length=64)] = "6.8"
    duration: Duration
    seed: Annotated[int, within(0, MAX_SEED, _seed_text)] = 1
    tick: Annotated[Seconds, within(MIN_TICK_SECONDS, MAX_DURATION_SECONDS, format_seconds)] = Field(
        default=1e-3, description="batching step of request and I/O streams")
    metrics_interval: Interval = 1.0
    machine: MachineSpec = MachineSpec()
    processes: Annotated[list[ProcessSpec], Field(min_length=1, max_length=256)]

    @property
    def workload_label(self) -> str:
        """The spec's workload kinds, sorted and joined with ``+`` (``"idle"`` for none):
        the bounded ``workload`` label of a run's metrics, live and backfilled."""
        kinds = sorted({workload.kind for process in self.processes for workload in process.workloads})
        return "+".join(kinds) or "idle"


class SpecError(InvalidInput):
    """An invalid spec: one line naming the file and the field (``processes[0].memory``)."""


def check_spec(spec: WorkloadSpec, source: str | None = None) -> None:
    """What the models cannot check field by field: unique process names, workload targets
    that name a process, a tick within the duration.  Raises :class:`SpecError`."""
    seen: set[str] = set()
    for index, process in enumerate(spec.processes):
        if process.name in seen:
            raise SpecError(f"process name {process.name!r} is used twice; names must be unique",
                            path=("processes", index, "name"), source=source)
        seen.add(process.name)
    for index, process in enumerate(spec.processes):
        for number, workload in enumerate(process.workloads):
            target = getattr(workload, "target", None)
            if target is not None and target not in seen:
                raise SpecError(f"{workload.kind} target {target!r} is not a process",
                                path=("processes", index, "workloads", number, "target"),
                                source=source)
    if spec.tick > spec.duration:
        raise SpecError("tick must be at most the duration", path=("tick",), source=source)


def load_spec(path: str | Path) -> WorkloadSpec:
    """Read and validate a spec file (see :func:`parse_spec`)."""
    try:
        text = read_text(path)
    except InvalidInput as exc:
        raise SpecError(exc.message, path=exc.path, source=exc.source) from None
    return parse_spec(text, str(path))


def parse_spec(text: str, name: str = "<spec>") -> WorkloadSpec:
    """Validate spec text (YAML, or JSON when ``name`` ends in ``.json``); every failure is one
    :class:`SpecError` whose source is ``name``."""
    try:
        data = parse_document(text, name)
    except InvalidInput as exc:
        raise SpecError(exc.message, path=exc.path, source=exc.source) from None
    if not isinstance(data, dict):
        raise SpecError("a spec is a mapping with 'duration' and 'processes'", source=name)
    try:
        spec = WorkloadSpec.model_validate(data)
    except ValidationError as exc:
        raise invalid_from_pydantic(exc, data, source=name, error_type=SpecError) from None
    except (RecursionError, OverflowError, TypeError) as exc:
        raise SpecError(f"cannot validate: {type(exc).__name__}", source=name) from None
    check_spec(spec, name)
    return spec


def json_schema() -> dict[str, Any]:
    """The JSON Schema of workload specs, generated from the models."""
    return WorkloadSpec.model_json_schema()
