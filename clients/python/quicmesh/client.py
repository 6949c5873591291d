"""The mesh client: one QUIC connection to an entry node, one stream per call.

Written from docs/protocol.md alone. aioquic's high-level stream API reports RESET_STREAM and a
lost connection as a clean end of stream, which would turn a failed reply into a short one, so
this module keeps its own per-stream state from aioquic's events instead.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from . import errors
from .errors import CallTimeout, ConfigError, ConnectError, ConnectionLost, ProtocolError, StreamReset
from .wire import (
    ALPN,
    MAX_RESPONSE_FRAME,
    STATUS_SERVICE,
    Accept,
    DecodeError,
    Reject,
    RejectCode,
    ServiceRequest,
    StatusReport,
    StreamCode,
    decode_response,
    decode_status,
)

ENTRY_STAGGER = 0.25
"""Seconds before the next entry is dialled alongside one that has not answered yet."""

PIPELINE_MAX = 64 * 1024
"""Bodies up to this size go out with the header, before the node answers (one round trip)."""

_TLS_ALERTS = {
    42: (
        "bad_certificate",
        "the node does not accept this client certificate: it must be issued by the mesh CA and not revoked",
    ),
    45: ("certificate_expired", "this client certificate has expired (or is not valid yet): issue a new one"),
    43: ("unsupported_certificate", "this certificate lacks the clientAuth key usage: issue a client certificate"),
    44: ("certificate_revoked", "this client certificate is on the node's revocation list (tls.crl): issue a new one"),
    46: ("certificate_unknown", "this certificate has no single spiffe:// identity: issue it with `quicmesh certs`"),
    49: ("access_denied", "this identity may not connect: another trust domain, or not a client of this mesh"),
    51: (
        "decrypt_error",
        "the node could not verify this client certificate with the mesh CA: it was issued by another CA",
    ),
    48: (
        "unknown_ca",
        "the node does not trust this client certificate's CA: issue it from the mesh CA (`quicmesh certs client NAME`)",
    ),
    116: (
        "certificate_required",
        "the node requires a client certificate: pass cert= and key= (`quicmesh certs client NAME` issues one)",
    ),
    120: (
        "no_application_protocol",
        "the peer does not speak quicmesh/1 (ALPN): not a quicmesh node, or another version",
    ),
}


def describe_close(ev: events.ConnectionTerminated) -> str:
    """A connection's end as a user should read it: who closed it, the code, and what to do."""
    code, phrase = ev.error_code, ev.reason_phrase
    if 0x100 <= code <= 0x1FF:
        alert = code - 0x100
        name, advice = _TLS_ALERTS.get(alert, (f"alert {alert}", "the TLS handshake failed"))
        return f"the node refused the TLS handshake with {name} ({alert}): {advice}" + (
            f" [{phrase}]" if phrase else ""
        )
    if ev.frame_type is None:
        try:
            cname = StreamCode(code).name
        except ValueError:
            cname = f"code {code}"
        return f"the node closed the connection ({cname}" + (f": {phrase})" if phrase else ")")
    return f"the connection failed (QUIC error 0x{code:x}" + (f": {phrase})" if phrase else ")")


def _closed_in_order(ev: events.ConnectionTerminated | None, locally: bool) -> bool:
    """The node shut down in order: it answered every stream it took (docs/protocol.md, 5).
    aioquic reports our own close the same way, so that is told apart by `locally`."""
    return not locally and ev is not None and ev.frame_type is None and ev.error_code == StreamCode.SHUTDOWN


class _Lost(Exception):
    """Internal: the connection ended while a stream was open."""

    def __init__(self, ev: events.ConnectionTerminated) -> None:
        super().__init__(describe_close(ev))
        self.event = ev


