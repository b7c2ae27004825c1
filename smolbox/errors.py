"""The one error catalogue every smolbox layer raises from.

Every error carries a stable ``code``, a ``message``, structured ``details``, ``help``
(what to do), an ``http_status`` and ``retryable``, whether it came from the embedded
engine, the REST server or the CLI. ``str(err)`` is ``[CODE] message``;
:func:`from_wire` turns that string, or the REST body ``{"error": {...}}``, back into
the same class, and :func:`error_for_status` names the class for a bare HTTP status.

The catalogue is declarative: a class states its ``code``, ``http_status``,
``retryable``, ``default_help``, a message ``template`` and its ``detail_attrs``
(attributes mirrored into ``details``, so they survive the wire); the one constructor
lives in :class:`SmolboxError`. A class takes its message first
(``ValidationError("bad", field="vcpus")``) unless it sets ``message_first = False``,
then it takes its detail attributes in order and renders the template
(``VMNotFoundError("box")`` -> ``Machine 'box' not found``).

Broad families follow HTTP, so ``except NotFoundError`` catches a missing machine from
the local engine and over HTTP alike::

    SmolboxError
    ├── BadRequestError                         400
    │   └── MethodNotAllowedError               405
    ├── AuthError                               401
    ├── NotFoundError                           404
    │   ├── VMNotFoundError
    │   ├── SnapshotNotFoundError
    │   ├── ImageNotFoundError                  (also ImageError)
    │   └── GuestFileNotFoundError              (also GuestFileError)
    ├── ConflictError                           409
    │   ├── VMAlreadyExistsError
    │   ├── InvalidTransitionError
    │   ├── SnapshotAlreadyExistsError
    │   ├── ImageAlreadyExistsError             (also ImageError)
    │   └── PortInUseError                      (also NetworkError)
    ├── UnprocessableError                      422
    │   └── ValidationError
    │       ├── PayloadTooLargeError            413
    │       ├── InvalidConfigError
    │       ├── NetworkConfigError              (also NetworkError)
    │       └── VMFileError
    │           ├── VMFileNotFoundError         404
    │           ├── VMFileParseError
    │           └── VMFileValidationError
    ├── RateLimitedError                        429
    │   └── MachineBusyError
    ├── InternalError                           500
    ├── UnavailableError                        503
    │   ├── ConnectionError
    │   ├── CapacityExhaustedError
    │   └── NodeLostError
    ├── SnapshotCorruptError · StatePoisonedError · VMCrashedError      500
    ├── ProvisioningError
    ├── SSHError                                502
    ├── HostError
    │   ├── KVMUnavailableError · HostToolMissingError · BackendNotAvailableError  503
    │   ├── DiskSpaceError                      507
    │   └── ProcessGoneError                    410
    ├── NotSupportedError                       501
    ├── NetworkError
    │   ├── NetworkSetupError
    │   │   └── FirewallError
    │   └── IPPoolExhaustedError                503
    ├── ImageError
    │   └── ImageDownloadError · ImageChecksumMismatchError · ImageCacheUnreadableError
    │       ImageCorruptError · ImageFileMissingError · ImageFormatError · ImageConversionError
    │       OverlayCreationError · RootfsError · ImageBuildError
    ├── VMMError
    │   └── QMPError · SpawnError · ShutdownError · JailerError · MetricsError
    ├── GuestAgentError                         502
    │   ├── GuestProtocolError · GuestMetadataError · TransferCorruptError
    │   ├── GuestFileError                      400
    │   └── CommandExecutionUnavailableError    503
    ├── OperationTimeoutError                   408
    │   └── RequestTimeoutError
    └── ExecutionError                          400

The names other systems use (``SmolVMError``, ``TimeoutError``,
``FirecrackerAPIError``, ``KVMUnavailable``…) are aliases, in one block at the end.
"""

from __future__ import annotations

import builtins
import json
import re
import string
from typing import Any, ClassVar, TypeVar

