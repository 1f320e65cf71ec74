//! Label-set encoding round trips, lookups, identity and the series key's byte layout.

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

use std::collections::hash_map::DefaultHasher;
use std::hash::Hash;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn pairs_of(labels: &Labels) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|l| (l.name.to_string(), l.value.to_string()))
        .collect()
}

fn sorted(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut owned: Vec<(String, String)> = pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    owned.sort();
    owned
}

fn std_hash(labels: &Labels) -> u64 {
    let mut hasher = DefaultHasher::new();
    labels.hash(&mut hasher);
    hasher.finish()
}

/// The bytes the series key hashed before label sets were one block, built
/// by hand: tenant, 0xff, then name 0xfe value 0xff per label in name order.
fn reference_key(tenant: &str, pairs: &[(&str, &str)]) -> SeriesKey {
    let mut bytes = tenant.as_bytes().to_vec();
    bytes.push(0xff);
    for (name, value) in sorted(pairs) {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0xfe);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0xff);
    }
    key_of(xxhash_rust::xxh3::xxh3_128(&bytes))
}

#[test]
fn round_trips_empty_one_and_many() {
    let empty = Labels::from_pairs(Vec::<(&str, &str)>::new());
    assert_eq!(empty, Labels::default());
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
    assert_eq!(empty.iter().count(), 0);
    assert_eq!(empty.heap_bytes(), 0);
    assert_eq!(empty.get("a"), None);
    assert_eq!(empty.metric_name(), None);

    let one = Labels::from_pairs([("__name__", "up")]);
    assert_eq!(pairs_of(&one), sorted(&[("__name__", "up")]));
    assert_eq!((one.len(), one.is_empty()), (1, false));

    // Includes an empty value and a non-ASCII one.
    let names: Vec<String> = (0..40).rev().map(|i| format!("label_{i:02}")).collect();
    let values: Vec<String> = (0..40)
        .map(|i| if i == 7 { String::new() } else { format!("välue-{i}") })
        .collect();
    let many: Vec<(&str, &str)> = names
        .iter()
        .zip(&values)
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let labels = Labels::from_pairs(many.iter().copied());
    assert_eq!(pairs_of(&labels), sorted(&many));
    assert_eq!(labels.len(), 40);
    assert_eq!(labels.iter().len(), 40);
    let backwards: Vec<_> = labels.iter().rev().map(|l| l.name.to_string()).collect();
    let mut expected: Vec<_> = names.clone();
    expected.sort();
    expected.reverse();
    assert_eq!(backwards, expected);
    let owned: Vec<Label> = labels.iter().map(LabelRef::to_label).collect();
    assert_eq!(Labels::from_vec(owned), labels);
}

#[test]
fn long_values_switch_to_wide_offsets_without_truncating() {
    // Text of a label set is name + value + 2 separators per label.
    for value_len in [255, 256, 65_535 - 3, 65_535 - 2, 65_535, 70_000, 200_000] {
        let value = "v".repeat(value_len);
        let labels = Labels::from_pairs([("a", value.as_str()), ("__name__", "m"), ("z", "last")]);
        assert_eq!(
            labels.get("a").map(str::len),
            Some(value_len),
            "value of {value_len} bytes"
        );
        assert_eq!(labels.get("z"), Some("last"));
        assert_eq!(labels.metric_name(), Some("m"));
        assert_eq!(
            pairs_of(&labels),
            sorted(&[("a", value.as_str()), ("__name__", "m"), ("z", "last")])
        );
        let text = value_len + "a".len() + "__name__".len() + "m".len() + "z".len() + "last".len() + 6;
        let width = if text <= usize::from(u16::MAX) { 2 } else { 4 };
        assert_eq!(
            labels.heap_bytes(),
            1 + width * (1 + 2 * 3) + text,
            "value of {value_len} bytes"
        );
        assert_eq!(
            series_key("t", &labels),
            reference_key("t", &[("a", value.as_str()), ("__name__", "m"), ("z", "last")])
        );
    }
    // The ingest limits let 64 labels of 4 KiB values through: past u16 offsets.
    let value = "x".repeat(4096);
    let names: Vec<String> = (0..64).map(|i| format!("l{i:02}")).collect();
    let big = Labels::from_pairs(names.iter().map(|n| (n.as_str(), value.as_str())));
    assert!(big.heap_bytes() > usize::from(u16::MAX));
    assert!(names.iter().all(|n| big.get(n) == Some(value.as_str())));
}

#[test]
fn get_hits_and_misses_at_both_ends() {
    let labels = Labels::from_pairs([("b", "1"), ("d", "2"), ("f", "3"), ("h", "4")]);
    assert_eq!(labels.get("b"), Some("1"));
    assert_eq!(labels.get("h"), Some("4"));
    assert_eq!(labels.get("d"), Some("2"));
    for missing in ["a", "c", "g", "i", "", "bb", "h\u{0}"] {
        assert_eq!(labels.get(missing), None, "{missing:?}");
    }
    // A name that is a prefix of another, and the reverse.
    let prefixed = Labels::from_pairs([("pod", "p"), ("pod_name", "n")]);
    assert_eq!(prefixed.get("pod"), Some("p"));
    assert_eq!(prefixed.get("pod_name"), Some("n"));
    assert_eq!(prefixed.get("po"), None);
}

