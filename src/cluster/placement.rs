//! Placement: a fixed number of virtual shards, grouped into shard sets of
//! mirrored replicas, kept in etcd as one small value per set; and the
//! stable shard hash every instance and every version computes alike.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::model::Labels;

use super::change::Change;
use super::etcd::{EtcdClient, EtcdError, KeyValue};

/// The shard of a series of `tenant` with `labels`: xxh3-64 of
/// `tenant 0x00 (name 0x00 value 0x00)*` over the labels sorted by name,
/// modulo `shards`. Pinned by test vectors: it must never change.
pub fn shard_of(tenant: &str, labels: &Labels, shards: u32) -> u32 {
    let mut hasher = Xxh3::new();
    hasher.update(tenant.as_bytes());
    hasher.update(&[0]);
    for label in labels.iter() {
        hasher.update(label.name.as_bytes());
        hasher.update(&[0]);
        hasher.update(label.value.as_bytes());
        hasher.update(&[0]);
    }
    (hasher.digest() % u64::from(shards.max(1))) as u32
}

/// The etcd keys of a cluster, in one place.
pub mod keys {
    /// Root of every key of `cluster`.
    pub fn root(cluster: &str) -> String {
        format!("/tailfold/{cluster}/")
    }
    /// Prefix of the whole placement (meta and sets).
    pub fn placement_prefix(cluster: &str) -> String {
        format!("{}placement/", root(cluster))
    }
    /// The placement's shard count, replicas and version.
    pub fn meta(cluster: &str) -> String {
        format!("{}placement/meta", root(cluster))
    }
    /// Prefix of the shard sets.
    pub fn sets_prefix(cluster: &str) -> String {
        format!("{}placement/sets/", root(cluster))
    }
    /// Prefix of the live instances' registrations.
    pub fn instances_prefix(cluster: &str) -> String {
        format!("{}instances/", root(cluster))
    }
    /// One instance's registration (under its lease).
    pub fn instance(cluster: &str, id: &str) -> String {
        format!("{}{id}", instances_prefix(cluster))
    }
    /// Prefix of a shard set's election.
    pub fn election_prefix(cluster: &str, set: u32) -> String {
        format!("{}elections/{set}/", root(cluster))
    }
    /// The cluster's rule set (see [`crate::cluster::rules`]).
    pub fn rules(cluster: &str) -> String {
        format!("{}rules/current", root(cluster))
    }
    /// Prefix of the rules keys (watched).
    pub fn rules_prefix(cluster: &str) -> String {
        format!("{}rules/", root(cluster))
    }
    /// Prefix of a shard set's flush marks (one key per policy).
    pub fn flush_prefix(cluster: &str, set: u32) -> String {
        format!("{}flush/{set}/", root(cluster))
    }
}

/// One instance as the placement names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// Instance id.
    pub id: String,
    /// Address of its forwarding API.
    pub endpoint: String,
    /// Address of its HTTP API (status, fan-out queries).
    pub http: String,
}

/// Mirrored replicas owning the same shards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSet {
    /// Set id.
    pub set: u32,
    /// Its replicas.
    pub instances: Vec<InstanceSpec>,
    /// Shard ranges `[from, to)`.
    pub shards: Vec<(u32, u32)>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Meta {
    pub(super) cluster: String,
    pub(super) shards: u32,
    pub(super) replicas: u32,
    pub(super) version: u64,
    /// The id the next added set gets (ids are never reused: a removed
    /// set's flush marks must not speak for a new one).
    #[serde(default)]
    pub(super) next_set: Option<u32>,
    /// The change whose handoff is in flight, if any.
    #[serde(default)]
    pub(super) change: Option<Change>,
}

/// The placement of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Cluster id.
    pub cluster: String,
    /// Virtual shards, fixed at creation.
    pub shards: u32,
    /// Replicas per set.
    pub replicas: u32,
    /// Bumped by every change.
    pub version: u64,
    /// The shard sets.
    pub sets: Vec<ShardSet>,
    /// The id the next added set gets.
    pub next_set: u32,
    /// The change whose handoff is in flight (see [`super::change`]).
    pub change: Option<Change>,
    /// Index in `sets` of each shard's set.
    set_of: Vec<u32>,
    /// Per shard, the index in `sets` of the set it is moving away from and
    /// the cutover (`None`: not moving).
    moving_from: Vec<Option<(u32, i64)>>,
}

/// A placement that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// Read or written badly.
    #[error("placement: {0}")]
    Etcd(#[from] EtcdError),
    /// Not consistent.
    #[error("placement of cluster {cluster}: {problem}")]
    Invalid {
        /// Cluster id.
        cluster: String,
        /// What is wrong.
        problem: String,
    },
    /// One already exists.
    #[error("cluster {0} already has a placement in etcd")]
    Exists(String),
}

