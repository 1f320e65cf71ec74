//! One statsd / DogStatsD line: `name:value[:value...]|type[|@rate][|#tag:value,...][|T<seconds>]`.
//! Parsing borrows from the datagram; labels are built (sanitised to Prometheus
//! form, then checked like gRPC labels) only when a series is first seen.

use std::borrow::Cow;
use std::collections::HashMap;

use rand::Rng;
use thiserror::Error;

use crate::config::IngestLimits;
use crate::ingest::validate::{check_labels, cut, SeriesError};
use crate::model::{Kind, Label, Labels, Point, METRIC_NAME_LABEL};

/// The largest weight a point can carry; a distribution sampled more sparsely is refused.
const MAX_WEIGHT: f64 = u32::MAX as f64;

/// Why a line was refused. Every message starts with the line (cut to 64 bytes).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StatsdError {
    /// The line is not UTF-8.
    #[error("{line:?}: not utf-8")]
    NotUtf8 {
        /// The line, lossily decoded and cut.
        line: String,
    },
    /// A valid statsd form tailfold does not take.
    #[error("{line:?}: unsupported: {what}")]
    Unsupported {
        /// The line, cut.
        line: String,
        /// What is unsupported and what to send instead.
        what: &'static str,
    },
    /// No `:` between name and value.
    #[error("{line:?}: no ':' between metric name and value")]
    MissingColon {
        /// The line, cut.
        line: String,
    },
    /// Nothing before the `:`.
    #[error("{line:?}: empty metric name")]
    EmptyName {
        /// The line, cut.
        line: String,
    },
    /// No `|type` section.
    #[error("{line:?}: no '|type' after the value (c, g, ms, h, d or s)")]
    MissingType {
        /// The line, cut.
        line: String,
    },
    /// A type other than `c`, `g`, `ms`, `h`, `d`, `s`.
    #[error("{line:?}: unknown type {kind:?}: expected c, g, ms, h, d or s")]
    UnknownType {
        /// The line, cut.
        line: String,
        /// The type sent, cut.
        kind: String,
    },
    /// An empty value (`name:|c`, `name:1::2|ms`).
    #[error("{line:?}: empty value")]
    EmptyValue {
        /// The line, cut.
        line: String,
    },
    /// A value that is not a finite number.
    #[error("{line:?}: value {value:?} is not a finite number")]
    InvalidValue {
        /// The line, cut.
        line: String,
        /// The value, cut.
        value: String,
    },
    /// A sample rate outside (0, 1], or too small to be a point's weight.
    #[error("{line:?}: sample rate {rate:?} {problem}")]
    InvalidSampleRate {
        /// The line, cut.
        line: String,
        /// The rate as sent (without `@`), cut.
        rate: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A `|T` section that is not whole Unix seconds.
    #[error("{line:?}: timestamp {text:?} is not whole unix seconds, e.g. T1700000000")]
    InvalidTimestamp {
        /// The line, cut.
        line: String,
        /// The section after `T`, cut.
        text: String,
    },
    /// `|@` or `|#` or `|T` twice.
    #[error("{line:?}: more than one '|{section}' section")]
    RepeatedSection {
        /// The line, cut.
        line: String,
        /// `@`, `#` or `T`.
        section: char,
    },
    /// A relative gauge change for a gauge not held while `statsd.max_gauges` are.
    #[error("{line:?}: relative gauge change, but statsd.max_gauges ({max}) gauges are held already and not this one: raise statsd.max_gauges or send the absolute value")]
    GaugesFull {
        /// The line, cut.
        line: String,
        /// `statsd.max_gauges`.
        max: usize,
    },
    /// A gauge line with both relative (`+`/`-`) and absolute values.
    #[error("{line:?}: a gauge line mixing relative (+/-) and absolute values; send them on lines of their own")]
    MixedGauge {
        /// The line, cut.
        line: String,
    },
    /// The name or tags break a label rule or limit (the same as for gRPC).
    #[error("{line:?}: {}", without_series_index(.source))]
    Labels {
        /// The line, cut.
        line: String,
        /// The rule broken.
        source: SeriesError,
    },
}

