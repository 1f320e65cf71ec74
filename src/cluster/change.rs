//! Placement changes (`tailfold cluster add|remove|replace`): the new
//! placement moving as few shards as the balance allows, staged in etcd with
//! one transaction and one cutover, and completed by tailfold itself once the
//! old owners have flushed every window before that cutover.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::engine::next_common_boundary;

use super::etcd::{EtcdClient, EtcdError};
use super::placement::{keys, InstanceSpec, Placement, PlacementError, ShardSet};

/// Shards handed from one set to another at the change's cutover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The set that owns them until the cutoff (== cutover).
    pub from_set: u32,
    /// The set that owns them from the cutover.
    pub to_set: u32,
    /// Shard range `[from, to)`.
    pub shards: (u32, u32),
}

/// A placement change whose handoff is in flight, kept in the placement's meta.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// What was asked, e.g. `add i3`.
    pub what: String,
    /// When it was staged (ms since the epoch).
    pub staged_ms: i64,
    /// Event time from which the new owners fold a moving shard; the old
    /// owners fold it only before (their cutoff is the same instant). A
    /// window boundary of every policy in force.
    pub cutover_ms: i64,
    /// Shard ranges changing sets.
    pub moves: Vec<Move>,
    /// Instances new in a set that keeps its shards (a replace): they may
    /// lead only once the set flushed every window before the cutover.
    pub joining: Vec<String>,
    /// Instances that leave once the handoff completes.
    pub leaving: Vec<String>,
    /// Sets that leave once the handoff completes (they own no shard meanwhile).
    pub leaving_sets: Vec<u32>,
}

impl Change {
    /// Sets that must flush every window before the cutover before the change
    /// completes: every set handing shards off, and every set with a joining instance.
    pub fn handing_off(&self, placement: &Placement) -> Vec<u32> {
        let mut sets: Vec<u32> = self.moves.iter().map(|handoff| handoff.from_set).collect();
        for id in &self.joining {
            if let Some(set) = placement.set_of_instance(id) {
                sets.push(set.set);
            }
        }
        sets.sort_unstable();
        sets.dedup();
        sets
    }

    /// Shards moved in all.
    pub fn shards_moved(&self) -> u32 {
        self.moves
            .iter()
            .map(|handoff| handoff.shards.1 - handoff.shards.0)
            .sum()
    }
}

/// What an operator asks for.
#[derive(Clone, Debug)]
pub enum Request {
    /// A new shard set of these instances (as many as the replicas per set).
    Add(Vec<InstanceSpec>),
    /// The shard set made of exactly these instances leaves.
    Remove(Vec<String>),
    /// One instance of a set is swapped for a new one; no shard changes sets.
    Replace {
        /// The instance leaving.
        old: String,
        /// The instance taking its place.
        new: InstanceSpec,
    },
}

impl Request {
    fn describe(&self) -> String {
        match self {
            Request::Add(specs) => format!(
                "add {}",
                specs.iter().map(|spec| spec.id.as_str()).collect::<Vec<_>>().join(",")
            ),
            Request::Remove(ids) => format!("remove {}", ids.join(",")),
            Request::Replace { old, new } => format!("replace {old} with {}", new.id),
        }
    }
}

