//! The cluster stage of the data path, between the limits and the engine:
//! on a single node it logs (write-ahead log) and folds locally; in a cluster
//! it hands each series to every replica of its shard and tallies the answers.

use std::sync::Arc;

use crate::engine::{Engine, EngineClosed};
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
