"""Tests for cowsim.sim.machine.costs: profiles, overrides, helper arithmetic."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from cowsim.sim.machine.costs import (
    DEFAULT_PROFILE,
    PAGE_SIZE,
    PMD_SIZE,
    PROFILES,
    CostModel,
    cost_model,
)

DEFAULTS = CostModel()


def test_profiles_exist_and_default_is_skylake() -> None:
    assert set(PROFILES) == {"skylake-sp", "zen4", "small-vm"}
    assert DEFAULT_PROFILE == "skylake-sp"
    assert cost_model() == PROFILES["skylake-sp"] == DEFAULTS


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_are_valid(name: str) -> None:
    profile = PROFILES[name]
    assert CostModel.model_validate(profile.model_dump()) == profile
    assert profile.full_flush_ceiling_pages == 33
    assert profile.tlb_l2_entries > profile.tlb_l1_entries > 0
    assert profile.page_copy_bytes_per_s > 0
    assert profile.memory_bytes > 0
    # the fixed parts of faults stay below the whole faults they are part of
    assert profile.wp_reuse_fault_ns < profile.cow_fault_fixed_ns < profile.cow_fault_ns()
    assert profile.zero_page_fault_ns < profile.anon_write_fault_ns()


def test_profile_geometry() -> None:
    sky, zen, vm = PROFILES["skylake-sp"], PROFILES["zen4"], PROFILES["small-vm"]
    assert (sky.tlb_l1_entries, sky.tlb_l2_entries) == (64, 1536)
    assert (zen.tlb_l1_entries, zen.tlb_l2_entries) == (72, 3072)
    assert (vm.tlb_l1_entries, vm.tlb_l2_entries) == (72, 3072)
    # virtual IPIs are roughly ten times the bare-metal round trip
    assert vm.shootdown_ns(1) >= 5 * sky.shootdown_ns(1)


def test_small_vm_reproduces_the_local_measurements() -> None:
    vm = PROFILES["small-vm"]
    assert vm.cow_fault_ns() == pytest.approx(2_220, rel=0.01)  # §2 local COW 2.22 µs
    assert vm.anon_write_fault_ns() == pytest.approx(1_400, rel=0.01)  # §2 local 1.40 µs
    assert vm.thp_cow_fault_ns() == pytest.approx(17_400, rel=0.01)  # §2 local 17.4 µs
    assert vm.thp_anon_fault_ns() == pytest.approx(182_000, rel=0.02)  # §2 local 182 µs
    assert vm.fork_ns(1 << 18) == pytest.approx(15.6e6, rel=0.02)  # §1 local 1 GiB 15.6 ms


def test_bare_metal_matches_the_suggested_defaults() -> None:
    sky = DEFAULTS
    assert sky.anon_write_fault_ns() == pytest.approx(1_000, rel=0.05)  # suggested 1.0 µs
    assert 130_000 <= sky.thp_anon_fault_ns() <= 180_000  # suggested 130–180 µs per 2 MiB
    assert 150_000 <= sky.thp_cow_fault_ns(copy_whole=True) <= 250_000  # pre-5.8, §2
    assert 10_000 <= sky.thp_split_ns <= 20_000


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_field_cites_its_source(name: str) -> None:
    """Each description names a section of cost-model.md or says it is an estimate;
    a profile value that differs from the default is explained under the profile name."""
    default = PROFILES[DEFAULT_PROFILE]
    profile = PROFILES[name]
    for field, info in CostModel.model_fields.items():
        description = info.description or ""
        assert re.search(r"§\d|\(E\b|NO (published )?figure|Not a cost figure", description), field
        if getattr(profile, field) != getattr(default, field):
            assert name in description, f"{field}: {name} value not explained"


def test_profiles_are_frozen() -> None:
    with pytest.raises(ValidationError):
        DEFAULTS.invlpg_ns = 1.0


# -- cost_model() ------------------------------------------------------------------------


def test_overrides_apply_and_leave_the_profile_alone() -> None:
    model = cost_model("zen4", ipi_base_ns=2_000, tlb_l1_entries=96.0)
    assert model.ipi_base_ns == 2_000
    assert model.tlb_l1_entries == 96
    assert isinstance(model.tlb_l1_entries, int)
    assert model.tlb_l2_entries == 3072  # the rest is zen4
    assert PROFILES["zen4"].ipi_base_ns == 1_500


def test_unknown_profile_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown machine profile 'epyc'.*skylake-sp, zen4, small-vm"):
        cost_model("epyc")


def test_unknown_field_is_named_with_a_suggestion() -> None:
    with pytest.raises(ValueError, match=r"unknown cost field 'ipi_bas_ns'; did you mean 'ipi_base_ns'"):
        cost_model(ipi_bas_ns=1.0)
    with pytest.raises(ValueError, match=r"unknown cost field 'zzz'"):
        cost_model("small-vm", zzz=1)


@pytest.mark.parametrize(
    ("field", "value"),
    [("invlpg_ns", -1.0), ("page_copy_bytes_per_s", 0.0), ("tlb_l1_entries", 64.5),
     ("fork_per_pte_ns", float("nan")), ("ipi_base_ns", float("inf")), ("memory_bytes", 0)],
)
def test_invalid_override_values_name_the_field(field: str, value: float) -> None:
    overrides: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=rf"cost field '{field}'") as info:
        cost_model(**overrides)
    assert "\n" not in str(info.value)


def test_constructor_rejects_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="ipi_bas_ns"):
        CostModel(ipi_bas_ns=1.0)  # type: ignore[call-arg]


# -- helpers -----------------------------------------------------------------------------


def test_fork_ns() -> None:
    assert DEFAULTS.fork_ns(262_144) == pytest.approx(50_000 + 262_144 * 55)
    assert DEFAULTS.fork_ns(0) == 50_000
    assert DEFAULTS.fork_ns(0, pmds=512) == pytest.approx(50_000 + 512 * 900)
    out = DEFAULTS.fork_ns(np.array([0, 1_000]))
    np.testing.assert_allclose(out, [50_000, 50_000 + 55_000])


def test_exit_ns() -> None:
    assert DEFAULTS.exit_ns(1_000) == pytest.approx(48_000 + 1_000 * 55)


def test_copy_and_zero() -> None:
    assert DEFAULTS.copy_ns(PAGE_SIZE) == pytest.approx(409.6)  # 4096 B at 10 GB/s
    assert DEFAULTS.zero_ns(12_000) == pytest.approx(1_000)  # 12 kB at 12 GB/s
    assert DEFAULTS.copy_ns(0) == 0.0
    assert DEFAULTS.copy_ns(np.int64(PAGE_SIZE)) == pytest.approx(409.6)
    np.testing.assert_allclose(DEFAULTS.copy_ns(np.array([0, PAGE_SIZE])), [0.0, 409.6])


def test_fault_composites() -> None:
    assert DEFAULTS.cow_fault_ns() == pytest.approx(1_500 + 409.6)
    assert DEFAULTS.anon_write_fault_ns() == pytest.approx(700 + 4096 / 12)
    assert DEFAULTS.thp_cow_fault_ns() == pytest.approx(15_000 + 1_500 + 409.6)
    assert DEFAULTS.thp_cow_fault_ns(copy_whole=True) == pytest.approx(1_500 + PMD_SIZE / 10)
    assert DEFAULTS.thp_anon_fault_ns() == pytest.approx(700 + PMD_SIZE / 12)


def test_shootdown_ns() -> None:
    assert DEFAULTS.shootdown_ns(0) == 0.0
    assert DEFAULTS.shootdown_ns(1) == 1_500
    assert DEFAULTS.shootdown_ns(3) == 1_500 + 2 * 500
    assert DEFAULTS.shootdown_ns(71) == 1_500 + 70 * 500
    np.testing.assert_allclose(DEFAULTS.shootdown_ns(np.array([0, 1, 8])), [0, 1_500, 5_000])
    with pytest.raises(ValueError, match="non-negative"):
        DEFAULTS.shootdown_ns(-1)


def test_flush_ns_switches_to_full_flush_above_the_ceiling() -> None:
    assert DEFAULTS.flush_ns("page") == 100
    assert DEFAULTS.flush_ns("range", 1) == 100
    assert DEFAULTS.flush_ns("range", 33) == 33 * 100
    assert DEFAULTS.flush_ns("range", 34) == 40
    assert DEFAULTS.flush_ns("range", 1_000_000) == 40
    assert DEFAULTS.flush_ns("mm") == 40
    assert DEFAULTS.flush_ns("range", 0) == 0
    np.testing.assert_allclose(DEFAULTS.flush_ns("range", np.array([1, 33, 34])), [100, 3_300, 40])
    np.testing.assert_allclose(DEFAULTS.flush_ns("mm", np.array([1, 50])), [40, 40])
    ceiling = cost_model(full_flush_ceiling_pages=0)
    assert ceiling.flush_ns("page") == ceiling.full_flush_ns


def test_flush_ns_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown TLB flush kind 'all'"):
        DEFAULTS.flush_ns("all")
    with pytest.raises(ValueError, match="non-negative"):
        DEFAULTS.flush_ns("range", -2)
