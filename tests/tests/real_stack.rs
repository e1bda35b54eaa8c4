//! The end-to-end scenarios on the real engines from `infra/local/up`:
//! the event log on Kafka, the store on Cassandra (CQL, as ScyllaDB), Redis
//! on the hot path; `signals serve` and two `signals speed` processes
//! sharing the topic's partitions, and `signals batch run` as the batch.
//! Same binary, chosen by configuration alone.

use signals_e2e::{scenario, Platform, Shape};

/// Settings that point `signals` at the services, on topics of its own.
fn real_engines(name: &str) -> Option<Vec<(String, String)>> {
    let kafka = match std::env::var("SIGNALS_TEST_KAFKA_BROKERS") {
        Ok(brokers) => brokers,
        Err(_) if std::env::var("SIGNALS_TEST_SKIP_SERVICES").is_ok() => {
            eprintln!("real services not configured and SIGNALS_TEST_SKIP_SERVICES set: skipping");
            return None;
        }
        Err(_) => panic!(
            "SIGNALS_TEST_KAFKA_BROKERS is not set: start the services with `eval \"$(infra/local/up)\"` \
             (or set SIGNALS_TEST_SKIP_SERVICES=1 to skip tests of real services)"
        ),
    };
    let redis = std::env::var("SIGNALS_TEST_REDIS_URL")
        .expect("SIGNALS_TEST_REDIS_URL set with the Kafka one");
    let cql = std::env::var("SIGNALS_TEST_CQL_NODES")
        .expect("SIGNALS_TEST_CQL_NODES set with the Kafka one");
    let unique = format!(
        "{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_real_engines_speed_batch_and_retractions_stay_exact() {
    let Some(settings) = real_engines("exact") else {
        return;
    };
    let mut platform = Platform::start_with(Shape::Split { speed_processes: 2 }, settings)
        .await
        .expect("platform starts");
    scenario::speed_batch_and_retractions_stay_exact(&mut platform).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_real_engines_killed_processes_lose_nothing_accepted_and_count_nothing_twice() {
    let Some(settings) = real_engines("kill") else {
        return;
    };
    let mut platform = Platform::start_with(Shape::Split { speed_processes: 2 }, settings)
        .await
        .expect("platform starts");
    scenario::a_killed_process_loses_nothing_accepted_and_counts_nothing_twice(&mut platform).await;
}
