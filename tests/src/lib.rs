//! Helpers for end-to-end tests: run the `signals` binary as a user would,
//! talk to it over HTTP, and compute what it should answer with a reference
//! written independently of the platform's own code.

pub mod faults;
pub mod reference;
pub mod scenario;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// The `signals` binary built by this workspace (`cargo test` builds it
/// because the `signals` package has integration tests).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/signals
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let path = dir.join("signals");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p signals` (cargo test --workspace does)",
        path.display()
    );
    path
}

pub use signals_test_support::free_port;

/// Settings that point `signals` at the real services (Kafka, CQL, Redis;
/// see `signals-test-support` for where they come from) on a topic, group
/// and keyspace of its own; `None`: skip the test.
pub fn real_engines(name: &str) -> Option<Vec<(String, String)>> {
    let (kafka, cql, redis) = signals_test_support::all()?;
    let unique = signals_test_support::unique_name(name);
    Some(vec![
        ("SIGNALS_LOG__BACKEND".into(), "kafka".into()),
        ("SIGNALS_LOG__KAFKA__BROKERS".into(), kafka),
        (
            "SIGNALS_LOG__KAFKA__TOPIC".into(),
            format!("signals-e2e-{unique}"),
        ),
        (
            "SIGNALS_LOG__KAFKA__DEAD_LETTER_TOPIC".into(),
            format!("signals-e2e-{unique}.dlq"),
        ),
        (
            "SIGNALS_LOG__KAFKA__GROUP".into(),
            format!("signals-e2e-{unique}"),
        ),
        ("SIGNALS_CACHE__REDIS_URL".into(), redis),
        ("SIGNALS_STORE__BACKEND".into(), "scylla".into()),
        ("SIGNALS_STORE__SCYLLA__NODES".into(), cql),
        (
            "SIGNALS_STORE__SCYLLA__KEYSPACE".into(),
            format!("e2e_{}", unique.replace('-', "_")),
        ),
    ])
}

/// How the platform's processes are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `signals up`: everything in one process.
    Up,
    /// `signals serve` and this many `signals speed` processes (one
    /// consumer group), and `signals batch run` as the batch (needs a shared
    /// store: ScyllaDB).
    Split { speed_processes: usize },
}

/// The platform running on a private data dir and port.
pub struct Platform {
    pub data_dir: PathBuf,
    pub base: String,
    port: u16,
    shape: Shape,
    /// `http://127.0.0.1:port` of each `signals speed` process's
    /// operations endpoint (`speed.listen`), in launch order.
    pub speed_endpoints: Vec<String>,
    env: Vec<(String, String)>,
    children: Vec<Child>,
    http: reqwest::Client,
    _temp: Option<tempfile::TempDir>,
}

impl Platform {
    /// Starts `signals up` on a fresh temp dir, batch schedule off.
    pub async fn start() -> anyhow::Result<Platform> {
        Platform::start_with(Shape::Up, Vec::new()).await
    }

    /// Starts the platform in `shape` with extra `SIGNALS_*` settings.
    pub async fn start_with(
        shape: Shape,
        settings: Vec<(String, String)>,
    ) -> anyhow::Result<Platform> {
        let temp = tempfile::tempdir()?;
        let data_dir = temp.path().join("data");
        let port = free_port();
        let mut platform = Platform {
            data_dir,
            base: format!("http://127.0.0.1:{port}"),
            port,
            shape,
            speed_endpoints: Vec::new(),
            env: [("SIGNALS_BATCH__SCHEDULE".to_owned(), "off".to_owned())]
                .into_iter()
                .chain(settings)
                .collect(),
            children: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            _temp: Some(temp),
        };
        platform.launch().await?;
        Ok(platform)
    }