/// Why a placement change was refused or cannot complete.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// etcd cannot be reached or refused a call.
    #[error("placement change: {0}")]
    Etcd(#[from] EtcdError),
    /// The placement cannot be read or the new one is not consistent.
    #[error("placement change: {0}")]
    Placement(#[from] PlacementError),
    /// The cluster was never initialised.
    #[error("cluster {0}: no placement in etcd; create it with `tailfold cluster init`")]
    NoPlacement(String),
    /// What was asked does not fit the placement.
    #[error("cluster {cluster}: {what} refused: {problem}")]
    Invalid {
        /// Cluster id.
        cluster: String,
        /// What was asked.
        what: String,
        /// Why not.
        problem: String,
    },
    /// Another change's handoff has not completed.
    #[error("cluster {cluster}: {what} refused: the change `{in_flight}` (placement version {version}, cutover {cutover_ms} ms) is still in flight; its handoff completes once the old owners have flushed up to the cutover (see `tailfold cluster status`), retry then")]
    InFlight {
        /// Cluster id.
        cluster: String,
        /// What was asked.
        what: String,
        /// The change in flight.
        in_flight: String,
        /// Its placement version.
        version: u64,
        /// Its cutover.
        cutover_ms: i64,
    },
    /// A shard would be left without a live replica.
    #[error("cluster {cluster}: {what} refused: shards {shards} would have no live replica: set {set} ({instances}) has none registered in etcd; start them first")]
    NoLiveReplica {
        /// Cluster id.
        cluster: String,
        /// What was asked.
        what: String,
        /// The shard ranges, e.g. `0..4,9..12`.
        shards: String,
        /// Their set.
        set: u32,
        /// Its instances.
        instances: String,
    },
    /// Another change was written between the read and the write.
    #[error("cluster {cluster}: {what} refused: the placement changed meanwhile (now version {version}); retry")]
    Raced {
        /// Cluster id.
        cluster: String,
        /// What was asked.
        what: String,
        /// The version read before.
        version: u64,
    },
    /// The cutover cannot be aligned without the cluster's rules.
    #[error(
        "cluster {0}: no rules published yet, so no cutover can be aligned to their windows; start an instance first"
    )]
    NoRules(String),
    /// The cluster's rules do not compile.
    #[error("{0}")]
    Rules(#[from] super::rules::ClusterRulesError),
}

/// The shards of `ranges`, in order.
fn shards_of(ranges: &[(u32, u32)]) -> Vec<u32> {
    let mut shards: Vec<u32> = ranges.iter().flat_map(|&(from, to)| from..to).collect();
    shards.sort_unstable();
    shards
}

/// Sorted shards as contiguous ranges `[from, to)`.
///
/// ```
/// assert_eq!(tailfold::cluster::change::ranges_of(&[0, 1, 2, 5, 7, 8]), vec![(0, 3), (5, 6), (7, 9)]);
/// ```
pub fn ranges_of(shards: &[u32]) -> Vec<(u32, u32)> {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for &shard in shards {
        match ranges.last_mut() {
            Some((_, to)) if *to == shard => *to += 1,
            _ => ranges.push((shard, shard + 1)),
        }
    }
    ranges
}

