"""Sweeps: one workload spec, many points — the design of a what-if study.

A sweep spec (YAML or JSON) names a **base** workload spec and the **axes** to
vary over it; :func:`plan_sweep` expands it into points, gives every point its
replications' seeds, and validates every point's spec by the library's one path
(:func:`~cowsim.sim.spec.parse_spec`, then :func:`~cowsim.sim.plan.plan_run`)
before anything runs::

    name: redis-write-rate
    base: ../workloads/redis-snapshot.yaml    # a path relative to this file, or a mapping
    design: grid                              # grid | random | lhs
    replications: 3
    seed: 7                                   # the root seed (default: the base spec's)
    axes:
      - path: kernel
        values: ["5.10", "6.8"]               # quote versions: YAML reads 5.10 as 5.1
      - path: processes[redis].workloads[forking_server].requests.rate
        name: request_rate_per_s              # the table column (default: the path)
        values: [10k/s, 50k/s]

**Axis paths** address a field of the spec as its error messages name it:
dotted keys, ``[N]`` for the N-th item of a list (``processes[0].memory``),
or ``[NAME]`` for the list item whose ``name`` (a process) or ``kind`` (a
workload) is NAME, resolved against the base.  ``kernel`` is an axis like any
other (the spec's own ``kernel`` field).  A key the base leaves out (a default)
is written into the point's document; a list index must exist in the base.

**Designs.**  ``grid``: every combination of the axes' values (an axis is
``values: [...]``, or ``low``/``high``/``steps``: evenly spaced, ``scale:
log`` for geometric).  ``random``: ``samples`` points, each axis drawn
independently (a ``low``/``high`` range, uniform or log-uniform; ``values``:
one of them).  ``lhs``: ``samples`` points on a Latin hypercube: every axis's
range is cut into ``samples`` equal strata and each stratum holds exactly one
point (:func:`latin_hypercube`, numpy only).  Range ends take the field's
units (``low: 5s``); an axis whose ends are integers in the spec (``cpus``)
samples integers.

**Seeds.**  Every run of a point has its own seed, derived from the root seed
and the point's *identity* — its axis values as the spec resolved them
(``"50k/s"`` and ``50000`` are the same point) — never from its position:
``SeedSequence(root, spawn_key=(*words, replication))`` where ``words`` are
four 32-bit words of the SHA-256 of the canonical JSON of ``{path: value}``.
So a point keeps its seeds whatever other points the sweep has, in whatever
order; replications are independent streams.  The sampled designs draw their
points from the separate stream ``spawn_key=(DESIGN_STREAM,)``.

**Limits.**  At most :data:`MAX_SWEEP_RUNS` runs (points × replications),
refused from the sizes alone before any point is built; :data:`MAX_AXES` axes
of at most :data:`MAX_AXIS_VALUES` values.  Every failure is one
:class:`SweepError` line: the sweep file, the axis and value (or the point)
and what the spec said about it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from cowsim.sim.budget import Budget
from cowsim.sim.errors import InvalidInput, PathPart, format_path
from cowsim.sim.inputs import invalid_from_pydantic, parse_document, read_text
from cowsim.sim.plan import plan_run
from cowsim.sim.spec import MAX_SEED, WorkloadSpec, parse_spec

__all__ = [
    "DESIGN_STREAM",
    "MAX_AXES",
    "MAX_AXIS_VALUES",
    "MAX_SWEEP_RUNS",
    "Axis",
    "SweepError",
    "SweepPlan",
    "SweepPoint",
    "SweepSpec",
    "latin_hypercube",
    "load_sweep",
    "parse_axis_path",
    "parse_sweep",
    "plan_sweep",
    "point_seed",
    "sweep_json_schema",
]

MAX_SWEEP_RUNS = 10_000
"""The most runs (points × replications) one sweep may ask for."""
MAX_AXES = 16
MAX_AXIS_VALUES = 1_000
MAX_REPLICATIONS = 1_000
DESIGN_STREAM = 2**32 - 1
"""The spawn key word of the stream the random and lhs designs draw their points from."""
RESERVED_COLUMNS = ("point", "replication", "seed", "key", "status", "error", "era", "attempts")
"""Columns of the sweep table an axis may not be named (``kernel`` is the kernel axis's own)."""

Scalar = StrictStr | StrictInt | StrictFloat


class SweepError(InvalidInput):
    """An invalid sweep: one line naming the sweep file, the axis and value or the point."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Axis(_Model):
    """One dimension of a sweep: a spec field and the values it takes."""

    path: Annotated[str, Field(min_length=1, max_length=200,
                               description="the spec field, e.g. processes[0].memory or kernel")]
    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-\[\]]{0,63}$")] | None = Field(
        default=None, description="the table column (default: the path)")
    values: Annotated[list[Scalar], Field(min_length=1, max_length=MAX_AXIS_VALUES)] | None = None
    low: Scalar | None = Field(default=None, description="a range's low end, in the field's units")
    high: Scalar | None = None
    steps: int | None = Field(default=None, ge=2, le=MAX_AXIS_VALUES,
                              description="grid: evenly spaced values from low to high")
    scale: Literal["linear", "log"] = "linear"

    @model_validator(mode="after")
    def _one_kind(self) -> Axis:
        ranged = self.low is not None or self.high is not None
        if self.values is not None and (ranged or self.steps is not None):
            raise ValueError("an axis has either 'values' or 'low' and 'high', not both")
        if self.values is None and (self.low is None or self.high is None):
            raise ValueError("an axis needs 'values', or 'low' and 'high'")
        if self.path == "kernel" and any(not isinstance(v, str) for v in self.values or ()):
            raise ValueError("kernel values are strings: quote them ('5.10'), YAML reads 5.10 "
                             "as the number 5.1")
        if self.values is not None and len(set(map(repr, self.values))) != len(self.values):
            raise ValueError("a value is listed twice")
        return self

    @property
    def column(self) -> str:
        return self.name or self.path


class SweepSpec(_Model):
    """A what-if study: a base workload spec, axes over its fields, a design, replications."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$",
                               description="names the default output directory")]
    description: Annotated[str, Field(max_length=10_000)] | None = None
    base: str | dict[str, Any] = Field(
        description="a workload spec: a path relative to the sweep file, or inline")
    design: Literal["grid", "random", "lhs"] = "grid"
    samples: int | None = Field(default=None, ge=1, le=MAX_SWEEP_RUNS,
                                description="random and lhs: how many points")
    replications: int = Field(default=1, ge=1, le=MAX_REPLICATIONS)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED,
                             description="the root seed (default: the base spec's seed)")
    axes: Annotated[list[Axis], Field(min_length=1, max_length=MAX_AXES)]

    @model_validator(mode="after")
    def _design(self) -> SweepSpec:
        sampled = self.design != "grid"
        if sampled and self.samples is None:
            raise ValueError(f"design {self.design} needs 'samples'")
        if not sampled and self.samples is not None:
            raise ValueError("a grid has no 'samples' (its size is the product of the axes)")
        for axis in self.axes:
            if not sampled and axis.values is None and axis.steps is None:
                raise ValueError(f"grid axis {axis.column!r}: a range needs 'steps' (or use "
                                 "design random or lhs)")
            if sampled and axis.steps is not None:
                raise ValueError(f"axis {axis.column!r}: 'steps' is for grids")
        columns = [axis.column for axis in self.axes]
        for column in columns:
            if columns.count(column) > 1:
                raise ValueError(f"two axes are named {column!r}; give one a 'name'")
            if column == "kernel" and next(a.path for a in self.axes if a.column == column) != "kernel":
                raise ValueError("only the axis of path 'kernel' may be named 'kernel'")
            if column in RESERVED_COLUMNS:
                raise ValueError(f"axis name {column!r} is a column of the sweep table; "
                                 "choose another 'name'")
        return self

    @property
    def size(self) -> int:
        """Points in the design (before validation): a grid's product, or ``samples``."""
        if self.samples is not None:
            return self.samples
        return math.prod(len(axis.values) if axis.values is not None else axis.steps or 1
                         for axis in self.axes)


