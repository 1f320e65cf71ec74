//! The match cache's hit path allocates nothing: checked with a counting
//! global allocator, which is why this is its own test binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tailfold::model::{series_key, Kind, Labels};
use tailfold::rules::{MatchCache, RuleSet};

/// Counts allocations of the current thread only, so the test harness's own
/// threads cannot disturb the count.
struct CountingAllocator;

thread_local! {
    // `const` and `Copy`: no destructor to register, so reading it never allocates.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn hits_allocate_nothing_and_misses_do() {
    let rules = RuleSet::parse(
        "mapping_rules:\n  - { name: api, filter: 'service:api-*', aggregations: [p99, count] }\n",
        "rules.yaml",
    )
    .unwrap();
    let cache = MatchCache::new();
    let labels = Labels::from_pairs([("__name__", "latency"), ("service", "api-eu")]);
    let key = series_key("tenant", &labels);

    let before_miss = allocations();
    let first = cache.get_or_resolve(key, &labels, Kind::Distribution, &rules);
    assert!(allocations() > before_miss, "the counter must see the miss allocate");

    let before_hits = allocations();
    for _ in 0..1_000 {
        let plan = cache.get_or_resolve(key, &labels, Kind::Distribution, &rules);
        assert!(std::sync::Arc::ptr_eq(&plan, &first));
    }
    assert_eq!(allocations() - before_hits, 0, "a cache hit allocated");
    assert_eq!(cache.resolves(), 1);
}
