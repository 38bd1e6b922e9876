"""validate-host inside qemu: the same executor and plans, on a kernel image you boot.

``cowsim validate-host --kernel-image PATH`` runs the plans of
:mod:`cowsim.clients.validate_host` inside a throw-away virtual machine instead of on the
host: any kernel a distribution ships, a vendor's, a release candidate.  What happens:

1. **An initramfs** is assembled in Python (the cpio ``newc`` format, gzip): a static
   busybox, the executor linked statically, the modules the guest needs from the image's
   own module tree (zram and its compressor, with their ``depends=``; ``.ko.xz`` and
   ``.ko.zst`` unpacked here, since busybox's insmod takes plain ELF), and ``/init``.  This
   part is cached by content hash; the plans travel in a second cpio archive appended to it
   (the kernel unpacks concatenated archives in order).
2. **The guest boots** with ``qemu-system-x86_64 -nodefaults -no-reboot -nic none``: KVM when
   ``/dev/kvm`` opens read-write, TCG otherwise; ``panic=-1`` so a panic reboots and
   ``-no-reboot`` turns that into qemu exiting.  The console goes to one serial port (kept for
   error messages), the results to a second one.
3. **/init** mounts proc, sys, devtmpfs and debugfs, loads the modules, puts swap on a zram
   device (so pageout steps run), an ext2 scratch file system with 4 KiB blocks (zram's sector
   size) on a second one (O_DIRECT needs a block device: tmpfs has none before 6.6), reserves
   a few hugetlb pages, runs every plan and powers off.
4. The results are split per plan and compared with the model of the booted release, exactly
   as on the host (:func:`cowsim.clients.validate_host.validate_scenario`).

Whatever the kernel does — not boot, panic, hang — the run ends within the time limit with one
:class:`GuestError` carrying the console's last lines.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cowsim.clients.validate_host import ExecutorOutput, ValidateHostError, parse_output

__all__ = ["DEFAULT_GUEST_TIMEOUT_SECONDS", "GuestError", "GuestRun", "accelerator",
           "base_initramfs", "cpio_archive", "find_busybox", "find_modules", "guest_modules", "is_static",
           "kernel_release", "run_guest"]

DEFAULT_GUEST_TIMEOUT_SECONDS = 300.0
GUEST_MEMORY_MIB = 768
CONSOLE_LINES = 12
START_MARK = "=== cowsim-guest up"
PLAN_MARK = "=== plan "
END_MARK = "=== cowsim-guest done"
SETUP_MARK = "=== setup "


class GuestError(ValidateHostError):
    """The guest did not run the plans (bad image, panic, hang): one line, plus the console."""


# --- what goes in ---------------------------------------------------------------------------

def is_static(path: Path) -> bool:
    """An ELF executable with no program interpreter (PT_INTERP): runs in a bare initramfs."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def find_busybox() -> Path:
    """A statically linked busybox (Debian: ``busybox-static``), or GuestError."""
    for candidate in (os.environ.get("COWSIM_BUSYBOX"), shutil.which("busybox"), "/bin/busybox"):
        if candidate and Path(candidate).is_file() and is_static(Path(candidate)):
            return Path(candidate)
    raise GuestError("the guest needs a statically linked busybox (Debian: apt-get install "
                     "busybox-static, or set COWSIM_BUSYBOX)")


_BANNER = re.compile(rb"Linux version (\S+)")


