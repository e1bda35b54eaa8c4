//! A careless or malicious client against `signals up` on the embedded
//! default, over real sockets: every input below gets a clear JSON 4xx
//! (or the documented 503), the process stays under 512 MiB (VmHWM), and
//! `/healthz` keeps answering within 50 ms (median of repeated probes)
//! while the inputs arrive.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};

use signals_test_support::free_port;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const MIB: usize = 1024 * 1024;
/// How long a request head may take in this test's server: long enough
/// that 400 half requests still hold their connections when the cap is
/// checked on a loaded two-core machine (at 2 s, CI saw them closed first).
const HEADER_TIMEOUT: Duration = Duration::from_secs(6);
const MAX_CONNECTIONS: usize = 440;

struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `signals up` on the embedded default, this test's settings only.
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_signals"));
        for (key, _) in std::env::vars() {
            if key.starts_with("SIGNALS_") {
                command.env_remove(key);
            }
        }
        let child = command
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("up")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("SIGNALS_BATCH__SCHEDULE", "off")
            .env("SIGNALS_SPEED__LISTEN", "off")
            .env(
                "SIGNALS_SERVER__HEADER_READ_TIMEOUT",
                format!("{}s", HEADER_TIMEOUT.as_secs()),
            )
            .env(
                "SIGNALS_SERVER__MAX_CONNECTIONS",
                MAX_CONNECTIONS.to_string(),
            )
            .env("SIGNALS_TELEMETRY__LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("signals up starts");
        let mut server = Server {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !server.get("/healthz").is_ok_and(|a| a.status == 200) {
            assert!(
                server.child.try_wait().expect("status").is_none(),
                "signals up exited"
            );
            assert!(Instant::now() < deadline, "no /healthz within 60s");
            thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn connect(&self) -> std::io::Result<TcpStream> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(stream)
    }

    /// One request (head and body as given), read to the end.
    fn send(&self, head: &[u8], body: &[u8]) -> std::io::Result<Answer> {
        let mut stream = self.connect()?;
        let mut reader = stream.try_clone()?;
        // The server may answer (413) before the body is all sent, and
        // close: the answer is read while the body is written.
        let read = thread::spawn(move || {
            let mut bytes = Vec::new();
            let result = reader.read_to_end(&mut bytes);
            match result {
                Ok(_) => Ok(bytes),
                Err(_) if !bytes.is_empty() => Ok(bytes),
                Err(e) => Err(e),
            }
        });
        let _ = stream.write_all(head).and_then(|()| stream.write_all(body));
        let bytes = read.join().expect("reader")?;
        Answer::parse(&bytes)
    }

    fn get(&self, path: &str) -> std::io::Result<Answer> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        self.send(head.as_bytes(), b"")
    }

    fn post(&self, path: &str, content_type: &str, body: &[u8]) -> std::io::Result<Answer> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.send(head.as_bytes(), body)
    }

    /// The process's resident set high-water mark (VmHWM), in bytes.
    fn peak_rss(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .expect("VmHWM")
            * 1024
    }
}

#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    fn parse(bytes: &[u8]) -> std::io::Result<Answer> {
        let text = String::from_utf8_lossy(bytes);
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
            std::io::Error::new(ErrorKind::InvalidData, format!("no head: {text:?}"))
        })?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, head.to_owned()))?;
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default();
        Ok(Answer {
            status,
            content_type,
            body: body.to_owned(),
        })
    }

    /// Asserts the JSON error shape with `status`; the message.
    fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.content_type, "application/json", "{self:?}");
        let value: Value = serde_json::from_str(&self.body).expect("a JSON body");
        value["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no `error` in {}", self.body))
            .to_owned()
    }
}

/// Probes `/healthz` every 20 ms while a phase runs; the latencies.
struct Probe {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Vec<Duration>>,
}

impl Probe {
    fn start(port: u16) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut samples = Vec::new();
            // At least 15 probes, so that the median says something even
            // on a machine busy with other work.
            while !flag.load(Ordering::Relaxed) || samples.len() < 15 {
                let started = Instant::now();
                let answer = (|| {
                    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
                    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                    stream.write_all(
                        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                    )?;
                    let mut bytes = Vec::new();
                    stream.read_to_end(&mut bytes)?;
                    Answer::parse(&bytes)
                })();
                let elapsed = started.elapsed();
                let answer = answer.expect("/healthz answers meanwhile");
                assert_eq!(answer.status, 200, "{answer:?}");
                samples.push(elapsed);
                thread::sleep(Duration::from_millis(20));
            }
            samples
        });
        Probe { stop, thread }
    }

    /// Stops probing; asserts the median within 50 ms and prints the figures.
    fn finish(self, phase: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = self.thread.join().expect("probe");
        samples.sort();
        let median = samples[samples.len() / 2];
        let max = samples[samples.len() - 1];
        println!(
            "{phase}: /healthz x{}: median {:.1} ms, max {:.1} ms",
            samples.len(),
            median.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
        assert!(
            median <= Duration::from_millis(50),
            "{phase}: /healthz median {median:?} over 50 ms ({samples:?})"
        );
    }
}

