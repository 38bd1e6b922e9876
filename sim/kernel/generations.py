"""Kernel generations: which copy-on-write rules a given Linux version follows.

Linux changed its answer to "may this write reuse the page, or must it copy?"
several times.  Up to 5.7 ``do_wp_page`` asked *how many mappings* the page has
(``page_mapcount``/``reuse_swap_page``); from 5.9 it asks whether the caller is
the *exclusive owner* (``page_count() == 1``); from 5.19 pages remember that
they are exclusive (``PG_anon_exclusive``).  Each answer fixed one failure and
opened another, and fork, ``clear_refs``, mprotect, swap and GUP changed with
it.

This module keeps those decisions as data.  :data:`RULE_CHANGES` is a timeline:
each entry changes one field of :class:`Generation` at one release and cites
its commit.  A version's rule set is the fold of every change up to it
(:func:`generation_for`), so an era stores only what differs from the one
before.  :data:`ERAS` names the version ranges of
``docs/kernel-semantics.md`` §0; :data:`WHAT_IFS` holds policies that were
proposed but never merged.  Adding one is a new entry there, never a change to
the fault, fork or GUP code, which only read the fields below.

Where the reference marks a version uncertain ([U]) the entry says so in its
``note``; changing the reading is a one-line edit of that entry's version.

Which names are kernels
-----------------------

A version must name a real mainline release line: 4.0–4.20, 5.0–5.19 and
6.0 up to :data:`NEWEST_KNOWN_VERSION` (6.18, the newest release whose rules
cowsim has checked against ``docs/kernel-semantics.md``), optionally with a
stable suffix (``5.10.120`` follows mainline 5.10: backports are not
modelled).  ``5.100`` or ``4.21`` is no release, ``3.10`` is older than
cowsim models, and ``6.19`` or ``7.0`` is newer than it knows: each is refused
with a :class:`~cowsim.sim.errors.KernelVersionError` saying what to use
instead (for a newer kernel: the newest known version, or era ``E``, whose
rules it most likely follows).  Era ids (``B``, ``era-B``, ``c'``) and
what-if names are accepted too; :func:`generations_for` also takes ``all``.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass
from typing import Any

from cowsim.sim.errors import KernelVersionError

__all__ = [
    "ERAS",
    "NEWEST_KNOWN_VERSION",
    "OLDEST_VERSION",
    "RELEASE_LINES",
    "RULE_CHANGES",
    "WHAT_IFS",
    "ChangeProtWritable",
    "ClearRefsFlush",
    "Era",
    "Generation",
    "KernelVersionError",
    "RuleChange",
    "SwapinReuse",
    "WpReuse",
    "all_generations",
    "changes_in",
    "era_of",
    "generation_for",
    "generations_for",
    "kernel_choices",
    "parse_version",
]

class WpReuse(enum.Enum):
    """How ``do_wp_page`` decides whether a write may reuse an anonymous page."""

    MAPCOUNT = "mapcount"
    """≤5.8: ``reuse_swap_page``: reuse iff mapcount + swapcount <= 1; GUP references invisible."""
    PAGE_COUNT = "page_count"
    """5.9–5.17: reuse iff refcount == 1 and mapcount == 1 (09854ba94c6a)."""
    PAGE_COUNT_DRAIN = "page_count_drain"
    """5.18+: as PAGE_COUNT after draining the local LRU-add batch and freeing swapcache."""


class SwapinReuse(enum.Enum):
    """How a write fault on a swap entry (``do_swap_page``) decides to map writable."""

    MAPCOUNT = "mapcount"
    """≤5.17: ``reuse_swap_page`` (mapcount + swapcount) even in the page_count era."""
    PAGE_COUNT = "page_count"
    """5.18+: map writable iff the page is exclusive or refcount == 1 (c145e0b47c77)."""


class ClearRefsFlush(enum.Enum):
    """Which TLB flush ``echo 4 > clear_refs`` issues after write-protecting PTEs."""

    GATHER = "gather"
    """≤5.4: the mmu_gather flushes the whole mm at ``tlb_finish_mmu``."""
    NONE = "none"
    """5.5–5.11: 0758cd830494 elides the empty gather: no flush (stale writable TLB entries)."""
    FLUSH_MM = "flush_mm"
    """≈5.12+: Will Deacon's fix, one ``flush_tlb_mm`` after the walk."""


