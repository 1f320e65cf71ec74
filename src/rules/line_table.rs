//! A table whose slot for a key is known before any load: open addressing
//! over cache-line entries, so ingest asks for a series' route-cache entry
//! and its output's shard entry ahead of use (hashbrown hides those addresses).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// An entry of a [`LineTable`]: it knows its own key.
pub trait Keyed {
    /// The key the entry is found by.
    fn key(&self) -> u64;
}

/// The table grows once more than `MAX_LOAD_NUM / MAX_LOAD_DEN` of its slots
/// are full: 7/8, hashbrown's factor, so a table never takes more slots than
/// the hashbrown table it replaced (memory per series is a target too). Just
/// below it linear probing reads about 4.5 slots for a hit and far more for a
/// miss (an insert), but a table spends most of its life between 7/16 and
/// 7/8 (1M series: 0.48), where a hit reads one or two adjacent slots.
const MAX_LOAD_NUM: usize = 7;
const MAX_LOAD_DEN: usize = 8;
/// Slots of the first allocation.
const MIN_CAPACITY: usize = 16;

/// Fibonacci hashing: the top bits of the key times 2^64/phi. Every key bit
/// moves the slot, so the low bits every key of a shard shares (`key % shards`)
/// do not crowd its keys together.
#[inline]
fn home(key: u64, shift: u32) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
}

/// Open-addressing table of entries found by a 64-bit key: linear probing,
/// an empty slot is `None`, removal shifts the rest of the cluster back (no
/// tombstones), so a lookup stops at the first empty slot. Entries may share
/// a key (the route cache keeps 64-bit collisions apart by fingerprint): the
/// `find` family tells them apart with a predicate.
pub struct LineTable<T> {
    slots: Box<[Option<T>]>,
    len: usize,
    /// `64 - log2(capacity)`; unused while there are no slots.
    shift: u32,
}

impl<T: Keyed> Default for LineTable<T> {
    fn default() -> Self {
        LineTable {
            slots: Box::new([]),
            len: 0,
            shift: 64,
        }
    }
}

