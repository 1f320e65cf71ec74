//! Exemplar reservoirs on the buckets around each linked quantile's running
//! position: one per traced bucket while a window has few, then only on the
//! buckets within a band of ranks around each quantile, re-centred as it moves.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::super::store::Side;
use super::super::BucketRef;
use crate::aggregate::exemplar::{absorb_takes, offer_keeps, Exemplar};

/// Reservoirs a window keeps on any traced bucket before bands choose: a
/// small window links every quantile exactly from these alone.
pub const OPEN_SLOTS: usize = 24;

/// Half-width of a quantile's band in standard deviations of its rank's
/// drift: the bucket that ends up holding rank `ceil(q*n)` held, at any
/// earlier count `m`, a rank within about `sqrt(m*q*(1-q))` of `q*m`.
pub const BAND_SIGMAS: f64 = 1.5;

/// Order keys place negative buckets (most negative first), the zero
/// bucket (0) and positive buckets on one axis: positive `i` is `SIDE + i`,
/// negative `i` is `-SIDE - i`. Bucket indices stay within ±2^20.
const SIDE: i32 = 1 << 29;

/// The order key of `bucket`.
pub fn pos_of(bucket: BucketRef) -> i32 {
    match bucket {
        BucketRef::Zero => 0,
        BucketRef::Positive(i) => SIDE + i,
        BucketRef::Negative(i) => -SIDE - i,
    }
}

/// The bucket of order key `pos`.
pub fn bucket_of(pos: i32) -> BucketRef {
    match pos {
        0 => BucketRef::Zero,
        p if p > 0 => BucketRef::Positive(p - SIDE),
        p => BucketRef::Negative(-SIDE - p),
    }
}

/// `pos` with its bucket index shifted right by `k` (a downscale).
fn shifted(pos: i32, k: u32) -> i32 {
    match bucket_of(pos) {
        BucketRef::Zero => 0,
        BucketRef::Positive(i) => pos_of(BucketRef::Positive(i >> k)),
        BucketRef::Negative(i) => pos_of(BucketRef::Negative(i >> k)),
    }
}

/// The nearest-rank position of quantile `q` among `n` samples.
#[inline]
pub fn rank_of(q: f64, n: u64) -> u64 {
    ((q * n as f64).ceil() as u64).clamp(1, n.max(1))
}

/// A histogram's buckets in ascending value order, for walking ranks.
pub(in crate::aggregate::histogram) struct Order<'a> {
    /// Positive buckets.
    pub(in crate::aggregate::histogram) positive: &'a Side,
    /// Negative buckets (by magnitude).
    pub(in crate::aggregate::histogram) negative: &'a Side,
    /// Samples in the zero bucket.
    pub(in crate::aggregate::histogram) zero: u64,
}

impl Order<'_> {
    /// Samples in the bucket at `pos`.
    #[inline]
    fn count(&self, pos: i32) -> u64 {
        match bucket_of(pos) {
            BucketRef::Zero => self.zero,
            BucketRef::Positive(i) => self.positive.count_at(i),
            BucketRef::Negative(i) => self.negative.count_at(i),
        }
    }

    /// The next bucket up, if any holds samples from there on.
    fn next(&self, pos: i32) -> Option<i32> {
        match bucket_of(pos) {
            BucketRef::Negative(i) => match self.negative.span() {
                Some((lo, _)) if i > lo => Some(pos + 1),
                _ => Some(0),
            },
            BucketRef::Zero => self.positive.span().map(|(lo, _)| SIDE + lo),
            BucketRef::Positive(i) => self.positive.span().filter(|&(_, hi)| i < hi).map(|_| pos + 1),
        }
    }

    /// The next bucket down, if any holds samples from there down.
    fn prev(&self, pos: i32) -> Option<i32> {
        match bucket_of(pos) {
            BucketRef::Positive(i) => match self.positive.span() {
                Some((lo, _)) if i > lo => Some(pos - 1),
                _ => Some(0),
            },
            BucketRef::Zero => self.negative.span().map(|(_, hi)| -SIDE - hi),
            BucketRef::Negative(i) => self.negative.span().filter(|&(_, hi)| i < hi).map(|_| pos - 1),
        }
    }

    /// The bucket holding `rank` (1-based): its key, the samples below it and in it.
    pub fn locate(&self, rank: u64) -> (i32, u64, u64) {
        match self.negative.find_rank(rank, true) {
            Ok(i) => {
                let pos = pos_of(BucketRef::Negative(i));
                (pos, self.negative.total_above(i), self.count(pos))
            }
            Err(negative) => {
                let below_zero = negative;
                if below_zero + self.zero >= rank {
                    return (0, below_zero, self.zero);
                }
                let below_positive = below_zero + self.zero;
                match self.positive.find_rank(rank - below_positive, false) {
                    Ok(i) => {
                        let pos = pos_of(BucketRef::Positive(i));
                        (pos, below_positive + self.positive.total_below(i), self.count(pos))
                    }
                    // Past the last sample: the last bucket (callers keep rank <= n).
                    Err(_) => (0, below_positive, self.zero),
                }
            }
        }
    }
}

