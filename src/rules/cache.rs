//! The per-series match cache: globs run once per series, later samples of
//! the series get the same shared plan by its 64-bit series hash.

use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::model::{Kind, Labels, SeriesKey, SeriesKeyHasher};

use super::{RuleSet, SeriesPlan};

/// A cached value with what it was built for, so that a hash collision, a
/// kind change or a reloaded rule set is detected instead of trusted.
#[derive(Debug)]
pub struct CachedPlan<T = SeriesPlan> {
    /// Fingerprint of the series the value was built for (tenant and labels).
    pub fingerprint: u128,
    /// Its kind at that time.
    pub kind: Kind,
    /// Generation of the rule set that resolved it; `None` when built by a
    /// caller's closure, which the cache cannot date.
    generation: Option<u64>,
    /// The value, shared with callers.
    pub plan: Arc<T>,
}

impl<T> CachedPlan<T> {
    fn is_for(&self, key: SeriesKey, kind: Kind, generation: Option<u64>) -> bool {
        // A 128-bit compare instead of every label: the hot path of ingest.
        self.fingerprint == key.fingerprint && self.kind == kind && self.generation == generation
    }
}

/// Concurrent map from series hash (`crate::model::series_hash`) to what was
/// derived from the rules for that series: the [`SeriesPlan`] itself, or any
/// value a caller builds from it (the engine caches its routes here).
///
/// Each series is resolved once; two threads meeting the same new series at
/// the same moment may both resolve it, and one result is kept. Through
/// [`MatchCache::get_or_resolve`], a plan of an older rule set is never
/// returned, even without [`MatchCache::clear`]; callers of
/// [`MatchCache::get_or_insert_with`] must clear on a rules reload.
#[derive(Debug)]
pub struct MatchCache<T = SeriesPlan> {
    plans: DashMap<u64, Arc<CachedPlan<T>>, BuildHasherDefault<SeriesKeyHasher>>,
    resolves: AtomicU64,
}

impl<T> Default for MatchCache<T> {
    fn default() -> Self {
        MatchCache {
            plans: DashMap::default(),
            resolves: AtomicU64::new(0),
        }
    }
}

impl MatchCache<SeriesPlan> {
    /// The plan of the series `labels` (identity `key`) of `kind` under `rules`.
    /// Resolves only on a miss; a hit clones one `Arc` and allocates nothing.
    pub fn get_or_resolve(&self, key: SeriesKey, labels: &Labels, kind: Kind, rules: &RuleSet) -> Arc<SeriesPlan> {
        self.lookup(key, kind, Some(rules.generation()), || rules.resolve(labels, kind))
    }
}

