//! Window state of a gauge: last (by event time), min, max, sum and count.
//! A rollup of gauges keeps each input's last value, so its `last` is the sum
//! of the inputs' current values (total memory of a service), not a random pod's.

/// Gauge aggregates of one window.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GaugeState {
    last_timestamp_ms: i64,
    last: f64,
    min: f64,
    max: f64,
    sum: f64,
    count: u64,
    /// Per input series `(series key, timestamp, value)`; only for rollups.
    inputs: Option<Vec<(u64, i64, f64)>>,
}

impl GaugeState {
    /// State for a series' own output.
    pub fn new() -> Self {
        GaugeState {
            last_timestamp_ms: i64::MIN,
            last: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            count: 0,
            inputs: None,
        }
    }

    /// State for a rollup output, which tracks the last value of each input.
    pub fn for_rollup() -> Self {
        GaugeState {
            inputs: Some(Vec::new()),
            ..GaugeState::new()
        }
    }

    /// Folds in one sample of input series `input`. A tie on timestamp keeps the later arrival.
    pub fn record(&mut self, input: u64, value: f64, timestamp_ms: i64) {
        if timestamp_ms >= self.last_timestamp_ms {
            self.last_timestamp_ms = timestamp_ms;
            self.last = value;
        }
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value;
        self.count += 1;
        if let Some(inputs) = &mut self.inputs {
            match inputs.iter_mut().find(|(key, _, _)| *key == input) {
                Some(entry) if timestamp_ms >= entry.1 => *entry = (input, timestamp_ms, value),
                Some(_) => {}
                None => inputs.push((input, timestamp_ms, value)),
            }
        }
    }

    /// Adds `other` (the same output's window from another instance): the
    /// later `last` wins, extremes and sums combine, and a rollup keeps each
    /// input's latest value across both.
    pub fn merge(&mut self, other: &GaugeState) {
        if other.count == 0 {
            return;
        }
        if other.last_timestamp_ms >= self.last_timestamp_ms {
            self.last_timestamp_ms = other.last_timestamp_ms;
            self.last = other.last;
        }
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        self.count += other.count;
        if let (Some(mine), Some(theirs)) = (&mut self.inputs, &other.inputs) {
            for &(input, timestamp_ms, value) in theirs {
                match mine.iter_mut().find(|(key, _, _)| *key == input) {
                    Some(entry) if timestamp_ms >= entry.1 => *entry = (input, timestamp_ms, value),
                    Some(_) => {}
                    None => mine.push((input, timestamp_ms, value)),
                }
            }
        }
    }

    /// Whether this is a rollup's window (it tracks each input's last value).
    pub fn is_rollup(&self) -> bool {
        self.inputs.is_some()
    }

    /// For a rollup, each input seen in the window: `(input, timestamp, value)`
    /// of its latest point (with values held from earlier windows once
    /// [`GaugeState::hold`] added them). Empty for a series' own output.
    pub fn rollup_inputs(&self) -> &[(u64, i64, f64)] {
        self.inputs.as_deref().unwrap_or_default()
    }

    /// For a rollup: counts `input`'s value held from an earlier window in
    /// `last`, unless the window has a point of it. Count, sum and extremes
    /// stay the window's own samples.
    pub fn hold(&mut self, input: u64, timestamp_ms: i64, value: f64) {
        if let Some(inputs) = &mut self.inputs {
            if !inputs.iter().any(|(key, _, _)| *key == input) {
                inputs.push((input, timestamp_ms, value));
            }
        }
    }

    /// The latest value; for a rollup, the sum of each input's latest value.
    pub fn last(&self) -> f64 {
        match &self.inputs {
            Some(inputs) => inputs.iter().map(|(_, _, value)| value).sum(),
            None => self.last,
        }
    }

    /// Smallest sample (NaN-free: ingest refuses NaN).
    pub fn min(&self) -> f64 {
        self.min
    }

    /// Largest sample.
    pub fn max(&self) -> f64 {
        self.max
    }

    /// Sum of samples.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Count-weighted mean.
    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }
}

impl Default for GaugeState {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_follows_event_time_not_arrival() {
        let mut state = GaugeState::new();
        state.record(1, 5.0, 2_000);
        state.record(1, 9.0, 1_000);
        state.record(1, 7.0, 2_000);
        assert_eq!(state.last(), 7.0);
        assert_eq!((state.min(), state.max(), state.count()), (5.0, 9.0, 3));
        assert_eq!(state.mean(), 7.0);
    }

    #[test]
    fn merged_rollup_keeps_each_inputs_latest_across_parts() {
        let mut left = GaugeState::for_rollup();
        left.record(1, 100.0, 1_000);
        left.record(2, 50.0, 1_500);
        let mut right = GaugeState::for_rollup();
        right.record(3, 7.0, 1_100);
        right.record(1, 120.0, 2_000);
        left.merge(&right);
        assert_eq!(left.last(), 177.0);
        assert_eq!(
            (left.min(), left.max(), left.count(), left.sum()),
            (7.0, 120.0, 4, 277.0)
        );
        let mut empty = GaugeState::new();
        empty.merge(&GaugeState::new());
        assert_eq!(empty.count(), 0);
    }

    #[test]
    fn rollup_last_sums_each_inputs_latest() {
        let mut state = GaugeState::for_rollup();
        state.record(1, 100.0, 1_000);
        state.record(2, 50.0, 1_500);
        state.record(1, 120.0, 2_000);
        state.record(2, 10.0, 1_200);
        assert_eq!(state.last(), 170.0);
        assert_eq!(state.sum(), 280.0);
    }
}
