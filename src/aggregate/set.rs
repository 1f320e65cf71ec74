//! Distinct counting, for set windows (statsd `|s`) and the profiler: exact up
//! to a bound, then a HyperLogLog sketch whose standard error is
//! 1.04/sqrt(16384) = 0.81 %. Merges (rollups, cluster shares) are unions.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

/// HyperLogLog precision: 2^14 registers of one byte (16 KiB per sketch).
const PRECISION: u32 = 14;
/// Registers of a sketch.
pub const SKETCH_REGISTERS: usize = 1 << PRECISION;
/// The largest register value: the rank of a hash whose 50 low bits are all zero.
const MAX_RANK: u8 = (64 - PRECISION + 1) as u8;

/// Spreads a member (a 52-bit hash of the value sent, see
/// `crate::ingest::statsd`) over 64 bits: a bijection (splitmix64's
/// finaliser), so distinct members stay distinct and every bit is usable by
/// the sketch and the hash table.
#[inline]
fn spread(member: u64) -> u64 {
    let mut z = member.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hashes an already spread member to itself: hashing it again would only cost time.
#[derive(Default)]
struct Spread(u64);

impl Hasher for Spread {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type Exact = HashSet<u64, BuildHasherDefault<Spread>>;

/// The distinct members of one window.
#[derive(Clone, Debug, PartialEq)]
pub struct SetState {
    /// Past this many distinct members the exact set becomes a sketch.
    max_exact: usize,
    members: Members,
}

#[derive(Clone, Debug, PartialEq)]
enum Members {
    /// Spread members, at most `max_exact`.
    Exact(Exact),
    /// One register per `SKETCH_REGISTERS`: the highest rank seen.
    Sketch(Box<[u8]>),
}

/// A set's state as plain data, for forwarding: the spread members while
/// exact, or the sketch's registers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SetParts {
    /// The exact members (spread), with the bound they were kept under.
    Exact {
        /// The sender's bound (`engine.set_max_exact_values`).
        max_exact: usize,
        /// Spread members.
        members: Vec<u64>,
    },
    /// The sketch's registers, `SKETCH_REGISTERS` of them.
    Sketch(Vec<u8>),
}

/// Why set parts were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetPartsError {
    /// Not a sketch of this precision.
    #[error("set sketch has {0} registers, expected 16384")]
    Registers(usize),
    /// A register past the largest possible rank.
    #[error("set sketch register {index} holds {rank}, past the largest rank 51")]
    Rank {
        /// Which register.
        index: usize,
        /// What it holds.
        rank: u8,
    },
}

impl SetState {
    /// An empty set, exact up to `max_exact` distinct members (at least 1).
    pub fn new(max_exact: usize) -> Self {
        SetState {
            max_exact: max_exact.max(1),
            members: Members::Exact(Exact::default()),
        }
    }

    /// Adds one member (a 52-bit hash of the value sent, carried as an integral f64).
    #[inline]
    pub fn record(&mut self, member: f64) {
        self.insert_hash(spread(member as u64));
    }

    /// Adds one member given as a well-mixed 64-bit hash (xxh3 of it, say).
    #[inline]
    pub fn insert_hash(&mut self, spread: u64) {
        match &mut self.members {
            Members::Exact(exact) => {
                if exact.insert(spread) && exact.len() > self.max_exact {
                    self.become_sketch();
                }
            }
            Members::Sketch(registers) => add_to_sketch(registers, spread),
        }
    }

    fn become_sketch(&mut self) {
        let mut registers = vec![0u8; SKETCH_REGISTERS].into_boxed_slice();
        if let Members::Exact(exact) = &self.members {
            for &spread in exact {
                add_to_sketch(&mut registers, spread);
            }
        }
        self.members = Members::Sketch(registers);
    }

    /// Whether the count is exact (no more than the bound of distinct members so far).
    pub fn is_exact(&self) -> bool {
        matches!(self.members, Members::Exact(_))
    }

    /// Distinct members: exact while [`SetState::is_exact`], else the
    /// sketch's estimate, rounded (standard error 0.81 %).
    pub fn distinct(&self) -> f64 {
        match &self.members {
            Members::Exact(exact) => exact.len() as f64,
            Members::Sketch(registers) => estimate(registers).round(),
        }
    }

    /// Adds `other`'s members: exact while the union stays within the bound,
    /// a sketch otherwise (a sketch of a union is the register-wise maximum,
    /// so merging loses nothing beyond the sketch's own error).
    pub fn merge(&mut self, other: &SetState) {
        match &other.members {
            Members::Exact(exact) => {
                for &spread in exact {
                    self.insert_hash(spread);
                }
            }
            Members::Sketch(theirs) => {
                if self.is_exact() {
                    self.become_sketch();
                }
                if let Members::Sketch(mine) = &mut self.members {
                    for (mine, theirs) in mine.iter_mut().zip(theirs.iter()) {
                        *mine = (*mine).max(*theirs);
                    }
                }
            }
        }
    }

    /// The state as plain data, for forwarding.
    pub fn to_parts(&self) -> SetParts {
        match &self.members {
            Members::Exact(exact) => SetParts::Exact {
                max_exact: self.max_exact,
                members: exact.iter().copied().collect(),
            },
            Members::Sketch(registers) => SetParts::Sketch(registers.to_vec()),
        }
    }

