//! Certificates and authorization on real nodes: bad certificates refused with a reason,
//! per-service allow-lists, revocation lists, certificate rotation without a restart under
//! load, and address validation (QUIC Retry) under handshake load.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use common::*;
use quicmesh::{
    CallError, Client, ClientConfig, Echo, IssueOptions, MeshCa, Node, RejectCode, Role, TlsMaterial, TlsPaths,
};

/// Everything the nodes in this test binary log, to check the lines operators will read.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("quicmesh=info")
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .try_init();
        buf
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged(needle: &str) -> bool {
    String::from_utf8_lossy(&logs().lock().unwrap()).contains(needle)
}

/// Writes a certificate for `role`/`name` with `opts` into the PKI dir under `file` names.
fn issue_into(pki: &Pki, ca: &MeshCa, opts: &IssueOptions, file: &str) -> TlsPaths {
    let c = ca.issue(opts).unwrap();
    let cert = pki.path().join(format!("{file}.crt"));
    let key = pki.path().join(format!("{file}.key"));
    std::fs::write(&cert, &c.cert_pem).unwrap();
    std::fs::write(&key, &c.key_pem).unwrap();
    TlsPaths::new(pki.path().join("ca.crt"), cert, key)
}

async fn connect(tls: TlsPaths, entry: SocketAddr) -> Result<Client, quicmesh::ClientError> {
    let mut cfg = ClientConfig::new(tls, vec![entry.to_string()]);
    cfg.transport.connect_timeout = Duration::from_secs(2);
    Client::connect(cfg).await
}

