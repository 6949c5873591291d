"""Fixtures: a real CA and certificates from `quicmesh certs`, real TCP backends, and real
`quicmesh node` processes (the release binary the Rust tests built)."""

from __future__ import annotations

import os
import shutil
import socket
import socketserver
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("QUICMESH_BIN", REPO / "target" / "release" / "quicmesh"))
TRUST_DOMAIN = "py.test"


def quicmesh(*args: str) -> str:
    if not BIN.exists():
        pytest.fail(f"{BIN} does not exist: build it with `cargo build --release` (or set QUICMESH_BIN)")
    out = subprocess.run([str(BIN), *args], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"quicmesh {' '.join(args)} failed ({out.returncode}): {out.stderr}")
    return out.stdout


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_and_tcp_port() -> int:
    """A port free for both UDP and TCP on loopback a moment ago (a DNS server takes both)."""
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            try:
                t.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def start_dnsmasq(dnsmasq: str, tmp: Path, records: list[str], probe: str) -> tuple[subprocess.Popen, int]:
    """dnsmasq serving `records` on loopback, once it answers a query for `probe` (SRV).
    A port taken between choosing and binding is retried with another."""
    import dns.exception
    import dns.resolver

    errors = []
    for _ in range(5):
        port = free_udp_and_tcp_port()
        proc = subprocess.Popen(
            [
                dnsmasq, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--bind-interfaces", "--listen-address=127.0.0.1", f"--port={port}",
                "--user=root" if os.geteuid() == 0 else f"--user={os.getlogin()}",
                f"--pid-file={tmp / f'dnsmasq-{port}.pid'}", *records,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        r = dns.resolver.Resolver(configure=False)
        r.nameservers, r.port, r.lifetime = ["127.0.0.1"], port, 0.5
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                r.resolve(probe, "SRV")
                return proc, port
            except dns.exception.DNSException:
                time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        errors.append(f"port {port}: {proc.stderr.read().decode(errors='replace').strip() if proc.stderr else ''}")
    pytest.fail(f"dnsmasq did not start: {'; '.join(errors)}")


class Pki:
    def __init__(self, root: Path) -> None:
        self.dir = root
        quicmesh("certs", "init", "--trust-domain", TRUST_DOMAIN, "--out", str(root))
        self.other = root / "other"
        quicmesh("certs", "init", "--trust-domain", TRUST_DOMAIN, "--out", str(self.other))

    @property
    def ca(self) -> str:
        return str(self.dir / "ca.crt")

    def node(self, name: str) -> tuple[str, str]:
        crt = self.dir / f"node-{name}.crt"
        if not crt.exists():
            quicmesh("certs", "node", name, "--ca", str(self.dir), "--out", str(self.dir))
        return str(crt), str(self.dir / f"node-{name}.key")

    def client(self, name: str, ca_dir: Path | None = None) -> tuple[str, str]:
        d = ca_dir or self.dir
        crt = d / f"client-{name}.crt"
        if not crt.exists():
            quicmesh("certs", "client", name, "--ca", str(d), "--out", str(d))
        return str(crt), str(d / f"client-{name}.key")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("certs"))


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Broken(socketserver.BaseRequestHandler):
    """Sends half a reply, then resets the TCP connection: the node must reset the stream."""

    def handle(self) -> None:
        self.request.recv(65536)
        self.request.sendall(b"partial-")
        time.sleep(0.05)
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.request.close()


class _Silent(socketserver.BaseRequestHandler):
    """Reads the request and never answers, until the node gives up on it."""

    def handle(self) -> None:
        while self.request.recv(65536):
            pass
        time.sleep(30)  # the request has ended; the reply never comes


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # the default 5 overflows under 128 concurrent streams: resets


@pytest.fixture(scope="session")
def backends():
    servers = {
        name: _Server(("127.0.0.1", 0), h) for name, h in (("echo", _Echo), ("broken", _Broken), ("silent", _Silent))
    }
    for s in servers.values():
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield {name: f"127.0.0.1:{s.server_address[1]}" for name, s in servers.items()}
    for s in servers.values():
        s.shutdown()


class NodeProc:
    """A `quicmesh node` process with its own config file, admin port and log."""

    def __init__(self, pki: Pki, name: str, backends: dict[str, str], tmp: Path, peers: list[str] = ()) -> None:
        self.name = name
        self.port = free_port()
        self.admin = free_port(socket.SOCK_STREAM)
        self.addr = f"127.0.0.1:{self.port}"
        crt, key = pki.node(name)
        lines = [
            f'name = "{name}"',
            f'listen = "{self.addr}"',
            f"peers = [{', '.join(repr(p).replace(chr(39), chr(34)) for p in peers)}]",
            "[tls]",
            f'ca = "{pki.ca}"',
            f'cert = "{crt}"',
            f'key = "{key}"',
            "[admin]",
            f'listen = "127.0.0.1:{self.admin}"',
        ]
        for svc, backend in backends.items():
            lines += [f"[services.{svc}]", f'backend = "{backend}"']
        lines += [
            "[services.secret]",
            f'backend = "{backends["echo"]}"',
            f'allow = ["spiffe://{TRUST_DOMAIN}/client/other"]',
        ]
        self.config = tmp / f"{name}.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = open(tmp / f"{name}.log", "wb")
        env = {**os.environ, "RUST_LOG": os.environ.get("QUICMESH_TEST_LOG", "info")}
        self.proc = subprocess.Popen(
            [str(BIN), "node", "--config", str(self.config)], stdout=self.log, stderr=subprocess.STDOUT, env=env
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"node {self.name} exited ({self.proc.returncode}); log: {self.log.name}: {Path(self.log.name).read_text()}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail(f"node {self.name} not ready within {timeout} s; log: {Path(self.log.name).read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def node(pki: Pki, backends: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    n = NodeProc(pki, "py-a", backends, tmp_path_factory.mktemp("node"))
    yield n
    n.stop()


@pytest.fixture
def start_node(pki: Pki, backends: dict[str, str], tmp_path: Path):
    started: list[NodeProc] = []

    def start(name: str, peers: list[str] = ()) -> NodeProc:
        n = NodeProc(pki, name, backends, tmp_path, peers)
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


@pytest.fixture(scope="session")
def dnsmasq_bin() -> str:
    path = shutil.which("dnsmasq")
    if path is None:
        pytest.fail("dnsmasq is not installed (apt-get install dnsmasq-base); .ci/run installs it")
    return path
