//! Label sets: sorted name/value pairs with the metric name in `__name__`,
//! hashed once into the 64-bit series key every later stage uses.

use std::fmt;
use std::hash::Hasher;

use xxhash_rust::xxh3::Xxh3;

/// The label that carries the metric name, as in Prometheus.
pub const METRIC_NAME_LABEL: &str = "__name__";

/// One label.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// Label name, e.g. `service`.
    pub name: Box<str>,
    /// Label value, e.g. `api`.
    pub value: Box<str>,
}

/// A label set sorted by name. Duplicates are the caller's to refuse (ingest
/// validates); `Labels` itself only keeps the order canonical.
///
/// ```
/// use tailfold::model::Labels;
/// let labels = Labels::from_pairs([("service", "api"), ("__name__", "latency")]);
/// assert_eq!(labels.metric_name(), Some("latency"));
/// assert_eq!(labels.to_string(), r#"latency{service="api"}"#);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Labels(Vec<Label>);

impl Labels {
    /// Builds a sorted label set from pairs in any order.
    pub fn from_pairs<N: Into<Box<str>>, V: Into<Box<str>>>(pairs: impl IntoIterator<Item = (N, V)>) -> Self {
        Self::from_vec(
            pairs
                .into_iter()
                .map(|(name, value)| Label {
                    name: name.into(),
                    value: value.into(),
                })
                .collect(),
        )
    }

    /// Sorts `labels` by name and keeps them.
    pub fn from_vec(mut labels: Vec<Label>) -> Self {
        labels.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Labels(labels)
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|label| (*label.name).cmp(name))
            .ok()
            .map(|index| &*self.0[index].value)
    }

    /// The metric name (`__name__`).
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME_LABEL)
    }

    /// Labels in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.iter()
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no labels at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A copy with `name` set to `value` (added or replaced).
    pub fn with(&self, name: &str, value: &str) -> Labels {
        let mut labels = self.0.clone();
        match labels.binary_search_by(|label| (*label.name).cmp(name)) {
            Ok(index) => labels[index].value = value.into(),
            Err(index) => labels.insert(
                index,
                Label {
                    name: name.into(),
                    value: value.into(),
                },
            ),
        }
        Labels(labels)
    }

    /// A copy keeping only the labels for which `keep` is true.
    pub fn filtered(&self, mut keep: impl FnMut(&str) -> bool) -> Labels {
        Labels(self.0.iter().filter(|label| keep(&label.name)).cloned().collect())
    }

    /// Bytes owned on the heap (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<Label>()
            + self
                .0
                .iter()
                .map(|label| label.name.len() + label.value.len())
                .sum::<usize>()
    }
}

impl fmt::Display for Labels {
    /// Prometheus exposition style: `name{a="1",b="2"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.metric_name().unwrap_or(""))?;
        f.write_str("{")?;
        let mut first = true;
        for label in self.0.iter().filter(|l| &*l.name != METRIC_NAME_LABEL) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{}={:?}", label.name, &*label.value)?;
        }
        f.write_str("}")
    }
}

/// Hasher for maps keyed by series keys: they are already xxh3 hashes, so
/// hashing them again (SipHash, the std default) would only cost time.
#[derive(Default)]
pub struct SeriesKeyHasher(u64);

impl Hasher for SeriesKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// A series' identity: a 64-bit key for maps and a 128-bit fingerprint that
/// caches compare instead of the labels (a 128-bit collision is not a practical
/// concern; a 64-bit one, over millions of series, could be).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    /// Low 64 bits of the fingerprint: the key of every series-keyed map.
    pub hash: u64,
    /// The whole 128-bit xxh3 of tenant and labels.
    pub fingerprint: u128,
}

