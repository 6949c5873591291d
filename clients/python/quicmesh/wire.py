"""The quicmesh wire format (docs/protocol.md): frames, postcard, headers and responses.

Pure functions and dataclasses, no I/O, so they are tested against the spec's vectors alone.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

PROTOCOL_VERSION = 1
"""The stream protocol version this client speaks (the first byte of every header)."""

ALPN = "quicmesh/1"
"""The QUIC ALPN protocol id of quicmesh version 1."""

STATUS_SERVICE = "quicmesh-status"
"""The service every node answers itself with its :class:`StatusReport`."""

MAX_RESPONSE_FRAME = 16 * 1024
"""Nodes never send a response frame longer than this; a longer length is a protocol error."""


class DecodeError(ValueError):
    """Bytes that are not valid for the expected type (a truncated or foreign frame)."""


class RejectCode(enum.IntEnum):
    """Why a node refused a stream (docs/protocol.md, section 3). Nothing was processed."""

    BAD_HEADER = 0
    UNSUPPORTED_VERSION = 1
    UNKNOWN_SERVICE = 2
    UNAUTHORIZED = 3
    HOP_LIMIT = 4
    UNAVAILABLE = 5
    OVERLOADED = 6
    DEADLINE_EXCEEDED = 7
    DRAINING = 8

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later or on another node."""
        return self in (RejectCode.UNAVAILABLE, RejectCode.OVERLOADED, RejectCode.DRAINING)


class StreamCode(enum.IntEnum):
    """QUIC application error codes of RESET_STREAM, STOP_SENDING and CONNECTION_CLOSE."""

    SHUTDOWN = 0
    DUPLICATE = 1
    FORBIDDEN = 2
    STREAM_ABORTED = 3
    PROTOCOL = 4
    DEADLINE_EXCEEDED = 5
    IDENTITY_CLASH = 6
    ABANDONED = 7
    TRIMMED = 8


# --- postcard primitives -------------------------------------------------------------------


def put_varint(out: bytearray, n: int) -> None:
    """Appends `n` as an unsigned LEB128 varint."""
    if n < 0:
        raise ValueError(f"varint of a negative number {n}")
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def put_bytes(out: bytearray, b: bytes) -> None:
    put_varint(out, len(b))
    out += b


def put_str(out: bytearray, s: str) -> None:
    put_bytes(out, s.encode("utf-8"))


def put_option(out: bytearray, value: T | None, put: Callable[[bytearray, T], None]) -> None:
    """Appends an option: `00` for none, `01` and the value for some."""
    if value is None:
        out.append(0)
    else:
        out.append(1)
        put(out, value)