# --- axis paths ---------------------------------------------------------------------------

_TOKEN = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[([^\[\]]{1,64})\]|\.(\d+)")


def parse_axis_path(text: str) -> tuple[str | int, ...]:
    """``processes[0].workloads[web].rate`` → ``("processes", 0, "workloads", "[web]",
    "rate")``: keys, list indices, and ``[NAME]`` selectors still to resolve; ValueError
    when the text is not a path."""
    parts: list[str | int] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or (position == 0 and text.startswith(".")):
            raise ValueError(f"not a field path at {text[position:position + 20]!r} (write keys "
                             "with dots and list items as [N] or [NAME])")
        key, bracket, number = match.groups()
        if key is not None:
            parts.append(key)
        elif number is not None:
            parts.append(int(number))
        else:
            parts.append(int(bracket) if bracket.isdigit() else f"[{bracket}]")
        position = match.end()
    if not parts or not isinstance(parts[0], str) or parts[0].startswith("["):
        raise ValueError("a field path starts with a key, e.g. processes[0].memory")
    return tuple(parts)


def _resolve(parts: Sequence[str | int], base: Any) -> tuple[PathPart, ...]:
    """The path with its ``[NAME]`` selectors and indices checked against the base data."""
    resolved: list[PathPart] = []
    node: Any = base
    for part in parts:
        here = format_path(resolved) or "the spec"
        if isinstance(part, str) and not part.startswith("["):
            if node is not None and not isinstance(node, dict):
                raise ValueError(f"{here} is not a mapping, it has no key {part!r}")
            node = node.get(part) if isinstance(node, dict) else None
            resolved.append(part)
            continue
        if not isinstance(node, list):
            raise ValueError(f"{here} is not a list in the base spec")
        if isinstance(part, int):
            if part >= len(node):
                raise ValueError(f"{here} has {len(node)} items in the base spec, no [{part}]")
            index = part
        else:
            wanted = part[1:-1]
            matches = [i for i, item in enumerate(node) if isinstance(item, dict)
                       and wanted in (item.get("name"), item.get("kind"))]
            if len(matches) != 1:
                raise ValueError(f"{here} has {'no' if not matches else 'more than one'} item "
                                 f"named {wanted!r} in the base spec")
            index = matches[0]
        resolved.append(index)
        node = node[index]
    return tuple(resolved)


