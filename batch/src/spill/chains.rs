//! The records of a sorter of few distinct keys (a user's events), held
//! as one chain of blocks per key.
//!
//! Records arrive in log order, users interleaved. Held as slots into one
//! arena, a run's records were gathered back in key order by a random
//! read each, the key was stored again with every record, and the index
//! (32 bytes a record) was sorted through a copy of itself: memory is what
//! a batch run spends its CPU on (pages zeroed on first touch, cache
//! misses). A chain keeps a key's records back to back, each behind its
//! length, in blocks that double in size up to [`LARGEST_BLOCK`]: a run
//! reads them in order, with one or two bytes of overhead a record and a
//! block's unused tail (at most half a chain's bytes; at most
//! [`LARGEST_BLOCK`] for a long chain).

use std::collections::HashMap;
use std::ops::Range;

/// A block's header: where the next block of its chain starts and where
/// its records end, both written when the chain moves on to a new block.
const HEADER: usize = 16;

/// The first block of a chain: a key with one record wastes little.
const FIRST_BLOCK: usize = 128;

/// Blocks double up to this size: the unused tail of a chain's last
/// block stays small beside a heavy key's records.
const LARGEST_BLOCK: usize = 64 << 10;

/// What a key's table entry costs beyond its bytes: the entry, the key's
/// allocation header and its chain, roughly.
const KEY_ENTRY_BYTES: usize = 48 + std::mem::size_of::<Chain>();

/// Records by key, each key's in push order.
pub struct Chains {
    ids: HashMap<Box<[u8]>, u32, foldhash::fast::RandomState>,
    chains: Vec<Chain>,
    arena: Vec<u8>,
    /// Bytes of the key table.
    table_bytes: usize,
    /// Where a record's value is written before its length is known.
    scratch: Vec<u8>,
}

/// One key's blocks: the first, the last, and the room left in the last.
#[derive(Clone, Copy)]
struct Chain {
    first: usize,
    last: usize,
    /// Where the next record goes.
    at: usize,
    /// Where the last block ends.
    end: usize,
}

impl Chains {
    /// Chains in an arena of `capacity` bytes, reserved once: only the
    /// pages written ever become resident.
    pub fn with_capacity(capacity: usize) -> Chains {
        Chains {
            ids: HashMap::default(),
            chains: Vec::new(),
            arena: Vec::with_capacity(capacity),
            table_bytes: 0,
            scratch: Vec::new(),
        }
    }

    /// Appends a record to `key`'s chain; `fill` writes its value.
    pub fn push_with(&mut self, key: &[u8], fill: impl FnOnce(&mut Vec<u8>)) {
        self.scratch.clear();
        fill(&mut self.scratch);
        let id = match self.ids.get(key) {
            Some(&id) => id as usize,
            None => {
                let id = self.chains.len();
                self.ids.insert(key.into(), id as u32);
                self.table_bytes += key.len() + KEY_ENTRY_BYTES;
                self.chains.push(Chain {
                    first: 0,
                    last: 0,
                    at: 0,
                    end: 0,
                });
                id
            }
        };
        let mut head = [0u8; 20];
        let head_len = super::leb128(&mut head, self.scratch.len() as u64, 0);
        let need = head_len + self.scratch.len();
        if self.chains[id].end - self.chains[id].at < need {
            self.add_block(id, need);
        }
        let chain = &mut self.chains[id];
        let at = chain.at;
        self.arena[at..at + head_len].copy_from_slice(&head[..head_len]);
        self.arena[at + head_len..at + need].copy_from_slice(&self.scratch);
        chain.at += need;
    }

    /// Gives chain `id` a new last block with room for `need` bytes.
    fn add_block(&mut self, id: usize, need: usize) {
        let chain = self.chains[id];
        let size = match chain.end {
            0 => FIRST_BLOCK,
            end => ((end - chain.last) * 2).min(LARGEST_BLOCK),
        }
        .max(HEADER + need);
        let start = self.arena.len();
        self.arena.resize(start + size, 0);
        if chain.end == 0 {
            self.chains[id].first = start;
        } else {
            let header = &mut self.arena[chain.last..chain.last + HEADER];
            header[..8].copy_from_slice(&(start as u64).to_le_bytes());
            header[8..].copy_from_slice(&(chain.at as u64).to_le_bytes());
        }
        self.chains[id] = Chain {
            first: self.chains[id].first,
            last: start,
            at: start + HEADER,
            end: start + size,
        };
    }