/// One reservoir of size one: a uniform pick among the traced samples that
/// fell in bucket `key` while it had a reservoir.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Slot {
    exemplar: Exemplar,
    key: i32,
    /// Traced samples offered (saturates at `u32::MAX`).
    seen: u32,
}

/// One quantile's running position and band.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Cursor {
    /// Bucket holding the quantile's rank.
    pos: i32,
    /// Lowest and highest bucket of the band.
    lo: i32,
    hi: i32,
    /// Samples below `pos`, and in it.
    below: u64,
    count: u64,
    /// Sample count at which the band is widened again.
    refresh_at: u64,
}

impl Cursor {
    fn at(q: f64, n: u64, order: &Order<'_>) -> Cursor {
        let (pos, below, count) = order.locate(rank_of(q, n));
        let mut cursor = Cursor {
            pos,
            lo: pos,
            hi: pos,
            below,
            count,
            refresh_at: 0,
        };
        cursor.refresh(q, n, order);
        cursor
    }

    /// Counts `w` new samples in bucket `pos` (already in `order`), then
    /// moves to the bucket holding the quantile's rank among `n`.
    #[inline]
    fn count(&mut self, pos: i32, w: u64, q: f64, n: u64, order: &Order<'_>) {
        if pos < self.pos {
            self.below += w;
        } else if pos == self.pos {
            self.count += w;
        }
        let rank = rank_of(q, n);
        let moved = rank <= self.below || rank > self.below + self.count;
        if moved {
            while rank > self.below + self.count {
                let Some(next) = order.next(self.pos) else { break };
                self.below += self.count;
                self.pos = next;
                self.count = order.count(next);
            }
            while rank <= self.below {
                let Some(prev) = order.prev(self.pos) else { break };
                self.pos = prev;
                self.count = order.count(prev);
                self.below = self.below.saturating_sub(self.count);
            }
        }
        if moved || n >= self.refresh_at {
            self.refresh(q, n, order);
        }
    }

    /// Sets the band to the buckets holding ranks `rank ± R`,
    /// `R = ceil(BAND_SIGMAS * sqrt(n*q*(1-q))) + 1`.
    fn refresh(&mut self, q: f64, n: u64, order: &Order<'_>) {
        let rank = rank_of(q, n);
        let reach = (BAND_SIGMAS * (n as f64 * q * (1.0 - q)).sqrt()).ceil() as u64 + 1;
        let (low_rank, high_rank) = (rank.saturating_sub(reach).max(1), (rank + reach).min(n));
        let (mut lo, mut below) = (self.pos, self.below);
        while below >= low_rank {
            let Some(prev) = order.prev(lo) else { break };
            lo = prev;
            below = below.saturating_sub(order.count(prev));
        }
        let (mut hi, mut through) = (self.pos, self.below + self.count);
        while through < high_rank {
            let Some(next) = order.next(hi) else { break };
            hi = next;
            through += order.count(next);
        }
        self.lo = lo;
        self.hi = hi;
        // Ranks drift by at most one per sample: widen again before they pass a quarter of the reach.
        self.refresh_at = n + (reach / 4).max(1);
    }

    /// Buckets between `pos` and the band (0 inside it).
    fn distance(&self, pos: i32) -> u32 {
        if pos < self.lo {
            self.lo.abs_diff(pos)
        } else {
            pos.saturating_sub(self.hi).max(0) as u32
        }
    }
}

/// The reservoirs of one window and, once it has more traced buckets than
/// `OPEN_SLOTS`, the bands that decide which to keep.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Bands {
    /// Ascending key.
    slots: Vec<Slot>,
    /// One per linked quantile once bands choose; empty before.
    cursors: Vec<Cursor>,
}

impl Bands {
    /// Counts `w` new samples in bucket `pos` (already in `order`, which
    /// now holds `n`): moves each quantile's band along.
    #[inline]
    pub fn count(&mut self, pos: i32, w: u64, quantiles: &[f64], n: u64, order: &Order<'_>) {
        for (cursor, q) in self.cursors.iter_mut().zip(quantiles) {
            cursor.count(pos, w, *q, n, order);
        }
    }