    /// A `signals` command with this platform's settings and nothing else.
    fn command(&self, args: &[&str], log: &Path) -> anyhow::Result<Command> {
        std::fs::create_dir_all(&self.data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut command = Command::new(binary());
        command
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stderr(log);
        // Settings come from this test alone, not from the caller's shell.
        for (key, _) in std::env::vars() {
            if key.starts_with("SIGNALS_") && !key.starts_with("SIGNALS_TEST_") {
                command.env_remove(key);
            }
        }
        for (k, v) in &self.env {
            command.env(k, v);
        }
        Ok(command)
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }

    /// The last `lines` lines its processes logged that contain `word`
    /// (any case), for a failure to show.
    pub fn log_lines(&self, word: &str, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let word = word.to_lowercase();
        let found: Vec<&str> = log
            .lines()
            .filter(|line| line.to_lowercase().contains(&word))
            .collect();
        found[found.len().saturating_sub(lines)..].join("\n")
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let listen = format!("127.0.0.1:{}", self.port);
        let commands: Vec<Vec<&str>> = match self.shape {
            Shape::Up => vec![vec!["up", "--listen", &listen]],
            Shape::Split { speed_processes } => {
                std::iter::once(vec!["serve", "--listen", listen.as_str()])
                    .chain(std::iter::repeat_n(vec!["speed"], speed_processes))
                    .collect()
            }
        };
        let fresh = self.speed_endpoints.is_empty();
        let mut speed_index = 0;
        for args in commands {
            let mut command = self.command(&args, &self.log_path())?;
            command.stdout(Stdio::null());
            if args == ["speed"] {
                // Each speed process serves its operations endpoint on a
                // port of its own (kept across restarts).
                if fresh {
                    self.speed_endpoints
                        .push(format!("http://127.0.0.1:{}", free_port()));
                }
                let endpoint = &self.speed_endpoints[speed_index];
                speed_index += 1;
                let listen = endpoint.trim_start_matches("http://");
                command.env("SIGNALS_SPEED__LISTEN", listen);
            }
            self.children.push(
                command
                    .spawn()
                    .with_context(|| format!("spawning signals {args:?}"))?,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = self.http.get(format!("{}/readyz", self.base)).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            for child in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                    bail!("signals exited with {status} before becoming ready:\n{log}");
                }
            }
            if Instant::now() > deadline {
                bail!("signals not ready within 60s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL every process: no chance to flush or checkpoint anything.
    pub fn kill(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for clean exits; returns whether all exited 0.
    pub fn stop(&mut self) -> anyhow::Result<bool> {
        let mut clean = true;
        for mut child in self.children.drain(..) {
            Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait()? {
                    clean &= status.success();
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!("signals did not stop within 30s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(clean)
    }

    /// Starts the same data dir again.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Posts events as a JSON array; returns the parsed answer.
    pub async fn post_events(&self, events: &[Value]) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(self.url("/v1/events"))
            .json(&events)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            bail!("POST /v1/events: {status} {body}");
        }
        Ok(body)
    }

    pub async fn retract(&self, ids: &[String]) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(self.url("/v1/retractions"))
            .json(&json!({"event_ids": ids, "reason": "test"}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            bail!("POST /v1/retractions: {status} {body}");
        }
        Ok(body)
    }

    pub async fn get_json(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let response = self.http.get(self.url(path)).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    /// Runs `signals ARGS --json` with this platform's settings (beside
    /// the running processes): its exit code and the JSON it printed.
    pub fn cli_json(&self, args: &[&str]) -> anyhow::Result<(Option<i32>, Value)> {
        let output = self
            .command(args, &self.log_path())?
            .arg("--json")
            .output()?;
        let body = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "signals {args:?} ({}) printed no JSON: {}",
                output.status,
                String::from_utf8_lossy(&output.stdout)
            )
        })?;
        Ok((output.status.code(), body))
    }

    /// Runs the batch: the admin endpoint of `signals up`, or the
    /// `signals batch run` command beside `serve` and `speed`.
    pub async fn run_batch(&self) -> anyhow::Result<Value> {
        if matches!(self.shape, Shape::Split { .. }) {
            let output = self
                .command(&["batch", "run", "--json"], &self.log_path())?
                .output()?;
            if !output.status.success() {
                bail!("signals batch run failed with {}", output.status);
            }
            return Ok(serde_json::from_slice(&output.stdout)?);
        }
        let response = self
            .http
            .post(self.url("/v1/admin/batch/run"))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            bail!("POST /v1/admin/batch/run: {status} {body}");
        }
        Ok(body)
    }

    /// Waits until the speed layer has applied everything in the log.
    pub async fn wait_caught_up(&self) -> anyhow::Result<()> {
        // Kafka may first wait out the session of a killed group member.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, body) = self
                .get_json("/v1/users/nobody/signals?names=last_active")
                .await?;
            if body["freshness"]["speed_lag_records"] == json!(0) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "speed layer still lagging after 120s: {}",
                    body["freshness"]
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.kill();
    }
}
