//! This instance's part in etcd: its registration (under a lease), the
//! election of its shard set, the liveness of the others, and the flush marks
//! of its set, read before and recorded after every flush.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::ClusterSettings;
use crate::model::StoragePolicy;
use crate::telemetry::Telemetry;

use super::etcd::{Election, Leadership};
use super::etcd::{EtcdClient, EtcdError, LeaseId, LeaseKeeper};
use super::placement::{keys, Placement};
use super::view::{ClusterView, NotPlaced};

/// Why this instance cannot join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd cannot be reached or refused a call.
    #[error("cluster: {0}")]
    Etcd(#[from] EtcdError),
    /// The placement cannot be read.
    #[error("cluster: {0}")]
    Placement(#[from] super::placement::PlacementError),
    /// No placement was created for the cluster.
    #[error("cluster {0}: no placement in etcd; create it with `tailfold cluster init --cluster {0} ...`")]
    NoPlacement(String),
    /// The placement does not name this instance.
    #[error("{0}")]
    NotPlaced(#[from] NotPlaced),
}

/// Whether this instance may flush its set's windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not known (starting, or the lease was lost): flush nothing.
    Unknown,
    /// Another instance leads (or none yet): drop what the leader records.
    Following,
    /// This instance leads: flush, then record the flush.
    Leading {
        /// The election key, held under `lease`.
        key: String,
        /// The lease.
        lease: LeaseId,
    },
}

/// One flush mark as kept in etcd, per (shard set, policy).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlushMark {
    /// Every window of the set's own outputs ending at or before this was flushed.
    pub until_ms: i64,
    /// The same for the rollup windows the set assembles from shares.
    pub rollups_until_ms: i64,
    /// The instance that recorded it.
    pub leader: String,
}

/// The marks of this instance's set, by policy.
pub type FlushMarks = BTreeMap<StoragePolicy, FlushMark>;

/// What this instance registers under its lease.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registration {
    /// Instance id.
    pub id: String,
    /// Address of its forwarding API.
    pub endpoint: String,
    /// Address of its HTTP API.
    pub http: String,
    /// When it started (ms since the epoch).
    pub started_ms: i64,
    /// Hash of the rules it folds with.
    pub rules_hash: String,
}

/// The etcd side of one cluster instance.
pub struct Coordinator {
    client: EtcdClient,
    view: Arc<ClusterView>,
    set: u32,
    role: watch::Receiver<Role>,
    telemetry: Arc<Telemetry>,
    /// The marks read last, used while etcd cannot be read (never to flush).
    last_marks: Mutex<FlushMarks>,
}

impl Coordinator {
    /// Connects to etcd, reads the placement, registers this instance under a
    /// lease and starts campaigning for its set once it has seen every window
    /// the set may still flush: `warm_after_ms` after its start, unless the
    /// write-ahead log (`logged`) holds them and the set has no other replica
    /// that took writes while this one was down.
    pub async fn start(
        settings: ClusterSettings,
        registration: Registration,
        logged: bool,
        warm_after_ms: i64,
        now_ms: impl Fn() -> i64 + Send + Sync + 'static,
        telemetry: Arc<Telemetry>,
    ) -> Result<Arc<Coordinator>, ClusterError> {
        let timeout = Duration::from_millis(settings.etcd_timeout_ms);
        let client = EtcdClient::connect(&settings.etcd_endpoints, timeout).await?;
        let placement = Placement::load(&client, &settings.cluster)
            .await?
            .ok_or_else(|| ClusterError::NoPlacement(settings.cluster.clone()))?;
        let view = Arc::new(ClusterView::new(settings.clone(), placement)?);
        let placement = view.placement();
        let my_set = view.my_set(&placement).expect("checked by the view");
        let set = my_set.set;
        let warm_at_ms = if logged && my_set.instances.len() == 1 {
            registration.started_ms
        } else {
            registration.started_ms + warm_after_ms
        };
        let (role_sender, role) = watch::channel(Role::Unknown);
        let coordinator = Arc::new(Coordinator {
            client: client.clone(),
            view: Arc::clone(&view),
            set,
            role,
            telemetry: Arc::clone(&telemetry),
            last_marks: Mutex::new(FlushMarks::new()),
        });
        // Registered before the first write is taken, so the others count this
        // instance as a replica from the start.
        let first = register(&client, &settings, &registration).await?;
        read_liveness(&client, &settings.cluster, &view).await?;
        tokio::spawn(campaign(
            client.clone(),
            settings.clone(),
            set,
            registration,
            Some(first),
            warm_at_ms,
            now_ms,
            role_sender,
            telemetry,
        ));
        tokio::spawn(watch_liveness(client, settings.cluster.clone(), view));
        Ok(coordinator)
    }