class ChangeProtWritable(enum.Enum):
    """Whether mprotect(RW) / uffd-wp resolve map private anonymous PTEs writable directly."""

    NEVER = "never"
    """≤5.19: private PTEs stay read-only; the next write faults."""
    DIRTY_EXCLUSIVE = "dirty_exclusive"
    """6.0–6.1: iff the PTE is dirty and the page PageAnonExclusive (64fe24a3e05e)."""
    EXCLUSIVE = "exclusive"
    """6.2+: iff the page is PageAnonExclusive, dirty or not (Nadav Amit, 6.2)."""


@dataclass(frozen=True)
class Generation:
    """The rule set of one kernel generation, as the kernel model reads it.

    Every field is one decision that some release changed; the field's comment
    names the code path that reads it.
    """

    name: str
    """What the user asked for: a version ("5.10"), an era id ("B") or a what-if name."""
    version: tuple[int, int]
    """The mainline release whose rules these are (a what-if names the release it patches)."""
    era: str
    """The era id of ``docs/kernel-semantics.md`` §0 this version falls in."""

    wp_reuse: WpReuse = WpReuse.MAPCOUNT
    """do_wp_page: the reuse test for an anonymous page (fault.py)."""
    swapin_reuse: SwapinReuse = SwapinReuse.MAPCOUNT
    """do_swap_page: the reuse test on a write fault through a swap entry (swap.py)."""
    gup_breaks_cow: bool = False
    """GUP with FOLL_GET or FOLL_PIN in a COW mapping is done as a write fault (gup.py)."""
    fork_copies_pinned: bool = False
    """copy_present_pte copies maybe-pinned pages for the child at fork (fork.py)."""
    anon_exclusive: bool = False
    """PG_anon_exclusive: exclusive pages are reused, R/O pins unshare, swap PTEs keep it."""
    clear_refs_skips_pinned: bool = False
    """clear_refs 4 leaves writable maybe-pinned PTEs alone (proc.py)."""
    clear_refs_flush: ClearRefsFlush = ClearRefsFlush.GATHER
    """The TLB flush clear_refs 4 issues (proc.py)."""
    clear_refs_write_lock: bool = False
    """clear_refs 4 holds the mmap lock for writing for the whole walk (machine timing)."""
    swapin_read_maps_writable: bool = False
    """do_swap_page maps an exclusive page writable on a read fault too (swap.py)."""
    swapcache_refuses_pinned: bool = False
    """Reclaim does not add maybe-pinned anonymous pages to the swap cache (swap.py)."""
    change_prot_writable: ChangeProtWritable = ChangeProtWritable.NEVER
    """mprotect(RW) may map exclusive anon PTEs writable, and how (protect.py)."""
    uffd_resolve_writable: bool = False
    """UFFDIO_WRITEPROTECT(0) also tries can_change_pte_writable(), as mprotect(RW) does
    (protect.py); before, a resolved private PTE stays read-only until the next write."""
    unshare_cow_mappings: bool = False
    """R/O long-term pins unshare non-anonymous pages (zero page) in COW mappings (gup.py)."""
    odirect_uses_pin: bool = False
    """O_DIRECT takes FOLL_PIN instead of FOLL_GET on user memory (gup.py)."""
    pin_bias: int = 1
    """What FOLL_PIN adds to the refcount of a small page (GUP_PIN_COUNTING_BIAS)."""
    lru_batch_pages: int = 15
    """Capacity of a per-CPU LRU-add batch (PAGEVEC_SIZE / folio_batch) (lru.py)."""

    @property
    def label(self) -> str:
        """Short label for tables: the version, or the what-if name."""
        return self.name

    def rules(self) -> dict[str, Any]:
        """The rule fields only (no identity), as plain values."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            if field.name in _IDENTITY_FIELDS:
                continue
            value = getattr(self, field.name)
            out[field.name] = value.value if isinstance(value, enum.Enum) else value
        return out


_IDENTITY_FIELDS = frozenset({"name", "version", "era"})


@dataclass(frozen=True)
class RuleChange:
    """One release changing one rule field, with the commit that did it."""

    version: tuple[int, int]
    field: str
    value: Any
    commit: str
    note: str = ""


RULE_CHANGES: tuple[RuleChange, ...] = (
    RuleChange((5, 5), "clear_refs_flush", ClearRefsFlush.NONE,
               "0758cd830494 asm-generic/tlb: avoid potential double flush"),
    RuleChange((5, 7), "pin_bias", 1024,
               "3faa52c03f44 mm/gup: track FOLL_PIN pages (GUP_PIN_COUNTING_BIAS)",
               "[U] merged for 5.7 (posted Feb 2020); before it a pin was a plain reference"),
    RuleChange((5, 8), "gup_breaks_cow", True,
               "17839856fd58 gup: document and work around 'COW can break either way' issue"),
    RuleChange((5, 9), "wp_reuse", WpReuse.PAGE_COUNT, "09854ba94c6a mm: do_wp_page() simplification"),
    RuleChange((5, 9), "gup_breaks_cow", False, "a308c71bf1e6 mm/gup: Remove enfornced COW mechanism"),
    RuleChange((5, 9), "fork_copies_pinned", True,
               "70e806e4e645 mm: Do early cow for pinned pages during fork() for ptes",
               "in 5.9-rc7, not 5.11 (kernel-semantics.md §0)"),
    RuleChange((5, 11), "clear_refs_skips_pinned", True,
               "9348b73c2e1b mm: don't play games with pinned pages in clear_page_refs"),
    RuleChange((5, 11), "clear_refs_write_lock", True, "29a951dfb3c3 mm: fix clear_refs_write locking"),
    RuleChange((5, 11), "swapcache_refuses_pinned", True,
               "feb889fb40fa mm: don't put pinned pages into the swap cache"),
    RuleChange((5, 12), "clear_refs_flush", ClearRefsFlush.FLUSH_MM,
               "mm: proc: Invalidate TLB after clearing soft-dirty page state (Will Deacon)",
               "[U] 5.11 or 5.12; read as 5.12"),
    RuleChange((5, 18), "wp_reuse", WpReuse.PAGE_COUNT_DRAIN,
               "d4c470970d45 / 53a05ad9f21d mm: optimize do_wp_page() for fresh pages in "
               "local LRU pagevecs / for exclusive pages in the swapcache"),
    RuleChange((5, 18), "swapin_reuse", SwapinReuse.PAGE_COUNT,
               "c145e0b47c77 mm: streamline COW logic in do_swap_page()"),
    RuleChange((5, 19), "anon_exclusive", True,
               "6c287605fd56 mm: remember exclusively mapped anonymous pages with PG_anon_exclusive; "
               "c89357e27f20 / a7f226604170 FAULT_FLAG_UNSHARE; 1493a1913e34 swp pte bit"),
    RuleChange((6, 0), "change_prot_writable", ChangeProtWritable.DIRTY_EXCLUSIVE,
               "64fe24a3e05e mm/mprotect: try avoiding write faults for exclusive anonymous pages"),
    RuleChange((6, 2), "change_prot_writable", ChangeProtWritable.EXCLUSIVE,
               "mm/mprotect: allow clean exclusive anon pages to be writable (Nadav Amit)"),
    RuleChange((6, 2), "unshare_cow_mappings", True,
               "84209e87c696 mm/gup: reliable R/O long-term pinning in COW mappings"),
    RuleChange((6, 3), "uffd_resolve_writable", True,
               "931298e103c2 mm/userfaultfd: rely on vma->vm_page_prot in uffd_wp_range() "
               "(MM_CP_TRY_CHANGE_WRITABLE on unprotect; seen by validate-host on Debian 6.1)"),
    RuleChange((6, 4), "odirect_uses_pin", True,
               "a7e689dd1c06 block: Convert bio_iov_iter_get_pages to use iov_iter_extract_pages",
               "[U] 6.4 or 6.5; read as 6.4"),
    RuleChange((6, 11), "swapin_read_maps_writable", True,
               "mm: swap: reuse exclusive folio directly instead of wp page faults (Barry Song, "
               "June 2024; seen by validate-host on Debian 6.12)",
               "[U] merged for 6.11 or 6.12; read as 6.11"),
)
"""Every rule change, oldest first. The fields' defaults are the ≤5.4 rules."""

