//! Value-to-bucket mapping for base-2 exponential buckets (OTLP `MapToIndex`).
//! Bucket `i` at scale `s` covers `(base^i, base^(i+1)]` with `base = 2^(2^-s)`.

use std::f64::consts::{LN_2, LOG2_E};

/// Coarsest supported scale (base `2^1024`: three buckets cover every `f64`).
pub const MIN_SCALE: i8 = -10;
/// Finest supported scale (base `2^(1/256)`).
pub const MAX_SCALE: i8 = 8;

/// How close (in units of one bucket) the logarithm estimate may come to a
/// boundary before it is re-checked exactly. `ln` is accurate to a few ulp, so
/// the estimate is off by far less than this (~1e-10 at the largest indices).
const NEAR_BOUNDARY: f64 = 1e-7;

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

/// Exact test of `m * 2^e > lower_bound(index)` with no rounding involved.
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
/// Bucket `i` holds `(base^i, base^(i+1)]`. Powers of two are exact
/// (`2^k` maps to `(k << s) - 1` for `s > 0`, `(k - 1) >> -s` otherwise), and
/// every other value is exact too: the logarithm estimate is re-checked
/// against the boundary mantissa whenever it lands near a boundary. Zero maps
/// to the lowest index, NaN and infinity to the highest; neither ever reaches
/// a histogram bucket.
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