fn parallel<T: Send + 'static>(n: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let f = Arc::new(f);
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let f = f.clone();
            thread::spawn(move || f(i))
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect()
}

#[test]
fn hostile_inputs_get_a_clear_answer_and_cost_little() {
    let server = Arc::new(Server::start());
    let port = server.port;

    // 1. Four parallel 8 MiB `[1,1,1,…]` bodies: over the events cap.
    let probe = Probe::start(port);
    let ones = Arc::new({
        let mut body = Vec::with_capacity(8 * MIB);
        body.push(b'[');
        while body.len() < 8 * MIB - 16 {
            body.extend_from_slice(b"1,");
        }
        body.extend_from_slice(b"1]");
        body
    });
    let s = server.clone();
    for answer in parallel(4, move |_| s.post("/v1/events", "application/json", &ones)) {
        let message = answer.expect("answered").error(413);
        assert!(message.contains("more than 10000 events"), "{message}");
    }
    probe.finish("4 x 8 MiB [1,1,...]");

    // 2. Two queries naming one user 1000 times and one signal 600,000 times.
    let probe = Probe::start(port);
    let query = Arc::new(
        serde_json::json!({
            "user_ids": vec!["u-1"; 1000],
            "names": vec!["views_1h"; 600_000],
        })
        .to_string(),
    );
    let s = server.clone();
    for answer in parallel(2, move |_| {
        s.post("/v1/signals/query", "application/json", query.as_bytes())
    }) {
        let message = answer.expect("answered").error(400);
        assert_eq!(
            message,
            "600000 signal names requested; at most 100 per request"
        );
    }
    // The same user and name repeated within the caps count once.
    let repeated =
        serde_json::json!({"user_ids": vec!["u-1"; 1000], "names": vec!["views_1h"; 100]});
    let answer = server
        .post(
            "/v1/signals/query",
            "application/json",
            repeated.to_string().as_bytes(),
        )
        .expect("answered");
    assert_eq!(answer.status, 200, "{answer:?}");
    let value: Value = serde_json::from_str(&answer.body).expect("JSON");
    assert_eq!(
        value["results"].as_array().map(Vec::len),
        Some(1),
        "{value}"
    );
    probe.finish("2 x query 1000 users x 600,000 names");

    // 3. 3,000 requests with made-up methods: /metrics stays small.
    let probe = Probe::start(port);
    let s = server.clone();
    let statuses = parallel(4, move |c| {
        let mut stream = s.connect().expect("connected");
        let mut requests = String::new();
        for i in 0..750 {
            let path = if i % 2 == 0 { "/v1/events" } else { "/nowhere" };
            requests.push_str(&format!(
                "M{c}X{i} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
            ));
        }
        requests.push_str("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let mut reader = stream.try_clone().expect("clone");
        let read = thread::spawn(move || {
            let mut text = String::new();
            let _ = reader.read_to_string(&mut text);
            text
        });
        stream.write_all(requests.as_bytes()).expect("sent");
        let text = read.join().expect("reader");
        (
            text.matches("HTTP/1.1 405 ").count(),
            text.matches("HTTP/1.1 404 ").count(),
        )
    });
    for (refused, missing) in statuses {
        assert_eq!((refused, missing), (375, 375));
    }
    let metrics = server.get("/metrics").expect("metrics");
    assert_eq!(metrics.status, 200);
    println!(
        "/metrics after 3,000 made-up methods: {} bytes",
        metrics.body.len()
    );
    assert!(
        !metrics.body.contains("M0X"),
        "a made-up method became a label"
    );
    assert!(
        metrics.body.len() < 64 * 1024,
        "{} bytes",
        metrics.body.len()
    );
    probe.finish("3,000 made-up methods");

    // 4. 400 sockets that send half a request line, then a cap check.
    let probe = Probe::start(port);
    let mut half: Vec<TcpStream> = (0..400)
        .map(|_| {
            let mut stream = server.connect().expect("connected");
            stream.write_all(b"GET /hea").expect("sent");
            stream
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    probe.finish("400 half request lines");
    // Over max_connections (440), held at once: the extra ones get a JSON 503.
    let mut extra: Vec<TcpStream> = (0..60)
        .map(|_| server.connect().expect("connected"))
        .collect();
    let answers: Vec<Answer> = extra
        .iter_mut()
        .map(|stream| {
            let _ = stream.write_all(
                b"GET /v1/definitions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            );
            let mut bytes = Vec::new();
            let _ = stream.read_to_end(&mut bytes);
            Answer::parse(&bytes).expect("an answer")
        })
        .collect();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    let overloaded = statuses.iter().filter(|s| **s == 503).count();
    // 400 + 60 is 20 over the cap; a half request that already timed out
    // (a slow machine) frees its slot, so only "some" is certain.
    assert!(overloaded >= 1, "none of 60 refused: {statuses:?}");
    for answer in &answers {
        if answer.status != 200 {
            let message = answer.error(503);
            assert!(message.contains("server.max_connections"), "{message}");
        }
    }
    drop(extra);
    // Every half request is closed by the server after the head timeout.
    let started = Instant::now();
    for stream in &mut half {
        stream
            .set_read_timeout(Some(HEADER_TIMEOUT + Duration::from_secs(5)))
            .expect("timeout");
        let mut rest = Vec::new();
        match stream.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a half request was not closed: {e}"),
        }
    }
    println!(
        "400 half request lines closed {:.1}s after the check began",
        started.elapsed().as_secs_f64()
    );
    drop(half);
    assert_eq!(server.get("/healthz").expect("healthz").status, 200);

    // 5. Deep nesting: one refused item in the collector, a 400 elsewhere.
    let probe = Probe::start(port);
    let depth = 4 * MIB;
    let nested = format!(
        "[{}{}]",
        "[".repeat(depth / 2 - 1),
        "]".repeat(depth / 2 - 1)
    );
    let answer = server
        .post("/v1/events", "application/json", nested.as_bytes())
        .expect("answered");
    assert_eq!(answer.status, 200, "{answer:?}");
    let value: Value = serde_json::from_str(&answer.body).expect("JSON");
    assert_eq!(value["accepted"], 0);
    assert_eq!(
        value["rejected"][0]["error"],
        "an event must be a JSON object, not an array"
    );
    let nested_query = format!(
        r#"{{"user_ids": ["u-1"], "at": {}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let message = server
        .post(
            "/v1/signals/query",
            "application/json",
            nested_query.as_bytes(),
        )
        .expect("answered")
        .error(400);
    assert!(message.contains("recursion limit"), "{message}");
    probe.finish("deep nesting");

    // 6. A 100 MB NDJSON line: refused by its declared length.
    let probe = Probe::start(port);
    let mut line = Vec::with_capacity(100 * 1000 * 1000 + 64);
    line.extend_from_slice(br#"{"event_id":""#);
    line.resize(100 * 1000 * 1000, b'x');
    line.extend_from_slice(b"\"}\n");
    let message = server
        .post("/v1/events", "application/x-ndjson", &line)
        .expect("answered")
        .error(413);
    assert!(message.contains("8388608"), "{message}");
    drop(line);
    probe.finish("100 MB NDJSON line");

    // 7. Invalid UTF-8 in paths, and ids longer than any id may be.
    let message = server
        .get("/v1/users/%FF%FE/signals")
        .expect("answered")
        .error(400);
    assert!(message.contains("UTF-8"), "{message}");
    server.get("/v1/%FF").expect("answered").error(404);
    let raw = server
        .send(
            b"GET /v1/users/\xff\xfe/signals HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            b"",
        )
        .expect("answered");
    assert_eq!(raw.status, 400, "{raw:?}");
    let long = "x".repeat(60 * 1024);
    for path in [
        format!("/v1/users/{long}/signals"),
        format!("/v1/users/{long}/activity"),
    ] {
        let message = server.get(&path).expect("answered").error(400);
        assert_eq!(message, "`user_id` is longer than 256 bytes");
    }
    let head = format!(
        "DELETE /v1/admin/users/{long} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let message = server
        .send(head.as_bytes(), b"")
        .expect("answered")
        .error(400);
    assert_eq!(message, "`user_id` is longer than 256 bytes");
    let query = serde_json::json!({"user_ids": ["u-1", long]}).to_string();
    let message = server
        .post("/v1/signals/query", "application/json", query.as_bytes())
        .expect("answered")
        .error(400);
    assert_eq!(message, "`user_ids[1]` is longer than 256 bytes");

    // 8. Cross-site requests cannot change state without tokens.
    let head =
        "POST /v1/admin/batch/run HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\n\
                Connection: close\r\nContent-Length: 0\r\n\r\n";
    let message = server
        .send(head.as_bytes(), b"")
        .expect("answered")
        .error(403);
    assert!(message.contains("evil.example"), "{message}");
    server
        .post("/v1/events", "text/plain", b"[]")
        .expect("answered")
        .error(415);

    let peak = server.peak_rss();
    println!("peak RSS (VmHWM): {:.1} MiB", peak as f64 / MIB as f64);
    assert!(peak < 512 * MIB, "peak RSS {peak} bytes");
    // Still serving, and the socket of a finished test is released.
    let answer = server.get("/healthz").expect("healthz");
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
    let _ = TcpStream::connect(("127.0.0.1", port)).map(|s| s.shutdown(Shutdown::Both));
}