def _with_value(base: Any, path: Sequence[PathPart], value: Any) -> Any:
    """A copy of ``base`` with ``value`` at ``path`` (missing mappings on the way created)."""
    document = json.loads(json.dumps(base))
    node = document
    for part, following in itertools.pairwise(path):
        if isinstance(part, int):
            node = node[part]
            continue
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if isinstance(following, int) and not isinstance(node, list):
            raise ValueError(f"{format_path(path)}: not a list in the base spec")
    node[path[-1]] = value
    return document


def _value_at(data: Any, path: Sequence[PathPart]) -> Any:
    for part in path:
        data = data[part]
    return data


# --- designs and seeds --------------------------------------------------------------------

def latin_hypercube(samples: int, dimensions: int, rng: np.random.Generator) -> np.ndarray:
    """``samples`` × ``dimensions`` points in [0, 1): in every column each of the ``samples``
    strata ``[k/samples, (k+1)/samples)`` holds exactly one point (a random permutation of
    the strata per column, a uniform position within each)."""
    strata = np.stack([rng.permutation(samples) for _ in range(dimensions)], axis=1)
    return (strata + rng.random((samples, dimensions))) / samples


def point_seed(root_seed: int, identity: str, replication: int) -> int:
    """The seed of one run: a 63-bit integer from ``SeedSequence(root_seed, spawn_key=(*four
    words of sha256(identity), replication))`` — a function of the point alone."""
    digest = hashlib.sha256(identity.encode("utf-8")).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    sequence = np.random.SeedSequence(root_seed, spawn_key=(*words, replication))
    return int(sequence.generate_state(1, np.uint64)[0]) >> 1


