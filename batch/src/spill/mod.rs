//! An external sort of byte records by key, in bounded memory.
//!
//! Records are held in one arena until it reaches its byte budget; then
//! they are sorted by key and written out as a run. Reading back merges
//! the runs (and what is still held) in key order. Records with equal keys
//! come back in the order they were pushed: a run is sorted stably and the
//! merge prefers the older run, which is what lets the batch keep log order
//! within a user or an event id without storing it in the key.
//!
//! Nothing is written while everything fits: a small log never touches the
//! disk. Run files live in a directory of their own, removed when the
//! sorter or its merge is dropped, whether the run succeeded or not. A
//! process killed mid-run cannot remove its own: the next recompute
//! removes every directory no live process holds ([`remove_abandoned`]).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

mod chains;

use chains::{Chains, SortedChains};

/// Runs merged at once; more are first merged into longer runs, so that
/// open files and read buffers stay bounded whatever the log's size.
const FAN_IN: usize = 32;

/// Room past the budget for the record that crosses it (an event is at
/// most some 75 KiB under the log's rules): the arena never reallocates.
const RECORD_SLACK: usize = 256 << 10;

/// The read and write buffer of one run file.
const RUN_BUFFER: usize = 128 << 10;

/// The name every spill directory starts with.
const SPILL_PREFIX: &str = "signals-batch-spill-";

/// The file whose lock says a live process owns its spill directory.
const OWNER_FILE: &str = "owner.lock";

/// A directory younger than this is left alone even when its owner file
/// is not locked yet: its process may be between creating both.
const ABANDONED_AFTER: Duration = Duration::from_secs(60);

/// A spill directory, held (its owner file locked) while it exists.
struct SpillDir {
    dir: TempDir,
    /// Locked for the process's lifetime of the directory: the kernel
    /// releases the lock when the process dies, however it dies.
    _owner: File,
}

impl SpillDir {
    fn create(spill_in: &Path) -> io::Result<SpillDir> {
        std::fs::create_dir_all(spill_in)?;
        let dir = tempfile::Builder::new()
            .prefix(SPILL_PREFIX)
            .tempdir_in(spill_in)?;
        let owner = File::create(dir.path().join(OWNER_FILE))?;
        owner.try_lock().map_err(io::Error::other)?;
        Ok(SpillDir { dir, _owner: owner })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Removes the spill directories under `spill_in` that no live process
/// holds: those left by a recompute that was killed. Returns how many.
///
/// Other recomputes may share `spill_in` (a temporary directory, the batch
/// shares of one log): a directory whose owner file is locked is theirs.
pub fn remove_abandoned(spill_in: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(spill_in) else {
        return 0; // none made here yet
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry
            .file_name()
            .to_string_lossy()
            .starts_with(SPILL_PREFIX)
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if !ours || !abandoned(&path) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(dir = %path.display(), "removed the spill directory of a recompute that was stopped");
                removed += 1;
            }
            Err(error) => {
                tracing::warn!(dir = %path.display(), %error, "cannot remove an abandoned spill directory")
            }
        }
    }
    removed
}

/// Whether no live process holds the spill directory `dir`.
fn abandoned(dir: &Path) -> bool {
    match File::open(dir.join(OWNER_FILE)) {
        // Only a dead owner's lock can be taken: the kernel released it.
        Ok(owner) => owner.try_lock().is_ok(),
        // Created but not yet owned, or left by a crash in between.
        Err(_) => std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() >= ABANDONED_AFTER),
    }
}

/// Why spilling failed.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error("cannot create a spill directory in {dir}: {source}")]
    CreateDir { dir: PathBuf, source: io::Error },
    #[error("cannot write the spill file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read the spill file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the spill file {path} is cut short or corrupt")]
    Corrupt { path: PathBuf },
}

