//! Label sets: sorted name/value pairs with the metric name in `__name__`,
//! kept in one heap block and hashed once into the 64-bit series key every
//! later stage uses.

use std::fmt;
use std::hash::Hasher;
use std::ops::Range;

use smallvec::SmallVec;
use xxhash_rust::xxh3::Xxh3;

/// The label that carries the metric name, as in Prometheus.
pub const METRIC_NAME_LABEL: &str = "__name__";

/// One owned label: the input to [`Labels::from_vec`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// Label name, e.g. `service`.
    pub name: Box<str>,
    /// Label value, e.g. `api`.
    pub value: Box<str>,
}

/// One label of a [`Labels`], borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelRef<'a> {
    /// Label name, e.g. `service`.
    pub name: &'a str,
    /// Label value, e.g. `api`.
    pub value: &'a str,
}

impl LabelRef<'_> {
    /// An owned copy.
    pub fn to_label(self) -> Label {
        Label {
            name: self.name.into(),
            value: self.value.into(),
        }
    }
}

/// Separator after each name in the label text (never occurs in UTF-8).
const NAME_END: u8 = 0xfe;
/// Separator after each value in the label text (never occurs in UTF-8).
const VALUE_END: u8 = 0xff;

/// A label set sorted by name. Duplicates are the caller's to refuse (ingest
/// validates); `Labels` itself only keeps the order canonical.
///
/// The whole set is one heap block (none when empty), so a series costs one
/// allocation for its labels rather than two per label plus a vector:
///
/// ```text
/// [width: u8] [count: W] [name_end_0: W] [value_end_0: W] ... [text]
/// text = name_0 0xfe value_0 0xff name_1 0xfe value_1 0xff ...
/// ```
///
/// `W` is 2 bytes (little endian) when the text is at most `u16::MAX` bytes
/// long and 4 otherwise; ends are offsets into the text of each label's
/// separators, so names are binary-searched without scanning. The text is
/// exactly the label part of the bytes the series key hashes, so hashing it
/// is one contiguous slice. The encoding is a function of the pairs alone,
/// so comparing and hashing the block is comparing and hashing the pairs.
///
/// ```
/// use tailfold::model::Labels;
/// let labels = Labels::from_pairs([("service", "api"), ("__name__", "latency")]);
/// assert_eq!(labels.metric_name(), Some("latency"));
/// assert_eq!(labels.to_string(), r#"latency{service="api"}"#);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Box<[u8]>);

impl Labels {
    /// Builds a sorted label set from pairs in any order.
    pub fn from_pairs<N: AsRef<str>, V: AsRef<str>>(pairs: impl IntoIterator<Item = (N, V)>) -> Self {
        let mut pairs: SmallVec<[(N, V); 8]> = pairs.into_iter().collect();
        pairs.sort_unstable_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        Labels(encode(
            pairs.iter().map(|(name, value)| (name.as_ref(), value.as_ref())),
        ))
    }

    /// Sorts `labels` by name and keeps them.
    pub fn from_vec(mut labels: Vec<Label>) -> Self {
        labels.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Labels(encode(labels.iter().map(|label| (&*label.name, &*label.value))))
    }

    /// Builds a label set from pairs already in name order (ingest sorts
    /// them in place while validating), with no allocation but the block.
    pub(crate) fn from_sorted_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Self {
        debug_assert!(pairs.clone().zip(pairs.clone().skip(1)).all(|(a, b)| a.0 <= b.0));
        Labels(encode(pairs))
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        let view = self.view();
        view.search(name).ok().map(|index| view.value(index))
    }

    /// The metric name (`__name__`).
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME_LABEL)
    }

    /// Labels in name order.
    pub fn iter(&self) -> LabelsIter<'_> {
        let view = self.view();
        LabelsIter {
            view,
            front: 0,
            back: view.count,
        }
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.view().count
    }

    /// True when there are no labels at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A copy with `name` set to `value` (added or replaced).
    pub fn with(&self, name: &str, value: &str) -> Labels {
        let view = self.view();
        let (at, rest) = match view.search(name) {
            Ok(index) => (index, index + 1),
            Err(index) => (index, index),
        };
        let pairs = view
            .pairs(0..at)
            .chain(std::iter::once((name, value)))
            .chain(view.pairs(rest..view.count));
        Labels(encode(pairs))
    }

    /// A copy keeping only the labels for which `keep` is true (called once
    /// per label, in name order).
    pub fn filtered(&self, mut keep: impl FnMut(&str) -> bool) -> Labels {
        let kept: SmallVec<[(&str, &str); 16]> = self
            .iter()
            .filter(|label| keep(label.name))
            .map(|label| (label.name, label.value))
            .collect();
        Labels(encode(kept.iter().copied()))
    }

    /// Bytes owned on the heap (for memory accounting): the one block.
    pub fn heap_bytes(&self) -> usize {
        self.0.len()
    }

    /// The label text: for each label its name, 0xfe, its value, 0xff.
    fn text(&self) -> &[u8] {
        self.view().text
    }

    fn view(&self) -> View<'_> {
        let Some((&width, rest)) = self.0.split_first() else {
            return View {
                width: 2,
                count: 0,
                table: &[],
                text: &[],
            };
        };
        let width = usize::from(width);
        let count = read_word(rest, width, 0);
        let (table, text) = rest.split_at(width * (1 + 2 * count));
        View {
            width,
            count,
            table,
            text,
        }
    }
}