class Reader:
    """Reads postcard values from a buffer, front to back."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DecodeError(f"unexpected end: wanted {n} bytes at offset {self.pos} of {len(self.data)}")
        b = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self, max_bytes: int = 10) -> int:
        n = 0
        for i in range(max_bytes):
            b = self.u8()
            n |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                return n
        raise DecodeError(f"varint longer than {max_bytes} bytes at offset {self.pos}")

    def u16(self) -> int:
        return self.varint(3)

    def u32(self) -> int:
        return self.varint(5)

    def u64(self) -> int:
        return self.varint(10)

    def f64(self) -> float:
        return float(struct.unpack("<d", self.take(8))[0])

    def boolean(self) -> bool:
        b = self.u8()
        if b > 1:
            raise DecodeError(f"bool byte {b} at offset {self.pos - 1}")
        return b == 1

    def blob(self) -> bytes:
        return self.take(self.varint())

    def text(self) -> str:
        try:
            return self.blob().decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError(f"string is not UTF-8: {e}") from e

    def option_tag(self) -> bool:
        tag = self.u8()
        if tag > 1:
            raise DecodeError(f"option tag {tag} at offset {self.pos - 1}")
        return tag == 1

    def at_end(self) -> bool:
        return self.pos >= len(self.data)


def frame(body: bytes) -> bytes:
    """A frame: 4-byte big-endian length, then the body."""
    return struct.pack(">I", len(body)) + body


# --- stream header and response ------------------------------------------------------------


@dataclass(frozen=True)
class ServiceRequest:
    """The header of a service stream (docs/protocol.md, section 3)."""

    service: str
    key: bytes | None = None
    hops: int = 0
    deadline_ms: int | None = None
    origin: str | None = None

    def encode(self) -> bytes:
        """The whole header frame, length prefix included."""
        out = bytearray([PROTOCOL_VERSION])
        put_varint(out, 1)  # StreamKind::Service
        put_str(out, self.service)
        put_option(out, self.key, put_bytes)
        out.append(self.hops & 0xFF)
        deadline = None if self.deadline_ms is None else min(max(self.deadline_ms, 0), 0xFFFF_FFFF)
        put_option(out, deadline, put_varint)
        put_option(out, self.origin, put_str)
        return frame(bytes(out))


def control_header() -> bytes:
    """The header frame of a control stream (nodes only; a client's is refused)."""
    return frame(bytes([PROTOCOL_VERSION, 0]))


def decode_header(body: bytes) -> ServiceRequest | None:
    """Decodes a header body (no length prefix); None for a control header."""
    r = Reader(body)
    version = r.u8()
    if version != PROTOCOL_VERSION:
        raise DecodeError(f"protocol version {version} (this client speaks {PROTOCOL_VERSION})")
    kind = r.varint()
    if kind == 0:
        return None
    if kind != 1:
        raise DecodeError(f"unknown stream kind {kind}")
    service = r.text()
    key = r.blob() if r.option_tag() else None
    hops = r.u8()
    deadline = r.u32() if r.option_tag() else None
    origin = r.text() if r.option_tag() else None
    return ServiceRequest(service, key, hops, deadline, origin)


@dataclass(frozen=True)
class Accept:
    """The node took the stream; `node` serves it."""

    node: str

    def encode(self) -> bytes:
        out = bytearray([0])
        put_str(out, self.node)
        return frame(bytes(out))


@dataclass(frozen=True)
class Reject:
    """The node refused the stream; nothing was processed."""

    code: RejectCode | int
    reason: str

    def encode(self) -> bytes:
        out = bytearray([1])
        put_varint(out, int(self.code))
        put_str(out, self.reason)
        return frame(bytes(out))


def decode_response(body: bytes) -> Accept | Reject:
    """Decodes a response body (no length prefix). Trailing bytes are ignored (section 7)."""
    r = Reader(body)
    variant = r.varint()
    if variant == 0:
        return Accept(r.text())
    if variant == 1:
        raw = r.varint()
        code: RejectCode | int
        try:
            code = RejectCode(raw)
        except ValueError:
            code = raw  # a newer node's code: not retryable, the reason still says why
        return Reject(code, r.text())
    raise DecodeError(f"unknown response variant {variant}")


# --- the status report ---------------------------------------------------------------------


class MemberState(enum.IntEnum):
    """A member's liveness and intent, as gossiped."""

    ALIVE = 0
    DRAINING = 1
    SUSPECT = 2
    DEAD = 3
    LEFT = 4


@dataclass
class Load:
    """A member's published load."""

    inflight: int
    capacity: int
    cpu_permille: int
    mem_permille: int
    latency_us: int
    per_service: list[tuple[str, int]]


@dataclass
class Member:
    """One member's gossiped record."""

    name: str
    addr: str
    incarnation: int
    status: MemberState | int
    services: list[str]
    load: Load
    version: int
    heartbeat: int
    suspectors: list[str]


@dataclass
class MemberStatus:
    """A row of a status report: the record, and the answering node's link to it."""

    member: Member
    connected: bool
    rtt_us: int | None


@dataclass
class Unreachable:
    """A peer address the answering node keeps failing to dial."""

    target: str
    failures: int
    reason: str
    error: str
    advice: str
    since_unix: int


@dataclass
class IdentityClash:
    """A node identity held by two live processes at once."""

    node: str
    kept: str
    refused: str
    count: int
    last_unix: int


@dataclass
class StatusReport:
    """A node's view of the mesh, the reply of the `quicmesh-status` service."""

    node: str
    version: str
    members: list[MemberStatus]
    routes: list[tuple[str, list[tuple[str, float]]]]
    unreachable: list[Unreachable] = field(default_factory=list)
    identity_clashes: list[IdentityClash] = field(default_factory=list)


def _list(r: Reader, item):  # type: ignore[no-untyped-def]
    return [item(r) for _ in range(r.varint())]


def _member(r: Reader) -> Member:
    name, addr, inc = r.text(), r.text(), r.u64()
    raw = r.varint()
    status: MemberState | int = MemberState(raw) if raw in MemberState._value2member_map_ else raw
    services = _list(r, Reader.text)
    load = Load(r.u32(), r.u32(), r.u16(), r.u16(), r.u32(), _list(r, lambda r: (r.text(), r.u32())))
    return Member(name, addr, inc, status, services, load, r.u64(), r.u64(), _list(r, Reader.text))


def decode_status(data: bytes) -> StatusReport:
    """Decodes a `quicmesh-status` reply; a report from an older node may end after `routes`."""
    r = Reader(data)
    node, version = r.text(), r.text()
    members = _list(r, lambda r: MemberStatus(_member(r), r.boolean(), r.u64() if r.option_tag() else None))
    routes = _list(r, lambda r: (r.text(), _list(r, lambda r: (r.text(), r.f64()))))
    report = StatusReport(node, version, members, routes)
    # Each later field may be missing, in a report from an older node.
    if not r.at_end():
        report.unreachable = _list(r, lambda r: Unreachable(r.text(), r.u32(), r.text(), r.text(), r.text(), r.u64()))
    if not r.at_end():
        report.identity_clashes = _list(r, lambda r: IdentityClash(r.text(), r.text(), r.text(), r.u64(), r.u64()))
    return report
