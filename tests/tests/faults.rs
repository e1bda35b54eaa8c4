//! The fault-injection suite (see `signals_e2e::faults` and
//! docs/RELIABILITY.md).
//!
//! **Short form** (`short_form_...`, in `tests/run`): against the shared
//! engines `tests/run` starts, which other test binaries use too, so it
//! injects only faults that leave them alone: its own CQL and Redis
//! connections cut and stalled by a proxy, a `redis-server` of its own
//! SIGKILLed and SIGSTOPped, clients hanging up, and SIGKILLs of its own
//! `signals serve` and `signals speed`. Kafka faults need a broker of the
//! suite's own (Kafka tells clients its own address, so a proxy cannot sit
//! in front of it): those are the long form's.
//!
//! **Long form** (`long_form`, ignored): `tests/faults` starts an
//! `infra/local` instance of its own and runs every fault kind several
//! times and 100+ SIGKILLs of the speed layer, then prints the tables.

use std::path::PathBuf;
use std::time::Instant;

use signals_e2e::faults::engines::{Engines, OwnedInfra, PrivateRedis};
use signals_e2e::faults::load::LoadShape;
use signals_e2e::faults::{report, Fault, Harness, Round};

fn out_dir(name: &str) -> PathBuf {
    let dir = match std::env::var("SIGNALS_FAULTS_OUT") {
        Ok(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => std::env::temp_dir().join(signals_test_support::unique_name(name)),
    };
    std::fs::create_dir_all(&dir).expect("output dir");
    dir
}

/// Prints and saves the tables; fails listing every problem.
fn conclude(rounds: &[Round], startup_exits: &[String], dir: &std::path::Path, started: Instant) {
    let text = format!(
        "## By fault\n\n{}\n## By round\n\n{}\nwall time {:.0} s; logs in {}\n",
        report::by_fault(rounds),
        report::by_round(rounds),
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    println!("{text}");
    std::fs::write(dir.join("results.md"), &text).expect("results written");
    let mut problems = report::problems(rounds);
    problems.extend(startup_exits.iter().map(|e| format!("starting: {e}")));
    std::fs::write(dir.join("problems.txt"), problems.join("\n\n")).expect("problems written");
    assert!(
        problems.is_empty(),
        "{} problems (logs in {}):\n{}",
        problems.len(),
        dir.display(),
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_form_faults_lose_nothing_acknowledged_and_count_nothing_twice() {
    if signals_test_support::all().is_none() {
        return;
    }
    let started = Instant::now();
    let redis = PrivateRedis::start().expect("a redis-server of the test's own");
    let dir = out_dir("faults-short");
    let mut harness = Harness::start(Engines::Shared(redis), &dir, 7)
        .await
        .expect("the platform starts");
    let plan = [
        vec![
            Fault::CassandraCut,
            Fault::CassandraStall,
            Fault::RedisKill,
            Fault::RedisPause,
            Fault::RedisCut,
        ],
        vec![
            Fault::ClientHangups,
            Fault::SpeedKill,
            Fault::ServeKill,
            Fault::SpeedKill,
            Fault::ServeKill,
            Fault::SpeedKill,
        ],
    ];
    let mut rounds = Vec::new();
    for faults in plan {
        rounds.push(harness.round(&faults, LoadShape::default()).await);
    }
    harness.stop();
    conclude(&rounds, &harness.startup_exits, &dir, started);
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the long form: run it with tests/faults (it starts engines of its own)"]
async fn long_form() {
    let started = Instant::now();
    let infra = OwnedInfra::from_env().expect("run the long form with tests/faults");
    let dir = out_dir("faults-long");
    let mut harness = Harness::start(Engines::Owned(infra), &dir, 11)
        .await
        .expect("the platform starts");
    let repeat = setting("SIGNALS_FAULTS_REPEAT", 3);
    let speed_kills = setting("SIGNALS_FAULTS_SPEED_KILLS", 100);
    let only: Vec<Fault> = std::env::var("SIGNALS_FAULTS_ONLY")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| Fault::parse(s.trim()).unwrap_or_else(|| panic!("unknown fault {s:?}")))
        .collect();
    let wanted = |f: Fault| only.is_empty() || only.contains(&f);

    // One kind per round, so the check's findings belong to that kind; the
    // speed layer's kills in rounds of ten.
    let mut plan: Vec<Vec<Fault>> = Vec::new();
    for fault in Fault::ALL {
        if !wanted(fault) {
            continue;
        }
        if fault == Fault::SpeedKill {
            let mut left = speed_kills;
            while left > 0 {
                let n = left.min(10);
                plan.push(vec![fault; n]);
                left -= n;
            }
        } else {
            plan.push(vec![fault; repeat]);
        }
    }
    let mut rounds = Vec::new();
    for faults in plan {
        rounds.push(harness.round(&faults, LoadShape::default()).await);
        // Written as it goes, so a run cut short still leaves its numbers.
        let _ = std::fs::write(
            dir.join("results.md"),
            format!(
                "{}\n{}",
                report::by_fault(&rounds),
                report::by_round(&rounds)
            ),
        );
    }
    harness.stop();
    conclude(&rounds, &harness.startup_exits, &dir, started);
}
