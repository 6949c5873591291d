"""The encoder against docs/protocol.md's test vectors (the Rust encoder is checked against the
same block by tests/protocol_vectors.rs), and the pure helpers."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from quicmesh import MemberState, rfc2782_order
from quicmesh.wire import (
    Accept,
    DecodeError,
    Reader,
    Reject,
    RejectCode,
    ServiceRequest,
    control_header,
    decode_header,
    decode_response,
    decode_status,
    put_varint,
)

SPEC = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"


def vectors() -> dict[str, bytes]:
    block = SPEC.read_text().split("```vectors\n", 1)[1].split("```", 1)[0]
    out = {}
    for line in block.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, hexes = line.split(None, 1)
            out[name] = bytes.fromhex("".join(hexes.split()))
    return out


ENCODED = {
    "header-echo": ServiceRequest("echo").encode(),
    "header-key-deadline": ServiceRequest("kv", key=b"user-42", deadline_ms=1500).encode(),
    "header-status": ServiceRequest("quicmesh-status").encode(),
    "header-relayed": ServiceRequest(
        "db", hops=1, deadline_ms=100_000, origin="spiffe://mesh.local/client/web"
    ).encode(),
    "header-control": control_header(),
    "accept-node-a": Accept("a").encode(),
    "reject-unknown-service": Reject(RejectCode.UNKNOWN_SERVICE, 'no node offers service "x"').encode(),
    "reject-draining": Reject(RejectCode.DRAINING, "node a is draining").encode(),
}


@pytest.mark.parametrize("name", sorted(ENCODED))
def test_encoder_writes_the_spec_vectors(name: str) -> None:
    assert ENCODED[name].hex() == vectors()[name].hex()


def test_every_spec_vector_is_checked() -> None:
    assert set(vectors()) == set(ENCODED) | {"header-echo-with-trailer", "status-report-body"}


def test_the_status_report_vector_decodes_field_by_field() -> None:
    r = decode_status(vectors()["status-report-body"])
    assert (r.node, r.version, r.unreachable, r.identity_clashes) == ("a", "1.2.3", [], [])
    (row,) = r.members
    m = row.member
    assert (m.name, m.addr, m.incarnation, m.status, m.services) == (
        "a",
        "127.0.0.1:7400",
        300,
        MemberState.DRAINING,
        ["echo"],
    )
    load = m.load
    assert (load.inflight, load.capacity, load.cpu_permille, load.mem_permille, load.latency_us) == (
        2,
        1,
        250,
        500,
        1500,
    )
    assert load.per_service == [("echo", 2)]
    assert (m.version, m.heartbeat, m.suspectors, row.connected, row.rtt_us) == (7, 130, [], True, 80)
    assert r.routes == [("echo", [("a", 0.5)])]
    # A report from an older node ends after `routes` (or after `unreachable`).
    cut = vectors()["status-report-body"][:-2]
    assert decode_status(cut).unreachable == [] and decode_status(cut).members[0].member.name == "a"


def test_headers_and_responses_decode_back() -> None:
    v = vectors()
    assert decode_header(v["header-key-deadline"][4:]) == ServiceRequest("kv", key=b"user-42", deadline_ms=1500)
    assert decode_header(v["header-control"][4:]) is None
    assert decode_header(v["header-echo-with-trailer"][4:]) == ServiceRequest("echo")
    assert decode_response(v["accept-node-a"][4:]) == Accept("a")
    r = decode_response(v["reject-draining"][4:])
    assert isinstance(r, Reject) and r.code is RejectCode.DRAINING and r.code.retryable


def test_an_unknown_reject_code_is_kept_not_refused() -> None:
    r = decode_response(bytes([1, 42, 2]) + b"hi")
    assert isinstance(r, Reject) and r.code == 42 and r.reason == "hi"


@pytest.mark.parametrize("n,enc", [(0, "00"), (127, "7f"), (128, "8001"), (1500, "dc0b"), (2**32 - 1, "ffffffff0f")])
def test_varints(n: int, enc: str) -> None:
    out = bytearray()
    put_varint(out, n)
    assert out.hex() == enc
    assert Reader(bytes(out)).u32() == n


def test_truncated_and_overlong_input_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_response(bytes([0, 5]) + b"ab")
    with pytest.raises(DecodeError):
        Reader(b"\xff\xff\xff\xff\xff\xff").u32()
    with pytest.raises(DecodeError):
        decode_header(bytes([2, 1]))
    with pytest.raises(DecodeError):
        decode_status(b"\x01a")


def test_rfc2782_order_takes_priorities_in_order_and_weights_in_proportion() -> None:
    rng = random.Random(7)
    records = [(10, 0, "late"), (0, 90, "heavy"), (0, 10, "light")]
    firsts = {"heavy": 0, "light": 0}
    for _ in range(2000):
        order = rfc2782_order(records, rng)
        assert order[-1] == "late" and sorted(order[:2]) == ["heavy", "light"]
        firsts[order[0]] += 1
    assert 0.8 < firsts["heavy"] / 2000 < 0.97, firsts
