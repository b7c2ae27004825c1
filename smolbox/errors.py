"""The one error catalogue every smolbox layer raises from.

Why one module: a user who runs untrusted code needs to branch on *what* went
wrong (``err.code``), learn *what to do* (``err.help``) and know whether trying
again can help (``err.retryable``) — the same way whether the error came from the
embedded engine, the REST server or the CLI. So every error carries a stable
``code``, a ``message``, structured ``details``, ``help``, an ``http_status`` and
``retryable``; ``str(err)`` is ``[CODE] message`` and :func:`from_wire` turns that
string, or the REST body ``{"error": {...}}``, back into the same class.

The hierarchy follows httpx's idea: broad families (``NotFoundError``,
``ConflictError``…) that lifecycle errors also inherit, so ``except NotFoundError``
catches a missing VM whether it came from the local engine or over HTTP.

Names of the systems smolbox replaces (SmolVM-style ``SmolVMError``,
Firecracker-style ``FirecrackerAPIError``, ``TimeoutError``…) are kept as aliases.
"""

from __future__ import annotations

import builtins
import json
import re
from typing import Any, ClassVar, TypeVar

__all__ = [  # noqa: RUF022 - grouped by family, as in DESIGN.md
    "SmolboxError", "SmolVMError", "from_wire", "catalogue", "error_for_status",
    # families usable across transports
    "BadRequestError", "MethodNotAllowedError", "PayloadTooLargeError", "AuthError",
    "AuthenticationError", "PermissionDeniedError",
    "NotFoundError", "ConflictError", "UnprocessableError", "RateLimitedError",
    "InternalError", "UnavailableError", "ServiceUnavailableError", "ConnectionError",
    "CapacityExhaustedError",
    "RequestTimeoutError",
    # lifecycle
    "LifecycleError", "VMAlreadyExistsError", "VMNotFoundError", "InvalidTransitionError",
    "SnapshotAlreadyExistsError", "SnapshotNotFoundError", "SnapshotCorruptError",
    "StatePoisonedError",
    "VMCrashedError",
    # config
    "ValidationError", "InvalidConfigError", "VMFileError", "VMFileNotFoundError",
    "VMFileParseError", "VMFileValidationError", "ProvisioningError",
    # host
    "HostError", "KVMUnavailableError", "KVMUnavailable", "HostToolMissingError",
    "DiskSpaceError", "ProcessGoneError", "BackendNotAvailableError", "BackendNotAvailable",
    "NotSupportedError",
    # network
    "NetworkError", "NetworkConfigError", "NetworkSetupError", "FirewallError",
    "PortInUseError", "IPPoolExhaustedError",
    # images
    "ImageError", "ImageNotFoundError", "ImageAlreadyExistsError", "ImageDownloadError",
    "ImageChecksumMismatchError", "ImageCacheUnreadableError", "ImageCorruptError",
    "ImageFileMissingError", "ImageFormatError", "OverlayCreationError", "RootfsError",
    "ImageBuildError",
    # VMM
    "VMMError", "QMPError", "VMMAPIError", "FirecrackerAPIError", "SpawnError",
    "SpawnFailedError", "ShutdownError", "JailerError", "MetricsError",
    # guest
    "GuestAgentError", "GuestProtocolError", "GuestMetadataError", "GuestFileError",
    "GuestFileNotFoundError", "CommandExecutionUnavailableError",
    # time and exec
    "OperationTimeoutError", "TimeoutError", "ExecutionError",
]

_WIRE_PATTERN = re.compile(r"^\[(?P<code>[A-Z][A-Z0-9_]*)\] (?P<message>.*)$", re.DOTALL)
_REGISTRY: dict[str, type[SmolboxError]] = {}

E = TypeVar("E", bound="SmolboxError")


