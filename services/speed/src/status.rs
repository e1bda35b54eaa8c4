//! What the speed layer is waiting for, for readiness and operators.

use std::sync::Mutex;
use std::time::Instant;

/// The operation the layer is retrying, if any, and since when.
///
/// Written by the layer's loop, read by `/readyz` (shared through
/// [`crate::SpeedOptions::status`]); a retried operation that succeeds
/// clears it.
#[derive(Debug, Default)]
pub struct SpeedStatus {
    waiting: Mutex<Option<Waiting>>,
}

#[derive(Debug)]
struct Waiting {
    operation: &'static str,
    since: Instant,
    attempts: u64,
    error: String,
}

impl SpeedStatus {
    /// `None` while the layer makes progress; otherwise what it retries,
    /// since when, and the last error.
    pub fn problem(&self) -> Option<String> {
        let waiting = self.waiting.lock().ok()?;
        let w = waiting.as_ref()?;
        Some(format!(
            "retrying `{}` for {:.1?} ({} attempts): {}",
            w.operation,
            w.since.elapsed(),
            w.attempts,
            w.error
        ))
    }

    /// Notes a failed attempt at `operation`.
    pub(crate) fn waiting(&self, operation: &'static str, error: String) {
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        match waiting.as_mut() {
            Some(w) if w.operation == operation => {
                w.attempts += 1;
                w.error = error;
            }
            _ => {
                *waiting = Some(Waiting {
                    operation,
                    since: Instant::now(),
                    attempts: 1,
                    error,
                })
            }
        }
        metrics::gauge!("signals_speed_waiting").set(1.0);
    }

    /// `operation` succeeded: clears the wait if it was for it.
    pub(crate) fn clear(&self, operation: &'static str) {
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        if waiting.as_ref().is_some_and(|w| w.operation == operation) {
            *waiting = None;
            metrics::gauge!("signals_speed_waiting").set(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_is_reported_until_its_operation_succeeds() {
        let status = SpeedStatus::default();
        assert_eq!(status.problem(), None);
        status.waiting("poll the log", "broker down".into());
        status.waiting("poll the log", "still down".into());
        let problem = status.problem().expect("waiting");
        assert!(
            problem.starts_with("retrying `poll the log` for"),
            "{problem}"
        );
        assert!(problem.ends_with("(2 attempts): still down"), "{problem}");
        // Another operation's success does not clear it.
        status.clear("apply speed write");
        assert!(status.problem().is_some());
        status.clear("poll the log");
        assert_eq!(status.problem(), None);
    }
}
