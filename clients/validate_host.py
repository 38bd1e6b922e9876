"""validate-host: run scenario scripts as real processes and compare each step with the model.

The scenario format (docs/design.md "Scenario scripts") describes system calls, CPU
accesses and device actions; most of them can be done for real.  This module:

1. **compiles** a scenario into a plan for the executor (``vh_executor.c``, built at first
   use with the host's C compiler, statically linked where it can be, cached by content
   hash): one command per step, framed by ``pagemap`` reads of the step's region so that
   what happened to each page's frame is seen (a changed PFN is a copy, the same PFN a
   reuse; PFNs need root), each command tagged with the kernel features it needs;
2. **runs** the plan (:func:`run_plan`; a time limit, its own session, every process killed
   and reaped on the way out, Ctrl-C included), and reads, per step, the faults (minor and major) the
   process took, the pages' outcomes and the values loads, pipes and devices saw;
3. **predicts** the same observations from the model of the kernel that ran it
   (:func:`cowsim.sim.trace_scenario`, the release mapped to its generation) and
   **compares** them step by step: ``agree``, ``disagree`` or ``skipped`` with the reason.

How steps run for real (and when they cannot):

* ``pin`` with ``write: true, longterm: true`` is an io_uring fixed-buffer registration:
  io_uring pins its buffers with the same flags (FOLL_PIN | FOLL_WRITE | FOLL_LONGTERM);
  ``dma_write``/``dma_read`` on such an id are IORING_OP_READ_FIXED/WRITE_FIXED against a
  memfd, which the kernel carries out through the pinned pages, as a device's DMA would.
  Other pins and ``gup`` need the kernel's gup_test debugfs file (CONFIG_GUP_TEST): skipped.
* ``odirect_read`` runs only when its ``dma_write`` and ``release`` follow at once: a real
  O_DIRECT read completes inside the system call, so one held in flight across other steps
  would need a device that delays completion (skipped).  Likewise ``odirect_write`` with
  its ``dma_read`` and ``release``.
* ``clear_refs`` needs CONFIG_MEM_SOFT_DIRTY; ``madvise pageout`` needs swap; uffd steps
  need userfaultfd write-protect; ``lru_drain`` is ``move_pages(2)`` to the page's own
  node, which drains every CPU's LRU-add batches (lru_cache_disable) and moves nothing.
  Every scenario process runs on CPU 0, the model's CPU.
* A write to a page the scenario write-protected with ``uffd_wp`` is preceded by
  UFFDIO_WRITEPROTECT(0) on it: the answer a monitor gives to the fault the store would
  take, which the model resolves the same way.
* A step that changes state and cannot run stops the scenario there: every later step is
  reported skipped (never half-run silently).  An observation that cannot be made (a
  soft-dirty bit without soft-dirty, frames without root) is skipped alone.

Faults: ``ru_minflt + ru_majflt`` (a swap-in that reads the swap device is a major
fault) count a fault once, when it completes; a fault handed to
userfaultfd returns VM_FAULT_RETRY and is counted at the retry, so the prediction is the
model's ``page_faults`` delta less its ``faults_uffd_wp`` delta.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cowsim.sim import (
    Generation,
    InvalidInput,
    KernelVersionError,
    Scenario,
    generation_for,
    page_outcome,
    trace_scenario,
)

__all__ = ["EXECUTOR_SOURCE", "FEATURE_REASONS", "ExecutorOutput", "Plan", "StepReport",
           "ValidateHostError", "build_executor", "cache_dir", "combine_runs", "compare", "compile_plan",
           "parse_output",
           "release_generation", "run_plan", "validate_scenario"]

EXECUTOR_SOURCE = "vh_executor.c"
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_RUNS = 3
"""Each scenario runs this many times; each step reports its most common observation."""
MAX_PROCS = MAX_REGIONS = MAX_PIPES = MAX_IDS = 64
MAX_REAL_PAGES = 4096
"""The executor's largest region, in pages (16 MiB): scenarios are small by nature."""

