//! The exemplar reservoirs of one histogram sign, packed: 48 bytes per
//! reservoir plus one narrow position cell per key in the keyed range, found in
//! O(1) on the hot path without a hash map.

use rand::Rng;

use super::cells::Cells;
use crate::aggregate::exemplar::{absorb_takes, offer_keeps, Exemplar, ExemplarSlot};

/// Bits of `key_seen` holding the key (two's complement). Bucket indices of
/// finite values lie within about ±2^19 at scale 8, so 24 bits hold any key.
const KEY_BITS: u32 = 24;
/// `seen` saturates here (about 1.1e12 traced samples in one reservoir and
/// window), where `ExemplarSlot` saturates at `u64::MAX`: both are out of reach.
const MAX_SEEN: u64 = (1 << (64 - KEY_BITS)) - 1;

/// An `ExemplarSlot` in 48 bytes: the key and the traced-sample count share a word.
#[derive(Clone, Copy, Debug)]
struct Packed {
    exemplar: Exemplar,
    key_seen: u64,
}

impl Packed {
    fn pack(slot: &ExemplarSlot) -> Self {
        debug_assert!(
            (-(1 << (KEY_BITS - 1))..(1 << (KEY_BITS - 1))).contains(&slot.index),
            "reservoir key {} out of range",
            slot.index
        );
        let key = u64::from(slot.index as u32) & ((1 << KEY_BITS) - 1);
        Self {
            exemplar: slot.exemplar,
            key_seen: slot.seen.min(MAX_SEEN) << KEY_BITS | key,
        }
    }

    fn seen(&self) -> u64 {
        self.key_seen >> KEY_BITS
    }

    /// Sets the count, saturating at `MAX_SEEN`; the key stays.
    fn set_seen(&mut self, seen: u64) {
        self.key_seen = seen.min(MAX_SEEN) << KEY_BITS | (self.key_seen & ((1 << KEY_BITS) - 1));
    }

    fn key(&self) -> i32 {
        // Sign-extend the low KEY_BITS.
        ((self.key_seen << (64 - KEY_BITS)) as i64 >> (64 - KEY_BITS)) as i32
    }

    fn unpack(&self) -> ExemplarSlot {
        ExemplarSlot {
            index: self.key(),
            seen: self.seen(),
            exemplar: self.exemplar,
        }
    }
}

/// Reservoirs of size one keyed by an `i32` (a bucket index, or a coarser
/// group of buckets), each with `ExemplarSlot`'s uniformity guarantee.
#[derive(Clone, Debug, Default)]
pub(super) struct Reservoirs {
    /// In arrival order: a sorted list made every new key an O(n) insert.
    slots: Vec<Packed>,
    /// `positions[j]` is 1 + the position in `slots` of key `base + j`, 0 for none.
    positions: Cells,
    base: i32,
}

impl Reservoirs {
    /// No reservoirs, as a constant (see `store::NO_SAMPLES`).
    pub(super) const EMPTY: Reservoirs = Reservoirs {
        slots: Vec::new(),
        positions: Cells::EMPTY,
        base: 0,
    };

    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    fn position(&self, key: i32) -> Option<usize> {
        let j = usize::try_from(i64::from(key) - i64::from(self.base)).ok()?;
        self.positions.get(j).checked_sub(1).map(|p| p as usize)
    }

    /// Asks for the index entry of `key`.
    #[inline]
    pub(super) fn prefetch_position(&self, key: i32) {
        if let Ok(j) = usize::try_from(i64::from(key) - i64::from(self.base)) {
            self.positions.prefetch(j);
        }
    }

    /// Asks for the reservoir of `key`, if it has one.
    #[inline]
    pub(super) fn prefetch_slot(&self, key: i32) {
        if let Some(slot) = self.position(key).and_then(|p| self.slots.get(p)) {
            crate::prefetch::prefetch(slot);
        }
    }

    /// The reservoir of `key`, if it saw a traced sample.
    pub(super) fn get(&self, key: i32) -> Option<ExemplarSlot> {
        self.position(key).map(|p| self.slots[p].unpack())
    }

    /// Offers a traced sample to `key`'s reservoir (creating it if needed);
    /// true when it was created.
    #[inline]
    pub(super) fn offer<R: Rng + ?Sized>(&mut self, key: i32, exemplar: Exemplar, rng: &mut R) -> bool {
        match self.position(key) {
            Some(p) => {
                // In place: the 40-byte exemplar is written only when kept.
                let slot = &mut self.slots[p];
                let mut seen = slot.seen();
                if offer_keeps(&mut seen, rng) {
                    slot.exemplar = exemplar;
                }
                slot.set_seen(seen);
                false
            }
            None => {
                self.push(&ExemplarSlot::new(key, exemplar));
                true
            }
        }
    }

    /// Folds `slot` into the reservoir of `slot.index` (creating it if needed).
    pub(super) fn absorb<R: Rng + ?Sized>(&mut self, slot: &ExemplarSlot, rng: &mut R) {
        match self.position(slot.index) {
            Some(p) => {
                let mine = &mut self.slots[p];
                let mut seen = mine.seen();
                if absorb_takes(&mut seen, slot.seen, rng) {
                    mine.exemplar = slot.exemplar;
                }
                mine.set_seen(seen);
            }
            None => self.push(slot),
        }
    }