/// The series identity: one xxh3-128 pass over the tenant and the sorted
/// labels, computed once per series per batch; every later stage keys on it.
///
/// The bytes hashed are the tenant, then each label's name and value, with
/// separators that cannot occur in UTF-8 (so ("a","bc") differs from
/// ("ab","c")). Usual label sets are copied into a stack buffer and hashed in
/// one shot, which is several times cheaper than streaming two dozen small
/// pieces; longer ones are streamed. Both give the same key.
pub fn series_key(tenant: &str, labels: &Labels) -> SeriesKey {
    let mut buffer = [0u8; KEY_BUFFER_BYTES];
    let mut len = 0;
    let mut fits = true;
    identity_bytes(tenant, labels, |bytes| {
        let end = len + bytes.len();
        if fits && end <= KEY_BUFFER_BYTES {
            buffer[len..end].copy_from_slice(bytes);
            len = end;
        } else {
            fits = false;
        }
    });
    if !fits {
        return streamed_series_key(tenant, labels);
    }
    key_of(xxhash_rust::xxh3::xxh3_128(&buffer[..len]))
}

/// Label text (with separators) hashed from the stack; longer sets are streamed.
const KEY_BUFFER_BYTES: usize = 256;

/// Hands `put` the bytes that identify a series, in order: the one byte
/// layout both ways of hashing share.
#[inline]
fn identity_bytes(tenant: &str, labels: &Labels, mut put: impl FnMut(&[u8])) {
    put(tenant.as_bytes());
    put(&[0xff]);
    for label in labels.iter() {
        put(label.name.as_bytes());
        put(&[0xfe]);
        put(label.value.as_bytes());
        put(&[0xff]);
    }
}

fn streamed_series_key(tenant: &str, labels: &Labels) -> SeriesKey {
    let mut hasher = Xxh3::new();
    identity_bytes(tenant, labels, |bytes| hasher.update(bytes));
    key_of(hasher.digest128())
}

fn key_of(fingerprint: u128) -> SeriesKey {
    SeriesKey {
        hash: fingerprint as u64,
        fingerprint,
    }
}

/// The 64-bit series key of [`series_key`].
pub fn series_hash(tenant: &str, labels: &Labels) -> u64 {
    series_key(tenant, labels).hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_does_not_change_identity() {
        let a = Labels::from_pairs([("b", "2"), ("a", "1"), ("__name__", "m")]);
        let b = Labels::from_pairs([("__name__", "m"), ("a", "1"), ("b", "2")]);
        assert_eq!(a, b);
        assert_eq!(series_hash("t", &a), series_hash("t", &b));
        assert_ne!(series_hash("t", &a), series_hash("u", &a));
    }

    #[test]
    fn one_shot_and_streamed_keys_agree() {
        let short = Labels::from_pairs([("__name__", "requests"), ("service", "api"), ("status", "200")]);
        assert_eq!(series_key("tenant", &short), streamed_series_key("tenant", &short));
        let long_value = "v".repeat(KEY_BUFFER_BYTES);
        let long = Labels::from_pairs([("__name__", "requests"), ("pod", long_value.as_str())]);
        assert_eq!(series_key("tenant", &long), streamed_series_key("tenant", &long));
        assert_ne!(series_key("tenant", &short), series_key("tenant", &long));
        // Exactly at the buffer's edge, and one byte past it.
        for extra in [0, 1] {
            let fill = "x".repeat(KEY_BUFFER_BYTES - "t".len() - 1 - "a".len() - 2 + extra);
            let edge = Labels::from_pairs([("a", fill.as_str())]);
            assert_eq!(series_key("t", &edge), streamed_series_key("t", &edge));
        }
    }

    #[test]
    fn hash_separates_boundaries() {
        let a = Labels::from_pairs([("a", "bc")]);
        let b = Labels::from_pairs([("ab", "c")]);
        assert_ne!(series_hash("", &a), series_hash("", &b));
    }

    #[test]
    fn with_and_filtered() {
        let labels = Labels::from_pairs([("__name__", "m"), ("pod", "p1"), ("svc", "api")]);
        let renamed = labels.with("__name__", "m:by_svc").filtered(|n| n != "pod");
        assert_eq!(renamed.to_string(), r#"m:by_svc{svc="api"}"#);
        assert_eq!(labels.with("quantile", "0.99").get("quantile"), Some("0.99"));
    }
}
