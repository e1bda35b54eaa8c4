//! Cassandra (the CQL store) briefly unreachable while the speed layer
//! runs: it waits and retries, and afterwards nothing is lost and nothing is
//! counted twice.
//!
//! The shared Cassandra keeps serving every other test: only this test's
//! own connections pass through a TCP proxy on loopback, which the test cuts
//! (open connections reset, new ones closed at once) and restores. The
//! driver keeps talking to the proxy rather than discovering Cassandra's own
//! address: for the node it is connected to it takes the IP from
//! `system.local` (127.0.0.1 here) and the port of the contact point (the
//! proxy's), so no address translator is needed on loopback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signals_core::{Definitions, SignalSpec, UserView};
use signals_log::kafka::{KafkaDeadLetters, KafkaLog, KafkaOptions};
use signals_log::{Append, EventLog};
use signals_schemas::{Attributes, Event, EventType, LogRecord, RecordBody};
use signals_speed::{SpeedLayer, SpeedOptions};
use signals_store::scylla::{ScyllaOptions, ScyllaStore};
use signals_store::{ServingStore, StoreReads};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

/// A loopback TCP proxy to one upstream that can be cut and restored.
struct Proxy {
    address: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Connections turned away while cut.
    refused: Arc<AtomicU64>,
    open: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let address = listener.local_addr().expect("proxy address");
        let cut = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let open: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (cut2, refused2, open2) = (cut.clone(), refused.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if cut2.load(Ordering::SeqCst) {
                    refused2.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                open2
                    .lock()
                    .expect("proxy registry")
                    .push(task.abort_handle());
            }
        });
        Proxy {
            address,
            cut,
            refused,
            open,
        }
    }

    /// Resets every open connection and turns new ones away.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for task in self.open.lock().expect("proxy registry").drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Counts the speed layer's `signals_speed_retries_total`.
struct RetryCounter(Arc<AtomicU64>);

