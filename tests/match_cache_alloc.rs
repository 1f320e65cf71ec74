//! The match cache's hit path allocates nothing: checked with a counting
//! global allocator, which is why this is its own test binary.

#[path = "alloc/counting.rs"]
mod counting;

use counting::allocations;

use tailfold::model::{series_key, Kind, Labels};
use tailfold::rules::{MatchCache, RuleSet};

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
