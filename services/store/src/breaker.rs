//! A circuit breaker: after a run of failures, stop calling a dependency
//! for a cool-down, then let one probe through to see if it is back.
//!
//! For the Redis cache: a hung Redis (SIGSTOP, a full network buffer)
//! answers nothing, so without a breaker every read waits out the cache
//! timeout before asking the store. With it, after `failures_to_open`
//! consecutive failures reads go straight to the store for `cool_down`;
//! then one call probes Redis (half-open) while the others still bypass it,
//! and its outcome closes the breaker or opens it for another cool-down.
//! Pure state: the caller passes the time, so it is tested without clocks.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whether a call may go to the dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call it.
    Call,
    /// Half-open: call it as the one probe; report the outcome.
    Probe,
    /// Open (or another probe is out): do not call it.
    Bypass,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cool-down is over; `probe` is when the current probe went out.
    HalfOpen {
        probe: Option<Instant>,
    },
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Consecutive failures, for the report.
    failures: u32,
    last_error: Option<String>,
}

/// A circuit breaker around one dependency.
#[derive(Debug)]
pub struct Breaker {
    failures_to_open: u32,
    cool_down: Duration,
    state: Mutex<State>,
}

impl Breaker {
    /// Opens after `failures_to_open` consecutive failures (at least 1) for `cool_down`.
    pub fn new(failures_to_open: u32, cool_down: Duration) -> Breaker {
        Breaker {
            failures_to_open: failures_to_open.max(1),
            cool_down,
            state: Mutex::new(State {
                phase: Phase::Closed { failures: 0 },
                failures: 0,
                last_error: None,
            }),
        }
    }

    /// Whether a call made at `now` may go to the dependency.
    pub fn admit(&self, now: Instant) -> Admission {
        let Ok(mut state) = self.state.lock() else {
            return Admission::Call;
        };
        match state.phase {
            Phase::Closed { .. } => Admission::Call,
            Phase::Open { until } if now < until => Admission::Bypass,
            Phase::Open { .. } => {
                state.phase = Phase::HalfOpen { probe: Some(now) };
                Admission::Probe
            }
            // A probe whose caller never reported (cancelled) expires.
            Phase::HalfOpen { probe: Some(sent) } if now < sent + self.cool_down => {
                Admission::Bypass
            }
            Phase::HalfOpen { .. } => {
                state.phase = Phase::HalfOpen { probe: Some(now) };
                Admission::Probe
            }
        }
    }

    /// A call succeeded: the breaker closes.
    pub fn success(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.phase = Phase::Closed { failures: 0 };
            state.failures = 0;
        }
    }

    /// A call failed at `now`; `true` when this failure opened the breaker.
    pub fn failure(&self, now: Instant, error: String) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        state.failures = state.failures.saturating_add(1);
        state.last_error = Some(error);
        let open = Phase::Open {
            until: now + self.cool_down,
        };
        match state.phase {
            Phase::Closed { failures } if failures + 1 >= self.failures_to_open => {
                state.phase = open;
                true
            }
            Phase::Closed { failures } => {
                state.phase = Phase::Closed {
                    failures: failures + 1,
                };
                false
            }
            Phase::HalfOpen { .. } => {
                state.phase = open;
                true
            }
            // A call admitted before the breaker opened, failing late.
            Phase::Open { .. } => false,
        }
    }

    /// `None` while closed; else why it is open and when it probes next.
    pub fn report(&self, now: Instant) -> Option<String> {
        let state = self.state.lock().ok()?;
        let last = state.last_error.as_deref().unwrap_or("unknown error");
        match state.phase {
            Phase::Closed { .. } => None,
            Phase::Open { until } => Some(format!(
                "circuit open ({} consecutive failures, last: {last}); reads bypass the cache, next probe in {:.1?}",
                state.failures,
                until.saturating_duration_since(now)
            )),
            Phase::HalfOpen { .. } => Some(format!(
                "circuit half-open ({} consecutive failures, last: {last}); probing",
                state.failures
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(5);

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let breaker = Breaker::new(3, COOL);
        let t = Instant::now();
        assert!(!breaker.failure(t, "timed out".into()));
        assert!(!breaker.failure(t, "timed out".into()));
        breaker.success();
        assert!(!breaker.failure(t, "timed out".into()));
        assert!(!breaker.failure(t, "timed out".into()));
        assert_eq!(breaker.admit(t), Admission::Call);
        assert!(
            breaker.failure(t, "GET timed out".into()),
            "third in a row opens"
        );
        assert_eq!(breaker.admit(t + Duration::from_secs(1)), Admission::Bypass);
        let report = breaker.report(t + Duration::from_secs(1)).expect("open");
        assert!(
            report.starts_with("circuit open (3 consecutive failures, last: GET timed out)"),
            "{report}"
        );
    }

    #[test]
    fn after_the_cool_down_one_probe_goes_and_its_outcome_decides() {
        let breaker = Breaker::new(1, COOL);
        let t = Instant::now();
        assert!(breaker.failure(t, "down".into()));
        let later = t + COOL;
        assert_eq!(breaker.admit(later), Admission::Probe);
        assert_eq!(
            breaker.admit(later),
            Admission::Bypass,
            "one probe at a time"
        );
        // The probe fails: open for another cool-down.
        assert!(breaker.failure(later, "still down".into()));
        assert_eq!(breaker.admit(later + COOL / 2), Admission::Bypass);
        assert_eq!(breaker.admit(later + COOL), Admission::Probe);
        breaker.success();
        assert_eq!(breaker.admit(later + COOL), Admission::Call);
        assert_eq!(breaker.report(later + COOL), None);
    }

    #[test]
    fn a_probe_that_never_reports_expires() {
        let breaker = Breaker::new(1, COOL);
        let t = Instant::now();
        breaker.failure(t, "down".into());
        assert_eq!(breaker.admit(t + COOL), Admission::Probe);
        assert_eq!(breaker.admit(t + COOL + COOL / 2), Admission::Bypass);
        assert_eq!(breaker.admit(t + COOL * 2), Admission::Probe);
    }
}
