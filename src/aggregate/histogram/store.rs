//! Storage for one sign of an exponential histogram: dense counts over the
//! populated index range plus sparse exemplar reservoirs.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rand::Rng;

use super::cells::Cells;
use crate::aggregate::exemplar::{Exemplar, ExemplarSlot};

/// Bucket indices are small integers: one multiply spreads them well enough.
#[derive(Default)]
pub(super) struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_i32(&mut self, index: i32) {
        self.0 = (index as u32 as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Positions = HashMap<i32, u32, BuildHasherDefault<IndexHasher>>;

/// Counts for one sign. `counts[j]` is bucket `offset + j`; when non-empty the
/// first and last counts are non-zero, so `counts.len()` is the populated range.
/// Counts are exact but stored as narrow as they allow (see `Cells`).
#[derive(Clone, Debug, Default)]
pub(super) struct Side {
    counts: Cells,
    offset: i32,
    /// One slot per bucket that saw a traced sample, in arrival order: a
    /// sorted Vec made every new bucket an O(n) insert on the hot path.
    exemplars: Vec<ExemplarSlot>,
    /// Bucket index -> position in `exemplars`.
    positions: Positions,
}

impl Side {
    pub(super) fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Last populated index (meaningless when empty).
    fn end(&self) -> i32 {
        self.offset + self.counts.len() as i32 - 1
    }

    /// Index range `(lo, hi)` the side would span after adding `index`.
    pub(super) fn span_with(&self, index: i32) -> (i32, i32) {
        if self.is_empty() {
            (index, index)
        } else {
            (self.offset.min(index), self.end().max(index))
        }
    }

    /// Populated index range, if any.
    pub(super) fn span(&self) -> Option<(i32, i32)> {
        (!self.is_empty()).then(|| (self.offset, self.end()))
    }

    /// Adds `n` to bucket `index`, growing the dense range if needed.
    pub(super) fn add(&mut self, index: i32, n: u64) {
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.extend_to(1);
        } else if index < self.offset {
            self.counts.prepend_zeros((self.offset - index) as usize);
            self.offset = index;
        } else if index > self.end() {
            self.counts.extend_to((index - self.offset) as usize + 1);
        }
        self.counts.add((index - self.offset) as usize, n);
    }

    /// Count of bucket `index` (0 outside the populated range).
    pub(super) fn count_at(&self, index: i32) -> u64 {
        let j = i64::from(index) - i64::from(self.offset);
        usize::try_from(j).map_or(0, |j| self.counts.get(j))
    }

    /// Sum of all counts.
    pub(super) fn total(&self) -> u64 {
        self.counts.sum(0, usize::MAX)
    }

    /// Sum of counts of buckets with index `> index`.
    pub(super) fn total_above(&self, index: i32) -> u64 {
        let from = (i64::from(index) + 1 - i64::from(self.offset)).max(0) as usize;
        self.counts.sum(from, usize::MAX)
    }

    /// Sum of counts of buckets with index `< index`.
    pub(super) fn total_below(&self, index: i32) -> u64 {
        let to = (i64::from(index) - i64::from(self.offset)).clamp(0, self.counts.len() as i64);
        self.counts.sum(0, to as usize)
    }

    /// Non-zero buckets as `(index, count)`, ascending index.
    pub(super) fn buckets(&self) -> impl DoubleEndedIterator<Item = (i32, u64)> + '_ {
        let offset = self.offset;
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| *c > 0)
            .map(move |(j, c)| (offset + j as i32, c))
    }

    /// Exemplar slots, ascending index (a sorted copy: read at flush, not per sample).
    pub(super) fn slots(&self) -> Vec<ExemplarSlot> {
        let mut slots = self.exemplars.clone();
        slots.sort_unstable_by_key(|slot| slot.index);
        slots
    }

    /// The exemplar slot of bucket `index`, if it saw a traced sample.
    pub(super) fn slot(&self, index: i32) -> Option<&ExemplarSlot> {
        self.positions.get(&index).map(|p| &self.exemplars[*p as usize])
    }

    /// Offers a traced sample to bucket `index`'s reservoir.
    pub(super) fn offer<R: Rng + ?Sized>(&mut self, index: i32, ex: Exemplar, rng: &mut R) {
        match self.positions.get(&index) {
            Some(p) => self.exemplars[*p as usize].offer(ex, rng),
            None => self.push_slot(ExemplarSlot::new(index, ex)),
        }
    }

    fn push_slot(&mut self, slot: ExemplarSlot) {
        self.positions.insert(slot.index, self.exemplars.len() as u32);
        self.exemplars.push(slot);
    }

    /// Folds `slot` into the reservoir of its bucket (creating it if needed).
    fn absorb_slot<R: Rng + ?Sized>(&mut self, slot: &ExemplarSlot, rng: &mut R) {
        match self.positions.get(&slot.index) {
            Some(p) => self.exemplars[*p as usize].absorb(slot, rng),
            None => self.push_slot(*slot),
        }
    }

    /// Merges `2^k` adjacent buckets into one (`index >> k`), in place.
    pub(super) fn downscale<R: Rng + ?Sized>(&mut self, k: u32, rng: &mut R) {
        if k == 0 {
            return;
        }
        if !self.counts.is_empty() {
            let new_offset = self.offset >> k;
            let new_len = ((self.end() >> k) - new_offset) as usize + 1;
            // Targets never lie after their source, so one forward pass works.
            for j in 0..self.counts.len() {
                let c = self.counts.get(j);
                self.counts.set(j, 0);
                let t = (((self.offset + j as i32) >> k) - new_offset) as usize;
                self.counts.add(t, c);
            }
            self.counts.truncate(new_len);
            self.offset = new_offset;
        }
        let old = std::mem::take(&mut self.exemplars);
        self.positions.clear();
        for mut slot in old {
            slot.index >>= k;
            self.absorb_slot(&slot, rng);
        }
    }

    /// Adds every bucket and reservoir of `other` (same scale) into `self`.
    pub(super) fn merge_from<R: Rng + ?Sized>(&mut self, other: &Side, rng: &mut R) {
        if let Some((lo, hi)) = other.span() {
            // Grow once to the union so the per-bucket adds below never move data.
            let (lo, _) = self.span_with(lo);
            let (_, hi) = self.span_with(hi);
            self.add(lo, 0);
            self.add(hi, 0);
            let base = (other.offset - self.offset) as usize;
            self.counts.add_all(base, &other.counts);
        }
        for slot in &other.exemplars {
            self.absorb_slot(slot, rng);
        }
    }

    pub(super) fn clear(&mut self) {
        self.counts.clear();
        self.exemplars.clear();
        self.positions.clear();
        self.offset = 0;
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.counts.heap_bytes()
            + self.exemplars.capacity() * size_of::<ExemplarSlot>()
            + self.positions.capacity() * (size_of::<(i32, u32)>() + 1)
    }
}