/// The placement after `request`, staged with `cutover_ms` (version + 1).
/// Adding a set takes floor(N / sets) shards, one at a time from the set
/// holding most; removing one deals its shards out to the sets holding
/// fewest; a replace moves none. No other shard moves.
pub fn plan(current: &Placement, request: &Request, now_ms: i64, cutover_ms: i64) -> Result<Placement, ChangeError> {
    let what = request.describe();
    let invalid = |problem: String| ChangeError::Invalid {
        cluster: current.cluster.clone(),
        what: what.clone(),
        problem,
    };
    let mut sets = current.sets.clone();
    let mut next_set = current.next_set;
    let mut change = Change {
        what: what.clone(),
        staged_ms: now_ms,
        cutover_ms,
        moves: Vec::new(),
        joining: Vec::new(),
        leaving: Vec::new(),
        leaving_sets: Vec::new(),
    };
    let known = |id: &str| current.set_of_instance(id).is_some();
    match request {
        Request::Add(specs) => {
            if specs.len() != current.replicas as usize {
                return Err(invalid(format!(
                    "a new shard set needs {} instances (the replicas per set), got {}",
                    current.replicas,
                    specs.len()
                )));
            }
            if let Some(spec) = specs.iter().find(|spec| known(&spec.id)) {
                return Err(invalid(format!("instance {} is already in the placement", spec.id)));
            }
            let count = sets.len() as u32 + 1;
            if current.shards < count {
                return Err(invalid(format!("{} shards cannot feed {count} sets", current.shards)));
            }
            let mut owned: Vec<Vec<u32>> = sets.iter().map(|set| shards_of(&set.shards)).collect();
            let mut taken: Vec<Vec<u32>> = vec![Vec::new(); sets.len()];
            for _ in 0..current.shards / count {
                // The set holding most (the lowest id among equals) gives its highest shard.
                let donor = (0..owned.len())
                    .max_by_key(|&index| (owned[index].len(), std::cmp::Reverse(index)))
                    .expect("a placement has a set");
                let shard = owned[donor].pop().expect("a donor holds shards");
                taken[donor].push(shard);
            }
            let new_set = next_set;
            next_set += 1;
            let mut gained = Vec::new();
            for (index, mut shards) in taken.into_iter().enumerate() {
                shards.sort_unstable();
                for range in ranges_of(&shards) {
                    change.moves.push(Move {
                        from_set: sets[index].set,
                        to_set: new_set,
                        shards: range,
                    });
                }
                gained.extend(shards);
                sets[index].shards = ranges_of(&owned[index]);
            }
            gained.sort_unstable();
            sets.push(ShardSet {
                set: new_set,
                instances: specs.clone(),
                shards: ranges_of(&gained),
            });
        }
        Request::Remove(ids) => {
            let Some(leaving) = ids.first().and_then(|id| current.set_index_of_instance(id)) else {
                return Err(invalid(format!("instance {:?} is not in the placement", ids.first())));
            };
            let members: HashSet<&str> = sets[leaving].instances.iter().map(|i| i.id.as_str()).collect();
            let asked: HashSet<&str> = ids.iter().map(String::as_str).collect();
            if members != asked {
                return Err(invalid(format!(
                    "a remove takes a whole shard set: set {} is {}",
                    sets[leaving].set,
                    sets[leaving]
                        .instances
                        .iter()
                        .map(|i| i.id.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                )));
            }
            if sets.len() == 1 {
                return Err(invalid("the last shard set cannot leave".into()));
            }
            let freed = shards_of(&sets[leaving].shards);
            let mut owned: Vec<Vec<u32>> = sets.iter().map(|set| shards_of(&set.shards)).collect();
            // How many each remaining set takes: one at a time to the set holding fewest.
            let mut quota = vec![0usize; sets.len()];
            for _ in 0..freed.len() {
                let taker = (0..sets.len())
                    .filter(|&index| index != leaving)
                    .min_by_key(|&index| (owned[index].len() + quota[index], index))
                    .expect("another set remains");
                quota[taker] += 1;
            }
            // Contiguous runs of the freed shards, dealt in set order.
            let mut rest = freed.as_slice();
            for (index, take) in quota.iter().enumerate() {
                let (given, after) = rest.split_at(*take);
                rest = after;
                for range in ranges_of(given) {
                    change.moves.push(Move {
                        from_set: sets[leaving].set,
                        to_set: sets[index].set,
                        shards: range,
                    });
                }
                owned[index].extend_from_slice(given);
                owned[index].sort_unstable();
                sets[index].shards = ranges_of(&owned[index]);
            }
            sets[leaving].shards = Vec::new();
            change.leaving = ids.clone();
            change.leaving_sets = vec![sets[leaving].set];
        }
        Request::Replace { old, new } => {
            let Some(index) = current.set_index_of_instance(old) else {
                return Err(invalid(format!("instance {old} is not in the placement")));
            };
            if known(&new.id) {
                return Err(invalid(format!("instance {} is already in the placement", new.id)));
            }
            sets[index].instances.push(new.clone());
            change.joining = vec![new.id.clone()];
            change.leaving = vec![old.clone()];
        }
    }
    Ok(Placement::with_change(
        &current.cluster,
        current.shards,
        current.replicas,
        current.version + 1,
        sets,
        next_set,
        Some(change),
    )?)
}

/// The storage policies of the cluster's rules in force (and of the set
/// they replace while that one still applies).
pub async fn policies_in_force(
    client: &EtcdClient,
    cluster: &str,
) -> Result<Vec<crate::model::StoragePolicy>, ChangeError> {
    let stored = super::rules::read(client, cluster)
        .await?
        .ok_or_else(|| ChangeError::NoRules(cluster.to_string()))?;
    let rules = &stored.rules;
    let mut policies = super::rules::compile(cluster, rules.version, &rules.source)?.storage_policies();
    if let Some(previous) = &rules.previous {
        policies.extend(super::rules::compile(cluster, previous.version, &previous.source)?.storage_policies());
    }
    Ok(policies)
}

/// What a staged change came to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Staged {
    /// Cluster id.
    pub cluster: String,
    /// The new placement version.
    pub version: u64,
    /// The change.
    pub change: Change,
    /// Shards moved between sets.
    pub shards_moved: u32,
}

