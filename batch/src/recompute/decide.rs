//! Deciding every occurrence of an event id, one id at a time: its
//! occurrences in log order and its retractions are all that decide it.

use signals_core::DedupWindow;
use signals_schemas::Millis;

use super::RecomputeError;
use crate::spill::Merge;

/// What a record about an id is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An occurrence of an event this run recomputes.
    Added = 0,
    /// An occurrence of an event another worker recomputes: it only makes
    /// later copies duplicates (and is no duplicate of this run's).
    Seen = 1,
    /// A retraction of the id.
    Retraction = 2,
}

/// One record about an id, as spilled: kind, number in log order (none
/// for a retraction), acceptance time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occurrence {
    pub kind: Kind,
    pub number: u64,
    pub accepted_at: Millis,
}

impl Occurrence {
    const BYTES: usize = 17;

    pub fn retraction(accepted_at: Millis) -> Occurrence {
        Occurrence {
            kind: Kind::Retraction,
            number: 0,
            accepted_at,
        }
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.extend_from_slice(&self.number.to_le_bytes());
        out.extend_from_slice(&self.accepted_at.to_le_bytes());
    }

    fn read(bytes: &[u8]) -> Result<Occurrence, RecomputeError> {
        let malformed = RecomputeError::Malformed("an id record is not 17 bytes of a known kind");
        let bytes: &[u8; Self::BYTES] = bytes.try_into().map_err(|_| malformed)?;
        let kind = match bytes[0] {
            0 => Kind::Added,
            1 => Kind::Seen,
            2 => Kind::Retraction,
            _ => {
                return Err(RecomputeError::Malformed(
                    "an id record is not 17 bytes of a known kind",
                ))
            }
        };
        let mut number = [0u8; 8];
        number.copy_from_slice(&bytes[1..9]);
        let mut accepted_at = [0u8; 8];
        accepted_at.copy_from_slice(&bytes[9..17]);
        Ok(Occurrence {
            kind,
            number: u64::from_le_bytes(number),
            accepted_at: Millis::from_le_bytes(accepted_at),
        })
    }
}

/// What became of an occurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A copy of an earlier occurrence within the window: never counts.
    Copy = 0,
    Counted = 1,
    /// Counted, then withdrawn by a retraction.
    Withdrawn = 2,
}

/// The verdict of every occurrence by number, two bits each (12.5 MB for
/// 50M events): the only table of the run that grows with the log.
pub struct Verdicts {
    bits: Vec<u8>,
}

impl Verdicts {
    /// Every one of `occurrences` a copy until decided otherwise.
    pub fn new(occurrences: u64) -> Verdicts {
        Verdicts {
            bits: vec![0; occurrences.div_ceil(4) as usize],
        }
    }

    fn set(&mut self, number: u64, verdict: Verdict) -> Result<(), RecomputeError> {
        let byte = self
            .bits
            .get_mut((number / 4) as usize)
            .ok_or(RecomputeError::Malformed(
                "an occurrence number past the log",
            ))?;
        let shift = (number % 4) * 2;
        *byte = (*byte & !(3 << shift)) | ((verdict as u8) << shift);
        Ok(())
    }

    /// The verdict of occurrence `number`.
    pub fn get(&self, number: u64) -> Result<Verdict, RecomputeError> {
        let byte = self
            .bits
            .get((number / 4) as usize)
            .ok_or(RecomputeError::Malformed(
                "an occurrence number past the log",
            ))?;
        Ok(match (byte >> ((number % 4) * 2)) & 3 {
            1 => Verdict::Counted,
            2 => Verdict::Withdrawn,
            _ => Verdict::Copy,
        })
    }
}

