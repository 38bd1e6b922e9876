"""Hypothesis strategies: random operation sequences for the kernel models.

:func:`op_sequences` draws a list of :class:`Op` s over a small world: processes
``p0`` (created by the first ``mmap``) and up to two children made by ``fork``,
regions ``a`` and ``b`` of 1–6 pages (private, sometimes MAP_SHARED), reference ids
``i0``/``i1`` and pipes ``q0``/``q1``.  A rough shadow of the world (who is alive,
which regions they map and how large) steers the choices towards operations that
succeed, but the shadow is deliberately approximate and a few operations are drawn
blind: the models must then agree that the operation fails, and on the field.

Each op prints as the call it makes (``k.write('p0', 'a', [0, 2], 7)``), so a
falsifying example reads as a reproducer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st

from cowsim.sim.kernel import Generation, all_generations, generation_for
from cowsim.sim.kernel.vmfault import FaultReport

GENERATIONS: list[Generation] = [*all_generations(), generation_for("6.18"),
                                  generation_for("aa-mapcount")]
"""Every era's representative version, the newest release (rules of 6.11+ no era stands for),
plus the what-if that restores mapcount reuse."""

PROCS = ("p0", "p1", "p2")
REGIONS = ("a", "b")
IDS = ("i0", "i1")
PIPES = ("q0", "q1")
MAX_PAGES = 6


@dataclass(frozen=True)
class Op:
    """One model call: ``getattr(model, name)(*args, **kwargs)``."""

    name: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
        return f"k.{self.name}({', '.join(parts)})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis prints falsifying examples with this."""
        printer.text(repr(self))

    def apply(self, model: Any) -> Any:
        """Run the op on a model; returns its result normalized to plain Python values."""
        return normalize(getattr(model, self.name)(*self.args, **dict(self.kwargs)))


