//! The real `signals` binary, started on a private data dir and port, on
//! the embedded stack or on the real services of `infra/local/up`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::http::{Call, Conn};

/// Which backends the platform runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stack {
    /// Embedded log and store: `signals up`.
    Embedded,
    /// Kafka → Cassandra/ScyllaDB + Redis: `signals serve` + `signals speed`.
    Real,
}

/// Endpoints of the real services (the `SIGNALS_TEST_*` variables that
/// `infra/local/up` prints, with its default ports).
#[derive(Clone, Debug)]
pub struct Services {
    pub kafka: String,
    pub cql: String,
    pub redis: String,
}

impl Services {
    pub fn from_env() -> Services {
        let var = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_owned());
        Services {
            kafka: var("SIGNALS_TEST_KAFKA_BROKERS", "127.0.0.1:19092"),
            cql: var("SIGNALS_TEST_CQL_NODES", "127.0.0.1:19042"),
            redis: var("SIGNALS_TEST_REDIS_URL", "redis://127.0.0.1:16379"),
        }
    }

    /// Settings that point the binary at these services, on a topic,
    /// keyspace and group of its own (`name`).
    pub fn settings(&self, name: &str) -> Vec<(String, String)> {
        [
            ("SIGNALS_LOG__BACKEND", "kafka"),
            ("SIGNALS_LOG__KAFKA__BROKERS", &self.kafka),
            ("SIGNALS_LOG__KAFKA__TOPIC", &format!("{name}.events")),
            (
                "SIGNALS_LOG__KAFKA__DEAD_LETTER_TOPIC",
                &format!("{name}.dlq"),
            ),
            ("SIGNALS_LOG__KAFKA__GROUP", &format!("{name}-speed")),
            ("SIGNALS_STORE__BACKEND", "scylla"),
            ("SIGNALS_STORE__SCYLLA__NODES", &self.cql),
            (
                "SIGNALS_STORE__SCYLLA__KEYSPACE",
                &name.replace(['-', '.'], "_"),
            ),
            ("SIGNALS_CACHE__REDIS_URL", &self.redis),
            // The speed process's /metrics endpoint on any free port, so a
            // run never collides with a `signals speed` already on 9091.
            ("SIGNALS_SPEED__LISTEN", "127.0.0.1:0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

/// A unique name for one run's topic, keyspace and group.
pub fn unique_name(what: &str) -> String {
    format!("bench_{what}_{:x}", crate::workload::now_millis())
}

/// The platform's processes.
pub struct Platform {
    pub address: SocketAddr,
    pub stack: Stack,
    data_dir: PathBuf,
    env: Vec<(String, String)>,
    children: Vec<Child>,
    _temp: tempfile::TempDir,
}

impl Platform {
    /// Starts the platform with the batch schedule off and `settings` on top.
    pub async fn start(
        stack: Stack,
        services: &Services,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Platform> {
        let temp = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut env = vec![("SIGNALS_BATCH__SCHEDULE".to_owned(), "off".to_owned())];
        if stack == Stack::Real {
            env.extend(services.settings(&unique_name("platform")));
        }
        env.extend(
            settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let mut platform = Platform {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            stack,
            data_dir: temp.path().join("data"),
            env,
            children: Vec::new(),
            _temp: temp,
        };
        platform.launch().await?;
        Ok(platform)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let listen = self.address.to_string();
        let commands: Vec<Vec<&str>> = match self.stack {
            Stack::Embedded => vec![vec!["up", "--listen", &listen]],
            Stack::Real => vec![vec!["serve", "--listen", &listen], vec!["speed"]],
        };
        std::fs::create_dir_all(&self.data_dir)?;
        for args in commands {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.data_dir.with_extension("log"))?;
            let mut command = Command::new(signals_binary()?);
            command
                .args(&args)
                .arg("--data-dir")
                .arg(&self.data_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            // Settings come from the suite alone, not from the caller's shell.
            for (key, _) in std::env::vars() {
                if key.starts_with("SIGNALS_") && !key.starts_with("SIGNALS_TEST_") {
                    command.env_remove(key);
                }
            }
            command.envs(self.env.iter().map(|(k, v)| (k, v)));
            self.children.push(
                command
                    .spawn()
                    .with_context(|| format!("cannot start signals {args:?}"))?,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(mut conn) = Conn::open(self.address).await {
                if let Ok((status, _)) = conn.send(&Call::get("/readyz")).await {
                    if status.is_success() {
                        return Ok(());
                    }
                }
            }
            for child in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    let log = std::fs::read_to_string(self.data_dir.with_extension("log"))
                        .unwrap_or_default();
                    bail!("signals exited with {status} before becoming ready:\n{log}");
                }
            }
            if Instant::now() > deadline {
                bail!("signals not ready within 90s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops and starts the same data dir again: every in-process cache is cold.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch().await
    }

    pub fn stop(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `signals`, built beside this binary (`cargo build --release -p signals -p signals-bench`).
pub fn signals_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .map(|dir| dir.join("signals"))
        .unwrap_or_else(|| Path::new("signals").to_path_buf());
    if !path.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p signals -p signals-bench`",
            path.display()
        );
    }
    Ok(path)
}
