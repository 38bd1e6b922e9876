"""cowsim calibrate: the fit on synthetic measurements, host facts from fixture trees, profile
files as machine profiles, the quick probes for real, and Ctrl-C leaving no child behind."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cowsim.clients import calibrate_cli
from cowsim.clients.calibrate_fit import (
    PAGE,
    THP,
    ForkPoint,
    Measurements,
    fit,
    fork_check,
)
from cowsim.clients.cli import main
from cowsim.clients.host_facts import kernel_generation, read_host_facts
from cowsim.clients.host_probes import ProbePlan, run_probes
from cowsim.sim import Budget, InvalidInput, parse_spec, plan_run, run
from cowsim.sim.machine.costs import PROFILES, cost_model, load_profile_file

TRUE = {"fork_fixed_ns": 60_000.0, "fork_per_pte_ns": 120.0, "fork_per_pmd_ns": 1_100.0,
        "exit_fixed_ns": 90_000.0, "exit_per_pte_ns": 70.0, "anon_fault_ns": 900.0,
        "page_zero_bytes_per_s": 8e9, "page_copy_bytes_per_s": 6e9,
        "cow_fault_fixed_ns": 2_500.0, "thp_split_ns": 20_000.0, "wp_reuse_fault_ns": 800.0,
        "mprotect_per_pte_ns": 110.0, "pagemap_per_page_ns": 50.0, "ipi_base_ns": 9_000.0}


def synthetic(noise: float = 0.0, reps: int = 7, seed: int = 0) -> Measurements:
    """Measurements a host with the TRUE costs would give, with relative noise."""
    rng = np.random.default_rng(seed)

    def jitter(value: float) -> float:
        return value * (1 + noise * rng.standard_normal()) if noise else value

    t = TRUE
    m = Measurements(memory_bytes=8 << 30)
    zero_ns_per_byte = 1e9 / t["page_zero_bytes_per_s"]
    copy_4k = PAGE * 1e9 / t["page_copy_bytes_per_s"]
    for rep in range(reps):
        for ptes in (4_000, 20_000, 70_000, 266_000):
            fork = t["fork_fixed_ns"] + ptes * t["fork_per_pte_ns"]
            exit_ = t["exit_fixed_ns"] + ptes * t["exit_per_pte_ns"]
            m.fork_4k.append(ForkPoint(ptes, 0, jitter(fork), rep))
            m.exit_4k.append(ForkPoint(ptes, 0, jitter(exit_), rep))
        for pmds in (0, 32, 128, 512):
            ns = t["fork_fixed_ns"] + 4_000 * t["fork_per_pte_ns"] + pmds * t["fork_per_pmd_ns"]
            m.fork_thp.append(ForkPoint(4_000, pmds, jitter(ns), rep))
        m.first_touch_ns.append(jitter(t["anon_fault_ns"] + PAGE * zero_ns_per_byte))
        m.thp_first_touch_ns.append(jitter(t["anon_fault_ns"] + THP * zero_ns_per_byte))
        m.copy_bytes_per_s.append(jitter(t["page_copy_bytes_per_s"]))
        m.memset_bytes_per_s.append(jitter(20e9))
        m.cow_ns.append(jitter(t["cow_fault_fixed_ns"] + copy_4k))
        m.thp_split_ns.append(jitter(t["thp_split_ns"] + t["cow_fault_fixed_ns"] + copy_4k))
        m.reuse_ns.append(jitter(t["wp_reuse_fault_ns"]))
        m.mprotect_ns.append(jitter(t["mprotect_per_pte_ns"]))
        m.pagemap_ns.append(jitter(t["pagemap_per_page_ns"]))
        m.shootdown_local_ns.append(jitter(3_000.0))
        m.shootdown_remote_ns.append(jitter(3_000.0 + t["ipi_base_ns"]))
    return m


# -- the fit ------------------------------------------------------------------------------

def test_the_fit_recovers_noise_free_parameters_exactly() -> None:
    result = fit(synthetic())
    for name, value in TRUE.items():
        assert result.params[name].value == pytest.approx(value, rel=1e-9), name
        assert result.params[name].mad == pytest.approx(0, abs=1e-6 * value), name
    assert result.params["memory_bytes"].value == 8 << 30
    assert result.skipped == {}


def test_the_fit_recovers_noisy_parameters_within_tolerance_with_a_spread() -> None:
    result = fit(synthetic(noise=0.02, reps=15, seed=4))
    tolerance = {"fork_fixed_ns": 0.5, "exit_fixed_ns": 0.5, "fork_per_pmd_ns": 0.5,
                 "page_zero_bytes_per_s": 0.25, "anon_fault_ns": 0.25, "ipi_base_ns": 0.1,
                 "cow_fault_fixed_ns": 0.1, "thp_split_ns": 0.1}
    for name, value in TRUE.items():
        estimate = result.params[name]
        assert estimate.value == pytest.approx(value, rel=tolerance.get(name, 0.05)), name
        assert estimate.low <= estimate.median <= estimate.high, name
    assert result.params["fork_per_pte_ns"].mad > 0


def test_missing_thp_and_shootdowns_are_skipped_with_the_reason() -> None:
    m = synthetic()
    m.fork_thp, m.thp_first_touch_ns, m.thp_split_ns = [], [], []
    m.thp_skip = "THP is disabled"
    m.shootdown_local_ns, m.shootdown_remote_ns = [], []
    m.shootdown_skip = "one CPU available"
    result = fit(m)
    assert result.skipped == {"fork_per_pmd_ns": "THP is disabled",
                              "thp_split_ns": "THP is disabled",
                              "ipi_base_ns": "one CPU available"}
    assert "numpy memset" in result.params["page_zero_bytes_per_s"].how  # the fallback
    assert result.params["page_zero_bytes_per_s"].value == pytest.approx(20e9)


def test_fork_check_compares_each_size_with_each_profile() -> None:
    rows = fork_check(synthetic().fork_4k, {"true": {**TRUE}, "half": {
        **TRUE, "fork_per_pte_ns": 60.0, "fork_fixed_ns": 30_000.0}})
    assert [row["ptes"] for row in rows] == [4_000, 20_000, 70_000, 266_000]
    assert all(row["error"]["true"] == pytest.approx(0) for row in rows)
    assert all(row["error"]["half"] == pytest.approx(-0.5) for row in rows)


# -- host facts -----------------------------------------------------------------------------

@pytest.mark.parametrize(("release", "version", "era"), [
    ("6.1.0-28-cloud-amd64", "6.1", "D"), ("5.10.0-33-amd64", "5.10", "B"),
    ("6.18.44-fc-v1045", "6.18", "E"), ("4.19.0", "4.19", "A"), ("5.15.0-119-generic", "5.15", "C"),
])
def test_a_release_maps_to_its_generation(release: str, version: str, era: str) -> None:
    got_version, generation, note = kernel_generation(release)
    assert (got_version, note) == (version, None)
    assert generation is not None
    assert generation.era == era


def test_a_release_cowsim_does_not_model_says_why() -> None:
    version, generation, note = kernel_generation("7.3.1-rc2")
    assert (version, generation) == ("7.3", None)
    assert note
    assert "newer than" in note
    assert kernel_generation("weird")[2] == "release 'weird' does not start with a version"


def write_tree(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def test_host_facts_parse_a_fixture_tree(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "proc/meminfo": "MemTotal:       16384000 kB\nMemFree: 1 kB\nMemAvailable:   8192000 kB\n",
        "proc/swaps": "Filename\tType\tSize\tUsed\tPriority\n/dev/nvme0n1p3 partition\t8388604\t0\t-2\n",
        "proc/config.gz": gzip.compress(b"CONFIG_MMU=y\nCONFIG_MEM_SOFT_DIRTY=y\n"),
        "proc/sys/kernel/io_uring_disabled": "2\n",
        "proc/cpuinfo": "model name\t: Intel(R) Xeon(R) Gold 6338\nflags\t\t: fpu vme sse2\n",
        "sys/kernel/mm/transparent_hugepage/enabled": "[always] madvise never\n",
        "sys/kernel/mm/transparent_hugepage/defrag": "always defer [defer+madvise] madvise never\n",
        "sys/class/dmi/id/product_name": "PowerEdge R750\n",
        "sys/class/dmi/id/sys_vendor": "Dell Inc.\n",
    })
    facts = read_host_facts(tmp_path, release="6.1.0-28-cloud-amd64", cpus=64)
    assert (facts.kernel_version, facts.era, facts.generation) == ("6.1", "D", "6.1")
    assert (facts.memory_bytes, facts.memory_available_bytes) == (16384000 * 1024, 8192000 * 1024)
    assert (facts.swap_present, facts.swap_bytes) == (True, 8388604 * 1024)
    assert (facts.soft_dirty, facts.soft_dirty_source) == (True, "/proc/config.gz")
    assert (facts.io_uring, facts.io_uring_note) == (False, "io_uring_disabled=2 (disabled)")
    assert (facts.thp_enabled, facts.thp_defrag) == ("always", "defer+madvise")
    assert facts.virtualized is False
    assert facts.cpu_model == "Intel(R) Xeon(R) Gold 6338"
    assert facts.cpus == 64


def test_host_facts_of_a_vm_without_config_gz(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "proc/swaps": "Filename\tType\tSize\tUsed\tPriority\n",
        "boot/config-5.10.0-33-amd64": "# CONFIG_MEM_SOFT_DIRTY is not set\n",
        "proc/cpuinfo": "flags\t\t: fpu hypervisor sse2\n",
        "sys/class/dmi/id/product_name": "KVM\n",
    })
    facts = read_host_facts(tmp_path, release="5.10.0-33-amd64", cpus=2)
    assert (facts.soft_dirty, facts.soft_dirty_source) == (False, "/boot/config-5.10.0-33-amd64")
    assert (facts.swap_present, facts.swap_bytes) == (False, 0)
    assert (facts.virtualized, facts.virtualization_evidence) == (True, "cpuinfo flag 'hypervisor'")
    assert facts.thp_enabled is None
    assert facts.io_uring is None
    assert facts.memory_bytes is None


def test_dmi_names_a_hypervisor_without_the_cpuinfo_flag(tmp_path: Path) -> None:
    write_tree(tmp_path, {"proc/cpuinfo": "flags\t: fpu\n",
                          "sys/class/dmi/id/sys_vendor": "QEMU\n"})
    facts = read_host_facts(tmp_path, release="6.8.0", cpus=1)
    assert (facts.virtualized, facts.virtualization_evidence) == (True, "DMI sys_vendor 'QEMU'")


# -- profile files ----------------------------------------------------------------------------

def test_a_profile_file_is_a_machine_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("host.yaml").write_text("# comment\nbase: zen4\ncosts:\n  fork_per_pte_ns: 130\n"
                                 "  memory_bytes: 8589934592\nhost: {kernel: '6.18'}\n"
                                 "measured: {fork_per_pte_ns: {low: 1, high: [2, 3]}}\n")
    model = cost_model("host.yaml")
    assert model.fork_per_pte_ns == 130
    assert model.tlb_l1_entries == PROFILES["zen4"].tlb_l1_entries
    assert cost_model("host.yaml", ipi_base_ns=5.0).ipi_base_ns == 5.0
    spec = parse_spec(json.dumps({"duration": "1s", "machine": {"profile": "host.yaml"},
                                  "processes": [{"name": "p", "memory": "64MiB"}]}), "s.json")
    assert plan_run(spec).costs == model
    assert run(spec)["status"] == "completed"


def test_a_budget_without_profile_files_refuses_one(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A server plans with ``Budget(profile_files=False)``: a spec naming a file is refused
    before anything is read (the file need not even exist), naming machine.profile."""
    monkeypatch.chdir(tmp_path)
    spec = parse_spec(json.dumps({"duration": "1s", "machine": {"profile": "/etc/host.yaml"},
                                  "processes": [{"name": "p", "memory": "4MiB"}]}), "s.json")
    with pytest.raises(InvalidInput, match=r"field 'machine.profile': a profile file is not read"):
        plan_run(spec, budget=Budget(profile_files=False))
    assert Budget().tightened(Budget(profile_files=False)).profile_files is False