_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Generation))
assert all(change.field in _FIELD_NAMES for change in RULE_CHANGES)


@dataclass(frozen=True)
class Era:
    """A version range of kernel-semantics.md §0 and the version that stands for it."""

    id: str
    first: tuple[int, int]
    last: tuple[int, int] | None
    representative: tuple[int, int]
    summary: str

    @property
    def range_label(self) -> str:
        first = _fmt(self.first)
        if self.last is None:
            return f"{first}+"
        if self.last == self.first:
            return first
        return f"{first}–{_fmt(self.last)}"


OLDEST_VERSION = (4, 0)
"""The oldest release cowsim models."""
NEWEST_KNOWN_VERSION = (6, 18)
"""The newest mainline release cowsim knows; later ones are refused (their rules are unknown)."""
RELEASE_LINES: dict[int, int] = {4: 20, 5: 19, 6: NEWEST_KNOWN_VERSION[1]}
"""Major version → its last minor release (4.20 was followed by 5.0, 5.19 by 6.0)."""

ERAS: tuple[Era, ...] = (
    Era("A", OLDEST_VERSION, (5, 7), (5, 4),
        "reuse iff mapcount(+swapcount) == 1; GUP references ignored"),
    Era("A'", (5, 8), (5, 8), (5, 8),
        "A + GUP in COW mappings forces a write fault (break COW) even for reads"),
    Era("B", (5, 9), (5, 10), (5, 10),
        "small pages reuse iff page_count == 1; fork copies maybe-pinned pages early"),
    Era("C", (5, 11), (5, 17), (5, 15),
        "B + clear_refs skips pinned PTEs, pinned pages kept out of swapcache, TLB fixes"),
    Era("C'", (5, 18), (5, 18), (5, 18),
        "page_count everywhere (swap-in too); LRU-batch drain and swapcache freeing in reuse"),
    Era("D", (5, 19), (6, 1), (6, 1),
        "PG_anon_exclusive; R/O pins unshare; 6.0: mprotect maps dirty exclusive PTEs writable"),
    Era("E", (6, 2), None, (6, 8),
        "D + clean exclusive PTEs writable on mprotect; R/O long-term pins unshare any COW page"),
)
"""The eras, oldest first, each with the version `--kernel ERA` and `--kernel all` run."""