/// `SeriesError` messages name a series index that means nothing in a datagram.
fn without_series_index(error: &SeriesError) -> String {
    let message = error.to_string();
    match message.split_once(": ") {
        Some((prefix, rest)) if prefix.starts_with("series ") => rest.to_string(),
        _ => message,
    }
}

/// One parsed line, borrowing from the datagram. The values go to the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatsdLine<'a> {
    /// The whole line (for error messages).
    pub raw: &'a str,
    /// Metric name as sent; [`StatsdLine::labels`] sanitises it.
    pub name: &'a str,
    /// `c` counter, `g` gauge, `ms` / `h` / `d` distribution, `s` set.
    pub kind: Kind,
    /// `@rate` in (0, 1]; 1 when absent.
    pub sample_rate: f64,
    /// The tags section without `#` (`a:1,b`); empty when absent.
    pub tags: &'a str,
    /// DogStatsD `|T<seconds>` as milliseconds; `None` means arrival time.
    pub timestamp_ms: Option<i64>,
    /// A gauge's values were sent with a sign (`+3|g`, `-3|g`): changes of
    /// the held value, as Etsy statsd reads them (see `HeldGauges`).
    pub relative: bool,
}

/// Parses one line (without its newline) and puts its values into `values`
/// (cleared first). Unknown `|x...` sections (DogStatsD `|c:<container>`...) are ignored.
///
/// ```
/// use tailfold::ingest::statsd::parse_line;
/// let mut values = Vec::new();
/// let line = parse_line("api.latency:12:15|ms|@0.5|#env:prod", &mut values).unwrap();
/// assert_eq!((line.name, line.sample_rate, line.tags), ("api.latency", 0.5, "env:prod"));
/// assert_eq!(values, [12.0, 15.0]);
/// ```
// Inlined into the decoder's loop, so the parsed line need not go through memory.
#[inline(always)]
pub fn parse_line<'a>(raw: &'a str, values: &mut Vec<f64>) -> Result<StatsdLine<'a>, StatsdError> {
    values.clear();
    let line = || cut(raw);
    if raw.starts_with("_e{") {
        return Err(StatsdError::Unsupported {
            line: line(),
            what: "dogstatsd events (_e{...})",
        });
    }
    if raw.starts_with("_sc|") {
        return Err(StatsdError::Unsupported {
            line: line(),
            what: "dogstatsd service checks (_sc|...)",
        });
    }
    // One pass finds the name's end (the first ':') and the values' end (the first '|').
    let marks = Marks::find(raw.as_bytes());
    let colon = marks.colon.ok_or_else(|| StatsdError::MissingColon { line: line() })?;
    let name = &raw[..colon];
    if name.is_empty() {
        return Err(StatsdError::EmptyName { line: line() });
    }
    let bar = marks.bar.ok_or_else(|| StatsdError::MissingType { line: line() })?;
    let raw_values = &raw[colon + 1..bar];
    let (kind_text, sections) = match split_once_byte(&raw[bar + 1..], b'|') {
        Some((kind_text, sections)) => (kind_text, Some(sections)),
        None => (&raw[bar + 1..], None),
    };
    let kind = match kind_text.as_bytes() {
        b"c" => Kind::Counter,
        b"g" => Kind::Gauge,
        b"ms" | b"h" | b"d" => Kind::Distribution,
        b"s" => Kind::Set,
        _ => {
            return Err(StatsdError::UnknownType {
                line: line(),
                kind: cut(kind_text),
            })
        }
    };

    let mut sample_rate = None;
    let mut tags = None;
    let mut timestamp_ms = None;
    for section in sections.into_iter().flat_map(|sections| byte_split(sections, b'|')) {
        let (marker, rest) = match section.as_bytes().first() {
            Some(marker @ (b'@' | b'#' | b'T')) => (char::from(*marker), &section[1..]),
            _ => continue,
        };
        let seen = match marker {
            '@' => sample_rate.replace(parse_rate(raw, rest, kind)?).is_some(),
            '#' => tags.replace(rest).is_some(),
            _ => timestamp_ms.replace(parse_timestamp(raw, rest)?).is_some(),
        };
        if seen {
            return Err(StatsdError::RepeatedSection {
                line: line(),
                section: marker,
            });
        }
    }

    let mut relative = None;
    if marks.more_colons {
        for text in byte_split(raw_values, b':') {
            push_value(raw, text, kind, &mut relative, values)?;
        }
    } else {
        // The usual line: one value, no second scan for ':'.
        push_value(raw, raw_values, kind, &mut relative, values)?;
    }

    Ok(StatsdLine {
        raw,
        name,
        kind,
        sample_rate: sample_rate.unwrap_or(1.0),
        tags: tags.unwrap_or_default(),
        timestamp_ms,
        relative: relative.unwrap_or(false),
    })
}

