//! The cluster stage of the data path, between the limits and the engine:
//! on a single node it logs (write-ahead log) and folds locally; in a cluster
//! it hands each series to every replica of its shard and tallies the answers.

use std::sync::Arc;

use crate::engine::{Engine, EngineClosed, PartialError, PartialWindow};
use crate::model::{IngestBatch, Outcome};
use crate::wal::{Wal, WalError};

use super::router::Router;

/// Why a batch the limits admitted was not folded.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The write-ahead log refused the batch (nothing was folded).
    #[error("{0}")]
    Wal(#[from] WalError),
    /// The service is shutting down.
    #[error("{0}")]
    Closed(#[from] EngineClosed),
    /// This cluster instance does not fold the cluster's rules: it forwards nothing.
    #[error("this instance does not fold the cluster's rules ({0}); send to another instance")]
    RulesDiffer(String),
}

/// Logging then folding on this instance: what a single node does with every
/// batch, and what a cluster instance does with the series it owns.
#[derive(Clone)]
pub struct LocalFold {
    engine: Arc<Engine>,
    wal: Option<Arc<Wal>>,
}

impl LocalFold {
    /// Folds into `engine`, logging in `wal` first when on.
    pub fn new(engine: Arc<Engine>, wal: Option<Arc<Wal>>) -> Self {
        LocalFold { engine, wal }
    }

    /// The engine folded into.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Logs `batch` (acknowledged only once on disk) and folds it, adding to `limited`.
    pub async fn fold(&self, batch: &IngestBatch, now_ms: i64, limited: Outcome) -> Result<Outcome, StageError> {
        if let (Some(wal), false) = (&self.wal, batch.series.is_empty()) {
            let _admitted = wal.admit().await.ok_or(EngineClosed)?;
            wal.append(batch, now_ms).await?;
            return Ok(self.engine.fold_admitted(batch, now_ms, limited)?);
        }
        Ok(self.engine.fold_admitted(batch, now_ms, limited)?)
    }

    /// The write-ahead log, when on.
    pub fn wal(&self) -> Option<&Arc<Wal>> {
        self.wal.as_ref()
    }

    /// [`LocalFold::fold`] of a batch instance `from` forwarded under `id`
    /// (logged with them, so a retry after a restart is recognised).
    pub async fn fold_forwarded(
        &self,
        from: &str,
        id: u64,
        batch: &IngestBatch,
        now_ms: i64,
    ) -> Result<Outcome, StageError> {
        if let (Some(wal), false) = (&self.wal, batch.series.is_empty()) {
            let _admitted = wal.admit().await.ok_or(EngineClosed)?;
            wal.append_forwarded(from, id, batch, now_ms).await?;
            return Ok(self.engine.fold_admitted(batch, now_ms, Outcome::default())?);
        }
        Ok(self.engine.fold_admitted(batch, now_ms, Outcome::default())?)
    }

    /// Logs the rollup `shares` shard set `source` handed over (when the log
    /// is on) and keeps each in its rollup window; one answer per share.
    pub async fn fold_shares(
        &self,
        source: u32,
        shares: Vec<PartialWindow>,
    ) -> Result<Vec<Result<(), PartialError>>, StageError> {
        let _admitted = match &self.wal {
            Some(wal) if !shares.is_empty() => Some(wal.admit().await.ok_or(EngineClosed)?),
            _ => None,
        };
        self.keep_shares(source, shares).await
    }

    /// [`LocalFold::fold_shares`] of the shares this instance's own flush
    /// made for rollups its own set owns, taken even once the log is sealed
    /// at shutdown: the windows they came from are flushed, so the log is
    /// their only copy (a closed engine still keeps rollup shares).
    pub async fn fold_own_shares(
        &self,
        source: u32,
        shares: Vec<PartialWindow>,
    ) -> Result<Vec<Result<(), PartialError>>, StageError> {
        self.keep_shares(source, shares).await
    }

    async fn keep_shares(
        &self,
        source: u32,
        shares: Vec<PartialWindow>,
    ) -> Result<Vec<Result<(), PartialError>>, StageError> {
        if let (Some(wal), false) = (&self.wal, shares.is_empty()) {
            let latest_ms = shares
                .iter()
                .map(|share| self.engine.share_due_ms(share))
                .max()
                .unwrap_or(i64::MIN);
            wal.append_shares(source, &shares, latest_ms).await?;
        }
        Ok(shares
            .into_iter()
            .map(|share| self.engine.fold_partial(source, share))
            .collect())
    }

    /// The same from a blocking thread.
    pub fn fold_blocking(&self, batch: &IngestBatch, now_ms: i64, limited: Outcome) -> Result<Outcome, StageError> {
        if let (Some(wal), false) = (&self.wal, batch.series.is_empty()) {
            let _admitted = wal.admit_blocking().ok_or(EngineClosed)?;
            wal.append_blocking(batch, now_ms)?;
            return Ok(self.engine.fold_admitted(batch, now_ms, limited)?);
        }
        Ok(self.engine.fold_admitted(batch, now_ms, limited)?)
    }
}

/// Where every ingest protocol hands what the limits admitted.
#[derive(Clone)]
pub struct Stage {
    local: LocalFold,
    router: Option<Arc<Router>>,
}

impl Stage {
    /// A single node: log and fold here.
    pub fn local(engine: Arc<Engine>, wal: Option<Arc<Wal>>) -> Self {
        Stage {
            local: LocalFold::new(engine, wal),
            router: None,
        }
    }

    /// A cluster instance: route through `router`.
    pub fn clustered(local: LocalFold, router: Arc<Router>) -> Self {
        Stage {
            local,
            router: Some(router),
        }
    }

    /// The engine behind the stage (its limits run before it).
    pub fn engine(&self) -> &Arc<Engine> {
        self.local.engine()
    }

    /// Folds the admitted `batch`, here or on its shards' replicas; the
    /// outcome adds to `limited` (what the limits refused).
    pub async fn fold(&self, batch: &IngestBatch, now_ms: i64, limited: Outcome) -> Result<Outcome, StageError> {
        match &self.router {
            None => self.local.fold(batch, now_ms, limited).await,
            Some(router) => router.route(batch, now_ms, limited).await,
        }
    }

    /// The same from a blocking thread of the runtime (remote write, OTLP).
    pub fn fold_blocking(&self, batch: &IngestBatch, now_ms: i64, limited: Outcome) -> Result<Outcome, StageError> {
        match &self.router {
            None => self.local.fold_blocking(batch, now_ms, limited),
            Some(router) => tokio::runtime::Handle::current().block_on(router.route(batch, now_ms, limited)),
        }
    }
}