/// Where a record sits in the arena.
#[derive(Clone, Copy)]
struct Slot {
    /// The key's first 8 bytes, big-endian, zero-padded: most comparisons
    /// end here (id digests always do) without reading the arena.
    prefix: u64,
    start: usize,
    key_len: u32,
    value_len: u32,
}

impl Slot {
    fn prefix(key: &[u8]) -> u64 {
        let mut bytes = [0u8; 8];
        let n = key.len().min(8);
        bytes[..n].copy_from_slice(&key[..n]);
        u64::from_be_bytes(bytes)
    }

    const SIZE: usize = std::mem::size_of::<Slot>();

    fn key<'a>(&self, arena: &'a [u8]) -> &'a [u8] {
        &arena[self.start..self.start + self.key_len as usize]
    }

    fn value<'a>(&self, arena: &'a [u8]) -> &'a [u8] {
        let from = self.start + self.key_len as usize;
        &arena[from..from + self.value_len as usize]
    }
}

/// Records pushed so far: held in memory up to the budget, the rest in
/// sorted runs on disk.
pub struct Sorter {
    budget: usize,
    /// Where the run directory is made, at the first spill.
    spill_in: PathBuf,
    dir: Option<SpillDir>,
    held: Held,
    runs: Vec<PathBuf>,
    records: u64,
}

/// The records held in memory.
enum Held {
    /// Records of any keys in one arena, ordered by sorting an index.
    Slots { arena: Vec<u8>, slots: Vec<Slot> },
    /// Records of few distinct keys (many events per user), each key's
    /// kept together as they come: nothing to sort but the keys.
    Chains(Chains),
}

impl Sorter {
    /// A sorter holding about `budget` bytes in memory (records and their
    /// index) before it spills into a new directory under `spill_in`.
    pub fn new(budget: usize, spill_in: &Path) -> Sorter {
        Sorter::holding(
            budget,
            spill_in,
            Held::Slots {
                // Reserved once, both: grown by doubling, a buffer would be
                // copied (old and new held at once, the new one's pages
                // zeroed by the kernel) a few times on the way to the
                // budget; that was an eighth of a run's CPU for the slots.
                // Only the pages written are ever resident.
                arena: Vec::with_capacity(budget.max(1) + RECORD_SLACK),
                slots: Vec::with_capacity(budget.max(1) / Slot::SIZE + 1),
            },
        )
    }

    /// A sorter for records that share few distinct keys (see
    /// [`chains`]): the same order as [`Sorter::new`], in less memory and
    /// read back in order.
    pub fn grouped(budget: usize, spill_in: &Path) -> Sorter {
        // Slack for the block that crosses the budget, and its record.
        let capacity = budget.max(1) + 2 * RECORD_SLACK;
        Sorter::holding(
            budget,
            spill_in,
            Held::Chains(Chains::with_capacity(capacity)),
        )
    }

    fn holding(budget: usize, spill_in: &Path, held: Held) -> Sorter {
        Sorter {
            budget: budget.max(1),
            spill_in: spill_in.to_path_buf(),
            dir: None,
            held,
            runs: Vec::new(),
            records: 0,
        }
    }

    /// Records pushed so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Runs written so far.
    pub fn spilled_runs(&self) -> usize {
        self.runs.len()
    }

