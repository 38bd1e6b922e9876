"""Kernel images to boot under validate-host: Debian's cloud kernels, fetched and unpacked.

``cowsim kernels --fetch debian [--dir DIR]`` asks apt for the newest
``linux-image-6.1.0-*-cloud-amd64-unsigned`` and ``linux-image-6.12.*-cloud-amd64-unsigned``
packages the configured archives offer, downloads them (``apt-get download``: no root, nothing
installed) and unpacks each with ``dpkg-deb -x`` into ``DIR/<package>/`` (default
``~/.cache/cowsim/kernels``): the image is ``boot/vmlinuz-RELEASE`` there and its modules
``lib/modules/RELEASE``, where :mod:`cowsim.clients.qemu_guest` finds them.  Cloud kernels
are small (no firmware, few drivers) and boot under qemu's plain PC machine.

:func:`local_images` lists what has been unpacked, for the tests and the matrix.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from cowsim.clients.validate_host import ValidateHostError

__all__ = ["DEBIAN_SERIES", "default_dir", "fetch_debian", "local_images", "newest_package"]

DEBIAN_SERIES = {
    "6.1": r"^linux-image-6\.1\.0-\d+-cloud-amd64-unsigned$",
    "6.12": r"^linux-image-6\.12\.[\d.]+\+deb\d+-cloud-amd64-unsigned$",
}
"""The kernel lines fetched, by the package names apt knows them under."""


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cowsim" / "kernels"


def _version_key(name: str) -> list[int]:
    return [int(part) for part in re.findall(r"\d+", name)]


def newest_package(names: list[str], pattern: str) -> str | None:
    """The newest package name matching ``pattern`` (numeric parts compared in order)."""
    matching = [name for name in names if re.match(pattern, name)]
    return max(matching, key=_version_key) if matching else None


def _run(command: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                              check=False)
    except FileNotFoundError:
        raise ValidateHostError(f"{command[0]} not found: fetching Debian kernels needs apt "
                                "(a Debian or Ubuntu machine)") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ValidateHostError(f"{' '.join(command[:3])} failed: {tail}")
    return done.stdout


def fetch_debian(directory: Path | None = None) -> list[Path]:
    """Download and unpack the newest cloud kernel of each :data:`DEBIAN_SERIES` line; returns
    the image paths (one already unpacked is not fetched again)."""
    target = directory or default_dir()
    target.mkdir(parents=True, exist_ok=True)
    names = _run(["apt-cache", "search", "--names-only", "cloud-amd64-unsigned"]).split("\n")
    packages = [line.split(" - ")[0].strip() for line in names if line.strip()]
    images: list[Path] = []
    for series, pattern in DEBIAN_SERIES.items():
        package = newest_package(packages, pattern)
        if package is None:
            raise ValidateHostError(f"apt offers no Debian {series} cloud kernel here "
                                    "(is a Debian 12 archive with backports configured?)")
        unpacked = target / package
        found = sorted(unpacked.glob("boot/vmlinuz-*"))
        if not found:
            for stale in target.glob(f"{package}_*.deb"):
                stale.unlink()
            _run(["apt-get", "download", "-q", package], cwd=target)
            debs = sorted(target.glob(f"{package}_*.deb"))
            if not debs:
                raise ValidateHostError(f"apt-get download {package} left no .deb")
            scratch = target / f".{package}.partial"
            shutil.rmtree(scratch, ignore_errors=True)
            _run(["dpkg-deb", "-x", str(debs[-1]), str(scratch)])
            os.replace(scratch, unpacked)
            debs[-1].unlink()
            found = sorted(unpacked.glob("boot/vmlinuz-*"))
        images.extend(found)
    return images


def local_images(directory: Path | None = None) -> list[Path]:
    """Images already unpacked under ``directory`` (default :func:`default_dir`), oldest
    release first; ``COWSIM_KERNEL_IMAGES`` (paths joined by ``:``) replaces the lookup."""
    named = os.environ.get("COWSIM_KERNEL_IMAGES")
    if named:
        return [Path(p) for p in named.split(":") if p]
    root = directory or default_dir()
    return sorted(root.glob("*/boot/vmlinuz-*"), key=lambda p: _version_key(p.name))
