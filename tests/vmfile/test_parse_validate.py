"""VMFile parse and validation diagnostics (no VMs): file:line:col with a caret, node
paths with "did you mean", ranges, missing files, and what a valid file becomes."""

from __future__ import annotations

from pathlib import Path

import pytest

from smolbox import errors
from smolbox.vmfile import read
from smolbox.vmfile.digests import declaration_digest, pending_steps, step_digests


def write(folder: Path, text: str) -> Path:
    path = folder / "VMFile.kdl"
    path.write_text(text)
    return path


FULL = """\
// two machines, as in the README
vm "web" {
    image "default"
    vcpus 2
    memory 1024
    disk 4096
    network "user" { egress "open"; port host=18080 guest=8000 }
    env MODE="dev"
    provision "file" { source "app/"; destination "/srv/app" }
    provision "shell" { inline "cd /srv/app && ls" }
    provision "shell" { script "setup.sh" }
}
vm "db" {
    memory 256
}
"""


def test_full_file_becomes_declarations(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print(1)\n")
    (tmp_path / "setup.sh").write_text("echo setup\n")
    vmfile = read(write(tmp_path, FULL))
    web, db = vmfile.machines
    assert (web.name, web.config.vcpus, web.config.memory_mib, web.config.disk_size_mib) == (
        "web", 2, 1024, 4096)
    assert web.config.network.mode == "user" and web.config.network.egress == "open"
    assert web.config.ports[0].host == 18080 and web.config.env == {"MODE": "dev"}
    assert [p.kind for p in web.provisioners] == ["file", "shell", "shell"]
    assert web.provisioners[0].source == tmp_path / "app"  # relative to the file
    assert web.provisioners[2].script == tmp_path / "setup.sh"
    assert db.config.memory_mib == 256 and db.provisioners == ()
    assert vmfile.path == (tmp_path / "VMFile.kdl").resolve()


def test_folder_and_default_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, 'vm "a" { memory 256 }\n')
    assert read(tmp_path).machines[0].name == "a"
    monkeypatch.chdir(tmp_path)
    assert read().machines[0].name == "a"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(errors.VMFileNotFoundError) as caught:
        read(tmp_path / "nope.kdl")
    assert caught.value.code == "VMFILE_NOT_FOUND"
    assert "--file" in caught.value.help and "VMFile.kdl" in caught.value.help


@pytest.mark.parametrize(("text", "line", "column"), [
    ('vm "web" {\n    memory 1024 =\n}\n', 2, 17),
    ('vm "a" { memory 256 }\nvm "b" {\n  image "x\n}\n', 3, 9),
    ('vm "a" { memory 256 } }\n', 1, 23),
    ('vm "a" {\n  memory 256\n', 1, 8),
])
def test_parse_error_has_line_column_and_caret(tmp_path: Path, text: str, line: int,
                                               column: int) -> None:
    with pytest.raises(errors.VMFileParseError) as caught:
        read(write(tmp_path, text))
    err = caught.value
    assert err.code == "VMFILE_PARSE_FAILED"
    assert (err.details["line"], err.details["column"]) == (line, column)
    assert f"VMFile.kdl:{line}:{column}:" in err.message
    shown_line, caret = err.details["snippet"].split("\n")
    assert text.splitlines()[line - 1] in shown_line
    # the caret sits under the column in the shown line
    assert caret.index("^") == shown_line.index("| ") + 2 + column - 1


def problems(tmp_path: Path, text: str) -> list[dict[str, str]]:
    with pytest.raises(errors.VMFileValidationError) as caught:
        read(write(tmp_path, text))
    assert caught.value.code == "VMFILE_VALIDATION"
    found: list[dict[str, str]] = caught.value.details["errors"]
    for problem in found:
        assert problem["node"] in caught.value.message
    return found


def test_unknown_field_suggests(tmp_path: Path) -> None:
    found = problems(tmp_path, 'vm "web" {\n  memroy 1024\n  network "user" { egres "off" }\n}\n')
    assert [(p["node"], p["hint"]) for p in found] == [
        ("vm[web].memroy", "did you mean 'memory'?"),
        ("vm[web].network.egres", "did you mean 'egress'?"),
    ]


def test_ranges_and_types(tmp_path: Path) -> None:
    found = problems(tmp_path, 'vm "a" { memory 64; vcpus 99; disk "big" }\n')
    by_node = {p["node"]: p for p in found}
    assert by_node["vm[a].memory"]["hint"] == "memory must be 128-65536 MiB"
    assert by_node["vm[a].vcpus"]["hint"] == "vcpus must be 1-32"
    assert "whole number" in by_node["vm[a].disk"]["reason"]


def test_every_mistake_named_once(tmp_path: Path) -> None:
    found = problems(tmp_path, """\
vm "Bad Name" { memory 256 }
vm "ok" {
    provision "shel" { inline "x" }
    provision "file" { source "missing/"; destination "relative" }
    provision "shell" { }
    network "wifi"
    image-url "http://127.0.0.1/disk.raw"
}
vm "ok" { memory 256 }
box "x"
""")
    nodes = [p["node"] for p in found]
    assert nodes == [
        "vm[Bad Name]", "vm[ok].provision[1]", "vm[ok].provision[2].source",
        "vm[ok].provision[2].destination", "vm[ok].provision[3]", "vm[ok].image-url",
        "vm[ok].network.mode", "vm[ok]", "box",
    ]
    assert found[1]["hint"] == "did you mean 'shell'?"
    assert found[-1]["hint"] == "known: vm"


def test_digests_change_with_their_inputs(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "a.txt").write_text("1")
    text = ('vm "w" {\n memory 256\n provision "file" { source "app"; destination "/srv" }\n'
            ' provision "shell" { inline "true" }\n}\n')
    first = read(write(tmp_path, text)).machines[0]
    steps = step_digests(first)
    assert pending_steps(steps, steps) == 2 and pending_steps((), steps) == 0
    (tmp_path / "app" / "a.txt").write_text("2")  # file content changes step 1 and on
    again = read(tmp_path).machines[0]
    assert pending_steps(steps, step_digests(again)) == 0
    assert declaration_digest(first) == declaration_digest(again)
    bigger = read(write(tmp_path, text.replace("memory 256", "memory 512"))).machines[0]
    assert declaration_digest(bigger) != declaration_digest(first)


def test_cli_prefixes_streamed_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from smolbox.cli.vmfile import LinePrinter

    printer = LinePrinter()
    printer("web", "provision 2 (shell)", "step", "provision 2 (shell)\n")
    printer("web", "provision 2 (shell)", "stdout", "one\ntw")
    printer("web", "provision 2 (shell)", "stdout", "o\nthree")
    printer.flush()
    assert capsys.readouterr().out.splitlines() == [
        "==> web: provision 2 (shell)", "web | provision 2 (shell) | one",
        "web | provision 2 (shell) | two", "web | provision 2 (shell) | three"]


def test_example_vmfile_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "vmfile"
    vmfile = read(example)
    assert [m.name for m in vmfile.machines] == ["web", "worker"]
    assert vmfile.machines[0].provisioners[2].script == example / "scripts" / "setup.sh"
