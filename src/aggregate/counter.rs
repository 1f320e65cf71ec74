//! Window state of a delta counter: the sum of deltas and how many arrived.
//! Rate is derived at flush from the true window length, never averaged.

/// Sum and sample count of counter deltas in one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CounterState {
    /// Sum of the deltas.
    pub sum: f64,
    /// Number of deltas folded in.
    pub count: u64,
}

impl CounterState {
    /// Folds in one delta.
    #[inline]
    pub fn record(&mut self, delta: f64) {
        self.record_n(delta, 1);
    }

    /// Folds in `n` equal deltas at once (a sampled sender's point).
    #[inline]
    pub fn record_n(&mut self, delta: f64, n: u32) {
        self.sum += delta * f64::from(n);
        self.count += u64::from(n);
    }

    /// Per-second rate over a window of `window_ms`.
    pub fn rate(&self, window_ms: u64) -> f64 {
        self.sum / (window_ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_rates_over_the_window_length() {
        let mut state = CounterState::default();
        for delta in [1.0, 2.0, 7.0] {
            state.record(delta);
        }
        assert_eq!(state.sum, 10.0);
        assert_eq!(state.count, 3);
        assert_eq!(state.rate(10_000), 1.0);
        assert_eq!(state.rate(60_000), 10.0 / 60.0);
    }
}