    /// Offers a traced sample of bucket `pos` (already counted).
    #[inline]
    pub fn offer<R: Rng + ?Sized>(
        &mut self,
        pos: i32,
        exemplar: Exemplar,
        quantiles: &[f64],
        n: u64,
        order: &Order<'_>,
        rng: &mut R,
    ) {
        let at = match self.slots.binary_search_by_key(&pos, |slot| slot.key) {
            Ok(at) => {
                let slot = &mut self.slots[at];
                let mut seen = u64::from(slot.seen);
                if offer_keeps(&mut seen, rng) {
                    slot.exemplar = exemplar;
                }
                slot.seen = seen.min(u64::from(u32::MAX)) as u32;
                return;
            }
            Err(at) => at,
        };
        if self.slots.len() >= OPEN_SLOTS {
            if self.cursors.is_empty() {
                self.cursors = quantiles.iter().map(|q| Cursor::at(*q, n, order)).collect();
            }
            if self.distance(pos) > 0 {
                return;
            }
        }
        if self.slots.len() == self.slots.capacity() {
            // Grow by a quarter: a doubled Vec would leave kilobytes of slack in a small window.
            self.slots.reserve_exact((self.slots.len() / 4).max(4));
        }
        self.slots.insert(
            at,
            Slot {
                exemplar,
                key: pos,
                seen: 1,
            },
        );
        self.evict();
    }

    /// Buckets between `pos` and the nearest band (0 inside one, or before bands choose).
    fn distance(&self, pos: i32) -> u32 {
        self.cursors.iter().map(|c| c.distance(pos)).min().unwrap_or(0)
    }

    /// Drops reservoirs outside every band, farthest first, while more than `OPEN_SLOTS` are kept.
    fn evict(&mut self) {
        while self.slots.len() > OPEN_SLOTS {
            let farthest = self
                .slots
                .iter()
                .enumerate()
                .map(|(at, slot)| (self.distance(slot.key), at))
                .max();
            match farthest {
                Some((distance, at)) if distance > 0 => {
                    self.slots.remove(at);
                }
                _ => break,
            }
        }
    }

    /// Re-places the bands from scratch on `order` (after a merge or a
    /// fold changed counts anywhere), then drops what they no longer cover.
    pub fn replace(&mut self, quantiles: &[f64], n: u64, order: &Order<'_>) {
        if self.cursors.is_empty() && self.slots.len() <= OPEN_SLOTS {
            return;
        }
        if n == 0 {
            self.cursors.clear();
            return;
        }
        self.cursors = quantiles.iter().map(|q| Cursor::at(*q, n, order)).collect();
        self.evict();
    }

    /// Re-keys every reservoir `k` scales coarser (a downscale), merging those that meet.
    pub fn downscale<R: Rng + ?Sized>(&mut self, k: u32, rng: &mut R) {
        // Bucket keys changed: bands are placed again by the next offer past `OPEN_SLOTS`.
        self.cursors.clear();
        let old = std::mem::take(&mut self.slots);
        for mut slot in old {
            slot.key = shifted(slot.key, k);
            self.absorb(slot, rng);
        }
        self.slots.shrink_to_fit();
    }

    /// Folds in one reservoir, uniform over the union of both reservoirs' samples.
    fn absorb<R: Rng + ?Sized>(&mut self, slot: Slot, rng: &mut R) {
        match self.slots.binary_search_by_key(&slot.key, |s| s.key) {
            Ok(at) => {
                let mine = &mut self.slots[at];
                let mut seen = u64::from(mine.seen);
                if absorb_takes(&mut seen, u64::from(slot.seen), rng) {
                    mine.exemplar = slot.exemplar;
                }
                mine.seen = seen.min(u64::from(u32::MAX)) as u32;
            }
            Err(at) => self.slots.insert(at, slot),
        }
    }

    /// Adds every reservoir of `other` (same scale); call [`Bands::replace`] after.
    pub fn merge<R: Rng + ?Sized>(&mut self, other: &Bands, rng: &mut R) {
        for slot in &other.slots {
            self.absorb(*slot, rng);
        }
    }

    /// Checks reservoirs read from another process: ascending keys, each
    /// with a sample in the bucket it names; drops the bands.
    pub fn check(&mut self, bucket_of: impl Fn(f64) -> i32) -> Result<(), String> {
        self.cursors.clear();
        let ordered = self.slots.windows(2).all(|w| w[0].key < w[1].key);
        let placed = self
            .slots
            .iter()
            .all(|slot| slot.seen > 0 && slot.exemplar.value.is_finite() && bucket_of(slot.exemplar.value) == slot.key);
        if ordered && placed {
            Ok(())
        } else {
            Err("reservoirs out of order, empty, or not in the bucket they name".into())
        }
    }

    /// The exemplar kept for bucket `pos`.
    pub fn get(&self, pos: i32) -> Option<Exemplar> {
        self.slots
            .binary_search_by_key(&pos, |slot| slot.key)
            .ok()
            .map(|at| self.slots[at].exemplar)
    }

    /// Every kept exemplar with its bucket key, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (i32, Exemplar)> + '_ {
        self.slots.iter().map(|slot| (slot.key, slot.exemplar))
    }

    /// Whether bands decide what is kept (the window outgrew `OPEN_SLOTS`).
    pub fn banded(&self) -> bool {
        !self.cursors.is_empty()
    }

    /// Forgets every reservoir and band, keeping the capacity.
    pub fn clear(&mut self) {
        self.slots.clear();
        self.cursors.clear();
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Slot>() + self.cursors.capacity() * size_of::<Cursor>()
    }
}
