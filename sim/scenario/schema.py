"""The scenario script format (docs/design.md "Scenario scripts", an interface).

A scenario is a deterministic list of steps, like the kernel's own COW
selftests: each step is one system call, CPU access, device action or
expectation.  These pydantic models are the single definition of what a valid
step is; :mod:`cowsim.sim.scenario.loader` turns their validation errors into
one-line messages naming the file, step index and field.

``pages`` selects pages of a region: an index (``3``), a range string
(``"0-15"``), a list (``[0, 2, 5]``), or omitted for the whole region.  In
``mmap`` it is the region's size instead.  Values are integers from 0 to
2**32-1 (a page's content is modelled as one 32-bit value).

A selector is checked by one validator (:func:`check_selector`) rather than a
pydantic union, so a wrong one gets one message saying what a selector may
be, on the field ``pages`` itself (never ``pages.int``); a page index is at
most :data:`MAX_PAGE_INDEX` (the model's largest region), so no number beyond
int64 reaches numpy.  Names are at most 200 characters; a scenario has at most
:data:`MAX_STEPS` steps.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    model_validator,
)

from cowsim.sim.kernel.counters import COUNTER_NAMES

Name = Annotated[StrictStr, Field(min_length=1, max_length=200)]
Value = Annotated[StrictInt, Field(ge=0, le=2**32 - 1)]
MAX_SELECTOR_PAGES = 1 << 30
MAX_PAGE_INDEX = MAX_SELECTOR_PAGES - 1
"""The largest page index: regions have at most 2**30 pages."""
PageNumber = Annotated[StrictInt, Field(ge=0, le=MAX_PAGE_INDEX)]
MAX_STEPS = 100_000
SELECTOR_FORMS = "a page index like 3, a range like '0-15', a list like [0, 2, 5], or omitted"

_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def parse_selector(raw: int | str | list[int] | None) -> list[int] | range | None:
    """A page selector → explicit page numbers (None for the whole region)."""
    if raw is None:
        return None
    if isinstance(raw, int):
        return [raw]
    if isinstance(raw, str):
        match = _RANGE.match(raw)
        if not match:
            if raw.strip().isdigit():
                return [int(raw)]
            raise ValueError(f"page range must look like '0-15', not {raw!r}")
        first, last = int(match.group(1)), int(match.group(2))
        if last > MAX_PAGE_INDEX:
            raise ValueError(f"page range {raw!r} goes beyond page {MAX_PAGE_INDEX:,}")
        if last < first:
            raise ValueError(f"page range {raw!r} ends before it starts")
        if last - first + 1 > MAX_SELECTOR_PAGES:
            raise ValueError(f"page range {raw!r} selects more than {MAX_SELECTOR_PAGES:,} pages")
        return range(first, last + 1)
    return list(raw)


def _page_index(value: object, where: str = "page index") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be an integer, not {type(value).__name__}")
    if not 0 <= value <= MAX_PAGE_INDEX:
        shown = str(value) if abs(value) < 10**30 else f"{str(value)[:12]}… ({len(str(value))} digits)"
        raise ValueError(f"{where} {shown} is out of range 0 … {MAX_PAGE_INDEX:,}")
    return value


def check_selector(value: object) -> int | str | list[int] | None:
    """A valid ``pages`` selector, unchanged; else ValueError saying what a selector may be."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return _page_index(value)
    if isinstance(value, str):
        if len(value) > 64:
            raise ValueError(f"a page selector is {SELECTOR_FORMS}; this string is too long")
        selected = parse_selector(value)
        if isinstance(selected, list):
            _page_index(selected[0])
        return value
    if isinstance(value, list):
        for number, item in enumerate(value):
            _page_index(item, f"page index at position {number}")
        return list(value)
    raise ValueError(f"a page selector is {SELECTOR_FORMS}, not {type(value).__name__}")