class _StreamState:
    """One stream's received bytes, its end, and how it failed, fed from aioquic's events."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.eof = False
        self.error: Exception | None = None
        self.stopped: int | None = None
        self.changed = asyncio.Event()

    def feed(self, data: bytes, end: bool) -> None:
        self.buf += data
        self.eof = self.eof or end
        self.changed.set()

    def fail(self, e: Exception) -> None:
        if self.error is None and not self.eof:
            self.error = e
        self.changed.set()

    async def wait(self) -> None:
        self.changed.clear()
        await self.changed.wait()

    async def read_exactly(self, n: int) -> bytes | None:
        """`n` bytes; None if the stream ended cleanly first."""
        while len(self.buf) < n:
            if self.error is not None:
                raise self.error
            if self.eof:
                return None
            await self.wait()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def read_some(self, n: int) -> bytes:
        """Up to `n` bytes (-1: all available), b"" at the clean end."""
        while not self.buf:
            if self.error is not None:
                raise self.error
            if self.eof:
                return b""
            await self.wait()
        take = len(self.buf) if n < 0 else min(n, len(self.buf))
        out = bytes(self.buf[:take])
        del self.buf[:take]
        return out


class _Protocol(QuicConnectionProtocol):
    """aioquic's protocol, with resets and connection loss kept per stream."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.streams: dict[int, _StreamState] = {}
        self.terminated: events.ConnectionTerminated | None = None
        self.closed_locally = False

    def close(self, error_code: int = 0, reason_phrase: str = "") -> None:
        self.closed_locally = True
        super().close(error_code=error_code, reason_phrase=reason_phrase)

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.feed(event.data, event.end_stream)
        elif isinstance(event, events.StreamReset):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.fail(StreamReset(event.error_code))
        elif isinstance(event, events.StopSendingReceived):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.stopped = event.error_code
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated = event
            for st in self.streams.values():
                st.fail(_Lost(event))

    def open_stream(self) -> tuple[int, _StreamState]:
        sid = self._quic.get_next_available_stream_id()
        st = _StreamState()
        self.streams[sid] = st
        return sid, st

    def send(self, sid: int, data: bytes, end: bool = False) -> None:
        self._quic.send_stream_data(sid, data, end_stream=end)
        self.transmit()

    def abort(self, sid: int, code: int = StreamCode.STREAM_ABORTED) -> None:
        """Resets our side and asks the node to stop sending: it stops the work."""
        if self.terminated is not None:
            return
        try:
            self._quic.reset_stream(sid, code)
            self._quic.stop_stream(sid, code)
        except ValueError:
            pass  # already finished or discarded: nothing to stop
        self.transmit()
        self.streams.pop(sid, None)

    def done(self, sid: int) -> None:
        self.streams.pop(sid, None)


def _nameservers(servers: list[str]) -> tuple[list[str], int] | None:
    """`ip` / `ip:port` / `[v6]:port` name servers, all on one port (dnspython's rule)."""
    if not servers:
        return None
    ips, ports = [], set()
    for s in servers:
        try:
            host, port = _parse_entry(s) if s.count(":") == 1 or s.startswith("[") else (s, 53)
            ipaddress.ip_address(host)
        except (ConfigError, ValueError):
            raise ConfigError(f"dns_servers: {s!r} is not ip, ip:port or [v6]:port") from None
        ips.append(host)
        ports.add(port)
    if len(ports) != 1:
        raise ConfigError(f"dns_servers: all servers must use one port, got {sorted(ports)}")
    return ips, ports.pop()


def _parse_entry(entry: str) -> tuple[str, int]:
    host, sep, port = entry.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"entries: {entry!r} is not host:port")
    return host.strip("[]"), int(port)


def _trust_domains(ca_path: str) -> set[str]:
    """The trust domains named by the CA file's certificates (`spiffe://<td>` URI SANs)."""
    try:
        with open(ca_path, "rb") as f:
            cas = x509.load_pem_x509_certificates(f.read())
    except OSError as e:
        raise ConfigError(f"ca: cannot read {ca_path}: {e.strerror}") from e
    except ValueError as e:
        raise ConfigError(f"ca: {ca_path} holds no PEM certificate: {e}") from e
    tds = set()
    for ca in cas:
        for uri in _uris(ca):
            if uri.startswith("spiffe://") and "/" not in uri[len("spiffe://") :]:
                tds.add(uri[len("spiffe://") :])
    if not tds:
        raise ConfigError(
            f"ca: {ca_path} names no trust domain (no spiffe://<td> URI SAN); was it made by `quicmesh certs init`?"
        )
    return tds


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]