    /// Adds `slot` as the reservoir of a key that has none (callers check).
    pub(super) fn insert(&mut self, slot: &ExemplarSlot) {
        debug_assert!(self.position(slot.index).is_none(), "key {} taken", slot.index);
        self.push(slot);
    }

    fn push(&mut self, slot: &ExemplarSlot) {
        let key = slot.index;
        if self.positions.is_empty() {
            self.base = key;
            self.positions.extend_to(1);
        } else if key < self.base {
            self.positions.prepend_zeros((self.base - key) as usize);
            self.base = key;
        } else {
            self.positions.extend_to((key - self.base) as usize + 1);
        }
        if self.slots.len() == self.slots.capacity() {
            // Grow by a quarter (still amortized O(1)): a doubled Vec of 48-byte
            // slots would leave kilobytes of slack in a small window.
            self.slots.reserve_exact((self.slots.len() / 4).max(4));
        }
        self.slots.push(Packed::pack(slot));
        self.positions.set((key - self.base) as usize, self.slots.len() as u64);
    }

    /// Every reservoir, in arrival order.
    pub(super) fn iter(&self) -> impl Iterator<Item = ExemplarSlot> + '_ {
        self.slots.iter().map(Packed::unpack)
    }

    /// Every reservoir, ascending key (a sorted copy: read at flush, not per sample).
    pub(super) fn sorted(&self) -> Vec<ExemplarSlot> {
        let mut slots: Vec<ExemplarSlot> = self.iter().collect();
        slots.sort_unstable_by_key(|slot| slot.index);
        slots
    }

    /// Re-keys every reservoir by `rekey`, merging those that meet.
    pub(super) fn rekey<R: Rng + ?Sized>(&mut self, rekey: impl Fn(&ExemplarSlot) -> i32, rng: &mut R) {
        let old = std::mem::take(&mut self.slots);
        self.positions.clear();
        self.slots.reserve_exact(old.len());
        for packed in old {
            let mut slot = packed.unpack();
            slot.index = rekey(&slot);
            self.absorb(&slot, rng);
        }
        // Re-keying merges: give back what the merged slots no longer use.
        self.slots.shrink_to_fit();
    }

    pub(super) fn clear(&mut self) {
        self.slots.clear();
        self.positions.clear();
        self.base = 0;
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Packed>() + self.positions.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::histogram::tests::rng;

    fn ex(tag: u8) -> Exemplar {
        Exemplar {
            trace_id: [tag; 16],
            span_id: [tag; 8],
            value: f64::from(tag),
            timestamp_ms: -i64::from(tag) * 1_000_000_000_000,
        }
    }

    #[test]
    fn packing_round_trips_keys_and_counts() {
        assert_eq!(size_of::<Packed>(), 48);
        for index in [0, 1, -1, 275_000, -275_000, (1 << 23) - 1, -(1 << 23)] {
            for seen in [0, 1, 12_345, MAX_SEEN] {
                let slot = ExemplarSlot {
                    index,
                    seen,
                    exemplar: ex(3),
                };
                assert_eq!(Packed::pack(&slot).unpack(), slot);
            }
        }
        let huge = ExemplarSlot {
            index: -5,
            seen: u64::MAX,
            exemplar: ex(1),
        };
        assert_eq!(Packed::pack(&huge).unpack().seen, MAX_SEEN, "saturates, never wraps");
        assert_eq!(Packed::pack(&huge).unpack().index, -5);
    }

    #[test]
    fn keys_below_and_above_the_first_find_their_own_reservoir() {
        let mut r = rng(1);
        let mut reservoirs = Reservoirs::default();
        for (key, tag) in [(10, 1), (-300, 2), (700, 3), (10, 4), (0, 5)] {
            reservoirs.offer(key, ex(tag), &mut r);
        }
        assert_eq!(reservoirs.get(10).map(|s| s.seen), Some(2));
        for (key, tag) in [(-300, 2), (700, 3), (0, 5)] {
            let slot = reservoirs.get(key).unwrap();
            assert_eq!((slot.index, slot.seen, slot.exemplar), (key, 1, ex(tag)));
        }
        assert_eq!(reservoirs.get(11), None);
        assert_eq!(reservoirs.get(-301), None);
        assert_eq!(reservoirs.get(701), None);
        let keys: Vec<i32> = reservoirs.sorted().iter().map(|s| s.index).collect();
        assert_eq!(keys, vec![-300, 0, 10, 700]);
        // 300+ keys: positions widen past a byte and stay right.
        for key in 1_000..1_400 {
            reservoirs.offer(key, ex(9), &mut r);
        }
        assert_eq!(reservoirs.get(1_399).map(|s| s.index), Some(1_399));
        assert_eq!(reservoirs.get(-300).map(|s| s.exemplar), Some(ex(2)));
        reservoirs.rekey(|s| s.index >> 20, &mut r);
        let all = reservoirs.sorted();
        assert_eq!(
            all.iter().map(|s| (s.index, s.seen)).collect::<Vec<_>>(),
            vec![(-1, 1), (0, 404)]
        );
        reservoirs.clear();
        assert!(reservoirs.is_empty() && reservoirs.get(0).is_none());
    }
}
