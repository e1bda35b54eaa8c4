//! The HTTP listener: HTTP/1.1 over TCP, or over TLS (rustls) when
//! `server.tls_cert` and `server.tls_key` are set, with the limits a
//! server facing unknown clients needs.
//!
//! - `server.header_read_timeout`: a request head (and a TLS handshake)
//!   must arrive within it; hyper applies it from the moment it waits for
//!   a head, so it is also the idle timeout of a keep-alive connection.
//!   Half a request line is closed after it, not kept forever.
//! - `server.max_connections`: one connection more is answered a JSON 503
//!   (over TLS: closed) without reading it; the refusals themselves are
//!   bounded, so a flood of connections costs a file descriptor each
//!   for a moment and nothing more.
//! - Request-level limits (body size and time, events per request, the
//!   concurrency cap) are the router's: see `signals_api::app`.
//!
//! Shutdown: stop accepting, let every connection finish its request in
//! flight (hyper's graceful shutdown), give up after `shutdown_grace`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};

/// The listener's limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl Limits {
    /// The operations endpoints (`signals speed`'s, and the start-up one of
    /// every role): few clients, but the same timeouts, so that a stuck
    /// connection can neither hold a socket nor delay a shutdown.
    pub const OPERATIONS: Limits = Limits {
        max_connections: 64,
        header_read_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(2),
    };
}

/// Connections over the cap being refused at once; beyond, they are
/// dropped without an answer.
const MAX_REFUSING: usize = 64;

/// The answer to a connection over the cap.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 98\r\n\r\n\
{\"error\":\"the server has its maximum of open connections (server.max_connections); retry shortly\"}";

/// Makes ring the process's rustls provider: TLS clients that take the
/// process default (Redis's `rediss://`) then need no choice of their own.
pub fn install_crypto_provider() {
    // Err only when one is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TLS acceptor from a PEM certificate chain and private key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let cert_pem = std::fs::read(cert)
        .with_context(|| format!("server.tls_cert = {}: cannot read", cert.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("server.tls_cert = {}: not PEM certificates", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "server.tls_cert = {}: no certificate in the file",
            cert.display()
        );
    }
    let key_pem = std::fs::read(key)
        .with_context(|| format!("server.tls_key = {}: cannot read", key.display()))?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("server.tls_key = {}: no PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .context("server.tls_cert and server.tls_key do not make a usable certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `shutdown`, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    info!(
        address = %listener.local_addr()?,
        tls = tls.is_some(),
        max_connections = limits.max_connections,
        "serving HTTP"
    );
    loop {
        let (stream, _peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause, not spin.
                    warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!("signals_http_overloaded_total", "limit" => "connections")
                .increment(1);
            if let Ok(refusal) = refusing.clone().try_acquire_owned() {
                let plain = tls.is_none();
                tokio::spawn(async move {
                    refuse(stream, plain).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, app, limits, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => serve_connection(stream, app, limits, shutdown).await,
                        Ok(Err(error)) => debug!(%error, "TLS handshake failed"),
                        Err(_) => debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    // Every connection holds a permit until it is closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_grace, connections.acquire_many(all))
        .await
        .is_err()
    {
        warn!(grace = ?limits.shutdown_grace, "in-flight requests did not finish in time");
    }
    Ok(())
}

/// Answers 503 on a plain connection over the cap and closes it; a TLS
/// one is closed (a plain answer would be noise to a TLS client).
async fn refuse(mut stream: TcpStream, plain: bool) {
    if plain {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(OVERLOADED).await?;
            stream.shutdown().await
        })
        .await;
    }
}

async fn serve_connection<I>(io: I, app: Router, limits: Limits, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        app.clone().oneshot(request.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Clients that hang up, time out or send garbage: not our failure.
        debug!(%error, "HTTP connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overload_answer_is_well_formed_json() {
        let text = std::str::from_utf8(OVERLOADED).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.parse().ok())
            .expect("a content length");
        assert_eq!(length, body.len());
        let value: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert!(value["error"].as_str().is_some());
    }
}
