//! The suite's results as Markdown tables (printed, and pasted into
//! docs/RELIABILITY.md).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::faults::{Fault, Injection, Round};

fn seconds(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

/// p50 and max of the measured durations, and how many were not reached.
fn spread(values: &[Option<Duration>]) -> String {
    let mut reached: Vec<Duration> = values.iter().flatten().copied().collect();
    reached.sort();
    let missed = values.len() - reached.len();
    let mut text = match (reached.get(reached.len() / 2), reached.last()) {
        (Some(p50), Some(max)) => format!("{} / {}", seconds(*p50), seconds(*max)),
        _ => "—".to_owned(),
    };
    if missed > 0 {
        let _ = write!(text, " ({missed} never)");
    }
    text
}

/// One row per fault kind: injections, recovery, refused requests,
/// readiness, and what the check found in rounds of that kind alone.
pub fn by_fault(rounds: &[Round]) -> String {
    let mut injections: BTreeMap<Fault, Vec<&Injection>> = BTreeMap::new();
    for injection in rounds.iter().flat_map(|r| &r.injections) {
        injections
            .entry(injection.fault)
            .or_default()
            .push(injection);
    }
    let mut out = String::from(
        "| fault | injected | recovery s p50 / max | first 200 POST s p50 / max | ready again s p50 / max \
         | POSTs refused | reads failed | /readyz truthful | exited by itself | restarted by hand | lost | double-counted |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (fault, list) in &injections {
        let alone: Vec<&Round> = rounds
            .iter()
            .filter(|r| r.faults.iter().all(|f| f == fault))
            .collect();
        let (lost, doubled) = if alone.is_empty() {
            ("(mixed round)".to_owned(), "(mixed round)".to_owned())
        } else {
            check_counts(&alone)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {} | {} |",
            fault.name(),
            list.len(),
            spread(&list.iter().map(|i| i.recovered).collect::<Vec<_>>()),
            spread(&list.iter().map(|i| i.first_ok_post).collect::<Vec<_>>()),
            spread(&list.iter().map(|i| i.ready_again).collect::<Vec<_>>()),
            list.iter().map(|i| i.refused).sum::<usize>(),
            list.iter().map(|i| i.reads_failed).sum::<usize>(),
            list.iter().filter(|i| i.truthful).count(),
            list.len(),
            list.iter().filter(|i| !i.exits.is_empty()).count(),
            list.iter().filter(|i| i.restarted_by_hand).count(),
            lost,
            doubled,
        );
    }
    out
}

/// Lost and double-counted over `rounds` ("?" when a check did not run).
fn check_counts(rounds: &[&Round]) -> (String, String) {
    let mut lost = 0;
    let mut doubled = 0;
    let mut unknown = false;
    for round in rounds {
        match (&round.caught_up, &round.verdict) {
            (Ok(_), Ok(v)) => {
                lost += v.lost.len();
                doubled += v.doubled.len() + v.unexpected.len();
            }
            (_, Ok(v)) => {
                // Not caught up: lost ids may only be late.
                lost += v.lost.len();
                doubled += v.doubled.len() + v.unexpected.len();
                unknown = true;
            }
            _ => unknown = true,
        }
    }
    let mark = if unknown { " (check incomplete)" } else { "" };
    (format!("{lost}{mark}"), format!("{doubled}{mark}"))
}

/// One row per round: the load and the check.
pub fn by_round(rounds: &[Round]) -> String {
    let mut out = String::from(
        "| round | faults | POSTs ok / sent | reads ok / sent | events acked / maybe / served | users exact | caught up | lost | double-counted or unexpected | mismatches |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for round in rounds {
        let caught = match &round.caught_up {
            Ok(d) => format!("{} s", seconds(*d)),
            Err(e) => format!("NO: {}", e.chars().take(80).collect::<String>()),
        };
        let (acked, lost, doubled, mismatches, exact) = match &round.verdict {
            Ok(v) => (
                format!(
                    "{} / {} / {}",
                    v.acked_events, v.maybe_events, v.served_events
                ),
                v.lost.len().to_string(),
                (v.doubled.len() + v.unexpected.len()).to_string(),
                (v.mismatches.len() + v.anomalies.len()).to_string(),
                v.exact_users.to_string(),
            ),
            Err(e) => (
                format!("check failed: {}", e.chars().take(80).collect::<String>()),
                "?".into(),
                "?".into(),
                "?".into(),
                "?".into(),
            ),
        };
        let _ = writeln!(
            out,
            "| {} | {} ×{} | {} / {} | {} / {} | {} | {} | {} | {} | {} | {} |",
            round.index,
            round.label(),
            round.faults.len(),
            round.posts_ok,
            round.posts,
            round.reads_ok,
            round.reads,
            acked,
            exact,
            caught,
            lost,
            doubled,
            mismatches
        );
    }
    out
}

/// Everything that went wrong, in words: exits, untruthful readiness,
/// faults never recovered from, and the check's examples.
pub fn problems(rounds: &[Round]) -> Vec<String> {
    let mut out = Vec::new();
    for round in rounds {
        for injection in &round.injections {
            let what = format!("round {} {}", round.index, injection.fault.name());
            if injection.restarted_by_hand {
                out.push(format!(
                    "{what}: not recovered within {:?} (first 200 POST {:?}, event served {:?}, \
                     both ready {:?}); the suite restarted the processes by hand",
                    crate::faults::RECOVERY_DEADLINE,
                    injection.first_ok_post,
                    injection.recovered,
                    injection.ready_again
                ));
            }
            if !injection.truthful {
                out.push(format!(
                    "{what}: /readyz during the fault: {}",
                    injection.readiness
                ));
            }
            for exit in &injection.exits {
                out.push(format!("{what}: {exit}"));
            }
        }
        if let Err(error) = &round.caught_up {
            out.push(format!("round {}: {error}", round.index));
        }
        match &round.verdict {
            Ok(v) if !v.clean() => out.push(format!("round {}: {}", round.index, v.summary())),
            Err(error) => out.push(format!("round {}: check failed: {error}", round.index)),
            _ => {}
        }
    }
    out
}
