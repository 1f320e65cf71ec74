//! Storage for one sign of an exponential histogram: dense counts over the
//! populated index range plus packed exemplar reservoirs.

use rand::Rng;

use super::cells::Cells;
use super::reservoirs::Reservoirs;
use crate::aggregate::exemplar::{Exemplar, ExemplarSlot};

/// Counts for one sign. `counts[j]` is bucket `offset + j`; when non-empty the
/// first and last counts are non-zero, so `counts.len()` is the populated range.
/// Counts are exact but stored as narrow as they allow (see `Cells`).
#[derive(Clone, Debug, Default)]
pub(super) struct Side {
    counts: Cells,
    offset: i32,
    /// One reservoir per bucket (or per group of `2^reduction` buckets, see
    /// `HistogramConfig::exemplar_scale_reduction`) that saw a traced sample,
    /// keyed by `index >> reduction`. Boxed on the first: windows with a link
    /// plan keep their exemplars in the links and never allocate it.
    exemplars: Option<Box<Reservoirs>>,
}

/// No reservoirs, for a side that never allocated them.
static NO_RESERVOIRS: Reservoirs = Reservoirs::EMPTY;

/// A side without samples, for a histogram that never allocated its negative side.
pub(super) static NO_SAMPLES: Side = Side {
    counts: Cells::EMPTY,
    offset: 0,
    exemplars: None,
};

impl Side {
    fn exemplars(&self) -> &Reservoirs {
        self.exemplars.as_deref().unwrap_or(&NO_RESERVOIRS)
    }

    fn exemplars_mut(&mut self) -> &mut Reservoirs {
        self.exemplars.get_or_insert_default()
    }

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

    /// Index of the bucket at which the running count reaches `rank`,
    /// walking from the highest index when `reverse`; else the total count.
    pub(super) fn find_rank(&self, rank: u64, reverse: bool) -> Result<i32, u64> {
        self.counts.find_rank(rank, reverse).map(|j| self.offset + j as i32)
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

    /// Exemplar reservoirs, ascending key (a sorted copy: read at flush, not per sample).
    pub(super) fn slots(&self) -> Vec<ExemplarSlot> {
        self.exemplars().sorted()
    }

    /// The exemplar reservoir covering bucket `index`, if it saw a traced sample.
    pub(super) fn slot(&self, index: i32, reduction: u8) -> Option<ExemplarSlot> {
        self.exemplars().get(index >> reduction)
    }

    /// Asks for the cache line of bucket `index`'s count.
    #[inline]
    pub(super) fn prefetch_count(&self, index: i32) {
        if let Ok(j) = usize::try_from(i64::from(index) - i64::from(self.offset)) {
            self.counts.prefetch(j);
        }
    }

    /// Asks for the index entry of the reservoir covering bucket `index`.
    #[inline]
    pub(super) fn prefetch_reservoir_index(&self, index: i32, reduction: u8) {
        self.exemplars().prefetch_position(index >> reduction);
    }

    /// Asks for the reservoir covering bucket `index`, once its index entry is in cache.
    #[inline]
    pub(super) fn prefetch_reservoir(&self, index: i32, reduction: u8) {
        self.exemplars().prefetch_slot(index >> reduction);
    }

    /// Offers a traced sample to the reservoir covering bucket `index`;
    /// true when that opened a new reservoir.
    #[inline]
    pub(super) fn offer<R: Rng + ?Sized>(&mut self, index: i32, reduction: u8, ex: Exemplar, rng: &mut R) -> bool {
        self.exemplars_mut().offer(index >> reduction, ex, rng)
    }

    /// Number of exemplar reservoirs.
    pub(super) fn reservoirs(&self) -> usize {
        self.exemplars().len()
    }

    /// Re-keys the reservoirs `by` steps coarser (`key >> by`), merging those that meet.
    pub(super) fn coarsen_exemplars<R: Rng + ?Sized>(&mut self, by: u32, rng: &mut R) {
        if let Some(exemplars) = self.exemplars.as_mut().filter(|e| !e.is_empty()) {
            exemplars.rekey(|slot| slot.index >> by, rng);
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
        // `(index >> reduction) >> k == (index >> k) >> reduction`: keys shift alike.
        if let Some(exemplars) = self.exemplars.as_mut().filter(|e| !e.is_empty()) {
            exemplars.rekey(|slot| slot.index >> k, rng);
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
        for slot in other.exemplars().iter() {
            self.exemplars_mut().absorb(&slot, rng);
        }
    }

    /// Adds a reservoir whose key no reservoir of this side has yet (rebuilding from parts).
    pub(super) fn insert_slot(&mut self, slot: &ExemplarSlot) {
        self.exemplars_mut().insert(slot);
    }

    pub(super) fn clear(&mut self) {
        self.counts.clear();
        if let Some(exemplars) = &mut self.exemplars {
            exemplars.clear();
        }
        self.offset = 0;
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.counts.heap_bytes()
            + self
                .exemplars
                .as_ref()
                .map_or(0, |e| size_of::<Reservoirs>() + e.heap_bytes())
    }
}