__all__ = [  # noqa: RUF022 - grouped by family, as in DESIGN.md
    "SmolboxError", "SmolVMError", "from_wire", "catalogue", "error_for_status", "BadRequestError",
    "MethodNotAllowedError", "PayloadTooLargeError", "AuthError", "AuthenticationError",
    "NotFoundError", "ConflictError", "UnprocessableError", "RateLimitedError", "MachineBusyError",
    "InternalError",
    "UnavailableError", "ServiceUnavailableError", "ConnectionError", "CapacityExhaustedError",
    "NodeLostError", "RequestTimeoutError", "VMAlreadyExistsError", "VMNotFoundError",
    "InvalidTransitionError", "SnapshotAlreadyExistsError", "SnapshotNotFoundError",
    "SnapshotCorruptError", "StatePoisonedError", "VMCrashedError", "ValidationError",
    "InvalidConfigError", "VMFileError", "VMFileNotFoundError", "VMFileParseError",
    "VMFileValidationError", "ProvisioningError", "SSHError", "HostError", "KVMUnavailableError",
    "KVMUnavailable", "HostToolMissingError", "DiskSpaceError", "ProcessGoneError",
    "BackendNotAvailableError", "BackendNotAvailable", "NotSupportedError", "NetworkError",
    "NetworkConfigError", "NetworkSetupError", "FirewallError", "PortInUseError",
    "IPPoolExhaustedError", "ImageError", "ImageNotFoundError", "ImageAlreadyExistsError",
    "ImageDownloadError", "ImageChecksumMismatchError", "ImageCacheUnreadableError",
    "ImageCorruptError", "ImageFileMissingError", "ImageFormatError", "ImageConversionError",
    "OverlayCreationError",
    "RootfsError", "ImageBuildError", "VMMError", "QMPError", "VMMAPIError", "FirecrackerAPIError",
    "SpawnError", "SpawnFailedError", "ShutdownError", "JailerError", "MetricsError",
    "GuestAgentError", "GuestProtocolError", "TransferCorruptError", "GuestMetadataError",
    "GuestFileError",
    "GuestFileNotFoundError", "CommandExecutionUnavailableError", "OperationTimeoutError",
    "TimeoutError", "ExecutionError",
]

_WIRE_PATTERN = re.compile(r"^\[(?P<code>[A-Z][A-Z0-9_]*)\] (?P<message>.*)$", re.DOTALL)
_REGISTRY: dict[str, type[SmolboxError]] = {}

E = TypeVar("E", bound="SmolboxError")


class _Template(string.Formatter):
    """``str.format`` where a missing (or ``None``) field renders as ``?`` and a list
    renders as its words, so a message never fails to render."""

    def get_value(self, key: int | str, args: Any, kwargs: Any) -> Any:
        value = kwargs.get(key) if isinstance(key, str) else None
        return "?" if value is None else value

    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, list | tuple):
            value = " ".join(str(v) for v in value)
        try:
            return str(super().format_field(value, format_spec))
        except (builtins.ValueError, builtins.TypeError):
            return str(value)


_TEMPLATE = _Template()