@dataclass(frozen=True)
class SweepPoint:
    """One validated point of a sweep."""

    index: int
    """Its position in the design (grid order: the last axis varies fastest)."""
    values: dict[str, Any]
    """Axis column → the value as the validated spec holds it (base units, e.g. 50000.0)."""
    spec: WorkloadSpec
    spec_text: str
    """The point's spec document as JSON: what a worker parses (``parse_spec``) and runs."""
    kernel: str
    """The resolved kernel name (:attr:`RunPlan.kernel`)."""
    era: str
    seeds: tuple[int, ...]
    """One seed per replication."""
    identity: str
    """Canonical JSON of ``{path: value}``: what the seeds are derived from."""


@dataclass(frozen=True)
class SweepPlan:
    """A sweep expanded and validated: every point ready to run."""

    sweep: SweepSpec
    source: str
    root_seed: int
    columns: tuple[str, ...]
    """The axis columns, in axis order."""
    paths: tuple[str, ...]
    """The axes' resolved paths (``processes[0].workloads[0].requests.rate``)."""
    points: tuple[SweepPoint, ...]

    @property
    def runs(self) -> int:
        return sum(len(point.seeds) for point in self.points)


# --- reading and planning -----------------------------------------------------------------

def load_sweep(path: str | Path) -> tuple[SweepSpec, Path]:
    """Read and validate a sweep file; returns it and the directory its ``base`` is
    relative to."""
    try:
        text = read_text(path)
    except InvalidInput as exc:
        raise SweepError(exc.message, path=exc.path, source=exc.source) from None
    return parse_sweep(text, str(path)), Path(path).parent


def parse_sweep(text: str, name: str = "<sweep>") -> SweepSpec:
    """Validate sweep text (YAML, or JSON when ``name`` ends in ``.json``): one
    :class:`SweepError` naming ``name`` and the field on any failure."""
    try:
        data = parse_document(text, name)
    except InvalidInput as exc:
        raise SweepError(exc.message, path=exc.path, source=exc.source) from None
    if not isinstance(data, dict):
        raise SweepError("a sweep is a mapping with 'name', 'base' and 'axes'", source=name)
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise invalid_from_pydantic(exc, data, source=name, error_type=SweepError) from None
    except (RecursionError, OverflowError, TypeError) as exc:
        raise SweepError(f"cannot validate: {type(exc).__name__}", source=name) from None


def sweep_json_schema() -> dict[str, Any]:
    """The JSON Schema of sweep specs, generated from the models."""
    return SweepSpec.model_json_schema()


def _base_document(sweep: SweepSpec, source: str, base_dir: Path | None) -> Any:
    """The base spec as plain data, validated as a spec on its own (errors name the base)."""
    if isinstance(sweep.base, dict):
        data: Any = sweep.base
        try:
            parse_spec(json.dumps(data), "base.json")
        except InvalidInput as exc:
            raise SweepError(exc.message, path=("base", *exc.path), source=source) from None
        return data
    if base_dir is None:
        raise SweepError("a base given as a path needs a sweep file to be relative to; give "
                         "the spec inline", path=("base",), source=source)
    base_path = base_dir / sweep.base
    name = str(base_path)
    try:
        text = read_text(base_path)
        data = parse_document(text, name)
        parse_spec(text, name)
    except InvalidInput as exc:
        raise SweepError(exc.message, path=exc.path, source=exc.source or name) from None
    return data


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) \
        else str(value)


