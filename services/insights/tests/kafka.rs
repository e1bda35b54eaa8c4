//! The feed on a real Kafka (`SIGNALS_TEST_KAFKA_BROKERS`): produced once,
//! and a restarted sink resumes after the last committed entry.
#![cfg(feature = "kafka")]

use std::time::Duration;

use signals_insights::kafka::{KafkaChangeSink, KafkaSinkOptions};
use signals_insights::ChangeSink;
use signals_store::insights::{Change, FeedEntry, Transition};

fn entry(cursor: u64) -> FeedEntry {
    FeedEntry {
        cursor,
        transition: Transition {
            user_id: format!("u-{}", cursor % 3),
            segment: "searcher".into(),
            change: if cursor % 2 == 1 {
                Change::Entered
            } else {
                Change::Left
            },
            at: 1_795_428_000_000 + cursor as i64,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_is_produced_once_and_resumes_after_the_last_commit() {
    let Some(brokers) = signals_test_support::kafka_brokers() else {
        return;
    };
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let options = KafkaSinkOptions {
        brokers,
        topic: format!("signals.segments.test-{unique}"),
        transactional_id: format!("signals-insights-test-{unique}"),
        timeout: Duration::from_secs(20),
        replication_factor: 1,
    };
    let sink = KafkaChangeSink::connect(options.clone())
        .await
        .expect("connects");
    assert_eq!(sink.published_until().await.expect("reads"), 0);
    let first: Vec<FeedEntry> = (1..=3).map(entry).collect();
    sink.publish(&first).await.expect("published");
    assert_eq!(sink.published_until().await.expect("reads"), 3);

    // A restarted worker: a new producer with the same id fences the old
    // one, and the resume point is read back from the topic.
    drop(sink);
    let sink = KafkaChangeSink::connect(options.clone())
        .await
        .expect("reconnects");
    assert_eq!(sink.published_until().await.expect("reads"), 3);
    let second: Vec<FeedEntry> = (4..=5).map(entry).collect();
    sink.publish(&second).await.expect("published");
    assert_eq!(sink.published_until().await.expect("reads"), 5);
}