/// Lays pairs (already in name order) out as one block; see [`Labels`].
/// Refuses (panics) past 4 GiB of text rather than truncate offsets.
fn encode<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Box<[u8]> {
    let (count, text_len) = pairs.clone().fold((0usize, 0usize), |(count, len), (name, value)| {
        (count + 1, len + name.len() + value.len() + 2)
    });
    if count == 0 {
        return Box::default();
    }
    let width = if text_len <= usize::from(u16::MAX) { 2 } else { 4 };
    assert!(
        u32::try_from(text_len).is_ok(),
        "a label set of {text_len} bytes is past the 4 GiB one can hold"
    );
    // Every word is at most `text_len` (count is at most half of it), which
    // the width was chosen to hold, so the casts below never truncate.
    let put = |out: &mut Vec<u8>, word: usize| match width {
        2 => out.extend_from_slice(&(word as u16).to_le_bytes()),
        _ => out.extend_from_slice(&(word as u32).to_le_bytes()),
    };
    let mut out = Vec::with_capacity(1 + width * (1 + 2 * count) + text_len);
    out.push(width as u8);
    put(&mut out, count);
    let mut end = 0;
    for (name, value) in pairs.clone() {
        end += name.len();
        put(&mut out, end);
        end += 1 + value.len();
        put(&mut out, end);
        end += 1;
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(NAME_END);
        out.extend_from_slice(value.as_bytes());
        out.push(VALUE_END);
    }
    debug_assert_eq!(out.len(), out.capacity());
    out.into_boxed_slice()
}

fn read_word(table: &[u8], width: usize, index: usize) -> usize {
    let at = index * width;
    match width {
        2 => usize::from(u16::from_le_bytes([table[at], table[at + 1]])),
        _ => u32::from_le_bytes([table[at], table[at + 1], table[at + 2], table[at + 3]]) as usize,
    }
}

/// Label text between separators was copied from a `&str`, so it is UTF-8;
/// checked anyway (cheap for label-sized text) to stay free of `unsafe`.
fn text_str(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("label text is copied from str between separators")
}

/// A decoded header: offsets table (count first) and text of one block.
#[derive(Clone, Copy)]
struct View<'a> {
    width: usize,
    count: usize,
    table: &'a [u8],
    text: &'a [u8],
}

impl<'a> View<'a> {
    fn name_range(&self, index: usize) -> Range<usize> {
        let start = if index == 0 {
            0
        } else {
            read_word(self.table, self.width, 2 * index) + 1
        };
        start..read_word(self.table, self.width, 1 + 2 * index)
    }

    fn value_range(&self, index: usize) -> Range<usize> {
        read_word(self.table, self.width, 1 + 2 * index) + 1..read_word(self.table, self.width, 2 + 2 * index)
    }

    fn name(&self, index: usize) -> &'a str {
        text_str(&self.text[self.name_range(index)])
    }

    fn value(&self, index: usize) -> &'a str {
        text_str(&self.text[self.value_range(index)])
    }

    /// Binary search by name, as `slice::binary_search_by` answers.
    fn search(&self, name: &str) -> Result<usize, usize> {
        let (mut low, mut high) = (0, self.count);
        while low < high {
            let middle = low + (high - low) / 2;
            match self.text[self.name_range(middle)].cmp(name.as_bytes()) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Ok(middle),
            }
        }
        Err(low)
    }

    fn pairs(self, range: Range<usize>) -> impl Iterator<Item = (&'a str, &'a str)> + Clone {
        LabelsIter {
            view: self,
            front: range.start,
            back: range.end,
        }
        .map(|label| (label.name, label.value))
    }
}

/// The labels of a [`Labels`] in name order, borrowed.
#[derive(Clone)]
pub struct LabelsIter<'a> {
    view: View<'a>,
    front: usize,
    back: usize,
}

impl<'a> Iterator for LabelsIter<'a> {
    type Item = LabelRef<'a>;

    fn next(&mut self) -> Option<LabelRef<'a>> {
        if self.front == self.back {
            return None;
        }
        let index = self.front;
        self.front += 1;
        Some(LabelRef {
            name: self.view.name(index),
            value: self.view.value(index),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.back - self.front;
        (left, Some(left))
    }
}

impl DoubleEndedIterator for LabelsIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.front == self.back {
            return None;
        }
        self.back -= 1;
        Some(LabelRef {
            name: self.view.name(self.back),
            value: self.view.value(self.back),
        })
    }
}

impl ExactSizeIterator for LabelsIter<'_> {}

impl<'a> IntoIterator for &'a Labels {
    type Item = LabelRef<'a>;
    type IntoIter = LabelsIter<'a>;

    fn into_iter(self) -> LabelsIter<'a> {
        self.iter()
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Labels")?;
        f.debug_map()
            .entries(self.iter().map(|label| (label.name, label.value)))
            .finish()
    }
}

impl fmt::Display for Labels {
    /// Prometheus exposition style: `name{a="1",b="2"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.metric_name().unwrap_or(""))?;
        f.write_str("{")?;
        let mut first = true;
        for label in self.iter().filter(|l| l.name != METRIC_NAME_LABEL) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{}={:?}", label.name, label.value)?;
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
    #[cfg(test)]
    SERIES_KEYS_COMPUTED.with(|count| count.set(count.get() + 1));
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

#[cfg(test)]
thread_local! {
    /// Series identities computed on this thread (tests count hashes per request).
    pub(crate) static SERIES_KEYS_COMPUTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Label text (with separators) hashed from the stack; longer sets are streamed.
const KEY_BUFFER_BYTES: usize = 256;

/// Hands `put` the bytes that identify a series, in order: the one byte
/// layout both ways of hashing share.
#[inline]
fn identity_bytes(tenant: &str, labels: &Labels, mut put: impl FnMut(&[u8])) {
    put(tenant.as_bytes());
    put(&[VALUE_END]);
    // Each label's name, 0xfe, value, 0xff: stored that way, in order.
    put(labels.text());
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
mod tests;
