//! Exemplar reservoirs on the buckets around each linked quantile's running
//! position: one per traced bucket while a window has few, then only on the
//! buckets within a band of ranks around each quantile, re-centred as it moves.
//! A reservoir is 40 bytes: its bucket is read from its exemplar's value.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::super::store::Side;
use super::super::{bucket_ref_of, BucketRef};
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

/// How values map to order keys at a histogram's current scale: a
/// reservoir's bucket is the bucket of its exemplar's value.
#[derive(Clone, Copy, Debug)]
pub(in crate::aggregate::histogram) struct Keys {
    /// The histogram's scale.
    pub(in crate::aggregate::histogram) scale: i8,
    /// Its zero bucket's threshold.
    pub(in crate::aggregate::histogram) zero_threshold: f64,
}

impl Keys {
    /// The order key of the bucket holding finite `value`.
    #[inline]
    pub(in crate::aggregate::histogram) fn of(&self, value: f64) -> i32 {
        pos_of(bucket_ref_of(self.scale, self.zero_threshold, value))
    }
}

/// The nearest-rank position of quantile `q` among `n` samples.
#[inline]
pub fn rank_of(q: f64, n: u64) -> u64 {
    // `ceil` without the libm call the baseline x86-64 target makes of it
    // (four cursors take a rank per sample): exact for `0 <= x < 2^64`.
    let x = q * n as f64;
    let floor = x as u64;
    let ceil = floor + u64::from((floor as f64) < x);
    ceil.clamp(1, n.max(1))
}

/// Walks from bucket `pos` (with `below` samples under it and `count` in
/// it) to the bucket holding rank `rank`, and returns that bucket's
/// `(pos, below, count)`: how a cursor follows its quantile and how a band's
/// edges follow theirs, from where they were rather than from scratch.
#[inline]
fn seek(order: &Order<'_>, (mut pos, mut below, mut count): (i32, u64, u64), rank: u64) -> (i32, u64, u64) {
    while rank > below + count {
        let Some(next) = order.next(pos) else { break };
        below += count;
        pos = next;
        count = order.count(next);
    }
    while rank <= below {
        let Some(prev) = order.prev(pos) else { break };
        pos = prev;
        count = order.count(prev);
        below = below.saturating_sub(count);
    }
    (pos, below, count)
}

/// A histogram's buckets in ascending value order, for walking ranks.
pub(in crate::aggregate::histogram) struct Order<'a> {
    /// Positive buckets.
    pub(in crate::aggregate::histogram) positive: &'a Side,
    /// Negative buckets (by magnitude).
    pub(in crate::aggregate::histogram) negative: &'a Side,
    /// Samples in the zero bucket.
    pub(in crate::aggregate::histogram) zero: u64,
    /// The buckets' keying.
    pub(in crate::aggregate::histogram) keys: Keys,
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
/// fell in its bucket (the bucket of `value`) while it had a reservoir. 40
/// bytes: the timestamp is kept as an offset from the bands' `epoch_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Slot {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    value: f64,
    /// Milliseconds after `Bands::epoch_ms` (clamped to ±24.8 days).
    at_ms: i32,
    /// Traced samples offered (saturates at `u32::MAX`).
    seen: u32,
}

impl Slot {
    /// Takes `exemplar`'s fields, its timestamp relative to `epoch_ms`.
    fn set(&mut self, exemplar: &Exemplar, epoch_ms: i64) {
        self.trace_id = exemplar.trace_id;
        self.span_id = exemplar.span_id;
        self.value = exemplar.value;
        self.at_ms = exemplar
            .timestamp_ms
            .saturating_sub(epoch_ms)
            .clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
    }

    fn exemplar(&self, epoch_ms: i64) -> Exemplar {
        Exemplar {
            trace_id: self.trace_id,
            span_id: self.span_id,
            value: self.value,
            timestamp_ms: epoch_ms.saturating_add(i64::from(self.at_ms)),
        }
    }
}

