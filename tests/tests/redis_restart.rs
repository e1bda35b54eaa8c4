//! Redis restarted in the middle of the end-to-end scenario on the real
//! engines: answers stay exact while it is down and after it comes back
//! empty, `/readyz` reports the degraded cache meanwhile, and the cache is
//! filled again afterwards.
//!
//! The Redis is the test's own (`redis-server` on a free loopback port, the
//! binary `infra/local/up` installs), so the shared one is never disturbed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;
use signals_e2e::reference::Reference;
use signals_e2e::{free_port, real_engines, scenario, Platform, Shape};

fn redis_server_binary() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")]);
    for dir in candidates {
        let path = dir.join("redis-server");
        if path.is_file() {
            return Some(path);
        }
    }
    if signals_test_support::skip_requested() {
        eprintln!("redis-server not found and SIGNALS_TEST_SKIP_SERVICES set: skipping");
        return None;
    }
    panic!(
        "redis-server not found on PATH or in /usr/bin: `infra/local/up redis` installs it \
         (apt-get install redis-server), or set SIGNALS_TEST_SKIP_SERVICES=1"
    )
}

/// A Redis of this test's own.
struct Redis {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start(binary: PathBuf) -> Redis {
        let mut redis = Redis {
            binary,
            port: free_port(),
            child: None,
        };
        redis.launch();
        redis
    }

    fn launch(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.command("PING").as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server not answering");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to say goodbye to its clients.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One inline command; the first line of the reply.
    fn command(&self, command: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        let mut reply = [0u8; 128];
        let n = stream.read(&mut reply).ok()?;
        let text = String::from_utf8_lossy(&reply[..n]);
        Some(text.lines().next().unwrap_or("").to_owned())
    }

    fn keys(&self) -> u64 {
        self.command("DBSIZE")
            .and_then(|r| r.strip_prefix(':').and_then(|n| n.parse().ok()))
            .expect("DBSIZE answered")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `/readyz` body of an endpoint.
async fn readyz(platform: &Platform, base: &str) -> (u16, Value) {
    let response = platform
        .http()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

/// Waits until `/readyz` of `base` says the cache is degraded (`true`) or
/// not; it must stay 200 "ready" throughout: answers still come.
async fn wait_for_cache(platform: &Platform, base: &str, degraded: bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = readyz(platform, base).await;
        assert_eq!(status, 200, "{base}: {body}");
        assert_eq!(body["status"], "ready", "{base}: {body}");
        let cache = body["checks"]["cache"].as_str();
        if cache.is_some_and(|c| c.starts_with("degraded")) == degraded {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base}: /readyz never showed the cache degraded={degraded}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until serving has written to Redis again. Each round reads a user
/// the process keeps nothing of, whose read goes through the cache. A stall
/// of the box can open the breaker during batch 3's reads (three 50 ms
/// timeouts in a row). Those records are then kept in the process and never
/// asked of Redis again, but the cache must come back into use by itself
/// after the cool-down. What the processes logged about Redis is shown if
/// that took more than the reads already made (CI saw it once).
async fn wait_for_keys(platform: &Platform, redis: &Redis) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 0.. {
        if redis.keys() > 0 {
            if round > 0 {
                eprintln!(
                    "the cache was used again only after {round} more reads; the log on Redis:\n{}",
                    platform.log_lines("redis ", 40)
                );
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cache is not used again after the restart; the log on Redis:\n{}",
            platform.log_lines("redis ", 40)
        );
        let (status, body) = platform
            .get_json(&format!("/v1/users/after-restart-{round}/signals"))
            .await
            .expect("signals");
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_scenario_changes_no_answer_and_readiness_says_so() {
    let Some(binary) = redis_server_binary() else {
        return;
    };
    let Some(mut settings) = real_engines("redis-restart") else {
        return;
    };
    let mut redis = Redis::start(binary);
    for (key, value) in &mut settings {
        if key == "SIGNALS_CACHE__REDIS_URL" {
            *value = redis.url();
        }
    }
    let mut platform = Platform::start_with(Shape::Split { speed_processes: 1 }, settings)
        .await
        .expect("platform starts");
    let speed = platform.speed_endpoints[0].clone();
    let base = platform.base.clone();
    let mut rng = StdRng::seed_from_u64(7);
    let mut reference = Reference::default();
    let now = chrono::Utc::now().timestamp_millis();

    // Published records, read once: they are in Redis now.
    let events = scenario::generate(&mut rng, 600, "r1", now);
    scenario::post_all(&platform, &mut reference, &mut rng, events).await;
    platform.run_batch().await.expect("batch 1");
    scenario::assert_exact(&platform, &reference, "Redis up, after batch 1").await;
    assert!(redis.keys() > 0, "serving reads went through the cache");
    wait_for_cache(&platform, &base, false).await;

    // Redis gone: answers come from the store, readiness says degraded.
    redis.kill();
    let events = scenario::generate(&mut rng, 400, "r2", now);
    scenario::post_all(&platform, &mut reference, &mut rng, events).await;
    scenario::assert_exact(&platform, &reference, "Redis down").await;
    wait_for_cache(&platform, &base, true).await;
    platform.run_batch().await.expect("batch 2 with Redis down");
    scenario::assert_exact(&platform, &reference, "Redis down, after batch 2").await;
    wait_for_cache(&platform, &speed, true).await;

    // Redis back, empty: readiness recovers and the cache fills again.
    redis.launch();
    assert_eq!(redis.keys(), 0, "a fresh Redis");
    wait_for_cache(&platform, &base, false).await;
    // Batch 2's records (and which users it has none of) are kept in the
    // process since its reads with Redis down: Redis fills again with the
    // next version's.
    scenario::assert_exact(&platform, &reference, "Redis restarted").await;
    let events = scenario::generate(&mut rng, 300, "r3", now);
    scenario::post_all(&platform, &mut reference, &mut rng, events).await;
    platform.run_batch().await.expect("batch 3");
    scenario::assert_exact(&platform, &reference, "Redis restarted, after batch 3").await;
    wait_for_keys(&platform, &redis).await;
    wait_for_cache(&platform, &speed, false).await;

    // The speed process's own endpoint counted what it applied.
    let metrics = platform
        .http()
        .get(format!("{speed}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("signals_speed_records_total{outcome=\"applied\"}"),
        "{metrics}"
    );
    assert!(platform.stop().expect("stops"), "clean exits");
}
