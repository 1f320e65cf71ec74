//! Distinct counting of 64-bit hashes for the profiler: exact while small,
//! then a HyperLogLog (2^14 registers, about 0.8 % standard error), so a
//! label with millions of values costs 16 KiB instead of a set of millions.
//! The counting itself is a set window's ([`SetState`]).

use crate::aggregate::SetState;

/// Exact up to this many distinct hashes.
const EXACT_LIMIT: usize = 1_024;

/// A distinct-value counter over well-mixed 64-bit hashes (xxh3).
#[derive(Clone, Debug)]
pub struct Distinct(SetState);

impl Default for Distinct {
    fn default() -> Self {
        Distinct(SetState::new(EXACT_LIMIT))
    }
}

impl Distinct {
    /// Adds one hash.
    pub fn insert(&mut self, hash: u64) {
        self.0.insert_hash(hash);
    }

    /// Adds everything `other` counted.
    pub fn merge(&mut self, other: &Distinct) {
        self.0.merge(&other.0);
    }

    /// Whether the count is exact.
    pub fn is_exact(&self) -> bool {
        self.0.is_exact()
    }

    /// The number of distinct hashes (estimated once past the exact limit).
    pub fn count(&self) -> u64 {
        self.0.distinct() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(value: u64) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&value.to_le_bytes())
    }

    #[test]
    fn exact_while_small_then_within_two_and_a_half_percent() {
        let mut distinct = Distinct::default();
        for value in 0..1_000 {
            distinct.insert(hash(value));
            distinct.insert(hash(value));
        }
        assert!(distinct.is_exact());
        assert_eq!(distinct.count(), 1_000);
        for n in [5_000u64, 40_000, 50_000, 500_000] {
            let mut distinct = Distinct::default();
            (0..n).for_each(|value| distinct.insert(hash(value)));
            assert!(!distinct.is_exact());
            let error = (distinct.count() as f64 - n as f64).abs() / n as f64;
            assert!(error < 0.025, "{n}: estimate {} is off by {error}", distinct.count());
        }
    }

    #[test]
    fn merge_is_a_union() {
        let (mut left, mut right) = (Distinct::default(), Distinct::default());
        (0..30_000).for_each(|value| left.insert(hash(value)));
        (20_000..40_000).for_each(|value| right.insert(hash(value)));
        left.merge(&right);
        let error = (left.count() as f64 - 40_000.0).abs() / 40_000.0;
        assert!(error < 0.025, "estimate {}", left.count());
        let mut small = Distinct::default();
        (0..10).for_each(|value| small.insert(hash(value)));
        small.merge(&Distinct::default());
        assert_eq!(small.count(), 10);
    }
}
