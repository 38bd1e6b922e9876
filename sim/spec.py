"""Workload specs: a machine, a kernel, a duration, a seed, and processes running workloads.

A spec is YAML or JSON validated by these pydantic models; quantities carry
explicit units (``"64GiB"``, ``"250us"``, ``"100k/s"``, ``"1GiB/s"``).
:func:`json_schema` exports the JSON Schema generated from the models, and
:func:`load_spec` turns any validation failure into one :class:`SpecError`
naming the file and the field path (``processes.0.workloads.1.rate``).

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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from cowsim.sim.units import Bytes, Rate, Seconds, parse_bytes


def _parse_byte_rate(value: Any) -> Any:
    """"1GiB/s" → bytes per second (a plain number is bytes per second)."""
    if isinstance(value, str) and value.strip().endswith("/s"):
        return float(parse_bytes(value.strip()[:-2]))
    if isinstance(value, bool):
        raise ValueError("a byte rate like '1GiB/s'")
    return value


ByteRate = Annotated[float, BeforeValidator(_parse_byte_rate), Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MachineSpec(_Model):
    """The machine: a named cost profile, a CPU count and any cost overrides."""

    profile: str = "skylake-sp"
    cpus: int = Field(default=8, ge=1, le=1024)
    costs: dict[str, float] = Field(default_factory=dict,
                                    description="overrides of CostModel fields, e.g. ipi_base_ns")


class KeySpec(_Model):
    """Which pages requests touch: uniform, zipf (rank^-s) or a hot set."""

    distribution: Literal["uniform", "zipf", "hotset"] = "uniform"
    zipf_s: float = Field(default=0.99, gt=0)
    hot_fraction: float = Field(default=0.1, gt=0, le=1)
    hot_probability: float = Field(default=0.9, ge=0, le=1)


class RequestSpec(_Model):
    rate: Rate
    write_fraction: float = Field(default=0.5, ge=0, le=1)
    pages_per_request: int = Field(default=1, ge=1, le=4096)
    service: Seconds = 10e-6
    keys: KeySpec = KeySpec()


class SnapshotChild(_Model):
    """A BGSAVE-like child: scans the whole resident set at a rate, then exits."""

    scan_rate: ByteRate = 1 << 30


class ConnectionWorkers(_Model):
    """Prefork / PostgreSQL-backend-like workers: one fork per connection."""

    rate: Rate
    lifetime: Seconds = 1.0
    dirty_pages: int = Field(default=64, ge=0, description="pages each worker writes (its private copies)")


class ForkSpec(_Model):
    mode: Literal["periodic", "per_connection"]
    every: Seconds | None = None
    first_at: Seconds | None = None
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
    buffer: Bytes = 1 << 20
    block: Bytes = 4096
    iodepth: int = Field(default=8, ge=1, le=4096)
    device_latency: Seconds = 50e-6
    latency_distribution: Literal["fixed", "exponential", "lognormal"] = "lognormal"
    latency_sigma: float = Field(default=0.5, ge=0)
    write_during_io: float = Field(
        0.0, ge=0, le=1,
        description="probability that another thread writes the page while its I/O is in flight",
    )
    dma_rate: Rate | None = Field(default=None, description="pinned mode: device transfers per second")
    fork_every: Seconds | None = Field(default=None, description="pinned mode: the process forks a helper")


class Checkpointer(_Model):
    kind: Literal["checkpointer"]
    target: str
    interval: Seconds
    first_at: Seconds | None = None


class Tracker(_Model):
    """A userfaultfd write-protect live-snapshot tracker on a target process."""

    kind: Literal["tracker"]
    target: str
    interval: Seconds
    first_at: Seconds | None = None
    method: Literal["uffd_wp"] = "uffd_wp"


Workload = Annotated[ForkingServer | DirectIO | Checkpointer | Tracker, Field(discriminator="kind")]


class ProcessSpec(_Model):
    name: Annotated[str, Field(min_length=1)]
    memory: Bytes = 1 << 20
    threads: int = Field(default=1, ge=1, le=1024)
    workloads: list[Workload] = Field(default_factory=list)


class WorkloadSpec(_Model):
    """A whole run: machine, kernel, duration, seed and processes."""

    name: str = "workload"
    description: str | None = None
    kernel: str = "6.8"
    duration: Seconds
    seed: int = Field(default=1, ge=0)
    tick: Seconds = Field(default=1e-3, description="batching step of request and I/O streams")
    metrics_interval: Seconds = 1.0
    machine: MachineSpec = MachineSpec()
    processes: Annotated[list[ProcessSpec], Field(min_length=1)]

    @model_validator(mode="after")
    def _references(self) -> WorkloadSpec:
        names = [process.name for process in self.processes]
        if len(set(names)) != len(names):
            raise ValueError("process names must be unique")
        for process in self.processes:
            for workload in process.workloads:
                if isinstance(workload, Checkpointer | Tracker) and workload.target not in names:
                    raise ValueError(f"{workload.kind} target {workload.target!r} is not a process")
        if self.tick <= 0 or self.tick > self.duration:
            raise ValueError("tick must be positive and at most the duration")
        return self


class SpecError(ValueError):
    """An invalid spec: one line naming the file and the field."""


def load_spec(path: str | Path) -> WorkloadSpec:
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{name}: cannot read file: {exc}") from None
    return parse_spec(text, name)


def parse_spec(text: str, name: str = "<spec>") -> WorkloadSpec:
    try:
        data = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise SpecError(f"{name}: not valid YAML/JSON: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{name}: a spec is a mapping with 'duration' and 'processes'")
    try:
        return WorkloadSpec.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        raise SpecError(f"{name}: field {field!r}: {' '.join(message.split())}") from None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of workload specs, generated from the models."""
    return WorkloadSpec.model_json_schema()