impl Placement {
    /// Checks and indexes a placement without a change in flight.
    pub fn new(
        cluster: &str,
        shards: u32,
        replicas: u32,
        version: u64,
        sets: Vec<ShardSet>,
    ) -> Result<Self, PlacementError> {
        let next_set = sets.iter().map(|set| set.set + 1).max().unwrap_or(0);
        Placement::with_change(cluster, shards, replicas, version, sets, next_set, None)
    }

    /// Checks and indexes a placement, with the change in flight if any: a
    /// set then also holds the instances `change` says are leaving it.
    pub fn with_change(
        cluster: &str,
        shards: u32,
        replicas: u32,
        version: u64,
        sets: Vec<ShardSet>,
        next_set: u32,
        change: Option<Change>,
    ) -> Result<Self, PlacementError> {
        let invalid = |problem: String| PlacementError::Invalid {
            cluster: cluster.to_string(),
            problem,
        };
        if shards == 0 {
            return Err(invalid("0 shards".into()));
        }
        let mut set_of = vec![u32::MAX; shards as usize];
        let mut ids = std::collections::HashSet::new();
        for (index, set) in sets.iter().enumerate() {
            // A set keeps an instance a replace takes out until the handoff completes.
            let leaving = match &change {
                Some(change) if !change.leaving_sets.contains(&set.set) => set
                    .instances
                    .iter()
                    .filter(|instance| change.leaving.contains(&instance.id))
                    .count(),
                _ => 0,
            };
            if set.instances.len() != replicas as usize + leaving {
                return Err(invalid(format!(
                    "set {} has {} instances, replicas is {replicas}",
                    set.set,
                    set.instances.len()
                )));
            }
            for instance in &set.instances {
                if !ids.insert(instance.id.clone()) {
                    return Err(invalid(format!("instance {} is in two places", instance.id)));
                }
            }
            for &(from, to) in &set.shards {
                if from >= to || to > shards {
                    return Err(invalid(format!(
                        "set {} has shard range {from}..{to} outside 0..{shards}",
                        set.set
                    )));
                }
                for shard in from..to {
                    if set_of[shard as usize] != u32::MAX {
                        return Err(invalid(format!("shard {shard} is in two sets")));
                    }
                    set_of[shard as usize] = index as u32;
                }
            }
        }
        if let Some(shard) = set_of.iter().position(|set| *set == u32::MAX) {
            return Err(invalid(format!("shard {shard} is in no set")));
        }
        let mut moving_from = vec![None; shards as usize];
        for handoff in change.iter().flat_map(|change| &change.moves) {
            let from = sets.iter().position(|set| set.set == handoff.from_set);
            let to = sets.iter().position(|set| set.set == handoff.to_set);
            let (Some(from), Some(to)) = (from, to) else {
                return Err(invalid(format!(
                    "a handoff names set {} or {}, which the placement lacks",
                    handoff.from_set, handoff.to_set
                )));
            };
            let (first, end) = handoff.shards;
            for shard in first..end.min(shards) {
                if set_of[shard as usize] != to as u32 {
                    return Err(invalid(format!(
                        "shard {shard} moves to set {} but is placed elsewhere",
                        handoff.to_set
                    )));
                }
                moving_from[shard as usize] = Some((from as u32, change.as_ref().map_or(0, |c| c.cutover_ms)));
            }
        }
        Ok(Placement {
            cluster: cluster.to_string(),
            shards,
            replicas,
            version,
            sets,
            next_set,
            change,
            set_of,
            moving_from,
        })
    }

    /// The first placement: consecutive groups of `replicas` instances form
    /// sets 0, 1, ...; the shards split into equal contiguous ranges.
    pub fn initial(
        cluster: &str,
        shards: u32,
        replicas: u32,
        instances: Vec<InstanceSpec>,
    ) -> Result<Self, PlacementError> {
        let invalid = |problem: String| PlacementError::Invalid {
            cluster: cluster.to_string(),
            problem,
        };
        if replicas == 0 || instances.is_empty() || instances.len() % replicas as usize != 0 {
            return Err(invalid(format!(
                "{} instances cannot form sets of {replicas} replicas",
                instances.len()
            )));
        }
        let count = (instances.len() / replicas as usize) as u32;
        if shards < count {
            return Err(invalid(format!("{shards} shards for {count} sets")));
        }
        let sets = instances
            .chunks(replicas as usize)
            .enumerate()
            .map(|(index, chunk)| {
                let index = index as u32;
                ShardSet {
                    set: index,
                    instances: chunk.to_vec(),
                    shards: vec![(
                        (u64::from(shards) * u64::from(index) / u64::from(count)) as u32,
                        (u64::from(shards) * u64::from(index + 1) / u64::from(count)) as u32,
                    )],
                }
            })
            .collect();
        Placement::new(cluster, shards, replicas, 1, sets)
    }