/// Where a line's first `:` and its first `|` are, from one scan that stops
/// at the `|`: the name ends at the colon, the values at the bar.
#[derive(Debug, Default, PartialEq, Eq)]
struct Marks {
    colon: Option<usize>,
    bar: Option<usize>,
    /// Another `:` between the first one and the bar: several values.
    more_colons: bool,
}

impl Marks {
    fn find(bytes: &[u8]) -> Marks {
        let mut marks = Marks::default();
        for (at, byte) in bytes.iter().enumerate() {
            match byte {
                b':' if marks.colon.is_none() => marks.colon = Some(at),
                b':' => marks.more_colons = true,
                b'|' => {
                    marks.bar = Some(at);
                    break;
                }
                _ => {}
            }
        }
        marks
    }
}

/// Checks one value `text` of line `raw` and pushes it to `values`; `relative`
/// holds whether the line's gauge values are signed (set by the first one).
// Inlined into the line parser on purpose: perf showed the call on every line.
#[inline(always)]
fn push_value(
    raw: &str,
    text: &str,
    kind: Kind,
    relative: &mut Option<bool>,
    values: &mut Vec<f64>,
) -> Result<(), StatsdError> {
    if text.is_empty() {
        return Err(StatsdError::EmptyValue { line: cut(raw) });
    }
    if kind == Kind::Set {
        // A member is any text, as in statsd ("1" and "1.0" are two members).
        values.push(set_member(text));
        return Ok(());
    }
    if kind == Kind::Gauge {
        // statsd reads `+3|g` / `-3|g` as "change the gauge by 3".
        let signed = text.starts_with(['+', '-']);
        if *relative.get_or_insert(signed) != signed {
            return Err(StatsdError::MixedGauge { line: cut(raw) });
        }
    }
    match parse_value(text) {
        Some(value) if value.is_finite() => {
            values.push(value);
            Ok(())
        }
        _ => Err(StatsdError::InvalidValue {
            line: cut(raw),
            value: cut(text),
        }),
    }
}

/// `text` as a number: plain digits (most statsd values) without the float
/// parser, exactly (below 2^53 every integer is an f64); anything else through it.
fn parse_value(text: &str) -> Option<f64> {
    let bytes = text.as_bytes();
    if !bytes.is_empty() && bytes.len() <= 15 && bytes.iter().all(u8::is_ascii_digit) {
        let whole = bytes.iter().fold(0u64, |sum, digit| sum * 10 + u64::from(digit - b'0'));
        return Some(whole as f64);
    }
    text.parse().ok()
}

/// `text` cut at the first `separator` (an ASCII byte, so both halves stay UTF-8).
fn split_once_byte(text: &str, separator: u8) -> Option<(&str, &str)> {
    let at = text.bytes().position(|b| b == separator)?;
    Some((&text[..at], &text[at + 1..]))
}

