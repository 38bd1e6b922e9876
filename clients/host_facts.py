"""The host facts that decide which of cowsim's rules apply to this machine.

``cowsim calibrate`` reports them beside the measured costs, because a cost is
only meaningful with them: a fork on a VM, with THP off, under a 6.1 kernel, is
a different thing from one on bare metal.  Every reader takes ``root``, the
directory that stands for ``/``, so tests point them at fixture trees of fake
``/proc`` and ``/sys`` files; only :func:`io_uring_syscall` and
:func:`soft_dirty_from_pagemap` ask the running kernel itself, and
:func:`read_host_facts` calls them only when ``root`` is the real ``/``.

Each fact is what the file says, or ``None`` when the file is missing or
unreadable (a container hides ``/sys/class/dmi``; ``/proc/config.gz`` needs
``CONFIG_IKCONFIG_PROC``): an unknown is reported as unknown, never guessed.
"""

from __future__ import annotations

import ctypes
import errno
import gzip
import mmap
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cowsim.sim import Generation, KernelVersionError, generation_for

__all__ = ["HostFacts", "io_uring_syscall", "kernel_generation", "read_host_facts",
           "soft_dirty_from_pagemap"]

_RELEASE_RE = re.compile(r"^(\d{1,3})\.(\d{1,3})(?:\.(\d{1,4}))?")
_MAX_FACT_BYTES = 1 << 20
_NR_IO_URING_SETUP = {"x86_64": 425, "aarch64": 425, "riscv64": 425, "ppc64le": 425,
                      "s390x": 425}


@dataclass(frozen=True)
class HostFacts:
    """What the host is; ``None`` means the fact could not be read."""

    kernel_release: str
    kernel_version: str | None
    """``major.minor`` of the release (``6.1.0-28-cloud-amd64`` → ``6.1``)."""
    era: str | None
    generation: str | None
    generation_note: str | None
    """Why there is no generation (a release older or newer than cowsim models)."""
    machine: str
    cpus: int
    memory_bytes: int | None
    memory_available_bytes: int | None
    thp_enabled: str | None
    """The bracketed choice of ``transparent_hugepage/enabled``: always, madvise, never."""
    thp_defrag: str | None
    soft_dirty: bool | None
    soft_dirty_source: str | None
    swap_present: bool | None
    swap_bytes: int | None
    io_uring: bool | None
    io_uring_note: str | None
    virtualized: bool | None
    virtualization_evidence: str | None
    cpu_model: str | None

    def as_dict(self) -> dict[str, Any]:
        """The facts as plain JSON-able values."""
        return asdict(self)


def _read(root: Path, relative: str) -> str | None:
    """The text of ``root/relative`` (at most 1 MiB), or None if it cannot be read."""
    try:
        with open(root / relative.lstrip("/"), "rb") as handle:
            return handle.read(_MAX_FACT_BYTES).decode("utf-8", "replace")
    except OSError:
        return None


def kernel_generation(release: str) -> tuple[str | None, Generation | None, str | None]:
    """``(major.minor, generation, note)`` for a release string such as
    ``6.1.0-28-cloud-amd64``: the distribution's suffix is dropped (its backports are
    not modelled, as for any stable release); the note says why there is no generation."""
    match = _RELEASE_RE.match(release.strip())
    if match is None:
        return None, None, f"release {release!r} does not start with a version"
    version = f"{match.group(1)}.{match.group(2)}"
    try:
        return version, generation_for(version), None
    except KernelVersionError as exc:
        return version, None, exc.message


def thp_choice(text: str | None) -> str | None:
    """The bracketed word of a sysfs choice file: ``always [madvise] never`` → ``madvise``."""
    if text is None:
        return None
    match = re.search(r"\[([^\]]+)\]", text)
    return match.group(1) if match else (text.strip() or None)


def meminfo(root: Path) -> dict[str, int]:
    """``/proc/meminfo`` in bytes (``MemTotal``, ``MemAvailable`` …)."""
    values: dict[str, int] = {}
    for line in (_read(root, "proc/meminfo") or "").splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            scale = 1024 if len(fields) > 1 and fields[1] == "kB" else 1
            values[name.strip()] = int(fields[0]) * scale
    return values


def swaps(root: Path) -> tuple[bool | None, int | None]:
    """Whether any swap area is active, and their total size (``/proc/swaps``)."""
    text = _read(root, "proc/swaps")
    if text is None:
        return None, None
    total = 0
    areas = 0
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2].isdigit():
            areas += 1
            total += int(fields[2]) * 1024
    return areas > 0, total


def kernel_config(root: Path, release: str) -> tuple[dict[str, str], str] | None:
    """The kernel's build configuration and where it was read: ``/proc/config.gz``,
    else ``/boot/config-RELEASE``; None when neither can be read."""
    path = root / "proc/config.gz"
    text: str | None = None
    source = "/proc/config.gz"
    try:
        with gzip.open(path, "rb") as handle:
            text = handle.read(16 << 20).decode("utf-8", "replace")
    except (OSError, EOFError, gzip.BadGzipFile):
        text = None
    if text is None:
        source = f"/boot/config-{release}"
        text = _read(root, source)
    if text is None:
        return None
    config: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            config[key] = value.strip()
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            config[line[2:-len(" is not set")]] = "n"
    return config, source