    /// The set owning `shard`.
    pub fn set_of_shard(&self, shard: u32) -> &ShardSet {
        &self.sets[self.set_index_of_shard(shard)]
    }

    /// Index in `sets` of the set owning `shard`.
    pub fn set_index_of_shard(&self, shard: u32) -> usize {
        self.set_of[(shard % self.shards) as usize] as usize
    }

    /// For a shard in a handoff: the index in `sets` of the set it moves
    /// away from, and the cutover (`None` when it is not moving).
    pub fn moving_from(&self, shard: u32) -> Option<(usize, i64)> {
        self.moving_from[(shard % self.shards) as usize].map(|(from, cutover)| (from as usize, cutover))
    }

    /// Index in `sets` of the set `id` is in.
    pub fn set_index_of_instance(&self, id: &str) -> Option<usize> {
        self.sets
            .iter()
            .position(|set| set.instances.iter().any(|instance| instance.id == id))
    }

    /// The set of instance `id`.
    pub fn set_of_instance(&self, id: &str) -> Option<&ShardSet> {
        self.sets
            .iter()
            .find(|set| set.instances.iter().any(|instance| instance.id == id))
    }

    /// Reads the placement of `cluster`, if it was created.
    pub async fn load(client: &EtcdClient, cluster: &str) -> Result<Option<Placement>, PlacementError> {
        Ok(Placement::load_versioned(client, cluster)
            .await?
            .map(|(placement, _)| placement))
    }

    /// [`Placement::load`] with the meta key's mod revision, which a change
    /// compares against so two changes cannot both be written.
    pub async fn load_versioned(
        client: &EtcdClient,
        cluster: &str,
    ) -> Result<Option<(Placement, i64)>, PlacementError> {
        // One range read: the meta and the sets at the same revision.
        let mut all = client.get_prefix(&keys::placement_prefix(cluster)).await?;
        let meta_key = keys::meta(cluster);
        let Some(at) = all.iter().position(|kv| kv.key == meta_key) else {
            return Ok(None);
        };
        let meta = all.remove(at);
        let sets_prefix = keys::sets_prefix(cluster);
        all.retain(|kv| kv.key.starts_with(&sets_prefix));
        Placement::decode(cluster, &meta, &all).map(|placement| Some((placement, meta.mod_revision)))
    }

    /// A placement from its meta value and its sets' values.
    fn decode(cluster: &str, meta: &KeyValue, sets: &[KeyValue]) -> Result<Placement, PlacementError> {
        let invalid = |problem: String| PlacementError::Invalid {
            cluster: cluster.to_string(),
            problem,
        };
        let meta: Meta = serde_json::from_slice(&meta.value).map_err(|error| invalid(format!("meta: {error}")))?;
        let mut decoded = Vec::new();
        for kv in sets {
            decoded.push(
                serde_json::from_slice::<ShardSet>(&kv.value)
                    .map_err(|error| invalid(format!("{}: {error}", kv.key)))?,
            );
        }
        decoded.sort_by_key(|set| set.set);
        let next_set = meta
            .next_set
            .unwrap_or_else(|| decoded.iter().map(|set| set.set + 1).max().unwrap_or(0));
        Placement::with_change(
            cluster,
            meta.shards,
            meta.replicas,
            meta.version,
            decoded,
            next_set,
            meta.change,
        )
    }

    /// The meta value of this placement.
    pub(super) fn meta_value(&self) -> Vec<u8> {
        let meta = Meta {
            cluster: self.cluster.clone(),
            shards: self.shards,
            replicas: self.replicas,
            version: self.version,
            next_set: Some(self.next_set),
            change: self.change.clone(),
        };
        serde_json::to_vec(&meta).expect("meta serialises")
    }

    /// Writes a new placement; refuses when `cluster` has one. The meta key
    /// is written last, with a create: it is the commit point. Whether one
    /// exists is checked first, so a refused init leaves the existing sets
    /// alone; sets left by an init interrupted before its meta are replaced.
    pub async fn create(&self, client: &EtcdClient) -> Result<(), PlacementError> {
        if client.get(&keys::meta(&self.cluster)).await?.is_some() {
            return Err(PlacementError::Exists(self.cluster.clone()));
        }
        for stale in client.get_prefix(&keys::sets_prefix(&self.cluster)).await? {
            client.delete(&stale.key).await?;
        }
        for set in &self.sets {
            let value = serde_json::to_vec(set).expect("a set serialises");
            client
                .put(&format!("{}{}", keys::sets_prefix(&self.cluster), set.set), value, None)
                .await?;
        }
        let value = self.meta_value();
        if !client.create(&keys::meta(&self.cluster), value, None).await? {
            return Err(PlacementError::Exists(self.cluster.clone()));
        }
        Ok(())
    }
}