#[test]
fn with_replaces_or_inserts_at_every_position() {
    let labels = Labels::from_pairs([("b", "1"), ("d", "2")]);
    let cases = [
        ("a", vec![("a", "new"), ("b", "1"), ("d", "2")]),
        ("b", vec![("b", "new"), ("d", "2")]),
        ("c", vec![("b", "1"), ("c", "new"), ("d", "2")]),
        ("d", vec![("b", "1"), ("d", "new")]),
        ("e", vec![("b", "1"), ("d", "2"), ("e", "new")]),
    ];
    for (name, expected) in cases {
        let changed = labels.with(name, "new");
        assert_eq!(pairs_of(&changed), sorted(&expected), "with {name}");
        assert_eq!(changed, Labels::from_pairs(expected));
    }
    assert_eq!(Labels::default().with("a", "1"), Labels::from_pairs([("a", "1")]));
}

#[test]
fn filtered_asks_once_per_label_in_order() {
    let labels = Labels::from_pairs([("c", "3"), ("a", "1"), ("b", "2")]);
    let mut asked = Vec::new();
    let kept = labels.filtered(|name| {
        asked.push(name.to_string());
        name != "b"
    });
    assert_eq!(asked, ["a", "b", "c"]);
    assert_eq!(kept, Labels::from_pairs([("a", "1"), ("c", "3")]));
    assert_eq!(labels.filtered(|_| false), Labels::default());
    assert_eq!(labels.filtered(|_| true), labels);
}

#[test]
fn equality_and_hash_follow_the_pairs() {
    // Small alphabets so that equal and nearly equal sets both come up often.
    let mut rng = SmallRng::seed_from_u64(7);
    let mut random_set = || {
        let n = rng.random_range(0..4);
        let mut pairs: Vec<(String, String)> = Vec::new();
        for _ in 0..n {
            let name = ["a", "ab", "b"][rng.random_range(0..3)].to_string();
            let value = ["", "b", "c", "bc"][rng.random_range(0..4)].to_string();
            if !pairs.iter().any(|(other, _)| *other == name) {
                pairs.push((name, value));
            }
        }
        pairs
    };
    let sets: Vec<Vec<(String, String)>> = (0..300).map(|_| random_set()).collect();
    let mut equal_pairs = 0;
    for a in &sets {
        for b in &sets {
            let (mut sorted_a, mut sorted_b) = (a.clone(), b.clone());
            sorted_a.sort();
            sorted_b.sort();
            let (la, lb) = (Labels::from_pairs(a.clone()), Labels::from_pairs(b.clone()));
            assert_eq!(la == lb, sorted_a == sorted_b, "{a:?} vs {b:?}");
            if la == lb {
                equal_pairs += 1;
                assert_eq!(std_hash(&la), std_hash(&lb));
                assert_eq!(series_key("t", &la), series_key("t", &lb));
            }
        }
    }
    assert!(equal_pairs > sets.len(), "the generator should produce repeats");
}

#[test]
fn display_and_debug() {
    let labels = Labels::from_pairs([("b", "x\"y\\z"), ("__name__", "m"), ("a", "é\n")]);
    assert_eq!(labels.to_string(), "m{a=\"é\\n\",b=\"x\\\"y\\\\z\"}");
    assert_eq!(Labels::from_pairs([("a", "1")]).to_string(), "{a=\"1\"}");
    assert_eq!(Labels::default().to_string(), "{}");
    assert_eq!(
        format!("{:?}", Labels::from_pairs([("b", "2"), ("a", "1")])),
        r#"Labels{"a": "1", "b": "2"}"#
    );
}

#[test]
fn series_key_hashes_the_same_bytes_as_before() {
    let long = "w".repeat(KEY_BUFFER_BYTES * 2);
    let sets: [&[(&str, &str)]; 5] = [
        &[],
        &[("__name__", "up")],
        &[
            ("service", "api"),
            ("__name__", "requests"),
            ("status", "200"),
            ("pod", "p-1"),
        ],
        &[("__name__", "requests"), ("pod", long.as_str())],
        &[("a", "bc"), ("ab", "c")],
    ];
    for pairs in sets {
        let labels = Labels::from_pairs(pairs.iter().copied());
        for tenant in ["", "tenant-a"] {
            assert_eq!(series_key(tenant, &labels), reference_key(tenant, pairs), "{pairs:?}");
            assert_eq!(streamed_series_key(tenant, &labels), reference_key(tenant, pairs));
        }
    }
}
