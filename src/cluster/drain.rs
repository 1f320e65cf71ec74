//! Draining an instance before a planned stop (`tailfold cluster drain`):
//! it hands its set's leadership to a replica that is ready to lead, stops
//! campaigning, and keeps folding and answering forwards until it is stopped.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::coordinator::{Coordinator, Registration};
use super::etcd::{Election, EtcdError};
use super::placement::keys;

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

impl Coordinator {
    /// Drains this instance (see the module docs): refused when no other
    /// replica of its set is ready to lead (live, warm, agreeing on the
    /// rules, not draining), unless the set has one replica and this
    /// instance logs what it takes. Answers once a ready replica leads (or
    /// after a lease TTL, with whoever leads then).
    pub async fn drain(&self, now_ms: i64) -> Result<DrainAnswer, DrainError> {
        let settings = self.view.settings();
        let me = settings.instance.clone();
        let etcd = |source| DrainError::Etcd {
            instance: me.clone(),
            source,
        };
        if self.draining() {
            return Ok(self.answer(true, "already draining".to_string()).await);
        }
        let placement = self.view.placement();
        let set = self.view.my_set(&placement).expect("checked by the view");
        let peers: Vec<&str> = set
            .instances
            .iter()
            .map(|instance| instance.id.as_str())
            .filter(|id| *id != me)
            .collect();
        if peers.is_empty() {
            if !self.logged {
                return Err(DrainError::NoReadyReplica {
                    instance: me.clone(),
                    set: self.set,
                    reason: "it is the set's only replica and has no write-ahead log (wal.enabled: false): its open windows would be lost at the stop".to_string(),
                });
            }
            self.set_drain(Drain::KeepLeading);
            return Ok(self
                .answer(
                    true,
                    "draining; the set's only replica keeps leading until stopped, and its write-ahead log keeps the open windows".to_string(),
                )
                .await);
        }
        let prefix = keys::instances_prefix(&settings.cluster);
        let registrations: BTreeMap<String, Registration> = self
            .client
            .get_prefix(&prefix)
            .await
            .map_err(etcd)?
            .into_iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .map(|registration: Registration| (registration.id.clone(), registration))
            .collect();
        let line: Vec<String> = self
            .client
            .get_prefix(&keys::election_prefix(&settings.cluster, self.set))
            .await
            .map_err(etcd)?
            .into_iter()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
            .collect();
        let reasons: Vec<String> = peers
            .iter()
            .filter_map(|id| {
                not_ready(
                    &Peer {
                        id,
                        registration: registrations.get(*id),
                        campaigning: line.iter().any(|candidate| candidate == id),
                    },
                    now_ms,
                )
            })
            .collect();
        if reasons.len() == peers.len() {
            return Err(DrainError::NoReadyReplica {
                instance: me.clone(),
                set: self.set,
                reason: reasons.join("; "),
            });
        }
        self.set_drain(Drain::HandOver);
        // The campaign resigns (between two flushes); wait for the successor.
        let election = Election::new(self.client.clone(), &keys::election_prefix(&settings.cluster, self.set));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(settings.lease_ttl_s.max(1));
        loop {
            let leader = election
                .leader()
                .await
                .ok()
                .flatten()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            let handed_over = leader.as_ref().is_some_and(|leader| *leader != me);
            if handed_over || tokio::time::Instant::now() >= deadline {
                let message = if handed_over {
                    "draining; another replica leads its set".to_string()
                } else {
                    "draining; no other replica leads its set yet (see `tailfold cluster status`)".to_string()
                };
                return Ok(self.answer(true, message).await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends a drain: the instance campaigns again (when its set's leader is
    /// lost, or at once when nobody leads).
    pub async fn undrain(&self) -> DrainAnswer {
        let was = self.draining();
        self.set_drain(Drain::Off);
        let message = if was {
            "no longer draining; campaigning again"
        } else {
            "was not draining"
        };
        self.answer(false, message.to_string()).await
    }

    fn set_drain(&self, drain: Drain) {
        let _ = self.drain.send(drain);
        let draining = if drain == Drain::Off { 0.0 } else { 1.0 };
        self.telemetry
            .exporter()
            .set("tailfold_cluster_draining", &[], draining);
        tracing::info!(?drain, "drain changed");
    }

    async fn answer(&self, draining: bool, message: String) -> DrainAnswer {
        let settings = self.view.settings();
        let election = Election::new(self.client.clone(), &keys::election_prefix(&settings.cluster, self.set));
        DrainAnswer {
            instance: settings.instance.clone(),
            set: self.set,
            draining,
            leader: election
                .leader()
                .await
                .ok()
                .flatten()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
            message,
        }
    }
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
