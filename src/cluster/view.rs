//! What this instance knows of its cluster: the placement it routes by and
//! which instances etcd lists as live, cached so that routing keeps working
//! while etcd is unreachable.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::config::ClusterSettings;
use crate::model::{DropReason, Outcome};

use super::placement::{Placement, ShardSet};

/// The cached placement and liveness, shared by the router, the forwarding
/// service and the coordinator that keeps them current.
pub struct ClusterView {
    settings: ClusterSettings,
    placement: RwLock<Arc<Placement>>,
    /// Instances registered in etcd; `None` until first read (then all count as live).
    live: RwLock<Option<HashSet<String>>>,
}

/// The placement does not name this instance.
#[derive(Debug, thiserror::Error)]
#[error("cluster {cluster}: instance {instance:?} is not in the placement (version {version}); add it with `tailfold cluster init` or fix cluster.instance")]
pub struct NotPlaced {
    /// Cluster id.
    pub cluster: String,
    /// This instance's id.
    pub instance: String,
    /// Placement version read.
    pub version: u64,
}

impl ClusterView {
    /// A view of `placement` from this instance; refuses a placement without it.
    pub fn new(settings: ClusterSettings, placement: Placement) -> Result<Self, NotPlaced> {
        if placement.set_of_instance(&settings.instance).is_none() {
            return Err(NotPlaced {
                cluster: settings.cluster.clone(),
                instance: settings.instance.clone(),
                version: placement.version,
            });
        }
        Ok(ClusterView {
            settings,
            placement: RwLock::new(Arc::new(placement)),
            live: RwLock::new(None),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// The placement routed by now.
    pub fn placement(&self) -> Arc<Placement> {
        Arc::clone(&self.placement.read())
    }

    /// Routes by `placement` from now on (a change was staged or completed).
    pub fn set_placement(&self, placement: Placement) {
        *self.placement.write() = Arc::new(placement);
    }

    /// When a change in flight in `placement` takes this instance out of a
    /// set that stays: its cutover (see
    /// [`super::coordinator::Coordinator::leaving_from_ms`]).
    pub fn leaving_from_ms(&self, placement: &Placement) -> Option<i64> {
        super::handoff::leaving_cutover(placement, &self.settings.instance)
    }

    /// This instance's shard set in `placement`.
    pub fn my_set<'a>(&self, placement: &'a Placement) -> Option<&'a ShardSet> {
        placement.set_of_instance(&self.settings.instance)
    }

    /// Whether etcd lists `instance` as registered (true before anything was read).
    pub fn is_live(&self, instance: &str) -> bool {
        self.live.read().as_ref().is_none_or(|live| live.contains(instance))
    }

    /// Replaces the set of registered instances.
    pub fn set_live(&self, live: HashSet<String>) {
        *self.live.write() = Some(live);
    }
}

/// A tally for the wire: reasons by name.
pub fn outcome_to_wire(outcome: &Outcome) -> crate::api::cluster_v1::ForwardResponse {
    use crate::api::cluster_v1::{ForwardResponse, ReasonCount, RuleCount};
    ForwardResponse {
        accepted: outcome.accepted,
        rejected: DropReason::ALL
            .iter()
            .filter(|reason| outcome.rejected_for(**reason) > 0)
            .map(|reason| ReasonCount {
                reason: reason.as_str().to_string(),
                points: outcome.rejected_for(*reason),
            })
            .collect(),
        dropped_by_rule: outcome
            .by_rule
            .iter()
            .map(|(rule, points)| RuleCount {
                rule: rule.to_string(),
                points: *points,
            })
            .collect(),
    }
}

/// The tally a replica answered. A reason this version does not know is
/// kept as `invalid_series` rather than lost.
pub fn outcome_from_wire(response: &crate::api::cluster_v1::ForwardResponse) -> Outcome {
    let mut outcome = Outcome {
        accepted: response.accepted,
        ..Outcome::default()
    };
    for count in &response.rejected {
        let reason = DropReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == count.reason)
            .unwrap_or(DropReason::InvalidSeries);
        if reason != DropReason::DroppedByRule {
            outcome.reject(reason, count.points);
        }
    }
    let by_rule: u64 = response.dropped_by_rule.iter().map(|count| count.points).sum();
    for count in &response.dropped_by_rule {
        outcome.reject_by_rule(&Arc::from(count.rule.as_str()), count.points);
    }
    let unnamed = response
        .rejected
        .iter()
        .filter(|count| count.reason == DropReason::DroppedByRule.as_str())
        .map(|count| count.points)
        .sum::<u64>()
        .saturating_sub(by_rule);
    outcome.reject(DropReason::DroppedByRule, unnamed);
    outcome
}