/// One quantile's running position and band.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Cursor {
    /// Bucket holding the quantile's rank.
    pos: i32,
    /// Lowest and highest bucket of the band.
    lo: i32,
    hi: i32,
    /// Samples still to come before the band is widened again.
    refresh_in: u32,
    /// Samples below `pos`.
    below: u64,
    /// Samples in `pos`: kept here rather than read from the histogram on
    /// every sample (that read is a cache line per cursor). Not sent with
    /// cluster parts: `Bands::check` drops the cursors of parts read back.
    #[serde(skip)]
    count: u64,
    /// Samples below `lo`, and in `hi` and below: a re-placed band starts
    /// from its old edges, so it walks the buckets its edges moved over
    /// instead of every bucket from `pos` out (a tail band spans tens of
    /// nearly empty buckets, and is re-placed on every sample).
    #[serde(skip)]
    lo_below: u64,
    #[serde(skip)]
    hi_through: u64,
}

impl Cursor {
    fn at(q: f64, n: u64, order: &Order<'_>) -> Cursor {
        let (pos, below, count) = order.locate(rank_of(q, n));
        let mut cursor = Cursor {
            pos,
            lo: pos,
            hi: pos,
            below,
            refresh_in: 0,
            count,
            lo_below: below,
            hi_through: below + count,
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
        if pos < self.lo {
            self.lo_below += w;
        }
        if pos <= self.hi {
            self.hi_through += w;
        }
        let rank = rank_of(q, n);
        let moved = rank <= self.below || rank > self.below + self.count;
        if moved {
            (self.pos, self.below, self.count) = seek(order, (self.pos, self.below, self.count), rank);
        }
        self.refresh_in = self.refresh_in.saturating_sub(u32::try_from(w).unwrap_or(u32::MAX));
        if moved || self.refresh_in == 0 {
            self.refresh(q, n, order);
        }
    }

    /// Sets the band to the buckets holding ranks `rank ± R`,
    /// `R = ceil(BAND_SIGMAS * sqrt(n*q*(1-q))) + 1`.
    fn refresh(&mut self, q: f64, n: u64, order: &Order<'_>) {
        let rank = rank_of(q, n);
        let reach = (BAND_SIGMAS * (n as f64 * q * (1.0 - q)).sqrt()).ceil() as u64 + 1;
        let (low_rank, high_rank) = (rank.saturating_sub(reach).max(1), (rank + reach).min(n));
        // Each edge moves to the bucket holding its rank, from where it was.
        let (lo, lo_below, _) = seek(order, (self.lo, self.lo_below, order.count(self.lo)), low_rank);
        let hi_count = order.count(self.hi);
        let (hi, hi_below, hi_count) = seek(
            order,
            (self.hi, self.hi_through.saturating_sub(hi_count), hi_count),
            high_rank,
        );
        (self.lo, self.lo_below) = (lo, lo_below);
        (self.hi, self.hi_through) = (hi, hi_below + hi_count);
        // Ranks drift by at most one per sample: widen again before they pass a quarter of the reach.
        self.refresh_in = u32::try_from((reach / 4).max(1)).unwrap_or(u32::MAX);
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
    /// Ascending value, at most one per bucket (so ascending bucket too).
    slots: Vec<Slot>,
    /// One per linked quantile once bands choose; empty before.
    cursors: Vec<Cursor>,
    /// What the slots' timestamps are offsets from: the first kept exemplar's.
    epoch_ms: i64,
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

    /// Asks for the cursors (every sample moves them, and a traced one
    /// checks their bands first) or, before bands, for the reservoirs a
    /// traced sample searches.
    #[inline]
    pub fn prefetch(&self) {
        if let (Some(first), Some(last)) = (self.cursors.first(), self.cursors.last()) {
            // The first and last lines only: asking for the middle one too
            // measured slower (BENCHMARKS.md, issue 18, step 4).
            crate::prefetch::prefetch(first);
            crate::prefetch::prefetch(last);
        } else {
            // At most `OPEN_SLOTS` reservoirs (15 lines) before bands: the
            // whole search, so its halvings do not wait on one miss each.
            let start = self.slots.as_ptr().cast::<u8>();
            for offset in (0..self.slots.len().min(OPEN_SLOTS) * size_of::<Slot>()).step_by(64) {
                crate::prefetch::prefetch(start.wrapping_add(offset));
            }
        }
    }

    /// The slot of bucket `pos`, which holds `value` (`Ok`), or where one goes (`Err`).
    #[inline]
    fn find(&self, pos: i32, value: f64, keys: Keys) -> Result<usize, usize> {
        // Values ascend with buckets: the bucket's slot, if any, sits next to `value`.
        let at = self.slots.partition_point(|slot| slot.value < value);
        if self.slots.get(at).is_some_and(|slot| keys.of(slot.value) == pos) {
            return Ok(at);
        }
        if at > 0 && keys.of(self.slots[at - 1].value) == pos {
            return Ok(at - 1);
        }
        Err(at)
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
        // Outside every band, a sample is not offered at all, not even to a
        // reservoir its bucket still keeps (one the bands left and storage
        // has not dropped yet): the four band bounds sit in one line, while
        // finding a reservoir is a search through a kilobyte or two.
        if !self.cursors.is_empty() && self.distance(pos) > 0 {
            return;
        }
        let mut at = match self.find(pos, exemplar.value, order.keys) {
            Ok(at) => {
                let epoch_ms = self.epoch_ms;
                let slot = &mut self.slots[at];
                let mut seen = u64::from(slot.seen);
                if offer_keeps(&mut seen, rng) {
                    slot.set(&exemplar, epoch_ms);
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
        if self.slots.len() == self.slots.capacity() && self.slots.len() > OPEN_SLOTS {
            // Out-of-band reservoirs go when the storage is full, before it
            // grows: the same memory as dropping them on every insert, with a
            // scan of every reservoir's bucket per growth instead of per insert.
            self.evict(order.keys);
            at = self.slots.partition_point(|slot| slot.value < exemplar.value);
        }
        self.insert(at, &exemplar, 1);
    }

    /// Adds a slot for `exemplar` at `at`, growing the storage by a little:
    /// a window keeps some tens of slots, and slack would be a large part of it.
    fn insert(&mut self, at: usize, exemplar: &Exemplar, seen: u32) {
        if self.slots.is_empty() {
            self.epoch_ms = exemplar.timestamp_ms;
        }
        if self.slots.len() == self.slots.capacity() {
            self.slots.reserve_exact((self.slots.len() / 16).max(2));
        }
        let mut slot = Slot {
            trace_id: [0; 16],
            span_id: [0; 8],
            value: 0.0,
            at_ms: 0,
            seen,
        };
        slot.set(exemplar, self.epoch_ms);
        self.slots.insert(at, slot);
    }

    /// Buckets between `pos` and the nearest band (0 inside one, or before bands choose).
    fn distance(&self, pos: i32) -> u32 {
        self.cursors.iter().map(|c| c.distance(pos)).min().unwrap_or(0)
    }

    /// Drops reservoirs outside every band, farthest first, while more than `OPEN_SLOTS` are kept.
    fn evict(&mut self, keys: Keys) {
        while self.slots.len() > OPEN_SLOTS {
            let farthest = self
                .slots
                .iter()
                .enumerate()
                .map(|(at, slot)| (self.distance(keys.of(slot.value)), at))
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
        self.evict(order.keys);
    }

    /// Merges the reservoirs that share a bucket under `keys` (a downscale
    /// made buckets coarser).
    pub fn downscale<R: Rng + ?Sized>(&mut self, keys: Keys, rng: &mut R) {
        // Bucket keys changed: bands are placed again by the next offer past `OPEN_SLOTS`.
        self.cursors.clear();
        let old = std::mem::take(&mut self.slots);
        let epoch_ms = self.epoch_ms;
        for slot in old {
            self.absorb(&slot.exemplar(epoch_ms), slot.seen, keys, rng);
        }
        self.slots.shrink_to_fit();
    }

    /// Folds in one reservoir (`exemplar` a uniform pick of `seen` traced
    /// samples), uniform over the union of both reservoirs' samples.
    fn absorb<R: Rng + ?Sized>(&mut self, exemplar: &Exemplar, seen: u32, keys: Keys, rng: &mut R) {
        match self.find(keys.of(exemplar.value), exemplar.value, keys) {
            Ok(at) => {
                let epoch_ms = self.epoch_ms;
                let mine = &mut self.slots[at];
                let mut total = u64::from(mine.seen);
                if absorb_takes(&mut total, u64::from(seen), rng) {
                    mine.set(exemplar, epoch_ms);
                }
                mine.seen = total.min(u64::from(u32::MAX)) as u32;
            }
            Err(at) => self.insert(at, exemplar, seen),
        }
    }

    /// Adds every reservoir of `other` (same scale, keyed by `keys`); call [`Bands::replace`] after.
    pub fn merge<R: Rng + ?Sized>(&mut self, other: &Bands, keys: Keys, rng: &mut R) {
        for slot in &other.slots {
            self.absorb(&slot.exemplar(other.epoch_ms), slot.seen, keys, rng);
        }
    }

    /// Checks reservoirs read from another process: finite values, one per
    /// bucket (`bucket_of` a value) in ascending order; drops the bands.
    pub fn check(&mut self, bucket_of: impl Fn(f64) -> i32) -> Result<(), String> {
        self.cursors.clear();
        let finite = self.slots.iter().all(|slot| slot.seen > 0 && slot.value.is_finite());
        let ordered = finite
            && self
                .slots
                .windows(2)
                .all(|w| w[0].value < w[1].value && bucket_of(w[0].value) < bucket_of(w[1].value));
        if ordered {
            Ok(())
        } else {
            Err("reservoirs out of order, empty, not finite, or two in one bucket".into())
        }
    }

    /// The exemplar kept for bucket `pos`.
    pub fn get(&self, pos: i32, keys: Keys) -> Option<Exemplar> {
        self.slots
            .binary_search_by(|slot| keys.of(slot.value).cmp(&pos))
            .ok()
            .map(|at| self.slots[at].exemplar(self.epoch_ms))
    }

    /// Every kept exemplar with its bucket key, ascending.
    pub fn iter(&self, keys: Keys) -> impl Iterator<Item = (i32, Exemplar)> + '_ {
        self.slots
            .iter()
            .map(move |slot| (keys.of(slot.value), slot.exemplar(self.epoch_ms)))
    }

    /// For tests: each cursor's kept counts against `order`'s (below `pos`,
    /// in `pos`, below `lo`, through `hi`), as `(kept, histogram's)` pairs.
    #[cfg(test)]
    pub fn cursor_counts(&self, order: &Order<'_>) -> Vec<([u64; 4], [u64; 4])> {
        let below_of = |key: i32| -> u64 {
            let negative = order
                .negative
                .buckets()
                .map(|(i, c)| (pos_of(BucketRef::Negative(i)), c));
            let positive = order
                .positive
                .buckets()
                .map(|(i, c)| (pos_of(BucketRef::Positive(i)), c));
            let buckets = negative.chain(std::iter::once((0, order.zero))).chain(positive);
            buckets.filter(|(pos, _)| *pos < key).map(|(_, c)| c).sum()
        };
        self.cursors
            .iter()
            .map(|cursor| {
                let kept = [cursor.below, cursor.count, cursor.lo_below, cursor.hi_through];
                let hi_through = below_of(cursor.hi) + order.count(cursor.hi);
                let histogram = [
                    below_of(cursor.pos),
                    order.count(cursor.pos),
                    below_of(cursor.lo),
                    hi_through,
                ];
                (kept, histogram)
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservoir_is_40_bytes_and_keeps_its_timestamp() {
        assert_eq!(size_of::<Slot>(), 40);
        assert_eq!(size_of::<Cursor>(), 48);
        let exemplar = Exemplar {
            trace_id: [7; 16],
            span_id: [8; 8],
            value: 1.25,
            timestamp_ms: 1_800_000_009_999,
        };
        let mut slot = Slot {
            trace_id: [0; 16],
            span_id: [0; 8],
            value: 0.0,
            at_ms: 0,
            seen: 1,
        };
        for epoch_ms in [1_800_000_000_000, 1_800_000_020_000, exemplar.timestamp_ms] {
            slot.set(&exemplar, epoch_ms);
            assert_eq!(slot.exemplar(epoch_ms), exemplar);
        }
        // More than 24.8 days from the epoch: clamped, as the README says.
        let epoch_ms = exemplar.timestamp_ms - 30 * 86_400_000;
        slot.set(&exemplar, epoch_ms);
        assert_eq!(slot.exemplar(epoch_ms).timestamp_ms, epoch_ms + i64::from(i32::MAX));
    }
}