/// Decides one id from its records (occurrences in log order, retractions
/// anywhere among them); the number of this run's occurrences that are
/// copies.
///
/// The rules of a pass over the log in order: an occurrence within the
/// window of the id's counted one is a copy, a later one becomes the
/// counted one; a counted occurrence is withdrawn if the newest retraction
/// of the id reaches it.
pub fn decide_id(
    records: &[Occurrence],
    window: DedupWindow,
    verdicts: &mut Verdicts,
) -> Result<u64, RecomputeError> {
    let newest_retraction = records
        .iter()
        .filter(|r| r.kind == Kind::Retraction)
        .map(|r| r.accepted_at)
        .max();
    let mut counted: Option<Millis> = None;
    let mut copies = 0;
    for occurrence in records.iter().filter(|r| r.kind != Kind::Retraction) {
        if counted.is_some_and(|first| window.is_copy(first, occurrence.accepted_at)) {
            copies += u64::from(occurrence.kind == Kind::Added);
            continue;
        }
        counted = Some(occurrence.accepted_at);
        let withdrawn =
            newest_retraction.is_some_and(|at| window.withdraws(at, occurrence.accepted_at));
        let verdict = if withdrawn {
            Verdict::Withdrawn
        } else {
            Verdict::Counted
        };
        verdicts.set(occurrence.number, verdict)?;
    }
    Ok(copies)
}

/// Decides every id of `ids` (records in digest order, each id's in log
/// order); the number of copies among this run's occurrences.
pub fn all(
    mut ids: Merge,
    window: DedupWindow,
    verdicts: &mut Verdicts,
) -> Result<u64, RecomputeError> {
    let (mut key, mut value) = (Vec::new(), Vec::new());
    let mut id: Vec<u8> = Vec::new();
    let mut records: Vec<Occurrence> = Vec::new();
    let mut copies = 0;
    while ids.next_into(&mut key, &mut value)? {
        if key != id {
            copies += decide_id(&records, window, verdicts)?;
            records.clear();
            std::mem::swap(&mut id, &mut key);
        }
        records.push(Occurrence::read(&value)?);
    }
    copies += decide_id(&records, window, verdicts)?;
    Ok(copies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occurrence(number: u64, accepted_at: Millis) -> Occurrence {
        Occurrence {
            kind: Kind::Added,
            number,
            accepted_at,
        }
    }

    #[test]
    fn copies_reuse_and_retractions_are_decided_as_in_log_order() {
        let window = DedupWindow::new(10);
        let mut verdicts = Verdicts::new(8);
        let records = [
            occurrence(0, 100),
            // A copy, even accepted earlier (clocks of partitions differ).
            occurrence(1, 95),
            Occurrence {
                kind: Kind::Seen,
                ..occurrence(2, 110)
            },
            // Re-used past the window: counted again...
            occurrence(3, 111),
            // ...and withdrawn, like the first, by a retraction at 102.
            Occurrence::retraction(102),
            occurrence(5, 130),
        ];
        let copies = decide_id(&records, window, &mut verdicts).expect("decided");
        // The seen copy is another worker's duplicate, not this run's.
        assert_eq!(copies, 1);
        let got: Vec<Verdict> = [0, 1, 2, 3, 5]
            .map(|n| verdicts.get(n).expect("in range"))
            .to_vec();
        use Verdict::*;
        assert_eq!(got, vec![Withdrawn, Copy, Copy, Withdrawn, Counted]);
        // The newest retraction decides, wherever it sits among the records.
        let later = [
            occurrence(6, 100),
            occurrence(7, 200),
            Occurrence::retraction(150),
        ];
        decide_id(&later, window, &mut verdicts).expect("decided");
        let later = (verdicts.get(6).expect("in"), verdicts.get(7).expect("in"));
        assert_eq!(later, (Withdrawn, Counted));
        assert!(verdicts.get(8).is_err());
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let record = Occurrence {
            kind: Kind::Seen,
            number: u64::MAX - 3,
            accepted_at: -42,
        };
        let mut bytes = Vec::new();
        record.write(&mut bytes);
        assert_eq!(Occurrence::read(&bytes).expect("reads"), record);
        bytes[0] = 9;
        assert!(Occurrence::read(&bytes).is_err());
        assert!(Occurrence::read(&bytes[..16]).is_err());
    }
}
