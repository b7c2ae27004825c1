"""Host probing on this very machine: KVM probe, accelerator choice, TSC frequency."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from smolbox import errors
from smolbox.host import accel, tsc
from smolbox.host.kvm import KVMProbeResult, probe_kvm


@pytest.fixture(autouse=True)
def fresh_accel_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(accel.ACCEL_ENV, raising=False)
    accel.reset_cache()
    yield
    accel.reset_cache()


@pytest.fixture(scope="module")
def probe() -> KVMProbeResult:
    """This host's answer; the expectations below follow it (KVM host or not)."""
    return probe_kvm()


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="needs /dev/kvm to probe")
def test_kvm_probe_gives_a_reason_either_way(probe: KVMProbeResult) -> None:
    # HOST-FACTS.md: the project's machines' KVM (nested, kvm_pvm) cannot run a
    # standard guest; a real KVM host runs the probe guest to its HLT.
    assert probe.reason
    if not probe.usable:
        reason = probe.reason.lower()
        assert "internal error" in reason or "did not finish" in reason or "failed" in reason
    assert probe_kvm().usable is probe.usable  # the answer is stable


def test_kvm_probe_without_device(tmp_path: Path) -> None:
    result = probe_kvm(str(tmp_path / "no-kvm"))
    assert (result.usable, result.elapsed_s) == (False, 0.0)
    assert "does not exist" in result.reason


def test_kvm_probe_reports_a_device_that_is_not_kvm(tmp_path: Path) -> None:
    not_kvm = tmp_path / "kvm"
    not_kvm.write_bytes(b"")
    result = probe_kvm(str(not_kvm))  # the child really runs and its ioctl fails
    assert result.usable is False
    assert "KVM_GET_API_VERSION failed" in result.reason


def test_the_probe_decides_and_a_fallback_to_tcg_logs_kvm_unavailable(
        caplog: pytest.LogCaptureFixture, probe: KVMProbeResult) -> None:
    with caplog.at_level(logging.WARNING, logger="smolbox"):
        chosen = accel.choose_accelerator()
    records = [r for r in caplog.records if getattr(r, "code", None) == "KVM_UNAVAILABLE"]
    if probe.usable:
        assert (chosen.name, chosen.kvm_usable) == ("kvm", True)
        assert chosen.qemu_args == ["-accel", "kvm", "-cpu", "host"] and not records
    else:
        assert (chosen.name, chosen.kvm_usable) == ("tcg", False)
        assert chosen.qemu_args == ["-accel", "tcg", "-cpu", "max"]
        assert records and "[KVM_UNAVAILABLE]" in records[0].getMessage()
    caplog.clear()
    assert accel.choose_accelerator() is chosen  # cached: no second probe, no second warning
    assert caplog.records == []


def test_env_override(monkeypatch: pytest.MonkeyPatch, probe: KVMProbeResult) -> None:
    monkeypatch.setenv(accel.ACCEL_ENV, "tcg")
    forced = accel.choose_accelerator()
    assert forced.name == "tcg" and "SMOLBOX_ACCEL=tcg" in forced.reason
    monkeypatch.setenv(accel.ACCEL_ENV, "kvm")
    if os.path.exists("/dev/kvm"):
        kvm = accel.choose_accelerator()
        assert kvm.qemu_args == ["-accel", "kvm", "-cpu", "host"]
        assert kvm.kvm_usable is probe.usable  # honoured; the probe's answer stays visible
    monkeypatch.setenv(accel.ACCEL_ENV, "hvf")
    with pytest.raises(errors.ValidationError) as caught:
        accel.choose_accelerator()
    assert caught.value.field == "SMOLBOX_ACCEL"  # type: ignore[attr-defined]


def test_tsc_khz_comes_from_the_host() -> None:
    khz = accel.tsc_khz()
    assert khz is not None and 100_000 < khz < 10_000_000
    cpuinfo = Path("/proc/cpuinfo").read_text()
    if "constant_tsc" in cpuinfo:
        assert tsc.from_cpuinfo() is not None


def test_tsc_sources_parse_and_reject(tmp_path: Path) -> None:
    sysfs = tmp_path / "tsc_freq_khz"
    sysfs.write_text("2399987\n")
    assert tsc.from_sysfs(sysfs) == 2399987
    sysfs.write_text("garbage")
    assert tsc.from_sysfs(sysfs) is None
    assert tsc.from_sysfs(tmp_path / "missing") is None
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\ncpu MHz\t\t: 2100.000\nflags\t\t: fpu tsc constant_tsc\n\n"
                    "processor\t: 1\ncpu MHz\t\t: 999.0\n")
    assert tsc.from_cpuinfo(info) == 2_100_000
    info.write_text("processor\t: 0\ncpu MHz\t\t: 2100.000\nflags\t\t: fpu tsc\n")
    assert tsc.from_cpuinfo(info) is None  # scaled clock, not the TSC rate
    assert tsc.from_kernel_log(tmp_path / "no-kmsg") is None


def test_forcing_kvm_without_a_device_is_backend_not_available(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SMOLBOX_ACCEL=kvm on a host without /dev/kvm: a loud typed error, never TCG."""
    monkeypatch.setattr(accel, "KVM_DEVICE", str(tmp_path / "no-kvm"))
    monkeypatch.setenv(accel.ACCEL_ENV, "kvm")
    with pytest.raises(errors.BackendNotAvailableError) as caught:
        accel.choose_accelerator()
    assert caught.value.code == "BACKEND_NOT_AVAILABLE"
    assert "does not exist" in caught.value.message
