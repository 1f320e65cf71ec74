//! Histogram settings and their checks: scale, bucket limit, zero bucket
//! and how many exemplar reservoirs a histogram keeps.

use super::mapping::{MAX_SCALE, MIN_SCALE};

/// Invalid histogram configuration.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum HistogramError {
    /// `scale` outside `MIN_SCALE..=MAX_SCALE`.
    #[error("scale {0} is outside the supported range -10..=8")]
    ScaleOutOfRange(i8),
    /// `max_buckets` below 2.
    #[error("max_buckets {0} is below the minimum of 2")]
    TooFewBuckets(usize),
    /// `zero_threshold` negative, NaN or infinite.
    #[error("zero_threshold {0} must be finite and non-negative")]
    InvalidZeroThreshold(f64),
    /// `exemplar_scale_reduction` above `MAX_EXEMPLAR_SCALE_REDUCTION`.
    #[error("exemplar_scale_reduction {0} is above the maximum of 18")]
    ExemplarScaleReductionOutOfRange(u8),
    /// `max_exemplars` between 1 and `MIN_MAX_EXEMPLARS - 1`.
    #[error("max_exemplars {0} is below the minimum of 8 (0 turns the limit off)")]
    TooFewExemplars(u32),
}

/// Smallest non-zero `max_exemplars`: at the coarsest scale a sign spans at
/// most three buckets, so the limit can always be met by coarsening.
pub const MIN_MAX_EXEMPLARS: u32 = 8;

/// Largest `exemplar_scale_reduction`: `MAX_SCALE - MIN_SCALE`, one reservoir
/// per bucket of the coarsest scale even for a histogram at the finest.
pub const MAX_EXEMPLAR_SCALE_REDUCTION: u8 = (MAX_SCALE - MIN_SCALE) as u8;

/// Histogram settings; `Default` is the single place defaults live.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HistogramConfig {
    /// Starting (finest) scale; the histogram only ever downscales from it.
    pub scale: i8,
    /// Maximum populated index range per sign before downscaling kicks in.
    /// At `MIN_SCALE` it cannot be enforced below 3 (the whole `f64` range).
    pub max_buckets: usize,
    /// Values with `|v| <= zero_threshold` go to the zero bucket.
    pub zero_threshold: f64,
    /// 0: one exemplar reservoir per bucket, so a quantile's exemplar lies in
    /// the quantile's own bucket. `n > 0`: one reservoir per `2^n` adjacent
    /// buckets (the bucket at scale `scale() - n` holding them), so a
    /// quantile's exemplar lies in that coarser bucket around the quantile's:
    /// far fewer exemplars kept in a small window, at a looser link.
    pub exemplar_scale_reduction: u8,
    /// Most exemplar reservoirs kept over both signs (0: no limit). When a new
    /// reservoir would exceed it, every reservoir is re-keyed one scale
    /// coarser and those that meet merge, as often as needed; each kept
    /// exemplar stays a uniform pick of its (wider) bucket's traced samples.
    pub max_exemplars: u32,
}

impl Default for HistogramConfig {
    fn default() -> Self {
        Self {
            // base 2^(1/64): worst-case relative error ~0.54%.
            scale: 6,
            // 2048 buckets at scale 6 span 2^32 (e.g. 1us..71min) before downscaling.
            max_buckets: 2048,
            zero_threshold: 0.0,
            exemplar_scale_reduction: 0,
            // 24 reservoirs of 48 bytes keep a 100-sample window within 2 KiB.
            max_exemplars: 24,
        }
    }
}

impl HistogramConfig {
    /// Checks every field, reporting the first bad one.
    pub fn validate(&self) -> Result<(), HistogramError> {
        if !(MIN_SCALE..=MAX_SCALE).contains(&self.scale) {
            return Err(HistogramError::ScaleOutOfRange(self.scale));
        }
        if self.max_buckets < 2 {
            return Err(HistogramError::TooFewBuckets(self.max_buckets));
        }
        if !(self.zero_threshold.is_finite() && self.zero_threshold >= 0.0) {
            return Err(HistogramError::InvalidZeroThreshold(self.zero_threshold));
        }
        if self.exemplar_scale_reduction > MAX_EXEMPLAR_SCALE_REDUCTION {
            return Err(HistogramError::ExemplarScaleReductionOutOfRange(
                self.exemplar_scale_reduction,
            ));
        }
        if (1..MIN_MAX_EXEMPLARS).contains(&self.max_exemplars) {
            return Err(HistogramError::TooFewExemplars(self.max_exemplars));
        }
        Ok(())
    }

    /// The nearest valid configuration (used by the infallible constructor).
    pub(super) fn sanitized(self) -> Self {
        let zero_threshold = if self.zero_threshold.is_nan() {
            0.0
        } else {
            self.zero_threshold.clamp(0.0, f64::MAX)
        };
        Self {
            scale: self.scale.clamp(MIN_SCALE, MAX_SCALE),
            max_buckets: self.max_buckets.max(2),
            zero_threshold,
            exemplar_scale_reduction: self.exemplar_scale_reduction.min(MAX_EXEMPLAR_SCALE_REDUCTION),
            max_exemplars: match self.max_exemplars {
                0 => 0,
                n => n.max(MIN_MAX_EXEMPLARS),
            },
        }
    }
}
