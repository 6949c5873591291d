//! The `quicmesh::Client` library, end to end.
//!
//! ## Usage
//!
//! Against a running mesh (certificates from `quicmesh certs`):
//! ```text
//! cargo run --example client -- 127.0.0.1:7401 certs/ca.crt certs/client-web.crt certs/client-web.key
//! ```
//! With no arguments it starts its own node with throwaway certificates first, so it runs
//! anywhere.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use quicmesh::{CallOptions, Client, ClientConfig, Echo, IssueOptions, MeshCa, Node, NodeConfig, Role, TlsPaths};
use tokio::io::AsyncWriteExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Keep the temp dir and node alive for the whole run when we make our own.
    let (_dir, _node, entry, tls) = match args.as_slice() {
        [entry, ca, cert, key] => {
            let tls = TlsPaths::new(ca, cert, key);
            (None, None, entry.clone(), tls)
        }
        [] => {
            // 1. A CA, a node certificate and a client certificate in a temp dir.
            let dir = tempfile::tempdir()?;
            let ca = MeshCa::generate("example.quicmesh", 1)?;
            ca.write(dir.path(), false)?;
            let node_files =
                ca.issue(&IssueOptions::new(Role::Node, "n1"))?
                    .write(dir.path(), Role::Node, "n1", false)?;
            let client_files =
                ca.issue(&IssueOptions::new(Role::Client, "web"))?
                    .write(dir.path(), Role::Client, "web", false)?;
            // 2. A node that serves `echo` in-process.
            let ca_path = dir.path().join("ca.crt");
            let mut cfg = NodeConfig::new("n1", TlsPaths::new(ca_path.clone(), node_files.cert, node_files.key));
            cfg.listen = "127.0.0.1:0".parse()?;
            let node = Node::builder(cfg).handler("echo", Echo).start().await?;
            let entry = node.local_addr().to_string();
            let tls = TlsPaths::new(ca_path, client_files.cert, client_files.key);
            (Some(dir), Some(node), entry, tls)
        }
        _ => return Err("usage: client [ENTRY CA CERT KEY]".into()),
    };

    // 3. Connect: mutual TLS against the mesh CA; the node must present a node identity.
    let client = Client::connect(ClientConfig::new(tls, vec![entry])).await?;
    println!("connected as {}", client.identity());

    // 4. Request/response: one QUIC stream per call.
    let reply = client.call("echo", "hello, mesh").await?;
    println!("echo replied {:?}", String::from_utf8_lossy(&reply));

    // 5. With a deadline that travels with the request, and who served it.
    let opts = CallOptions {
        timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let reply = client.request("echo", "with a deadline", &opts).await?;
    println!("served by node {:?}", reply.served_by);

    // 6. A duplex stream: write, half-close, read the rest.
    let mut stream = client.open("echo").await?;
    stream.write_all(b"streamed bytes").await?;
    stream.shutdown().await?;
    let back = stream.read_to_end(1 << 20).await?;
    println!("stream echoed {} bytes", back.len());

    // 7. Errors carry the node's reject code and reason.
    if let Err(e) = client.call("no-such-service", "x").await {
        println!("unknown service: {e} (code {:?})", e.reject_code());
    }
    client.close().await;
    Ok(())
}
