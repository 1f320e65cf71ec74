//! Value-to-bucket mapping for base-2 exponential buckets (OTLP `MapToIndex`).
//! Bucket `i` at scale `s` covers `(base^i, base^(i+1)]` with `base = 2^(2^-s)`.

use std::f64::consts::LN_2;
#[cfg(test)]
use std::f64::consts::LOG2_E;
use std::sync::LazyLock;

/// Coarsest supported scale (base `2^1024`: three buckets cover every `f64`).
pub const MIN_SCALE: i8 = -10;
/// Finest supported scale (base `2^(1/256)`).
pub const MAX_SCALE: i8 = 8;

const MANTISSA_MASK: u64 = (1 << 52) - 1;
const EXPONENT_ONE: u64 = 1023 << 52;

fn clamp_scale(scale: i8) -> i32 {
    i32::from(scale.clamp(MIN_SCALE, MAX_SCALE))
}

/// Splits finite `v > 0` into `(e, m)` with `v = m * 2^e` and `m` in `[1, 2)`,
/// exactly, subnormals included (they are renormalised).
fn split(v: f64) -> (i32, f64) {
    let bits = v.to_bits();
    let exp_field = ((bits >> 52) & 0x7ff) as i32;
    let mantissa = bits & MANTISSA_MASK;
    if exp_field == 0 {
        // Subnormal: v = mantissa * 2^-1074; shift the leading one up to bit 52.
        let top = 63 - mantissa.leading_zeros() as i32;
        let m = (mantissa << (52 - top)) & MANTISSA_MASK;
        (top - 1074, f64::from_bits(m | EXPONENT_ONE))
    } else {
        (exp_field - 1023, f64::from_bits(mantissa | EXPONENT_ONE))
    }
}

/// `2^(r / 2^s)` for `0 <= r < 2^s`: the mantissa of a bucket's lower bound.
/// Every scale computes it from the same `r / 2^s` (exact), so a boundary at a
/// coarse scale is bit-identical to the same boundary at a finer scale, which
/// is what makes downscaling (`index >> 1`) exact.
fn mantissa_bound(s: i32, r: i64) -> f64 {
    if r == 0 {
        1.0
    } else {
        (r as f64 / f64::from(1u32 << s)).exp2()
    }
}

/// `2^q` for `-1022 <= q <= 1023`.
fn pow2(q: i64) -> f64 {
    f64::from_bits(((q + 1023) as u64) << 52)
}

/// `m * 2^q` for `m` in `[1, 2)`, rounded once (only below `2^-1022`).
fn ldexp(m: f64, q: i64) -> f64 {
    if q > 1023 {
        f64::INFINITY
    } else if q >= -1022 {
        m * pow2(q)
    } else if q < -1100 {
        0.0
    } else {
        // Two steps so that only the last product (the subnormal one) rounds.
        (m * pow2(-1022)) * pow2(q + 1022)
    }
}

/// Splits a bucket index into the exponent and mantissa of its lower bound.
fn lower_parts(s: i32, index: i64) -> (i64, f64) {
    if s > 0 {
        (index >> s, mantissa_bound(s, index & ((1 << s) - 1)))
    } else {
        (index << -s, 1.0)
    }
}

/// Exact test of `m * 2^e > lower_bound(index)` with no rounding involved
/// (the reference mapping's correction step).
#[cfg(test)]
fn above_lower(s: i32, index: i64, e: i32, m: f64) -> bool {
    let (q, mb) = lower_parts(s, index);
    let e = i64::from(e);
    e > q || (e == q && m > mb)
}

/// Lowest index at scale `s`: the bucket of the smallest subnormal, `2^-1074`.
fn min_index(s: i32) -> i32 {
    if s > 0 {
        (-1074 << s) - 1
    } else {
        -1075 >> -s
    }
}

/// Highest index at scale `s`: the bucket of `f64::MAX`.
fn max_index(s: i32) -> i32 {
    if s > 0 {
        (1024 << s) - 1
    } else {
        1023 >> -s
    }
}

/// Bucket index of `|value|` at `scale` (clamped into `MIN_SCALE..=MAX_SCALE`).
///
/// Bucket `i` holds `(base^i, base^(i+1)]`. Every value maps exactly, with no
/// logarithm: the exponent bits give the octave and, at positive scales, the
/// top eight mantissa bits pick a starting bucket within it from a table,
/// which at most a couple of exact comparisons against the octave's boundary
/// mantissas then correct (see [`OctaveTable`]). Powers of two are exact
/// (`2^k` maps to `(k << s) - 1` for `s > 0`, `(k - 1) >> -s` otherwise).
/// Zero maps to the lowest index, NaN and infinity to the highest; neither
/// ever reaches a histogram bucket.
pub fn bucket_index(scale: i8, value: f64) -> i32 {
    let s = clamp_scale(scale);
    let v = value.abs();
    if v == 0.0 {
        return min_index(s);
    }
    if !v.is_finite() {
        return max_index(s);
    }
    let (e, m) = split(v);
    let pow_of_two = m == 1.0;
    if s <= 0 {
        // Buckets are whole octaves: exponent arithmetic only (OTLP MapToIndex).
        let e = if pow_of_two { e - 1 } else { e };
        return e >> -s;
    }
    if pow_of_two {
        return (e << s) - 1;
    }
    (e << s) + OCTAVES[(s - 1) as usize].bucket_of(m)
}

/// Mantissa bits that index an [`OctaveTable`]'s starting buckets.
const BIN_BITS: u32 = 8;