def _fmt(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def era_of(version: tuple[int, int]) -> Era:
    """The era a mainline version falls in."""
    for era in reversed(ERAS):
        if version >= era.first:
            return era
    raise KernelVersionError(f"kernel {_fmt(version)} is older than {_fmt(OLDEST_VERSION)}, "
                             "the oldest cowsim models")


def _fold(version: tuple[int, int], name: str) -> Generation:
    values: dict[str, Any] = {}
    for change in RULE_CHANGES:
        if change.version <= version:
            values[change.field] = change.value
    return Generation(name=name, version=version, era=era_of(version).id, **values)


WHAT_IFS: dict[str, tuple[str, dict[str, Any], str]] = {
    "aa-mapcount": (
        "5.10",
        {"wp_reuse": WpReuse.MAPCOUNT},
        "Andrea Arcangeli, 'mm: restore full accuracy in COW page reuse' (9 Jan 2021, "
        "20210110004435.26382-1-aarcange@redhat.com, not merged): 5.10 with the era-A "
        "mapcount reuse test restored",
    ),
}
"""Proposals that never merged: name → (base version, rule overrides, source)."""


_VERSION_RE = re.compile(r"^(\d{1,3})\.(\d{1,3})(?:\.(\d{1,4}))?$")
_MAX_NAME_CHARS = 40


def kernel_choices(*, allow_all: bool = False) -> str:
    """What a kernel name may be, for error messages."""
    lines = ", ".join(f"{major}.0–{major}.{last}" for major, last in RELEASE_LINES.items())
    eras = ", ".join(era.id for era in ERAS)
    what_ifs = ", ".join(WHAT_IFS)
    text = f"a version ({lines}, e.g. 5.10), an era id ({eras}) or a what-if ({what_ifs})"
    if allow_all:
        text += ", or 'all' (one version per era)"
    return text


def _refuse(text: str, reason: str, allow_all: bool) -> KernelVersionError:
    shown = text if len(text) <= _MAX_NAME_CHARS else text[:_MAX_NAME_CHARS] + "…"
    return KernelVersionError(f"kernel {shown!r} {reason}; use {kernel_choices(allow_all=allow_all)}")


def parse_version(text: str, *, allow_all: bool = False) -> tuple[int, int]:
    """Parse "5.10" or "5.10.120" (stable suffix ignored) into (major, minor).

    The version must be a real release line (4.0–4.20, 5.0–5.19, 6.0–6.18):
    older, newer and non-existent ones (``5.100``) raise KernelVersionError.
    """
    match = _VERSION_RE.match(text.strip())
    if not match:
        raise _refuse(text, "is not a kernel version", allow_all)
    version = int(match.group(1)), int(match.group(2))
    if version < OLDEST_VERSION:
        raise KernelVersionError(
            f"kernel {text.strip()} is older than {_fmt(OLDEST_VERSION)}, the oldest cowsim models; "
            f"use {_fmt(OLDEST_VERSION)} or later"
        )
    if version > NEWEST_KNOWN_VERSION:
        raise KernelVersionError(
            f"kernel {text.strip()} is newer than {_fmt(NEWEST_KNOWN_VERSION)}, the newest release "
            f"cowsim knows (its rules are not modelled yet); use {_fmt(NEWEST_KNOWN_VERSION)} or "
            f"era E ({ERAS[-1].range_label}), whose rules a newer kernel most likely follows"
        )
    last = RELEASE_LINES.get(version[0])
    if last is None or version[1] > last:
        raise _refuse(text.strip(), f"is not a Linux release ({version[0]}.x ended at "
                                    f"{version[0]}.{last})" if last is not None
                      else "is not a Linux release", allow_all)
    return version


def generation_for(name: str) -> Generation:
    """The rule set for a version ("4.19", "5.10", "6.8"), an era id ("B", "C'") or a what-if.

    Stable-branch backports are not modelled: "5.10.120" follows mainline 5.10.
    Anything else raises :class:`KernelVersionError` (no path: the caller places
    it with :meth:`~cowsim.sim.errors.InvalidInput.within`).
    """
    return _generation_for(name, allow_all=False)


def generations_for(name: str) -> list[Generation]:
    """Like :func:`generation_for`, and ``all`` gives one generation per era."""
    if isinstance(name, str) and name.strip().lower() == "all":
        return all_generations()
    return [_generation_for(name, allow_all=True)]


def _generation_for(name: str, *, allow_all: bool) -> Generation:
    if not isinstance(name, str):
        raise KernelVersionError(f"a kernel is a string like '5.10', not {type(name).__name__}")
    text = name.strip()
    if text in WHAT_IFS:
        base, overrides, _source = WHAT_IFS[text]
        return dataclasses.replace(generation_for(base), name=text, **overrides)
    for era in ERAS:
        if text.upper() == era.id.upper() or text == f"era-{era.id}":
            return _fold(era.representative, _fmt(era.representative))
    if text.lower() == "all":
        raise KernelVersionError("'all' names several kernels; here give one: "
                                 + kernel_choices())
    version = parse_version(text, allow_all=allow_all)
    return _fold(version, text)


def all_generations() -> list[Generation]:
    """One generation per era (its representative version), oldest first."""
    return [generation_for(_fmt(era.representative)) for era in ERAS]


def changes_in(era: Era) -> list[RuleChange]:
    """The rule changes whose release falls inside an era."""
    return [
        change
        for change in RULE_CHANGES
        if change.version >= era.first and (era.last is None or change.version <= era.last)
    ]
