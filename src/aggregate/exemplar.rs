//! Exemplars: traced samples a histogram bucket remembers so that an aggregate
//! (say a p99 latency) can be linked back to one concrete trace.

use rand::Rng;

/// One traced sample remembered by a histogram bucket.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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
        if offer_keeps(&mut self.seen, rng) {
            self.exemplar = exemplar;
        }
    }

    /// Folds in another reservoir of the same bucket, keeping uniformity over
    /// the union; `index` is left as it is.
    pub fn absorb<R: Rng + ?Sized>(&mut self, other: &ExemplarSlot, rng: &mut R) {
        if absorb_takes(&mut self.seen, other.seen, rng) {
            self.exemplar = other.exemplar;
        }
    }
}

/// The reservoir rule of [`ExemplarSlot::offer`] on a bare count (for packed
/// slots): counts one more traced sample and says whether to keep it.
pub fn offer_keeps<R: Rng + ?Sized>(seen: &mut u64, rng: &mut R) -> bool {
    *seen = seen.saturating_add(1);
    rng.random_range(0..*seen) == 0
}

/// The rule of [`ExemplarSlot::absorb`] on bare counts: adds `other_seen` to
/// `seen` and says whether the other reservoir's exemplar replaces this one's.
pub fn absorb_takes<R: Rng + ?Sized>(seen: &mut u64, other_seen: u64, rng: &mut R) -> bool {
    if other_seen == 0 {
        return false;
    }
    // A slot built by hand with seen == 0 holds nothing worth keeping.
    let total = seen.saturating_add(other_seen);
    let take = *seen == 0 || rng.random_range(0..total) >= *seen;
    *seen = total;
    take
}