def check_value(value: object) -> bool | int | None:
    """An expectation's value: an integer 0 … 2**32-1, or true/false for same_frame."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and 0 <= value <= 2**32 - 1:
        return value
    raise ValueError("a value is an integer 0 … 2**32-1 (true or false for same_frame)")


Selector = Annotated[
    int | str | list[int] | None,
    PlainValidator(check_selector),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_PAGE_INDEX},
                              {"type": "string", "pattern": r"^\s*\d+\s*(-\s*\d+\s*)?$"},
                              {"type": "array", "items": {"type": "integer", "minimum": 0}},
                              {"type": "null"}]}),
]
"""``pages``: an index, a range string, a list of indices, or None (the whole region)."""

ExpectValue = Annotated[
    bool | int | None,
    PlainValidator(check_value),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
                              {"type": "boolean"}, {"type": "null"}]}),
]


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def selected(self) -> list[int] | range | None:
        return parse_selector(getattr(self, "pages", None))


class Mmap(_Step):
    op: Literal["mmap"]
    proc: Name
    region: Name
    pages: Annotated[StrictInt, Field(ge=1, le=MAX_SELECTOR_PAGES)]
    shared: StrictBool = False
    populate: StrictBool = False

    def selected(self) -> None:
        return None


class Munmap(_Step):
    op: Literal["munmap"]
    proc: Name
    region: Name


class Write(_Step):
    op: Literal["write"]
    proc: Name
    region: Name
    pages: Selector = None
    value: Value


class Read(_Step):
    op: Literal["read"]
    proc: Name
    region: Name
    pages: Selector = None
    expect: Value | None = None


class Fork(_Step):
    op: Literal["fork"]
    proc: Name
    child: Name


class Exit(_Step):
    op: Literal["exit"]
    proc: Name


class Mprotect(_Step):
    op: Literal["mprotect"]
    proc: Name
    region: Name
    prot: Literal["none", "r", "rw"]


class Madvise(_Step):
    op: Literal["madvise"]
    proc: Name
    region: Name
    pages: Selector = None
    advice: Literal["dontfork", "dofork", "wipeonfork", "keeponfork", "dontneed", "pageout"]


class ClearRefs(_Step):
    op: Literal["clear_refs"]
    proc: Name
    type: Literal["soft_dirty"] = "soft_dirty"


class PagemapBits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    present: StrictBool | None = None
    swapped: StrictBool | None = None
    soft_dirty: StrictBool | None = None
    exclusive: StrictBool | None = None


class Pagemap(_Step):
    op: Literal["pagemap"]
    proc: Name
    region: Name
    pages: Selector = None
    expect: PagemapBits


class UffdRegister(_Step):
    op: Literal["uffd_register"]
    proc: Name
    region: Name


class UffdWp(_Step):
    op: Literal["uffd_wp"]
    proc: Name
    region: Name
    pages: Selector = None
    protect: StrictBool


class Gup(_Step):
    op: Literal["gup"]
    proc: Name
    region: Name
    pages: Selector = None
    id: Name
    write: StrictBool = False


class Pin(_Step):
    op: Literal["pin"]
    proc: Name
    region: Name
    pages: Selector = None
    id: Name
    write: StrictBool = True
    longterm: StrictBool = True


class Release(_Step):
    op: Literal["release"]
    id: Name


class Vmsplice(_Step):
    op: Literal["vmsplice"]
    proc: Name
    region: Name
    pages: Selector = None
    pipe: Name


class OdirectRead(_Step):
    op: Literal["odirect_read"]
    proc: Name
    region: Name
    pages: Selector = None
    id: Name


class OdirectWrite(_Step):
    op: Literal["odirect_write"]
    proc: Name
    region: Name
    pages: Selector = None
    id: Name


class IoUringRegister(_Step):
    op: Literal["io_uring_register"]
    proc: Name
    region: Name
    pages: Selector = None
    id: Name


class DmaWrite(_Step):
    op: Literal["dma_write"]
    id: Name
    value: Value


class DmaRead(_Step):
    op: Literal["dma_read"]
    id: Name
    expect: Value | None = None


class LruDrain(_Step):
    op: Literal["lru_drain"]
    cpu: Annotated[StrictInt, Field(ge=0, le=4095)] | None = None


PageRef = tuple[Name, Name, PageNumber]


class Expect(_Step):
    """An expectation; exactly one of the forms of the design's table."""

    op: Literal["expect"]
    proc: Name | None = None
    region: Name | None = None
    pages: Selector = None
    pipe: Name | None = None
    id: Name | None = None
    same_frame: tuple[PageRef, PageRef] | None = None
    value: ExpectValue = None
    counters: dict[Annotated[StrictStr, Field(max_length=64)],
                   Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Expect:
        forms = {
            "proc": self.proc is not None or self.region is not None,
            "pipe": self.pipe is not None,
            "id": self.id is not None,
            "same_frame": self.same_frame is not None,
            "counters": self.counters is not None,
        }
        chosen = [name for name, present in forms.items() if present]
        if len(chosen) != 1:
            raise ValueError(
                "expect needs exactly one of {proc, region[, pages], value}, {pipe, value}, "
                "{id, value}, {same_frame, value} or {counters}"
            )
        form = chosen[0]
        if form == "proc" and (self.proc is None or self.region is None):
            raise ValueError("expect on memory needs both proc and region")
        if form != "proc" and self.pages is not None:
            raise ValueError("pages goes with proc and region only")
        if form == "counters":
            if self.value is not None:
                raise ValueError("expect counters takes no value")
            unknown = sorted(set(self.counters or {}) - set(COUNTER_NAMES))
            if unknown:
                raise ValueError(f"unknown counter {unknown[0]!r}; known: {', '.join(COUNTER_NAMES)}")
            return self
        if self.value is None:
            raise ValueError("expect needs a value")
        if form == "same_frame":
            if not isinstance(self.value, bool):
                raise ValueError("same_frame takes value: true or false")
        elif isinstance(self.value, bool):
            raise ValueError("value must be an integer")
        return self


Step = Annotated[
    Mmap | Munmap | Write | Read | Fork | Exit | Mprotect | Madvise | ClearRefs | Pagemap
    | UffdRegister | UffdWp | Gup | Pin | Release | Vmsplice | OdirectRead | OdirectWrite
    | IoUringRegister | DmaWrite | DmaRead | LruDrain | Expect,
    Field(discriminator="op"),
]

OPS: tuple[str, ...] = (
    "mmap", "munmap", "write", "read", "fork", "exit", "mprotect", "madvise", "clear_refs",
    "pagemap", "uffd_register", "uffd_wp", "gup", "pin", "release", "vmsplice", "odirect_read",
    "odirect_write", "io_uring_register", "dma_write", "dma_read", "lru_drain", "expect",
)


class Scenario(BaseModel):
    """A whole scenario file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    description: Annotated[StrictStr, Field(max_length=10_000)] | None = None
    kernel: Annotated[StrictStr, Field(max_length=64)] | None = None
    steps: Annotated[list[Step], Field(min_length=1, max_length=MAX_STEPS)]