impl<T> MatchCache<T> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value cached for the series `key` of `kind`, or `build()`'s
    /// result, cached, on a miss. A hit allocates nothing.
    pub fn get_or_insert_with(&self, key: SeriesKey, kind: Kind, build: impl FnOnce() -> T) -> Arc<T> {
        self.lookup(key, kind, None, build)
    }

    fn lookup(&self, key: SeriesKey, kind: Kind, generation: Option<u64>, build: impl FnOnce() -> T) -> Arc<T> {
        if let Some(cached) = self.plans.get(&key.hash) {
            if cached.is_for(key, kind, generation) {
                return Arc::clone(&cached.plan);
            }
        }
        // Build outside any shard lock: globs are slow next to a map lookup.
        let plan = Arc::new(build());
        self.resolves.fetch_add(1, Ordering::Relaxed);
        let fresh = Arc::new(CachedPlan {
            fingerprint: key.fingerprint,
            kind,
            generation,
            plan: Arc::clone(&plan),
        });
        match self.plans.entry(key.hash) {
            Entry::Occupied(mut entry) => {
                if entry.get().is_for(key, kind, generation) {
                    // Another thread resolved the same series meanwhile: share its value.
                    return Arc::clone(&entry.get().plan);
                }
                // A collision, a kind change or a stale rule set: the newest series wins the slot.
                entry.insert(fresh);
            }
            Entry::Vacant(entry) => {
                entry.insert(fresh);
            }
        }
        plan
    }

    /// Forgets every plan (after a rules reload).
    pub fn clear(&self) {
        self.plans.clear();
    }

    /// Keeps only the entries whose value `keep` accepts (e.g. routes still in use).
    pub fn retain(&self, mut keep: impl FnMut(&T) -> bool) {
        self.plans.retain(|_, cached| keep(&cached.plan));
    }

    /// Forgets the plan of one series (e.g. when the engine evicts it).
    pub fn remove(&self, key: u64) -> Option<Arc<CachedPlan<T>>> {
        self.plans.remove(&key).map(|(_, cached)| cached)
    }

    /// Number of cached series.
    pub fn len(&self) -> usize {
        self.plans.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// How many times a value was resolved or built (misses), since the cache was made.
    pub fn resolves(&self) -> u64 {
        self.resolves.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::series_key;

    const RULES: &str = "
mapping_rules:
  - { name: api, filter: 'svc:api', aggregations: [sum] }
";

    fn series(svc: &str) -> (SeriesKey, Labels) {
        let labels = Labels::from_pairs([("__name__", "requests"), ("svc", svc)]);
        (series_key("tenant", &labels), labels)
    }

    #[test]
    fn resolves_once_per_series() {
        let rules = RuleSet::parse(RULES, "rules.yaml").unwrap();
        let cache = MatchCache::new();
        let (api_key, api) = series("api");
        let (web_key, web) = series("web");
        let first = cache.get_or_resolve(api_key, &api, Kind::Counter, &rules);
        for _ in 0..100 {
            let again = cache.get_or_resolve(api_key, &api, Kind::Counter, &rules);
            assert!(Arc::ptr_eq(&first, &again));
        }
        assert_eq!(cache.resolves(), 1);
        let other = cache.get_or_resolve(web_key, &web, Kind::Counter, &rules);
        cache.get_or_resolve(web_key, &web, Kind::Counter, &rules);
        assert_eq!(cache.resolves(), 2);
        assert_eq!(cache.len(), 2);
        assert_eq!(*first, rules.resolve(&api, Kind::Counter));
        assert_ne!(first, other);
    }

    #[test]
    fn collisions_and_kind_changes_resolve_afresh() {
        let rules = RuleSet::parse(RULES, "rules.yaml").unwrap();
        let cache = MatchCache::new();
        let (key, api) = series("api");
        let (web_key, web) = series("web");
        let api_plan = cache.get_or_resolve(key, &api, Kind::Counter, &rules);
        // Same 64-bit key, another series: a forced collision the fingerprint tells apart.
        let collided = SeriesKey {
            hash: key.hash,
            fingerprint: web_key.fingerprint,
        };
        let web_plan = cache.get_or_resolve(collided, &web, Kind::Counter, &rules);
        assert_eq!(*web_plan, rules.resolve(&web, Kind::Counter));
        assert_ne!(api_plan, web_plan);
        let gauge_plan = cache.get_or_resolve(collided, &web, Kind::Gauge, &rules);
        assert_eq!(*gauge_plan, rules.resolve(&web, Kind::Gauge));
        assert_ne!(web_plan, gauge_plan);
        assert_eq!(cache.resolves(), 3);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_reloaded_rule_set_is_never_served_stale_plans() {
        let old = RuleSet::parse(RULES, "rules.yaml").unwrap();
        let new = RuleSet::default_rules();
        let cache = MatchCache::new();
        let (key, api) = series("api");
        cache.get_or_resolve(key, &api, Kind::Counter, &old);
        let plan = cache.get_or_resolve(key, &api, Kind::Counter, &new);
        assert_eq!(*plan, new.resolve(&api, Kind::Counter));
        assert_eq!(cache.resolves(), 2);
    }

    #[test]
    fn clear_and_remove_forget_plans() {
        let rules = RuleSet::default_rules();
        let cache = MatchCache::new();
        let (api_key, api) = series("api");
        let (web_key, web) = series("web");
        cache.get_or_resolve(api_key, &api, Kind::Gauge, &rules);
        cache.get_or_resolve(web_key, &web, Kind::Gauge, &rules);
        assert_eq!(
            cache.remove(api_key.hash).map(|cached| cached.fingerprint),
            Some(api_key.fingerprint)
        );
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.is_empty());
        cache.get_or_resolve(web_key, &web, Kind::Gauge, &rules);
        assert_eq!(cache.resolves(), 3);
    }

    #[test]
    fn caller_built_values_are_cached_per_series_and_kind() {
        let cache: MatchCache<String> = MatchCache::new();
        let (key, _) = series("api");
        let (web_key, _) = series("web");
        let first = cache.get_or_insert_with(key, Kind::Counter, || "api".to_string());
        let again = cache.get_or_insert_with(key, Kind::Counter, || unreachable!("a hit"));
        assert!(Arc::ptr_eq(&first, &again));
        let web = SeriesKey {
            hash: key.hash,
            fingerprint: web_key.fingerprint,
        };
        let collided = cache.get_or_insert_with(web, Kind::Counter, || "web".to_string());
        assert_eq!(*collided, "web");
        let gauge = cache.get_or_insert_with(web, Kind::Gauge, || "web gauge".to_string());
        assert_eq!(*gauge, "web gauge");
        assert_eq!(cache.resolves(), 3);
    }

    #[test]
    fn concurrent_lookups_agree_on_one_plan_per_series() {
        let rules = RuleSet::parse(RULES, "rules.yaml").unwrap();
        let cache = MatchCache::new();
        let series: Vec<(SeriesKey, Labels)> = (0..50).map(|i| series(&format!("svc-{i}"))).collect();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for (key, labels) in &series {
                        let plan = cache.get_or_resolve(*key, labels, Kind::Counter, &rules);
                        assert_eq!(*plan, rules.resolve(labels, Kind::Counter));
                    }
                });
            }
        });
        assert_eq!(cache.len(), 50);
        // Racing threads may each resolve a new series once, never more.
        assert!((50..=200).contains(&cache.resolves()), "{}", cache.resolves());
    }
}
