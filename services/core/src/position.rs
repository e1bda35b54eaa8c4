//! Positions in the event log, which is split into partitions like Kafka's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type Partition = u32;
pub type Offset = u64;

/// The next offset to read in every partition: everything before it is
/// covered. A partition that is absent is at offset 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LogPosition(BTreeMap<Partition, Offset>);

impl LogPosition {
    pub fn new() -> LogPosition {
        LogPosition::default()
    }

    /// The next offset to read in `partition`.
    pub fn next(&self, partition: Partition) -> Offset {
        self.0.get(&partition).copied().unwrap_or(0)
    }

    /// Whether the record at `offset` of `partition` is before this position.
    pub fn covers(&self, partition: Partition, offset: Offset) -> bool {
        offset < self.next(partition)
    }

    /// Moves `partition` forward to cover everything before `next`; never back.
    pub fn advance(&mut self, partition: Partition, next: Offset) {
        let entry = self.0.entry(partition).or_insert(0);
        *entry = (*entry).max(next);
    }

    /// Sets `partition` to `next`, forward or back (rewinding a reader).
    pub fn set(&mut self, partition: Partition, next: Offset) {
        self.0.insert(partition, next);
    }

    /// Records between this position and `end`, summed over partitions.
    pub fn lag_behind(&self, end: &LogPosition) -> u64 {
        end.0
            .iter()
            .map(|(p, e)| e.saturating_sub(self.next(*p)))
            .sum()
    }

    /// Whether every partition is at or past `other`.
    pub fn reaches(&self, other: &LogPosition) -> bool {
        other.0.iter().all(|(p, o)| self.next(*p) >= *o)
    }

    pub fn iter(&self) -> impl Iterator<Item = (Partition, Offset)> + '_ {
        self.0.iter().map(|(p, o)| (*p, *o))
    }

    /// Records in total before this position.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl FromIterator<(Partition, Offset)> for LogPosition {
    fn from_iter<I: IntoIterator<Item = (Partition, Offset)>>(iter: I) -> Self {
        LogPosition(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_never_moves_back_and_lag_counts_records() {
        let mut p = LogPosition::new();
        p.advance(0, 10);
        p.advance(0, 5);
        p.advance(1, 3);
        assert_eq!(p.next(0), 10);
        assert!(p.covers(0, 9) && !p.covers(0, 10) && !p.covers(2, 0));
        let end: LogPosition = [(0, 12), (1, 3), (2, 4)].into_iter().collect();
        assert_eq!(p.lag_behind(&end), 6);
        assert!(!p.reaches(&end));
        assert!(end.reaches(&p));
        assert_eq!(
            serde_json::to_string(&p).expect("serialises"),
            r#"{"0":10,"1":3}"#
        );
    }
}
