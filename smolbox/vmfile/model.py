"""What a VMFile means: KDL nodes -> validated machine declarations.

Why by hand over the nodes instead of one generic mapping: every mistake must name
where it is (``vm[web].provision[2].source``) and say how to fix it ("did you mean
`memory`?", "memory must be 128-65536 MiB"), and all mistakes of a file are reported
at once so a user fixes them in one pass. Machine fields are finally checked by
:class:`smolbox.config.MachineConfig`, the same model every other front door uses.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from annotated_types import Ge, Le

from smolbox.config import MACHINE_ID_PATTERN, MachineConfig
from smolbox.errors import ValidationError, VMFileValidationError
from smolbox.vmfile.parse import Node, ParsedFile

VM_FIELDS = ("image", "image-url", "vcpus", "memory", "disk", "network", "env", "cloud-init",
             "ssh", "provision")
NETWORK_FIELDS = ("egress", "port", "dns")
CLOUD_INIT_FIELDS = ("hostname", "ssh-key", "user-data")
SSH_FIELDS = ("user", "private-key", "port")
PROVISION_KINDS = ("file", "shell")
_SHA256 = re.compile(r"^(sha256:)?([0-9a-fA-F]{64})$")
_NAME = re.compile(MACHINE_ID_PATTERN)
# VMFile node -> MachineConfig field, for ranges and for mapping errors back to nodes
_CONFIG_FIELDS = {"vcpus": "vcpus", "memory": "memory_mib", "disk": "disk_size_mib"}
_UNITS = {"vcpus": "", "memory": " MiB", "disk": " MiB"}


@dataclass(frozen=True)
class Provisioner:
    """One provisioning step: ``file`` (copy ``source`` to ``destination``) or ``shell``
    (``inline`` commands or a host ``script``); ``index`` counts from 1."""

    index: int
    kind: Literal["file", "shell"]
    source: Path | None = None
    destination: str | None = None
    inline: str | None = None
    script: Path | None = None

    @property
    def label(self) -> str:
        return f"provision {self.index} ({self.kind})"


@dataclass(frozen=True)
class CloudInit:
    """The NoCloud seed smolbox builds for a foreign image."""

    hostname: str | None = None
    ssh_key: Path | None = None
    user_data: Path | None = None


@dataclass(frozen=True)
class SSHSettings:
    """How to log in to a machine without the smolbox agent."""

    user: str = "root"
    private_key: Path | None = None
    port: int = 22


@dataclass(frozen=True)
class MachineDecl:
    """One ``vm`` block, validated."""

    name: str
    config: MachineConfig
    image_url: str | None = None
    image_sha256: str | None = None
    cloud_init: CloudInit | None = None
    ssh: SSHSettings | None = None
    provisioners: tuple[Provisioner, ...] = ()


@dataclass(frozen=True)
class VMFile:
    """A whole VMFile: where it is and the machines it declares, in file order."""

    path: Path
    machines: tuple[MachineDecl, ...]

    def select(self, names: list[str] | tuple[str, ...] = ()) -> tuple[MachineDecl, ...]:
        """The named machines (all when none are named); an unknown name is refused."""
        if not names:
            return self.machines
        known = {m.name: m for m in self.machines}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise VMFileValidationError(
                path=str(self.path), node=f"vm[{unknown[0]}]",
                reason=f"no machine named '{unknown[0]}' is declared",
                hint=_did_you_mean(unknown[0], tuple(known)) or
                f"declared: {', '.join(known) or 'none'}")
        return tuple(known[n] for n in names)


@dataclass
class _Problems:
    path: Path
    found: list[dict[str, str]] = field(default_factory=list)

    def add(self, node: str, reason: str, hint: str = "") -> None:
        self.found.append({"node": node, "reason": reason, "hint": hint})

    def raise_if_any(self) -> None:
        if not self.found:
            return
        first = self.found[0]
        lines = [f"{p['node']}: {p['reason']}" + (f" ({p['hint']})" if p["hint"] else "")
                 for p in self.found]
        more = f" ({len(lines)} problems)" if len(lines) > 1 else ""
        raise VMFileValidationError(
            message=f"{self.path.name}{more}:\n  " + "\n  ".join(lines),
            path=str(self.path), node=first["node"], reason=first["reason"],
            hint=first["hint"] or None,
            details={"errors": self.found},
        )


def _did_you_mean(name: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


def _unknown(problems: _Problems, where: str, name: str, choices: tuple[str, ...]) -> None:
    hint = _did_you_mean(name, choices) or f"known: {', '.join(choices)}"
    problems.add(where, f"unknown field '{name}'", hint)


def _value(value: Any) -> Any:
    """kdl-py gives every number as float; whole numbers become ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _one_arg(problems: _Problems, where: str, node: Node, kind: type,
             props: tuple[str, ...] = ()) -> Any:
    """The single argument of ``node`` if it has the right type, else None (recorded)."""
    if len(node.args) != 1:
        problems.add(where, f"expects one value, got {len(node.args)}")
        return None
    value = _value(node.args[0])
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        problems.add(where, f"expects a whole number, got {value!r}")
        return None
    if kind is str and not isinstance(value, str):
        problems.add(where, f"expects a string, got {value!r}", 'quote it: "..."')
        return None
    if kind is bool and not isinstance(value, bool):
        problems.add(where, f"expects true or false, got {value!r}")
        return None
    for prop in node.props:
        if prop not in props:
            _unknown(problems, f"{where}.{prop}", prop, props or ("(none)",))
    return value