    /// Takes a record; `value` is written by `fill` straight into the
    /// arena (no copy through a buffer of its own).
    pub fn push_with(
        &mut self,
        key: &[u8],
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), SpillError> {
        match &mut self.held {
            Held::Slots { arena, slots } => {
                let start = arena.len();
                arena.extend_from_slice(key);
                fill(arena);
                slots.push(Slot {
                    prefix: Slot::prefix(key),
                    start,
                    key_len: key.len() as u32,
                    value_len: (arena.len() - start - key.len()) as u32,
                });
            }
            Held::Chains(chains) => chains.push_with(key, fill),
        }
        self.records += 1;
        if self.held() >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    /// Bytes held in memory.
    fn held(&self) -> usize {
        match &self.held {
            Held::Slots { arena, slots } => arena.len() + slots.len() * Slot::SIZE,
            Held::Chains(chains) => chains.held(),
        }
    }

    fn holds_nothing(&self) -> bool {
        match &self.held {
            Held::Slots { slots, .. } => slots.is_empty(),
            Held::Chains(chains) => chains.is_empty(),
        }
    }

    /// Orders the slots by key; equal keys keep the order they were
    /// pushed in: the arena offset breaks ties, so an unstable sort (no
    /// scratch memory) does.
    fn sort(arena: &[u8], slots: &mut [Slot]) {
        slots.sort_unstable_by(|a, b| {
            a.prefix
                .cmp(&b.prefix)
                .then_with(|| a.key(arena).cmp(b.key(arena)))
                .then(a.start.cmp(&b.start))
        });
    }

    fn dir(&mut self) -> Result<PathBuf, SpillError> {
        if let Some(dir) = &self.dir {
            return Ok(dir.path().to_path_buf());
        }
        let dir = SpillDir::create(&self.spill_in).map_err(|source| SpillError::CreateDir {
            dir: self.spill_in.clone(),
            source,
        })?;
        let path = dir.path().to_path_buf();
        self.dir = Some(dir);
        Ok(path)
    }

    /// Writes what is held as a sorted run and frees it.
    fn spill(&mut self) -> Result<(), SpillError> {
        if self.holds_nothing() {
            return Ok(());
        }
        let path = self.dir()?.join(format!("run-{}", self.runs.len()));
        let mut run = RunWriter::create(&path)?;
        // Keep the memory for the next run: its pages are already there.
        match &mut self.held {
            Held::Slots { arena, slots } => {
                Sorter::sort(arena, slots);
                for slot in slots.iter() {
                    run.write(slot.key(arena), slot.value(arena))?;
                }
                arena.clear();
                slots.clear();
            }
            Held::Chains(chains) => chains.write_sorted(|key, value| run.write(key, value))?,
        }
        run.finish()?;
        self.runs.push(path);
        Ok(())
    }

    /// Frees the memory held (everything is on disk).
    fn release(&mut self) {
        match &mut self.held {
            Held::Slots { arena, slots } => {
                *arena = Vec::new();
                *slots = Vec::new();
            }
            Held::Chains(chains) => chains.release(),
        }
    }

    /// Every record pushed, in key order (equal keys in push order).
    pub fn finish(mut self) -> Result<Merge, SpillError> {
        if !self.runs.is_empty() {
            // Spilled already: spill the rest too, so that the merge holds
            // only read buffers.
            self.spill()?;
            self.release();
        }
        let mut runs = std::mem::take(&mut self.runs);
        let mut merged = 0;
        while runs.len() > FAN_IN {
            let path = self.dir()?.join(format!("merged-{merged}"));
            merged += 1;
            let mut into = RunWriter::create(&path)?;
            let mut merge = Merge::of_runs(runs.drain(..FAN_IN).collect(), None)?;
            let (mut key, mut value) = (Vec::new(), Vec::new());
            while merge.next_into(&mut key, &mut value)? {
                into.write(&key, &value)?;
            }
            into.finish()?;
            for source in merge.sources {
                if let Source::Run { path, .. } = source {
                    // Only disk space is lost if this fails: the directory
                    // goes as a whole at the end.
                    let _ = std::fs::remove_file(path);
                }
            }
            // The merged run holds the oldest records: it goes first.
            runs.insert(0, path);
        }
        let mut sources = Vec::with_capacity(runs.len() + 1);
        for path in runs {
            sources.push(Source::open(path)?);
        }
        if !self.holds_nothing() {
            let held = std::mem::replace(&mut self.held, Held::Chains(Chains::with_capacity(0)));
            sources.push(match held {
                Held::Slots { arena, mut slots } => {
                    Sorter::sort(&arena, &mut slots);
                    Source::Memory {
                        arena,
                        slots: slots.into_iter(),
                        current: None,
                    }
                }
                Held::Chains(chains) => Source::Chains(chains.into_sorted()),
            });
        }
        Merge::start(sources, self.dir.take())
    }
}

/// Writes one run: per record its key length and value length (LEB128),
/// then the key and the value.
struct RunWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl RunWriter {
    fn create(path: &Path) -> Result<RunWriter, SpillError> {
        let file = File::create(path).map_err(|source| SpillError::Write {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(RunWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(RUN_BUFFER, file),
        })
    }

    fn write(&mut self, key: &[u8], value: &[u8]) -> Result<(), SpillError> {
        let mut head = [0u8; 20];
        let mut n = leb128(&mut head, key.len() as u64, 0);
        n = leb128(&mut head, value.len() as u64, n);
        self.out
            .write_all(&head[..n])
            .and_then(|()| self.out.write_all(key))
            .and_then(|()| self.out.write_all(value))
            .map_err(|source| SpillError::Write {
                path: self.path.clone(),
                source,
            })
    }

    fn finish(mut self) -> Result<(), SpillError> {
        self.out.flush().map_err(|source| SpillError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

fn leb128(out: &mut [u8; 20], mut value: u64, mut at: usize) -> usize {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out[at] = byte;
            return at + 1;
        }
        out[at] = byte | 0x80;
        at += 1;
    }
}

/// One sorted input of a merge.
enum Source {
    Run {
        path: PathBuf,
        input: BufReader<File>,
        current: Option<(Vec<u8>, Vec<u8>)>,
    },
    Memory {
        arena: Vec<u8>,
        slots: std::vec::IntoIter<Slot>,
        current: Option<Slot>,
    },
    Chains(SortedChains),
}

impl Source {
    fn open(path: PathBuf) -> Result<Source, SpillError> {
        let file = File::open(&path).map_err(|source| SpillError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Source::Run {
            path,
            input: BufReader::with_capacity(RUN_BUFFER, file),
            current: None,
        })
    }

    fn key(&self) -> Option<&[u8]> {
        match self {
            Source::Run { current, .. } => current.as_ref().map(|(k, _)| k.as_slice()),
            Source::Memory { arena, current, .. } => current.map(|s| s.key(arena)),
            Source::Chains(chains) => chains.current().map(|(key, _)| key),
        }
    }

    /// Moves to the next record (none at the end).
    fn advance(&mut self) -> Result<(), SpillError> {
        match self {
            Source::Memory { slots, current, .. } => {
                *current = slots.next();
                Ok(())
            }
            Source::Chains(chains) => {
                chains.advance();
                Ok(())
            }
            Source::Run {
                path,
                input,
                current,
            } => {
                let corrupt = || SpillError::Corrupt { path: path.clone() };
                let read = |source| SpillError::Read {
                    path: path.clone(),
                    source,
                };
                let Some(key_len) = read_leb128(input).map_err(read)? else {
                    *current = None;
                    return Ok(());
                };
                let value_len = read_leb128(input).map_err(read)?.ok_or_else(corrupt)?;
                // Reuse the buffers of the record just taken.
                let (mut key, mut value) = current.take().unwrap_or_default();
                key.resize(key_len as usize, 0);
                value.resize(value_len as usize, 0);
                input
                    .read_exact(&mut key)
                    .and_then(|()| input.read_exact(&mut value))
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::UnexpectedEof => corrupt(),
                        _ => read(e),
                    })?;
                *current = Some((key, value));
                Ok(())
            }
        }
    }

