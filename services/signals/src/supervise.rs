//! The layers `signals up` runs beside its collector (the speed layer, the
//! insights worker) are restarted when they fail, so that one failure a
//! retry inside the layer cannot cure (corrupt stored data, a record the
//! layer cannot apply) stops neither the collector nor serving. Each
//! restart is logged, counted in a metric, and reported by `/readyz` until
//! the layer runs again; only an error the layer calls fatal (its
//! configuration is wrong: restarting cannot help) ends the supervision.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::error;

/// How one supervised layer is restarted.
pub struct Restarts {
    /// What logs and readiness call the layer ("speed layer").
    pub layer: &'static str,
    /// Incremented on every restart (the caller names it with
    /// `metrics::counter!`, where the alerts' check finds the name).
    pub counter: metrics::Counter,
    /// Pause before the first restart; doubled after each failure up to
    /// `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Restarts {
    /// 1 s, doubling up to a minute.
    pub fn new(layer: &'static str, counter: metrics::Counter) -> Restarts {
        Restarts {
            layer,
            counter,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }

    /// The pause before the next restart: the first one after the first
    /// failure, or after a run that stayed up longer than the longest pause
    /// (it was healthy, so this failure starts over); else double the
    /// `previous` pause, up to `max_backoff`.
    fn next_backoff(&self, previous: Option<Duration>, ran: Duration) -> Duration {
        match previous {
            Some(previous) if ran <= self.max_backoff => (previous * 2).min(self.max_backoff),
            _ => self.first_backoff,
        }
    }
}

/// Why a supervised layer is not running now (`None` while it runs), for
/// `/readyz`.
#[derive(Debug, Default)]
pub struct Down(Mutex<Option<String>>);

impl Down {
    pub fn reason(&self) -> Option<String> {
        self.0.lock().ok().and_then(|reason| reason.clone())
    }

    fn set(&self, reason: Option<String>) {
        if let Ok(mut held) = self.0.lock() {
            *held = reason;
        }
    }
}

/// Runs `run` until `stop`, restarting it after each error that
/// `is_fatal` does not call fatal. Returns `Ok` once stopped, or the fatal
/// error (which `down` then keeps reporting).
pub fn supervise<E, F, Fut>(
    restarts: Restarts,
    down: std::sync::Arc<Down>,
    stop: CancellationToken,
    is_fatal: fn(&E) -> bool,
    mut run: F,
) -> JoinHandle<Result<(), E>>
where
    E: std::fmt::Display + Send + 'static,
    F: FnMut(CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
{
    tokio::spawn(async move {
        let layer = restarts.layer;
        let mut backoff = None;
        loop {
            let started = Instant::now();
            let error = match run(stop.clone()).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if is_fatal(&error) {
                error!(%error, layer, "stopped by an error a restart cannot cure");
                down.set(Some(format!("stopped: {error}")));
                return Err(error);
            }
            let pause = restarts.next_backoff(backoff, started.elapsed());
            backoff = Some(pause);
            error!(%error, layer, restart_in = ?pause, "stopped; restarting it");
            restarts.counter.increment(1);
            down.set(Some(format!("stopped ({error}); restarting in {pause:?}")));
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(pause) => {}
            }
            down.set(None);
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[derive(Debug)]
    enum Failure {
        Corrupt,
        Configuration,
    }

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(match self {
                Failure::Corrupt => "corrupt record",
                Failure::Configuration => "bad configuration",
            })
        }
    }

    fn quick() -> Restarts {
        Restarts {
            layer: "test layer",
            counter: metrics::Counter::noop(),
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
        }
    }

    fn is_configuration(failure: &Failure) -> bool {
        matches!(failure, Failure::Configuration)
    }

    #[tokio::test]
    async fn a_layer_failing_its_first_runs_is_restarted_until_it_stays_up() {
        let runs = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(tokio::sync::Notify::new());
        let down = Arc::new(Down::default());
        let stop = CancellationToken::new();
        let task = {
            let (runs, running) = (runs.clone(), running.clone());
            supervise(
                quick(),
                down.clone(),
                stop.clone(),
                is_configuration,
                move |stop| {
                    let run = runs.fetch_add(1, Ordering::SeqCst);
                    let running = running.clone();
                    async move {
                        if run < 2 {
                            return Err(Failure::Corrupt);
                        }
                        running.notify_one();
                        stop.cancelled().await;
                        Ok(())
                    }
                },
            )
        };
        running.notified().await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "two failures, then a run that stays up"
        );
        assert_eq!(down.reason(), None, "running again: readiness is clear");
        stop.cancel();
        assert!(task.await.expect("joined").is_ok());
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "not restarted after a clean stop"
        );
    }

    #[tokio::test]
    async fn readiness_says_why_while_the_layer_waits_to_be_restarted() {
        let down = Arc::new(Down::default());
        let stop = CancellationToken::new();
        let restarts = Restarts {
            // Long enough that the test reads the state during the pause;
            // the stop below ends the pause.
            first_backoff: Duration::from_secs(3_600),
            max_backoff: Duration::from_secs(3_600),
            ..quick()
        };
        let failed = Arc::new(tokio::sync::Notify::new());
        let task = {
            let failed = failed.clone();
            supervise(
                restarts,
                down.clone(),
                stop.clone(),
                is_configuration,
                move |_| {
                    let failed = failed.clone();
                    async move {
                        failed.notify_one();
                        Err(Failure::Corrupt)
                    }
                },
            )
        };
        failed.notified().await;
        let reason = loop {
            if let Some(reason) = down.reason() {
                break reason;
            }
            tokio::task::yield_now().await;
        };
        assert!(
            reason.starts_with("stopped (corrupt record); restarting in"),
            "{reason}"
        );
        stop.cancel();
        assert!(
            task.await.expect("joined").is_ok(),
            "a stop during the pause is clean"
        );
    }

    #[tokio::test]
    async fn a_configuration_error_ends_the_supervision() {
        let runs = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(Down::default());
        let task = {
            let runs = runs.clone();
            supervise(
                quick(),
                down.clone(),
                CancellationToken::new(),
                is_configuration,
                move |_| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    async { Err(Failure::Configuration) }
                },
            )
        };
        let ended = task.await.expect("joined");
        assert!(matches!(ended, Err(Failure::Configuration)));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "never restarted");
        assert_eq!(down.reason().as_deref(), Some("stopped: bad configuration"));
    }

    #[test]
    fn the_backoff_doubles_up_to_its_bound_and_starts_over_after_a_healthy_run() {
        let restarts = Restarts::new("layer", metrics::Counter::noop());
        let second = Duration::from_secs(1);
        let mut backoff = None;
        let mut seen = Vec::new();
        for _ in 0..8 {
            let pause = restarts.next_backoff(backoff, second);
            backoff = Some(pause);
            seen.push(pause.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(
            restarts.next_backoff(backoff, Duration::from_secs(61)),
            restarts.first_backoff,
            "a healthy run starts the pauses over"
        );
    }
}
