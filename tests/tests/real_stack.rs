//! The end-to-end scenarios on the real engines from `infra/local/up`:
//! the event log on Kafka, the store on Cassandra (CQL, as ScyllaDB), Redis
//! on the hot path; `signals serve` and two `signals speed` processes
//! sharing the topic's partitions, and `signals batch run` as the batch.
//! Same binary, chosen by configuration alone.

use signals_e2e::{real_engines, scenario, Platform, Shape};

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

/// The same without Redis (`cache.redis_url` empty): serving keeps the
/// records it read from ScyllaDB itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_real_engines_without_redis_speed_batch_and_retractions_stay_exact() {
    let Some(mut settings) = real_engines("exact-no-redis") else {
        return;
    };
    for (key, value) in &mut settings {
        if key == "SIGNALS_CACHE__REDIS_URL" {
            value.clear();
        }
    }
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