impl<T: Keyed> LineTable<T> {
    /// Entries in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Slot of the first entry of `key` that `is` accepts, if any.
    #[inline]
    fn position(&self, key: u64, is: impl Fn(&T) -> bool) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.mask();
        let mut index = home(key, self.shift);
        loop {
            match &self.slots[index] {
                Some(entry) if entry.key() == key && is(entry) => return Some(index),
                Some(_) => index = (index + 1) & mask,
                None => return None,
            }
        }
    }

    /// The first entry of `key` that `is` accepts.
    #[inline]
    pub fn find(&self, key: u64, is: impl Fn(&T) -> bool) -> Option<&T> {
        self.position(key, is).and_then(|index| self.slots[index].as_ref())
    }

    /// The first entry of `key` that `is` accepts, to change (its key must stay).
    #[inline]
    pub fn find_mut(&mut self, key: u64, is: impl Fn(&T) -> bool) -> Option<&mut T> {
        self.position(key, is).and_then(|index| self.slots[index].as_mut())
    }

    /// The entry of `key`, in a table whose keys are unique.
    #[inline]
    pub fn get(&self, key: u64) -> Option<&T> {
        self.find(key, |_| true)
    }

    /// Adds `entry` and returns it in place.
    pub fn insert(&mut self, entry: T) -> &mut T {
        if (self.len + 1) * MAX_LOAD_DEN > self.slots.len() * MAX_LOAD_NUM {
            self.grow();
        }
        let index = self.free_slot(entry.key());
        self.len += 1;
        self.slots[index].insert(entry)
    }

    /// The entry of `key` (in a table whose keys are unique), added by
    /// `make` if the table has none; and whether it was added.
    #[inline]
    pub fn get_or_insert_with(&mut self, key: u64, make: impl FnOnce() -> T) -> (&mut T, bool) {
        match self.position(key, |_| true) {
            Some(index) => (self.slots[index].as_mut().expect("a found slot is full"), false),
            None => (self.insert(make()), true),
        }
    }

    /// The first empty slot from `key`'s home on.
    #[inline]
    fn free_slot(&self, key: u64) -> usize {
        let mask = self.mask();
        let mut index = home(key, self.shift);
        while self.slots[index].is_some() {
            index = (index + 1) & mask;
        }
        index
    }

    fn grow(&mut self) {
        let capacity = (self.slots.len() * 2).max(MIN_CAPACITY);
        let old = std::mem::replace(&mut self.slots, (0..capacity).map(|_| None).collect());
        self.shift = 64 - capacity.trailing_zeros();
        for entry in old.into_vec().into_iter().flatten() {
            let index = self.free_slot(entry.key());
            self.slots[index] = Some(entry);
        }
    }

    /// Removes and returns the first entry of `key` that `is` accepts.
    pub fn remove(&mut self, key: u64, is: impl Fn(&T) -> bool) -> Option<T> {
        let index = self.position(key, is)?;
        Some(self.remove_at(index))
    }

    /// Removes every entry, keeping the slots.
    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|slot| *slot = None);
        self.len = 0;
    }

    /// Asks for the line of `key`'s home slot (the caller holds the table).
    #[inline]
    pub fn prefetch(&self, key: u64) {
        if self.len > 0 {
            crate::prefetch::prefetch(self.slots.as_ptr().wrapping_add(home(key, self.shift)));
        }
    }

    /// Empties slot `hole` and moves later entries of its cluster back into
    /// it, as far as their homes allow, so no lookup meets a gap before its key.
    fn remove_at(&mut self, mut hole: usize) -> T {
        let removed = self.slots[hole].take().expect("removing a full slot");
        self.len -= 1;
        let mask = self.mask();
        let mut next = (hole + 1) & mask;
        while let Some(entry) = &self.slots[next] {
            let home = home(entry.key(), self.shift);
            // The entry may move into the hole unless its home lies after the
            // hole (cyclically, up to the entry itself).
            if (next.wrapping_sub(home) & mask) >= (next.wrapping_sub(hole) & mask) {
                self.slots[hole] = self.slots[next].take();
                hole = next;
            }
            next = (next + 1) & mask;
        }
        removed
    }

    /// Keeps the entries for which `keep` is true, visiting each exactly once.
    pub fn retain(&mut self, mut keep: impl FnMut(&mut T) -> bool) {
        if self.len == 0 {
            return;
        }
        let mask = self.mask();
        // Start just after an empty slot: no cluster then wraps past the
        // start, and a removal only moves entries not yet visited back into
        // the slot just visited (which is visited again).
        let start = self
            .slots
            .iter()
            .position(Option::is_none)
            .expect("the load factor leaves a slot empty");
        let mut visited = 0;
        while visited < self.slots.len() {
            let index = (start + 1 + visited) & mask;
            let kept = self.slots[index].as_mut().is_none_or(&mut keep);
            if kept {
                visited += 1;
            } else {
                drop(self.remove_at(index));
            }
        }
    }

    /// Every entry, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }

    /// Every entry, in slot order, to change (keys must stay).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().flatten()
    }

    /// Where the table's slots are now, for [`ProbeHint::publish`].
    pub fn layout(&self) -> (usize, u32) {
        (self.slots.as_ptr() as usize, self.shift)
    }
}

/// A table's slot address and size, readable without its lock: ingest asks
/// for an output's home slot while it still routes the batch. A stale hint
/// (the table grew since) only makes that prefetch useless, as a prefetch
/// never faults and never changes what a program computes.
#[derive(Debug)]
pub struct ProbeHint {
    base: AtomicUsize,
    shift: AtomicU32,
}

impl Default for ProbeHint {
    /// No table yet: asks for nothing.
    fn default() -> Self {
        ProbeHint {
            base: AtomicUsize::new(0),
            shift: AtomicU32::new(64),
        }
    }
}

impl ProbeHint {
    /// Records `layout` ([`LineTable::layout`]).
    #[inline]
    pub fn publish(&self, (base, shift): (usize, u32)) {
        self.base.store(base, Ordering::Relaxed);
        self.shift.store(shift, Ordering::Relaxed);
    }

