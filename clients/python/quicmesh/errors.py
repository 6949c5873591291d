"""What can go wrong calling the mesh, as typed exceptions that say what to do."""

from __future__ import annotations

from .wire import RejectCode, StreamCode


class QuicmeshError(Exception):
    """Every error this package raises."""


class ConfigError(QuicmeshError, ValueError):
    """An argument of :class:`~quicmesh.Client` is unusable; the message names it."""


class ConnectError(QuicmeshError):
    """No entry node could be reached. `attempts` lists each entry tried and why it failed."""

    def __init__(self, attempts: list[tuple[str, str]], hint: str = "") -> None:
        self.attempts = attempts
        tried = "; ".join(f"{entry}: {why}" for entry, why in attempts) or "no entry to try"
        super().__init__(f"no entry node reachable: {tried}" + (f" ({hint})" if hint else ""))


class Rejected(QuicmeshError):
    """The node refused the stream; nothing was processed, so a retryable one may be resent.

    Each :class:`~quicmesh.RejectCode` has its own subclass (:class:`UnknownService`,
    :class:`Draining`, ...), so callers can catch the ones they handle.
    """

    code: RejectCode | int
    reason: str

    def __init__(self, code: RejectCode | int, reason: str) -> None:
        self.code = code
        self.reason = reason
        name = code.name if isinstance(code, RejectCode) else f"code {code}"
        super().__init__(f"{name}: {reason}")

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later or on another node."""
        return isinstance(self.code, RejectCode) and self.code.retryable


class BadHeader(Rejected):
    """The header was malformed, too long or late: a client bug."""


class UnsupportedVersion(Rejected):
    """The node speaks another protocol version."""


class UnknownService(Rejected):
    """No node in the mesh offers the service."""


class Unauthorized(Rejected):
    """This client's identity may not call the service (the node's `services.NAME.allow`)."""


class HopLimit(Rejected):
    """The service is further away than the mesh's `limits.hop_limit` allows."""


class Unavailable(Rejected):
    """The service exists but cannot be reached now; retry later."""


class Overloaded(Rejected):
    """The node is at its in-flight limit; retry with backoff."""


class DeadlineExceeded(Rejected):
    """The deadline passed before a service was called."""


class Draining(Rejected):
    """The entry node is shutting down; the client moves to another entry by itself."""


_BY_CODE: dict[int, type[Rejected]] = {
    RejectCode.BAD_HEADER: BadHeader,
    RejectCode.UNSUPPORTED_VERSION: UnsupportedVersion,
    RejectCode.UNKNOWN_SERVICE: UnknownService,
    RejectCode.UNAUTHORIZED: Unauthorized,
    RejectCode.HOP_LIMIT: HopLimit,
    RejectCode.UNAVAILABLE: Unavailable,
    RejectCode.OVERLOADED: Overloaded,
    RejectCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    RejectCode.DRAINING: Draining,
}


def rejected(code: RejectCode | int, reason: str) -> Rejected:
    """The exception for a node's `Reject`; an unknown (newer) code is a plain :class:`Rejected`."""
    return _BY_CODE.get(int(code), Rejected)(code, reason)


class StreamReset(QuicmeshError):
    """The node reset the reply: it is incomplete, and the request may have been processed."""

    def __init__(self, code: int, detail: str = "") -> None:
        self.code = code
        if code == StreamCode.DEADLINE_EXCEEDED:
            why = "the request's deadline passed while the node was serving it"
        elif code == StreamCode.STREAM_ABORTED:
            why = "the serving node, its backend or the connection to it failed mid-reply"
        else:
            why = "the node reset the stream"
        extra = f"; {detail}" if detail else ""
        super().__init__(f"{why} (reset code {code}); the request may have been partly processed{extra}")


class ConnectionLost(QuicmeshError):
    """The connection to the entry node ended before the call did.

    `maybe_processed` is True when the request had been sent and no answer came: the service
    may have got it, so it is not retried automatically.
    """

    def __init__(self, why: str, maybe_processed: bool) -> None:
        self.maybe_processed = maybe_processed
        tail = "; the request had been sent, so it may have been processed" if maybe_processed else ""
        super().__init__(f"connection lost: {why}{tail}")


class CallTimeout(QuicmeshError, TimeoutError):
    """The call's timeout passed; the stream was reset so the mesh stops working on it."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"no reply within {timeout:g} s: the call's deadline passed")


class ResponseTooLarge(QuicmeshError):
    """The reply is longer than the call's `max_response_bytes`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"response exceeds max_response_bytes ({limit} bytes)")


class ProtocolError(QuicmeshError):
    """The node sent something that is not the quicmesh protocol (docs/protocol.md)."""