def soft_dirty_from_pagemap() -> bool | None:
    """Ask the running kernel: write a page, ``echo 4 > /proc/self/clear_refs``, write it
    again and read bit 55 of its pagemap entry, which only a kernel built with
    ``CONFIG_MEM_SOFT_DIRTY`` sets.  None if pagemap or clear_refs cannot be used.

    clear_refs write-protects every PTE of this process, so the next write to each page
    takes a cheap fault: call it before timing anything.
    """
    page = mmap.PAGESIZE
    region = mmap.mmap(-1, page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        region[0] = 1
        buffer = (ctypes.c_char * page).from_buffer(region)
        address = ctypes.addressof(buffer)
        del buffer
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("4")
        region[0] = 2
        with open("/proc/self/pagemap", "rb") as handle:
            handle.seek(address // page * 8)
            entry = int.from_bytes(handle.read(8), "little")
    except OSError:
        return None
    finally:
        region.close()
    return bool(entry >> 55 & 1)


def io_uring_syscall() -> tuple[bool | None, str]:
    """Call ``io_uring_setup(0, NULL)``: ENOSYS means the kernel has no io_uring, EPERM
    that it is disabled for this process; EINVAL or EFAULT mean the call exists."""
    number = _NR_IO_URING_SETUP.get(os.uname().machine)
    if number is None:
        return None, f"io_uring_setup's syscall number on {os.uname().machine} is not known"
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.syscall(ctypes.c_long(number), ctypes.c_uint(0), ctypes.c_void_p(None))
    code = ctypes.get_errno()
    if result >= 0:  # cannot happen with 0 entries; close the ring if it somehow did
        os.close(result)
        return True, "io_uring_setup succeeded"
    if code == errno.ENOSYS:
        return False, "io_uring_setup: ENOSYS (not built in)"
    if code == errno.EPERM:
        return False, "io_uring_setup: EPERM (disabled for this process)"
    return True, f"io_uring_setup(0) answered {errno.errorcode.get(code, code)} (available)"


def _io_uring_from_sysctl(root: Path) -> tuple[bool | None, str | None]:
    text = _read(root, "proc/sys/kernel/io_uring_disabled")
    if text is None or not text.strip().isdigit():
        return None, None
    value = int(text.strip())
    notes = {0: "io_uring_disabled=0 (all users)", 1: "io_uring_disabled=1 (only a group "
             "or CAP_SYS_ADMIN)", 2: "io_uring_disabled=2 (disabled)"}
    return value != 2, notes.get(value, f"io_uring_disabled={value}")


def virtualization(root: Path) -> tuple[bool | None, str | None]:
    """Whether this runs in a VM, and the evidence: the cpuinfo ``hypervisor`` flag, or a
    DMI product/vendor naming a hypervisor."""
    cpuinfo = _read(root, "proc/cpuinfo")
    if cpuinfo is not None:
        for line in cpuinfo.splitlines():
            if line.startswith("flags") and "hypervisor" in line.split(":", 1)[-1].split():
                return True, "cpuinfo flag 'hypervisor'"
    vendors = ("kvm", "qemu", "vmware", "virtualbox", "xen", "microsoft", "amazon ec2",
               "google compute", "firecracker", "bochs", "parallels")
    for name in ("sys/class/dmi/id/product_name", "sys/class/dmi/id/sys_vendor"):
        text = (_read(root, name) or "").strip()
        if any(vendor in text.lower() for vendor in vendors):
            return True, f"DMI {name.rsplit('/', 1)[-1]} {text!r}"
    if cpuinfo is None:
        return None, None
    return False, "no hypervisor flag in cpuinfo, no hypervisor named by DMI"


def _cpu_model(root: Path) -> str | None:
    for line in (_read(root, "proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[-1].strip()
    return None


def read_host_facts(root: Path = Path("/"), *, release: str | None = None,
                    cpus: int | None = None) -> HostFacts:
    """Every fact, read under ``root``; ``release`` and ``cpus`` default to this host's
    (``os.uname``, the CPUs this process may run on).  Only with ``root == /`` are the
    running kernel's own answers asked for (io_uring_setup, pagemap)."""
    real = root.resolve() == Path("/")
    release = release if release is not None else os.uname().release
    version, generation, note = kernel_generation(release)
    memory = meminfo(root)
    swap_present, swap_bytes = swaps(root)
    config = kernel_config(root, release)
    soft_dirty: bool | None = None
    soft_dirty_source: str | None = None
    if config is not None:
        soft_dirty = config[0].get("CONFIG_MEM_SOFT_DIRTY", "n") == "y"
        soft_dirty_source = config[1]
    elif real:
        soft_dirty = soft_dirty_from_pagemap()
        soft_dirty_source = "pagemap bit 55 after clear_refs 4" if soft_dirty is not None else None
    io_uring, io_note = _io_uring_from_sysctl(root)
    if real and io_uring is not False:
        io_uring, io_note = io_uring_syscall()
    virtualized, evidence = virtualization(root)
    return HostFacts(
        kernel_release=release, kernel_version=version,
        era=generation.era if generation else None,
        generation=generation.name if generation else None, generation_note=note,
        machine=os.uname().machine,
        cpus=cpus if cpus is not None else len(os.sched_getaffinity(0)),
        memory_bytes=memory.get("MemTotal"), memory_available_bytes=memory.get("MemAvailable"),
        thp_enabled=thp_choice(_read(root, "sys/kernel/mm/transparent_hugepage/enabled")),
        thp_defrag=thp_choice(_read(root, "sys/kernel/mm/transparent_hugepage/defrag")),
        soft_dirty=soft_dirty, soft_dirty_source=soft_dirty_source,
        swap_present=swap_present, swap_bytes=swap_bytes,
        io_uring=io_uring, io_uring_note=io_note,
        virtualized=virtualized, virtualization_evidence=evidence,
        cpu_model=_cpu_model(root),
    )