def _range_hint(name: str, value: int) -> str | None:
    """``memory must be 128-65536 MiB`` when ``value`` is outside MachineConfig's range."""
    info = MachineConfig.model_fields[_CONFIG_FIELDS[name]]
    low = next((m.ge for m in info.metadata if isinstance(m, Ge)), None)
    high = next((m.le for m in info.metadata if isinstance(m, Le)), None)
    if (low is not None and value < low) or (high is not None and value > high):  # type: ignore[operator]
        return f"{name} must be {low}-{high}{_UNITS[name]}"
    return None


def _path(base: Path, value: str) -> Path:
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else base / candidate


def _children(problems: _Problems, where: str, node: Node, known: tuple[str, ...],
              handle: Callable[[str, Node], None]) -> None:
    counts: dict[str, int] = {}
    for child in node.nodes:
        counts[child.name] = counts.get(child.name, 0) + 1
        if child.name not in known:
            _unknown(problems, f"{where}.{child.name}", child.name, known)
            continue
        handle(f"{where}.{child.name}", child)


def _network(problems: _Problems, where: str, node: Node,
             config: dict[str, Any]) -> None:
    mode = _one_arg(problems, where, node, str)
    network: dict[str, Any] = {"mode": mode} if mode is not None else {}
    ports: list[dict[str, Any]] = []

    def handle(path: str, child: Node) -> None:
        if child.name == "egress":
            value = _one_arg(problems, path, child, str)
            if value is not None:
                network["egress"] = value
        elif child.name == "dns":
            value = _one_arg(problems, path, child, bool)
            if value is not None:
                network["dns"] = value
        else:
            index = len(ports)
            path = f"{where}.port[{index + 1}]"
            for prop in child.props:
                if prop not in ("host", "guest", "protocol"):
                    _unknown(problems, f"{path}.{prop}", prop, ("host", "guest", "protocol"))
            if "host" not in child.props or "guest" not in child.props:
                problems.add(path, "needs host=PORT and guest=PORT", "port host=8080 guest=8000")
                return
            ports.append({k: _value(v) for k, v in child.props.items()})

    _children(problems, where, node, NETWORK_FIELDS, handle)
    config["network"] = network
    if ports:
        config["ports"] = ports


def _cloud_init(problems: _Problems, where: str, node: Node, base: Path) -> CloudInit:
    values: dict[str, Any] = {}

    def handle(path: str, child: Node) -> None:
        value = _one_arg(problems, path, child, str)
        if value is None:
            return
        if child.name == "hostname":
            values["hostname"] = value
            return
        resolved = _path(base, value)
        if not resolved.is_file():
            problems.add(path, f"file {resolved} does not exist")
        values["ssh_key" if child.name == "ssh-key" else "user_data"] = resolved

    _children(problems, where, node, CLOUD_INIT_FIELDS, handle)
    return CloudInit(**values)


def _ssh(problems: _Problems, where: str, node: Node, base: Path) -> SSHSettings:
    values: dict[str, Any] = {}

    def handle(path: str, child: Node) -> None:
        if child.name == "port":
            port = _one_arg(problems, path, child, int)
            if port is not None and not 1 <= port <= 65535:
                problems.add(path, f"port {port} is outside 1-65535")
            values["port"] = port
        elif child.name == "user":
            values["user"] = _one_arg(problems, path, child, str)
        else:
            key = _one_arg(problems, path, child, str)
            if key is not None:
                values["private_key"] = _path(base, key)
                if not values["private_key"].is_file():
                    problems.add(path, f"file {values['private_key']} does not exist")

    _children(problems, where, node, SSH_FIELDS, handle)
    return SSHSettings(**{k: v for k, v in values.items() if v is not None})


def _provision(problems: _Problems, where: str, node: Node, index: int,
               base: Path) -> Provisioner | None:
    kind = _one_arg(problems, where, node, str)
    if kind is None:
        return None
    if kind not in PROVISION_KINDS:
        problems.add(where, f"unknown provisioner kind '{kind}'",
                     _did_you_mean(kind, PROVISION_KINDS) or "use \"file\" or \"shell\"")
        return None
    known = ("source", "destination") if kind == "file" else ("inline", "script")
    values: dict[str, Any] = {}

    def handle(path: str, child: Node) -> None:
        value = _one_arg(problems, path, child, str)
        if value is None:
            return
        if child.name in ("source", "script"):
            resolved = _path(base, value)
            if not resolved.exists():
                problems.add(path, f"{resolved} does not exist",
                             "relative paths resolve against the VMFile's folder")
            values[child.name] = resolved
        elif child.name == "destination" and not value.startswith("/"):
            problems.add(path, f"destination {value!r} must be an absolute guest path")
        else:
            values[child.name] = value

    _children(problems, where, node, known, handle)
    if kind == "file" and not {"source", "destination"} <= set(values):
        if not any(p["node"].startswith(where + ".") for p in problems.found):
            problems.add(where, "a file provisioner needs source and destination",
                         'provision "file" { source "app/"; destination "/srv/app" }')
        return None
    if kind == "shell" and len({"inline", "script"} & set(values)) != 1:
        if not any(p["node"].startswith(where + ".") for p in problems.found):
            problems.add(where, "a shell provisioner needs exactly one of inline or script")
        return None
    return Provisioner(index=index, kind=kind, **values)