def kernel_release(image: Path) -> str | None:
    """The release a bzImage says it is (its ``kernel_version`` string at the offset its setup
    header gives), or None when the file is not a bzImage."""
    data = image.read_bytes()[:1 << 20]
    if len(data) < 0x210 or data[0x202:0x206] != b"HdrS":
        return None
    offset, = struct.unpack_from("<H", data, 0x20E)
    start = offset + 0x200
    text = data[start:start + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    return text.split()[0] if text else None


def find_modules(image: Path, release: str | None) -> Path | None:
    """The image's module tree: ``lib/modules/RELEASE`` beside the ``boot/`` directory the image
    is in (an unpacked Debian package), or None."""
    if release is None:
        return None
    candidate = image.resolve().parent.parent / "lib" / "modules" / release
    return candidate if candidate.is_dir() else None


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".zst":
        raise GuestError(f"{path.name}: zstd-compressed modules are not unpacked here")
    if path.suffix == ".gz":
        return gzip.decompress(data)
    return data


def _module_index(tree: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in (tree / "kernel").rglob("*.ko*"):
        name = path.name.split(".ko")[0].replace("-", "_")
        index[name] = path
    return index


def _builtin(tree: Path) -> set[str]:
    text = (tree / "modules.builtin").read_text() if (tree / "modules.builtin").exists() else ""
    return {Path(line).name.split(".ko")[0].replace("-", "_") for line in text.split()}


def _kernel_config(tree: Path, image: Path, release: str) -> str:
    for config in (image.parent / f"config-{release}", tree / "build" / ".config"):
        if config.exists():
            return config.read_text(errors="replace")
    return ""


def guest_modules(tree: Path | None, image: Path, release: str | None
                  ) -> list[tuple[str, bytes]]:
    """The modules /init loads, in load order (dependencies first): zram (unless built in) and
    the compressor it uses by default, from the image's own tree; [] without a tree."""
    if tree is None or release is None:
        return []
    index, builtin = _module_index(tree), _builtin(tree)
    config = _kernel_config(tree, image, release)
    wanted = ["zram"]
    compressor = re.search(r'^CONFIG_ZRAM_DEF_COMP="([^"]+)"', config, re.MULTILINE)
    if compressor:
        wanted.insert(0, compressor.group(1).replace("-", "_"))
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str, depth: int = 0) -> None:
        if name in seen or name in builtin or depth > 16:
            return
        seen.add(name)
        path = index.get(name)
        if path is None:
            return
        data = _read_module(path)
        found = re.search(rb"depends=([\w,-]*)", data)
        for dependency in (found.group(1).decode().split(",") if found else []):
            if dependency:
                visit(dependency.replace("-", "_"), depth + 1)
        order.append((f"{name}.ko", data))

    for name in wanted:
        visit(name)
    return order


INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
OUT=/dev/ttyS1
stty -F $OUT raw -echo 2>/dev/null
echo "{start} $(uname -r)" > $OUT
for m in $(cat /modules/order 2>/dev/null); do
    case $m in zram.ko) insmod /modules/$m num_devices=2 ;; *) insmod /modules/$m ;; esac
done
if [ -e /sys/block/zram0 ]; then
    echo 64M > /sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null && swapon /dev/zram0
fi
echo "=== setup swap: $(grep -c zram /proc/swaps)" > $OUT
mkdir -p /scratch
if [ -e /sys/block/zram1 ]; then
    echo 32M > /sys/block/zram1/disksize && mke2fs -b 4096 /dev/zram1 > /tmp/mke2fs.log 2>&1
    mount -t ext4 /dev/zram1 /scratch > /tmp/mount.log 2>&1 \\
        || mount -t ext2 /dev/zram1 /scratch >> /tmp/mount.log 2>&1
