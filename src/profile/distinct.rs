//! Distinct counting of 64-bit hashes: exact while small, then a HyperLogLog
//! (2^14 registers, about 0.8 % standard error), so a label with millions of
//! values costs 16 KiB instead of a set of millions.

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

use crate::model::SeriesKeyHasher;

/// Exact up to this many distinct hashes.
const EXACT_LIMIT: usize = 1_024;
/// Register index bits.
const PRECISION: u32 = 14;
const REGISTERS: usize = 1 << PRECISION;

/// A distinct-value counter over well-mixed 64-bit hashes (xxh3).
#[derive(Clone, Debug)]
pub enum Distinct {
    /// Every hash seen.
    Exact(HashSet<u64, BuildHasherDefault<SeriesKeyHasher>>),
    /// Past [`EXACT_LIMIT`]: HyperLogLog registers.
    Sketch(Box<[u8]>),
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::Exact(HashSet::default())
    }
}

impl Distinct {
    /// Adds one hash.
    pub fn insert(&mut self, hash: u64) {
        match self {
            Distinct::Exact(set) => {
                set.insert(hash);
                if set.len() > EXACT_LIMIT {
                    let mut registers = vec![0u8; REGISTERS].into_boxed_slice();
                    for &hash in set.iter() {
                        update(&mut registers, hash);
                    }
                    *self = Distinct::Sketch(registers);
                }
            }
            Distinct::Sketch(registers) => update(registers, hash),
        }
    }

    /// Adds everything `other` counted.
    pub fn merge(&mut self, other: &Distinct) {
        match other {
            Distinct::Exact(set) => set.iter().for_each(|&hash| self.insert(hash)),
            Distinct::Sketch(theirs) => {
                if let Distinct::Exact(set) = self {
                    let mut registers = vec![0u8; REGISTERS].into_boxed_slice();
                    for &hash in set.iter() {
                        update(&mut registers, hash);
                    }
                    *self = Distinct::Sketch(registers);
                }
                if let Distinct::Sketch(ours) = self {
                    for (mine, theirs) in ours.iter_mut().zip(theirs.iter()) {
                        *mine = (*mine).max(*theirs);
                    }
                }
            }
        }
    }

    /// Whether the count is exact.
    pub fn is_exact(&self) -> bool {
        matches!(self, Distinct::Exact(_))
    }

    /// The number of distinct hashes (estimated once past the exact limit).
    pub fn count(&self) -> u64 {
        match self {
            Distinct::Exact(set) => set.len() as u64,
            Distinct::Sketch(registers) => estimate(registers),
        }
    }
}

fn update(registers: &mut [u8], hash: u64) {
    let index = (hash >> (64 - PRECISION)) as usize;
    // Rank of the first set bit in the remaining bits (1-based), capped by their width.
    let rest = (hash << PRECISION) | (1 << (PRECISION - 1));
    let rank = rest.leading_zeros() as u8 + 1;
    if registers[index] < rank {
        registers[index] = rank;
    }
}

/// Ertl's improved estimator ("New cardinality estimation algorithms for
/// HyperLogLog sketches", 2017): unbiased from empty to full without the
/// empirical bias tables of HyperLogLog++ or a switch to linear counting.
fn estimate(registers: &[u8]) -> u64 {
    let q = 64 - PRECISION as usize;
    let mut histogram = [0u32; 64];
    for &rank in registers {
        histogram[rank as usize] += 1;
    }
    let m = REGISTERS as f64;
    let mut z = m * tau(1.0 - f64::from(histogram[q + 1]) / m);
    for k in (1..=q).rev() {
        z = 0.5 * (z + f64::from(histogram[k]));
    }
    z += m * sigma(f64::from(histogram[0]) / m);
    (m * m / (2.0 * std::f64::consts::LN_2) / z).round() as u64
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut y, mut z) = (1.0, x);
    loop {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if previous == z {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut y, mut z) = (1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if previous == z {
            return z / 3.0;
        }
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