/// `str::split` on an ASCII byte (so every piece stays UTF-8), through
/// [`ByteRanges`]: cheaper than the char searcher on a statsd line.
pub(super) fn byte_split(text: &str, separator: u8) -> impl Iterator<Item = &str> {
    ByteRanges::new(text.as_bytes(), separator).map(move |range| &text[range])
}

/// The byte ranges between the `separator`s of `bytes`, as `<[u8]>::split`
/// cuts them, found with `memchr`, which scans many bytes per step. Over a
/// datagram with `\n` these are its lines (a `\r` stays for the caller's trim).
pub(super) struct ByteRanges<'a> {
    separators: memchr::Memchr<'a>,
    start: usize,
    end: usize,
    done: bool,
}

impl<'a> ByteRanges<'a> {
    pub(super) fn new(bytes: &'a [u8], separator: u8) -> Self {
        ByteRanges {
            separators: memchr::memchr_iter(separator, bytes),
            start: 0,
            end: bytes.len(),
            done: false,
        }
    }
}

impl Iterator for ByteRanges<'_> {
    type Item = std::ops::Range<usize>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let start = self.start;
        match self.separators.next() {
            Some(at) => {
                self.start = at + 1;
                Some(start..at)
            }
            None => {
                self.done = true;
                Some(start..self.end)
            }
        }
    }
}

fn parse_rate(raw: &str, text: &str, kind: Kind) -> Result<f64, StatsdError> {
    let invalid = |problem| StatsdError::InvalidSampleRate {
        line: cut(raw),
        rate: cut(text),
        problem,
    };
    let rate: f64 = text.parse().map_err(|_| invalid("must be a number in (0, 1]"))?;
    // Written so that NaN fails too.
    if !(rate > 0.0 && rate <= 1.0) {
        return Err(invalid("must be a number in (0, 1]"));
    }
    if kind == Kind::Distribution && 1.0 / rate > MAX_WEIGHT {
        return Err(invalid("is too small: one point stands for at most 4294967295 samples"));
    }
    Ok(rate)
}

fn parse_timestamp(raw: &str, text: &str) -> Result<i64, StatsdError> {
    let seconds: Option<i64> = if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    };
    seconds
        .and_then(|seconds| seconds.checked_mul(1000))
        .ok_or_else(|| StatsdError::InvalidTimestamp {
            line: cut(raw),
            text: cut(text),
        })
}

/// A set member as the engine takes it: a 52-bit hash of its text, an
/// integral f64 (exact in a point's value); two members collide with
/// probability about n²/2^53 among n, e.g. 1e-6 among 100,000.
pub fn set_member(text: &str) -> f64 {
    (xxhash_rust::xxh3::xxh3_64(text.as_bytes()) >> 12) as f64
}

/// A statsd name in Prometheus form: every character outside `[a-zA-Z0-9_]`
/// becomes `_` (`api.latency-ms` -> `api_latency_ms`), and a leading digit
/// gets a `_` prefix. Borrows when nothing changes.
pub fn sanitize_name(name: &str) -> Cow<'_, str> {
    let leading_digit = name.starts_with(|c: char| c.is_ascii_digit());
    if !leading_digit && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Cow::Borrowed(name);
    }
    let mut clean = String::with_capacity(name.len() + 1);
    if leading_digit {
        clean.push('_');
    }
    clean.extend(
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }),
    );
    Cow::Owned(clean)
}

/// Distinct metric names [`NameCollisions`] remembers; past it, new names are
/// no longer checked (the memory stays bounded under a flood of names).
pub const MAX_CHECKED_NAMES: usize = 100_000;

/// Finds raw statsd names that sanitise alike (`api.latency`, `api-latency`
/// and `api_latency` all become `api_latency`). Etsy statsd keeps such names
/// apart; tailfold folds them into one series, so each is reported once.
#[derive(Debug, Default)]
pub struct NameCollisions {
    /// Sanitised name -> the first raw name seen with it.
    first: HashMap<Box<str>, Box<str>>,
    /// Raw names already reported as colliding.
    reported: HashMap<Box<str>, ()>,
}

