//! What `tailfold cluster status` and `GET /api/v1/cluster` show: the
//! placement, which instances are registered (live), each set's leader and
//! its flush marks, read from etcd.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::change::Change;
use super::coordinator::{FlushMark, Registration};
use super::etcd::{Election, EtcdClient};
use super::placement::{keys, Placement, PlacementError};

/// One instance in the status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// Instance id.
    pub id: String,
    /// Forwarding API address.
    pub endpoint: String,
    /// HTTP API address.
    pub http: String,
    /// Registered in etcd under a live lease.
    pub live: bool,
    /// When it started, if live.
    pub started_ms: Option<i64>,
    /// Hash of the newest rules it folds, if live.
    pub rules_hash: Option<String>,
    /// Version of the cluster's rules it has seen, if live.
    #[serde(default)]
    pub rules_version: Option<u64>,
    /// Why it does not fold the cluster's rules (it neither leads nor forwards then).
    #[serde(default)]
    pub rules_differ: Option<String>,
    /// From when it may lead (ms since the epoch), if live.
    #[serde(default)]
    pub warm_at_ms: Option<i64>,
    /// Drained (`tailfold cluster drain`): it does not campaign.
    #[serde(default)]
    pub draining: bool,
    /// `down`, `warming` (live, not yet holding every window its set may
    /// still flush), `ready` (may lead: in its set's election line),
    /// `draining`, or `rules_differ`.
    #[serde(default)]
    pub state: String,
}

/// The state an instance shows in the status, from its registration and
/// whether it stands in its set's election line.
fn instance_state(registration: Option<&Registration>, campaigning: bool) -> &'static str {
    match registration {
        None => "down",
        Some(registration) if registration.draining => "draining",
        Some(registration) if registration.rules_differ.is_some() => "rules_differ",
        Some(_) if campaigning => "ready",
        Some(_) => "warming",
    }
}

/// The cluster's rules as etcd holds them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RulesSummary {
    /// Version.
    pub version: u64,
    /// Content hash.
    pub hash: String,
    /// First event time they apply to (`null`: from the start).
    pub effective_from_ms: Option<i64>,
    /// Who published them.
    pub published_by: String,
    /// When.
    pub published_ms: i64,
    /// Hash of the set they replaced (in force before `effective_from_ms`).
    pub previous_hash: Option<String>,
}

/// A shard range of a set and its state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RangeStatus {
    /// Shard range `[from, to)`.
    pub shards: (u32, u32),
    /// `available` (owned and served), `initializing` (moving in: folded
    /// from `cutover_ms`, available once the old owner flushed up to it) or
    /// `leaving` (moving out: folded before `cutoff_ms`, flushed up to it).
    pub state: String,
    /// For `initializing`: the event time this set folds the range from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cutover_ms: Option<i64>,
    /// For `leaving`: the event time this set folds the range until.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cutoff_ms: Option<i64>,
}

/// One shard set in the status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetStatus {
    /// Set id.
    pub set: u32,
    /// Shard ranges `[from, to)`.
    pub shards: Vec<(u32, u32)>,
    /// Each range it owns or hands off, with its state.
    #[serde(default)]
    pub ranges: Vec<RangeStatus>,
    /// Its leader's id, if elected.
    pub leader: Option<String>,
    /// Its replicas.
    pub instances: Vec<InstanceStatus>,
    /// Flush marks by policy.
    pub flushed: BTreeMap<String, FlushMark>,
}

/// The whole cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Cluster id.
    pub cluster: String,
    /// Virtual shards.
    pub shards: u32,
    /// Replicas per set.
    pub replicas: u32,
    /// Placement version.
    pub version: u64,
    /// The cluster's rules (`null` until published).
    pub rules: Option<RulesSummary>,
    /// The sets.
    pub sets: Vec<SetStatus>,
    /// The placement change whose handoff is in flight.
    #[serde(default)]
    pub change: Option<Change>,
    /// Instances registered but not (yet) in the placement: started for an `add` or `replace`.
    #[serde(default)]
    pub unplaced: Vec<String>,
}

