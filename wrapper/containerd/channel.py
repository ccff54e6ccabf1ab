"""The one gRPC channel to containerd: headers, deadlines and error mapping for every call.

Every service module (content, images, ...) calls containerd through :class:`Connection`, so the
namespace header, the lease header, the default deadline and the translation of ``grpc.RpcError`` into
the project's exceptions live here and nowhere else.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from wrapper.core.errors import ContainerdError, NotFoundError, WrapperError
from wrapper.core.util import one_line

NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"

# containerd answers with messages well under this, but Read streams and long lists can be large.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # A unix socket needs no HTTP proxy, and a restarting daemon should be retried quickly.
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

# Fragments of grpc-core's messages when the socket cannot be connected to at all.
_CONNECT_FAILURES = (
    "failed to connect",
    "connection refused",
    "no such file",
    "socket closed",
    "connect failed",
)


# How long a call that lost its connection waits for a managed daemon's process to be seen gone (the socket
# closes as the process dies, a moment before it can be reaped).
_EXIT_GRACE_SECONDS = 0.5
# Fragments of grpc-core's messages when an established connection breaks (the daemon went away mid-call).
_CONNECTION_LOST = (*_CONNECT_FAILURES, "connection reset", "broken pipe", "error reading from server", "eof")


class DaemonExitedError(ContainerdError):
    """A managed containerd died while in use: nothing sent to it can succeed any more, so no retry helps."""

    permanent = True


class AlreadyExistsError(ContainerdError):
    """containerd (or a proxy plugin) answered ALREADY_EXISTS: what was to be made is there already."""


class NoSpaceError(ContainerdError):
    """containerd could not write a file because its file system is full: no retry helps."""

    permanent = True


# A managed daemon (wrapper.containerd.daemon.ManagedContainerd) registers here, by socket path, a function
# that says whether it has died: ``check(grace)`` gives the error to report (its exit and log) or None while it
# runs, waiting up to ``grace`` seconds for a dying process. A call that fails because the daemon is gone then
# says so, instead of "connection refused".
ExitCheck = Callable[[float], DaemonExitedError | None]
_exit_checks: dict[str, ExitCheck] = {}
_exit_checks_lock = threading.Lock()


def register_exit_check(address: str, check: ExitCheck) -> None:
    """Tell the error mapping how to learn that the daemon at ``address`` has died (see ``ExitCheck``)."""
    with _exit_checks_lock:
        _exit_checks[os.path.abspath(socket_path(address))] = check


def unregister_exit_check(address: str) -> None:
    with _exit_checks_lock:
        _exit_checks.pop(os.path.abspath(socket_path(address)), None)


def daemon_exit_error(address: str, grace: float = 0.0) -> DaemonExitedError | None:
    """The error that says the managed daemon at ``address`` died, or None (running, or not ours)."""
    with _exit_checks_lock:
        check = _exit_checks.get(os.path.abspath(socket_path(address)))
    return check(grace) if check is not None else None


def socket_path(address: str) -> str:
    """The filesystem path of a containerd address (``/run/x.sock`` or ``unix:///run/x.sock``)."""
    for prefix in ("unix://", "unix:"):
        if address.startswith(prefix):
            return address[len(prefix) :]
    return address


def status_code(exc: grpc.RpcError) -> grpc.StatusCode:
    """The status code of a failed call (UNKNOWN if the error carries none)."""
    code = getattr(exc, "code", None)
    value = code() if callable(code) else None
    return value if isinstance(value, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def status_details(exc: grpc.RpcError) -> str:
    """The server's (or grpc-core's) error text, on one line."""
    details = getattr(exc, "details", None)
    value = details() if callable(details) else None
    return one_line(str(value)) if value else ""


def map_rpc_error(exc: grpc.RpcError, *, method: str, address: str, timeout: float | None) -> WrapperError:
    """Translate a failed gRPC call into the project's exception with a one-line message."""
    code = status_code(exc)
    details = status_details(exc)
    detail = f"{method}: {code.name}: {details}"
    lowered = details.lower()

    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
        # A managed daemon that died: say so (with its log), whatever the call was doing.
        lost = code == grpc.StatusCode.UNAVAILABLE and any(f in lowered for f in _CONNECTION_LOST)
        died = daemon_exit_error(address, _EXIT_GRACE_SECONDS if lost else 0.0)
        if died is not None:
            return died
    if "no space left on device" in lowered:
        return _disk_full(method, details, detail)

    if code == grpc.StatusCode.UNAVAILABLE and any(f in lowered for f in _CONNECT_FAILURES):
        return _unreachable(address, lowered, detail)
    if code == grpc.StatusCode.UNAVAILABLE and "permission denied" in lowered:
        return ContainerdError(
            f"cannot reach containerd at {address}: permission denied on the socket",
            hint="containerd's socket is only open to root; run as root",
            detail=detail,
        )
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return ContainerdError(
            f"containerd refused {method}: permission denied ({details})",
            hint="containerd's API needs root; run as root",
            detail=detail,
        )
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(f"not found in containerd: {details}", detail=detail)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExistsError(f"already exists in containerd: {details}", detail=detail)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return ContainerdError(
            f"containerd does not implement {method} (plugin disabled or daemon too old)", detail=detail
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f" within {timeout:g}s" if timeout else ""
        return ContainerdError(f"containerd did not answer {method}{within}", detail=detail)
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
        return ContainerdError(f"containerd rejected {method}: {details}", detail=detail)
    if code == grpc.StatusCode.CANCELLED:
        return ContainerdError(f"{method} was cancelled: {details}", detail=detail)
    return ContainerdError(f"containerd {method} failed: {code.name}: {details}", detail=detail)


_ENOSPC_PATH = re.compile(r"(/[^\s:]+): no space left on device", re.IGNORECASE)
_CONTENT_PLUGIN_DIR = "io.containerd.content.v1.content"


def _disk_full(method: str, details: str, detail: str) -> NoSpaceError:
    """containerd could not write a file (an ingest, its database) because its file system is full: name the
    directory, the file system, and, for an ingest, the size of the blob that did not fit."""
    match = _ENOSPC_PATH.search(details)
    if match is None:
        return NoSpaceError(
            f"containerd ran out of disk space ({method}): {details}",
            hint="give containerd's root more room (--work-dir on a larger file system)",
            detail=detail,
        )
    path = Path(match.group(1))
    # The daemon's root: the directory that holds its content store (else the file's own directory).
    parts = path.parts
    root = Path(*parts[: parts.index(_CONTENT_PLUGIN_DIR)]) if _CONTENT_PLUGIN_DIR in parts else path.parent
    mount = _mount_point(root)
    needed = ""
    if "ingest" in parts and path.name == "data":
        # An ingest directory holds the blob's expected size ("total") beside what was written ("data").
        try:
            total = int((path.parent / "total").read_text().strip())
            written = path.stat().st_size
            free = shutil.disk_usage(mount).free + written
            needed = f": a blob of {_size(total)} does not fit in the {_size(free)} free"
        except (OSError, ValueError):
            needed = ""
    where = f"{mount}" if mount == root else f"{mount} (containerd's root: {root})"
    return NoSpaceError(
        f"no space left on device in {where}{needed}",
        hint="make room there, or point --work-dir at a file system with room for the image's layers",
        detail=detail,
    )


def _mount_point(path: Path) -> Path:
    """The mount point of the file system that holds ``path`` (its nearest existing ancestor's)."""
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return current


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _unreachable(address: str, lowered: str, detail: str) -> ContainerdError:
    try:
        os.stat(address)
        denied = "permission denied" in lowered
    except FileNotFoundError:
        return ContainerdError(
            f"cannot reach containerd at {address}: the socket does not exist", detail=detail
        )
    except PermissionError:
        denied = True
    except OSError:
        denied = False
    if denied:
        return ContainerdError(
            f"cannot reach containerd at {address}: permission denied on the socket",
            hint="containerd's socket is only open to root; run as root",
            detail=detail,
        )
    if "connection refused" in lowered:
        reason = "connection refused (is the daemon running?)"
    else:
        reason = "connection failed"
    return ContainerdError(f"cannot reach containerd at {address}: {reason}", detail=detail)


class Connection:
    """A gRPC channel to one containerd socket, bound to a namespace (and optionally a lease).

    ``timeout`` is the deadline of unary calls. Streams (Read, Write, List) have no overall deadline
    because their length depends on the size of the data.
    """

    def __init__(self, address: str, namespace: str, *, timeout: float = 30.0) -> None:
        self.address = os.path.abspath(socket_path(address))
        self.namespace = namespace
        self.timeout = timeout
        # Set by ContainerdClient.lease(); sent with every call while set.
        self.lease: str | None = None
        self.channel = grpc.insecure_channel(f"unix://{self.address}", options=_CHANNEL_OPTIONS)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The headers containerd reads on every call: namespace and, inside a lease, the lease id."""
        headers = [(NAMESPACE_HEADER, self.namespace)]
        if self.lease:
            headers.append((LEASE_HEADER, self.lease))
        return tuple(headers)

    def error(self, exc: grpc.RpcError, method: str, *, timeout: float | None = None) -> WrapperError:
        """Map ``exc`` from a call to ``method`` (e.g. ``content.Write``) to a project exception."""
        return map_rpc_error(exc, method=method, address=self.address, timeout=timeout)

    def unary(
        self, method: str, func: Callable[..., Any], request: Any, *, timeout: float | None = None
    ) -> Any:
        """Call a unary RPC with our headers and deadline; failures become project exceptions."""
        deadline = timeout if timeout is not None else self.timeout
        try:
            return func(request, metadata=self.metadata(), timeout=deadline)
        except grpc.RpcError as exc:
            raise self.error(exc, method, timeout=deadline) from None

    def server_stream(self, method: str, func: Callable[..., Any], request: Any) -> Iterator[Any]:
        """Iterate a server-streaming RPC; the call is cancelled if the caller stops early."""
        call = func(request, metadata=self.metadata())
        try:
            yield from call
        except grpc.RpcError as exc:
            raise self.error(exc, method) from None
        finally:
            call.cancel()

    def close(self) -> None:
        self.channel.close()