class SmolboxError(Exception):
    """Base of every smolbox error.

    Subclasses set the class-level ``code``/``http_status``/``retryable``/
    ``default_help`` and may name ``detail_attrs``: attributes that live in
    ``details`` too, so they survive a trip over the wire.
    """

    code: ClassVar[str] = "SMOLBOX_ERROR"
    http_status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False
    default_help: ClassVar[str] = (
        "An unexpected smolbox error. Run `smolbox doctor` and report it with the details."
    )
    detail_attrs: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        help: str | None = None,
    ) -> None:
        self.message = message or self.__class__.__doc__ or self.code
        self.details: dict[str, Any] = dict(details or {})
        self.help = help or self.default_help
        for name in self._all_detail_attrs():  # attributes given through ``details``
            if not hasattr(self, name):
                setattr(self, name, self.details.get(name))
        super().__init__(self.message)

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
        return f"{self.__class__.__name__}({self.message!r}, details={self.details!r})"

    def _remember(self, **attrs: Any) -> None:
        """Set attributes and mirror them into ``details`` (kept JSON-friendly)."""
        for name, value in attrs.items():
            setattr(self, name, value)
            self.details[name] = value

    def to_dict(self) -> dict[str, Any]:
        """The REST error body: ``{"error": {code, message, details, help}}``."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "details": _jsonable(self.details),
                "help": self.help,
                "retryable": self.retryable,
            }
        }

    @classmethod
    def _rebuild(cls: type[E], message: str, details: dict[str, Any], help: str | None) -> E:
        """Recreate an instance without calling a subclass ``__init__`` signature."""
        err = cls.__new__(cls)
        SmolboxError.__init__(err, message, details=details, help=help)
        for name in cls._all_detail_attrs():
            setattr(err, name, details.get(name))
        return err

    @classmethod
    def _all_detail_attrs(cls) -> list[str]:
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            for name in vars(klass).get("detail_attrs", ()):
                if name not in names:
                    names.append(name)
        return names


SmolVMError = SmolboxError


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


# --------------------------------------------------------------------------- families
# Broad kinds that match HTTP semantics; concrete errors inherit them too.


class BadRequestError(SmolboxError):
    """The request was malformed."""

    code = "BAD_REQUEST"
    http_status = 400
    default_help = "Check the request against the API reference (`/v1/openapi.json`)."


class MethodNotAllowedError(BadRequestError):
    """The route exists but not for this HTTP method."""

    code = "METHOD_NOT_ALLOWED"
    http_status = 405
    default_help = "Use a method the route allows; see /openapi.json."


class AuthError(SmolboxError):
    """The request was not authenticated."""

    code = "AUTH_FAILED"
    http_status = 401
    default_help = (
        "Pass the server token: `Authorization: Bearer <token>` or SMOLBOX_TOKEN. "
        "The server prints where it stored the token on first start."
    )


AuthenticationError = AuthError


class PermissionDeniedError(AuthError):
    """The credentials do not allow this operation."""

    code = "PERMISSION_DENIED"
    http_status = 403
    default_help = "Use a token that is allowed to perform this operation."


class NotFoundError(SmolboxError):
    """The requested resource does not exist."""

    code = "NOT_FOUND"
    http_status = 404
    default_help = "Check the name or id; `smolbox list` shows what exists."


class ConflictError(SmolboxError):
    """The request conflicts with the current state of a resource."""

    code = "CONFLICT"
    http_status = 409
    default_help = "Fetch the resource's current state and retry with a compatible operation."


class UnprocessableError(SmolboxError):
    """The request was well-formed but its content was rejected."""

    code = "UNPROCESSABLE"
    http_status = 422
    default_help = "Fix the rejected fields named in `details` and send the request again."


class RateLimitedError(SmolboxError):
    """Too many requests; the server asks the client to slow down."""

    code = "RATE_LIMITED"
    http_status = 429
    retryable = True
    default_help = "Wait `retry_after` seconds before trying again."
    detail_attrs: ClassVar[tuple[str, ...]] = ("retry_after",)

    def __init__(self, message: str | None = None, *, retry_after: float | None = None,
                 details: dict[str, Any] | None = None, help: str | None = None) -> None:
        super().__init__(message or "Rate limited by the smolbox server", details=details,
                         help=help)
        self._remember(retry_after=retry_after)


class InternalError(SmolboxError):
    """The smolbox server failed in an unexpected way."""

    code = "INTERNAL_ERROR"
    http_status = 500
    default_help = "This is a smolbox bug: report it with the request id from `details`."


class UnavailableError(SmolboxError):
    """The service cannot serve the request right now."""

    code = "UNAVAILABLE"
    http_status = 503
    retryable = True
    default_help = "Try again shortly; check `smolbox doctor` or the server's /readyz."


ServiceUnavailableError = UnavailableError


class ConnectionError(UnavailableError):
    """The smolbox server could not be reached."""

    code = "CONNECTION_ERROR"
    default_help = (
        "Check SMOLBOX_URL and that `smolbox serve` is running and reachable from here."
    )
    detail_attrs: ClassVar[tuple[str, ...]] = ("url",)

    def __init__(self, message: str | None = None, *, url: str | None = None,
                 details: dict[str, Any] | None = None, help: str | None = None) -> None:
        super().__init__(message or f"Cannot connect to the smolbox server at {url}",
                         details=details, help=help)
        self._remember(url=url)


class CapacityExhaustedError(UnavailableError):
    """The host (or fleet) has no room for this machine right now."""

    code = "CAPACITY_EXHAUSTED"
    http_status = 503
    retryable = True
    default_help = ("Delete machines you no longer need, ask for less memory or vCPUs, or "
                    "retry after `retry_after` seconds; limits are SMOLBOX_MAX_MACHINES, "
                    "SMOLBOX_MAX_GUEST_MEMORY_MIB and SMOLBOX_MAX_VCPUS.")
    detail_attrs: ClassVar[tuple[str, ...]] = ("retry_after", "limit")


# -------------------------------------------------------------------------- lifecycle


class LifecycleError(SmolboxError):
    """A machine or snapshot lifecycle operation failed."""

    code = "LIFECYCLE_ERROR"
    http_status = 409
    default_help = "Check the machine's state with `smolbox info NAME`."


class VMAlreadyExistsError(LifecycleError, ConflictError):
    """A machine with this name already exists."""

    code = "VM_ALREADY_EXISTS"
    http_status = 409
    default_help = "Pick another name, or delete the existing machine with `smolbox rm NAME`."
    detail_attrs: ClassVar[tuple[str, ...]] = ("vm_id",)

    def __init__(self, vm_id: str, message: str | None = None, **kw: Any) -> None:
        super().__init__(message or f"Machine '{vm_id}' already exists", **kw)
        self._remember(vm_id=vm_id)


class VMNotFoundError(LifecycleError, NotFoundError):
    """No machine with this name or id exists."""

    code = "VM_NOT_FOUND"
    http_status = 404
    default_help = "List machines with `smolbox list`; deleted machines cannot be reused."
    detail_attrs: ClassVar[tuple[str, ...]] = ("vm_id",)

    def __init__(self, vm_id: str, message: str | None = None, **kw: Any) -> None:
        super().__init__(message or f"Machine '{vm_id}' not found", **kw)
        self._remember(vm_id=vm_id)


class InvalidTransitionError(LifecycleError, ConflictError):
    """The machine cannot go from its current state to the requested one."""

    code = "INVALID_TRANSITION"
    http_status = 409
    default_help = (
        "Bring the machine into a state that allows this operation first "
        "(e.g. `smolbox resume` a paused machine before exec)."
    )
    detail_attrs: ClassVar[tuple[str, ...]] = ("vm_id", "from_state", "to_state")

    def __init__(self, vm_id: str, from_state: str, to_state: str,
                 message: str | None = None, **kw: Any) -> None:
        super().__init__(
            message or f"Machine '{vm_id}' cannot go from {from_state} to {to_state}", **kw
        )
        self._remember(vm_id=vm_id, from_state=from_state, to_state=to_state)


class SnapshotAlreadyExistsError(LifecycleError, ConflictError):
    """A snapshot with this name already exists."""

    code = "SNAPSHOT_ALREADY_EXISTS"
    http_status = 409
    default_help = "Choose another snapshot name or delete the old one first."
    detail_attrs: ClassVar[tuple[str, ...]] = ("vm_id", "snapshot_id")

    def __init__(self, vm_id: str | None, snapshot_id: str, message: str | None = None,
                 **kw: Any) -> None:
        super().__init__(message or f"Snapshot '{snapshot_id}' already exists", **kw)
        self._remember(vm_id=vm_id, snapshot_id=snapshot_id)


class SnapshotNotFoundError(LifecycleError, NotFoundError):
    """No snapshot with this name exists."""

    code = "SNAPSHOT_NOT_FOUND"
    http_status = 404
    default_help = "List snapshots with `smolbox snapshot list`."
    detail_attrs: ClassVar[tuple[str, ...]] = ("vm_id", "snapshot_id")

    def __init__(self, vm_id: str | None, snapshot_id: str, message: str | None = None,
                 **kw: Any) -> None:
        super().__init__(message or f"Snapshot '{snapshot_id}' not found", **kw)
        self._remember(vm_id=vm_id, snapshot_id=snapshot_id)


class SnapshotCorruptError(LifecycleError):
    """A snapshot's files are missing or do not match their manifest."""

    code = "SNAPSHOT_CORRUPT"
    http_status = 500
    default_help = (
        "The snapshot was modified or damaged on disk. Delete it "
        "(`smolbox snapshot rm NAME`) and take a new one."
    )


