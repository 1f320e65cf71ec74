//! The internal forwarding API an instance serves to the others: it folds
//! the batches of the shards it owns and keeps rollup shares of the rollups
//! it owns. Anything else (another cluster, other rules, a shard it does not
//! own, a malformed batch) is refused with the reason and counted.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::cluster_v1::cluster_server::{Cluster, ClusterServer};
use crate::api::cluster_v1::{ForwardRequest, ForwardResponse, ShareRequest, ShareResponse};
use crate::engine::{PartialError, PartialWindow};
use crate::model::Labels;
use crate::reload::RulesReloader;
use crate::telemetry::Telemetry;
use crate::wal::codec;

use super::handoff::{keep_own_side, keeps_share};
use super::placement::shard_of;
use super::retries::{Retries, Seen};
use super::stage::LocalFold;
use super::view::{outcome_to_wire, ClusterView};

/// The `tailfold.cluster.v1.Cluster` service of one instance.
pub struct ForwardService {
    view: Arc<ClusterView>,
    local: LocalFold,
    telemetry: Arc<Telemetry>,
    rules: Arc<RulesReloader>,
    /// Forwarded batches taken lately, to answer a retry without folding it again.
    retries: Retries,
}

impl ForwardService {
    /// Folds what it owns through `local`.
    /// Refuses forwards made under rules `rules` folds no window with.
    pub fn new(view: Arc<ClusterView>, local: LocalFold, telemetry: Arc<Telemetry>, rules: Arc<RulesReloader>) -> Self {
        // A sender retries a batch for up to its forward timeout; twice that covers
        // the retries of a sender whose timeout is longer than this instance's.
        let retries = Retries::new(view.settings().forward_timeout_ms.saturating_mul(2));
        if let Some(wal) = local.wal() {
            for forward in wal.take_replayed_forwards() {
                retries.replayed(
                    forward.from,
                    forward.id,
                    forward.now_ms,
                    outcome_to_wire(&forward.outcome),
                );
            }
        }
        ForwardService {
            view,
            local,
            telemetry,
            rules,
            retries,
        }
    }

    /// The tonic service, taking batches as large as a sender may send.
    pub fn into_server(self) -> ClusterServer<Self> {
        ClusterServer::new(self).max_decoding_message_size(usize::MAX)
    }

    fn refuse(&self, reason: &'static str, from: &str, status: Status) -> Status {
        tracing::warn!(from, reason, message = status.message(), "refused a forwarded batch");
        self.telemetry.exporter().count(
            "tailfold_cluster_refused_total",
            &[("reason", reason.to_string()), ("from", from.to_string())],
            1,
        );
        status
    }

    fn check_cluster(&self, cluster: &str, from: &str) -> Result<(), Status> {
        let mine = &self.view.settings().cluster;
        if cluster != mine {
            return Err(self.refuse(
                "wrong_cluster",
                from,
                Status::permission_denied(format!(
                    "cluster id {cluster:?} is not this instance's {mine:?}: check cluster.cluster on {from}"
                )),
            ));
        }
        Ok(())
    }

    /// Refuses what was routed under rules this instance folds no window
    /// with: folding it here would mix two rule sets in one window. A sender
    /// that has seen a newer cluster version than this instance is told to
    /// retry (UNAVAILABLE): the watch brings it here within moments.
    fn check_rules(&self, theirs: &str, version: u64, from: &str) -> Result<(), Status> {
        if self.rules.knows_hash(theirs) {
            return Ok(());
        }
        let mine = self.rules.newest_hash();
        let my_version = self.rules.cluster_version();
        if version > my_version && self.rules.differs().is_none() {
            return Err(self.refuse(
                "rules_pending",
                from,
                Status::unavailable(format!(
                    "rules version {version} of {from} not yet loaded on instance {} (it has version {my_version}); retry",
                    self.view.settings().instance
                )),
            ));
        }
        Err(self.refuse(
            "rules_differ",
            from,
            Status::failed_precondition(format!(
                "rules differ: {from} folds with rules {theirs:?} (cluster version {version}), instance {} with {mine:?} (cluster version {my_version}); every instance must fold the cluster's rules (see /api/v1/cluster)",
                self.view.settings().instance
            )),
        ))
    }

    /// Refuses a series whose shard this instance's set does not own (nor
    /// hands off in a change in flight).
    fn check_owner(&self, tenant: &str, labels: &Labels, from: &str, version: u64) -> Result<(), Status> {
        let placement = self.view.placement();
        let shard = shard_of(tenant, labels, placement.shards);
        let mine = placement.set_index_of_instance(&self.view.settings().instance);
        let old_owner = placement.moving_from(shard).map(|(from, _)| from);
        if mine.is_some() && (mine == Some(placement.set_index_of_shard(shard)) || mine == old_owner) {
            return Ok(());
        }
        Err(self.refuse(
            "not_owner",
            from,
            Status::failed_precondition(format!(
                "instance {} does not own shard {shard} (placement version {}, sender routed by version {version})",
                self.view.settings().instance,
                placement.version
            )),
        ))
    }
}