def _machine(problems: _Problems, node: Node, base: Path, seen: set[str]
             ) -> MachineDecl | None:
    name = node.args[0] if len(node.args) == 1 else None
    where = f"vm[{name}]" if isinstance(name, str) else "vm"
    if not isinstance(name, str) or not _NAME.match(name):
        problems.add(where, f"a vm needs one name matching {MACHINE_ID_PATTERN}",
                     'vm "web" { ... }')
        return None
    if name in seen:
        problems.add(where, f"machine '{name}' is declared twice")
    seen.add(name)
    config: dict[str, Any] = {"name": name}
    extras: dict[str, Any] = {}
    provisioners: list[Provisioner] = []
    given: set[str] = set()

    def handle(path: str, child: Node) -> None:
        key = child.name
        if key != "provision" and key != "env" and key in given:
            problems.add(path, f"'{key}' is given twice")
        given.add(key)
        if key in _CONFIG_FIELDS:
            value = _one_arg(problems, path, child, int)
            if value is not None:
                hint = _range_hint(key, value)
                if hint:
                    problems.add(path, f"{key} {value} is out of range", hint)
                else:
                    config[_CONFIG_FIELDS[key]] = value
        elif key == "image":
            value = _one_arg(problems, path, child, str)
            if value is not None:
                config["image"] = value
        elif key == "image-url":
            url = _one_arg(problems, path, child, str, props=("sha256",))
            digest = child.props.get("sha256")
            match = _SHA256.match(digest) if isinstance(digest, str) else None
            if url is not None and not match:
                problems.add(path, "needs sha256=\"<64 hex digits>\"",
                             "pin the download: image-url \"http://…\" sha256=\"…\"")
            if url is not None and match:
                extras["image_url"] = url
                extras["image_sha256"] = match.group(2).lower()
        elif key == "env":
            if child.args or child.nodes:
                problems.add(path, "env takes NAME=\"value\" pairs only", 'env MODE="dev"')
            env = config.setdefault("env", {})
            for env_key, env_value in child.props.items():
                env[env_key] = str(_value(env_value))
        elif key == "network":
            _network(problems, path, child, config)
        elif key == "cloud-init":
            extras["cloud_init"] = _cloud_init(problems, path, child, base)
        elif key == "ssh":
            extras["ssh"] = _ssh(problems, path, child, base)
        else:
            index = len(provisioners) + 1
            step = _provision(problems, f"{where}.provision[{index}]", child, index, base)
            provisioners.append(step if step is not None else Provisioner(index, "shell"))

    _children(problems, where, node, VM_FIELDS, handle)
    if "image" in given and "image-url" in given:
        problems.add(f"{where}.image-url", "give either image or image-url, not both")
    if "image_sha256" in extras:
        config["image"] = f"pulled-{extras['image_sha256'][:12]}"
    try:
        machine_config = MachineConfig.model_validate(config)
    except ValidationError as err:
        for problem in err.details.get("errors", []):
            problems.add(f"{where}.{_node_of(problem['field'])}", problem["message"])
        return None
    return MachineDecl(name=name, config=machine_config, provisioners=tuple(provisioners),
                       **extras)


def _node_of(config_field: str) -> str:
    """``memory_mib`` -> ``memory``, ``ports.0.host`` -> ``network.port[1].host``."""
    parts = config_field.split(".")
    reverse = {v: k for k, v in _CONFIG_FIELDS.items()}
    if parts[0] in reverse:
        return reverse[parts[0]]
    if parts[0] == "ports" and len(parts) > 1 and parts[1].isdigit():
        return ".".join([f"network.port[{int(parts[1]) + 1}]", *parts[2:]])
    return ".".join(parts)


def load_model(parsed: ParsedFile) -> VMFile:
    """Validate a parsed VMFile; every problem is reported in one VMFILE_VALIDATION."""
    problems = _Problems(parsed.path)
    machines: list[MachineDecl] = []
    seen: set[str] = set()
    for node in parsed.nodes:
        if node.name != "vm":
            _unknown(problems, node.name, node.name, ("vm",))
            continue
        machine = _machine(problems, node, parsed.directory, seen)
        if machine is not None:
            machines.append(machine)
    if not parsed.nodes:
        problems.add("(file)", "no vm is declared", 'vm "web" { image "default" }')
    problems.raise_if_any()
    return VMFile(path=parsed.path, machines=tuple(machines))