FEATURE_REASONS = {
    "soft_dirty": "clear_refs soft-dirty needs a kernel built with CONFIG_MEM_SOFT_DIRTY "
                  "(pagemap bit 55 stayed clear after a write)",
    "swap": "madvise(MADV_PAGEOUT) needs swap, and this kernel has none (/proc/swaps)",
    "io_uring": "io_uring is not available (io_uring_setup failed)",
    "odirect": "no O_DIRECT on the executor's scratch directory",
    "drain": "lru_drain uses move_pages(2), which failed (no CONFIG_MIGRATION/CONFIG_NUMA?)",
    "uffd_wp": "userfaultfd write-protect is not available (userfaultfd or UFFDIO_API failed)",
    "pfn": "page frame numbers need root (CAP_SYS_ADMIN): pagemap shows PFN 0",
}
MADVISE_NUMBERS = {"dontneed": 4, "dontfork": 10, "dofork": 11, "wipeonfork": 18,
                   "keeponfork": 19, "pageout": 21}
PROT_NUMBERS = {"none": 0, "r": 1, "rw": 3}


class ValidateHostError(Exception):
    """validate-host cannot run at all here (no compiler, the executor failed): one line."""


# --- building the executor -------------------------------------------------------------------

def cache_dir() -> Path:
    """Where built executors and initramfs images are kept (``$XDG_CACHE_HOME/cowsim``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cowsim"


def build_executor(cache: Path | None = None, *, static: bool = True) -> Path:
    """The executor binary, compiled from :data:`EXECUTOR_SOURCE` at first use and cached
    under ``cache`` (default :func:`cache_dir`) by the hash of its source and
    link mode; statically linked when ``static`` and the C library allows it."""
    source = resources.files("cowsim.clients").joinpath(EXECUTOR_SOURCE).read_bytes()
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    digest = hashlib.sha256(source + (b"static" if static else b"dynamic")).hexdigest()[:16]
    directory = cache or cache_dir()
    binary = directory / f"vh-executor-{digest}"
    if binary.exists():
        return binary
    if compiler is None:
        raise ValidateHostError("validate-host builds its executor with a C compiler, and none "
                                "was found (install gcc, or set CC)")
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        src = Path(scratch) / EXECUTOR_SOURCE
        src.write_bytes(source)
        out = Path(scratch) / "vh-executor"
        attempts = [["-static"], []] if static else [[]]
        errors = ""
        for link in attempts:
            done = subprocess.run([compiler, "-O2", "-std=gnu11", *link, "-o", str(out), str(src)],
                                  capture_output=True, text=True, timeout=120, check=False)
            if done.returncode == 0:
                os.replace(out, binary)
                return binary
            errors = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ValidateHostError(f"cannot build the validate-host executor with {compiler}: {errors}")


# --- compiling a scenario into a plan ----------------------------------------------------------

@dataclass
class _Command:
    seq: int
    step: int
    role: str  # "op", "before", "after", "child:<region>" (fork), "parent:<region>", "observe"
    state: bool
    requires: str  # "-" or features joined by ","
    text: str


@dataclass
class Plan:
    """A scenario compiled for the executor: commands, and what the compiler already knows
    about steps that cannot run (``skips``: step → reason) or ran as part of another step
    (``merged``: step → the step that carried it out)."""

    scenario: Scenario
    procs: dict[str, int] = field(default_factory=dict)
    regions: dict[str, int] = field(default_factory=dict)
    pipes: dict[str, int] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    commands: list[_Command] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)
    merged: dict[int, int] = field(default_factory=dict)
    region_pages: dict[str, int] = field(default_factory=dict)

    @property
    def stops_at(self) -> int | None:
        """The first step that changes state and can never run here (the compiler knows it:
        a pin without gup_test, a region too large, …), or None.  Nothing after it runs on
        any kernel, so nothing after it needs a prediction."""
        return min((c.step for c in self.commands if c.state and c.requires == "none"),
                   default=None)

    def text(self) -> str:
        head = f"scenario {len(self.procs)} {len(self.pipes)} {len(self.ids)}\n"
        body = "".join(f"cmd {c.seq} {'s' if c.state else 'o'} {c.requires} {c.text}\n"
                       for c in self.commands)
        return head + body + "end\n"


def _index(table: dict[str, int], name: str, limit: int, what: str, step: int) -> int:
    if name not in table:
        if len(table) >= limit:
            raise InvalidInput(f"the executor runs at most {limit} {what}",
                               path=("steps", step, what.rstrip("s")))
        table[name] = len(table)
    return table[name]


def compile_plan(scenario: Scenario, file: str = "<scenario>") -> Plan:
    """The executor's commands for ``scenario`` (see the module doc for how each op runs)."""
    plan = Plan(scenario)
    steps: list[Any] = list(scenario.steps)  # each step's fields by its op (schema models)
    owners: dict[str, str] = {}  # id → the process holding its io_uring ring
    kinds: dict[str, str] = {}  # id → "uring" | "gup_test" | "odirect"
    alive: set[str] = set()

    def proc(name: str, index: int) -> int:
        return _index(plan.procs, name, MAX_PROCS, "procs", index)

    def region(name: str, index: int) -> int:
        return _index(plan.regions, name, MAX_REGIONS, "regions", index)

    def add(index: int, role: str, state: bool, text: str, requires: str = "-") -> None:
        plan.commands.append(_Command(len(plan.commands), index, role, state, requires, text))

    def pages_of(step: Any, name: str) -> str:
        count = plan.region_pages.get(name, 0)
        chosen = step.selected()
        pages = range(count) if chosen is None else chosen
        return ",".join(str(page) for page in pages) or "-"

    def skip(index: int, reason: str) -> None:
        plan.reasons[index] = reason
        add(index, "op", True, "skip", "none")

    def framed(index: int, step: Any, text: str, requires: str = "-") -> None:
        p, r = proc(step.proc, index), region(step.region, index)
        if step.op != "mmap":  # a region being mapped has no pages yet: nothing to read
            add(index, "before", False, f"pm {p} {r}")
        add(index, "op", True, text, requires)
        add(index, "after", False, f"pm {p} {r}")

    for index, step in enumerate(steps):
        if index in plan.merged:
            continue
        op = step.op
        if op == "mmap":
            if step.pages > MAX_REAL_PAGES:
                skip(index, f"a region of {step.pages} pages: the executor maps at most "
                            f"{MAX_REAL_PAGES}")
                continue
            plan.region_pages[step.region] = step.pages
            alive.add(step.proc)
            framed(index, step, f"mmap {proc(step.proc, index)} {region(step.region, index)} "
                                f"{step.pages} {int(step.shared)} {int(step.populate)}")
        elif op == "munmap":
            add(index, "op", True, f"munmap {proc(step.proc, index)} {region(step.region, index)}")
        elif op in ("write", "read"):
            value = f" {step.value}" if op == "write" else ""
            framed(index, step, f"{op} {proc(step.proc, index)} {region(step.region, index)}"
                                f"{value} {pages_of(step, step.region)}")
        elif op == "fork":
            parent, child = proc(step.proc, index), proc(step.child, index)
            alive.add(step.child)
            add(index, "op", True, f"fork {parent} {child}")
            for name, r in plan.regions.items():
                add(index, f"parent:{name}", False, f"pm {parent} {r}")
                add(index, f"child:{name}", False, f"pm {child} {r}")
        elif op == "exit":
            alive.discard(step.proc)
            add(index, "op", True, f"exit {proc(step.proc, index)}")
        elif op == "mprotect":
            framed(index, step, f"mprotect {proc(step.proc, index)} {region(step.region, index)} "
                                f"{PROT_NUMBERS[str(step.prot)]}")
        elif op == "madvise":
            framed(index, step, f"madvise {proc(step.proc, index)} {region(step.region, index)} "
                                f"{MADVISE_NUMBERS[step.advice]} {pages_of(step, step.region)}",
                   "swap" if step.advice == "pageout" else "-")
        elif op == "clear_refs":
            add(index, "op", True, f"clearrefs {proc(step.proc, index)}", "soft_dirty")
        elif op == "pagemap":
            add(index, "observe", False, f"pm {proc(step.proc, index)} {region(step.region, index)}")
        elif op == "uffd_register":
            add(index, "op", True, f"uffdreg {proc(step.proc, index)} {region(step.region, index)}",
                "uffd_wp")
        elif op == "uffd_wp":
            framed(index, step, f"uffdwp {proc(step.proc, index)} {region(step.region, index)} "
                                f"{int(step.protect)} {pages_of(step, step.region)}", "uffd_wp")
        elif op == "gup":
            skip(index, "get_user_pages from user space needs the gup_test debugfs file "
                        "(CONFIG_GUP_TEST), which this executor does not drive")
        elif op in ("pin", "io_uring_register"):
            if op == "pin" and not (step.write and step.longterm):
                skip(index, "a read-only or short-term pin_user_pages needs the gup_test debugfs "
                            "file (CONFIG_GUP_TEST), which this executor does not drive; only "
                            "write+longterm pins run, as io_uring fixed buffers")
                continue
            _index(plan.ids, step.id, MAX_IDS, "ids", index)
            owners[step.id], kinds[step.id] = step.proc, "uring"
            framed(index, step, f"uring {proc(step.proc, index)} {region(step.region, index)} "
                                f"{plan.ids[step.id]} {pages_of(step, step.region)}", "io_uring")
        elif op == "vmsplice":
            pipe = _index(plan.pipes, step.pipe, MAX_PIPES, "pipes", index)
            framed(index, step, f"vmsplice {proc(step.proc, index)} {region(step.region, index)} "
                                f"{pipe} {pages_of(step, step.region)}")
        elif op in ("odirect_read", "odirect_write"):
            follow = steps[index + 1:index + 3]
            wanted = "dma_write" if op == "odirect_read" else "dma_read"
            ops = [(s.op, getattr(s, "id", None)) for s in follow]
            if ops == [(wanted, step.id), ("release", step.id)] or (
                    op == "odirect_write" and ops[:1] == [("release", step.id)]):
                merged = [index + 1] if ops[0][0] == "release" else [index + 1, index + 2]
                for later in merged:
                    plan.merged[later] = index
                kinds[step.id] = "odirect"
                p, r = proc(step.proc, index), region(step.region, index)
                if op == "odirect_read":
                    text = f"odread {p} {r} {follow[0].value} {pages_of(step, step.region)}"
                else:
                    text = f"odwrite {p} {r} {pages_of(step, step.region)}"
                framed(index, step, text, "odirect")
            else:
                skip(index, f"an {op.replace('_', ' ')} held in flight across other steps: a "
                            "real one completes inside the system call, so this needs a device "
                            f"that delays completion (here the {wanted} and release must follow "
                            "at once)")
        elif op in ("dma_write", "dma_read", "release"):
            owner = owners.get(step.id)
            if kinds.get(step.id) != "uring" or owner is None:
                skip(index, f"id {step.id!r} is not held by anything the executor ran")
                continue
            if owner not in alive:
                skip(index, f"the io_uring ring holding id {step.id!r} closed when {owner!r} "
                            "exited, while the model's reference outlives it")
                continue
            p, i = proc(owner, index), plan.ids[step.id]
            text = {"dma_write": f"dmaw {p} {i} {getattr(step, 'value', 0)}",
                    "dma_read": f"dmar {p} {i}", "release": f"release {p} {i}"}[op]
            add(index, "op", op != "dma_read", text)
            if op == "release":
                owners.pop(step.id)
        elif op == "lru_drain":
            if step.cpu not in (None, 0):
                skip(index, f"lru_drain of CPU {step.cpu}: every scenario process runs on CPU 0 "
                            "here, and no system call drains one other CPU")
                continue
            add(index, "op", True, "drain", "drain")
        elif op == "expect":
            _compile_expect(plan, index, step, owners, kinds, alive, proc, region, add)
        else:  # pragma: no cover - the schema admits no other op
            raise InvalidInput(f"unknown op {op!r}", path=("steps", index, "op"), source=file)
    return plan


