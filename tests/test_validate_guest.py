"""validate-host inside qemu: the initramfs, the guest's errors, and real Debian kernels.

The pieces (cpio archive, static-binary check, bzImage release, module closure, matrix cells)
are tested on synthetic input and always run.  Booting needs qemu-system-x86_64, a static
busybox and a kernel image (``cowsim kernels --fetch debian``, which .ci/run does, or
``COWSIM_KERNEL_IMAGES``); those tests are slow-marked and, under CI, fail instead of skipping
when something is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from cowsim.clients import qemu_guest
from cowsim.clients.cli import main
from cowsim.clients.kernel_images import DEBIAN_SERIES, local_images, newest_package
from cowsim.clients.qemu_guest import (
    GuestError,
    cpio_archive,
    guest_modules,
    is_static,
    kernel_release,
    run_guest,
)
from cowsim.clients.validate_host import build_executor, release_generation
from cowsim.clients.validate_matrix import cell_text, short_reason
from tests.validate_helpers import EXAMPLES, HOST_CASES, ROOT, running

IN_CI = os.environ.get("CI") == "true"


def _image(series: str) -> Path | None:
    for image in local_images():
        release = kernel_release(image) or ""
        if release.startswith(series + ".") or release.startswith(series + "-"):
            return image
    return None


def _need_guest(series: str) -> Path:
    """The image of ``series``, or skip (fail under CI: .ci/run installs all of it)."""
    missing = []
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86_64 (Debian: qemu-system-x86)")
    try:
        qemu_guest.find_busybox()
    except GuestError:
        missing.append("a static busybox (Debian: busybox-static)")
    image = _image(series)
    if image is None:
        missing.append(f"a Debian {series} kernel image (cowsim kernels --fetch debian)")
    if missing:
        if IN_CI:
            pytest.fail("CI=true: .ci/run should have installed " + ", ".join(missing))
        pytest.skip("needs " + ", ".join(missing))
    assert image is not None
    return image


# --- the pieces -----------------------------------------------------------------------------

def test_thecpio_archive_archive_is_whatcpio_archive_reads(tmp_path: Path) -> None:
    if shutil.which("cpio") is None:
        pytest.skip("needs cpio to read the archive back")
    archive = cpio_archive([("dir", 0o040755, b""), ("dir/file", 0o100644, b"hello\n"),
                     ("init", 0o100755, b"#!/bin/sh\n"), ("dev/console:5:1", 0o020600, b"")])
    listing = subprocess.run(["cpio", "-itv"], input=archive, capture_output=True, check=True)
    lines = listing.stdout.decode().splitlines()
    assert [line.split()[-1] for line in lines] == ["dir", "dir/file", "init", "dev/console"]
    assert lines[3].startswith("crw-------")
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--no-absolute-filenames", "dir/file"], input=archive,
                   cwd=out, capture_output=True, check=True)
    assert (out / "dir" / "file").read_bytes() == b"hello\n"


def test_a_static_binary_is_told_from_a_dynamic_one() -> None:
    assert not is_static(Path(shutil.which("python3") or "/usr/bin/python3").resolve())
    busybox = shutil.which("busybox")
    if busybox and "static" in subprocess.run(["file", busybox], capture_output=True,
                                              text=True).stdout:
        assert is_static(Path(busybox))


def test_the_release_is_read_from_the_bzimage_header(tmp_path: Path) -> None:
    image = bytearray(0x1000)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x300)
    version = b"6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\0"
    image[0x500:0x500 + len(version)] = version
    path = tmp_path / "vmlinuz"
    path.write_bytes(bytes(image))
    assert kernel_release(path) == "6.1.0-57-cloud-amd64"
    (tmp_path / "junk").write_bytes(b"not a kernel")
    assert kernel_release(tmp_path / "junk") is None


def test_the_guest_loads_zram_its_compressor_and_their_dependencies(tmp_path: Path) -> None:
    release = "6.1.0-1-cloud-amd64"
    tree = tmp_path / "lib" / "modules" / release
    for name, depends in (("drivers/block/zram/zram", "zsmalloc"), ("mm/zsmalloc", ""),
                          ("crypto/lzo-rle", ""), ("crypto/lz4", "lz4_compress")):
        path = tree / "kernel" / f"{name}.ko"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x7fELF...\0license=GPL\0depends=" + depends.encode() + b"\0")
    (tree / "modules.builtin").write_text("kernel/lib/lzo/lzo_compress.ko\n")
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / f"config-{release}").write_text('CONFIG_ZRAM=m\nCONFIG_ZRAM_DEF_COMP="lzo-rle"\n')
    modules = guest_modules(tree, boot / f"vmlinuz-{release}", release)
    assert [name for name, _data in modules] == ["lzo_rle.ko", "zsmalloc.ko", "zram.ko"]


def test_the_newest_debian_package_of_each_line_is_chosen() -> None:
    names = ["linux-image-6.1.0-9-cloud-amd64-unsigned", "linux-image-6.1.0-57-cloud-amd64-unsigned",
             "linux-image-6.1.0-57-cloud-amd64-dbg", "linux-image-6.12.9+deb12-cloud-amd64-unsigned",
             "linux-image-6.12.117+deb12-cloud-amd64-unsigned"]
    assert newest_package(names, DEBIAN_SERIES["6.1"]) == names[1]
    assert newest_package(names, DEBIAN_SERIES["6.12"]) == names[4]


def test_matrix_cells_say_verdict_agreement_and_where_a_scenario_stopped() -> None:
    steps = [{"step": 0, "status": "agree", "reason": None},
             {"step": 1, "status": "skipped", "reason": "madvise(MADV_PAGEOUT) needs swap, and"}]
    assert cell_text({"steps": steps}, True) == "pass ✓ 1/2, from step 1: no swap"
    steps[1] = {"step": 1, "status": "disagree", "reason": None}
    assert cell_text({"steps": steps}, False) == "FAIL ✗ 1 of 2 disagree (steps 1)"
    assert short_reason("... needs the gup_test debugfs file ...") == "needs gup_test"


@pytest.mark.parametrize("argv", [
    ["validate-host", "--kernel-image", "no-such-image"],
    ["validate-host", "--kernel-image", str(ROOT / "README.md")],
    ["validate-host", "--modules", "/tmp"],
    ["validate-host", "--markdown"],
    ["validate-host", "--guest-timeout", "0"],
    ["kernels", "--dir", "/tmp"],
])
def test_invalid_guest_options_are_one_line_and_exit_2(argv: list[str],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# --- real kernels in qemu -------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize(("series", "era"), [("6.1", "D"), ("6.12", "E")])
def test_a_debian_kernel_agrees_with_its_eras_model(series: str, era: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    image = _need_guest(series)
    started = time.monotonic()
    code = main(["validate-host", "--json", "--kernel-image", str(image), str(EXAMPLES),
                 str(HOST_CASES)])
    results = json.loads(capsys.readouterr().out)
    assert time.monotonic() - started < 300
    assert len(results) == len(list(EXAMPLES.glob("*.yaml"))) + len(list(HOST_CASES.glob("*.yaml")))
    assert {r["era"] for r in results} == {era}
    assert {r["kernel"] for r in results} == {kernel_release(image)}
    assert release_generation(results[0]["kernel"])[1].era == era
    disagreements = [(r["file"], s) for r in results for s in r["steps"] if s["status"] == "disagree"]
    assert disagreements == []
    assert code == 0
    for result in results:
        for step in result["steps"]:
            assert step["status"] == "agree" or step["reason"]
    by_file = {Path(r["file"]).name: r for r in results}
    # the guest has swap on zram and an O_DIRECT scratch file system: these run whole there
    for name in ("4.1-vmsplice-child-unmap-swapped.yaml", "4.4a-io-uring-fixed-buffer-swapcache.yaml",
                 "4.6-swapin-unnecessary-cow.yaml", "odirect-sync.yaml"):
        assert all(s["status"] == "agree" for s in by_file[name]["steps"]), name


@pytest.mark.slow
def test_a_truncated_image_is_one_clear_error_within_the_time_limit(tmp_path: Path) -> None:
    image = _need_guest("6.1")
    broken = tmp_path / "vmlinuz-truncated"
    broken.write_bytes(image.read_bytes()[: image.stat().st_size // 4])
    started = time.monotonic()
    with pytest.raises(GuestError, match=r"did not boot|stopped at boot|did not finish") as caught:
        run_guest(broken, ["scenario 0 0 0\nend\n"], executor=build_executor(),
                  cache_dir=tmp_path, timeout_seconds=60)
    assert time.monotonic() - started < 70
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_a_kernel_command_line_that_panics_is_one_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = _need_guest("6.1")
    started = time.monotonic()
    code = main(["validate-host", "--kernel-image", str(image), "--append", "rdinit=/nonexistent",
                 "--guest-timeout", "60", str(EXAMPLES / "4.1-vmsplice-child-unmap.yaml")])
    assert time.monotonic() - started < 70
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "panicked" in err[0]
    assert "Kernel panic" in err[0]


def test_a_guest_that_hangs_is_killed_at_the_time_limit(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A qemu that never exits (here a stand-in that sleeps) is killed at the limit, with
    everything it started, and the error says so in one line."""
    try:
        qemu_guest.find_busybox()
        executor = build_executor()
    except GuestError as exc:
        pytest.skip(str(exc))
    if not is_static(executor):
        pytest.skip("the C library has no static archive here")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pids = tmp_path / "pids"
    fake = bin_dir / "qemu-system-x86_64"
    fake.write_text(f"#!/bin/sh\necho $$ >> {pids}\nsleep 600 &\necho $! >> {pids}\nwait\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    image = tmp_path / "vmlinuz"
    header = bytearray(0x1000)
    header[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", header, 0x20E, 0x300)
    header[0x500:0x510] = b"6.1.0-hang #1\0\0\0"
    image.write_bytes(bytes(header))
    started = time.monotonic()
    with pytest.raises(GuestError, match="did not finish within 2 s") as caught:
        run_guest(image, ["scenario 0 0 0\nend\n"], executor=executor, cache_dir=tmp_path,
                  timeout_seconds=2)
    assert time.monotonic() - started < 15
    assert "\n" not in str(caught.value)
    for pid in map(int, pids.read_text().split()):
        assert not running(pid)