    /// Copies the current record into `key` and `value`.
    fn copy_into(&self, key: &mut Vec<u8>, value: &mut Vec<u8>) {
        let (k, v) = match self {
            Source::Run { current, .. } => match current {
                Some((k, v)) => (k.as_slice(), v.as_slice()),
                None => return,
            },
            Source::Memory { arena, current, .. } => match current {
                Some(slot) => (slot.key(arena), slot.value(arena)),
                None => return,
            },
            Source::Chains(chains) => match chains.current() {
                Some(record) => record,
                None => return,
            },
        };
        key.clear();
        key.extend_from_slice(k);
        value.clear();
        value.extend_from_slice(v);
    }
}

/// A LEB128 number, or `None` at a clean end of the input.
fn read_leb128(input: &mut impl Read) -> io::Result<Option<u64>> {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let mut byte = [0u8];
        if input.read(&mut byte)? == 0 {
            return match shift {
                0 => Ok(None),
                _ => Err(io::ErrorKind::UnexpectedEof.into()),
            };
        }
        if shift > 63 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "length overflows",
            ));
        }
        value |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(Some(value));
        }
        shift += 7;
    }
}

/// The records of a sorter in key order; equal keys in push order.
pub struct Merge {
    /// Oldest first: the tie-break between equal keys.
    sources: Vec<Source>,
    /// Kept until the merge is done: dropping it removes the run files.
    _dir: Option<SpillDir>,
}

