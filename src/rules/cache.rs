//! The per-series match cache: globs run once per series, later samples of
//! the series get the same shared plan (or a value built from it, such as the
//! engine's routes) by series identity. Built for batches: a batch takes a
//! read lock on every shard once ([`MatchCache::reader`]) and then looks its
//! series up with plain loads, no atomic per series, so the lookups of one
//! batch can overlap their cache misses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};

use crate::model::{Kind, Labels, SeriesKey};

use super::line_table::{Keyed, LineTable};
use super::{RuleSet, SeriesPlan};

/// Lock shards: enough that inserts of new series and the growth of one
/// table stall few batches, few enough that locking them all once per batch
/// is cheap next to the batch.
const SHARDS: usize = 32;

/// A cached value with what it was built for, so that a hash collision, a
/// kind change or a reloaded rule set is detected instead of trusted. Half a
/// cache line, aligned, so a lookup reads one line of entries.
#[derive(Debug)]
#[repr(align(32))]
pub struct CachedPlan<T = SeriesPlan> {
    /// Fingerprint of the series the value was built for (tenant and labels);
    /// its low 64 bits are the table hash.
    pub fingerprint: u128,
    /// Its kind at that time and the generation of the rule set that resolved
    /// it (see [`stamp`]), in one word.
    stamp: u64,
    /// The value, shared with callers.
    pub plan: Arc<T>,
}

const _: () = assert!(std::mem::size_of::<Option<CachedPlan<()>>>() == 32);

impl<T> Keyed for CachedPlan<T> {
    /// The table hash: the fingerprint's low 64 bits (`SeriesKey::hash`).
    #[inline]
    fn key(&self) -> u64 {
        self.fingerprint as u64
    }
}

/// `kind` in the low two bits, above them the generation of the rule set
/// plus one, or 0 for a value built by a caller, which the cache cannot date.
#[inline]
fn stamp(kind: Kind, generation: Option<u64>) -> u64 {
    let kind = match kind {
        Kind::Counter => 0,
        Kind::Gauge => 1,
        Kind::Distribution => 2,
        Kind::Set => 3,
    };
    (generation.map_or(0, |generation| generation.wrapping_add(1)) << 2) | kind
}

impl<T> CachedPlan<T> {
    #[inline]
    fn is_for(&self, key: SeriesKey, kind: Kind, generation: Option<u64>) -> bool {
        // A 128-bit compare instead of every label: the hot path of ingest.
        self.fingerprint == key.fingerprint && self.stamp == stamp(kind, generation)
    }

    /// The kind of the series when the value was built.
    pub fn kind(&self) -> Kind {
        match self.stamp & 3 {
            0 => Kind::Counter,
            1 => Kind::Gauge,
            2 => Kind::Distribution,
            _ => Kind::Set,
        }
    }
}

/// Concurrent map from series identity (`crate::model::series_key`) to what
/// was derived from the rules for that series: the [`SeriesPlan`] itself, or
/// any value a caller builds from it (the engine caches its routes here).
///
/// Each series is resolved once; two threads meeting the same new series at
/// the same moment may both resolve it, and the first value cached is kept.
/// Through [`MatchCache::get_or_resolve`], a plan of an older rule set is never
/// returned, even without [`MatchCache::clear`]; callers of
/// [`MatchCache::get_or_insert_with`] must clear on a rules reload.
pub struct MatchCache<T = SeriesPlan> {
    shards: Box<[RwLock<LineTable<CachedPlan<T>>>]>,
    resolves: AtomicU64,
}

impl<T> Default for MatchCache<T> {
    fn default() -> Self {
        MatchCache {
            shards: (0..SHARDS).map(|_| RwLock::new(LineTable::default())).collect(),
            resolves: AtomicU64::new(0),
        }
    }
}

impl<T> std::fmt::Debug for MatchCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatchCache").field("len", &self.len()).finish()
    }
}

/// Shard of a series: bits apart from the lowest (the engine's shard of an
/// identity output), so neither choice thins the other.
#[inline]
fn shard_of(hash: u64) -> usize {
    ((hash >> 40) as usize) % SHARDS
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
        if let Some(cached) = self.shards[shard_of(key.hash)]
            .read()
            .find(key.hash, |cached| cached.is_for(key, kind, generation))
        {
            return Arc::clone(&cached.plan);
        }
        // Built outside any lock: globs are slow next to a map lookup.
        self.insert_dated(key, kind, generation, Arc::new(build()))
    }

    /// Read access for one batch: every shard read-locked until the reader is
    /// dropped. The thread must not insert into this cache while it holds one.
    pub fn reader(&self) -> CacheReader<'_, T> {
        CacheReader {
            guards: std::array::from_fn(|index| self.shards[index].read()),
        }
    }

    /// Caches `value`, built by the caller for `key` of `kind` (after a
    /// [`CacheReader::get`] miss), unless another thread cached one for the
    /// same series meanwhile; returns the value kept.
    pub fn insert(&self, key: SeriesKey, kind: Kind, value: Arc<T>) -> Arc<T> {
        self.insert_dated(key, kind, None, value)
    }

    fn insert_dated(&self, key: SeriesKey, kind: Kind, generation: Option<u64>, value: Arc<T>) -> Arc<T> {
        self.resolves.fetch_add(1, Ordering::Relaxed);
        let mut table = self.shards[shard_of(key.hash)].write();
        match table.find_mut(key.hash, |cached| cached.fingerprint == key.fingerprint) {
            // Another thread resolved the same series meanwhile: share its value.
            Some(cached) if cached.is_for(key, kind, generation) => Arc::clone(&cached.plan),
            Some(cached) => {
                // A kind change or a stale rule set: the newest value wins the slot.
                cached.stamp = stamp(kind, generation);
                cached.plan = Arc::clone(&value);
                value
            }
            None => {
                let fresh = CachedPlan {
                    fingerprint: key.fingerprint,
                    stamp: stamp(kind, generation),
                    plan: Arc::clone(&value),
                };
                table.insert(fresh);
                value
            }
        }
    }

    /// Forgets every plan (after a rules reload).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            shard.write().clear();
        }
    }

    /// Keeps only the entries whose value `keep` accepts (e.g. routes still
    /// in use). Write-locks one shard at a time.
    pub fn retain(&self, mut keep: impl FnMut(&T) -> bool) {
        for shard in self.shards.iter() {
            shard.write().retain(|cached| keep(&cached.plan));
        }
    }

    /// Forgets the plan of the series with 64-bit key `key` (e.g. when the engine evicts it).
    pub fn remove(&self, key: u64) -> Option<CachedPlan<T>> {
        let mut table = self.shards[shard_of(key)].write();
        table.remove(key, |_| true)
    }

    /// Number of cached series.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().len()).sum()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times a value was resolved or built (misses), since the cache was made.
    pub fn resolves(&self) -> u64 {
        self.resolves.load(Ordering::Relaxed)
    }
}

