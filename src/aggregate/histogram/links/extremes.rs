//! The k slowest (or fastest) traced samples of a window, kept exactly: what
//! `above(t)` and `below(t)` select, ranked.

use serde::{Deserialize, Serialize};

use crate::aggregate::exemplar::Exemplar;

/// Up to `cap` traced samples with the largest values (`slowest`) or the
/// smallest (`!slowest`), most extreme first. Exact: a sample is kept
/// unless `cap` kept samples are all more extreme than it (or as extreme and
/// earlier), so the list is always the `cap` most extreme traced samples seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Extremes {
    kept: Vec<Exemplar>,
}

/// Whether `a` is strictly more extreme than `b` in the list's direction.
#[inline]
fn beyond(a: f64, b: f64, slowest: bool) -> bool {
    if slowest {
        a > b
    } else {
        a < b
    }
}

impl Extremes {
    /// Offers a traced sample. O(1) unless it enters the list, then O(cap).
    #[inline]
    pub fn offer(&mut self, exemplar: Exemplar, cap: usize, slowest: bool) {
        if cap == 0 {
            return;
        }
        if self.kept.len() == cap {
            let last = self.kept[cap - 1].value;
            if !beyond(exemplar.value, last, slowest) {
                return;
            }
            self.kept.pop();
        } else if self.kept.capacity() == 0 {
            self.kept.reserve_exact(cap.min(4));
        } else if self.kept.len() == self.kept.capacity() {
            // Grow by half up to the cap: a small window keeps few.
            let want = (self.kept.len() + self.kept.len() / 2).clamp(4, cap);
            self.kept.reserve_exact(want - self.kept.len());
        }
        // After the samples at least as extreme, so ties keep arrival order.
        let at = self
            .kept
            .partition_point(|kept| !beyond(exemplar.value, kept.value, slowest));
        self.kept.insert(at, exemplar);
    }

    /// Adds every sample of `other` (kept with the same direction), keeping
    /// the `cap` most extreme of the union: exact, as if one list saw both streams.
    pub fn merge(&mut self, other: &Extremes, cap: usize, slowest: bool) {
        for exemplar in &other.kept {
            self.offer(*exemplar, cap, slowest);
        }
    }

    /// The kept samples, most extreme first.
    pub fn kept(&self) -> &[Exemplar] {
        &self.kept
    }

    /// Forgets every sample, keeping the capacity.
    pub fn clear(&mut self) {
        self.kept.clear();
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.kept.capacity() * size_of::<Exemplar>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(value: f64, tag: u8) -> Exemplar {
        Exemplar {
            trace_id: [tag; 16],
            span_id: [tag; 8],
            value,
            timestamp_ms: i64::from(tag),
        }
    }

    fn values(list: &Extremes) -> Vec<f64> {
        list.kept().iter().map(|e| e.value).collect()
    }

    #[test]
    fn keeps_exactly_the_most_extreme_in_order() {
        let data = [1.497, 1.2, 1.505, 3.0, 0.1, 2.5, 1.497, 9.0, 0.05];
        let mut slow = Extremes::default();
        let mut fast = Extremes::default();
        for (tag, value) in data.iter().enumerate() {
            slow.offer(ex(*value, tag as u8), 4, true);
            fast.offer(ex(*value, tag as u8), 3, false);
        }
        assert_eq!(values(&slow), vec![9.0, 3.0, 2.5, 1.505]);
        assert_eq!(values(&fast), vec![0.05, 0.1, 1.2]);
        // Ties keep arrival order: the first 1.497 ranks before the second.
        let mut ties = Extremes::default();
        for (tag, value) in [(1, 1.497), (2, 1.497), (3, 1.0)] {
            ties.offer(ex(value, tag), 2, true);
        }
        assert_eq!(
            ties.kept().iter().map(|e| e.trace_id[0]).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn merging_equals_one_list_over_both_streams() {
        let (mut a, mut b, mut both) = (Extremes::default(), Extremes::default(), Extremes::default());
        for i in 0..40u8 {
            let value = f64::from((i as u32 * 37) % 41);
            if i % 3 == 0 { &mut a } else { &mut b }.offer(ex(value, i), 10, true);
            both.offer(ex(value, i), 10, true);
        }
        a.merge(&b, 10, true);
        assert_eq!(values(&a), values(&both));
        assert!(a.heap_bytes() >= 10 * size_of::<Exemplar>());
    }
}