@pytest.mark.parametrize(("content", "message"), [
    ("base: zen5\n", "field 'base': unknown profile 'zen5'"),
    ("costs: {fork_per_pte: 1}\n", "unknown cost field 'fork_per_pte'; did you mean 'fork_per_pte_ns'?"),
    ("costs: {fork_per_pte_ns: -1}\n", "cost field 'fork_per_pte_ns': Input should be greater"),
    ("costs: [1]\n", "field 'costs': a mapping of cost fields is expected, not list"),
    ("extra: 1\n", "unknown key 'extra'"),
    ("- 1\n", "a mapping with 'base' and 'costs' is expected, not list"),
    ("costs: {a: [\n", "not valid YAML"),
])
def test_an_invalid_profile_file_is_one_line_naming_the_field(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(content)
    with pytest.raises(ValueError, match=r"machine profile file 'bad\.yaml'") as info:
        load_profile_file("bad.yaml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    spec = parse_spec(json.dumps({"duration": "1s", "machine": {"profile": "bad.yaml"},
                                  "processes": [{"name": "p", "memory": "4MiB"}]}), "s.json")
    with pytest.raises(ValueError, match=r"s.json: field 'machine.profile': machine profile file"):
        plan_run(spec, source="s.json")


def test_a_missing_or_special_profile_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read: No such file"):
        cost_model(str(tmp_path / "none.yaml"))
    os.mkfifo(tmp_path / "fifo.yaml")  # opened without blocking, then refused
    with pytest.raises(ValueError, match="not a regular file"):
        load_profile_file(tmp_path / "fifo.yaml")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ValueError, match="Is a directory"):
        cost_model(str(tmp_path / "dir.yaml"))
    with pytest.raises(ValueError, match=r"or a profile file ending in \.yaml or \.yml"):
        cost_model("host.toml")