impl Merge {
    fn of_runs(runs: Vec<PathBuf>, dir: Option<SpillDir>) -> Result<Merge, SpillError> {
        let sources = runs
            .into_iter()
            .map(Source::open)
            .collect::<Result<_, _>>()?;
        Merge::start(sources, dir)
    }

    fn start(mut sources: Vec<Source>, dir: Option<SpillDir>) -> Result<Merge, SpillError> {
        for source in &mut sources {
            source.advance()?;
        }
        Ok(Merge { sources, _dir: dir })
    }

    /// The next record copied into `key` and `value`; `false` at the end.
    pub fn next_into(
        &mut self,
        key: &mut Vec<u8>,
        value: &mut Vec<u8>,
    ) -> Result<bool, SpillError> {
        // Few sources (at most FAN_IN + 1): a scan beats a heap's upkeep.
        let mut least: Option<(usize, &[u8])> = None;
        for (i, source) in self.sources.iter().enumerate() {
            if let Some(k) = source.key() {
                if least.is_none_or(|(_, l)| k < l) {
                    least = Some((i, k));
                }
            }
        }
        let Some((i, _)) = least else {
            return Ok(false);
        };
        self.sources[i].copy_into(key, value);
        self.sources[i].advance()?;
        Ok(true)
    }

    /// The key of the next record, if any, without taking it.
    pub fn peek_key(&self) -> Option<&[u8]> {
        self.sources.iter().filter_map(Source::key).fold(
            None,
            |least: Option<&[u8]>, k| match least {
                Some(l) if l <= k => Some(l),
                _ => Some(k),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sorted(
        records: &[(Vec<u8>, u32)],
        budget: usize,
        grouped: bool,
    ) -> (Vec<(Vec<u8>, u32)>, usize) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sorter = match grouped {
            true => Sorter::grouped(budget, dir.path()),
            false => Sorter::new(budget, dir.path()),
        };
        for (key, value) in records {
            sorter
                .push_with(key, |v| v.extend_from_slice(&value.to_le_bytes()))
                .expect("pushed");
        }
        let runs = sorter.spilled_runs();
        let mut merge = sorter.finish().expect("merges");
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let mut out = Vec::new();
        while merge.next_into(&mut key, &mut value).expect("reads") {
            let value = u32::from_le_bytes(value.as_slice().try_into().expect("4 bytes"));
            out.push((key.clone(), value));
        }
        drop(merge);
        // Every run file is gone with the merge.
        let left = std::fs::read_dir(dir.path()).expect("listed").count();
        assert_eq!(left, 0);
        (out, runs)
    }

    proptest! {
        /// Whatever the budget, records come back sorted by key, equal keys
        /// in push order (a stable sort of what was pushed).
        #[test]
        fn any_budget_gives_a_stable_sort(
            keys in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..10), 0..300),
            budget in 1usize..2_000,
            grouped in any::<bool>(),
        ) {
            let records: Vec<(Vec<u8>, u32)> =
                keys.into_iter().enumerate().map(|(i, k)| (k, i as u32)).collect();
            let mut expected = records.clone();
            expected.sort_by(|a, b| a.0.cmp(&b.0));
            let (got, _) = sorted(&records, budget, grouped);
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_small_budget_spills_beyond_the_fan_in_and_a_large_one_never() {
        let records: Vec<(Vec<u8>, u32)> = (0..500u32)
            .map(|i| ((i * 7919 % 500).to_be_bytes().to_vec(), i))
            .collect();
        for grouped in [false, true] {
            let (out, runs) = sorted(&records, 64, grouped);
            assert!(runs > FAN_IN, "{runs}");
            assert_eq!(out.len(), 500);
            assert!(out.windows(2).all(|w| w[0].0 <= w[1].0));
            let (_, runs) = sorted(&records, 1 << 20, grouped);
            assert_eq!(runs, 0);
        }
    }

    /// What a killed recompute left is removed; what a live one holds, a
    /// directory too young to be owned yet, and other files are not.
    #[test]
    fn only_abandoned_spill_directories_are_removed() {
        let spill_in = tempfile::tempdir().expect("temp dir");
        let mut live = Sorter::new(16, spill_in.path());
        for i in 0..10u32 {
            live.push_with(&i.to_be_bytes(), |v| v.push(1))
                .expect("pushed");
        }
        assert!(live.spilled_runs() > 0);
        // A killed process's directory: its owner file is there, unlocked.
        let killed = spill_in.path().join(format!("{SPILL_PREFIX}killed"));
        std::fs::create_dir(&killed).expect("made");
        File::create(killed.join(OWNER_FILE)).expect("made");
        std::fs::write(killed.join("run-0"), b"left over").expect("written");
        // Made but not owned yet: young, so maybe still being set up.
        let young = spill_in.path().join(format!("{SPILL_PREFIX}young"));
        std::fs::create_dir(&young).expect("made");
        // The same, left by a crash long ago.
        let old = spill_in.path().join(format!("{SPILL_PREFIX}old"));
        std::fs::create_dir(&old).expect("made");
        let long_ago = std::time::SystemTime::now() - 2 * ABANDONED_AFTER;
        File::open(&old)
            .and_then(|d| d.set_modified(long_ago))
            .expect("aged");
        let other = spill_in.path().join("not-a-spill");
        std::fs::create_dir(&other).expect("made");

        assert_eq!(remove_abandoned(spill_in.path()), 2);
        assert!(!killed.exists() && !old.exists());
        assert!(young.exists() && other.exists());
        // The live sorter's runs are intact: it still merges them.
        let mut merge = live.finish().expect("merges");
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let mut count = 0;
        while merge.next_into(&mut key, &mut value).expect("reads") {
            count += 1;
        }
        assert_eq!(count, 10);
        assert_eq!(remove_abandoned(&spill_in.path().join("absent")), 0);
    }

    #[test]
    fn a_sorter_dropped_midway_leaves_no_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sorter = Sorter::grouped(16, dir.path());
        for i in 0..100u32 {
            sorter
                .push_with(&i.to_be_bytes(), |v| v.push(1))
                .expect("pushed");
        }
        assert!(sorter.spilled_runs() > 0);
        // A run that fails (its error returned through `?`) drops its sorter.
        drop(sorter);
        assert_eq!(std::fs::read_dir(dir.path()).expect("listed").count(), 0);
    }

    #[test]
    fn a_cut_run_is_reported_not_read_short() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("run");
        let mut run = RunWriter::create(&path).expect("created");
        run.write(b"key", b"value").expect("written");
        run.finish().expect("flushed");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 1]).expect("cut");
        let error = Merge::of_runs(vec![path], None).err().expect("corrupt");
        assert!(matches!(error, SpillError::Corrupt { .. }), "{error}");
    }
}