/// A batch's read view of a [`MatchCache`] (see [`MatchCache::reader`]).
pub struct CacheReader<'a, T> {
    guards: [RwLockReadGuard<'a, LineTable<CachedPlan<T>>>; SHARDS],
}

impl<T> CacheReader<'_, T> {
    /// The value a caller cached for `key` of `kind` ([`MatchCache::insert`]
    /// or [`MatchCache::get_or_insert_with`]). Plain loads only.
    #[inline]
    pub fn get(&self, key: SeriesKey, kind: Kind) -> Option<&Arc<T>> {
        self.guards[shard_of(key.hash)]
            .find(key.hash, |cached| cached.is_for(key, kind, None))
            .map(|cached| &cached.plan)
    }

    /// Asks for the line where [`CacheReader::get`] of `key` starts looking,
    /// so a batch can overlap the lookups of several series.
    #[inline]
    pub fn prefetch(&self, key: SeriesKey) {
        self.guards[shard_of(key.hash)].prefetch(key.hash);
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

    /// A fingerprint whose low 64 bits (the table hash) are `key`'s and whose
    /// high bits are `other`'s: a 64-bit collision between two series.
    fn collision(key: SeriesKey, other: SeriesKey) -> u128 {
        (other.fingerprint >> 64 << 64) | key.hash as u128
    }

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
            fingerprint: collision(key, web_key),
        };
        let web_plan = cache.get_or_resolve(collided, &web, Kind::Counter, &rules);
        assert_eq!(*web_plan, rules.resolve(&web, Kind::Counter));
        assert_ne!(api_plan, web_plan);
        let gauge_plan = cache.get_or_resolve(collided, &web, Kind::Gauge, &rules);
        assert_eq!(*gauge_plan, rules.resolve(&web, Kind::Gauge));
        assert_ne!(web_plan, gauge_plan);
        assert_eq!(cache.resolves(), 3);
        // The colliding series no longer evict each other: both stay, and the
        // first is still served without resolving again.
        assert_eq!(cache.len(), 2);
        let again = cache.get_or_resolve(key, &api, Kind::Counter, &rules);
        assert!(Arc::ptr_eq(&again, &api_plan));
        assert_eq!(cache.resolves(), 3);
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
            cache
                .remove(api_key.hash)
                .map(|cached| (cached.fingerprint, cached.kind())),
            Some((api_key.fingerprint, Kind::Gauge))
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
            fingerprint: collision(key, web_key),
        };
        let collided = cache.get_or_insert_with(web, Kind::Counter, || "web".to_string());
        assert_eq!(*collided, "web");
        let gauge = cache.get_or_insert_with(web, Kind::Gauge, || "web gauge".to_string());
        assert_eq!(*gauge, "web gauge");
        assert_eq!(cache.resolves(), 3);
        let distribution = cache.get_or_insert_with(key, Kind::Distribution, || "api dist".to_string());
        assert_eq!(*distribution, "api dist");
        assert_eq!(
            cache.remove(key.hash).map(|cached| cached.kind()),
            Some(Kind::Distribution)
        );
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

    #[test]
    fn batch_readers_see_inserted_values_and_the_first_insert_wins() {
        let cache: MatchCache<&'static str> = MatchCache::new();
        let (key, _) = series("api");
        let (other, _) = series("web");
        assert!(cache.reader().get(key, Kind::Counter).is_none());
        let first = cache.insert(key, Kind::Counter, Arc::new("first"));
        let racing = cache.insert(key, Kind::Counter, Arc::new("second"));
        assert!(
            Arc::ptr_eq(&first, &racing),
            "a racing build must share the cached value"
        );
        // Same 64-bit hash, another series: both are kept, told apart by fingerprint.
        let collided = SeriesKey {
            hash: key.hash,
            fingerprint: collision(key, other),
        };
        cache.insert(collided, Kind::Counter, Arc::new("collided"));
        let gauge = cache.insert(key, Kind::Gauge, Arc::new("gauge"));
        let reader = cache.reader();
        assert!(
            reader.get(key, Kind::Counter).is_none(),
            "the kind change replaced the value"
        );
        assert!(Arc::ptr_eq(reader.get(key, Kind::Gauge).unwrap(), &gauge));
        assert_eq!(**reader.get(collided, Kind::Counter).unwrap(), "collided");
        assert!(reader.get(other, Kind::Counter).is_none());
        drop(reader);
        assert_eq!(cache.len(), 2);
        cache.retain(|value| *value != "gauge");
        assert_eq!(cache.len(), 1);
    }
}