def _compile_expect(plan: Plan, index: int, step: Any, owners: dict[str, str],
                    kinds: dict[str, str], alive: set[str], proc: Any, region: Any,
                    add: Any) -> None:
    if step.counters is not None:
        return  # derived from the steps before (see compare)
    if step.same_frame is not None:
        for role, (p, r, _page) in zip(("first", "second"), step.same_frame, strict=True):
            add(index, f"same:{role}", False, f"pm {proc(p, index)} {region(r, index)}")
        return
    if step.pipe is not None:
        pipe = _index(plan.pipes, step.pipe, MAX_PIPES, "pipes", index)
        add(index, "observe", False, f"pipepeek {pipe}")
        return
    if step.id is not None:
        owner = owners.get(step.id)
        if kinds.get(step.id) != "uring" or owner is None or owner not in alive:
            plan.reasons[index] = f"id {step.id!r} is not held by a live io_uring ring here"
            add(index, "observe", False, "skip", "none")
            return
        add(index, "observe", False, f"dmar {proc(owner, index)} {plan.ids[step.id]}")
        return
    count = plan.region_pages.get(step.region, 0)
    chosen = step.selected()
    pages = ",".join(str(p) for p in (range(count) if chosen is None else chosen)) or "-"
    add(index, "observe", False, f"peek {proc(step.proc, index)} {region(step.region, index)} "
                                 f"{pages}")