    /// Asks for the line of `key`'s home slot in a table of `T`.
    #[inline]
    pub fn prefetch<T>(&self, key: u64) {
        let shift = self.shift.load(Ordering::Relaxed);
        if shift >= 64 {
            return;
        }
        let base = self.base.load(Ordering::Relaxed) as *const Option<T>;
        crate::prefetch::prefetch(base.wrapping_add(home(key, shift)));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[derive(Debug, PartialEq)]
    struct Entry {
        key: u64,
        value: u64,
    }

    impl Keyed for Entry {
        fn key(&self) -> u64 {
            self.key
        }
    }

    fn check(table: &LineTable<Entry>, model: &HashMap<u64, u64>) {
        assert_eq!(table.len(), model.len());
        assert_eq!(table.iter().count(), model.len());
        for entry in table.iter() {
            assert_eq!(model.get(&entry.key), Some(&entry.value), "key {}", entry.key);
        }
        for (&key, &value) in model {
            assert_eq!(table.get(key).map(|entry| entry.value), Some(value), "key {key}");
        }
    }

    /// Random inserts, updates, removals and retains against a `HashMap`, with
    /// keys from a small range (so clusters form and wrap) that share their
    /// low 6 bits, as the keys of one shard do.
    #[test]
    fn random_operations_match_a_hash_map() {
        for seed in 0..20 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut table = LineTable::<Entry>::default();
            let mut model = HashMap::new();
            let range = [50u64, 500, 5_000][seed as usize % 3];
            for step in 0..20_000u64 {
                let key = rng.random_range(0..range) * 64 + 5;
                match rng.random_range(0..10) {
                    0..=4 => match table.find_mut(key, |_| true) {
                        Some(entry) => {
                            entry.value = step;
                            model.insert(key, step);
                        }
                        None => {
                            table.insert(Entry { key, value: step });
                            model.insert(key, step);
                        }
                    },
                    5..=7 => assert_eq!(table.remove(key, |_| true).map(|entry| entry.value), model.remove(&key)),
                    8 => assert_eq!(table.get(key).map(|entry| entry.value), model.get(&key).copied()),
                    _ => {
                        if step % 50 == 0 {
                            let modulus = rng.random_range(2..5u64);
                            let mut seen = Vec::new();
                            table.retain(|entry| {
                                seen.push(entry.key);
                                entry.value += 1;
                                entry.key % modulus != 0
                            });
                            seen.sort_unstable();
                            let mut expected: Vec<u64> = model.keys().copied().collect();
                            expected.sort_unstable();
                            assert_eq!(seen, expected, "retain visits every entry once");
                            model.retain(|key, value| {
                                *value += 1;
                                *key % modulus != 0
                            });
                        }
                    }
                }
            }
            check(&table, &model);
        }
    }

    /// Entries sharing a key stay apart and are found by their predicate,
    /// across growth and the removal of others.
    #[test]
    fn entries_sharing_a_key_are_told_apart() {
        let mut table = LineTable::<Entry>::default();
        for value in 0..40u64 {
            table.insert(Entry { key: value % 4, value });
        }
        for value in 0..40u64 {
            let found = table.find(value % 4, |entry| entry.value == value);
            assert_eq!(found.map(|entry| entry.value), Some(value));
        }
        assert_eq!(
            table.remove(2, |entry| entry.value == 10).map(|entry| entry.value),
            Some(10)
        );
        assert!(table.find(2, |entry| entry.value == 10).is_none());
        assert!((0..40u64)
            .filter(|value| *value != 10)
            .all(|value| table.find(value % 4, |entry| entry.value == value).is_some()));
        table.clear();
        assert_eq!((table.len(), table.iter().count()), (0, 0));
        assert!(table.get(1).is_none());
    }

    #[test]
    fn grows_past_its_load_factor_and_keeps_every_entry() {
        let mut table = LineTable::<Entry>::default();
        assert!(table.get(1).is_none());
        for key in 0..100_000u64 {
            table.insert(Entry {
                key: key << 8,
                value: key,
            });
            assert!(table.len() * MAX_LOAD_DEN <= table.slots.len() * MAX_LOAD_NUM);
        }
        assert_eq!(table.slots.len(), 131_072);
        for key in 0..100_000u64 {
            assert_eq!(table.get(key << 8).map(|entry| entry.value), Some(key));
        }
        table.retain(|entry| entry.value % 2 == 0);
        assert_eq!(table.len(), 50_000);
        assert!((0..100_000u64).all(|key| table.get(key << 8).is_some() == (key % 2 == 0)));
    }

    #[test]
    fn the_hint_points_at_the_home_slot() {
        let mut table = LineTable::<Entry>::default();
        let hint = ProbeHint::default();
        hint.prefetch::<Entry>(3); // no table yet: nothing to ask for
        table.insert(Entry { key: 3, value: 0 });
        hint.publish(table.layout());
        let (base, shift) = table.layout();
        let slot = base + home(3, shift) * std::mem::size_of::<Option<Entry>>();
        assert_eq!(table.slots[home(3, shift)].as_ref().map(|entry| entry.key), Some(3));
        assert_eq!(slot, &table.slots[home(3, shift)] as *const _ as usize);
        hint.prefetch::<Entry>(3);
    }
}
