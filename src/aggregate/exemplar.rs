//! Exemplars: traced samples a histogram bucket remembers so that an aggregate
//! (say a p99 latency) can be linked back to one concrete trace.

use rand::Rng;

/// One traced sample remembered by a histogram bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exemplar {
    /// W3C trace id of the sample.
    pub trace_id: [u8; 16],
    /// Span id of the sample; all zero means absent.
    pub span_id: [u8; 8],
    /// The sampled value (a histogram overwrites it with the recorded value).
    pub value: f64,
    /// When the sample was taken, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

impl Exemplar {
    /// Whether a span id is present (the all-zero id means absent).
    pub fn has_span_id(&self) -> bool {
        self.span_id != [0; 8]
    }
}

/// A reservoir of size one for one histogram bucket.
///
/// Invariant: `exemplar` is uniformly distributed over the `seen` traced
/// samples that fell in bucket `index`. Offering the n-th sample keeps it with
/// probability 1/n (classic reservoir sampling). Absorbing another slot keeps
/// this slot's exemplar with probability `seen1 / (seen1 + seen2)`: each
/// sample of this slot then survives with `(1/seen1) * seen1/(seen1+seen2)`,
/// each of the other with `(1/seen2) * seen2/(seen1+seen2)`, i.e. both
/// `1/(seen1+seen2)`, so merging (histogram merge or downscaling) stays uniform.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExemplarSlot {
    /// Bucket index at the owning histogram's current scale.
    pub index: i32,
    /// Number of traced samples that fell in this bucket.
    pub seen: u64,
    /// The kept exemplar.
    pub exemplar: Exemplar,
}

impl ExemplarSlot {
    /// A slot holding its first traced sample.
    pub fn new(index: i32, exemplar: Exemplar) -> Self {
        Self {
            index,
            seen: 1,
            exemplar,
        }
    }

    /// Offers one more traced sample; it is kept with probability `1/seen`.
    pub fn offer<R: Rng + ?Sized>(&mut self, exemplar: Exemplar, rng: &mut R) {
        self.seen = self.seen.saturating_add(1);
        if rng.random_range(0..self.seen) == 0 {
            self.exemplar = exemplar;
        }
    }

    /// Folds in another reservoir of the same bucket, keeping uniformity over
    /// the union; `index` is left as it is.
    pub fn absorb<R: Rng + ?Sized>(&mut self, other: &ExemplarSlot, rng: &mut R) {
        if other.seen == 0 {
            return;
        }
        // A slot built by hand with seen == 0 holds nothing worth keeping.
        let total = self.seen.saturating_add(other.seen);
        if self.seen == 0 || rng.random_range(0..total) >= self.seen {
            self.exemplar = other.exemplar;
        }
        self.seen = total;
    }
}
