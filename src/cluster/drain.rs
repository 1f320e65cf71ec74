//! Draining an instance before a planned stop (`tailfold cluster drain`):
//! it hands its set's leadership to a replica that is ready to lead, stops
//! campaigning, and keeps folding and answering forwards until it is stopped.

use serde::{Deserialize, Serialize};

use super::coordinator::Registration;
use super::etcd::EtcdError;

/// What a drained instance does about its set's leadership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// Serving: campaigns and leads as usual.
    Off,
    /// Draining: resigns (a ready replica takes over) and stays out of the election.
    HandOver,
    /// Draining a set of one replica with the write-ahead log: nobody can take
    /// over, so it keeps leading until stopped; the log keeps its open windows.
    KeepLeading,
}

/// Why an instance refuses to drain, or could not.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// Draining would leave the set without a replica ready to lead.
    #[error("instance {instance} cannot drain: shard set {set} would have no ready replica ({reason})")]
    NoReadyReplica {
        /// The instance asked to drain.
        instance: String,
        /// Its shard set.
        set: u32,
        /// Why no other replica is ready (one clause per replica).
        reason: String,
    },
    /// etcd could not be read, so readiness is unknown.
    #[error("instance {instance} cannot drain: {source}")]
    Etcd {
        /// The instance asked to drain.
        instance: String,
        /// The etcd failure.
        #[source]
        source: EtcdError,
    },
}

/// The answer to a drain or undrain.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrainAnswer {
    /// The instance.
    pub instance: String,
    /// Its shard set.
    pub set: u32,
    /// Whether it drains now.
    pub draining: bool,
    /// Its set's leader as etcd shows it after the change (`null`: none yet).
    pub leader: Option<String>,
    /// What happened, for people.
    pub message: String,
}

/// One other replica of the set as etcd shows it.
pub struct Peer<'a> {
    /// Instance id.
    pub id: &'a str,
    /// Its registration, if it is live.
    pub registration: Option<&'a Registration>,
    /// Whether it stands in the set's election line (it campaigns only once
    /// it holds every window after the set's last recorded flush).
    pub campaigning: bool,
}

/// Why `peer` cannot take over the set's leadership now; `None` when it can.
pub fn not_ready(peer: &Peer<'_>, now_ms: i64) -> Option<String> {
    let id = peer.id;
    let Some(registration) = peer.registration else {
        return Some(format!("{id} is down (not registered in etcd)"));
    };
    if let Some(reason) = &registration.rules_differ {
        return Some(format!("{id}'s rules differ from the cluster's: {reason}"));
    }
    if registration.draining {
        return Some(format!("{id} is draining too"));
    }
    if peer.campaigning {
        return None;
    }
    if now_ms < registration.warm_at_ms {
        return Some(format!(
            "{id} is not warm yet: it may lead from {} ms since the epoch, in {} ms",
            registration.warm_at_ms,
            registration.warm_at_ms - now_ms
        ));
    }
    Some(format!("{id} is not in its set's election line yet"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(warm_at_ms: i64) -> Registration {
        Registration {
            id: "b".into(),
            endpoint: "127.0.0.1:1".into(),
            http: "127.0.0.1:2".into(),
            started_ms: 0,
            rules_hash: "h".into(),
            rules_version: 1,
            rules_differ: None,
            warm_at_ms,
            draining: false,
        }
    }

    #[test]
    fn a_peer_is_ready_only_when_live_warm_agreeing_and_campaigning() {
        let warm = registration(1_000);
        let peer = |registration, campaigning| Peer {
            id: "b",
            registration,
            campaigning,
        };
        assert_eq!(not_ready(&peer(Some(&warm), true), 2_000), None);
        assert!(not_ready(&peer(None, false), 2_000).unwrap().contains("b is down"));
        let cold = not_ready(&peer(Some(&warm), false), 400).unwrap();
        assert!(cold.contains("not warm yet") && cold.contains("in 600 ms"), "{cold}");
        let draining = Registration {
            draining: true,
            ..warm.clone()
        };
        assert!(not_ready(&peer(Some(&draining), true), 2_000)
            .unwrap()
            .contains("draining too"));
        let differs = Registration {
            rules_differ: Some("hash x".into()),
            ..warm.clone()
        };
        assert!(not_ready(&peer(Some(&differs), true), 2_000)
            .unwrap()
            .contains("rules differ"));
        assert!(not_ready(&peer(Some(&warm), false), 2_000)
            .unwrap()
            .contains("election line"));
    }
}