def check_node_certificate(cert: x509.Certificate | None, trust_domains: set[str]) -> str:
    """The node's name, if `cert` is a node certificate of the mesh; raises why not.

    aioquic has already checked the chain to the CA and the validity dates; this checks the
    identity (docs/protocol.md, section 1), instead of a host name.
    """
    if cert is None:
        raise ProtocolError("the node presented no certificate")
    spiffe = [u for u in _uris(cert) if u.startswith("spiffe://")]
    if len(spiffe) != 1:
        raise ProtocolError(f"the node's certificate has {len(spiffe)} spiffe:// URI SANs; exactly one is required")
    td, _, path = spiffe[0][len("spiffe://") :].partition("/")
    role, _, name = path.partition("/")
    if td not in trust_domains:
        raise ProtocolError(
            f"the node's identity {spiffe[0]} is outside the CA's trust domain ({', '.join(sorted(trust_domains))})"
        )
    if role != "node" or not name:
        raise ProtocolError(f"{spiffe[0]} is not a node")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        raise ProtocolError(f"{spiffe[0]}'s certificate lacks the serverAuth key usage")
    return name


def rfc2782_order(records: Iterable[tuple[int, int, str]], rng: random.Random) -> list[str]:
    """SRV targets `(priority, weight, target)` in the order RFC 2782 says to try them."""
    out: list[str] = []
    by_prio: dict[int, list[tuple[int, str]]] = {}
    for prio, weight, target in records:
        by_prio.setdefault(prio, []).append((weight, target))
    for prio in sorted(by_prio):
        group = sorted(by_prio[prio], key=lambda wt: wt[0])  # zero weights first, as the RFC says
        while group:
            total = sum(w for w, _ in group)
            pick = rng.randint(0, total)
            running = 0
            for i, (w, t) in enumerate(group):
                running += w
                if running >= pick:
                    out.append(t)
                    del group[i]
                    break
    return out


@dataclass
class Reply:
    """A call's reply and the node that served it."""

    body: bytes
    served_by: str