    /// The cached placement and liveness.
    pub fn view(&self) -> &Arc<ClusterView> {
        &self.view
    }

    /// This instance's shard set.
    pub fn set(&self) -> u32 {
        self.set
    }

    /// The role now.
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// The etcd client (status, rules).
    pub fn client(&self) -> &EtcdClient {
        &self.client
    }

    /// The set's flush marks, read from etcd now.
    pub async fn read_marks(&self) -> Result<FlushMarks, EtcdError> {
        let settings = self.view.settings();
        let prefix = keys::flush_prefix(&settings.cluster, self.set);
        let mut marks = FlushMarks::new();
        for kv in self.client.get_prefix(&prefix).await? {
            let Some(policy) = kv.key.strip_prefix(&prefix).and_then(|policy| policy.parse().ok()) else {
                continue;
            };
            match serde_json::from_slice::<FlushMark>(&kv.value) {
                Ok(mark) => {
                    marks.insert(policy, mark);
                }
                Err(error) => tracing::error!(key = %kv.key, %error, "unreadable flush mark ignored"),
            }
        }
        *self.last_marks.lock() = marks.clone();
        Ok(marks)
    }

    /// The marks read last.
    pub fn last_marks(&self) -> FlushMarks {
        self.last_marks.lock().clone()
    }

    /// Whether the election key of `role` still exists under its lease (a
    /// leader checks before it flushes, so an expired one never flushes).
    pub async fn still_leads(&self, role: &Role) -> bool {
        let Role::Leading { key, lease } = role else {
            return false;
        };
        matches!(self.client.get(key).await, Ok(Some(kv)) if kv.lease == *lease)
    }

    /// Records `marks` as flushed, each only while this instance's election
    /// key still holds its lease. False when leadership was lost meanwhile.
    pub async fn record_marks(&self, role: &Role, marks: &FlushMarks) -> Result<bool, EtcdError> {
        let Role::Leading { key, lease } = role else {
            return Ok(false);
        };
        let settings = self.view.settings();
        for (policy, mark) in marks {
            let flush_key = format!("{}{policy}", keys::flush_prefix(&settings.cluster, self.set));
            let value = serde_json::to_vec(mark).expect("a flush mark serialises");
            if !self.client.put_if_lease_holds(key, *lease, &flush_key, value).await? {
                return Ok(false);
            }
            self.telemetry.exporter().set(
                "tailfold_cluster_flushed_until_seconds",
                &[("set", self.set.to_string()), ("policy", policy.to_string())],
                mark.until_ms as f64 / 1_000.0,
            );
        }
        *self.last_marks.lock() = marks.clone();
        Ok(true)
    }

    /// Gives up leadership (clean shutdown), so a follower takes over now
    /// rather than after the lease TTL.
    pub async fn resign(&self) {
        if let Role::Leading { key, .. } = self.role() {
            if let Err(error) = self.client.delete(&key).await {
                tracing::warn!(%error, "cannot resign leadership; the follower takes over after the lease TTL");
            }
        }
    }
}

/// Takes a lease, keeps it alive and registers this instance under it.
async fn register(
    client: &EtcdClient,
    settings: &ClusterSettings,
    registration: &Registration,
) -> Result<(LeaseId, LeaseKeeper), EtcdError> {
    let lease = client.lease_grant(settings.lease_ttl_s as i64).await?;
    let keeper = client.keep_alive(lease);
    let value = serde_json::to_vec(registration).expect("a registration serialises");
    client
        .put(
            &keys::instance(&settings.cluster, &settings.instance),
            value,
            Some(lease),
        )
        .await?;
    Ok((lease, keeper))
}