class StatePoisonedError(LifecycleError):
    """The machine's recorded state no longer matches reality and cannot be trusted."""

    code = "STATE_POISONED"
    http_status = 500
    default_help = "Delete the machine (`smolbox rm --force NAME`) and create a new one."
    detail_attrs: ClassVar[tuple[str, ...]] = ("vm_id", "reason")

    def __init__(self, vm_id: str | None = None, reason: str | None = None,
                 message: str | None = None, **kw: Any) -> None:
        super().__init__(message or f"State of machine '{vm_id}' is poisoned: {reason}", **kw)
        self._remember(vm_id=vm_id, reason=reason)


class VMCrashedError(LifecycleError):
    """The machine's VMM process died or the guest stopped answering unexpectedly."""

    code = "VM_CRASHED"
    http_status = 500
    default_help = (
        "Read the console tail in `details` or `smolbox logs NAME`; then delete the machine. "
        "Frequent crashes may mean too little memory for the workload."
    )
    detail_attrs: ClassVar[tuple[str, ...]] = ("vm_id", "reason")

    def __init__(self, vm_id: str, reason: str, message: str | None = None, **kw: Any) -> None:
        super().__init__(message or f"Machine '{vm_id}' crashed: {reason}", **kw)
        self._remember(vm_id=vm_id, reason=reason)


