//! The whole platform on its embedded default, driven over HTTP like a user
//! would, and checked against the independent reference.

use signals_e2e::{scenario, Platform};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speed_batch_and_retractions_stay_exact() {
    let mut platform = Platform::start().await.expect("platform starts");
    scenario::speed_batch_and_retractions_stay_exact(&mut platform).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_loses_nothing_accepted_and_counts_nothing_twice() {
    let mut platform = Platform::start().await.expect("platform starts");
    scenario::a_killed_process_loses_nothing_accepted_and_counts_nothing_twice(&mut platform).await;
}
