"""The client against real `quicmesh node` processes, real certificates, real TCP backends and a
real DNS server (dnsmasq): calls, streams, typed rejects, resets, deadlines, entry failover in
SRV order, draining, and clients with the wrong certificate or none."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

import quicmesh
from quicmesh import MemberState, StreamCode

from .conftest import free_port, start_dnsmasq
from .conftest import quicmesh as quicmesh_cli


def client(pki, entries, name: str = "web", **kw) -> quicmesh.Client:
    cert, key = pki.client(name)
    return quicmesh.Client(entries, ca=pki.ca, cert=cert, key=key, **kw)


async def test_a_call_is_echoed_and_names_the_node_that_served_it(pki, node) -> None:
    async with client(pki, [node.addr]) as c:
        assert await c.call("echo", b"hello") == b"hello"
        reply = await c.request("echo", b"x" * 300_000, key=b"user-1", timeout=10)
        assert reply.body == b"x" * 300_000 and reply.served_by == "py-a"
        assert await c.entry_node() == "py-a"
        # Many calls at once share the connection, one stream each.
        bodies = [os.urandom(64) for _ in range(200)]
        assert await asyncio.gather(*(c.call("echo", b, timeout=10) for b in bodies)) == bodies
        assert c._conn is not None and c._conn.proto.streams == {}, "every finished stream is forgotten"


async def test_a_stream_is_duplex(pki, node) -> None:
    async with client(pki, [node.addr]) as c:
        s = await c.open_stream("echo")
        assert s.served_by == "py-a"
        s.write(b"ping")
        got = b""
        while len(got) < 4:
            got += await s.read()
        assert got == b"ping"
        s.write(b"-more")
        s.finish()
        assert await s.read_all() == b"-more"


async def test_rejects_are_typed_and_carry_the_nodes_reason(pki, node) -> None:
    async with client(pki, [node.addr]) as c:
        with pytest.raises(quicmesh.UnknownService) as e:
            await c.call("no-such-service", b"x")
        assert e.value.code is quicmesh.RejectCode.UNKNOWN_SERVICE and not e.value.retryable
        assert "no-such-service" in e.value.reason, e.value.reason
        with pytest.raises(quicmesh.Unauthorized) as e2:
            await c.call("secret", b"x")
        assert "services.secret.allow" in e2.value.reason, e2.value.reason
        # The connection is unharmed by either refusal, and keeps no state of them.
        assert await c.call("echo", b"still") == b"still"
        assert c._conn is not None and c._conn.proto.streams == {}
    async with client(pki, [node.addr], name="other") as allowed:
        assert await allowed.call("secret", b"ok") == b"ok"


async def test_a_reset_reply_is_an_error_never_a_short_reply(pki, node) -> None:
    async with client(pki, [node.addr]) as c:
        with pytest.raises(quicmesh.StreamReset) as e:
            await c.call("broken", b"hi", timeout=10)
        assert e.value.code == StreamCode.STREAM_ABORTED
        assert "may have been partly processed" in str(e.value)
        s = await c.open_stream("broken")
        s.write(b"hi")
        with pytest.raises(quicmesh.StreamReset):
            await s.read_all()
        assert c._conn is not None and c._conn.proto.streams == {}


async def test_the_deadline_travels_with_the_call_and_bounds_it(pki, node) -> None:
    async with client(pki, [node.addr]) as c:
        started = time.monotonic()
        with pytest.raises(quicmesh.CallTimeout) as e:
            await c.call("silent", b"anyone?", timeout=0.5)
        assert isinstance(e.value, TimeoutError)
        assert time.monotonic() - started < 3.0
        assert await c.call("echo", b"after") == b"after"
        # The deadline is in the header: the node itself resets the stream when it passes,
        # here where no local timer runs (open_stream's timeout bounds only the opening).
        s = await c.open_stream("silent", timeout=0.5)
        s.write(b"anyone?")
        with pytest.raises(quicmesh.StreamReset) as reset:
            await asyncio.wait_for(s.read_all(), 5)
        assert reset.value.code == StreamCode.DEADLINE_EXCEEDED, reset.value


async def test_status_decodes_the_nodes_view(pki, node) -> None:
    async with client(pki, [node.addr]) as c:
        report = await c.status()
    assert report.node == "py-a"
    me = [m for m in report.members if m.member.name == "py-a"]
    assert me and me[0].member.status is MemberState.ALIVE
    assert {"echo", "broken", "silent", "secret"} <= set(me[0].member.services)


async def test_entries_are_tried_in_order_until_one_answers(pki, node) -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with client(pki, ["bad..name:1", dead, node.addr], connect_timeout=1.0) as c:
        assert await c.call("echo", b"failover") == b"failover"
    with pytest.raises(quicmesh.ConnectError) as e:
        async with client(pki, [dead], connect_timeout=0.5):
            pass
    assert dead in str(e.value) and "timed out" in str(e.value)
    # A dead first entry costs the stagger, not the whole connect timeout.
    started = time.monotonic()
    async with client(pki, [dead, node.addr], connect_timeout=5.0) as c:
        assert await c.call("echo", b"raced") == b"raced"
    assert time.monotonic() - started < 2.5


async def test_srv_targets_are_tried_in_rfc2782_order(pki, node, start_node, dnsmasq_bin, tmp_path) -> None:
    second = start_node("py-s", peers=[node.addr])
    dead = free_port()
    zone = "mesh.test"
    name = f"_quicmesh._udp.{zone}"
    records = [
        f"--host-record=a.{zone},127.0.0.1",
        # Priority 0 points at a port nobody listens on, 5 at py-s, 10 at py-a.
        f"--srv-host={name},a.{zone},{dead},0,10",
        f"--srv-host={name},a.{zone},{node.port},10,10",
        f"--srv-host={name},a.{zone},{second.port},5,10",
    ]
    proc, dns_port = start_dnsmasq(dnsmasq_bin, tmp_path, records, name)
    try:
        c = client(pki, None, srv=name, dns_servers=[f"127.0.0.1:{dns_port}"], connect_timeout=1.0)
        await c.connect()
        assert await c.call("echo", b"via srv") == b"via srv"
        assert await c.entry_node() == "py-s", "the dead priority-0 target is skipped, then priority 5 wins"
        await c.close()
    finally:
        proc.terminate()
        proc.wait()


async def test_a_draining_entry_is_left_for_another(pki, start_node) -> None:
    a = start_node("py-d1")
    b = start_node("py-d2", peers=[a.addr])
    # A stream held open keeps py-d1 draining (not gone) while the client must move.
    holder = client(pki, [a.addr])
    held = await holder.open_stream("silent")
    held.write(b"hold")
    async with client(pki, [a.addr, b.addr]) as c:
        assert await c.entry_node() == "py-d1"
        a.proc.send_signal(signal.SIGTERM)  # drains: new streams get Draining, then it stops
        # Every call succeeds while the entry drains (py-d1 may still relay some to py-d2
        # before the signal lands); the client moves to py-d2 on the first Draining.
        deadline = time.monotonic() + 20
        while await c.entry_node() != "py-d2":
            assert time.monotonic() < deadline, "the client never left the draining entry"
            await c.request("echo", b"x", timeout=5)
        assert await c.call("echo", b"moved") == b"moved"
        assert a.proc.poll() is None, "py-d1 is still draining: the client moved on its Draining answer"
    held.reset()
    await holder.close()


async def test_a_client_without_a_certificate_is_told_what_to_pass(pki, node) -> None:
    c = quicmesh.Client([node.addr], ca=pki.ca)
    with pytest.raises(quicmesh.ConnectError) as e:
        await c.connect()
        await c.call("echo", b"x", timeout=5)
    assert "certificate_required" in str(e.value) and "cert=" in str(e.value), str(e.value)
    await c.close()


async def test_a_certificate_from_another_ca_is_refused_with_the_reason(pki, node) -> None:
    cert, key = pki.client("web", ca_dir=pki.other)
    c = quicmesh.Client([node.addr], ca=pki.ca, cert=cert, key=key)
    with pytest.raises(quicmesh.ConnectError) as e:
        await c.connect()
        await c.call("echo", b"x", timeout=5)
    assert "another CA" in str(e.value), str(e.value)
    await c.close()


async def test_a_node_from_another_mesh_is_not_trusted(pki, node) -> None:
    cert, key = pki.client("web")
    c = quicmesh.Client([node.addr], ca=str(pki.other / "ca.crt"), cert=cert, key=key, connect_timeout=2)
    with pytest.raises(quicmesh.ConnectError) as e:
        await c.connect()
    assert node.addr in str(e.value)
    await c.close()


def test_bad_arguments_name_the_argument(pki, tmp_path) -> None:
    with pytest.raises(quicmesh.ConfigError, match="entries"):
        quicmesh.Client([], ca=pki.ca)
    with pytest.raises(quicmesh.ConfigError, match="entries: 'nohost'"):
        quicmesh.Client(["nohost"], ca=pki.ca)
    with pytest.raises(quicmesh.ConfigError, match="ca: .*missing.crt"):
        quicmesh.Client(["127.0.0.1:1"], ca=str(tmp_path / "missing.crt"))
    cert, _ = pki.client("web")
    with pytest.raises(quicmesh.ConfigError, match="cert and key"):
        quicmesh.Client(["127.0.0.1:1"], ca=pki.ca, cert=cert)
    with pytest.raises(quicmesh.ConfigError, match="dns_servers: 'ns1'"):
        quicmesh.Client(["127.0.0.1:1"], ca=pki.ca, dns_servers=["ns1"])
    with pytest.raises(quicmesh.ConfigError, match="ca: .*trust domain"):
        quicmesh.Client(["127.0.0.1:1"], ca=cert)


def test_only_a_node_of_the_cas_trust_domain_is_accepted(pki, tmp_path) -> None:
    from cryptography import x509

    from quicmesh.client import check_node_certificate

    def load(path: str) -> x509.Certificate:
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificate(f.read())

    tds = {"py.test"}
    assert check_node_certificate(load(pki.node("py-a")[0]), tds) == "py-a"
    with pytest.raises(quicmesh.ProtocolError, match="is not a node"):
        check_node_certificate(load(pki.client("web")[0]), tds)
    other = tmp_path / "other-td"
    quicmesh_cli("certs", "init", "--trust-domain", "other.test", "--out", str(other))
    quicmesh_cli("certs", "node", "x", "--ca", str(other), "--out", str(other))
    with pytest.raises(quicmesh.ProtocolError, match="outside the CA's trust domain"):
        check_node_certificate(load(str(other / "node-x.crt")), tds)
    with pytest.raises(quicmesh.ProtocolError, match="no certificate"):
        check_node_certificate(None, tds)


async def test_a_closed_client_refuses_further_calls(pki, node) -> None:
    c = client(pki, [node.addr])
    assert await c.call("echo", b"x") == b"x"
    await c.close()
    with pytest.raises(quicmesh.QuicmeshError, match="closed"):
        await c.call("echo", b"x")