impl ClusterStatus {
    /// Reads the status of `cluster` from etcd; `None` without a placement.
    pub async fn read(client: &EtcdClient, cluster: &str) -> Result<Option<ClusterStatus>, PlacementError> {
        let Some(placement) = Placement::load(client, cluster).await? else {
            return Ok(None);
        };
        let prefix = keys::instances_prefix(cluster);
        let registered: BTreeMap<String, Registration> = client
            .get_prefix(&prefix)
            .await?
            .into_iter()
            .filter_map(|kv| {
                serde_json::from_slice(&kv.value)
                    .ok()
                    .map(|r: Registration| (r.id.clone(), r))
            })
            .collect();
        let mut sets = Vec::new();
        for set in &placement.sets {
            let leader = Election::new(client.clone(), &keys::election_prefix(cluster, set.set))
                .leader()
                .await?
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            let line: Vec<String> = client
                .get_prefix(&keys::election_prefix(cluster, set.set))
                .await?
                .into_iter()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                .collect();
            let flush_prefix = keys::flush_prefix(cluster, set.set);
            let flushed = client
                .get_prefix(&flush_prefix)
                .await?
                .into_iter()
                .filter_map(|kv| {
                    let policy = kv.key.strip_prefix(&flush_prefix)?.to_string();
                    Some((policy, serde_json::from_slice(&kv.value).ok()?))
                })
                .collect();
            let mut ranges: Vec<RangeStatus> = set
                .shards
                .iter()
                .flat_map(|range| split_by_moves(*range, set.set, placement.change.as_ref()))
                .collect();
            for handoff in placement.change.iter().flat_map(|change| &change.moves) {
                if handoff.from_set == set.set {
                    ranges.push(RangeStatus {
                        shards: handoff.shards,
                        state: "leaving".into(),
                        cutover_ms: None,
                        cutoff_ms: placement.change.as_ref().map(|change| change.cutover_ms),
                    });
                }
            }
            ranges.sort_by_key(|range| range.shards);
            sets.push(SetStatus {
                set: set.set,
                shards: set.shards.clone(),
                ranges,
                leader,
                instances: set
                    .instances
                    .iter()
                    .map(|instance| {
                        let registration = registered.get(&instance.id);
                        InstanceStatus {
                            id: instance.id.clone(),
                            endpoint: instance.endpoint.clone(),
                            http: instance.http.clone(),
                            live: registration.is_some(),
                            started_ms: registration.map(|r| r.started_ms),
                            rules_hash: registration.map(|r| r.rules_hash.clone()),
                            rules_version: registration.map(|r| r.rules_version),
                            rules_differ: registration.and_then(|r| r.rules_differ.clone()),
                            warm_at_ms: registration.map(|r| r.warm_at_ms),
                            draining: registration.is_some_and(|r| r.draining),
                            state: instance_state(registration, line.contains(&instance.id)).to_string(),
                        }
                    })
                    .collect(),
                flushed,
            });
        }
        let rules = match super::rules::read(client, cluster).await {
            Ok(stored) => stored.map(|stored| RulesSummary {
                version: stored.rules.version,
                hash: stored.rules.hash,
                effective_from_ms: stored.rules.effective_from_ms,
                published_by: stored.rules.published_by,
                published_ms: stored.rules.published_ms,
                previous_hash: stored.rules.previous.map(|previous| previous.hash),
            }),
            Err(super::rules::ClusterRulesError::Etcd(error)) => return Err(error.into()),
            Err(error) => {
                tracing::warn!(%error, "the cluster's rules are unreadable; status shows none");
                None
            }
        };
        let placed: std::collections::HashSet<&str> = placement
            .sets
            .iter()
            .flat_map(|set| set.instances.iter().map(|instance| instance.id.as_str()))
            .collect();
        let unplaced = registered
            .keys()
            .filter(|id| !placed.contains(id.as_str()))
            .cloned()
            .collect();
        Ok(Some(ClusterStatus {
            change: placement.change.clone(),
            unplaced,
            rules,
            cluster: cluster.to_string(),
            shards: placement.shards,
            replicas: placement.replicas,
            version: placement.version,
            sets,
        }))
    }