# -- the command ------------------------------------------------------------------------------

def test_every_shipped_profile_compared_is_accepted() -> None:
    assert set(calibrate_cli.SHIPPED_PROFILES) == set(PROFILES)
    assert calibrate_cli.profile_costs("zen4")["tlb_l1_entries"] == 72


@pytest.mark.parametrize(("option", "message"), [
    ("profile.toml", "ends in .yaml or .yml"), ("nodir/x.yaml", "does not exist"),
])
def test_an_invalid_out_is_exit_2_before_anything_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        option: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", "--quick", "--out", option]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cowsim: --out: ")
    assert message in err
    assert err.count("\n") == 1


def test_the_quick_probes_run_here_and_fit_a_profile_plan_run_accepts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    assert main(["calibrate", "--quick", "--out", "host.yaml", "--json"]) == 0
    assert time.monotonic() - start < 30
    out = json.loads(capsys.readouterr().out)
    assert out["profile"] == "host.yaml"
    assert out["notes"] == []
    assert out["host"]["kernel_release"] == os.uname().release
    assert out["params"]["fork_per_pte_ns"]["value"] > 0
    assert out["fork_check"]
    assert set(out["fork_check"][0]["predicted_ns"]) == {
        "fitted", *PROFILES}
    assert not list(tmp_path.glob(".host.tmp-*"))
    spec = parse_spec(json.dumps({"duration": "1s", "machine": {"profile": "host.yaml"},
                                  "processes": [{"name": "p", "memory": "64MiB"}]}), "s.json")
    plan = plan_run(spec)
    assert plan.costs.fork_per_pte_ns == round(out["params"]["fork_per_pte_ns"]["value"], 1)
    assert plan.costs.fork_fixed_ns == PROFILES[out["base"]].fork_fixed_ns  # not applied


def test_run_probes_reaps_every_child() -> None:
    plan = ProbePlan(fork_sizes=(0, 8 << 20), reps=2, fault_pages=256, thp_faults=2,
                     bandwidth_bytes=8 << 20, walk_pages=256, shootdown_iters=20)
    measurements = run_probes(plan, thp=False)
    assert len(measurements.fork_4k) == 4
    assert measurements.thp_skip
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def test_ctrl_c_during_the_probes_exits_130_and_leaves_no_child(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", "from cowsim.clients.cli import main; raise SystemExit(main())",
         "calibrate", "--quick", "--out", str(tmp_path / "host.yaml")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        # Interrupt while a probe has a child: the fork probes start them (a fixed sleep raced
        # with a fast machine finishing the quick probes and writing the profile first).
        deadline = time.monotonic() + 60
        while not [pid for pid in _group_members(process.pid) if pid != process.pid]:
            assert process.poll() is None, "calibrate ended before a probe started a child"
            assert time.monotonic() < deadline, "no probe child within 60 s"
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, err
    assert err.decode().strip().endswith("cowsim: interrupted")
    time.sleep(0.2)
    assert _group_members(process.pid) == []
    assert list(tmp_path.iterdir()) == []
