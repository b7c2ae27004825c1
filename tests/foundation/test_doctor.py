"""`smolbox doctor` through the real CLI and the report API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smolbox import errors
from smolbox.host import checks
from smolbox.host.doctor import DoctorReport, run_doctor
from smolbox.host.kvm import KVMProbeResult, probe_kvm
from smolbox.paths import Paths

SMOLBOX = Path(sys.executable).with_name("smolbox")
# The installed entry point when there is one, else the same ``main`` as a module: the
# CLI tests run either way, and the unit tests below never depend on the script.
SMOLBOX_CMD = ([str(SMOLBOX)] if SMOLBOX.exists()
               else [sys.executable, "-m", "smolbox.cli.main"])


@pytest.fixture(scope="module")
def probe() -> KVMProbeResult:
    """This host's KVM answer: what the doctor must report (KVM usable or not)."""
    return probe_kvm()


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SMOLBOX_CMD, *args], capture_output=True, text=True, timeout=120,
                          env=env, check=False)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SMOLBOX_ACCEL"}
    env.update(SMOLBOX_HOME=str(tmp_path / "home"), SMOLBOX_IMAGES=str(tmp_path / "images"),
               **extra)
    return env


@pytest.mark.parametrize("argv", [("doctor", "--json"), ("--json", "doctor")])
def test_doctor_json_reports_the_probed_accelerator(tmp_path: Path, argv: tuple[str, ...],
                                                    probe: KVMProbeResult) -> None:
    done = _run(*argv, env=_env(tmp_path))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["kvm_usable"] is probe.usable
    assert report["accelerator"] == ("kvm" if probe.usable else "tcg")
    assert report["ok"] is True
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["qemu"]["status"] == "ok"
    if probe.usable:
        assert by_name["kvm"]["status"] == "ok"
    else:
        assert by_name["kvm"]["status"] == "warn"
        assert by_name["kvm"]["detail"].startswith("no, using software emulation")
    assert by_name["default image"]["status"] == "warn"
    assert all(set(c) >= {"name", "status", "detail", "fix"} for c in report["checks"])


def test_doctor_table(tmp_path: Path) -> None:
    done = _run("doctor", env=_env(tmp_path, COLUMNS="200"))
    assert done.returncode == 0, done.stderr
    assert "qemu-system-x86_64" in done.stdout and "ready" in done.stdout


def test_doctor_without_qemu_fails_with_a_host_code(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    done = _run("doctor", env=_env(tmp_path, PATH=str(bare), COLUMNS="200"))
    assert done.returncode == 5  # HostError family (render.exit_code_for)
    assert "error[HOST_" in done.stderr
    assert "qemu" in done.stdout and "fail" in done.stdout
    done = _run("doctor", "--json", env=_env(tmp_path, PATH=str(bare)))
    assert done.returncode == 5
    report = json.loads(done.stdout)
    assert report["ok"] is False
    body = json.loads(done.stderr.strip().splitlines()[-1])
    assert body["error"]["code"].startswith("HOST_")
    failed = {c["name"]: c for c in body["error"]["details"]["failed_checks"]}
    assert failed["qemu"]["code"] == "HOST_TOOL_MISSING"


def test_only_qemu_missing_raises_the_tool_error(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    img = shutil.which("qemu-img")
    if img is None:
        pytest.skip("qemu-img not installed")
    (bare / "qemu-img").symlink_to(img)
    done = _run("--json", "doctor", env=_env(tmp_path, PATH=str(bare)))
    assert done.returncode == 5
    err = errors.from_wire(done.stderr.strip().splitlines()[-1])
    assert isinstance(err, errors.HostToolMissingError)
    assert err.details["tool"] == "qemu-system-x86_64"


def test_report_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    probe: KVMProbeResult) -> None:
    monkeypatch.setenv("SMOLBOX_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("SMOLBOX_IMAGES", str(tmp_path / "img"))
    report = run_doctor(Paths.from_env())
    assert report.ok and report.error() is None
    assert report.kvm_usable is probe.usable
    assert report.accelerator == ("kvm" if probe.usable else "tcg")
    (tmp_path / "img" / "default").mkdir(parents=True)
    assert checks.check_default_image(Paths.from_env()).status == "ok"


def test_failed_checks_become_one_error() -> None:
    report = DoctorReport(checks=[
        checks.Check("a", "ok", "fine"),
        checks.Check("b", "fail", "broken", "fix b"),
        checks.Check("c", "fail", "broken", "fix c"),
    ])
    assert not report.ok
    err = report.error()
    assert isinstance(err, errors.HostError) and err.code == "HOST_ERROR"
    assert "fix b" in err.help and "fix c" in err.help


def test_disk_and_home_checks(tmp_path: Path) -> None:
    assert checks.check_disk_space(tmp_path / "not" / "yet").status == "ok"
    huge = 1 << 62
    assert checks.check_disk_space(tmp_path, warn_bytes=huge, fail_bytes=1).status == "warn"
    low = checks.check_disk_space(tmp_path, warn_bytes=huge, fail_bytes=huge)
    assert low.status == "fail" and isinstance(low.error, errors.DiskSpaceError)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    home = checks.check_home_writable(blocker / "home")
    assert home.status == "fail" and isinstance(home.error, errors.HostError)
    assert checks.check_home_writable(tmp_path / "ok").status == "ok"


def test_optional_tool_checks(tmp_path: Path) -> None:
    assert checks.check_linux_source(tmp_path).status == "warn"
    (tmp_path / "linux-source-6.1.tar.xz").write_bytes(b"")
    assert checks.check_linux_source(tmp_path).status == "ok"
    assert checks.check_virtiofsd(tmp_path / "virtiofsd").status == "warn"
    missing = checks.check_tool("definitely-not-a-tool-xyz", "pkg", "testing")
    assert missing.status == "warn" and "pkg" in missing.fix