def normalize(value: Any) -> Any:
    if isinstance(value, FaultReport):
        return normalize(value.as_dict())
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {key: normalize(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalize(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class _Shadow:
    """An approximate picture of the world, to draw mostly valid operations."""

    regions: dict[str, dict[str, tuple[int, bool]]] = field(default_factory=dict)
    prot: dict[tuple[str, str], str] = field(default_factory=dict)
    dontfork: set[tuple[str, str]] = field(default_factory=set)
    registered: set[tuple[str, str]] = field(default_factory=set)
    dead: set[str] = field(default_factory=set)

    def alive(self) -> list[str]:
        return [p for p in self.regions if p not in self.dead]

    def forget(self, proc: str, region: str) -> None:
        self.regions.get(proc, {}).pop(region, None)
        self.prot.pop((proc, region), None)
        self.dontfork.discard((proc, region))
        self.registered.discard((proc, region))


# Operation kinds and their weights (the first ones shrink best).
_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("write", 14),
    ("read", 6),
    ("fork", 4),
    ("mmap", 3),
    ("pageout", 5),
    ("dontneed", 2),
    ("refill", 6),
    ("mprotect", 4),
    ("clear_refs", 3),
    ("uffd_register", 2),
    ("uffd_wp", 4),
    ("gup", 3),
    ("pin", 4),
    ("odirect_read", 2),
    ("odirect_write", 2),
    ("io_uring_register", 2),
    ("vmsplice", 2),
    ("release", 3),
    ("dma_write", 3),
    ("dma_read", 1),
    ("lru_add_drain", 1),
    ("flag_advice", 2),
    ("munmap", 1),
    ("exit", 2),
    ("pagemap", 1),
)
OP_KINDS: tuple[str, ...] = tuple(kind for kind, weight in _WEIGHTS for _ in range(weight))


@st.composite
def _pages(draw: st.DrawFn, npages: int) -> list[int] | None:
    """None (the whole region) or a non-empty list of page indices, rarely one too far."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return None
    if choice == 9:
        return [npages]  # out of range: both models must refuse with field "pages"
    pages = draw(st.lists(st.integers(0, npages - 1), min_size=1, max_size=npages))
    return pages


@st.composite
def op_sequences(draw: st.DrawFn, min_ops: int = 8, max_ops: int = 45) -> list[Op]:
    """A random sequence of operations, starting with an ``mmap`` by ``p0``."""
    shadow = _Shadow()
    ops: list[Op] = []

    def mmap(proc: str, region: str) -> None:
        npages = draw(st.integers(1, MAX_PAGES))
        shared = draw(st.integers(0, 4)) == 0
        populate = draw(st.integers(0, 4)) == 0
        ops.append(Op("mmap", (proc, region, npages),
                      (("shared", shared), ("populate", populate))))
        if proc not in shadow.dead and region not in shadow.regions.get(proc, {}):
            shadow.regions.setdefault(proc, {})[region] = (npages, shared)
            shadow.prot[(proc, region)] = "rw"

    mmap("p0", "a")
    count = draw(st.integers(min_ops, max_ops))
    for _ in range(count):
        kind = draw(st.sampled_from(OP_KINDS))
        value = 100 + len(ops)
        alive = shadow.alive()
        blind = draw(st.integers(0, 24)) == 0
        proc = draw(st.sampled_from(PROCS if blind or not alive else alive))
        mapped = shadow.regions.get(proc, {})
        free = [r for r in REGIONS if r not in mapped]
        if kind == "mmap" and free and not blind:
            region = draw(st.sampled_from(free))
        elif blind or not mapped or kind == "mmap":
            region = draw(st.sampled_from(REGIONS))
        else:
            region = draw(st.sampled_from(sorted(mapped)))
        npages, shared = mapped.get(region, (MAX_PAGES, False))
        ref_id = draw(st.sampled_from(IDS))

        def pages(npages: int = npages) -> list[int] | None:
            return draw(_pages(npages))

        def writable(proc: str = proc, region: str = region) -> None:
            """Usually make the region writable first (mprotect RW paths get exercised)."""
            if shadow.prot.get((proc, region), "rw") != "rw" and draw(st.integers(0, 3)) > 0:
                ops.append(Op("mprotect", (proc, region, "rw")))
                shadow.prot[(proc, region)] = "rw"

        if kind == "mmap":
            mmap(proc, region)
            continue
        if kind == "write":
            writable()
            ops.append(Op("write", (proc, region, pages(), value)))
        elif kind == "refill":
            # Fresh pages: zap the region and write it again (fills the LRU-add batch).
            writable()
            ops.append(Op("madvise", (proc, region, "dontneed", None)))
            ops.append(Op("write", (proc, region, None, value)))
        elif kind == "read":
            ops.append(Op("read", (proc, region, pages())))
        elif kind == "pagemap":
            ops.append(Op("pagemap", (proc, region, pages())))
        elif kind == "fork":
            unused = [p for p in PROCS if p not in shadow.regions]
            child = unused[0] if unused and not blind else draw(st.sampled_from(PROCS))
            ops.append(Op("fork", (proc, child)))
            if proc in alive and child not in shadow.regions:
                shadow.regions[child] = {
                    r: info for r, info in mapped.items() if (proc, r) not in shadow.dontfork
                }
                for r in shadow.regions[child]:
                    shadow.prot[(child, r)] = shadow.prot.get((proc, r), "rw")
        elif kind == "exit":
            if len(alive) < 2 and not blind:
                continue  # keep someone alive to act
            ops.append(Op("exit", (proc,)))
            shadow.dead.add(proc)
        elif kind == "munmap":
            ops.append(Op("munmap", (proc, region)))
            shadow.forget(proc, region)
        elif kind == "mprotect":
            prot = draw(st.sampled_from(("r", "rw", "r", "none")))
            ops.append(Op("mprotect", (proc, region, prot)))
            if region in mapped:
                shadow.prot[(proc, region)] = prot
        elif kind in ("dontneed", "pageout"):
            # (the madvise with a page list; "refill" above zaps whole regions)
            ops.append(Op("madvise", (proc, region, kind, pages())))
        elif kind == "flag_advice":
            advice = draw(st.sampled_from(("dontfork", "wipeonfork", "dofork", "keeponfork")))
            ops.append(Op("madvise", (proc, region, advice)))
            if advice == "dontfork":
                shadow.dontfork.add((proc, region))
            elif advice == "dofork":
                shadow.dontfork.discard((proc, region))
        elif kind == "clear_refs":
            ops.append(Op("clear_refs", (proc, "soft_dirty")))
        elif kind == "uffd_register":
            ops.append(Op("uffd_register", (proc, region)))
            if region in mapped and not shared:
                shadow.registered.add((proc, region))
        elif kind == "uffd_wp":
            if (proc, region) not in shadow.registered and not blind:
                if shared or region not in mapped:
                    continue
                ops.append(Op("uffd_register", (proc, region)))
                shadow.registered.add((proc, region))
            protect = draw(st.integers(0, 2)) > 0
            ops.append(Op("uffd_wp", (proc, region, pages(), protect)))
        elif kind == "gup":
            write = draw(st.booleans())
            ops.append(Op("gup", (proc, region, pages(), ref_id), (("write", write),)))
        elif kind == "pin":
            write = draw(st.booleans())
            longterm = draw(st.integers(0, 3)) > 0
            ops.append(Op("pin", (proc, region, pages(), ref_id),
                          (("write", write), ("longterm", longterm))))
        elif kind in ("odirect_read", "odirect_write", "io_uring_register"):
            ops.append(Op(kind, (proc, region, pages(), ref_id)))
        elif kind == "vmsplice":
            pipe = draw(st.sampled_from(PIPES))
            ops.append(Op("vmsplice", (proc, region, pages(), pipe)))
        elif kind == "release":
            ops.append(Op("release", (ref_id,)))
        elif kind == "dma_write":
            # Some transfers touch only some pages (of the region drawn: often the one held).
            some = draw(st.booleans())
            ops.append(Op("dma_write", (ref_id, value, pages()) if some else (ref_id, value)))
        elif kind == "dma_read":
            some = draw(st.booleans())
            ops.append(Op("dma_read", (ref_id, pages()) if some else (ref_id,)))
        elif kind == "lru_add_drain":
            ops.append(Op("lru_add_drain", ()))
        else:  # pragma: no cover - every kind is handled above
            raise AssertionError(kind)
    return ops


def describe(ops: Sequence[Op], upto: int | None = None) -> str:
    """The ops as a numbered script (for failure messages)."""
    shown = ops if upto is None else ops[: upto + 1]
    return "\n".join(f"  step {i:2d}: {op!r}" for i, op in enumerate(shown))


def script(*calls: tuple[Any, ...]) -> list[Op]:
    """Ops from call tuples: ``("write", "p0", "a", None, 7)``; a trailing dict is kwargs."""
    out = []
    for call in calls:
        name, *rest = call
        kwargs: tuple[tuple[str, Any], ...] = ()
        if rest and isinstance(rest[-1], dict):
            kwargs = tuple(rest.pop().items())
        out.append(Op(name, tuple(rest), kwargs))
    return out