    /// The status as a table for people (shard ranges without a state are available).
    pub fn table(&self) -> String {
        let mut out = format!(
            "cluster {}  placement version {}  {} shards  {} replicas per set\n",
            self.cluster, self.version, self.shards, self.replicas
        );
        match &self.rules {
            Some(rules) => out.push_str(&format!(
                "rules version {}  hash {}  effective from {}  published by {}\n",
                rules.version,
                rules.hash,
                rules
                    .effective_from_ms
                    .map_or("the start".to_string(), |from| format!("{from} ms")),
                rules.published_by
            )),
            None => out.push_str("rules: none published yet\n"),
        }
        if let Some(change) = &self.change {
            out.push_str(&format!(
                "change in flight: {} (staged at {} ms), cutover {} ms, {} shards moving\n",
                change.what,
                change.staged_ms,
                change.cutover_ms,
                change.shards_moved()
            ));
            for handoff in &change.moves {
                out.push_str(&format!(
                    "  handoff shards {}..{}: set {} -> set {}\n",
                    handoff.shards.0, handoff.shards.1, handoff.from_set, handoff.to_set
                ));
            }
            for id in &change.joining {
                out.push_str(&format!("  joining: {id}\n"));
            }
            for id in &change.leaving {
                out.push_str(&format!("  leaving: {id}\n"));
            }
        }
        if !self.unplaced.is_empty() {
            out.push_str(&format!("registered, not placed: {}\n", self.unplaced.join(", ")));
        }
        for set in &self.sets {
            let ranges: Vec<String> = set
                .ranges
                .iter()
                .map(|range| {
                    let (from, to) = range.shards;
                    match (range.cutover_ms, range.cutoff_ms) {
                        (Some(at), _) => format!("{from}..{to} {} from {at}", range.state),
                        (_, Some(at)) => format!("{from}..{to} {} until {at}", range.state),
                        _ => format!("{from}..{to}"),
                    }
                })
                .collect();
            out.push_str(&format!(
                "set {}  shards {}  leader {}\n",
                set.set,
                ranges.join(","),
                set.leader.as_deref().unwrap_or("(none)")
            ));
            for instance in &set.instances {
                let state = match (instance.state.as_str(), instance.warm_at_ms) {
                    ("down", _) => "DOWN".to_string(),
                    ("warming", Some(warm_at_ms)) => format!("live, warming (may lead from {warm_at_ms} ms)"),
                    ("draining", _) => "live, DRAINING".to_string(),
                    (state, _) => format!("live, {state}"),
                };
                out.push_str(&format!(
                    "  {:<12} {:<22} http {:<22} {state}\n",
                    instance.id, instance.endpoint, instance.http,
                ));
                if let Some(reason) = &instance.rules_differ {
                    out.push_str(&format!("    RULES DIFFER (not leading, not forwarding): {reason}\n"));
                }
            }
            for (policy, mark) in &set.flushed {
                out.push_str(&format!(
                    "  flushed {policy}: until {} (rollups until {}) by {}\n",
                    mark.until_ms, mark.rollups_until_ms, mark.leader
                ));
            }
        }
        out
    }
}

/// A range a set owns, cut where a handoff into `set` starts or ends: the
/// moved parts `initializing`, the rest `available`.
fn split_by_moves(range: (u32, u32), set: u32, change: Option<&Change>) -> Vec<RangeStatus> {
    let incoming: Vec<(u32, u32)> = change
        .iter()
        .flat_map(|change| &change.moves)
        .filter(|handoff| handoff.to_set == set)
        .map(|handoff| handoff.shards)
        .collect();
    let cutover_ms = change.map(|change| change.cutover_ms);
    let mut out = Vec::new();
    let mut start = range.0;
    while start < range.1 {
        let moving = incoming.iter().find(|(from, to)| *from <= start && start < *to);
        let end = match moving {
            Some((_, to)) => (*to).min(range.1),
            None => incoming
                .iter()
                .map(|(from, _)| *from)
                .filter(|from| *from > start)
                .min()
                .unwrap_or(range.1)
                .min(range.1),
        };
        out.push(RangeStatus {
            shards: (start, end),
            state: if moving.is_some() { "initializing" } else { "available" }.into(),
            cutover_ms: moving.and(cutover_ms),
            cutoff_ms: None,
        });
        start = end;
    }
    out
}
