//! Routing on a receiving instance: each series goes to its shard (a stable
//! hash of tenant and labels), and to every replica of that shard's set, one
//! forward per replica per request. The write is answered once every live
//! replica took its part, with the tally of the first replica of each set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::api::cluster_v1::cluster_client::ClusterClient;
use crate::api::cluster_v1::{ForwardRequest, ShareRequest};
use crate::engine::PartialWindow;
use crate::model::{DropReason, IngestBatch, Outcome};
use crate::reload::RulesReloader;
use crate::telemetry::Telemetry;
use crate::wal::codec;

use super::handoff::{keep_own_side, kept_points, must_reach, share_owner};
use super::placement::{shard_of, InstanceSpec};
use super::stage::{LocalFold, StageError};
use super::view::{outcome_from_wire, ClusterView};

/// Why one replica did not take its part.
#[derive(Debug, thiserror::Error)]
enum ReplicaError {
    /// etcd no longer lists it: it is not a replica to wait for.
    #[error("instance {0} is not registered (lost)")]
    NotLive(String),
    /// It refused the batch outright (wrong cluster, not the owner, malformed).
    #[error("instance {instance} refused the batch: {message}")]
    Refused {
        /// The replica.
        instance: String,
        /// Its answer.
        message: String,
    },
    /// Still registered but unreachable for the whole forward timeout.
    #[error("instance {0} did not answer within cluster.forward_timeout_ms")]
    Timeout(String),
    /// This instance's own fold failed.
    #[error("{0}")]
    Local(StageError),
}

/// Routes admitted batches to the replicas of their shards.
pub struct Router {
    view: Arc<ClusterView>,
    local: LocalFold,
    clients: Mutex<HashMap<String, ClusterClient<Channel>>>,
    telemetry: Arc<Telemetry>,
    rules: Arc<RulesReloader>,
    /// The id of the next forwarded batch: started at the clock's nanoseconds,
    /// so ids stay unique across this instance's restarts.
    next_batch_id: std::sync::atomic::AtomicU64,
}

