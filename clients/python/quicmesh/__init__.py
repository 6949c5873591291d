"""A Python client for quicmesh, on aioquic: call mesh services without a sidecar.

    async with quicmesh.Client(["127.0.0.1:7401"], ca="certs/ca.crt",
                               cert="certs/client-web.crt", key="certs/client-web.key") as c:
        reply = await c.call("echo", b"hello", timeout=2.0)

The wire protocol is docs/protocol.md in the quicmesh repository.
"""

from .client import Client, Reply, Stream, rfc2782_order
from .errors import (
    BadHeader,
    CallTimeout,
    ConfigError,
    ConnectError,
    ConnectionLost,
    DeadlineExceeded,
    Draining,
    HopLimit,
    Overloaded,
    ProtocolError,
    QuicmeshError,
    Rejected,
    ResponseTooLarge,
    StreamReset,
    Unauthorized,
    Unavailable,
    UnknownService,
    UnsupportedVersion,
)
from .wire import PROTOCOL_VERSION, STATUS_SERVICE, MemberState, RejectCode, StatusReport, StreamCode

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "STATUS_SERVICE",
    "BadHeader",
    "CallTimeout",
    "Client",
    "ConfigError",
    "ConnectError",
    "ConnectionLost",
    "DeadlineExceeded",
    "Draining",
    "HopLimit",
    "MemberState",
    "Overloaded",
    "ProtocolError",
    "QuicmeshError",
    "RejectCode",
    "Rejected",
    "Reply",
    "ResponseTooLarge",
    "StatusReport",
    "Stream",
    "StreamCode",
    "StreamReset",
    "Unauthorized",
    "Unavailable",
    "UnknownService",
    "UnsupportedVersion",
    "rfc2782_order",
]