impl NameCollisions {
    /// Notes that `raw` was sent, sanitised to `sanitized`. Returns the raw
    /// name seen first under `sanitized` when `raw` is another one not
    /// reported before: the two merge into one series. Allocates only for a
    /// name not seen before.
    pub fn check(&mut self, raw: &str, sanitized: &str) -> Option<&str> {
        let new_collision = match self.first.get(sanitized) {
            Some(first) => {
                **first != *raw && !self.reported.contains_key(raw) && self.reported.len() < MAX_CHECKED_NAMES
            }
            None => {
                if self.first.len() < MAX_CHECKED_NAMES {
                    self.first.insert(sanitized.into(), raw.into());
                }
                false
            }
        };
        if !new_collision {
            return None;
        }
        self.reported.insert(raw.into(), ());
        self.first.get(sanitized).map(|first| &**first)
    }
}

impl StatsdLine<'_> {
    /// The series' labels: the sanitised name in `__name__`, each tag
    /// `tag:value` as a label (sanitised name, value as sent; a bare `tag` gets
    /// the value `true`), checked with the gRPC rules and `limits`.
    pub fn labels(&self, limits: &IngestLimits) -> Result<Labels, StatsdError> {
        let tag_count = if self.tags.is_empty() {
            0
        } else {
            self.tags.bytes().filter(|b| *b == b',').count() + 1
        };
        let mut labels = Vec::with_capacity(tag_count + 1);
        labels.push(Label {
            name: METRIC_NAME_LABEL.into(),
            value: sanitize_name(self.name).into(),
        });
        for tag in self.tags.split(',').filter(|tag| !tag.is_empty()) {
            let (name, value) = tag.split_once(':').unwrap_or((tag, "true"));
            labels.push(Label {
                name: sanitize_name(name).into(),
                value: value.into(),
            });
        }
        check_labels(0, labels, self.kind, limits).map_err(|source| StatsdError::Labels {
            line: cut(self.raw),
            source,
        })
    }

    /// Appends one point per value. The sample rate is undone so that totals
    /// are right in expectation: a counter delta is divided by it (exact in
    /// expectation, as statsd does); a distribution observation gets the
    /// weight 1/rate, rounded at random (see [`stochastic_weight`]); a gauge is
    /// a current value, so its rate is ignored.
    pub fn push_points(&self, values: &[f64], rng: &mut impl Rng, out: &mut Vec<Point>) {
        out.extend(values.iter().map(|value| {
            let mut point = Point::new(*value, self.timestamp_ms, None);
            match self.kind {
                Kind::Counter => point.value /= self.sample_rate,
                // A member is in the set or not: statsd ignores a set's rate too.
                Kind::Gauge | Kind::Set => {}
                Kind::Distribution => point.weight = stochastic_weight(self.sample_rate, rng),
            }
            point
        }));
    }
}

/// How many samples one observation sent with sample rate `rate` in (0, 1]
/// stands for: `1/rate` when that is whole (`@0.1` -> exactly 10), else
/// `floor(1/rate)` or `ceil(1/rate)`, up with probability equal to the
/// fraction, so the expected weight is exactly `1/rate` (`@0.3`: 3 with
/// probability 2/3, 4 with 1/3). Rates below 1/u32::MAX are refused by the parser.
pub fn stochastic_weight(rate: f64, rng: &mut impl Rng) -> u32 {
    let inverse = (1.0 / rate).min(MAX_WEIGHT);
    let nearest = inverse.round();
    // A decimal rate such as 0.1 is not exact in binary; its inverse is whole up to rounding noise.
    if (inverse - nearest).abs() <= inverse * 1e-12 {
        return nearest as u32;
    }
    let whole = inverse.floor();
    let up = rng.random::<f64>() < inverse - whole;
    whole as u32 + u32::from(up)
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