/// Registers (the first time with the lease `start` already took),
/// campaigns and leads for as long as the lease lives; starts over with a
/// new lease when it is lost.
#[allow(clippy::too_many_arguments)]
async fn campaign(
    client: EtcdClient,
    settings: ClusterSettings,
    set: u32,
    registration: Registration,
    mut first: Option<(LeaseId, LeaseKeeper)>,
    warm_at_ms: i64,
    now_ms: impl Fn() -> i64,
    role: watch::Sender<Role>,
    telemetry: Arc<Telemetry>,
) {
    let election = Election::new(client.clone(), &keys::election_prefix(&settings.cluster, set));
    let mut announced_wait = false;
    loop {
        let registered = match first.take() {
            Some(registered) => Ok(registered),
            None => register(&client, &settings, &registration).await,
        };
        let (lease, keeper) = match registered {
            Ok(registered) => registered,
            Err(error) => {
                wait_for_etcd(&telemetry, &error, "registration").await;
                continue;
            }
        };
        let mut alive = keeper.alive();
        let _ = role.send(Role::Following);
        let wait_ms = warm_at_ms - now_ms();
        if wait_ms > 0 {
            if !announced_wait {
                tracing::info!(
                    wait_ms,
                    "not campaigning until every open window of the set was seen here"
                );
                announced_wait = true;
            }
            tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
        }
        let campaign = election.campaign(lease, settings.instance.as_bytes().to_vec());
        let leadership: Leadership = tokio::select! {
            won = campaign => match won {
                Ok(leadership) => leadership,
                Err(error) => {
                    let _ = role.send(Role::Unknown);
                    wait_for_etcd(&telemetry, &error, "election").await;
                    let _ = client.lease_revoke(lease).await;
                    continue;
                }
            },
            _ = lost(&mut alive) => {
                let _ = role.send(Role::Unknown);
                tracing::warn!("lease lost while campaigning; registering again");
                let _ = client.lease_revoke(lease).await;
                continue;
            }
        };
        tracing::info!(set, instance = %settings.instance, "leading the shard set");
        telemetry
            .exporter()
            .set("tailfold_cluster_leader", &[("set", set.to_string())], 1.0);
        let _ = role.send(Role::Leading {
            key: leadership.key.clone(),
            lease,
        });
        lost(&mut alive).await;
        let _ = role.send(Role::Unknown);
        telemetry
            .exporter()
            .set("tailfold_cluster_leader", &[("set", set.to_string())], 0.0);
        tracing::warn!(set, "lease lost: stopped flushing until leadership is known again");
        let _ = client.lease_revoke(lease).await;
    }
}

/// Resolves once the lease keeper says the lease is gone.
async fn lost(alive: &mut watch::Receiver<bool>) {
    while *alive.borrow_and_update() {
        if alive.changed().await.is_err() {
            return;
        }
    }
}

async fn wait_for_etcd(telemetry: &Telemetry, error: &EtcdError, during: &'static str) {
    tracing::warn!(%error, during, "etcd unavailable; retrying in 1 s");
    telemetry.exporter().count(
        "tailfold_cluster_etcd_errors_total",
        &[("during", during.to_string())],
        1,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Reads which instances are registered into the view.
async fn read_liveness(client: &EtcdClient, cluster: &str, view: &ClusterView) -> Result<(), EtcdError> {
    let prefix = keys::instances_prefix(cluster);
    let live: HashSet<String> = client
        .get_prefix(&prefix)
        .await?
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(&prefix).map(str::to_string))
        .collect();
    view.set_live(live);
    Ok(())
}

/// Keeps the view's set of registered instances current (polled: it keeps
/// the last answer through an etcd outage).
async fn watch_liveness(client: EtcdClient, cluster: String, view: Arc<ClusterView>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let _ = read_liveness(&client, &cluster, &view).await;
    }
}