class Stream:
    """A duplex byte stream to a service, once the node has accepted it."""

    def __init__(self, conn: _Connection, sid: int, st: _StreamState, served_by: str, finished: bool) -> None:
        self._conn, self._sid, self._st = conn, sid, st
        self.served_by = served_by
        """The node serving the stream."""
        self._finished = finished

    def write(self, data: bytes) -> None:
        """Queues `data` to the service (aioquic buffers it and sends it as flow control allows)."""
        if self._finished:
            raise errors.QuicmeshError("write after finish()")
        if self._st.stopped is not None:
            raise StreamReset(self._st.stopped, "the node stopped reading the request")
        self._conn.proto.send(self._sid, data)

    def finish(self) -> None:
        """Ends the request (FIN); the reply may still be read."""
        if not self._finished:
            self._finished = True
            if self._st.stopped is None and self._conn.alive():
                self._conn.proto.send(self._sid, b"", end=True)

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes of the reply (-1: whatever has arrived); b"" at its clean end.

        Raises :class:`StreamReset` if the node reset the reply and :class:`ConnectionLost` if
        the connection ended: neither ever looks like the end of the reply.
        """
        try:
            data = await self._st.read_some(n)
        except _Lost as e:
            self._conn.proto.done(self._sid)
            raise ConnectionLost(str(e), maybe_processed=True) from None
        except BaseException:
            self._conn.proto.done(self._sid)
            raise
        if not data:
            self._conn.proto.done(self._sid)
        return data

    async def read_all(self, limit: int = 16 << 20) -> bytes:
        """The rest of the reply, up to `limit` bytes (else :class:`ResponseTooLarge`)."""
        out = bytearray()
        while True:
            chunk = await self.read()
            if not chunk:
                return bytes(out)
            out += chunk
            if len(out) > limit:
                self.reset()
                raise errors.ResponseTooLarge(limit)

    def reset(self, code: int = StreamCode.STREAM_ABORTED) -> None:
        """Abandons the stream both ways; the mesh stops working on it."""
        self._conn.proto.abort(self._sid, code)


class _Connection:
    """A live connection to one entry node."""

    def __init__(self, entry: str, proto: _Protocol, transport: asyncio.DatagramTransport, node: str) -> None:
        self.entry, self.proto, self.transport, self.node = entry, proto, transport, node
        self.keepalive: asyncio.Task[None] | None = None

    def alive(self) -> bool:
        # aioquic reports a received CONNECTION_CLOSE only when its draining period ends
        # (3 PTOs later); a stream opened meanwhile would go nowhere until then.
        return self.proto.terminated is None and self.proto._quic._close_event is None

    async def close(self, code: int = StreamCode.SHUTDOWN, why: str = "client closed") -> None:
        if self.keepalive is not None:
            self.keepalive.cancel()
        if self.alive():
            self.proto.close(error_code=code, reason_phrase=why)
            try:
                await asyncio.wait_for(self.proto.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                pass
        self.transport.close()


class Client:
    """Calls mesh services through any entry node (docs/protocol.md).

    ``entries`` are ``host:port`` addresses of nodes; ``srv`` an SRV name (``_quicmesh._udp.
    mesh.example``) whose targets are tried first, in RFC 2782 order, looked up through
    ``dns_servers`` (``ip`` or ``ip:port``; default: the system's). ``ca`` is the mesh CA file;
    ``cert`` and ``key`` this client's certificate (``quicmesh certs client NAME``).

    The connection is made on first use and made again, to the next entry that answers, when
    it is lost. Use as ``async with Client(...) as client:`` or call :meth:`close`.
    """

    def __init__(
        self,
        entries: list[str] | None = None,
        *,
        ca: str,
        cert: str | None = None,
        key: str | None = None,
        srv: str | None = None,
        dns_servers: list[str] | None = None,
        connect_timeout: float = 5.0,
        keepalive: float = 5.0,
        max_response_bytes: int = 16 << 20,
    ) -> None:
        self.entries = list(entries or [])
        for e in self.entries:
            _parse_entry(e)
        if not self.entries and not srv:
            raise ConfigError("entries: give at least one entry node (host:port) or an srv name")
        if (cert is None) != (key is None):
            raise ConfigError("cert and key: give both (a client certificate and its key) or neither")
        for what, path in (("ca", ca), ("cert", cert), ("key", key)):
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"{what}: {path} does not exist or is not a file")
        self._trust_domains = _trust_domains(ca)
        self._config = QuicConfiguration(
            is_client=True,
            alpn_protocols=[ALPN],
            verify_mode=ssl.CERT_REQUIRED,
            idle_timeout=max(3 * keepalive, 30.0),
        )
        # No server name: nodes are verified by their SPIFFE id, not a host name (section 1).
        self._config.server_name = None
        self._config.load_verify_locations(cafile=ca)
        if cert is not None and key is not None:
            try:
                self._config.load_cert_chain(cert, key)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"cert/key: {cert} and {key} do not load as a PEM certificate and key: {e}") from e
        self.srv = srv
        self.dns_servers = list(dns_servers or [])
        self._nameservers = _nameservers(self.dns_servers)
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.max_response_bytes = max_response_bytes
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()
        self._avoid: str | None = None
        self._closed = False
        self._rng = random.Random()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- connecting -----------------------------------------------------------------------

    async def _srv_entries(self) -> tuple[list[str], str]:
        import dns.asyncresolver
        import dns.exception
        import dns.resolver

        resolver = dns.asyncresolver.Resolver(configure=not self._nameservers)
        if self._nameservers:
            resolver.nameservers, resolver.port = self._nameservers
        resolver.lifetime = 2.0
        assert self.srv is not None
        try:
            answer = await resolver.resolve(self.srv, "SRV")
        except dns.exception.DNSException as e:
            return [], f"SRV {self.srv}: {e}"
        out = []
        records = [(r.priority, r.weight, f"{str(r.target).rstrip('.')}:{r.port}") for r in answer]
        for target in rfc2782_order(records, self._rng):
            host, port = _parse_entry(target)
            try:
                ipaddress.ip_address(host)
                out.append(target)
                continue
            except ValueError:
                pass
            try:
                a = await resolver.resolve(host, "A")
                out.extend(f"{r.address}:{port}" for r in a)
            except dns.exception.DNSException:
                try:
                    aaaa = await resolver.resolve(host, "AAAA")
                    out.extend(f"[{r.address}]:{port}" for r in aaaa)
                except dns.exception.DNSException as e:
                    out.append(target)  # let the dial say why
                    del e
        return out, ""

    async def _candidates(self) -> tuple[list[str], str]:
        found: list[str] = []
        why = ""
        if self.srv:
            found, why = await self._srv_entries()
        out = list(found)
        out += [e for e in self.entries if e not in out]
        # An entry that said it is draining goes last, so the next connect moves elsewhere.
        return [e for e in out if e != self._avoid] + [e for e in out if e == self._avoid], why

    async def _dial(self, entry: str) -> _Connection:
        from aioquic.quic.connection import QuicConnection

        host, port = _parse_entry(entry)
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), self.connect_timeout)
        except (OSError, UnicodeError, asyncio.TimeoutError) as e:
            raise OSError(f"cannot resolve {host!r}: {e or 'timed out'}") from None
        family, addr = infos[0][0], infos[0][4]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind(("::", 0, 0, 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
        quic = QuicConnection(configuration=self._config)
        transport, proto = await loop.create_datagram_endpoint(lambda: _Protocol(quic), sock=sock)
        assert isinstance(proto, _Protocol)
        try:
            proto.connect(addr)
            try:
                await asyncio.wait_for(proto.wait_connected(), self.connect_timeout)
            except asyncio.TimeoutError:
                raise ConnectionError(f"handshake timed out after {self.connect_timeout:g} s") from None
            except ConnectionError:
                ev = proto.terminated
                raise ConnectionError(describe_close(ev) if ev else "handshake failed") from None
            node = check_node_certificate(getattr(quic.tls, "_peer_certificate", None), self._trust_domains)
        except BaseException:
            proto.close()
            transport.close()
            raise
        conn = _Connection(entry, proto, transport, node)
        conn.keepalive = asyncio.ensure_future(self._keep_alive(conn))
        return conn

    async def _keep_alive(self, conn: _Connection) -> None:
        # The node drops a silent connection after its idle timeout (30 s by default).
        while conn.alive():
            await asyncio.sleep(self.keepalive)
            try:
                await asyncio.wait_for(conn.proto.ping(), self.keepalive)
            except (ConnectionError, asyncio.TimeoutError):
                pass
        if self._conn is not conn:
            conn.transport.close()  # a connection the client had let go of: free the socket

    async def connect(self) -> None:
        """Connects to the first entry that answers (it is also done on first use)."""
        await self._connection()

    async def _connection(self) -> _Connection:
        async with self._lock:
            if self._closed:
                raise errors.QuicmeshError("this client is closed")
            if self._conn is not None and self._conn.alive():
                return self._conn
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
            candidates, why = await self._candidates()
            self._conn = await self._race(candidates, why)
            return self._conn

    async def _race(self, candidates: list[str], why: str) -> _Connection:
        """Dials the entries in order, starting the next one if the last has not answered
        within ENTRY_STAGGER (or failed): a dead entry costs the stagger, not the timeout."""
        tried: list[tuple[str, str]] = []
        waiting = list(candidates)
        running: dict[asyncio.Task[_Connection], str] = {}
        try:
            while waiting or running:
                if waiting:
                    entry = waiting.pop(0)
                    running[asyncio.ensure_future(self._dial(entry))] = entry
                done, _ = await asyncio.wait(
                    running, timeout=ENTRY_STAGGER if waiting else None, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    entry = running.pop(task)
                    e = task.exception()
                    if e is None:
                        return task.result()
                    tried.append((entry, str(e) or type(e).__name__))
            raise ConnectError(tried, why)
        finally:
            for task in running:
                if task.done() and not task.cancelled() and task.exception() is None:
                    asyncio.ensure_future(task.result().close())  # a runner-up that also connected
                else:
                    task.cancel()

    async def _forget(self, conn: _Connection, avoid: bool = False) -> None:
        # An entry that is draining, or closed the connection, goes last next time.
        if avoid or not conn.alive():
            self._avoid = conn.entry
        async with self._lock:
            if self._conn is conn:
                self._conn = None
        # Not closed while alive: a draining node lets the streams it took finish, then closes
        # it; the keepalive notices and the socket is closed then.
        if not conn.alive():
            await conn.close()

    async def close(self) -> None:
        """Closes the connection cleanly; the client cannot be used afterwards."""
        async with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    # --- calls ----------------------------------------------------------------------------

    async def _open(
        self, service: str, key: bytes | None, timeout: float | None, body: bytes | None, holder: list
    ) -> tuple[_Connection, int, _StreamState, str]:
        loop = asyncio.get_running_loop()
        give_up = None if timeout is None else loop.time() + timeout
        attempts = 3
        for attempt in range(1, attempts + 1):
            conn = await self._connection()
            # A retry carries what is left of the caller's timeout, not the whole of it.
            deadline_ms = None if give_up is None else max(1, int((give_up - loop.time()) * 1000))
            header = ServiceRequest(service, key=key, deadline_ms=deadline_ms).encode()
            sid, st = conn.proto.open_stream()
            holder[:] = [conn, sid]
            conn.proto.send(sid, header + (body or b""), end=body is not None)
            try:
                resp = await _read_response(st)
            except BaseException as e:
                conn.proto.done(sid)
                if not isinstance(e, _Lost):
                    raise
                await self._forget(conn)
                if 0x100 <= e.event.error_code <= 0x1FF:
                    # The handshake was refused (client certificate): nothing reached a service.
                    raise ConnectError([(conn.entry, str(e))]) from None
                # Safe to send again only if nothing was sent or the node closed in order.
                if self._closed:
                    raise errors.QuicmeshError("the client was closed during the call") from None
                if attempt < attempts and (body is None or _closed_in_order(e.event, conn.proto.closed_locally)):
                    continue
                raise ConnectionLost(str(e), maybe_processed=body is not None) from None
            if isinstance(resp, Accept):
                return conn, sid, st, resp.node
            conn.proto.done(sid)
            if resp.code == RejectCode.DRAINING and attempt < attempts:
                await self._forget(conn, avoid=True)
                continue
            raise errors.rejected(resp.code, resp.reason)
        raise AssertionError("unreachable")

    async def request(
        self,
        service: str,
        body: bytes = b"",
        *,
        key: bytes | None = None,
        timeout: float | None = None,
        max_response_bytes: int | None = None,
    ) -> Reply:
        """Sends `body` to `service` and returns the whole reply and the node that served it.

        `key` routes requests with the same key to the same node; `timeout` (seconds) travels
        with the request as its deadline and bounds the whole call.
        """
        limit = self.max_response_bytes if max_response_bytes is None else max_response_bytes
        holder: list = []

        async def run() -> Reply:
            small = len(body) <= PIPELINE_MAX
            conn, sid, st, node = await self._open(service, key, timeout, body if small else None, holder)
            stream = Stream(conn, sid, st, node, finished=small)
            if not small:
                stream.write(body)
                stream.finish()
            return Reply(await stream.read_all(limit), node)

        if timeout is None:
            return await run()
        try:
            return await asyncio.wait_for(run(), timeout)
        except asyncio.TimeoutError:
            if holder:
                holder[0].proto.abort(holder[1])
            raise CallTimeout(timeout) from None
        except StreamReset as e:
            # The node noticed the deadline first: the same failure as the local timer's.
            if e.code == StreamCode.DEADLINE_EXCEEDED:
                raise CallTimeout(timeout) from e
            raise

    async def call(
        self, service: str, body: bytes = b"", *, key: bytes | None = None, timeout: float | None = None
    ) -> bytes:
        """Sends `body` to `service` and returns the reply's bytes (see :meth:`request`)."""
        return (await self.request(service, body, key=key, timeout=timeout)).body

    async def open_stream(self, service: str, *, key: bytes | None = None, timeout: float | None = None) -> Stream:
        """Opens a duplex stream to `service` once the node has accepted it.

        `timeout` bounds the opening and is sent as the stream's deadline: the node resets
        the stream when it passes.
        """
        holder: list = []
        fut = self._open(service, key, timeout, None, holder)
        try:
            conn, sid, st, node = await (fut if timeout is None else asyncio.wait_for(fut, timeout))
        except asyncio.TimeoutError:
            if holder:
                holder[0].proto.abort(holder[1])
            raise CallTimeout(timeout or 0.0) from None
        return Stream(conn, sid, st, node, finished=False)

    async def status(self) -> StatusReport:
        """The entry node's view of the mesh: members, their status and load."""
        data = await self.call(STATUS_SERVICE)
        try:
            return decode_status(data)
        except DecodeError as e:
            raise ProtocolError(f"unreadable status report: {e}") from e

    async def entry_node(self) -> str:
        """The name of the entry node this client is connected to (connecting if needed)."""
        return (await self._connection()).node


async def _read_response(st: _StreamState) -> Accept | Reject:
    head = await st.read_exactly(4)
    if head is None:
        raise ProtocolError("the node ended the stream without an answer")
    n = int.from_bytes(head, "big")
    if n > MAX_RESPONSE_FRAME:
        raise ProtocolError(f"response frame of {n} bytes exceeds {MAX_RESPONSE_FRAME}")
    body = await st.read_exactly(n)
    if body is None:
        raise ProtocolError("the node's answer was cut short")
    try:
        return decode_response(body)
    except DecodeError as e:
        raise ProtocolError(f"unreadable answer: {e}") from e
