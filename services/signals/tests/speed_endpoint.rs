//! `signals speed` alone serves /metrics, /healthz and /readyz on
//! `speed.listen`, here on the embedded backends.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use signals_test_support::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `signals speed` with settings from this test alone.
fn speed(data_dir: &std::path::Path, listen: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_signals"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SIGNALS_") {
            command.env_remove(key);
        }
    }
    command
        .arg("--data-dir")
        .arg(data_dir)
        .arg("speed")
        .env("SIGNALS_SPEED__LISTEN", listen)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// A GET over plain HTTP/1.1: (status, content type, body).
fn get(port: u16, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    Ok((status, content_type, body.to_owned()))
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn speed_alone_serves_health_readiness_and_metrics_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut child = Killed(
        speed(&dir.path().join("data"), &format!("127.0.0.1:{port}"))
            .stderr(Stdio::null())
            .spawn()
            .expect("signals speed starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let health = loop {
        match get(port, "/healthz") {
            Ok(answer) => break answer,
            Err(_) => {
                assert!(
                    child.0.try_wait().expect("status").is_none(),
                    "signals speed exited"
                );
                assert!(Instant::now() < deadline, "no /healthz within 60s");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!((health.0, health.2.as_str()), (200, "ok"));

    // /healthz answers while the backends still open; /readyz says so
    // (503, "startup") until they have.
    let (status, _, body) = loop {
        let answer = get(port, "/readyz").expect("readyz");
        if answer.0 == 200 || Instant::now() >= deadline {
            break answer;
        }
        assert!(answer.2.contains("startup"), "{}", answer.2);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(ready["status"], "ready", "{body}");
    assert_eq!(ready["checks"]["log"], "ok", "{body}");
    assert_eq!(ready["checks"]["store"], "ok", "{body}");

    let (status, content_type, _) = get(port, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");

    // Only the operations routes: the API is `signals serve`'s.
    let (status, _, _) = get(port, "/v1/definitions").expect("answered");
    assert_eq!(status, 404);

    let pid = child.0.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("status") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 30s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(
        get(port, "/healthz").is_err(),
        "the endpoint stopped with it"
    );
}

#[test]
fn a_taken_speed_port_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bound");
    let address = taken.local_addr().expect("address");
    let output = speed(&dir.path().join("data"), &address.to_string())
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("speed.listen"), "{text}");
}

#[test]
fn a_bad_speed_listen_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = speed(&dir.path().join("data"), "yes please")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    // figment names a key from the environment in capitals.
    let text = String::from_utf8_lossy(&output.stderr).to_ascii_lowercase();
    assert!(
        text.contains("speed.listen") && text.contains("yes please"),
        "{text}"
    );
}
