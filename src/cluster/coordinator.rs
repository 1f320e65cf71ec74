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
use crate::reload::Agreement;
use crate::telemetry::Telemetry;

use super::drain::Drain;
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
    /// Hash of the newest rules it folds with.
    pub rules_hash: String,
    /// Version of the cluster's rules it has seen.
    #[serde(default)]
    pub rules_version: u64,
    /// Why it does not fold the cluster's rules (then it neither leads nor forwards).
    #[serde(default)]
    pub rules_differ: Option<String>,
    /// From when it may lead (ms since the epoch): it has seen every window
    /// its set may still flush.
    #[serde(default)]
    pub warm_at_ms: i64,
    /// Drained (`tailfold cluster drain`): it does not campaign.
    #[serde(default)]
    pub draining: bool,
}

impl Registration {
    fn with_rules(&self, agreement: &Agreement) -> Registration {
        Registration {
            rules_hash: agreement.hash.clone(),
            rules_version: agreement.cluster_version,
            rules_differ: agreement.differs.clone(),
            ..self.clone()
        }
    }

    fn with_state(&self, agreement: &Agreement, drain: Drain) -> Registration {
        Registration {
            draining: drain != Drain::Off,
            ..self.with_rules(agreement)
        }
    }
}

/// The etcd side of one cluster instance.
pub struct Coordinator {
    pub(super) client: EtcdClient,
    pub(super) view: Arc<ClusterView>,
    pub(super) set: u32,
    role: watch::Receiver<Role>,
    pub(super) telemetry: Arc<Telemetry>,
    /// The marks read last, used while etcd cannot be read (never to flush).
    last_marks: Mutex<FlushMarks>,
    /// Turns true once a completed change took this instance out of the placement.
    left: watch::Receiver<bool>,
    /// When this process started (ms since the epoch).
    started_ms: i64,
    /// Drained or not (the campaign watches it).
    pub(super) drain: watch::Sender<Drain>,
    /// Held by a flush from its leadership check to its recorded marks, and
    /// by a drain's resignation, so a drained leader never leaves a window
    /// flushed but unrecorded for its successor to flush again.
    flush_lock: Arc<tokio::sync::Mutex<()>>,
    /// Whether this instance logs what it takes (write-ahead log).
    pub(super) logged: bool,
    /// The lease the campaign registered under last.
    lease: Arc<Mutex<Option<LeaseId>>>,
    /// The campaign, stopped by [`Coordinator::leave`].
    campaign: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Coordinator {
    /// Connects to etcd, reads the placement, registers this instance under a
    /// lease and starts campaigning for its set once it has seen every window
    /// the set may still flush: `warm_after_ms` after its start, unless the
    /// write-ahead log (`logged`) holds them and the set has no other replica
    /// that took writes while this one was down; and only for as long as
    /// `rules` says it folds the cluster's rules.
    pub async fn start(
        settings: ClusterSettings,
        registration: Registration,
        rules: watch::Receiver<Agreement>,
        logged: bool,
        warm_after_ms: i64,
        now_ms: impl Fn() -> i64 + Send + Sync + 'static,
        telemetry: Arc<Telemetry>,
    ) -> Result<Arc<Coordinator>, ClusterError> {
        let timeout = Duration::from_millis(settings.etcd_timeout_ms);
        let client = EtcdClient::connect(&settings.etcd_endpoints, timeout).await?;
        // Registered before the first write is taken, so the others count this
        // instance as a replica from the start; and before it is placed, so
        // `tailfold cluster add` sees it live.
        let registration = registration.with_rules(&rules.borrow());
        let first = register(&client, &settings, &registration).await?;
        let placement = wait_until_placed(&client, &settings).await?;
        let view = Arc::new(ClusterView::new(settings.clone(), placement)?);
        let placement = view.placement();
        let my_set = view.my_set(&placement).expect("checked by the view");
        let set = my_set.set;
        // A replica joining by a replace took writes only from the cutover,
        // and a restarted one leaving by it flushes only before the cutover,
        // which the senders wait for it to take: so the joining one does not
        // count as a replica that took writes this one lacks.
        let joining = |id: &str| {
            placement
                .change
                .as_ref()
                .is_some_and(|change| change.joining.iter().any(|joining| joining == id))
        };
        let others_took_writes = my_set
            .instances
            .iter()
            .any(|instance| instance.id != settings.instance && !joining(&instance.id));
        let warm_at_ms = if logged && !joining(&settings.instance) && !others_took_writes {
            registration.started_ms
        } else {
            registration.started_ms + warm_after_ms
        };
        let registration = Registration {
            warm_at_ms,
            ..registration
        };
        let (role_sender, role) = watch::channel(Role::Unknown);
        let (left_sender, left) = watch::channel(false);
        let now_ms = Arc::new(now_ms);
        let (drain, drain_receiver) = watch::channel(Drain::Off);
        let flush_lock = Arc::new(tokio::sync::Mutex::new(()));
        let lease = Arc::new(Mutex::new(None));
        let coordinator = Arc::new(Coordinator {
            left,
            client: client.clone(),
            view: Arc::clone(&view),
            set,
            role,
            telemetry: Arc::clone(&telemetry),
            last_marks: Mutex::new(FlushMarks::new()),
            started_ms: registration.started_ms,
            drain,
            flush_lock: Arc::clone(&flush_lock),
            logged,
            lease: Arc::clone(&lease),
            campaign: Mutex::new(None),
        });
        read_liveness(&client, &settings.cluster, &view).await?;
        let campaigning = tokio::spawn(campaign(
            client.clone(),
            settings.clone(),
            set,
            registration,
            Some(first),
            Campaign {
                rules,
                drain: drain_receiver,
                flush_lock,
                lease,
                warm_at_ms,
                now_ms: {
                    let now_ms = Arc::clone(&now_ms);
                    move || now_ms()
                },
                role: role_sender,
                telemetry: Arc::clone(&telemetry),
                view: Arc::clone(&view),
            },
        ));
        tokio::spawn(super::handoff::follow_placement(
            client.clone(),
            Arc::clone(&view),
            move || now_ms(),
            left_sender,
            telemetry,
        ));
        *coordinator.campaign.lock() = Some(campaigning);
        coordinator
            .telemetry
            .exporter()
            .set("tailfold_cluster_draining", &[], 0.0);
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

    /// Resolves once a completed placement change took this instance out
    /// of the placement (it then stops, exit code 0); never otherwise.
    pub async fn left(&self) {
        let mut left = self.left.clone();
        if left.wait_for(|left| *left).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// When a change in flight takes this instance out of a set that stays
    /// and it started after the cutover (so it may have missed points after
    /// it while down): the cutover, from which the replica joining in its
    /// place flushes. An instance up since before the cutover holds every
    /// window and flushes them all while it leads. Judged by `placement`,
    /// the same read that says whether this instance is placed at all.
    pub fn leaving_from_ms(&self, placement: &Placement) -> Option<i64> {
        self.view
            .leaving_from_ms(placement)
            .filter(|cutover_ms| self.started_ms > *cutover_ms)
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

    /// Leaves the cluster at the end of a clean shutdown (after the last
    /// flush): stops campaigning and revokes the lease, so the others stop
    /// forwarding here at once instead of retrying until the lease expires
    /// (a set left with no registered replica is waited for by its senders,
    /// up to the forward timeout).
    pub async fn leave(&self) {
        if let Some(campaign) = self.campaign.lock().take() {
            campaign.abort();
        }
        let lease = *self.lease.lock();
        if let Some(lease) = lease {
            match self.client.lease_revoke(lease).await {
                Ok(()) => tracing::info!("left the cluster: registration revoked"),
                Err(error) => tracing::warn!(%error, "cannot revoke the registration; it expires after the lease TTL"),
            }
        }
    }

    /// Held by a cluster flush from its leadership check to its recorded marks.
    pub async fn flush_guard(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.flush_lock.lock().await
    }

    /// Whether this instance drains.
    pub fn draining(&self) -> bool {
        *self.drain.borrow() != Drain::Off
    }
}

/// The placement once it names this instance: an instance started before
/// `tailfold cluster add` (or `replace`) named it waits, registered, for it.
async fn wait_until_placed(client: &EtcdClient, settings: &ClusterSettings) -> Result<Placement, ClusterError> {
    let mut announced = false;
    loop {
        let placement = Placement::load(client, &settings.cluster)
            .await?
            .ok_or_else(|| ClusterError::NoPlacement(settings.cluster.clone()))?;
        if placement.set_of_instance(&settings.instance).is_some() {
            return Ok(placement);
        }
        if !announced {
            tracing::info!(
                instance = %settings.instance,
                version = placement.version,
                "registered but not in the placement: waiting for `tailfold cluster add` or `replace` to name it"
            );
            announced = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
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

/// What the campaign watches and tells.
struct Campaign<F> {
    rules: watch::Receiver<Agreement>,
    drain: watch::Receiver<Drain>,
    flush_lock: Arc<tokio::sync::Mutex<()>>,
    /// The lease registered under now, for [`Coordinator::leave`].
    lease: Arc<Mutex<Option<LeaseId>>>,
    warm_at_ms: i64,
    now_ms: F,
    role: watch::Sender<Role>,
    telemetry: Arc<Telemetry>,
    /// The placement, for the gate of a replica joining by a change.
    view: Arc<ClusterView>,
}

/// Resolves on the next change of the rules agreement (never once its sender is gone).
async fn rules_changed(rules: &mut watch::Receiver<Agreement>) {
    changed(rules).await
}

/// Resolves on the next change of `receiver` (never once its sender is gone).
async fn changed<T>(receiver: &mut watch::Receiver<T>) {
    if receiver.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves on the next change of the rules agreement or of the drain.
async fn rules_or_drain_changed(rules: &mut watch::Receiver<Agreement>, drain: &mut watch::Receiver<Drain>) {
    tokio::select! {
        _ = rules_changed(rules) => {}
        _ = changed(drain) => {}
    }
}

/// Registers (the first time with the lease `start` already took),
/// campaigns and leads for as long as the lease lives and this instance
/// folds the cluster's rules (it steps down when they differ); starts over
/// with a new lease when the lease is lost.
async fn campaign(
    client: EtcdClient,
    settings: ClusterSettings,
    set: u32,
    registration: Registration,
    mut first: Option<(LeaseId, LeaseKeeper)>,
    mut watched: Campaign<impl Fn() -> i64>,
) {
    let election = Election::new(client.clone(), &keys::election_prefix(&settings.cluster, set));
    let candidate_prefix = format!(
        "{}/",
        keys::election_prefix(&settings.cluster, set).trim_end_matches('/')
    );
    let role = &watched.role;
    let telemetry = &watched.telemetry;
    let instance_key = keys::instance(&settings.cluster, &settings.instance);
    let mut announced_wait = false;
    loop {
        let drain = *watched.drain.borrow_and_update();
        let registration = registration.with_state(&watched.rules.borrow_and_update(), drain);
        let registered = match first.take() {
            Some(registered) => Ok(registered),
            None => register(&client, &settings, &registration).await,
        };
        let (lease, keeper) = match registered {
            Ok(registered) => registered,
            Err(error) => {
                wait_for_etcd(telemetry, &error, "registration").await;
                continue;
            }
        };
        let mut alive = keeper.alive();
        *watched.lease.lock() = Some(lease);
        let _ = role.send(Role::Following);
        let wait_ms = watched.warm_at_ms - (watched.now_ms)();
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
        super::handoff::wait_until_may_lead(&client, &watched.view, set, &watched.now_ms).await;
        let rules_changed_meanwhile = watched.rules.has_changed().unwrap_or(false);
        // Re-registers with what the rules agreement and the drain say now.
        let reregister = |agreement: Agreement, drain: Drain| {
            let value =
                serde_json::to_vec(&registration.with_state(&agreement, drain)).expect("a registration serialises");
            let client = client.clone();
            let key = instance_key.clone();
            async move {
                if let Err(error) = client.put(&key, value, Some(lease)).await {
                    tracing::warn!(%error, "cannot update the registration's rules; it shows the old ones");
                }
            }
        };
        if rules_changed_meanwhile || watched.drain.has_changed().unwrap_or(false) {
            let agreement = watched.rules.borrow_and_update().clone();
            let drain = *watched.drain.borrow();
            reregister(agreement, drain).await;
        }
        'lease: loop {
            // Neither campaigns nor leads while its rules differ from the
            // cluster's, nor while drained (the set's other replica leads).
            while watched.rules.borrow_and_update().differs.is_some()
                || *watched.drain.borrow_and_update() == Drain::HandOver
            {
                let _ = role.send(Role::Following);
                tokio::select! {
                    _ = rules_changed(&mut watched.rules) => {}
                    _ = changed(&mut watched.drain) => {}
                    _ = lost(&mut alive) => break 'lease,
                }
                let agreement = watched.rules.borrow_and_update().clone();
                let drain = *watched.drain.borrow();
                reregister(agreement, drain).await;
            }
            let campaign = election.campaign(lease, settings.instance.as_bytes().to_vec());
            let leadership: Leadership = tokio::select! {
                won = campaign => match won {
                    Ok(leadership) => leadership,
                    Err(error) => {
                        let _ = role.send(Role::Unknown);
                        wait_for_etcd(telemetry, &error, "election").await;
                        break 'lease;
                    }
                },
                _ = lost(&mut alive) => {
                    tracing::warn!("lease lost while campaigning; registering again");
                    break 'lease;
                }
                _ = rules_or_drain_changed(&mut watched.rules, &mut watched.drain) => {
                    let agreement = watched.rules.borrow().clone();
                    let drain = *watched.drain.borrow();
                    let out = agreement.differs.is_some() || drain == Drain::HandOver;
                    reregister(agreement, drain).await;
                    if out {
                        // Out of the line: a key left in it would lead one day with nobody acting.
                        let _ = client.delete(&format!("{candidate_prefix}{lease:x}")).await;
                    }
                    continue 'lease;
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
            loop {
                tokio::select! {
                    _ = lost(&mut alive) => {
                        telemetry
                            .exporter()
                            .set("tailfold_cluster_leader", &[("set", set.to_string())], 0.0);
                        tracing::warn!(set, "lease lost: stopped flushing until leadership is known again");
                        break 'lease;
                    }
                    _ = changed(&mut watched.drain) => {
                        let drain = *watched.drain.borrow();
                        let agreement = watched.rules.borrow().clone();
                        reregister(agreement, drain).await;
                        if drain == Drain::HandOver {
                            // Between two flushes, so the successor starts after the last recorded mark.
                            let _flushing = watched.flush_lock.lock().await;
                            let _ = role.send(Role::Following);
                            telemetry
                                .exporter()
                                .set("tailfold_cluster_leader", &[("set", set.to_string())], 0.0);
                            tracing::info!(set, "drained: handing the shard set's leadership over");
                            if let Err(error) = client.delete(&leadership.key).await {
                                tracing::warn!(%error, "cannot resign; the follower takes over after the lease TTL");
                            }
                            continue 'lease;
                        }
                    }
                    _ = rules_changed(&mut watched.rules) => {
                        let agreement = watched.rules.borrow().clone();
                        let differs = agreement.differs.is_some();
                        let drain = *watched.drain.borrow();
                        reregister(agreement, drain).await;
                        if differs {
                            let _ = role.send(Role::Following);
                            telemetry
                                .exporter()
                                .set("tailfold_cluster_leader", &[("set", set.to_string())], 0.0);
                            telemetry.exporter().count("tailfold_cluster_rules_resignations_total", &[], 1);
                            tracing::error!(set, "resigning the shard set's leadership: this instance's rules differ from the cluster's");
                            if let Err(error) = client.delete(&leadership.key).await {
                                tracing::warn!(%error, "cannot resign; the follower takes over after the lease TTL");
                            }
                            continue 'lease;
                        }
                    }
                }
            }
        }
        let _ = role.send(Role::Unknown);
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

/// The ids of the instances registered in etcd (alive under their leases).
pub(super) async fn registered_ids(client: &EtcdClient, cluster: &str) -> Result<HashSet<String>, EtcdError> {
    let prefix = keys::instances_prefix(cluster);
    Ok(client
        .get_prefix(&prefix)
        .await?
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(&prefix).map(str::to_string))
        .collect())
}

/// Reads which instances are registered into the view.
async fn read_liveness(client: &EtcdClient, cluster: &str, view: &ClusterView) -> Result<(), EtcdError> {
    view.set_live(registered_ids(client, cluster).await?);
    Ok(())
}

/// How often each instance reads which instances are registered.
const LIVENESS_POLL_MS: u64 = 250;

/// How long after its registration a (re)started instance is surely seen
/// live by every sender: a few liveness polls, each an etcd read.
pub const LIVENESS_MARGIN_MS: u64 = 4 * LIVENESS_POLL_MS;

/// Keeps the view's set of registered instances current (polled: it keeps
/// the last answer through an etcd outage).
async fn watch_liveness(client: EtcdClient, cluster: String, view: Arc<ClusterView>) {
    loop {
        tokio::time::sleep(Duration::from_millis(LIVENESS_POLL_MS)).await;
        let _ = read_liveness(&client, &cluster, &view).await;
    }
}
