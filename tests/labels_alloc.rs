//! A label set is one heap block, and `heap_bytes` is its size: checked with
//! a counting global allocator, which is why this is its own test binary.

#[path = "alloc/counting.rs"]
mod counting;

use counting::{allocated_bytes, allocations};

use tailfold::model::{Label, Labels};

/// Runs `make` and returns what it built with the allocations and bytes it took.
fn counted<T>(make: impl FnOnce() -> T) -> (T, usize, usize) {
    let (calls, bytes) = (allocations(), allocated_bytes());
    let made = make();
    (made, allocations() - calls, allocated_bytes() - bytes)
}

fn owned(pairs: &[(String, String)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(name, value)| Label {
            name: name.as_str().into(),
            value: value.as_str().into(),
        })
        .collect()
}

#[test]
fn a_label_set_is_one_allocation_of_heap_bytes() {
    let value = "v".repeat(70_000);
    let sets: Vec<Vec<(String, String)>> = vec![
        vec![("__name__".into(), "up".into())],
        (0..6).map(|i| (format!("label_{i}"), format!("value-{i}"))).collect(),
        (0..64).rev().map(|i| (format!("l{i:02}"), format!("{i}"))).collect(),
        vec![("__name__".into(), "m".into()), ("pod".into(), value)],
    ];
    for pairs in &sets {
        let input = owned(pairs);
        let (labels, calls, bytes) = counted(|| Labels::from_vec(input));
        assert_eq!((calls, bytes), (1, labels.heap_bytes()), "{} labels", pairs.len());
        assert_eq!(labels.len(), pairs.len());

        let (copy, calls, bytes) = counted(|| labels.clone());
        assert_eq!((calls, bytes), (1, copy.heap_bytes()));

        let (changed, calls, bytes) = counted(|| labels.with("quantile", "0.99"));
        assert_eq!((calls, bytes), (1, changed.heap_bytes()));
        assert_eq!(changed.len(), pairs.len() + 1);
    }

    // Up to eight pairs are sorted on the stack: the block is the only allocation.
    let (labels, calls, bytes) =
        counted(|| Labels::from_pairs([("service", "api"), ("__name__", "requests"), ("status", "200")]));
    assert_eq!((calls, bytes), (1, labels.heap_bytes()));
    let (kept, calls, bytes) = counted(|| labels.filtered(|name| name != "status"));
    assert_eq!((calls, bytes), (1, kept.heap_bytes()));

    let (empty, calls, _) = counted(|| Labels::from_vec(Vec::new()));
    assert_eq!((calls, empty.heap_bytes()), (0, 0));
}