#[tonic::async_trait]
impl Cluster for ForwardService {
    async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<ForwardResponse>, Status> {
        let request = request.into_inner();
        let from = request.from_instance.as_str();
        self.check_cluster(&request.cluster, from)?;
        self.check_rules(&request.rules_hash, request.rules_version, from)?;
        let decoded = codec::decode(&request.batch).map_err(|torn| {
            self.refuse(
                "malformed",
                from,
                Status::invalid_argument(format!("malformed forwarded batch from {from:?}: {torn:?} frame")),
            )
        })?;
        for series in &decoded.batch.series {
            self.check_owner(&decoded.batch.tenant, &series.labels, from, request.placement_version)?;
            if let Some(point) = series
                .points
                .iter()
                .find(|point| !point.value.is_finite() || point.weight == 0)
            {
                return Err(self.refuse(
                    "malformed",
                    from,
                    Status::invalid_argument(format!(
                        "forwarded batch from {from:?}: point {} (weight {}) of {:?} is not finite or weighs nothing",
                        point.value, point.weight, series.labels
                    )),
                ));
            }
        }
        let id = request.batch_id;
        match self.retries.check_in(from, id, decoded.now_ms) {
            Seen::New => {}
            Seen::InFlight => {
                return Err(Status::unavailable(format!(
                    "batch {id} from {from:?} is being folded by an earlier attempt; retry"
                )))
            }
            Seen::Done(answer) => {
                self.telemetry.exporter().count(
                    "tailfold_cluster_forward_retries_answered_total",
                    &[("from", from.to_string())],
                    1,
                );
                return Ok(Response::new(answer));
            }
        }
        // Across a handoff only this owner's side of the cutover is logged and folded.
        let placement = self.view.placement();
        let kept = keep_own_side(
            &placement,
            &self.view.settings().instance,
            &decoded.batch,
            decoded.now_ms,
            &self.telemetry,
        );
        match self
            .local
            .fold_forwarded(from, id, kept.as_ref().unwrap_or(&decoded.batch), decoded.now_ms)
            .await
        {
            Ok(outcome) => {
                let answer = outcome_to_wire(&outcome);
                self.retries.done(from, id, answer.clone());
                Ok(Response::new(answer))
            }
            Err(error) => {
                self.retries.failed(from, id);
                Err(Status::unavailable(error.to_string()))
            }
        }
    }

    async fn share(&self, request: Request<ShareRequest>) -> Result<Response<ShareResponse>, Status> {
        let request = request.into_inner();
        let from = request.from_instance.as_str();
        self.check_cluster(&request.cluster, from)?;
        self.check_rules(&request.rules_hash, request.rules_version, from)?;
        let mut shares = Vec::with_capacity(request.shares.len());
        for bytes in &request.shares {
            let share: PartialWindow = postcard::from_bytes(bytes).map_err(|error| {
                self.refuse(
                    "malformed",
                    from,
                    Status::invalid_argument(format!("malformed rollup share from {from:?}: {error}")),
                )
            })?;
            let labels = Labels::from_pairs(share.labels.iter().map(|(name, value)| (name.as_str(), value.as_str())));
            self.check_owner(&share.tenant, &labels, from, 0)?;
            let placement = self.view.placement();
            let shard = shard_of(&share.tenant, &labels, placement.shards);
            let mine = placement
                .set_index_of_instance(&self.view.settings().instance)
                .unwrap_or(usize::MAX);
            if keeps_share(&placement, shard, mine, share.start_ms, &self.telemetry) {
                shares.push(share);
            }
        }
        let mut answer = ShareResponse::default();
        let folded = match self.local.fold_shares(request.source_set, shares).await {
            Ok(folded) => folded,
            Err(error) => return Err(Status::unavailable(error.to_string())),
        };
        let mut malformed = None;
        for result in folded {
            match result {
                Ok(()) => answer.kept += 1,
                Err(PartialError::TooLate { .. }) => answer.too_late += 1,
                Err(error) => malformed = Some(error),
            }
        }
        if let Some(error) = malformed {
            return Err(self.refuse("malformed", from, Status::invalid_argument(error.to_string())));
        }
        if answer.too_late > 0 {
            self.telemetry.exporter().count(
                "tailfold_cluster_rollup_shares_too_late_total",
                &[("from", from.to_string())],
                u64::from(answer.too_late),
            );
        }
        Ok(Response::new(answer))
    }
}