/// Tries a call with `tls`; returns the error the caller sees. In TLS 1.3 the client
/// finishes its side of the handshake before the node has judged its certificate, so the
/// refusal may surface at connect or at the first call.
async fn refused(tls: TlsPaths, entry: SocketAddr) -> String {
    let client = match connect(tls, entry).await {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let err = client
        .call("echo", "x")
        .await
        .expect_err("a refused caller got a reply");
    client.close().await;
    err.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_future_and_foreign_certificates_are_refused_with_a_reason() {
    logs();
    let pki = Pki::new();
    let node = Node::builder(pki.node_config("a"))
        .handler("echo", Echo)
        .start()
        .await
        .unwrap();
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let mut expired = IssueOptions::new(Role::Client, "old");
    expired.window = Some((now - 10 * day, now - day));
    let mut future = IssueOptions::new(Role::Client, "early");
    future.window = Some((now + day, now + 10 * day));
    let foreign_ca = MeshCa::generate(TD, 2).unwrap();
    let cases = [
        (issue_into(&pki, &pki.ca, &expired, "expired"), "cert_expired"),
        (issue_into(&pki, &pki.ca, &future, "future"), "cert_not_yet_valid"),
        (
            issue_into(
                &pki,
                &foreign_ca,
                &IssueOptions::new(Role::Client, "stranger"),
                "stranger",
            ),
            "unknown_ca",
        ),
    ];
    for (tls, reason) in cases {
        // The client loads its bad certificate without complaint: the node is the judge.
        TlsMaterial::load(&tls, Role::Client).unwrap();
        let err = refused(tls, node.local_addr()).await;
        println!("{reason}: the caller sees: {err}");
        assert!(
            err.contains("invalid peer certificate"),
            "{reason}: unclear error {err}"
        );
        eventually(Duration::from_secs(5), reason, || {
            node.stats()
                .handshake_failure_reasons
                .get(reason)
                .is_some_and(|n| *n >= 1)
        })
        .await;
    }
    // Each refusal is one info line with the address and what to do about it.
    assert!(logged(
        "handshake refused: the peer's certificate has expired; issue it a new one"
    ));
    assert!(logged(
        "handshake refused: the peer's certificate is not valid yet; check both hosts' clocks"
    ));
    assert!(logged(
        "handshake refused: the peer's certificate is not from this mesh's CA"
    ));
    assert!(logged("reason=cert_expired"));
    // A client certificate cannot run a node.
    let as_node = TlsMaterial::load(&pki.tls(Role::Client, "web"), Role::Node).unwrap_err();
    assert!(as_node.to_string().contains("runs as a node"), "{as_node}");
    // And good callers were never disturbed.
    let good = pki.client("web", &node).await;
    assert_eq!(&good.call("echo", "ok").await.unwrap()[..], b"ok");
    // The client retried its entry a few times; every failure was one of the three kinds.
    let s = node.stats();
    assert_eq!(s.handshake_failure_reasons.values().sum::<u64>(), s.handshake_failures);
    assert_eq!(s.handshake_failure_reasons.len(), 3, "{s:?}");
    good.close().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_lists_admit_only_the_listed_identities_even_through_a_relay() {
    logs();
    let pki = Pki::new();
    let web = format!("spiffe://{TD}/client/web");
    let a = Node::builder(pki.node_config("a"))
        .handler("ledger", Echo)
        .handler("open", Echo)
        .allow("ledger", [web.as_str()])
        .start()
        .await
        .unwrap();
    let mut cfg = pki.node_config("b");
    cfg.peers = vec![a.local_addr().to_string()];
    let b = Node::builder(cfg).start().await.unwrap();
    eventually(Duration::from_secs(10), "b sees a's services", || {
        sees_all(&[&b], &["ledger", "open"])
    })
    .await;
    let allowed = pki.client("web", &a).await;
    assert_eq!(&allowed.call("ledger", "1").await.unwrap()[..], b"1");
    for entry in [&a, &b] {
        let other = pki.client("batch", entry).await;
        let err = other.call("ledger", "2").await.unwrap_err();
        assert_eq!(err.reject_code(), Some(RejectCode::Unauthorized), "{err}");
        let CallError::Rejected { reason, .. } = err else {
            unreachable!()
        };
        assert!(
            reason.contains("client/batch") && reason.contains("services.ledger.allow"),
            "{reason}"
        );
        // Services without a list stay open to the whole trust domain.
        assert_eq!(&other.call("open", "3").await.unwrap()[..], b"3");
        other.close().await;
    }
    // Via b too: the serving node judges the original caller, not the relaying node.
    let relayed = pki.client("web", &b).await;
    assert_eq!(&relayed.call("ledger", "4").await.unwrap()[..], b"4");
    assert_eq!(a.stats().rejected.get(&RejectCode::Unauthorized), Some(&2));
    assert!(logged("may not call service \"ledger\""));

    // Misconfigured lists are start errors that name the key.
    let bad = Node::builder(pki.node_config("c"))
        .handler("ledger", Echo)
        .allow("ledger", ["web"])
        .start()
        .await
        .err()
        .unwrap();
    assert!(bad.to_string().contains("services.ledger.allow[0]"), "{bad}");
    let foreign = Node::builder(pki.node_config("c"))
        .handler("ledger", Echo)
        .allow("ledger", ["spiffe://elsewhere/client/web"])
        .start()
        .await
        .err()
        .unwrap();
    assert!(
        foreign.to_string().contains("outside this node's trust domain"),
        "{foreign}"
    );
    let unserved = Node::builder(pki.node_config("c"))
        .allow("nothing", [web.as_str()])
        .start()
        .await
        .err()
        .unwrap();
    assert!(unserved.to_string().contains("does not serve"), "{unserved}");
    for c in [allowed, relayed] {
        c.close().await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Writes `text` to `path` the way rotation tools do: a temp file renamed over the old one.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Steady calls from `workers` tasks until `stop`, counting each finished call (ok or failed)
/// in `done`; returns (ok, failed) counts.
fn steady_load(
    client: &Client,
    workers: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    let client = client.clone();
    tokio::spawn(async move {
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (client, stop, ok, failed, done) =
                (client.clone(), stop.clone(), ok.clone(), failed.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let body = format!("{w}-{i}");
                    match client.call("echo", body.clone()).await {
                        Ok(r) if r == body.as_bytes() => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failed.lock().unwrap().push(format!("wrong reply {r:?}")),
                        Err(e) => failed.lock().unwrap().push(e.to_string()),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let failed = failed.lock().unwrap().clone();
        (ok.load(Ordering::Relaxed), failed)
    })
}

/// The certificate a node presents to a new handshake.
async fn presented_cert(pki: &Pki, to: SocketAddr) -> Vec<u8> {
    let tls = TlsMaterial::load(&pki.tls(Role::Client, "probe"), Role::Client).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(tls.client_config().unwrap()));
    let conn = ep.connect(to, "quicmesh").unwrap().await.unwrap();
    let certs = conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .unwrap();
    conn.close(0u32.into(), b"");
    certs[0].to_vec()
}

fn pem_der(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_and_ca_rotation_on_disk_is_picked_up_under_load_with_no_failed_call() {
    logs();
    let pki = Pki::new();
    let mut cfg = pki.node_config("a");
    cfg.tls.reload = Duration::from_millis(100);
    let tls = cfg.tls.clone();
    let node = Node::builder(cfg).handler("echo", Echo).start().await.unwrap();
    let client = pki.client("web", &node).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let load = steady_load(&client, 4, stop.clone(), done.clone());

    // A new CA arrives: the bundle trusts both while callers move over; the node gets a
    // certificate from the new CA.
    let new_ca = MeshCa::generate(TD, 2).unwrap();
    let new_dir = tempfile::tempdir().unwrap();
    let newcomer = {
        let c = new_ca.issue(&IssueOptions::new(Role::Client, "newcomer")).unwrap();
        c.write(new_dir.path(), Role::Client, "newcomer", false).unwrap();
        std::fs::write(new_dir.path().join("ca.crt"), new_ca.cert_pem()).unwrap();
        TlsPaths::new(
            pki.path().join("ca.crt"),
            new_dir.path().join("client-newcomer.crt"),
            new_dir.path().join("client-newcomer.key"),
        )
    };
    // Before the rotation the node does not know the new CA.
    refused(newcomer.clone(), node.local_addr()).await;
    let issued = new_ca.issue(&IssueOptions::new(Role::Node, "a")).unwrap();
    let bundle = format!("{}{}", pki.ca.cert_pem(), new_ca.cert_pem());
    // Key first, then certificate, then CA: a reload that catches the files half way fails
    // and keeps the old ones; the next check, after the last write, succeeds.
    replace(&tls.key, &issued.key_pem);
    replace(&tls.cert, &issued.cert_pem);
    replace(&tls.ca, &bundle);
    eventually(Duration::from_secs(10), "the node reloads its certificates", || {
        node.stats().tls_reloads >= 1 && logged("certificates reloaded")
    })
    .await;
    let issued_der = pem_der(&issued.cert_pem);
    eventually_async(
        Duration::from_secs(10),
        "the node presents its new certificate",
        || async {
            if presented_cert(&pki, node.local_addr()).await == issued_der {
                Ok(())
            } else {
                Err("the node still presents its old certificate")
            }
        },
    )
    .await;
    // A client of the new CA is now let in; the old client's connection never noticed.
    let nc = connect(newcomer, node.local_addr()).await.unwrap();
    assert_eq!(&nc.call("echo", "hi").await.unwrap()[..], b"hi");
    let (ok, failed) = {
        // The load runs on past the rotation for over 100 more calls.
        let so_far = done.load(Ordering::Relaxed);
        eventually(
            Duration::from_secs(10),
            "over 100 more calls after the rotation",
            || done.load(Ordering::Relaxed) > so_far + 100,
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        load.await.unwrap()
    };
    println!("{ok} calls across the rotation, {} failed", failed.len());
    assert!(failed.is_empty(), "calls failed during the rotation: {failed:?}");
    assert!(ok > 100, "only {ok} calls ran");
    nc.close().await;
    client.close().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_refuses_revoked_certificates_and_is_reloaded_when_it_changes() {
    logs();
    let pki = Pki::new();
    let crl = pki.path().join("crl.pem");
    std::fs::write(&crl, pki.ca.revoke(&[], 30).unwrap()).unwrap();
    let mut cfg = pki.node_config("a");
    cfg.tls.crl = Some(crl.clone());
    cfg.tls.reload = Duration::from_millis(100);
    let node = Node::builder(cfg).handler("echo", Echo).start().await.unwrap();
    let mallory = pki.tls(Role::Client, "mallory");
    let before = connect(mallory.clone(), node.local_addr()).await.unwrap();
    assert_eq!(&before.call("echo", "x").await.unwrap()[..], b"x");
    before.close().await;

    let revoked_pem = std::fs::read_to_string(&mallory.cert).unwrap();
    replace(&crl, &pki.ca.revoke(&[revoked_pem], 30).unwrap());
    eventually(Duration::from_secs(10), "the node reloads the CRL", || {
        node.stats().tls_reloads == 1
    })
    .await;
    let err = refused(mallory, node.local_addr()).await;
    println!("revoked: the caller sees: {err}");
    eventually(Duration::from_secs(5), "refusal counted as revoked", || {
        node.stats()
            .handshake_failure_reasons
            .get("cert_revoked")
            .is_some_and(|n| *n >= 1)
    })
    .await;
    assert!(logged("handshake refused: the peer's certificate is revoked"));
    // Everyone else still gets in.
    let web = pki.client("web", &node).await;
    assert_eq!(&web.call("echo", "y").await.unwrap()[..], b"y");

    // Nodes check the certificates of the nodes they dial against it too.
    let rogue_cfg = pki.node_config("rogue");
    let rogue_pem = std::fs::read_to_string(&rogue_cfg.tls.cert).unwrap();
    let both = pki.ca.revoke(&[rogue_pem], 30).unwrap();
    let rogue = Node::builder(rogue_cfg).handler("echo", Echo).start().await.unwrap();
    let mut dialer = pki.node_config("d");
    let dcrl = pki.path().join("d-crl.pem");
    std::fs::write(&dcrl, &both).unwrap();
    dialer.tls.crl = Some(dcrl);
    dialer.peers = vec![rogue.local_addr().to_string(), node.local_addr().to_string()];
    let d = Node::builder(dialer).start().await.unwrap();
    eventually(Duration::from_secs(10), "d joins a", || {
        d.peers().iter().any(|p| p.name == "a" && p.connected)
    })
    .await;
    // d refused rogue's server certificate, so rogue saw d's handshake fail.
    eventually(Duration::from_secs(10), "rogue sees d give up on it", || {
        rogue.stats().handshake_failures >= 1
    })
    .await;
    assert!(!d.peers().iter().any(|p| p.name == "rogue" && p.connected));
    // A CRL from another CA is a clear error at start.
    let mut wrong = pki.node_config("e");
    let wcrl = pki.path().join("wrong-crl.pem");
    std::fs::write(&wcrl, MeshCa::generate(TD, 2).unwrap().revoke(&[], 30).unwrap()).unwrap();
    wrong.tls.crl = Some(wcrl);
    let e = Node::builder(wrong).start().await.err().unwrap();
    assert!(e.to_string().contains("not a usable CRL from the mesh CA"), "{e}");
    web.close().await;
    for n in [&node, &rogue, &d] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_pending_handshake_threshold_new_callers_are_sent_a_retry_and_still_get_in() {
    logs();
    let pki = Pki::new();
    let mut cfg = pki.node_config("a");
    cfg.limits.max_pending_handshakes = 0;
    let node = Node::builder(cfg).handler("echo", Echo).start().await.unwrap();
    for i in 0..5 {
        let c = pki.client(&format!("c{i}"), &node).await;
        assert_eq!(&c.call("echo", "ok").await.unwrap()[..], b"ok");
        c.close().await;
    }
    let s = node.stats();
    assert_eq!(s.retries, 5, "{s:?}");
    assert_eq!(s.handshake_failures, 0);
    node.shutdown().await;
}

/// A client that speaks another protocol (here HTTP/3) over QUIC to a node's port.
async fn dial_with_alpn(to: SocketAddr, alpn: &[u8]) -> Result<quinn::Connection, quinn::ConnectionError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let r = ep.connect(to, "quicmesh").unwrap().await;
    ep.close(0u32.into(), b"");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_in_another_protocol_is_refused_with_a_reason() {
    logs();
    let pki = Pki::new();
    let node = Node::builder(pki.node_config("a"))
        .handler("echo", Echo)
        .start()
        .await
        .unwrap();
    let err = dial_with_alpn(node.local_addr(), b"h3")
        .await
        .expect_err("a node accepted an HTTP/3 client");
    println!("the h3 client sees: {err}");
    eventually(Duration::from_secs(5), "wrong_alpn counted", || {
        node.stats()
            .handshake_failure_reasons
            .get("wrong_alpn")
            .is_some_and(|n| *n == 1)
    })
    .await;
    assert_eq!(node.stats().handshake_failures, 1);
    assert!(logged("handshake refused: the peer does not speak quicmesh/1 (ALPN)"));
    assert!(logged("reason=wrong_alpn"));
    // And it serves on.
    let good = pki.client("web", &node).await;
    assert_eq!(&good.call("echo", "ok").await.unwrap()[..], b"ok");
    good.close().await;
    node.shutdown().await;
}

/// Issue 20, item 10: a second live process with a node's certificate does not displace the
/// real one. It is refused with IDENTITY_CLASH, counted and logged as an error on the node it
/// dials and shown in `/status`, and the real node's connection stays up with no reconnect and
/// no suspicion; the refused process says why and backs off. A restart is still let in at
/// once: a new process whose predecessor stopped replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_holder_of_a_node_certificate_is_refused_not_let_flap() {
    logs();
    let pki = Pki::new();
    let x = Node::builder(pki.node_config("x")).start().await.unwrap();
    let holder = |listen: &str| {
        let mut cfg = pki.node_config("twin");
        cfg.listen = listen.parse().unwrap();
        cfg.peers = vec![x.local_addr().to_string()];
        cfg
    };
    let real = Node::builder(holder("127.0.0.1:0")).start().await.unwrap();
    eventually(Duration::from_secs(10), "x connected to the real twin", || {
        x.peers().iter().any(|p| p.name == "twin" && p.connected)
    })
    .await;
    let real_addr = real.local_addr();
    let impostor = Node::builder(holder("127.0.0.1:0")).start().await.unwrap();
    // The impostor dials again after reconnect.max (500 ms here): refused each time.
    eventually(Duration::from_secs(20), "two clashes refused", || {
        x.stats().identity_clashes >= 2
    })
    .await;
    let s = x.stats();
    assert_eq!(s.peer_reconnects, 0, "the real twin was displaced: {s:?}");
    assert_eq!(s.peer_losses, 0, "{s:?}");
    let kept = x.peers().into_iter().find(|p| p.name == "twin").unwrap();
    assert!(kept.connected && kept.remote == real_addr, "{kept:?}");
    let status = x.status();
    assert_eq!(
        status
            .identity_clashes
            .first()
            .map(|c| (c.node.as_str(), c.kept.clone())),
        Some(("twin", real_addr.to_string())),
        "{status:?}"
    );
    assert!(quicmesh::render_status(&status).contains("IDENTITY CLASH"));
    assert!(logged(
        "identity clash: two live processes hold node twin's certificate"
    ));
    assert!(logged(
        "refused: another live process holds this node's identity (twin)"
    ));
    assert!(real.stats().peer_losses == 0 && real.peers().iter().all(|p| p.connected));
    // A restart: the real process stops, a new one with the same certificate takes over.
    impostor.shutdown().await;
    real.shutdown().await;
    let clashes = x.stats().identity_clashes;
    let restarted = Node::builder(holder("127.0.0.1:0")).start().await.unwrap();
    eventually(Duration::from_secs(10), "the restarted twin is let in", || {
        x.peers()
            .iter()
            .any(|p| p.name == "twin" && p.connected && p.remote == restarted.local_addr())
    })
    .await;
    assert_eq!(x.stats().identity_clashes, clashes);
    restarted.shutdown().await;
    x.shutdown().await;
}