impl Router {
    /// A router for this instance, folding its own part through `local`.
    /// Forwards carry the hash of `rules`' newest rules.
    pub fn new(view: Arc<ClusterView>, local: LocalFold, telemetry: Arc<Telemetry>, rules: Arc<RulesReloader>) -> Self {
        Router {
            view,
            local,
            clients: Mutex::new(HashMap::new()),
            telemetry,
            rules,
            next_batch_id: std::sync::atomic::AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_nanos() as u64),
            ),
        }
    }

    /// A client of `instance`'s forwarding API (connected on first use).
    fn client(&self, instance: &InstanceSpec) -> Result<ClusterClient<Channel>, String> {
        let mut clients = self.clients.lock();
        if let Some(client) = clients.get(&instance.id) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", instance.endpoint))
            .map_err(|error| format!("endpoint {:?} of instance {}: {error}", instance.endpoint, instance.id))?
            .connect_timeout(Duration::from_millis(1_000))
            .tcp_nodelay(true);
        let client = ClusterClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        clients.insert(instance.id.clone(), client.clone());
        Ok(client)
    }

    /// Folds `batch` on the replicas of its series' shards; the outcome adds to `limited`.
    /// Refused while this instance does not fold the cluster's rules.
    pub async fn route(&self, batch: &IngestBatch, now_ms: i64, limited: Outcome) -> Result<Outcome, StageError> {
        if let Some(reason) = self.rules.differs() {
            self.telemetry.exporter().count(
                "tailfold_cluster_rules_differ_refused_points_total",
                &[],
                batch
                    .series
                    .iter()
                    .map(|series| (series.points.len() + series.histograms.len()) as u64)
                    .sum(),
            );
            return Err(StageError::RulesDiffer(reason));
        }
        let placement = self.view.placement();
        let mut by_set: Vec<Vec<(usize, u32)>> = vec![Vec::new(); placement.sets.len()];
        let mut twice = 0;
        for (index, series) in batch.series.iter().enumerate() {
            let shard = shard_of(&batch.tenant, &series.labels, placement.shards);
            by_set[placement.set_index_of_shard(shard)].push((index, shard));
            // Across a handoff both owners get the series; each keeps its side of the cutover.
            if let Some((from, _)) = placement.moving_from(shard) {
                by_set[from].push((index, shard));
                twice += (series.points.len() + series.histograms.len()) as u64;
            }
        }
        if twice > 0 {
            self.telemetry
                .exporter()
                .count("tailfold_cluster_handoff_forwarded_twice_total", &[], twice);
        }
        let parts = by_set
            .iter()
            .enumerate()
            .filter(|(_, indices)| !indices.is_empty())
            .map(|(set, indices)| {
                let mut frame = Vec::new();
                codec::encode_series(
                    &batch.tenant,
                    indices.iter().map(|(index, _)| &batch.series[*index]),
                    now_ms,
                    &mut frame,
                );
                // What this set keeps: all but the other side of a moving shard's cutover.
                let points: u64 = indices
                    .iter()
                    .map(|(index, shard)| kept_points(&placement, *shard, set, &batch.series[*index], now_ms))
                    .sum();
                let earliest_ms = indices
                    .iter()
                    .flat_map(|(index, _)| {
                        let series = &batch.series[*index];
                        let points = series.points.iter().map(|point| point.timestamp_ms);
                        points.chain(series.histograms.iter().map(|histogram| histogram.timestamp_ms))
                    })
                    .map(|timestamp_ms| timestamp_ms.unwrap_or(now_ms))
                    .min()
                    .unwrap_or(now_ms);
                let instances = &placement.sets[set].instances;
                let wait: Vec<bool> = instances
                    .iter()
                    .map(|replica| must_reach(&placement, &replica.id, earliest_ms))
                    .collect();
                self.to_set(instances, wait, Bytes::from(frame), placement.version, points)
            });
        let mut outcome = limited;
        for result in futures::future::join_all(parts).await {
            outcome.merge(&result?);
        }
        Ok(outcome)
    }

    /// Sends one set's part to each of its replicas at once. Answers with the
    /// first replica's tally. While no replica is registered (a set of one
    /// replica restarting) it waits for one up to the forward timeout; when
    /// none took it, its points are `unavailable`. `wait[i]`: replica i is
    /// waited for even while etcd lists it as gone.
    async fn to_set(
        &self,
        replicas: &[InstanceSpec],
        wait: Vec<bool>,
        frame: Bytes,
        version: u64,
        points: u64,
    ) -> Result<Outcome, StageError> {
        let id = self.next_batch_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_millis(self.view.settings().forward_timeout_ms);
        let mut backoff = Duration::from_millis(25);
        let results = loop {
            let sends = replicas
                .iter()
                .zip(&wait)
                .map(|(replica, wait)| self.to_replica(replica, *wait, frame.clone(), version, id));
            let results = futures::future::join_all(sends).await;
            let none_live = results
                .iter()
                .all(|result| matches!(result, Err(ReplicaError::NotLive(_))));
            if !none_live || Instant::now() + backoff > deadline {
                break results;
            }
            self.telemetry
                .exporter()
                .count("tailfold_cluster_forward_waits_total", &[], 1);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        };
        let mut taken = None;
        let mut closing = None;
        for (replica, result) in replicas.iter().zip(results) {
            match result {
                Ok(outcome) => {
                    self.telemetry.exporter().count(
                        "tailfold_cluster_forwarded_points_total",
                        &[("instance", replica.id.clone())],
                        points,
                    );
                    taken.get_or_insert(outcome);
                }
                Err(ReplicaError::NotLive(_)) => {}
                Err(ReplicaError::Local(StageError::Closed(closed))) => closing = Some(StageError::Closed(closed)),
                Err(ReplicaError::Local(error)) => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, points, "a replica missed a forwarded batch");
                    let reason = match error {
                        ReplicaError::Refused { .. } => "refused",
                        _ => "timeout",
                    };
                    self.telemetry.exporter().count(
                        "tailfold_cluster_forward_failures_total",
                        &[("instance", replica.id.clone()), ("reason", reason.to_string())],
                        points,
                    );
                }
            }
        }
        match (taken, closing) {
            (Some(outcome), _) => Ok(outcome),
            (None, Some(closed)) => Err(closed),
            (None, None) => {
                let mut outcome = Outcome::default();
                outcome.reject(DropReason::Unavailable, points);
                Ok(outcome)
            }
        }
    }

    /// Hands rollup shares of shard set `source` to every replica of each
    /// rollup's shard (this instance keeps its own). Returns the shares some
    /// replica of their owner kept; the others are counted as lost.
    pub async fn share(&self, source: u32, shares: Vec<PartialWindow>) -> usize {
        let placement = self.view.placement();
        let mut by_set: Vec<Vec<PartialWindow>> = vec![Vec::new(); placement.sets.len()];
        for share in shares {
            let labels = crate::model::Labels::from_pairs(
                share.labels.iter().map(|(name, value)| (name.as_str(), value.as_str())),
            );
            let shard = shard_of(&share.tenant, &labels, placement.shards);
            by_set[share_owner(&placement, shard, share.start_ms)].push(share);
        }
        let sends = by_set
            .into_iter()
            .enumerate()
            .filter(|(_, shares)| !shares.is_empty())
            .map(|(set, shares)| {
                let replicas = placement.sets[set].instances.clone();
                let placement = Arc::clone(&placement);
                async move {
                    let count = shares.len();
                    let encoded: Vec<Bytes> = shares
                        .iter()
                        .map(|share| Bytes::from(postcard::to_allocvec(share).expect("a share serialises")))
                        .collect();
                    let earliest_ms = shares.iter().map(|share| share.start_ms).min().unwrap_or(i64::MAX);
                    let mut kept = false;
                    for replica in &replicas {
                        let wait = must_reach(&placement, &replica.id, earliest_ms);
                        if self.share_with(replica, source, &shares, &encoded, wait).await {
                            kept = true;
                        }
                    }
                    // No replica is live (a one-replica set restarting, or all of them):
                    // wait for one up to the forward timeout, as a sender of writes would.
                    for replica in &replicas {
                        if kept {
                            break;
                        }
                        kept = self.share_with(replica, source, &shares, &encoded, true).await;
                    }
                    if !kept {
                        tracing::error!(count, set, "no replica of the rollups' shard set kept their shares");
                        self.telemetry.exporter().count(
                            "tailfold_cluster_rollup_shares_lost_total",
                            &[("set", set.to_string())],
                            count as u64,
                        );
                    }
                    if kept {
                        count
                    } else {
                        0
                    }
                }
            });
        futures::future::join_all(sends).await.into_iter().sum()
    }

    /// Sends shares to one replica, retried like a forward (also while etcd
    /// lists it as gone, when `even_not_live`); true when kept.
    async fn share_with(
        &self,
        replica: &InstanceSpec,
        source: u32,
        shares: &[PartialWindow],
        encoded: &[Bytes],
        even_not_live: bool,
    ) -> bool {
        let settings = self.view.settings();
        if replica.id == settings.instance {
            // Logged like a share from another instance: the windows it came
            // from are flushed, so the log is the share's only copy here
            // (also after the shutdown sealed the log: see `fold_own_shares`).
            return match self.local.fold_own_shares(source, shares.to_vec()).await {
                Ok(answers) => answers.into_iter().fold(true, |kept, answer| match answer {
                    Ok(()) => kept,
                    Err(error) => {
                        tracing::warn!(%error, "own rollup share refused");
                        false
                    }
                }),
                Err(error) => {
                    tracing::warn!(%error, "own rollup shares not kept");
                    false
                }
            };
        }
        let deadline = Instant::now() + Duration::from_millis(settings.forward_timeout_ms);
        let mut backoff = Duration::from_millis(25);
        loop {
            if !even_not_live && !self.view.is_live(&replica.id) {
                return false;
            }
            let Ok(mut client) = self.client(replica) else {
                return false;
            };
            let request = ShareRequest {
                cluster: settings.cluster.clone(),
                from_instance: settings.instance.clone(),
                source_set: source,
                shares: encoded.iter().map(|bytes| bytes.to_vec()).collect(),
                rules_hash: self.rules.newest_hash(),
                rules_version: self.rules.cluster_version(),
            };
            match client.share(request).await {
                Ok(answer) => return answer.get_ref().kept > 0 || answer.get_ref().too_late == 0,
                // Retried like a forward, a connection cut mid-call (the replica
                // killed) included: a re-sent share replaces the one kept, if it was.
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::PermissionDenied
                    ) || Instant::now() + backoff > deadline =>
                {
                    tracing::warn!(instance = %replica.id, %status, "rollup shares not delivered to a replica");
                    return false;
                }
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// One replica: this instance folds its part itself; another is called,
    /// and retried while etcd still lists it (or `even_not_live`), up to the
    /// forward timeout.
    async fn to_replica(
        &self,
        replica: &InstanceSpec,
        even_not_live: bool,
        frame: Bytes,
        version: u64,
        id: u64,
    ) -> Result<Outcome, ReplicaError> {
        let settings = self.view.settings();
        if replica.id == settings.instance {
            let decoded = codec::decode(&frame).map_err(|torn| ReplicaError::Refused {
                instance: replica.id.clone(),
                message: format!("{torn:?}"),
            })?;
            let placement = self.view.placement();
            let kept = keep_own_side(
                &placement,
                &settings.instance,
                &decoded.batch,
                decoded.now_ms,
                &self.telemetry,
            );
            return self
                .local
                .fold(
                    kept.as_ref().unwrap_or(&decoded.batch),
                    decoded.now_ms,
                    Outcome::default(),
                )
                .await
                .map_err(ReplicaError::Local);
        }
        let deadline = Instant::now() + Duration::from_millis(settings.forward_timeout_ms);
        let mut backoff = Duration::from_millis(25);
        loop {
            if !even_not_live && !self.view.is_live(&replica.id) {
                return Err(ReplicaError::NotLive(replica.id.clone()));
            }
            let mut client = self.client(replica).map_err(|message| ReplicaError::Refused {
                instance: replica.id.clone(),
                message,
            })?;
            let request = ForwardRequest {
                cluster: settings.cluster.clone(),
                placement_version: version,
                from_instance: settings.instance.clone(),
                batch: frame.clone(),
                rules_hash: self.rules.newest_hash(),
                batch_id: id,
                rules_version: self.rules.cluster_version(),
            };
            match client.forward(request).await {
                Ok(response) => return Ok(outcome_from_wire(response.get_ref())),
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::PermissionDenied
                    ) =>
                {
                    return Err(ReplicaError::Refused {
                        instance: replica.id.clone(),
                        message: status.message().to_string(),
                    });
                }
                Err(status) => {
                    if Instant::now() + backoff > deadline {
                        tracing::debug!(instance = %replica.id, %status, "giving up on a replica");
                        return Err(ReplicaError::Timeout(replica.id.clone()));
                    }
                    self.telemetry.exporter().count(
                        "tailfold_cluster_forward_retries_total",
                        &[("instance", replica.id.clone())],
                        1,
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }
}
