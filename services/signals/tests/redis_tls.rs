//! The Redis cache over TLS (`rediss://`, trusting `cache.redis_tls_ca`) as
//! an ACL user (`cache.redis_username`, `cache.redis_password`), end to end:
//! this test starts its own redis-server on 127.0.0.1:26379 with TLS only
//! and the default user off, and `signals up` caches a published record
//! there. A password never shows in what Signals prints.
//!
//! Needs `redis-server` and `redis-cli` (Redis 6+ built with TLS, as
//! Debian's is; `infra/local/up` installs them) on PATH, or their
//! directory in SIGNALS_TEST_REDIS_BIN.

use std::io::{Read, Write};
use std::net::TcpStream;

use signals_test_support::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REDIS_PORT: u16 = 26379;
const PASSWORD: &str = "acl-password-0123456789";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_bin(name: &str) -> PathBuf {
    match std::env::var_os("SIGNALS_TEST_REDIS_BIN") {
        Some(dir) => Path::new(&dir).join(name),
        None => PathBuf::from(name),
    }
}

fn signals(dir: &Path, port: u16) -> Command {
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
        .env("SIGNALS_CACHE__TIMEOUT", "2s")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// One HTTP/1.1 request: (status, body).
fn call(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

fn redis_cli(dir: &Path, args: &[&str]) -> String {
    let output = Command::new(redis_bin("redis-cli"))
        .args(["--tls", "--cacert"])
        .arg(dir.join("cert.pem"))
        .args(["-h", "127.0.0.1", "-p", &REDIS_PORT.to_string()])
        .args(["--user", "signals", "--pass", PASSWORD, "--no-auth-warning"])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn the_cache_works_over_tls_as_an_acl_user_and_no_password_is_printed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
        .expect("a self-signed certificate");
    std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).expect("written");
    std::fs::write(
        dir.path().join("key.pem"),
        certified.key_pair.serialize_pem(),
    )
    .expect("written");
    let conf = format!(
        "bind 127.0.0.1\nport 0\ntls-port {REDIS_PORT}\n\
         tls-cert-file {dir}/cert.pem\ntls-key-file {dir}/key.pem\ntls-ca-cert-file {dir}/cert.pem\n\
         tls-auth-clients no\nsave \"\"\nappendonly no\ndir {dir}\n\
         user default off\nuser signals on >{PASSWORD} ~* &* +@all\n",
        dir = dir.path().display()
    );
    std::fs::write(dir.path().join("redis.conf"), conf).expect("written");
    let _redis = Killed(
        Command::new(redis_bin("redis-server"))
            .arg(dir.path().join("redis.conf"))
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts (install Redis, or set SIGNALS_TEST_REDIS_BIN)"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis_cli(dir.path(), &["PING"]) != "PONG" {
        assert!(
            Instant::now() < deadline,
            "redis-server did not answer over TLS"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let port = free_port();
    let _signals = Killed(
        signals(dir.path(), port)
            .env(
                "SIGNALS_CACHE__REDIS_URL",
                format!("rediss://127.0.0.1:{REDIS_PORT}"),
            )
            .env("SIGNALS_CACHE__REDIS_USERNAME", "signals")
            .env("SIGNALS_CACHE__REDIS_PASSWORD", PASSWORD)
            .env("SIGNALS_CACHE__REDIS_TLS_CA", dir.path().join("cert.pem"))
            .stderr(Stdio::null())
            .spawn()
            .expect("signals up starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while call(port, "GET", "/healthz", "").map(|a| a.0).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "no /healthz within 60s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let event = r#"[{"event_id": "e-1", "user_id": "u-1", "event_type": "view", "item_id": "i-1", "event_time": "2026-11-23T10:00:00Z"}]"#;
    let (status, body) = call(port, "POST", "/v1/events", event).expect("posted");
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(port, "POST", "/v1/admin/batch/run", "").expect("ran");
    assert_eq!(status, 200, "{body}");
    for _ in 0..2 {
        let (status, body) =
            call(port, "GET", "/v1/users/u-1/signals?names=recent_views", "").expect("answered");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("i-1"), "{body}");
    }
    // The published record went into Redis, through TLS, as the ACL user.
    let keys: u64 = redis_cli(dir.path(), &["DBSIZE"])
        .parse()
        .expect("a number");
    assert!(keys >= 1, "nothing cached in Redis");
    let (status, body) = call(port, "GET", "/readyz", "").expect("answered");
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("\"cache\""), "the cache is degraded: {body}");

    // A password in a URL never reaches the output, even in an error.
    let output = signals(&dir.path().join("other"), free_port())
        .env(
            "SIGNALS_CACHE__REDIS_URL",
            "redis://signals:hunter2-secret@127.0.0.1:notaport",
        )
        .stderr(Stdio::piped())
        .output()
        .expect("runs");
    let printed = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{printed}");
    assert!(
        printed.contains("redis://signals:***@127.0.0.1"),
        "{printed}"
    );
    assert!(!printed.contains("hunter2"), "{printed}");
}
