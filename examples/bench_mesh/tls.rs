//! TLS over TCP for the HAProxy-with-TLS baselines: the same CA, certificates and mTLS as the
//! mesh, TLS 1.3 with rustls (ring) on the bench's side and OpenSSL on HAProxy's.

use std::net::SocketAddr;
use std::sync::Arc;

use quicmesh::TlsPaths;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::util::Error;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = std::fs::read(path)?;
    Ok(rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<_, _>>()?)
}

fn key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = std::fs::read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())?.ok_or_else(|| format!("no key in {}", path.display()).into())
}

fn roots(paths: &TlsPaths) -> Result<Arc<rustls::RootCertStore>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&paths.ca)? {
        roots.add(c)?;
    }
    Ok(Arc::new(roots))
}

/// Accepts TLS clients holding a certificate of the mesh CA.
pub fn acceptor(paths: &TlsPaths) -> Result<TlsAcceptor, Error> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(paths)?, provider()).build()?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&paths.cert)?, key(&paths.key)?)?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Connects to servers of the mesh CA, presenting `paths`' certificate.
pub fn connector(paths: &TlsPaths) -> Result<TlsConnector, Error> {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(paths)?)
        .with_client_auth_cert(certs(&paths.cert)?, key(&paths.key)?)?;
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// A TLS connection to `addr`, whose certificate must name `localhost`.
pub async fn connect(addr: SocketAddr, connector: &TlsConnector) -> Result<TlsStream<TcpStream>, Error> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(connector.connect(ServerName::try_from("localhost")?, tcp).await?)
}

/// The TLS twin of the plain sink ([`crate::backends::count_to_end`]).
pub async fn sink(acceptor: TlsAcceptor) -> Result<SocketAddr, Error> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(s) = acceptor.accept(s).await {
                    crate::backends::count_to_end(s).await;
                }
            });
        }
    });
    Ok(addr)
}