# --- running a plan -----------------------------------------------------------------------------

@dataclass
class ExecutorOutput:
    """What the executor printed: its capabilities, the kernel release, a result per command."""

    caps: dict[str, bool]
    release: str
    results: dict[int, list[str]]


def parse_output(text: str) -> ExecutorOutput:
    caps: dict[str, bool] = {}
    release = ""
    results: dict[int, list[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "caps":
            caps = {k: v == "1" for k, _, v in (w.partition("=") for w in words[1:])}
        elif words[0] == "uname" and len(words) > 1:
            release = words[1]
        elif words[0] == "res" and len(words) > 2 and words[1].isdigit():
            results[int(words[1])] = words[2:]
    return ExecutorOutput(caps, release, results)


def run_plan(binary: Path, plan_text: str, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
             scratch_dir: Path | None = None) -> ExecutorOutput:
    """Run the executor on ``plan_text`` in its own session; on a timeout or Ctrl-C every
    process of it is killed (SIGKILL to the session's group) and reaped before returning
    or re-raising."""
    with tempfile.TemporaryDirectory(dir=scratch_dir) as scratch:
        process = subprocess.Popen([str(binary), scratch], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        try:
            out, err = process.communicate(plan_text, timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise ValidateHostError(f"the executor did not finish within {timeout_seconds:g} s "
                                    "(killed)") from None
        except BaseException:
            _kill_group(process)
            raise
        _kill_group(process)  # whatever it left behind
    if process.returncode != 0 or "done" not in out.splitlines()[-1:]:
        tail = (err.strip().splitlines() or out.strip().splitlines() or ["no output"])[-1]
        raise ValidateHostError(f"the executor failed (exit {process.returncode}): {tail}")
    return parse_output(out)


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        process.communicate(timeout=5)


# --- comparing ------------------------------------------------------------------------------------

@dataclass
class StepReport:
    step: int
    op: str
    status: str  # "agree" | "disagree" | "skipped"
    reason: str | None
    observed: dict[str, Any] | None
    predicted: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "op": self.op, "status": self.status, "reason": self.reason,
                "observed": self.observed, "predicted": self.predicted}


_PM_PRESENT, _PM_SWAPPED = 1 << 63, 1 << 62
_PFN_MASK = (1 << 55) - 1


def _pm_states(words: list[str] | None) -> list[tuple[str, int]] | None:
    """Raw pagemap entries (``pm=hex,…``) → page states; None for a missing region."""
    if not words or words[0] != "ok":
        return None
    value = next((w[3:] for w in words if w.startswith("pm=")), "none")
    if value == "none":
        return None
    out = []
    for entry in (int(h, 16) for h in value.split(",") if h):
        if entry & _PM_PRESENT:
            out.append(("present", entry & _PFN_MASK))
        else:
            out.append(("swapped" if entry & _PM_SWAPPED else "absent", -1))
    return out


def _pm_bits(words: list[str] | None) -> dict[str, list[bool]] | None:
    if not words or words[0] != "ok":
        return None
    value = next((w[3:] for w in words if w.startswith("pm=")), "none")
    if value == "none":
        return None
    entries = [int(h, 16) for h in value.split(",") if h]
    return {"present": [bool(e >> 63 & 1) for e in entries],
            "swapped": [bool(e >> 62 & 1) for e in entries],
            "exclusive": [bool(e >> 56 & 1) for e in entries],
            "soft_dirty": [bool(e >> 55 & 1) for e in entries]}


def _field(words: list[str], name: str) -> str | None:
    return next((w[len(name) + 1:] for w in words if w.startswith(name + "=")), None)


def _values(words: list[str]) -> list[int]:
    text = _field(words, "val")
    return [int(v) for v in text.split(",") if v] if text else []


def _selected(step: Any, count: int) -> list[int]:
    chosen = step.selected() if step.op != "mmap" else None
    return list(range(count)) if chosen is None else [p for p in chosen if p < count]


def release_generation(release: str) -> tuple[str, Generation]:
    """``(major.minor, Generation)`` for a kernel release string (``6.1.0-28-cloud-amd64``);
    a release newer than the model knows maps as :func:`cowsim.sim.generation_for` says."""
    version = ".".join(release.split("-")[0].split(".")[:2])
    try:
        return version, generation_for(version)
    except KernelVersionError as exc:
        raise ValidateHostError(f"kernel {release}: {exc.message}") from None


def compare(plan: Plan, output: ExecutorOutput, predictions: list[dict[str, Any]]
            ) -> list[StepReport]:
    """One report per step: the real observations beside the model's (module doc)."""
    scenario = plan.scenario
    steps: list[Any] = list(scenario.steps)  # each step's fields by its op (schema models)
    by_step: dict[int, list[_Command]] = {}
    for command in plan.commands:
        by_step.setdefault(command.step, []).append(command)
    reports: list[StepReport] = []
    real_faults = 0
    real_copies = 0
    pfn = output.caps.get("pfn", False)
    stopped: str | None = None
    for index, step in enumerate(steps):
        predicted = dict(predictions[index])
        counters = predicted.pop("counters", {})
        op = step.op
        if stopped is not None:
            reports.append(StepReport(index, op, "skipped", stopped, None, None))
            continue
        if index in plan.merged:
            carrier = plan.merged[index]
            reports.append(StepReport(index, op, "agree", f"carried out by step {carrier}'s "
                                      f"{steps[carrier].op.replace('_', ' ')} "
                                      "(it completes inside the system call)", {}, {}))
            continue
        commands = by_step.get(index, [])
        results = {c.role: (c, output.results.get(c.seq)) for c in commands}
        op_cmd, op_res = results.get("op", (None, None))
        if op_res is not None and op_res[0] in ("skip", "after"):
            reason = (plan.reasons.get(index) or FEATURE_REASONS.get(op_res[1], op_res[1])
                      if op_res[0] == "skip" else "an earlier step could not run")
            reports.append(StepReport(index, op, "skipped", reason, None, None))
            if op_cmd is not None and op_cmd.state:
                stopped = (f"not run: step {index} ({op}) could not run here and the steps "
                           "after it depend on it")
            continue
        if op_cmd is not None and op_res is None:
            reports.append(StepReport(index, op, "skipped", "the executor gave no result",
                                      None, None))
            stopped = "not run: the executor stopped"
            continue
        observed: dict[str, Any] = {}
        notes: list[str] = []
        if op_res is not None and op_res[0] == "err":
            observed["error"] = " ".join(op_res[1:])
        elif op_res is not None:
            flt = _field(op_res, "flt")
            if flt is not None and "faults" in predicted:
                observed["faults"] = int(flt)
                real_faults += int(flt)
        if "faults" in predicted:  # getrusage counts a userfaultfd-retried fault once
            uffd = counters.get("faults_uffd_wp", 0) - _previous(predictions, index,
                                                                "faults_uffd_wp")
            predicted["faults"] -= uffd
        if "pages" in predicted and "after" in results:
            before = _pm_states(results["before"][1]) if "before" in results else None
            after = _pm_states(results["after"][1]) if "after" in results else None
            if after is not None:
                count = len(after)
                before = before or [("absent", -1)] * count
                outcomes = [page_outcome(before[p], after[p]) for p in _selected(step, count)]
                real_copies += outcomes.count("copied")
                if pfn:
                    observed["pages"] = outcomes
                else:
                    observed["pages"] = [_frameless(o) for o in outcomes]
                    predicted["pages"] = [_frameless(o) for o in predicted["pages"]]
                    notes.append(FEATURE_REASONS["pfn"] + ": copied and reused not told apart")
            elif "error" not in observed:
                observed["pages"] = None
        if op == "fork" and "error" not in observed:
            child: dict[str, list[str]] = {}
            for name in predicted.get("child", {}):
                mine = _pm_states(results.get(f"parent:{name}", (None, None))[1]) or []
                theirs = _pm_states(results.get(f"child:{name}", (None, None))[1])
                if theirs is None:
                    child[name] = ["not inherited"] * len(mine)
                    continue
                child[name] = ["absent" if state != "present" else
                               "shared" if (ps == "present" and frame == pf) else "copied"
                               for (ps, pf), (state, frame) in zip(mine, theirs, strict=False)]
                real_copies += child[name].count("copied")
            if pfn:
                observed["child"] = child
            else:
                predicted.pop("child", None)
                notes.append(FEATURE_REASONS["pfn"] + ": the child's frames not compared")
        if "values" in predicted:
            source = results.get("observe") or results.get("op")
            words = source[1] if source else None
            if words and words[0] == "ok":
                observed["values"] = _values(words)
            elif words and words[0] == "skip":
                reports.append(StepReport(index, op, "skipped", plan.reasons.get(index), None,
                                          None))
                continue
            elif words:
                observed["error"] = " ".join(words[1:])
        if op == "pagemap":
            bits = _pm_bits(results.get("observe", (None, None))[1])
            if bits is None:
                observed["error"] = "pagemap unreadable"
            else:
                chosen = _selected(step, len(bits["present"]))
                bits_wanted = dict(predicted.get("bits", {}))
                if "soft_dirty" in bits_wanted and not output.caps.get("soft_dirty", False):
                    bits_wanted.pop("soft_dirty")
                    predicted["bits"] = bits_wanted
                    notes.append(FEATURE_REASONS["soft_dirty"] + ": soft_dirty not compared")
                observed["bits"] = {name: [bits[name][p] for p in chosen] for name in bits_wanted}
                if not bits_wanted:
                    reports.append(StepReport(index, op, "skipped", "; ".join(notes), None, None))
                    continue
        if op == "expect" and step.same_frame is not None:
            first = _pm_states(results.get("same:first", (None, None))[1])
            second = _pm_states(results.get("same:second", (None, None))[1])
            if not pfn:
                reports.append(StepReport(index, op, "skipped", FEATURE_REASONS["pfn"], None,
                                          None))
                continue
            (_, _, n1), (_, _, n2) = step.same_frame
            if first is None or second is None or n1 >= len(first) or n2 >= len(second):
                observed["error"] = "a region of same_frame is not mapped"
            else:
                s1, s2 = first[n1], second[n2]
                observed["same_frame"] = s1[0] == s2[0] == "present" and s1[1] == s2[1]
        if op == "expect" and step.counters is not None:
            derivable = {"page_faults": real_faults, "cow_copies": real_copies}
            wanted = [name for name in step.counters if name in derivable]
            rest = [name for name in step.counters if name not in derivable]
            if rest:
                notes.append(f"{', '.join(rest)}: no such count is observable for one scenario "
                             "on a real kernel")
            if not wanted:
                reports.append(StepReport(index, op, "skipped", "; ".join(notes), None, None))
                continue
            uffd_total = counters.get("faults_uffd_wp", 0)
            model = {"page_faults": counters.get("page_faults", 0) - uffd_total,
                     "cow_copies": counters.get("cow_copies", 0)}
            observed["counters"] = {name: derivable[name] for name in wanted}
            predicted["counters"] = {name: model[name] for name in wanted}
            if "page_faults" in wanted and not pfn:
                notes.append("page_faults counted; cow_copies needs frames")
        agree = observed == predicted
        reports.append(StepReport(index, op, "agree" if agree else "disagree",
                                  "; ".join(notes) or None, observed, predicted))
    return reports


def _frameless(outcome: str) -> str:
    return "kept a frame" if outcome in ("reused", "copied") else outcome


def _previous(predictions: list[dict[str, Any]], index: int, name: str) -> int:
    if index == 0:
        return 0
    return int(predictions[index - 1].get("counters", {}).get(name, 0))


def combine_runs(runs: list[list[StepReport]]) -> list[StepReport]:
    """One report per step from several runs of the same plan: each step's most common
    observation (the first run's on a tie), its reason saying how the others differed.

    A count of faults around one access is a measurement on a live system, and a stray
    fault can land in the window (the executor absorbs the one kind it has seen, a fault of
    the first getrusage call after another scenario process exited; a busy host may have
    others).  Repeating the scenario and keeping the modal observation separates such noise
    from what the kernel does, and the report keeps the noise visible."""
    combined: list[StepReport] = []
    for reports in zip(*runs, strict=True):
        keys = [json.dumps([r.status, r.observed], sort_keys=True) for r in reports]
        chosen = max(dict.fromkeys(keys), key=keys.count)
        report = reports[keys.index(chosen)]
        others = [r for r, key in zip(reports, keys, strict=True) if key != chosen]
        if others:
            seen = "; ".join(sorted({json.dumps(r.observed, sort_keys=True) for r in others}))
            note = (f"{len(others)} of {len(reports)} runs saw otherwise ({seen}); this is "
                    "the most common observation")
            report = StepReport(report.step, report.op, report.status,
                                f"{report.reason}; {note}" if report.reason else note,
                                report.observed, report.predicted)
        combined.append(report)
    return combined


def validate_scenario(scenario: Scenario, file: str, outputs: Sequence[ExecutorOutput],
                      plan: Plan, *, model: Generation | None = None) -> dict[str, Any]:
    """The design's per-scenario object from one or more executor runs of ``plan``, compared
    with the model of the kernel that ran them (or of ``model``, to see whose rules a
    kernel follows)."""
    release = outputs[0].release
    _version, generation = release_generation(release)
    chosen = model or generation
    stop = plan.stops_at
    traced = scenario if stop is None else scenario.model_copy(
        update={"steps": scenario.steps[:stop]})  # a huge region stops here: trace no further
    predictions = trace_scenario(traced, chosen, file)
    predictions += [{} for _ in range(len(scenario.steps) - len(predictions))]
    reports = combine_runs([compare(plan, output, predictions) for output in outputs])
    return {"scenario": scenario.name, "file": file, "kernel": release,
            "era": generation.era, "model": chosen.label,
            "steps": [report.as_dict() for report in reports]}