@dataclass(frozen=True)
class _Resolved:
    """An axis with its path resolved and, for a range, its ends in base units."""

    axis: Axis
    path: tuple[PathPart, ...]
    low: float = 0.0
    high: float = 0.0
    integer: bool = False


def _field_value(base: Any, resolved: tuple[PathPart, ...], value: Any, what: str,
                 where: tuple[PathPart, ...], source: str) -> Any:
    """``value`` as the spec model reads it at ``resolved`` (units parsed), or SweepError."""
    try:
        text = json.dumps(_with_value(base, resolved, value))
        spec = parse_spec(text, "point.json")
    except (InvalidInput, ValueError) as exc:
        detail = exc.message if isinstance(exc, InvalidInput) else str(exc)
        raise SweepError(f"{what} {_show(value)}: {detail}", path=where, source=source) from None
    return _value_at(spec.model_dump(mode="json"), resolved)


def _resolve_axes(sweep: SweepSpec, base: Any, source: str) -> list[_Resolved]:
    axes: list[_Resolved] = []
    for number, axis in enumerate(sweep.axes):
        where: tuple[PathPart, ...] = ("axes", number, "path")
        try:
            path = _resolve(parse_axis_path(axis.path), base)
        except ValueError as exc:
            raise SweepError(f"axis {axis.column!r}: {exc}", path=where, source=source) from None
        if axis.values is not None:
            axes.append(_Resolved(axis, path))
            continue
        ends = []
        for end in ("low", "high"):
            value = _field_value(base, path, getattr(axis, end), f"axis {axis.column!r} {end}",
                                 ("axes", number, end), source)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SweepError(f"axis {axis.column!r}: a range needs a numeric field, "
                                 f"{format_path(path)} is not one", path=where, source=source)
            ends.append(value)
        low, high = ends
        if not low <= high:
            raise SweepError(f"axis {axis.column!r}: low must be at most high", path=where,
                             source=source)
        if axis.scale == "log" and low <= 0:
            raise SweepError(f"axis {axis.column!r}: a log scale needs low > 0", path=where,
                             source=source)
        integer = isinstance(low, int) and isinstance(high, int)
        axes.append(_Resolved(axis, path, float(low), float(high), integer))
    return axes


def _from_unit(resolved: _Resolved, u: np.ndarray) -> list[Any]:
    """Map positions in [0, 1] onto an axis: its values, or its range (linear or log)."""
    axis = resolved.axis
    if axis.values is not None:
        return [axis.values[min(int(x * len(axis.values)), len(axis.values) - 1)] for x in u]
    low, high = resolved.low, resolved.high
    if resolved.integer:
        if axis.scale == "log":
            edges = np.exp(np.log(low) + u * (np.log(high + 1) - np.log(low)))
        else:
            edges = low + u * (high + 1 - low)
        return [int(min(max(math.floor(x), low), high)) for x in edges]
    mapped = np.exp(np.log(low) + u * (np.log(high) - np.log(low))) if axis.scale == "log" \
        else low + u * (high - low)
    return [float(x) for x in mapped]


def _grid_values(resolved: _Resolved) -> list[Any]:
    axis = resolved.axis
    if axis.values is not None:
        return list(axis.values)
    assert axis.steps is not None
    u = np.linspace(0.0, 1.0, axis.steps)
    if resolved.integer:
        space = np.geomspace if axis.scale == "log" else np.linspace
        values = [round(float(x)) for x in space(resolved.low, resolved.high, axis.steps)]
        return list(dict.fromkeys(values))
    return _from_unit(resolved, u)


