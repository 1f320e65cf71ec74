//! The engine's per-series route cache, built for batches: a batch takes a
//! read lock on every shard once, then looks its series up with plain loads
//! (no atomic per series), so the lookups of one batch can overlap their
//! cache misses. Routes built for new series are inserted after the batch.

use std::sync::Arc;

use hashbrown::HashTable;
use parking_lot::{RwLock, RwLockReadGuard};

use crate::model::{Kind, SeriesKey};

use super::route::SeriesRoute;

/// Lock shards of the cache: enough that inserts of new series and the
/// growth of one table stall few batches, few enough that locking them all
/// once per batch is cheap next to the batch.
const SHARDS: usize = 32;

/// One cached route with what it was built for, so a 64-bit collision or a
/// kind change is detected instead of trusted.
struct RouteEntry {
    /// Fingerprint of the series (tenant and labels); its low 64 bits are the table hash.
    fingerprint: u128,
    /// Kind of the series when the route was built.
    kind: Kind,
    route: Arc<SeriesRoute>,
}

/// Concurrent map from series identity to its cached [`SeriesRoute`].
pub struct RouteCache {
    shards: Box<[RwLock<HashTable<RouteEntry>>]>,
}

impl Default for RouteCache {
    fn default() -> Self {
        RouteCache {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
        }
    }
}

/// Shard of a series: bits the table itself does not use for its buckets
/// (hashbrown takes the low bits for the bucket and the top 7 as a tag).
#[inline]
fn shard_of(hash: u64) -> usize {
    ((hash >> 40) as usize) % SHARDS
}

impl RouteCache {
    /// Read access for one batch: every shard read-locked until the reader is dropped.
    pub fn reader(&self) -> RouteReader<'_> {
        RouteReader {
            guards: std::array::from_fn(|index| self.shards[index].read()),
        }
    }

    /// Caches `route`, built for `key` of `kind`, unless another thread
    /// cached one for the same series meanwhile; returns the route kept.
    /// Must not be called while this thread holds a [`RouteReader`] of the cache.
    pub fn insert(&self, key: SeriesKey, kind: Kind, route: Arc<SeriesRoute>) -> Arc<SeriesRoute> {
        let mut table = self.shards[shard_of(key.hash)].write();
        let hasher = |entry: &RouteEntry| entry.fingerprint as u64;
        match table.find_mut(key.hash, |entry| entry.fingerprint == key.fingerprint) {
            Some(entry) if entry.kind == kind => Arc::clone(&entry.route),
            Some(entry) => {
                // The series changed kind: the newest route wins.
                entry.kind = kind;
                entry.route = Arc::clone(&route);
                route
            }
            None => {
                table.insert_unique(
                    key.hash,
                    RouteEntry {
                        fingerprint: key.fingerprint,
                        kind,
                        route: Arc::clone(&route),
                    },
                    hasher,
                );
                route
            }
        }
    }

    /// Keeps only the routes `keep` accepts (e.g. routes still in use).
    /// Write-locks one shard at a time.
    pub fn retain(&self, mut keep: impl FnMut(&SeriesRoute) -> bool) {
        for shard in self.shards.iter() {
            shard.write().retain(|entry| keep(&entry.route));
        }
    }

    /// Number of cached series.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().len()).sum()
    }
}

/// A batch's read view of a [`RouteCache`] (see [`RouteCache::reader`]).
pub struct RouteReader<'a> {
    guards: [RwLockReadGuard<'a, HashTable<RouteEntry>>; SHARDS],
}

impl RouteReader<'_> {
    /// The cached route of `key` if it was built for `kind`. Plain loads only.
    #[inline]
    pub fn get(&self, key: SeriesKey, kind: Kind) -> Option<&Arc<SeriesRoute>> {
        self.guards[shard_of(key.hash)]
            .find(key.hash, |entry| entry.fingerprint == key.fingerprint)
            .filter(|entry| entry.kind == kind)
            .map(|entry| &entry.route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::route::SlotSets;
    use crate::engine::EngineSettings;
    use crate::model::{series_key, Labels};
    use crate::rules::RuleSet;

    fn route(kind: Kind) -> Arc<SeriesRoute> {
        let rules = RuleSet::default_rules();
        let labels = Labels::from_pairs([("__name__", "requests")]);
        let plan = rules.resolve(&labels, kind);
        Arc::new(SeriesRoute::build(
            &plan,
            &Arc::from("t"),
            &EngineSettings::default(),
            kind,
            &SlotSets::default(),
        ))
    }

    #[test]
    fn first_insert_wins_and_readers_see_it() {
        let cache = RouteCache::default();
        let key = series_key("t", &Labels::from_pairs([("__name__", "requests")]));
        assert!(cache.reader().get(key, Kind::Counter).is_none());
        let first = cache.insert(key, Kind::Counter, route(Kind::Counter));
        let second = cache.insert(key, Kind::Counter, route(Kind::Counter));
        assert!(
            Arc::ptr_eq(&first, &second),
            "a racing build must share the cached route"
        );
        let reader = cache.reader();
        assert!(Arc::ptr_eq(reader.get(key, Kind::Counter).unwrap(), &first));
        assert_eq!(reader.guards.iter().map(|table| table.len()).sum::<usize>(), 1);
    }

    #[test]
    fn collisions_and_kind_changes_are_told_apart() {
        let cache = RouteCache::default();
        let key = series_key("t", &Labels::from_pairs([("__name__", "a")]));
        let other = series_key("t", &Labels::from_pairs([("__name__", "b")]));
        // Same 64-bit hash, another series: the fingerprint keeps them apart.
        let collided = SeriesKey {
            hash: key.hash,
            fingerprint: other.fingerprint,
        };
        let a = cache.insert(key, Kind::Counter, route(Kind::Counter));
        let b = cache.insert(collided, Kind::Counter, route(Kind::Counter));
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(cache.len(), 2);
        assert!(
            cache.reader().get(key, Kind::Gauge).is_none(),
            "a kind change is a miss"
        );
        let gauge = cache.insert(key, Kind::Gauge, route(Kind::Gauge));
        let reader = cache.reader();
        assert!(Arc::ptr_eq(reader.get(key, Kind::Gauge).unwrap(), &gauge));
        assert!(reader.get(key, Kind::Counter).is_none());
        assert!(Arc::ptr_eq(reader.get(collided, Kind::Counter).unwrap(), &b));
        drop(reader);
        cache.retain(|route| route.targets.is_empty());
        assert_eq!(cache.len(), 0);
    }
}