impl Staged {
    /// One line per fact, for people.
    pub fn report(&self) -> String {
        let mut out = format!(
            "cluster {}: staged `{}` as placement version {}: {} shards move, cutover at {} ms\n",
            self.cluster, self.change.what, self.version, self.shards_moved, self.change.cutover_ms
        );
        for handoff in &self.change.moves {
            out.push_str(&format!(
                "  shards {}..{}: set {} -> set {}\n",
                handoff.shards.0, handoff.shards.1, handoff.from_set, handoff.to_set
            ));
        }
        for id in &self.change.joining {
            out.push_str(&format!(
                "  {id} joins its set; it may lead once the set flushed up to the cutover\n"
            ));
        }
        for id in &self.change.leaving {
            out.push_str(&format!(
                "  {id} leaves (and stops) once its shards are flushed up to the cutoff\n"
            ));
        }
        out
    }
}

/// Stages `request` in etcd: refused while another change is in flight or
/// when a shard would be left without a live replica; the cutover is the
/// first boundary of every policy in force at least `margin_ms` ahead.
pub async fn stage(
    client: &EtcdClient,
    cluster: &str,
    request: &Request,
    margin_ms: u64,
    now_ms: i64,
) -> Result<Staged, ChangeError> {
    let what = request.describe();
    let (current, revision) = Placement::load_versioned(client, cluster)
        .await?
        .ok_or_else(|| ChangeError::NoPlacement(cluster.to_string()))?;
    if let Some(change) = &current.change {
        return Err(ChangeError::InFlight {
            cluster: cluster.to_string(),
            what,
            in_flight: change.what.clone(),
            version: current.version,
            cutover_ms: change.cutover_ms,
        });
    }
    let policies = policies_in_force(client, cluster).await?;
    let cutover_ms = next_common_boundary(&policies, now_ms + margin_ms as i64 - 1);
    let next = plan(&current, request, now_ms, cutover_ms)?;
    let change = next.change.clone().expect("a plan stages a change");
    check_live(client, &next, &change, &what).await?;
    let mut puts = vec![(keys::meta(cluster), next.meta_value())];
    for set in &next.sets {
        puts.push((
            format!("{}{}", keys::sets_prefix(cluster), set.set),
            serde_json::to_vec(set).expect("a set serialises"),
        ));
    }
    if !client
        .compare_and_write(&keys::meta(cluster), revision, puts, Vec::new())
        .await?
    {
        return Err(ChangeError::Raced {
            cluster: cluster.to_string(),
            what,
            version: current.version,
        });
    }
    Ok(Staged {
        cluster: cluster.to_string(),
        version: next.version,
        shards_moved: change.shards_moved(),
        change,
    })
}