def _assignments(sweep: SweepSpec, axes: list[_Resolved], root_seed: int) -> list[list[Any]]:
    """Every point's raw axis values, in design order."""
    if sweep.design == "grid":
        return [list(values) for values in itertools.product(*(_grid_values(a) for a in axes))]
    assert sweep.samples is not None
    rng = np.random.default_rng(np.random.SeedSequence(root_seed, spawn_key=(DESIGN_STREAM,)))
    if sweep.design == "lhs":
        unit = latin_hypercube(sweep.samples, len(axes), rng)
    else:
        unit = rng.random((sweep.samples, len(axes)))
    columns = [_from_unit(axis, unit[:, d]) for d, axis in enumerate(axes)]
    return [list(row) for row in zip(*columns, strict=True)]


def _point_error(exc: InvalidInput, axes: list[_Resolved], raw: list[Any], index: int,
                 source: str) -> SweepError:
    """One line naming the axis and value an error is about, else the whole point."""
    for number, (axis, value) in enumerate(zip(axes, raw, strict=True)):
        if exc.path[:len(axis.path)] == axis.path and exc.path:
            where: tuple[PathPart, ...] = ("axes", number)
            if axis.axis.values is not None:
                where = (*where, "values", axis.axis.values.index(value))
            return SweepError(f"axis {axis.axis.column!r} value {_show(value)}: {exc.message}",
                              path=where, source=source)
    point = ", ".join(f"{a.axis.column}={_show(v)}" for a, v in zip(axes, raw, strict=True))
    field = f"field {exc.field!r}: " if exc.field else ""
    return SweepError(f"point {index} ({point}): {field}{exc.message}", source=source)


def plan_sweep(sweep: SweepSpec, *, source: str = "<sweep>", base_dir: Path | None = None,
               budget: Budget | None = None,
               check: Callable[[int, int], None] | None = None) -> SweepPlan:
    """Expand ``sweep`` and validate every point (parse_spec, plan_run with each point's
    seeds and ``budget``) before anything runs; ``check(done, total)`` is told as points are
    validated.  Raises :class:`SweepError` (one line) for the first invalid point."""
    runs = sweep.size * sweep.replications
    if runs > MAX_SWEEP_RUNS:
        raise SweepError(f"{runs:,} runs ({sweep.size:,} points × {sweep.replications} "
                         f"replications) is more than the limit of {MAX_SWEEP_RUNS:,} runs "
                         "(MAX_SWEEP_RUNS); split the study", source=source)
    base = _base_document(sweep, source, base_dir)
    base_spec = parse_spec(json.dumps(base), "base.json")
    root_seed = sweep.seed if sweep.seed is not None else base_spec.seed
    axes = _resolve_axes(sweep, base, source)
    limits = budget if budget is not None else Budget.from_env()
    raw_points = _assignments(sweep, axes, root_seed)
    points: list[SweepPoint] = []
    for index, raw in enumerate(raw_points):
        document = base
        try:
            for axis, value in zip(axes, raw, strict=True):
                document = _with_value(document, axis.path, value)
            text = json.dumps(document, sort_keys=True, separators=(",", ":"))
            spec = parse_spec(text, "point.json")
            plan = plan_run(spec, budget=limits)
        except ValueError as exc:
            error = exc if isinstance(exc, InvalidInput) else InvalidInput(str(exc))
            raise _point_error(error, axes, raw, index, source) from None
        dumped = spec.model_dump(mode="json")
        resolved = {format_path(a.path): _value_at(dumped, a.path) for a in axes}
        identity = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
        seeds = tuple(point_seed(root_seed, identity, r) for r in range(sweep.replications))
        values = {a.axis.column: _value_at(dumped, a.path) for a in axes}
        if "kernel" in values:
            values["kernel"] = plan.kernel
        points.append(SweepPoint(index=index, values=values, spec=spec, spec_text=text,
                                 kernel=plan.kernel, era=plan.generation.era, seeds=seeds,
                                 identity=identity))
        if check is not None:
            check(index + 1, len(raw_points))
    return SweepPlan(sweep=sweep, source=source, root_seed=root_seed,
                     columns=tuple(a.axis.column for a in axes),
                     paths=tuple(format_path(a.path) for a in axes), points=tuple(points))