impl metrics::Recorder for RetryCounter {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        if key.name() == "signals_speed_retries_total" {
            metrics::Counter::from_arc(self.0.clone())
        } else {
            metrics::Counter::noop()
        }
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// A view of `user` with event id `id`, encoded as on the log.
fn view(id: &str, user: &str, time: i64) -> Append {
    let event = Event {
        event_id: id.into(),
        user_id: user.into(),
        event_type: EventType::View,
        item_id: Some(signals_schemas::format_smolstr!("item-{id}")),
        query: None,
        event_time: time,
        attributes: Attributes::new(),
    };
    Append {
        key: user.into(),
        bytes: signals_schemas::encode(&LogRecord {
            accepted_at: time,
            body: RecordBody::Event(event),
        }),
    }
}

async fn wait_until_applied(store: &ScyllaStore, log: &KafkaLog, what: &str) {
    let end = log.end().await.expect("end of the log");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let progress = store.speed_progress().await.expect("progress");
        if progress.position.reaches(&end) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not applied within 120s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_briefly_unreachable_loses_nothing_and_counts_nothing_twice() {
    let (Some(brokers), Some(nodes)) = (
        signals_test_support::kafka_brokers(),
        signals_test_support::cql_nodes(),
    ) else {
        return;
    };
    let retries = Arc::new(AtomicU64::new(0));
    metrics::set_global_recorder(RetryCounter(retries.clone())).expect("the only recorder");

    let unique = signals_test_support::unique_name("outage");
    let keyspace = format!("outage_{}", unique.replace('-', "_"));
    let upstream = nodes.split(',').next().expect("a node").trim().to_owned();
    let proxy = Proxy::start(upstream.clone()).await;

    // The speed layer's store goes through the proxy; the test reads directly.
    let options = |node: String| ScyllaOptions {
        nodes: vec![node],
        keyspace: keyspace.clone(),
        request_timeout: Duration::from_secs(2),
        ..ScyllaOptions::default()
    };
    let direct = ScyllaStore::connect(options(upstream))
        .await
        .expect("Cassandra");
    direct.migrate().await.expect("schema");
    let proxied = Arc::new(
        ScyllaStore::connect(options(proxy.address.to_string()))
            .await
            .expect("Cassandra through the proxy"),
    );

    let kafka = KafkaOptions {
        brokers,
        topic: format!("signals-{unique}"),
        dead_letter_topic: format!("signals-{unique}.dlq"),
        partitions: 2,
        ..KafkaOptions::default()
    };
    let log = Arc::new(KafkaLog::connect(kafka.clone()).await.expect("Kafka"));
    let speed = Arc::new(SpeedLayer {
        log: log.clone(),
        store: proxied.clone(),
        dead_letters: Arc::new(KafkaDeadLetters::connect(&kafka).expect("dead letters")),
        options: SpeedOptions {
            group: unique.clone(),
            poll_wait: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            ..SpeedOptions::default()
        },
    });
    let stop = CancellationToken::new();
    let task = {
        let (speed, stop) = (speed.clone(), stop.clone());
        tokio::spawn(async move { speed.run(stop).await })
    };

    // Expected: distinct event ids per user, whatever is sent twice.
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    let now = chrono::Utc::now().timestamp_millis();
    let round = |name: &str, count: usize| -> Vec<Append> {
        (0..count)
            .map(|i| view(&format!("{name}-{i}"), &format!("u-{}", i % 7), now - 1_000))
            .collect()
    };
    let first = round("a", 140);
    for (i, _) in first.iter().enumerate() {
        *expected.entry(format!("u-{}", i % 7)).or_default() += 1;
    }
    log.append(first.clone()).await.expect("appended");
    wait_until_applied(&direct, &log, "before the outage").await;

    // Cassandra becomes unreachable for the speed layer; events keep coming,
    // some of them again.
    proxy.cut();
    let retries_before = retries.load(Ordering::SeqCst);
    let second = round("b", 140);
    for (i, _) in second.iter().enumerate() {
        *expected.entry(format!("u-{}", i % 7)).or_default() += 1;
    }
    log.append(second.clone()).await.expect("appended");
    log.append(first[..40].to_vec()).await.expect("re-sent");
    log.append(second[..40].to_vec()).await.expect("re-sent");
    let deadline = Instant::now() + Duration::from_secs(60);
    while retries.load(Ordering::SeqCst) < retries_before + 3
        || proxy.refused.load(Ordering::SeqCst) < 2
    {
        assert!(
            !task.is_finished(),
            "the speed layer stopped during the outage: {:?}",
            task.await
        );
        assert!(
            Instant::now() < deadline,
            "no retries while Cassandra was unreachable (retries {}, refused connections {})",
            retries.load(Ordering::SeqCst),
            proxy.refused.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end = log.end().await.expect("end");
    let progress = direct.speed_progress().await.expect("progress");
    assert!(
        !progress.position.reaches(&end),
        "the speed layer wrote while its store was unreachable: the cut did not work"
    );
    assert!(!task.is_finished(), "the speed layer gave up");

    // Back: it catches up by itself.
    proxy.restore();
    let third = round("c", 70);
    for (i, _) in third.iter().enumerate() {
        *expected.entry(format!("u-{}", i % 7)).or_default() += 1;
    }
    log.append(third).await.expect("appended");
    log.append(second[100..].to_vec()).await.expect("re-sent");
    wait_until_applied(&direct, &log, "after the outage").await;
    stop.cancel();
    task.await
        .expect("joined")
        .expect("the speed layer ran through the outage");

    let specs: Vec<SignalSpec> = serde_json::from_value(serde_json::json!([
        {"name": "views", "events": ["view"], "aggregation": "count"}
    ]))
    .expect("spec");
    let definitions = Definitions::compile(&specs).expect("valid");
    let all: Vec<_> = definitions.iter().collect();
    for (user, count) in &expected {
        let history = direct.user_history(user).await.expect("history");
        let views = UserView::merge(history.record, history.speed)
            .evaluate(&all, now + 60_000)
            .0;
        assert_eq!(views, vec![serde_json::json!(count)], "views of {user}");
    }
    assert!(retries.load(Ordering::SeqCst) > retries_before);
}
