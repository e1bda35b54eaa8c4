//! `signals serve` and `signals speed` as separate processes, as a
//! supervisor runs them: the suite SIGKILLs them and spawns them again at
//! once, on the same ports and settings, and does nothing else by hand.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::faults::engines::{send, Signal};

/// Which of the platform's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Serve,
    Speed,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Speed => "speed",
        }
    }
}

/// The two processes, their endpoints and logs.
pub struct Processes {
    /// `http://127.0.0.1:port` of `signals serve` (collector and serving).
    pub serve: String,
    /// `http://127.0.0.1:port` of `signals speed`'s operations endpoint.
    pub speed: String,
    settings: Vec<(String, String)>,
    pub dir: PathBuf,
    children: [Option<Child>; 2],
    /// Times each role was spawned.
    pub spawns: [u32; 2],
}

impl Processes {
    /// Spawns both with `settings` (`SIGNALS_*` variables) and a data dir
    /// and logs under `dir`.
    pub fn start(settings: Vec<(String, String)>, dir: &Path) -> anyhow::Result<Processes> {
        std::fs::create_dir_all(dir.join("data"))?;
        let mut processes = Processes {
            serve: format!("http://127.0.0.1:{}", crate::free_port()),
            speed: format!("http://127.0.0.1:{}", crate::free_port()),
            settings,
            dir: dir.to_path_buf(),
            children: [None, None],
            spawns: [0, 0],
        };
        processes.spawn(Role::Serve)?;
        processes.spawn(Role::Speed)?;
        Ok(processes)
    }

    pub fn log(&self, role: Role) -> PathBuf {
        self.dir.join(format!("{}.log", role.name()))
    }

    /// The last `lines` lines of a role's log (all its lives).
    pub fn log_tail(&self, role: Role, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log(role)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Lines of a role's log that contain `needle`.
    pub fn log_lines(&self, role: Role, needle: &str) -> Vec<String> {
        std::fs::read_to_string(self.log(role))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    pub fn spawn(&mut self, role: Role) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(role))?;
        let mut command = Command::new(crate::binary());
        command
            .arg(role.name())
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // Settings come from the suite alone, not from the caller's shell
        // (tests/faults exports SIGNALS_INFRA_* for infra/local).
        for (key, _) in std::env::vars() {
            if key.starts_with("SIGNALS_") {
                command.env_remove(key);
            }
        }
        for (key, value) in &self.settings {
            command.env(key, value);
        }
        match role {
            Role::Serve => {
                command
                    .arg("--listen")
                    .arg(self.serve.trim_start_matches("http://"));
            }
            Role::Speed => {
                command.env(
                    "SIGNALS_SPEED__LISTEN",
                    self.speed.trim_start_matches("http://"),
                );
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("spawning signals {}", role.name()))?;
        self.children[role as usize] = Some(child);
        self.spawns[role as usize] += 1;
        Ok(())
    }

    /// Writes every thread's stack of a role's process to
    /// `<dir>/<role>-stacks-<n>.txt` (gdb, where the machine has it), so
    /// that a process the suite must restart by hand says where it stood.
    /// The path written, if any.
    pub fn dump_stacks(&self, role: Role) -> Option<PathBuf> {
        let pid = self.children[role as usize].as_ref()?.id();
        let output = Command::new("gdb")
            .args([
                "-batch",
                "-p",
                &pid.to_string(),
                "-ex",
                "thread apply all bt",
            ])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let path = self.dir.join(format!(
            "{}-stacks-{}.txt",
            role.name(),
            self.spawns[role as usize]
        ));
        std::fs::write(&path, output.stdout).ok()?;
        Some(path)
    }

    /// SIGKILL and reap: no chance to flush, commit or say goodbye.
    pub fn kill(&mut self, role: Role) {
        if let Some(mut child) = self.children[role as usize].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The exit status of a role's process if it ended by itself (a crash or
    /// a give-up, which no fault may cause); `None` while it runs.
    pub fn exited(&mut self, role: Role) -> Option<std::process::ExitStatus> {
        let child = self.children[role as usize].as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// SIGTERM both and wait for them (the end of a run).
    pub fn stop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = send(child.id(), Signal::Cont);
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        for slot in &mut self.children {
            if let Some(child) = slot.as_mut() {
                while child.try_wait().ok().flatten().is_none()
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
            if let Some(mut child) = slot.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.kill(Role::Serve);
        self.kill(Role::Speed);
    }
}