# ----------------------------------------------------------------------------- config


class ValidationError(UnprocessableError):
    """A configuration value or argument is invalid."""

    code = "VALIDATION_ERROR"
    http_status = 422
    default_help = "Fix the field named in `details.field`; `smolbox create --help` lists limits."
    detail_attrs: ClassVar[tuple[str, ...]] = ("field", "value")

    def __init__(self, message: str, *, field: str | None = None, value: Any = None,
                 details: dict[str, Any] | None = None, help: str | None = None) -> None:
        super().__init__(message, details=details, help=help)
        self._remember(field=field, value=_jsonable(value))


class PayloadTooLargeError(ValidationError):
    """A request or response body is larger than the server allows."""

    code = "PAYLOAD_TOO_LARGE"
    http_status = 413
    default_help = "Split the data, or start the server with a larger size limit."


class InvalidConfigError(ValidationError):
    """A machine configuration is invalid as a whole."""

    code = "INVALID_CONFIG"


class VMFileError(ValidationError):
    """A machine definition file could not be used."""

    code = "VMFILE_ERROR"
    detail_attrs: ClassVar[tuple[str, ...]] = ("path",)

    def __init__(self, message: str, *, path: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self._remember(path=path)


class VMFileNotFoundError(VMFileError):
    """The machine definition file does not exist."""

    code = "VMFILE_NOT_FOUND"
    http_status = 404
    default_help = "Check the path to the machine definition file."


class VMFileParseError(VMFileError):
    """The machine definition file is not valid syntax."""

    code = "VMFILE_PARSE_ERROR"
    default_help = "Fix the syntax error at the line given in `details`."


class VMFileValidationError(VMFileError):
    """The machine definition file parsed but holds invalid values."""

    code = "VMFILE_INVALID"
    default_help = "Fix the field named in `details.field` in the machine definition file."


class ProvisioningError(SmolboxError):
    """A provisioning step inside a new machine failed."""

    code = "PROVISIONING_FAILED"
    default_help = "Read the step's output in `details` and fix the provisioning script."
    detail_attrs: ClassVar[tuple[str, ...]] = ("vm_id", "step")

    def __init__(self, message: str, *, vm_id: str | None = None, step: str | None = None,
                 **kw: Any) -> None:
        super().__init__(message, **kw)
        self._remember(vm_id=vm_id, step=step)


# ------------------------------------------------------------------------------- host


class HostError(SmolboxError):
    """The host cannot run smolbox machines as configured."""

    code = "HOST_ERROR"
    default_help = "Run `smolbox doctor` to see which host check fails and how to fix it."


class KVMUnavailableError(HostError):
    """KVM cannot run guests here; smolbox falls back to software emulation (TCG)."""

    code = "KVM_UNAVAILABLE"
    http_status = 503
    default_help = (
        "Machines still run under TCG, only slower. For hardware speed, run on a host "
        "where `smolbox doctor` reports kvm_usable: true."
    )
    detail_attrs: ClassVar[tuple[str, ...]] = ("reason",)

    def __init__(self, reason: str, message: str | None = None, **kw: Any) -> None:
        super().__init__(message or f"KVM is not usable: {reason}", **kw)
        self._remember(reason=reason)


KVMUnavailable = KVMUnavailableError


class HostToolMissingError(HostError):
    """A host program smolbox needs is not installed."""

    code = "HOST_TOOL_MISSING"
    http_status = 503
    default_help = "Install it with `bash scripts/install.sh` (or the Debian package named)."
    detail_attrs: ClassVar[tuple[str, ...]] = ("tool", "package")

    def __init__(self, tool: str, package: str | None = None, message: str | None = None,
                 **kw: Any) -> None:
        hint = f" (Debian package {package})" if package else ""
        super().__init__(message or f"Required host tool '{tool}' not found{hint}", **kw)
        self._remember(tool=tool, package=package)


class DiskSpaceError(HostError):
    """Not enough free disk space for smolbox's data."""

    code = "DISK_SPACE_LOW"
    http_status = 507
    default_help = "Free disk space, or point SMOLBOX_HOME at a larger disk."
    detail_attrs: ClassVar[tuple[str, ...]] = ("path", "free_bytes")


class ProcessGoneError(HostError):
    """A host process smolbox tracks has exited, or its pid now belongs to another program."""

    code = "PROCESS_GONE"
    http_status = 410
    default_help = (
        "The process is no longer running (a reused pid is never signalled). "
        "`smolbox list` shows the machine's recorded state; delete and recreate it if needed."
    )
    detail_attrs: ClassVar[tuple[str, ...]] = ("pid", "start_time")

    def __init__(self, pid: int, start_time: int | None = None, message: str | None = None,
                 **kw: Any) -> None:
        super().__init__(message or f"Process {pid} is gone", **kw)
        self._remember(pid=pid, start_time=start_time)


class BackendNotAvailableError(HostError):
    """The requested backend (accelerator, engine or server) cannot be used."""

    code = "BACKEND_NOT_AVAILABLE"
    http_status = 503
    default_help = "Use the default backend, or install what `smolbox doctor` reports missing."


BackendNotAvailable = BackendNotAvailableError


class NotSupportedError(SmolboxError):
    """The operation is not supported by this backend or configuration."""

    code = "NOT_SUPPORTED"
    http_status = 501
    default_help = "See `details.reason`; the README lists what each backend supports."
    detail_attrs: ClassVar[tuple[str, ...]] = ("operation", "reason")

    def __init__(self, message: str, *, operation: str | None = None,
                 reason: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self._remember(operation=operation, reason=reason)


# ---------------------------------------------------------------------------- network


class NetworkError(SmolboxError):
    """A machine network could not be used."""

    code = "NETWORK_ERROR"
    default_help = "Run `smolbox doctor`; networking modes other than `none` need host support."


class NetworkConfigError(NetworkError, ValidationError):
    """A network setting is invalid; nothing on the host was changed."""

    code = "NETWORK_CONFIG_INVALID"
    http_status = 422
    default_help = "Fix the network field named in `details.field`."


class NetworkSetupError(NetworkError):
    """Setting up the host side of a machine's network failed."""

    code = "NETWORK_SETUP_FAILED"
    default_help = (
        "`details.step` names the failing step. TAP networking needs root or CAP_NET_ADMIN; "
        "use network mode `user` otherwise."
    )
    detail_attrs: ClassVar[tuple[str, ...]] = ("step",)

    def __init__(self, message: str, *, step: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self._remember(step=step)


class FirewallError(NetworkSetupError):
    """Installing or removing a machine's nftables egress policy failed."""

    code = "FIREWALL_ERROR"
    default_help = "Check that nftables is installed (`nft --version`) and smolbox runs as root."


class PortInUseError(NetworkError, ConflictError):
    """A host port for a port forward is already taken."""

    code = "PORT_IN_USE"
    http_status = 409
    retryable = True
    default_help = "Pick another host port, or stop what listens on it."
    detail_attrs: ClassVar[tuple[str, ...]] = ("port",)

    def __init__(self, port: int, message: str | None = None, **kw: Any) -> None:
        super().__init__(message or f"Host port {port} is already in use", **kw)
        self._remember(port=port)


class IPPoolExhaustedError(NetworkError):
    """Every guest address in the pool is leased."""

    code = "IP_POOL_EXHAUSTED"
    http_status = 503
    retryable = True
    default_help = "Delete machines you no longer need, or configure a larger network pool."


# ----------------------------------------------------------------------------- images


class ImageError(SmolboxError):
    """A guest image could not be used."""

    code = "IMAGE_ERROR"
    default_help = "Rebuild the image with `smolbox image build`."
    detail_attrs: ClassVar[tuple[str, ...]] = ("image",)

    def __init__(self, message: str, *, image: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self._remember(image=image)


class ImageNotFoundError(ImageError, NotFoundError):
    """No image with this name/version in the catalogue."""

    code = "IMAGE_NOT_FOUND"
    http_status = 404
    default_help = "List images with `smolbox image list`, or build one with `smolbox image build`."


class ImageAlreadyExistsError(ImageError, ConflictError):
    """An image with this name/version is already installed."""

    code = "IMAGE_ALREADY_EXISTS"
    http_status = 409
    default_help = "Remove it first with `smolbox image rm`, or choose another name."


class ImageDownloadError(ImageError):
    """Fetching an image or package failed."""

    code = "IMAGE_DOWNLOAD_FAILED"
    retryable = True
    default_help = "Check the URL and the network, then retry."


class ImageChecksumMismatchError(ImageError):
    """An image file's SHA-256 differs from its manifest."""

    code = "IMAGE_CHECKSUM_MISMATCH"
    default_help = (
        "The file was changed or corrupted. Remove the image (`smolbox image rm`) and "
        "rebuild or re-import it."
    )


class ImageCacheUnreadableError(ImageError):
    """The image catalogue directory cannot be read."""

    code = "IMAGE_CACHE_UNREADABLE"
    default_help = "Check permissions of the image directory (SMOLBOX_IMAGES)."


class ImageCorruptError(ImageError):
    """An image file or archive is damaged (truncated, bad manifest)."""

    code = "IMAGE_CORRUPT"
    default_help = "Re-create the archive or image and import it again."


class ImageFileMissingError(ImageError):
    """A file the image manifest lists is missing."""

    code = "IMAGE_FILE_MISSING"
    default_help = "Remove the image with `smolbox image rm` and rebuild or re-import it."


class ImageFormatError(ImageError):
    """An image's format could not be detected or is not supported."""

    code = "IMAGE_FORMAT_UNKNOWN"
    default_help = "Supported: smolbox image archives, `docker save` tarballs and OCI layouts."


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

    code = "VMM_ERROR"
    default_help = "Read the console tail in `details` or `smolbox logs NAME`."


class QMPError(VMMError):
    """A QMP command returned an error (the VMM API error)."""

    code = "QMP_ERROR"
    detail_attrs: ClassVar[tuple[str, ...]] = ("status_code", "qmp_class", "command")

    def __init__(self, message: str, *, status_code: int | None = None,
                 qmp_class: str | None = None, command: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self._remember(status_code=status_code, qmp_class=qmp_class, command=command)


VMMAPIError = QMPError
FirecrackerAPIError = QMPError


class SpawnError(VMMError):
    """The VMM process could not be started."""

    code = "SPAWN_FAILED"
    default_help = "Read QEMU's stderr in `details.stderr`; `smolbox doctor` checks QEMU."


SpawnFailedError = SpawnError


class ShutdownError(VMMError):
    """Stopping a machine failed at a step of the shutdown ladder."""

    code = "SHUTDOWN_FAILED"
    default_help = "`details.step` names the step; `smolbox rm --force NAME` kills it."
    detail_attrs: ClassVar[tuple[str, ...]] = ("vm_id", "step")

    def __init__(self, message: str, *, vm_id: str | None = None, step: str | None = None,
                 **kw: Any) -> None:
        super().__init__(message, **kw)
        self._remember(vm_id=vm_id, step=step)


class JailerError(VMMError):
    """Isolating the VMM process (namespaces, limits, privileges) failed."""

    code = "JAILER_ERROR"
    default_help = "Check that the host supports the isolation features named in `details`."


class MetricsError(VMMError):
    """Reading a machine's metrics failed."""

    code = "METRICS_ERROR"
    retryable = True
    default_help = "Retry; if it persists the machine may have stopped."


# ------------------------------------------------------------------------------ guest


class GuestAgentError(SmolboxError):
    """The in-guest agent failed or misbehaved."""

    code = "GUEST_AGENT_ERROR"
    default_help = "Read the console tail with `smolbox logs NAME`; restart the machine."
    detail_attrs: ClassVar[tuple[str, ...]] = ("vm_id",)

    def __init__(self, message: str, *, vm_id: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self._remember(vm_id=vm_id)


class GuestProtocolError(GuestAgentError):
    """The guest sent a malformed, oversized or out-of-order frame."""

    code = "GUEST_PROTOCOL_ERROR"
    default_help = (
        "The guest broke the agent protocol (it may be compromised or its agent outdated). "
        "Delete the machine; rebuild the image if it happens on fresh machines."
    )


class GuestMetadataError(GuestAgentError):
    """Reading or setting guest metadata (env, hostname, identity) failed."""

    code = "GUEST_METADATA_ERROR"


class GuestFileError(GuestAgentError):
    """A file operation inside the guest failed."""

    code = "GUEST_FILE_ERROR"
    http_status = 400
    default_help = "Check the guest path and its permissions."
    detail_attrs: ClassVar[tuple[str, ...]] = ("path", "errno")

    def __init__(self, message: str, *, path: str | None = None, errno: int | None = None,
                 **kw: Any) -> None:
        super().__init__(message, **kw)
        self._remember(path=path, errno=errno)


class GuestFileNotFoundError(GuestFileError, NotFoundError):
    """The guest path does not exist."""

    code = "GUEST_FILE_NOT_FOUND"
    http_status = 404
    default_help = "Check the path; list a directory with `machine.files.list()`."


class CommandExecutionUnavailableError(GuestAgentError):
    """Commands cannot run because the guest agent is not reachable."""

    code = "COMMAND_EXECUTION_UNAVAILABLE"
    http_status = 503
    retryable = True
    default_help = "See `details.remediation`."
    detail_attrs: ClassVar[tuple[str, ...]] = ("reason", "remediation")

    def __init__(self, vm_id: str, reason: str, remediation: str | None = None,
                 message: str | None = None, **kw: Any) -> None:
        remediation = remediation or (
            "Wait for the machine to finish booting, or restart it with `smolbox stop` and "
            "`smolbox start`; check `smolbox logs NAME` for a guest crash."
        )
        super().__init__(message or f"Cannot run commands in '{vm_id}': {reason}",
                         vm_id=vm_id, help=kw.pop("help", remediation), **kw)
        self._remember(reason=reason, remediation=remediation)


# --------------------------------------------------------------------- time and exec


class OperationTimeoutError(SmolboxError):
    """An operation did not finish within its timeout."""

    code = "OPERATION_TIMEOUT"
    http_status = 408
    retryable = True
    default_help = "Raise the timeout for this operation, or check why it is slow."
    detail_attrs: ClassVar[tuple[str, ...]] = ("operation", "timeout_seconds")

    def __init__(self, operation: str, timeout_seconds: float, message: str | None = None,
                 **kw: Any) -> None:
        super().__init__(
            message or f"{operation} did not finish within {timeout_seconds:g} s", **kw
        )
        self._remember(operation=operation, timeout_seconds=timeout_seconds)


TimeoutError = OperationTimeoutError


class RequestTimeoutError(OperationTimeoutError):
    """The smolbox server timed out the request (HTTP 408)."""

    code = "REQUEST_TIMEOUT"


class ExecutionError(SmolboxError):
    """A command in the guest exited unsuccessfully (from ``ExecResult.assert_success``)."""

    code = "EXECUTION_FAILED"
    http_status = 400
    default_help = "Read `details.stderr`; the command itself failed, the machine is fine."
    detail_attrs: ClassVar[tuple[str, ...]] = ("command", "exit_code", "stdout", "stderr")

    def __init__(self, command: str | list[str], exit_code: int | None, stdout: str = "",
                 stderr: str = "", message: str | None = None, **kw: Any) -> None:
        shown = command if isinstance(command, str) else " ".join(command)
        super().__init__(message or f"Command `{shown}` exited with {exit_code}", **kw)
        self._remember(command=command, exit_code=exit_code, stdout=stdout, stderr=stderr)


# --------------------------------------------------------------------------- the wire

_STATUS_FALLBACK: dict[int, type[SmolboxError]] = {
    400: BadRequestError,
    401: AuthError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    408: RequestTimeoutError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableError,
    429: RateLimitedError,
    500: InternalError,
    502: UnavailableError,
    503: UnavailableError,
    504: UnavailableError,
}


def catalogue() -> dict[str, type[SmolboxError]]:
    """Every error class by its code (a copy: the registry itself stays private)."""
    return dict(_REGISTRY)


def error_for_status(status: int) -> type[SmolboxError]:
    """The family class for an HTTP status without a smolbox body."""
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