/// Refuses a change after which a set that owns shards, or hands some off
/// (it must flush up to the cutoff), has no registered instance besides the
/// ones joining.
async fn check_live(client: &EtcdClient, next: &Placement, change: &Change, what: &str) -> Result<(), ChangeError> {
    let live = super::coordinator::registered_ids(client, &next.cluster).await?;
    let handing_off = change.handing_off(next);
    for set in &next.sets {
        let needed = !set.shards.is_empty() || handing_off.contains(&set.set);
        let serving = set.instances.iter().any(|instance| {
            live.contains(&instance.id) && !(change.joining.contains(&instance.id) && handing_off.contains(&set.set))
        });
        let joining_live = set
            .instances
            .iter()
            .filter(|instance| change.joining.contains(&instance.id))
            .all(|instance| live.contains(&instance.id));
        if needed && (!serving || !joining_live) {
            let shards: Vec<(u32, u32)> = if set.shards.is_empty() {
                change
                    .moves
                    .iter()
                    .filter(|handoff| handoff.from_set == set.set)
                    .map(|handoff| handoff.shards)
                    .collect()
            } else {
                set.shards.clone()
            };
            return Err(ChangeError::NoLiveReplica {
                cluster: next.cluster.clone(),
                what: what.to_string(),
                shards: shards
                    .iter()
                    .map(|(from, to)| format!("{from}..{to}"))
                    .collect::<Vec<_>>()
                    .join(","),
                set: set.set,
                instances: set
                    .instances
                    .iter()
                    .map(|instance| {
                        let state = if live.contains(&instance.id) { "live" } else { "down" };
                        format!("{} {state}", instance.id)
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(())
}

/// Completes the change in flight once its cutover has passed and every set
/// handing off has flushed (own and rollup windows, every policy in force)
/// up to it: the moving shards become available on their new owners, the
/// leaving instances and sets are dropped. True when this call completed it.
pub async fn complete(client: &EtcdClient, cluster: &str, now_ms: i64) -> Result<bool, ChangeError> {
    let Some((current, revision)) = Placement::load_versioned(client, cluster).await? else {
        return Ok(false);
    };
    let Some(change) = current.change.clone() else {
        return Ok(false);
    };
    if now_ms < change.cutover_ms {
        return Ok(false);
    }
    let policies = policies_in_force(client, cluster).await?;
    let mut stale_marks = Vec::new();
    for set in change.handing_off(&current) {
        let prefix = keys::flush_prefix(cluster, set);
        let marks = client.get_prefix(&prefix).await?;
        for policy in &policies {
            let key = format!("{prefix}{policy}");
            let flushed = marks
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| serde_json::from_slice::<super::coordinator::FlushMark>(&kv.value).ok())
                .is_some_and(|mark| mark.until_ms >= change.cutover_ms && mark.rollups_until_ms >= change.cutover_ms);
            if !flushed {
                return Ok(false);
            }
        }
        if change.leaving_sets.contains(&set) {
            stale_marks.extend(marks.into_iter().map(|kv| kv.key));
        }
    }
    let sets: Vec<ShardSet> = current
        .sets
        .iter()
        .filter(|set| !change.leaving_sets.contains(&set.set))
        .map(|set| ShardSet {
            instances: set
                .instances
                .iter()
                .filter(|instance| !change.leaving.contains(&instance.id))
                .cloned()
                .collect(),
            ..set.clone()
        })
        .collect();
    let next = Placement::with_change(
        cluster,
        current.shards,
        current.replicas,
        current.version + 1,
        sets,
        current.next_set,
        None,
    )?;
    let mut puts = vec![(keys::meta(cluster), next.meta_value())];
    for set in &next.sets {
        puts.push((
            format!("{}{}", keys::sets_prefix(cluster), set.set),
            serde_json::to_vec(set).expect("a set serialises"),
        ));
    }
    let mut deletes = stale_marks;
    deletes.extend(
        change
            .leaving_sets
            .iter()
            .map(|set| format!("{}{set}", keys::sets_prefix(cluster))),
    );
    Ok(client
        .compare_and_write(&keys::meta(cluster), revision, puts, deletes)
        .await?)
}

#[cfg(test)]
mod tests;