/// One octave `[1, 2)` at a positive scale `s`: the lower-bound mantissas of
/// its `2^s` buckets (from [`mantissa_bound`], so bit-identical to what
/// [`bucket_bounds`] and downscaling use), and for each of the `2^BIN_BITS`
/// equal mantissa bins the bucket that holds the bin's start. A bin is never
/// wider than two buckets at scale 8 (bucket widths run from `ln 2 / 256` to
/// `2 ln 2 / 256`), so the walk up from the start is short.
struct OctaveTable {
    /// `bounds[r]` = lower bound of bucket `r` for `r < 2^s`, then `2.0`.
    bounds: Vec<f64>,
    /// Bucket of the mantissa `1 + b / 2^BIN_BITS`.
    first_bucket: Vec<u16>,
}

impl OctaveTable {
    fn new(s: i32) -> Self {
        let buckets = 1i64 << s;
        let mut bounds: Vec<f64> = (0..buckets).map(|r| mantissa_bound(s, r)).collect();
        bounds.push(2.0);
        let first_bucket = (0..1u64 << BIN_BITS)
            .map(|bin| {
                let start = 1.0 + bin as f64 / (1u64 << BIN_BITS) as f64;
                // The last bucket whose lower bound lies below the bin's start (0 for the first bin).
                bounds[..buckets as usize]
                    .iter()
                    .rposition(|bound| *bound < start)
                    .unwrap_or(0) as u16
            })
            .collect();
        OctaveTable { bounds, first_bucket }
    }

    /// Bucket of mantissa `m` in `(1, 2)`: the last `r` with `m > bounds[r]`.
    #[inline]
    fn bucket_of(&self, m: f64) -> i32 {
        let bin = ((m.to_bits() & MANTISSA_MASK) >> (52 - BIN_BITS)) as usize;
        let mut r = usize::from(self.first_bucket[bin]);
        while m > self.bounds[r + 1] {
            r += 1;
        }
        r as i32
    }
}

/// The octave tables of scales `1..=MAX_SCALE`, built on first use.
static OCTAVES: LazyLock<Vec<OctaveTable>> =
    LazyLock::new(|| (1..=i32::from(MAX_SCALE)).map(OctaveTable::new).collect());

/// The logarithm-based mapping `bucket_index` replaced, kept as the reference
/// the tables are checked against.
#[cfg(test)]
fn bucket_index_by_log(scale: i8, value: f64) -> i32 {
    /// How close (in units of one bucket) the estimate may come to a boundary
    /// before it is re-checked exactly.
    const NEAR_BOUNDARY: f64 = 1e-7;
    let s = clamp_scale(scale);
    let v = value.abs();
    let (e, m) = split(v);
    if s <= 0 || m == 1.0 || v == 0.0 || !v.is_finite() {
        return bucket_index(scale, value);
    }
    let x = v.ln() * (LOG2_E * f64::from(1u32 << s));
    let floor = x.floor();
    let mut index = floor as i32;
    let frac = x - floor;
    if !(NEAR_BOUNDARY..=1.0 - NEAR_BOUNDARY).contains(&frac) {
        let (lo, hi) = (min_index(s), max_index(s));
        while index > lo && !above_lower(s, i64::from(index), e, m) {
            index -= 1;
        }
        while index < hi && above_lower(s, i64::from(index) + 1, e, m) {
            index += 1;
        }
    }
    index
}

/// Bounds `(lower, upper)` of bucket `index` at `scale`; the bucket holds
/// magnitudes in `(lower, upper]`.
///
/// Exact for normal floats. Below `2^-1022` the bounds are rounded to the
/// nearest subnormal, so there a value may equal its rounded lower bound;
/// `bucket_index` itself stays exact. Out-of-range indices saturate to `0.0`
/// or `f64::INFINITY`.
pub fn bucket_bounds(scale: i8, index: i32) -> (f64, f64) {
    let s = clamp_scale(scale);
    let index = i64::from(index);
    let (q, m) = lower_parts(s, index);
    let (q1, m1) = lower_parts(s, index + 1);
    (ldexp(m, q), ldexp(m1, q1))
}

/// Worst-case relative error `(base - 1) / (base + 1)` of a bucket's
/// representative value (see `ExpHistogram::quantile`) at `scale`.
pub fn relative_error(scale: i8) -> f64 {
    // tanh(ln(base) / 2) is the same ratio but stays finite when base overflows.
    let ln_base = LN_2 * (-f64::from(clamp_scale(scale))).exp2();
    (ln_base / 2.0).tanh()
}

/// The value reported for a bucket `(l, u]`: the harmonic mean `2lu / (l + u)`,
/// whose relative distance to any point of the bucket is at most
/// `relative_error`. Written so that `l * u` cannot overflow.
pub(crate) fn representative(l: f64, u: f64) -> f64 {
    l * (2.0 / (1.0 + l / u))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn tables_agree_with_the_logarithm_and_with_every_boundary() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        for scale in 1..=MAX_SCALE {
            for _ in 0..20_000 {
                // Log-uniform over most of the range, subnormals included.
                let value = (rng.random_range(-1070.0..1020.0f64)).exp2() * rng.random_range(1.0..2.0);
                assert_eq!(
                    bucket_index(scale, value),
                    bucket_index_by_log(scale, value),
                    "{value} at {scale}"
                );
            }
            // Each boundary belongs to the bucket below it, its next float to the bucket above.
            for index in [-3_000, -1, 0, 1, 17, 255, 256, 1_000, 77_777] {
                let (lower, upper) = bucket_bounds(scale, index);
                if lower > f64::MIN_POSITIVE && upper.is_finite() {
                    assert_eq!(bucket_index(scale, upper), index, "upper bound of {index} at {scale}");
                    assert_eq!(bucket_index(scale, f64::from_bits(upper.to_bits() + 1)), index + 1);
                    assert_eq!(bucket_index(scale, f64::from_bits(lower.to_bits() + 1)), index);
                }
            }
        }
    }
}