fi
echo "=== setup scratch: $(grep /scratch /proc/mounts || tail -1 /tmp/mount.log)" > $OUT
echo 4 > /proc/sys/vm/nr_hugepages 2>/dev/null
for p in /plans/*.plan; do
    echo "{plan}$p" > $OUT
    /vh-executor /scratch < $p > $OUT 2>&1
done
echo "{end}" > $OUT
sync
poweroff -f
"""


def cpio_archive(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    """A cpio ``newc`` archive of (name, mode, data) entries, directories included, with the
    trailer; device nodes are ``(name, mode, b"")`` with the major/minor in the name after a
    colon (``dev/console:5:1``)."""
    out = io.BytesIO()
    for ino, (raw_name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        name, rdev_major, rdev_minor = raw_name, 0, 0
        if ":" in raw_name:
            name, major, minor = raw_name.split(":")
            rdev_major, rdev_minor = int(major), int(minor)
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev_major, rdev_minor, len(encoded), 0)
        out.write(b"070701" + b"".join(b"%08X" % field for field in fields))
        out.write(encoded)
        out.write(b"\0" * (-(110 + len(encoded)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
    return out.getvalue()


def base_initramfs(executor: Path, busybox: Path, modules: list[tuple[str, bytes]],
                   cache_dir: Path) -> Path:
    """The cached first part of the initramfs (everything but the plans), by content hash."""
    order = "".join(f"{name}\n" for name, _data in modules).encode()
    init = INIT.format(start=START_MARK, plan=PLAN_MARK, end=END_MARK).encode()
    files = [("vh-executor", executor.read_bytes()), ("bin/busybox", busybox.read_bytes()),
             ("init", init), ("modules/order", order),
             *((f"modules/{name}", data) for name, data in modules)]
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    path = cache_dir / f"initramfs-{digest.hexdigest()[:16]}.cpio.gz"
    if path.exists():
        return path
    entries: list[tuple[str, int, bytes]] = [
        (d, 0o040755, b"") for d in ("bin", "dev", "proc", "sys", "modules", "plans", "tmp")]
    entries.append(("dev/console:5:1", 0o020600, b""))
    for name, data in files:
        executable = name in ("vh-executor", "bin/busybox", "init")
        entries.append((name, 0o100755 if executable else 0o100644, data))
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir, delete=False) as tmp:
        tmp.write(gzip.compress(cpio_archive(entries), compresslevel=6))
    os.replace(tmp.name, path)
    return path


# --- booting ---------------------------------------------------------------------------------

def accelerator() -> tuple[list[str], str]:
    """qemu's acceleration arguments and their name: KVM when /dev/kvm opens read-write, TCG
    otherwise (``COWSIM_QEMU_ACCEL=tcg|kvm`` decides instead).  A KVM that qemu cannot use
    (nested virtualization missing an MSR, say) is found out by :func:`run_guest`, which then
    boots again under TCG."""
    forced = os.environ.get("COWSIM_QEMU_ACCEL")
    if forced == "tcg":
        return _TCG, "tcg"
    if forced != "kvm":
        try:
            fd = os.open("/dev/kvm", os.O_RDWR)
        except OSError:
            return _TCG, "tcg"
        os.close(fd)
    return ["-accel", "kvm", "-cpu", "host"], "kvm"


_TCG = ["-accel", "tcg", "-cpu", "max"]


@dataclass
class GuestRun:
    """What the guest printed: the booted release, each plan's executor output."""

    release: str
    outputs: list[ExecutorOutput]
    accelerator: str
    seconds: float
    setup: list[str]
    """What /init reported setting up (swap on zram, the scratch file system)."""


def _tail(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return "(no console output)"
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
    return " | ".join(lines[-CONSOLE_LINES:]) or "(no console output)"


def run_guest(image: Path, plans: Sequence[str], *, executor: Path, cache_dir: Path,
              modules_dir: Path | None = None, append: str = "",
              timeout_seconds: float = DEFAULT_GUEST_TIMEOUT_SECONDS) -> GuestRun:
    """Boot ``image`` with the plans, run them all, return their outputs (in order) or raise
    GuestError with the console's last lines."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise GuestError("--kernel-image needs qemu-system-x86_64 (Debian: apt-get install "
                         "qemu-system-x86)")
    if not is_static(executor):
        raise GuestError("the executor could not be linked statically (install the C library's "
                         "static archive, Debian: libc6-dev)")
    release = kernel_release(image)
    if release is None:
        raise GuestError(f"{image}: not a bootable x86 kernel image (no bzImage setup header)")
    tree = modules_dir or find_modules(image, release)
    base = base_initramfs(executor, find_busybox(), guest_modules(tree, image, release), cache_dir)
    accel, accel_name = accelerator()
    with tempfile.TemporaryDirectory(prefix="cowsim-guest-") as scratch:
        work = Path(scratch)
        plan_entries = [(f"plans/{i:04d}.plan", 0o100644, text.encode())
                        for i, text in enumerate(plans)]
        initrd = work / "initrd"
        initrd.write_bytes(base.read_bytes() + gzip.compress(cpio_archive(plan_entries)))
        for attempt in ("first", "tcg"):
            console, results = work / f"console-{attempt}.log", work / f"results-{attempt}.log"
            command = [qemu, "-nodefaults", "-no-reboot", "-display", "none", "-nic", "none",
                       *accel, "-m", str(GUEST_MEMORY_MIB), "-smp", "2",
                       "-kernel", str(image), "-initrd", str(initrd), "-append",
                       f"console=ttyS0 panic=-1 rdinit=/init quiet loglevel=4 {append}".strip(),
                       "-serial", f"file:{console}", "-serial", f"file:{results}"]
            started = time.monotonic()
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, start_new_session=True)
            try:
                err = _wait(process, console, started + timeout_seconds)
            except subprocess.TimeoutExpired:
                _kill(process)
                raise GuestError(f"{image.name}: the guest did not finish within "
                                 f"{timeout_seconds:g} s (killed); console: {_tail(console)}"
                                 ) from None
            except _HaltedError as halted:
                _kill(process)
                raise GuestError(f"{image.name}: the kernel stopped at boot ({halted}); console: "
                                 f"{_tail(console)}") from None
            except BaseException:
                _kill(process)
                raise
            seconds = time.monotonic() - started
            said = err.decode("utf-8", "replace")
            if accel_name == "kvm" and process.returncode != 0 and "kvm" in said.lower() \
                    and not (results.exists() and results.stat().st_size):
                accel, accel_name = _TCG, "tcg"  # this KVM does not work for qemu: emulate
                continue
            break
        text = results.read_bytes().decode("utf-8", "replace").replace("\r", "") \
            if results.exists() else ""
        tail = _tail(console)
        console_text = console.read_text(errors="replace") if console.exists() else ""
        panicked = "Kernel panic" in console_text
        panic_line = next((line.split("]", 1)[-1].strip() for line in console_text.splitlines()
                           if "Kernel panic" in line), "")
    if START_MARK not in text:
        lines = said.strip().splitlines()
        if process.returncode not in (0, None) and lines:
            raise GuestError(f"{image.name}: qemu failed (exit {process.returncode}): {lines[-1]}")
        if panicked:
            raise GuestError(f"{image.name}: the kernel panicked before running anything "
                             f"({panic_line}); console: {tail}")
        if tail == "(no console output)":
            raise GuestError(f"{image.name}: the kernel did not boot: qemu exited after "
                             f"{seconds:.1f} s without a line on the console (a damaged or "
                             "truncated image?)")
        raise GuestError(f"{image.name}: the kernel did not boot; console: {tail}")
    if END_MARK not in text:
        what = f"panicked ({panic_line})" if panicked else "stopped"
        raise GuestError(f"{image.name}: the guest {what} before finishing its plans; console: "
                         f"{tail}")
    booted = text.split(START_MARK, 1)[1].split("\n", 1)[0].strip()
    parts = text.split(PLAN_MARK)[1:]
    outputs = [parse_output(part.split(END_MARK, 1)[0]) for part in parts]
    if len(outputs) != len(plans) or any("done" not in o_text for o_text in parts):
        raise GuestError(f"{image.name}: {len(outputs)} of {len(plans)} plans reported back; "
                         f"console: {tail}")
    setup = [line[len(SETUP_MARK):].strip() for line in text.split(PLAN_MARK, 1)[0].splitlines()
             if line.startswith(SETUP_MARK)]
    return GuestRun(booted, outputs, accel_name, seconds, setup)


HALTED = ("-- System halted", "Kernel panic - not syncing")
"""Console lines after which a guest never runs the plans (a damaged image's decompressor, a
panic without ``panic=``): seen, the guest is stopped at once instead of at the time limit."""


class _HaltedError(Exception):
    pass


def _wait(process: subprocess.Popen[bytes], console: Path, deadline: float) -> bytes:
    """Wait for qemu to exit (its stderr), watching the console for a halted kernel."""
    while True:
        try:
            _out, err = process.communicate(timeout=0.25)
            return err
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(process.args, 0)
        text = console.read_text(errors="replace") if console.exists() else ""
        for mark in HALTED:
            if mark in text:
                time.sleep(1.0)  # panic=-1 reboots (qemu exits): let it, and say panicked
                if process.poll() is None:
                    raise _HaltedError(mark.strip("- "))
                _out, err = process.communicate()
                return err


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, 9)
    with contextlib.suppress(Exception):
        process.communicate(timeout=10)