/// An instance spec for unit tests (the address is never dialled).
#[cfg(test)]
pub(crate) fn spec(id: &str) -> InstanceSpec {
    InstanceSpec {
        id: id.into(),
        endpoint: "127.0.0.1:1".into(),
        http: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shard of a series must never change between versions: these
    /// vectors were computed once and are fixed.
    #[test]
    fn the_shard_hash_is_pinned_by_fixed_vectors() {
        let cases: [(&str, &[(&str, &str)]); 6] = [
            ("default", &[]),
            ("default", &[("__name__", "http_requests_total")]),
            ("team-a", &[("__name__", "http_requests_total")]),
            ("default", &[("__name__", "lat"), ("pod", "a"), ("service", "api")]),
            ("default", &[("service", "api"), ("__name__", "lat"), ("pod", "a")]),
            ("ü", &[("__name__", "größe"), ("région", "€")]),
        ];
        let got: Vec<(u32, u32)> = cases
            .iter()
            .map(|(tenant, pairs)| {
                let labels = Labels::from_pairs(pairs.iter().copied());
                (shard_of(tenant, &labels, 1024), shard_of(tenant, &labels, 7))
            })
            .collect();
        assert_eq!(got, PINNED, "the shard hash changed: every cluster would re-shard");
        assert_eq!(got[3], got[4], "label order does not matter");
        assert_ne!(got[1], got[2], "the tenant is part of the identity");
    }

    /// Computed independently with Python's `xxhash.xxh3_64_intdigest` over
    /// the canonical bytes, modulo 1024 and 7.
    const PINNED: [(u32, u32); 6] = [(343, 0), (740, 3), (125, 5), (457, 1), (457, 1), (866, 1)];

    /// More pinned vectors, computed outside tailfold by the reference xxHash
    /// C library (`libxxhash`'s `XXH3_64bits` over the canonical bytes, via
    /// Python ctypes), with a modulus of `u32::MAX` to pin 32 bits of the hash.
    #[test]
    fn the_shard_hash_matches_the_reference_xxhash_library() {
        let http = [
            ("service", "api"),
            ("__name__", "http_requests_total"),
            ("status", "200"),
            ("method", "GET"),
        ];
        let unicode = [
            ("__name__", "latência_segundos"),
            ("região", "são-paulo"),
            ("emoji", "🚀"),
        ];
        // (tenant, labels, shard of 1024, of 7, of u32::MAX)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], [u32; 3]);
        let cases: [Case; 7] = [
            ("", &[], [219, 2, 3415919823]),
            ("acme", &[], [695, 0, 822460940]),
            ("", &[("__name__", "up")], [267, 3, 277425782]),
            ("acme", &http, [193, 3, 3593801566]),
            ("other", &http, [440, 2, 1828919315]),
            ("acme", &unicode, [197, 3, 4191244746]),
            ("acme", &[("__name__", "x"), ("a", "")], [506, 5, 329615011]),
        ];
        for (tenant, pairs, expected) in cases {
            let labels = Labels::from_pairs(pairs.iter().copied());
            let got = [1024, 7, u32::MAX].map(|shards| shard_of(tenant, &labels, shards));
            assert_eq!(got, expected, "tenant {tenant:?} labels {pairs:?}");
        }
    }

    #[test]
    fn the_initial_placement_splits_shards_evenly_and_checks_its_input() {
        let placement = Placement::initial("c", 10, 2, ["a", "b", "c", "d"].map(spec).to_vec()).unwrap();
        assert_eq!(placement.sets.len(), 2);
        assert_eq!(placement.sets[0].shards, vec![(0, 5)]);
        assert_eq!(placement.sets[1].shards, vec![(5, 10)]);
        assert_eq!(placement.set_of_shard(7).set, 1);
        assert_eq!(placement.set_of_instance("c").map(|set| set.set), Some(1));
        let refused = |result: Result<Placement, PlacementError>| result.unwrap_err().to_string();
        assert!(
            refused(Placement::initial("c", 10, 2, ["a", "b", "c"].map(spec).to_vec())).contains("cannot form sets")
        );
        assert!(refused(Placement::initial("c", 1, 1, ["a", "b"].map(spec).to_vec())).contains("1 shards for 2 sets"));
        assert!(refused(Placement::initial("c", 4, 1, ["a", "a"].map(spec).to_vec())).contains("two places"));
        let gap = vec![ShardSet {
            set: 0,
            instances: vec![spec("a")],
            shards: vec![(0, 3)],
        }];
        assert!(refused(Placement::new("c", 4, 1, 1, gap)).contains("shard 3 is in no set"));
    }
}
