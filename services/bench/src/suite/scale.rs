//! Scale: how the in-process figures move as users and events grow; what
//! matters is the growth of cost, not any one point. Each point measures the
//! speed layer, the batch (rate and peak memory) and a read of Zipf-drawn
//! users through the store and the core (history + merge + evaluate).

use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use signals_core::UserView;
use signals_store::embedded::EmbeddedStore;
use signals_store::SignalStore;

use crate::backends::{self, Place};
use crate::http;
use crate::suite::{batch, speed};
use crate::workload::{Shape, Workload};

/// One point of the curve.
pub struct Point {
    pub users: u64,
    pub events: u64,
    pub speed: speed::SpeedFigures,
    pub batch: batch::BatchFigures,
    /// µs per user read in process after the batch.
    pub read: Histogram<u64>,
}

pub async fn measure(shape: &Shape, events: u64, speed_batch: usize) -> anyhow::Result<Point> {
    let speed_dir = tempfile::tempdir()?;
    let speed = speed::measure(
        &Place::Embedded(speed_dir.path().to_owned()),
        shape,
        events,
        speed_batch,
    )
    .await?;
    drop(speed_dir);
    let batch_dir = tempfile::tempdir()?;
    let place = Place::Embedded(batch_dir.path().to_owned());
    let batch = batch::measure(&place, shape, events).await?;
    let read = read_users(&batch_dir.path().join("store.redb"), shape, 10_000)?;
    Ok(Point {
        users: shape.users,
        events,
        speed,
        batch,
        read: read.await?,
    })
}

/// Reads `n` Zipf-drawn users' signals from the store the batch wrote.
fn read_users(
    path: &std::path::Path,
    shape: &Shape,
    n: usize,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<Histogram<u64>>>> {
    let store: Arc<dyn SignalStore> = Arc::new(EmbeddedStore::open(path)?);
    let definitions = backends::default_definitions()?;
    let mut users = Workload::new(&Shape {
        seed: shape.seed + 7,
        ..shape.clone()
    })?;
    Ok(async move {
        let all: Vec<_> = definitions.iter().collect();
        let at = crate::workload::now_millis();
        let mut latency = http::histogram();
        for _ in 0..n {
            let user = users.user();
            let started = Instant::now();
            let history = store.user_history(&user).await?;
            let view = UserView::merge(history.record, history.speed);
            std::hint::black_box(view.evaluate(&all, at));
            let _ = latency.record((started.elapsed().as_micros() as u64).max(1));
        }
        Ok(latency)
    })
}
