//! `signals up` over HTTPS (server.tls_cert, server.tls_key) with a
//! self-signed certificate made here, talked to with rustls.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signals_test_support::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::TlsConnector;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signals(
    dir: &std::path::Path,
    port: u16,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_signals"));
    for (name, _) in std::env::vars() {
        if name.starts_with("SIGNALS_") {
            command.env_remove(name);
        }
    }
    command
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("up")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("SIGNALS_BATCH__SCHEDULE", "off")
        .env("SIGNALS_SPEED__LISTEN", "off")
        .env("SIGNALS_SERVER__TLS_CERT", cert)
        .env("SIGNALS_SERVER__TLS_KEY", key)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

fn connector(certificate: &[u8]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(certificate.to_vec()))
        .expect("the test's certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// One HTTPS GET: the status line and the body.
async fn get(connector: &TlsConnector, port: u16, path: &str) -> std::io::Result<(String, String)> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").expect("a name");
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut bytes = Vec::new();
    // A peer that closes without close_notify is fine for this test.
    let _ = tls.read_to_end(&mut bytes).await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("").to_owned();
    Ok((status, body.to_owned()))
}

#[tokio::test]
async fn the_api_answers_over_https_and_refuses_plain_http() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("a self-signed certificate");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).expect("written");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("written");
    let port = free_port();
    let _child = Killed(
        signals(dir.path(), port, &cert, &key)
            .stderr(Stdio::null())
            .spawn()
            .expect("signals up starts"),
    );
    let connector = connector(certified.cert.der());

    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, body) = loop {
        match get(&connector, port, "/healthz").await {
            Ok(answer) if !answer.0.is_empty() => break answer,
            _ => {
                assert!(Instant::now() < deadline, "no HTTPS /healthz within 60s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ok"));

    let (status, body) = get(&connector, port, "/v1/definitions")
        .await
        .expect("answered");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let definitions: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(definitions["signals"]
        .as_array()
        .is_some_and(|s| !s.is_empty()));

    // A client that does not trust the certificate gets no answer.
    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    assert!(get(&connector_for(&stranger), port, "/healthz")
        .await
        .is_err());

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connected");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("sent");
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), plain.read_to_end(&mut bytes)).await;
    assert!(
        !bytes.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
}

fn connector_for(certified: &rcgen::CertifiedKey) -> TlsConnector {
    connector(certified.cert.der())
}

#[test]
fn a_missing_certificate_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = signals(
        dir.path(),
        free_port(),
        &dir.path().join("nowhere.pem"),
        &dir.path().join("key.pem"),
    )
    .stderr(Stdio::piped())
    .output()
    .expect("runs");
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("server.tls_cert"), "{text}");
}