    /// Bytes held: blocks and key table.
    pub fn held(&self) -> usize {
        self.arena.len() + self.table_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    /// Forgets every record, keeping the arena's memory (its pages are
    /// resident already).
    pub fn clear(&mut self) {
        self.ids.clear();
        self.chains.clear();
        self.arena.clear();
        self.table_bytes = 0;
    }

    /// Frees the memory too.
    pub fn release(&mut self) {
        *self = Chains::with_capacity(0);
    }

    /// The records in key order, each key's in push order; the holder is
    /// left empty, its memory kept.
    pub fn write_sorted<E>(
        &mut self,
        mut write: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for (key, id) in self.sorted_keys() {
            let mut at = Position::of(&self.chains[id as usize], &self.arena);
            while let Some(value) = at.next(&self.arena) {
                write(&key, &self.arena[value])?;
            }
        }
        self.clear();
        Ok(())
    }

    /// A cursor over the records in key order, each key's in push order,
    /// before the first ([`SortedChains::advance`] moves to it).
    pub fn into_sorted(mut self) -> SortedChains {
        let keys = self.sorted_keys();
        SortedChains {
            chains: self,
            keys,
            rank: 0,
            at: None,
            current: None,
        }
    }

    fn sorted_keys(&mut self) -> Vec<(Box<[u8]>, u32)> {
        let mut keys: Vec<(Box<[u8]>, u32)> = self.ids.drain().collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        keys
    }
}

/// Where a read of one chain stands.
struct Position {
    block: usize,
    at: usize,
    /// Where the records of this block end.
    end: usize,
    last: usize,
    last_end: usize,
}

impl Position {
    fn of(chain: &Chain, arena: &[u8]) -> Position {
        let mut position = Position {
            block: chain.first,
            at: chain.first + HEADER,
            end: 0,
            last: chain.last,
            last_end: chain.at,
        };
        position.end = position.records_end(arena);
        position
    }

    fn records_end(&self, arena: &[u8]) -> usize {
        match self.block == self.last {
            true => self.last_end,
            false => word(arena, self.block + 8),
        }
    }

    /// Where the next record's value lies in the arena.
    fn next(&mut self, arena: &[u8]) -> Option<Range<usize>> {
        while self.at >= self.end {
            if self.block == self.last {
                return None;
            }
            self.block = word(arena, self.block);
            self.at = self.block + HEADER;
            self.end = self.records_end(arena);
        }
        let (len, head_len) = read_leb128(&arena[self.at..]);
        let start = self.at + head_len;
        self.at = start + len;
        Some(start..start + len)
    }
}

/// The records of [`Chains`], in key order: a merge's in-memory source.
pub struct SortedChains {
    chains: Chains,
    keys: Vec<(Box<[u8]>, u32)>,
    /// The current key's place in `keys`.
    rank: usize,
    at: Option<Position>,
    current: Option<Range<usize>>,
}

impl SortedChains {
    /// The current record's key and value; `None` past the last.
    pub fn current(&self) -> Option<(&[u8], &[u8])> {
        let value = self.current.clone()?;
        Some((&self.keys[self.rank].0, &self.chains.arena[value]))
    }

    pub fn advance(&mut self) {
        loop {
            let Some((_, id)) = self.keys.get(self.rank) else {
                self.current = None;
                return;
            };
            let at = self.at.get_or_insert_with(|| {
                Position::of(&self.chains.chains[*id as usize], &self.chains.arena)
            });
            if let Some(value) = at.next(&self.chains.arena) {
                self.current = Some(value);
                return;
            }
            self.at = None;
            self.rank += 1;
        }
    }
}

fn word(arena: &[u8], at: usize) -> usize {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&arena[at..at + 8]);
    u64::from_le_bytes(bytes) as usize
}

/// A length this module wrote, and the bytes it took.
fn read_leb128(bytes: &[u8]) -> (usize, usize) {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    (value, bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(mut sorted: SortedChains) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        sorted.advance();
        while let Some((key, value)) = sorted.current() {
            out.push((key.to_vec(), value.to_vec()));
            sorted.advance();
        }
        out
    }

    proptest! {
        /// Read back or written out, the records come in key order, each
        /// key's in push order, across blocks of every size.
        #[test]
        fn records_come_back_by_key_in_push_order(
            records in proptest::collection::vec(
                (0u8..4, prop_oneof![9 => 0usize..300, 1 => 60_000usize..70_000]),
                0..400,
            ),
        ) {
            let records: Vec<(Vec<u8>, Vec<u8>)> = records
                .into_iter()
                .enumerate()
                .map(|(i, (key, len))| {
                    (vec![b'k'; key as usize], (0..len).map(|j| (i + j) as u8).collect())
                })
                .collect();
            let mut expected = records.clone();
            expected.sort_by(|a, b| a.0.cmp(&b.0));

            let mut chains = Chains::with_capacity(0);
            for (key, value) in &records {
                chains.push_with(key, |out| out.extend_from_slice(value));
            }
            let mut written = Vec::new();
            chains
                .write_sorted(|key, value| {
                    written.push((key.to_vec(), value.to_vec()));
                    Ok::<_, ()>(())
                })
                .expect("written");
            prop_assert_eq!(&written, &expected);
            prop_assert!(chains.is_empty() && chains.held() == 0);

            // Emptied, the same holder takes the records again.
            for (key, value) in &records {
                chains.push_with(key, |out| out.extend_from_slice(value));
            }
            prop_assert_eq!(read_all(chains.into_sorted()), expected);
        }
    }

    #[test]
    fn a_heavy_key_wastes_at_most_its_last_block() {
        let mut chains = Chains::with_capacity(0);
        for i in 0..100_000u32 {
            chains.push_with(b"heavy", |out| out.extend_from_slice(&i.to_le_bytes()));
        }
        // 5 bytes a record (its length, then 4).
        let records = 100_000 * 5;
        assert!(chains.arena.len() <= records + LARGEST_BLOCK + records / 100);
    }
}
