//! The engines the suite may hurt, and how: an `infra/local` instance of its
//! own (the long form: `tests/faults` starts it on ports of its own), or, in
//! the short form, only a `redis-server` of its own beside the shared Kafka
//! and Cassandra, which it never touches (it cuts and stalls its own
//! connections to them through a [`Proxy`](super::proxy::Proxy) instead).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// One of the three engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Engine {
    Kafka,
    Cassandra,
    Redis,
}

impl Engine {
    /// Its name for `infra/local/up` and `down`.
    pub fn infra_name(self) -> &'static str {
        match self {
            Engine::Kafka => "kafka",
            Engine::Cassandra => "cassandra",
            Engine::Redis => "redis",
        }
    }
}

/// A signal sent to an engine's process.
#[derive(Clone, Copy, Debug)]
pub enum Signal {
    Kill,
    Stop,
    Cont,
}

impl Signal {
    fn flag(self) -> &'static str {
        match self {
            Signal::Kill => "-KILL",
            Signal::Stop => "-STOP",
            Signal::Cont => "-CONT",
        }
    }
}

/// Sends `signal` to `pid` with kill(1).
pub fn send(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(signal.flag())
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill {} {pid} failed: {status}", signal.flag());
    }
    Ok(())
}

/// The repository root (for `infra/local`).
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// An `infra/local` instance the suite owns: the state dir and ports come
/// from the `SIGNALS_INFRA_*` variables `tests/faults` sets, the endpoints
/// from the `SIGNALS_TEST_*` ones `infra/local/up` printed.
pub struct OwnedInfra {
    state_dir: PathBuf,
}

impl OwnedInfra {
    /// Refuses the shared instance: only one on a state dir and ports other
    /// than the defaults may be stopped, killed or paused.
    pub fn from_env() -> anyhow::Result<OwnedInfra> {
        let state_dir = std::env::var("SIGNALS_INFRA_STATE_DIR")
            .context("SIGNALS_INFRA_STATE_DIR must name the suite's own infra/local state dir")?;
        for (variable, shared) in [
            ("SIGNALS_INFRA_KAFKA_PORT", "19092"),
            ("SIGNALS_INFRA_CQL_PORT", "19042"),
            ("SIGNALS_INFRA_REDIS_PORT", "16379"),
        ] {
            let port = std::env::var(variable).unwrap_or_default();
            if port.is_empty() || port == shared {
                bail!("{variable} must be set to a port of the suite's own instance, not {shared:?} (the shared one)");
            }
        }
        let state_dir = PathBuf::from(state_dir);
        if !state_dir.join("kafka").exists() {
            bail!(
                "{} holds no infra/local instance: start one with tests/faults",
                state_dir.display()
            );
        }
        Ok(OwnedInfra { state_dir })
    }

    /// The engine's process id, from infra/local's pid file.
    pub fn pid(&self, engine: Engine) -> anyhow::Result<u32> {
        let file = self.state_dir.join(engine.infra_name()).join("pid");
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "{} is not running ({})",
                engine.infra_name(),
                file.display()
            )
        })?;
        Ok(text.trim().parse()?)
    }

    pub fn signal(&self, engine: Engine, signal: Signal) -> anyhow::Result<()> {
        send(self.pid(engine)?, signal)
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill(&self, engine: Engine) -> anyhow::Result<()> {
        let pid = self.pid(engine)?;
        send(pid, Signal::Kill)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}/stat")).exists() && !zombie(pid) {
            if Instant::now() > deadline {
                bail!("{} (pid {pid}) survived SIGKILL", engine.infra_name());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `infra/local/down ENGINE` (SIGTERM, then SIGKILL after its grace).
    pub fn down(&self, engine: Engine) -> anyhow::Result<()> {
        self.script("down", engine)
    }

    /// `infra/local/up ENGINE`: returns once the engine answers.
    pub fn up(&self, engine: Engine) -> anyhow::Result<()> {
        self.script("up", engine)
    }

    fn script(&self, script: &str, engine: Engine) -> anyhow::Result<()> {
        let output = Command::new(repository().join("infra/local").join(script))
            .arg(engine.infra_name())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running infra/local/{script}"))?;
        if !output.status.success() {
            bail!(
                "infra/local/{script} {} failed ({}): {}",
                engine.infra_name(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true)
}

/// A `redis-server` of the suite's own (the short form), on a fixed port so
/// that a restart is the same endpoint.
pub struct PrivateRedis {
    binary: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> anyhow::Result<PrivateRedis> {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .context("redis-server not found (infra/local/up redis installs it)")?;
        let mut redis = PrivateRedis {
            binary,
            port: crate::free_port(),
            child: None,
        };
        redis.launch()?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn launch(&mut self) -> anyhow::Result<()> {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server not answering on {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .context("redis-server is not running")
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process must be continued to die of SIGKILL promptly.
            let _ = send(child.id(), Signal::Cont);
        }
        self.kill();
    }
}

/// How the suite hurts engines: which faults it may inject.
pub enum Engines {
    /// Its own infra/local instance: every fault.
    Owned(OwnedInfra),
    /// The shared instance plus a Redis of its own: only faults that leave
    /// the shared engines alone.
    Shared(PrivateRedis),
}

impl Engines {
    /// Whether `engine`'s process may be stopped, killed or paused.
    pub fn may_hurt(&self, engine: Engine) -> bool {
        matches!(self, Engines::Owned(_)) || engine == Engine::Redis
    }

    pub fn signal(&self, engine: Engine, signal: Signal) -> anyhow::Result<()> {
        match self {
            Engines::Owned(infra) => infra.signal(engine, signal),
            Engines::Shared(redis) if engine == Engine::Redis => send(redis.pid()?, signal),
            Engines::Shared(_) => bail!("the shared {engine:?} is never signalled"),
        }
    }

    pub fn kill(&mut self, engine: Engine) -> anyhow::Result<()> {
        match self {
            Engines::Owned(infra) => infra.kill(engine),
            Engines::Shared(redis) if engine == Engine::Redis => {
                redis.kill();
                Ok(())
            }
            Engines::Shared(_) => bail!("the shared {engine:?} is never killed"),
        }
    }

    /// Starts a stopped or killed engine again; returns once it answers.
    pub fn up(&mut self, engine: Engine) -> anyhow::Result<()> {
        match self {
            Engines::Owned(infra) => infra.up(engine),
            Engines::Shared(redis) if engine == Engine::Redis => redis.launch(),
            Engines::Shared(_) => bail!("the shared {engine:?} is never restarted"),
        }
    }

    /// A clean stop (SIGTERM and wait).
    pub fn down(&mut self, engine: Engine) -> anyhow::Result<()> {
        match self {
            Engines::Owned(infra) => infra.down(engine),
            Engines::Shared(_) => self.kill(engine),
        }
    }
}