class SmolboxError(Exception):
    """An unexpected smolbox error."""
    code: ClassVar[str] = "SMOLBOX_ERROR"
    http_status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False
    default_help: ClassVar[str] = (
        "An unexpected smolbox error. Run `smolbox doctor` and report it with the details."
    )
    #: the message when none is given; alternatives are tried in order, the first whose
    #: fields are all set wins (else the last, with ``?`` for what is missing)
    template: ClassVar[str | tuple[str, ...]] = ""
    #: attributes kept in ``details`` too (full list, inherited as a whole)
    detail_attrs: ClassVar[tuple[str, ...]] = ()
    #: positional arguments: ``(message, *detail_attrs)`` or ``(*detail_attrs, message)``
    message_first: ClassVar[bool] = True
    #: a detail attribute that, when set, is the help (``remediation``)
    help_attr: ClassVar[str | None] = None

    def __init__(self, *args: Any, message: str | None = None,
                 details: dict[str, Any] | None = None, help: str | None = None,
                 **attrs: Any) -> None:
        cls = type(self)
        order = (("message", *cls.detail_attrs) if cls.message_first
                 else (*cls.detail_attrs, "message"))
        if len(args) > len(order):
            raise builtins.TypeError(f"{cls.__name__}() takes at most {len(order)} "
                                     f"positional arguments ({', '.join(order)})")
        unknown = sorted(set(attrs) - set(cls.detail_attrs))
        if unknown:
            raise builtins.TypeError(f"{cls.__name__}() got unexpected {', '.join(unknown)}")
        for name, value in zip(order, args, strict=False):
            if name == "message" and message is None:
                message = value
            elif name != "message" and name not in attrs:
                attrs[name] = value
            else:
                raise builtins.TypeError(f"{cls.__name__}() got {name} twice")
        self.details: dict[str, Any] = dict(details or {})
        for name in cls.detail_attrs:  # given, or restored from ``details``
            value = attrs[name] if name in attrs else self.details.get(name)
            setattr(self, name, value)
            if value is not None:
                self.details[name] = _jsonable(value)
        if help is None and cls.help_attr:
            help = getattr(self, cls.help_attr)
        self.help: str = help or cls.default_help
        self.message: str = message or self._render()
        super().__init__(self.message)

    def _render(self) -> str:
        templates = (self.template,) if isinstance(self.template, str) else self.template
        values = {name: getattr(self, name) for name in self.detail_attrs}
        chosen = ""
        for chosen in templates:
            fields = [f for _, f, _, _ in _TEMPLATE.parse(chosen) if f]
            if all(values.get(f) is not None for f in fields):
                break
        if not chosen:
            return (type(self).__doc__ or self.code).strip()
        return _TEMPLATE.format(chosen, **values)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" not in cls.__dict__:
            raise builtins.TypeError(f"{cls.__name__} must define its own error code")
        if cls.code in _REGISTRY:
            raise builtins.TypeError(
                f"error code {cls.code} used by {_REGISTRY[cls.code].__name__} and {cls.__name__}"
            )
        _REGISTRY[cls.code] = cls

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, details={self.details!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (from_wire, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """The REST error body: ``{"error": {code, message, details, help, retryable}}``."""
        return {"error": {"code": self.code, "message": self.message,
                          "details": _jsonable(self.details), "help": self.help,
                          "retryable": self.retryable}}

    @classmethod
    def _rebuild(cls: type[E], message: str, details: dict[str, Any], help: str | None) -> E:
        """The instance a wire form stands for (attributes restored from ``details``)."""
        return cls(message=message, details=details, help=help)


def _jsonable(value: Any) -> Any:
    """Details must serialise; anything exotic becomes its ``str``."""
    try:
        json.dumps(value)
        return value
    except (builtins.TypeError, builtins.ValueError):
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [_jsonable(v) for v in value]
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return str(value)


_HELP_LIST = "List machines with `smolbox list`; deleted machines cannot be reused."
_HELP_TOOLS = "Install it with `bash scripts/install.sh` (or the Debian package named)."

# --------------------------------------------------------------------------- families
# Broad kinds that match HTTP semantics; concrete errors inherit them too.


class BadRequestError(SmolboxError):
    """The request was malformed."""
    code, http_status = "BAD_REQUEST", 400
    default_help = "Check the request against the API reference (`/v1/openapi.json`)."


class MethodNotAllowedError(BadRequestError):
    """The route exists but not for this HTTP method."""
    code, http_status = "METHOD_NOT_ALLOWED", 405
    default_help = "Use a method the route allows; see /openapi.json."


class AuthError(SmolboxError):
    """The request was not authenticated."""
    code, http_status = "AUTH_FAILED", 401
    default_help = ("Pass the server token: `Authorization: Bearer <token>` or SMOLBOX_TOKEN. "
                    "The server prints where it stored the token on first start.")


class NotFoundError(SmolboxError):
    """The requested resource does not exist."""
    code, http_status = "NOT_FOUND", 404
    default_help = "Check the name or id; `smolbox list` shows what exists."


class ConflictError(SmolboxError):
    """The request conflicts with the current state of a resource."""
    code, http_status = "CONFLICT", 409
    default_help = "Fetch the resource's current state and retry with a compatible operation."


class UnprocessableError(SmolboxError):
    """The request was well-formed but its content was rejected."""
    code, http_status = "UNPROCESSABLE", 422
    default_help = "Fix the rejected fields named in `details` and send the request again."


class RateLimitedError(SmolboxError):
    """Too many requests; the server asks the client to slow down."""
    code, http_status, retryable = "RATE_LIMITED", 429, True
    default_help = "Wait `retry_after` seconds before trying again."
    template = "Rate limited by the smolbox server"
    detail_attrs: ClassVar[tuple[str, ...]] = ("retry_after",)


class MachineBusyError(RateLimitedError):
    """Every slot for calls into this machine is taken (a slow or frozen guest?)."""
    code = "MACHINE_BUSY"
    default_help = ("Wait `retry_after` seconds; if the machine stays busy, check it with "
                    "`smolbox info NAME` (its agent may be frozen) or restart it.")
    template = "Machine '{vm_id}' already has {limit} calls in flight"
    detail_attrs, message_first = ("vm_id", "limit", "retry_after"), False


class InternalError(SmolboxError):
    """The smolbox server failed in an unexpected way."""
    code, http_status = "INTERNAL_ERROR", 500
    default_help = "This is a smolbox bug: report it with the request id from `details`."


class UnavailableError(SmolboxError):
    """The service cannot serve the request right now."""
    code, http_status, retryable = "UNAVAILABLE", 503, True
    default_help = "Try again shortly; check `smolbox doctor` or the server's /readyz."


class ConnectionError(UnavailableError):
    """The smolbox server could not be reached."""
    code = "CONNECTION_ERROR"
    default_help = "Check SMOLBOX_URL and that `smolbox serve` is running and reachable from here."
    template = "Cannot connect to the smolbox server at {url}"
    detail_attrs = ("url",)


class CapacityExhaustedError(UnavailableError):
    """The host (or fleet) has no room for this machine right now."""
    code = "CAPACITY_EXHAUSTED"
    default_help = ("Delete machines you no longer need, ask for less memory or vCPUs, or "
                    "retry after `retry_after` seconds; limits are SMOLBOX_MAX_MACHINES, "
                    "SMOLBOX_MAX_GUEST_MEMORY_MIB and SMOLBOX_MAX_VCPUS.")
    detail_attrs = ("retry_after", "limit")


class NodeLostError(UnavailableError):
    """The node that held this machine stopped answering."""
    code = "NODE_LOST"
    default_help = "Retry; the machine is recreated or reported lost once the node is gone."
    template = "Node '{node}' was lost"
    detail_attrs = ("node", "vm_id")


# -------------------------------------------------------------------------- lifecycle


class VMAlreadyExistsError(ConflictError):
    """A machine with this name already exists."""
    code = "VM_ALREADY_EXISTS"
    default_help = "Pick another name, or delete the existing machine with `smolbox rm NAME`."
    template, detail_attrs, message_first = "Machine '{vm_id}' already exists", ("vm_id",), False


class VMNotFoundError(NotFoundError):
    """No machine with this name or id exists."""
    code, default_help = "VM_NOT_FOUND", _HELP_LIST
    template, detail_attrs, message_first = "Machine '{vm_id}' not found", ("vm_id",), False


class InvalidTransitionError(ConflictError):
    """The machine cannot go from its current state to the requested one."""
    code = "INVALID_TRANSITION"
    default_help = ("Bring the machine into a state that allows this operation first "
                    "(e.g. `smolbox resume` a paused machine before exec).")
    template = "Machine '{vm_id}' cannot go from {from_state} to {to_state}"
    detail_attrs, message_first = ("vm_id", "from_state", "to_state"), False


class SnapshotAlreadyExistsError(ConflictError):
    """A snapshot with this name already exists."""
    code = "SNAPSHOT_ALREADY_EXISTS"
    default_help = "Choose another snapshot name or delete the old one first."
    template = "Snapshot '{snapshot_id}' already exists"
    detail_attrs, message_first = ("vm_id", "snapshot_id"), False


class SnapshotNotFoundError(NotFoundError):
    """No snapshot with this name exists."""
    code, default_help = "SNAPSHOT_NOT_FOUND", "List snapshots with `smolbox snapshot list`."
    template = "Snapshot '{snapshot_id}' not found"
    detail_attrs, message_first = ("vm_id", "snapshot_id"), False


class SnapshotCorruptError(SmolboxError):
    """A snapshot's files are missing or do not match their manifest."""
    code = "SNAPSHOT_CORRUPT"
    default_help = ("The snapshot was modified or damaged on disk. Delete it "
                    "(`smolbox snapshot rm NAME`) and take a new one.")


class StatePoisonedError(SmolboxError):
    """The machine's recorded state no longer matches reality and cannot be trusted."""
    code = "STATE_POISONED"
    default_help = "Delete the machine (`smolbox rm --force NAME`) and create a new one."
    template = "State of machine '{vm_id}' is poisoned: {reason}"
    detail_attrs, message_first = ("vm_id", "reason"), False


class VMCrashedError(SmolboxError):
    """The machine's VMM process died or the guest stopped answering unexpectedly."""
    code = "VM_CRASHED"
    default_help = ("Read the console tail in `details` or `smolbox logs NAME`; then delete "
                    "the machine. Frequent crashes may mean too little memory for the workload.")
    template = "Machine '{vm_id}' crashed: {reason}"
    detail_attrs, message_first = ("vm_id", "reason"), False


# ----------------------------------------------------------------------------- config


class ValidationError(UnprocessableError):
    """A configuration value or argument is invalid."""
    code = "VALIDATION_ERROR"
    default_help = "Fix the field named in `details.field`; `smolbox create --help` lists limits."
    detail_attrs: ClassVar[tuple[str, ...]] = ("field", "value")


class PayloadTooLargeError(ValidationError):
    """A request or response body is larger than the server allows."""
    code, http_status = "PAYLOAD_TOO_LARGE", 413
    default_help = "Split the data, or start the server with a larger size limit."


class InvalidConfigError(ValidationError):
    """A machine configuration is invalid as a whole."""
    code = "INVALID_CONFIG"


class VMFileError(ValidationError):
    """A machine definition file could not be used."""
    code = "VMFILE_ERROR"
    detail_attrs: ClassVar[tuple[str, ...]] = ("path", "field", "value")


class VMFileNotFoundError(VMFileError):
    """The machine definition file does not exist."""
    code, http_status = "VMFILE_NOT_FOUND", 404
    default_help = "Create `VMFile.kdl` in this directory, or pass `--file PATH`."
    template = "No VMFile at {path}"


class VMFileParseError(VMFileError):
    """The machine definition file is not valid KDL."""
    code = "VMFILE_PARSE_FAILED"
    default_help = "Fix the syntax at the line and column shown (KDL: https://kdl.dev)."
    template = "{path}:{line}:{column}: {reason}"
    detail_attrs = ("path", "line", "column", "reason", "snippet")


class VMFileValidationError(VMFileError):
    """The machine definition file parsed but holds invalid values."""
    code = "VMFILE_VALIDATION"
    default_help = "Fix each node named in `details.errors` (node path, problem, hint)."
    template = "{path}: {node}: {reason}"
    detail_attrs = ("path", "node", "reason", "hint", "field", "value")


class ProvisioningError(SmolboxError):
    """A provisioning step inside a machine failed; the machine is kept for inspection."""
    code = "PROVISION_FAILED"
    default_help = ("Read the step's stderr tail in `details`, inspect the machine with "
                    "`smolbox exec NAME` or `smolbox shell NAME`, fix the step and run "
                    "`smolbox up` again (it resumes at the failed step).")
    template = ("Machine '{vm_id}': provision step {step} ({kind}) exited with {exit_code}",
                "Machine '{vm_id}': provision step {step} ({kind}) failed: {reason}")
    detail_attrs, message_first = (
        "vm_id", "step", "kind", "exit_code", "reason", "stderr_tail"), False


class SSHError(SmolboxError):
    """Reaching or using a machine over SSH failed (foreign images without the agent)."""
    code, http_status = "SSH_FAILED", 502
    default_help = ("Check that the guest runs sshd, that cloud-init installed the key, and "
                    "the console with `smolbox logs NAME`. Host keys are pinned: a changed "
                    "host key is refused, never accepted.")
    template = "SSH to '{vm_id}' failed: {reason}"
    detail_attrs, message_first = ("vm_id", "reason", "host", "port"), False


# ------------------------------------------------------------------------------- host


class HostError(SmolboxError):
    """The host cannot run smolbox machines as configured."""
    code = "HOST_ERROR"
    default_help = "Run `smolbox doctor` to see which host check fails and how to fix it."


class KVMUnavailableError(HostError):
    """KVM cannot run guests here; smolbox falls back to software emulation (TCG)."""
    code, http_status = "KVM_UNAVAILABLE", 503
    default_help = ("Machines still run under TCG, only slower. For hardware speed, run on a "
                    "host where `smolbox doctor` reports kvm_usable: true.")
    template, detail_attrs, message_first = "KVM is not usable: {reason}", ("reason",), False


class HostToolMissingError(HostError):
    """A host program smolbox needs is not installed."""
    code, http_status, default_help = "HOST_TOOL_MISSING", 503, _HELP_TOOLS
    template = ("Required host tool '{tool}' not found (Debian package {package})",
                "Required host tool '{tool}' not found")
    detail_attrs, message_first = ("tool", "package"), False


class DiskSpaceError(HostError):
    """Not enough free disk space for smolbox's data."""
    code, http_status = "DISK_SPACE_LOW", 507
    default_help = "Free disk space, or point SMOLBOX_HOME at a larger disk."
    detail_attrs = ("path", "free_bytes")


class ProcessGoneError(HostError):
    """A host process smolbox tracks has exited, or its pid now belongs to another program."""
    code, http_status = "PROCESS_GONE", 410
    default_help = ("The process is no longer running (a reused pid is never signalled). "
                    "`smolbox list` shows the machine's recorded state; delete and recreate "
                    "it if needed.")
    template, detail_attrs, message_first = "Process {pid} is gone", ("pid", "start_time"), False


class BackendNotAvailableError(HostError):
    """The requested backend (accelerator, engine or server) cannot be used."""
    code, http_status = "BACKEND_NOT_AVAILABLE", 503
    default_help = "Use the default backend, or install what `smolbox doctor` reports missing."


class NotSupportedError(SmolboxError):
    """The operation is not supported by this backend or configuration."""
    code, http_status = "NOT_SUPPORTED", 501
    default_help = "See `details.reason`; the README lists what each backend supports."
    detail_attrs = ("operation", "reason")


# ---------------------------------------------------------------------------- network


class NetworkError(SmolboxError):
    """A machine network could not be used."""
    code = "NETWORK_ERROR"
    default_help = "Run `smolbox doctor`; networking modes other than `none` need host support."


class NetworkConfigError(NetworkError, ValidationError):
    """A network setting is invalid; nothing on the host was changed."""
    code, http_status = "NETWORK_CONFIG_INVALID", 422
    default_help = "Fix the network field named in `details.field`."


class NetworkSetupError(NetworkError):
    """Setting up the host side of a machine's network failed."""
    code = "NETWORK_SETUP_FAILED"
    default_help = ("`details.step` names the failing step. TAP networking needs root or "
                    "CAP_NET_ADMIN; use network mode `user` otherwise.")
    detail_attrs = ("step",)


class FirewallError(NetworkSetupError):
    """Installing or removing a machine's nftables egress policy failed."""
    code = "FIREWALL_ERROR"
    default_help = "Check that nftables is installed (`nft --version`) and smolbox runs as root."


class PortInUseError(NetworkError, ConflictError):
    """A host port for a port forward is already taken."""
    code, http_status, retryable = "PORT_IN_USE", 409, True
    default_help = "Pick another host port, or stop what listens on it."
    template, detail_attrs, message_first = "Host port {port} is already in use", ("port",), False


class IPPoolExhaustedError(NetworkError):
    """Every guest address in the pool is leased."""
    code, http_status, retryable = "IP_POOL_EXHAUSTED", 503, True
    default_help = "Delete machines you no longer need, or configure a larger network pool."


# ----------------------------------------------------------------------------- images


class ImageError(SmolboxError):
    """A guest image could not be used."""
    code, default_help = "IMAGE_ERROR", "Rebuild the image with `smolbox image build`."
    detail_attrs = ("image",)


class ImageNotFoundError(ImageError, NotFoundError):
    """No image with this name/version in the catalogue."""
    code, http_status = "IMAGE_NOT_FOUND", 404
    default_help = "List images with `smolbox image list`, or build one with `smolbox image build`."


class ImageAlreadyExistsError(ImageError, ConflictError):
    """An image with this name/version is already installed."""
    code, http_status = "IMAGE_ALREADY_EXISTS", 409
    default_help = "Remove it first with `smolbox image rm`, or choose another name."


class ImageDownloadError(ImageError):
    """Fetching an image or package failed."""
    code, retryable = "IMAGE_DOWNLOAD_FAILED", True
    default_help = "Check the URL and the network, then retry."


class ImageChecksumMismatchError(ImageError):
    """An image file's SHA-256 differs from its manifest."""
    code = "IMAGE_CHECKSUM_MISMATCH"
    default_help = ("The file was changed or corrupted. Remove the image (`smolbox image rm`) "
                    "and rebuild or re-import it.")


class ImageCacheUnreadableError(ImageError):
    """The image catalogue directory cannot be read."""
    code = "IMAGE_CACHE_UNREADABLE"
    default_help = "Check permissions of the image directory (SMOLBOX_IMAGES)."


class ImageCorruptError(ImageError):
    """An image file or archive is damaged (truncated, bad manifest)."""
    code, default_help = "IMAGE_CORRUPT", "Re-create the archive or image and import it again."


class ImageFileMissingError(ImageError):
    """A file the image manifest lists is missing."""
    code = "IMAGE_FILE_MISSING"
    default_help = "Remove the image with `smolbox image rm` and rebuild or re-import it."


class ImageFormatError(ImageError):
    """An image's format could not be detected or is not supported."""
    code = "IMAGE_FORMAT_UNKNOWN"
    default_help = ("Supported: smolbox image archives, `docker save` tarballs, OCI layouts, "
                    "and raw or qcow2 disks for `smolbox image pull`.")


class ImageConversionError(ImageError):
    """Converting a disk image to the catalogue's format (``qemu-img convert``) failed."""
    code = "IMAGE_CONVERSION_FAILED"
    default_help = "Read qemu-img's output in `details.stderr`; the source may be damaged."


class OverlayCreationError(ImageError):
    """Creating a machine's copy-on-write disk overlay failed."""
    code = "OVERLAY_CREATION_FAILED"
    default_help = "Check free disk space and that qemu-img is installed."


class RootfsError(ImageError):
    """Building or preparing a root filesystem failed."""
    code = "ROOTFS_ERROR"
    default_help = "Read the tool output in `details`; check the host's apt sources and disk space."


class ImageBuildError(ImageError):
    """A kernel or image build step failed."""
    code = "IMAGE_BUILD_FAILED"
    default_help = "Read the build log named in `details.log` and fix the failing step."


# -------------------------------------------------------------------------------- VMM


class VMMError(SmolboxError):
    """The virtual machine monitor (QEMU) failed."""
    code, default_help = "VMM_ERROR", "Read the console tail in `details` or `smolbox logs NAME`."


class QMPError(VMMError):
    """A QMP command returned an error (the VMM API error)."""
    code, detail_attrs = "QMP_ERROR", ("status_code", "qmp_class", "command")


class SpawnError(VMMError):
    """The VMM process could not be started."""
    code = "SPAWN_FAILED"
    default_help = "Read QEMU's stderr in `details.stderr`; `smolbox doctor` checks QEMU."


class ShutdownError(VMMError):
    """Stopping a machine failed at a step of the shutdown ladder."""
    code = "SHUTDOWN_FAILED"
    default_help = "`details.step` names the step; `smolbox rm --force NAME` kills it."
    detail_attrs = ("vm_id", "step")


class JailerError(VMMError):
    """Isolating the VMM process (namespaces, limits, privileges) failed."""
    code = "JAILER_ERROR"
    default_help = ("`details.step` names the layer that failed (uid, namespace, mount, "
                    "chroot, cgroup, seccomp); `smolbox doctor` shows which layers this "
                    "host supports.")
    detail_attrs = ("step",)


class MetricsError(VMMError):
    """Reading a machine's metrics failed."""
    code, retryable = "METRICS_ERROR", True
    default_help = "Retry; if it persists the machine may have stopped."


# ------------------------------------------------------------------------------ guest


class GuestAgentError(SmolboxError):
    """The in-guest agent failed or misbehaved (502: the guest is the server's upstream,
    and a broken guest is not a smolbox bug)."""
    code, http_status = "GUEST_AGENT_ERROR", 502
    default_help = "Read the console tail with `smolbox logs NAME`; restart the machine."
    detail_attrs: ClassVar[tuple[str, ...]] = ("vm_id",)


class GuestProtocolError(GuestAgentError):
    """The guest sent a malformed, oversized or out-of-order frame."""
    code = "GUEST_PROTOCOL_ERROR"
    default_help = ("The guest broke the agent protocol (it may be compromised or its agent "
                    "outdated). Delete the machine; rebuild the image if it happens on fresh "
                    "machines.")


class GuestMetadataError(GuestAgentError):
    """Reading or setting guest metadata (env, hostname, identity) failed."""
    code = "GUEST_METADATA_ERROR"


class GuestFileError(GuestAgentError):
    """A file operation inside the guest failed."""
    code, http_status = "GUEST_FILE_ERROR", 400
    default_help = "Check the guest path and its permissions."
    detail_attrs = ("vm_id", "path", "errno")


class GuestFileNotFoundError(GuestFileError, NotFoundError):
    """The guest path does not exist."""
    code, http_status = "GUEST_FILE_NOT_FOUND", 404
    default_help = "Check the path; list a directory with `machine.files.list()`."


class TransferCorruptError(GuestAgentError):
    """A file transfer's checksum did not match: the bytes changed on the way."""
    code, http_status, retryable = "TRANSFER_CORRUPT", 502, True
    default_help = ("Nothing was written (uploads are discarded, downloads not kept); "
                    "retry. If it repeats, something inside the guest is writing to its "
                    "transfer disk: delete the machine.")
    template = "Transfer of '{path}' was corrupted on the way ({transport})"
    detail_attrs, message_first = ("path", "offset", "transport", "vm_id"), False


class CommandExecutionUnavailableError(GuestAgentError):
    """Commands cannot run because the guest agent is not reachable."""
    code, http_status, retryable = "COMMAND_EXECUTION_UNAVAILABLE", 503, True
    default_help = ("Wait for the machine to finish booting, or restart it with `smolbox stop` "
                    "and `smolbox start`; check `smolbox logs NAME` for a guest crash.")
    template = "Cannot run commands in '{vm_id}': {reason}"
    detail_attrs, message_first = ("vm_id", "reason", "remediation"), False
    help_attr = "remediation"


# --------------------------------------------------------------------- time and exec


class OperationTimeoutError(SmolboxError):
    """An operation did not finish within its timeout."""
    code, http_status, retryable = "OPERATION_TIMEOUT", 408, True
    default_help = "Raise the timeout for this operation, or check why it is slow."
    template = "{operation} did not finish within {timeout_seconds:g} s"
    detail_attrs, message_first = ("operation", "timeout_seconds"), False


class RequestTimeoutError(OperationTimeoutError):
    """The request timed out (HTTP 408, from the server or a proxy)."""
    code, template, message_first = "REQUEST_TIMEOUT", "", True


class ExecutionError(SmolboxError):
    """A command in the guest exited unsuccessfully (from ``ExecResult.assert_success``)."""
    code, http_status = "EXECUTION_FAILED", 400
    default_help = "Read `details.stderr`; the command itself failed, the machine is fine."
    template = "Command `{command}` exited with {exit_code}"
    detail_attrs, message_first = ("command", "exit_code", "stdout", "stderr"), False


# --------------------------------------------------------------------------- the wire

_STATUS_FALLBACK: dict[int, type[SmolboxError]] = {
    400: BadRequestError, 401: AuthError, 403: AuthError, 404: NotFoundError,
    405: MethodNotAllowedError, 408: RequestTimeoutError, 409: ConflictError,
    413: PayloadTooLargeError, 422: UnprocessableError, 429: RateLimitedError,
    500: InternalError, 501: NotSupportedError,
    502: UnavailableError, 503: UnavailableError, 504: UnavailableError,
}


def catalogue() -> dict[str, type[SmolboxError]]:
    """Every error class by its code (a copy: the registry itself stays private)."""
    return dict(_REGISTRY)


def error_for_status(status: int) -> type[SmolboxError]:
    """The class for an HTTP status without a smolbox body; it builds from ``(message)``."""
    if status in _STATUS_FALLBACK:
        return _STATUS_FALLBACK[status]
    return BadRequestError if 400 <= status < 500 else InternalError


def from_wire(wire: str | bytes | dict[str, Any]) -> SmolboxError:
    """Turn ``[CODE] message`` or a REST error body back into the catalogue class.

    An unknown code still yields a :class:`SmolboxError` whose ``code`` is the one
    received, so newer servers do not break older clients.
    """
    if isinstance(wire, bytes):
        wire = wire.decode("utf-8", "replace")
    if isinstance(wire, str):
        stripped = wire.strip()
        if stripped.startswith("{"):
            try:
                return from_wire(json.loads(stripped))
            except builtins.ValueError:
                pass
        match = _WIRE_PATTERN.match(stripped)
        if not match:
            return InternalError(f"Unrecognised error text: {stripped[:200]}")
        return _build(match["code"], match["message"], {}, None)
    body = wire.get("error", wire)
    if not isinstance(body, dict) or "code" not in body:
        return InternalError(f"Unrecognised error body: {str(wire)[:200]}")
    details = body.get("details") or {}
    return _build(str(body["code"]), str(body.get("message", "")),
                  details if isinstance(details, dict) else {"details": details},
                  body.get("help"))


def _build(code: str, message: str, details: dict[str, Any], help: str | None) -> SmolboxError:
    cls = _REGISTRY.get(code)
    if cls is not None:
        return cls._rebuild(message, details, help)
    err = SmolboxError._rebuild(message, details, help)
    setattr(err, "code", code)  # noqa: B010 - keep an unknown code visible to the caller
    return err


# ---------------------------------------------------------------------------- aliases
# Names other systems (SmolVM, Firecracker, httpx-style SDKs) use for the same errors.

SmolVMError = SmolboxError
AuthenticationError = AuthError
ServiceUnavailableError = UnavailableError
KVMUnavailable = KVMUnavailableError
BackendNotAvailable = BackendNotAvailableError
VMMAPIError = FirecrackerAPIError = QMPError
SpawnFailedError = SpawnError
TimeoutError = OperationTimeoutError