    /// Rebuilds forwarded parts under this instance's bound `max_exact`.
    pub fn from_parts(max_exact: usize, parts: &SetParts) -> Result<SetState, SetPartsError> {
        let mut state = SetState::new(max_exact);
        match parts {
            SetParts::Exact { members, .. } => {
                for &spread in members {
                    state.insert_hash(spread);
                }
            }
            SetParts::Sketch(registers) => {
                if registers.len() != SKETCH_REGISTERS {
                    return Err(SetPartsError::Registers(registers.len()));
                }
                if let Some((index, &rank)) = registers.iter().enumerate().find(|(_, rank)| **rank > MAX_RANK) {
                    return Err(SetPartsError::Rank { index, rank });
                }
                state.members = Members::Sketch(registers.clone().into_boxed_slice());
            }
        }
        Ok(state)
    }
}

#[inline]
fn add_to_sketch(registers: &mut [u8], spread: u64) {
    let index = (spread >> (64 - PRECISION)) as usize;
    // The rank of the remaining bits: leading zeros plus one, a guard bit bounding it.
    let rest = (spread << PRECISION) | (1 << (PRECISION - 1));
    let rank = rest.leading_zeros() as u8 + 1;
    let register = &mut registers[index];
    *register = (*register).max(rank);
}

/// Ertl's improved estimator ("New cardinality estimation algorithms for
/// HyperLogLog sketches", 2017): unbiased from empty to full without the
/// empirical bias tables of HyperLogLog++ or a switch to linear counting.
fn estimate(registers: &[u8]) -> f64 {
    let q = 64 - PRECISION as usize;
    let mut histogram = [0u32; 64];
    for &rank in registers {
        histogram[rank as usize] += 1;
    }
    let m = SKETCH_REGISTERS as f64;
    let mut z = m * tau(1.0 - f64::from(histogram[q + 1]) / m);
    for k in (1..=q).rev() {
        z = 0.5 * (z + f64::from(histogram[k]));
    }
    z += m * sigma(f64::from(histogram[0]) / m);
    m * m / (2.0 * std::f64::consts::LN_2) / z
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

    fn member(i: u64) -> f64 {
        // Members are 52-bit hashes; any distinct integers below 2^52 do.
        (xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()) >> 12) as f64
    }

    #[test]
    fn counts_exactly_up_to_the_bound_then_estimates_within_the_stated_error() {
        let mut set = SetState::new(1_000);
        for i in 0..1_000 {
            set.record(member(i));
            set.record(member(i));
        }
        assert!(set.is_exact());
        assert_eq!(set.distinct(), 1_000.0);
        for n in [1_001u64, 5_000, 50_000, 500_000] {
            let mut set = SetState::new(1_000);
            for i in 0..n {
                set.record(member(i));
            }
            assert!(!set.is_exact());
            let error = (set.distinct() - n as f64).abs() / n as f64;
            // Four standard errors (0.81 % each).
            assert!(error < 4.0 * 0.0081, "{n}: estimated {} ({error})", set.distinct());
        }
    }

    #[test]
    fn merges_are_unions_exact_within_the_bound() {
        let (mut a, mut b) = (SetState::new(100), SetState::new(100));
        (0..60).for_each(|i| a.record(member(i)));
        (30..90).for_each(|i| b.record(member(i)));
        a.merge(&b);
        assert_eq!((a.is_exact(), a.distinct()), (true, 90.0));
        // Past the bound: the same estimate as one sketch of the union.
        let mut whole = SetState::new(100);
        (0..5_000).for_each(|i| whole.record(member(i)));
        let (mut left, mut right) = (SetState::new(100), SetState::new(100));
        (0..3_000).for_each(|i| left.record(member(i)));
        (2_000..5_000).for_each(|i| right.record(member(i)));
        let mut small = SetState::new(100);
        (4_990..5_000).for_each(|i| small.record(member(i)));
        left.merge(&small);
        left.merge(&right);
        assert_eq!(left.distinct(), whole.distinct());
        small.merge(&right);
        assert!(!small.is_exact());
    }

    #[test]
    fn parts_round_trip_and_are_checked() {
        let mut exact = SetState::new(100);
        (0..50).for_each(|i| exact.record(member(i)));
        assert_eq!(SetState::from_parts(100, &exact.to_parts()).unwrap(), exact);
        let mut sketch = SetState::new(10);
        (0..5_000).for_each(|i| sketch.record(member(i)));
        let back = SetState::from_parts(10, &sketch.to_parts()).unwrap();
        assert_eq!(back.distinct(), sketch.distinct());
        // Exact parts over the receiver's bound become a sketch there.
        assert!(!SetState::from_parts(10, &exact.to_parts()).unwrap().is_exact());
        assert_eq!(
            SetState::from_parts(10, &SetParts::Sketch(vec![0; 3])),
            Err(SetPartsError::Registers(3))
        );
        let mut registers = vec![0; SKETCH_REGISTERS];
        registers[7] = 52;
        assert_eq!(
            SetState::from_parts(10, &SetParts::Sketch(registers)),
            Err(SetPartsError::Rank { index: 7, rank: 52 })
        );
    }
}
