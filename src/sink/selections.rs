//! Trace selections: for each flushed window, the exemplar picked for each
//! emitted quantile (and `above` count). Published on a broadcast hub that the
//! gRPC `Selections.Subscribe` stream reads, and written as JSON lines under
//! `<data_dir>/selections/` for collectors that tail files.

use std::fs::{self, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use crate::api::v1;
use crate::engine::{AggregateRecord, RecordValue, Statistic};
use crate::ingest::grpc::tenant_from_metadata;
use crate::model::METRIC_NAME_LABEL;
use crate::telemetry::Telemetry;

use super::file_store::utc_compact;
use super::json::{labels_map, JsonExemplar, JsonLink};
use super::{SinkError, SinkWriter};

/// One picked exemplar: the trace that sat at a quantile of a window.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct SelectionRecord {
    /// Owner.
    pub tenant: String,
    /// Output series labels with `__name__` (no `quantile`).
    pub series: std::collections::BTreeMap<String, String>,
    /// Storage policy.
    pub policy: String,
    /// Window start.
    pub window_start_ms: i64,
    /// Window end.
    pub window_end_ms: i64,
    /// `p99`, `above(1.5)` ...
    pub aggregation: String,
    /// The quantile for quantile aggregations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantile: Option<f64>,
    /// The value reported for the aggregation (quantile value, or count above).
    pub reported_value: f64,
    /// The traced sample.
    pub exemplar: JsonExemplar,
    /// For `above` outputs: 0 for the slowest selected trace, 1 for the
    /// next, ...; for `below` outputs: 0 for the fastest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    /// How tightly the trace is linked (absent in files written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<JsonLink>,
}

impl SelectionRecord {
    /// Every selection of a record: the quantile's exemplar, or for an
    /// `above` (`below`) count each of the slowest (fastest) traces beyond
    /// the threshold, ranked.
    pub fn all_of(record: &AggregateRecord) -> Vec<SelectionRecord> {
        let Some(first) = SelectionRecord::of(record) else {
            return Vec::new();
        };
        let ranked = matches!(record.statistic, Statistic::AboveCount(_) | Statistic::BelowCount(_));
        if !ranked || record.ranked.is_empty() {
            return vec![first];
        }
        record
            .ranked
            .iter()
            .enumerate()
            .map(|(rank, exemplar)| SelectionRecord {
                exemplar: JsonExemplar::from(exemplar),
                rank: Some(rank as u32),
                ..first.clone()
            })
            .collect()
    }

    /// The selection a record stands for, if it carries an exemplar.
    pub fn of(record: &AggregateRecord) -> Option<SelectionRecord> {
        let exemplar = record.exemplar.as_ref()?;
        let quantile = match record.statistic {
            Statistic::Quantile(q) => Some(q),
            Statistic::AboveCount(_) | Statistic::BelowCount(_) => None,
            _ => return None,
        };
        let RecordValue::Scalar(reported_value) = record.value else {
            return None;
        };
        Some(SelectionRecord {
            tenant: record.tenant.to_string(),
            series: labels_map(&record.series),
            policy: record.policy.to_string(),
            window_start_ms: record.window_start_ms,
            window_end_ms: record.window_end_ms,
            aggregation: record.aggregation.to_string(),
            quantile,
            reported_value,
            exemplar: JsonExemplar::from(exemplar),
            rank: None,
            link: record.tightness.as_ref().map(JsonLink::from),
        })
    }

    /// The wire form.
    pub fn to_wire(&self) -> v1::TraceSelection {
        v1::TraceSelection {
            tenant: self.tenant.clone(),
            series: self
                .series
                .iter()
                .map(|(name, value)| v1::Label {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            storage_policy: self.policy.clone(),
            window_start_ms: self.window_start_ms,
            window_end_ms: self.window_end_ms,
            aggregation: self.aggregation.clone(),
            quantile: self.quantile.unwrap_or(0.0),
            reported_value: self.reported_value,
            trace_id: hex::decode(&self.exemplar.trace_id).unwrap_or_default(),
            span_id: self
                .exemplar
                .span_id
                .as_deref()
                .map(|s| hex::decode(s).unwrap_or_default())
                .unwrap_or_default(),
            exemplar_value: self.exemplar.value,
            exemplar_timestamp_ms: self.exemplar.timestamp_ms,
            rank: self.rank.unwrap_or(0),
            tightness: self
                .link
                .as_ref()
                .map(|link| link.tightness.clone())
                .unwrap_or_default(),
            bucket_scale: self.link.as_ref().and_then(|link| link.scale).map_or(0, i32::from),
            bucket_lower: self.link.as_ref().and_then(|link| link.bucket_lower).unwrap_or(0.0),
            bucket_upper: self.link.as_ref().and_then(|link| link.bucket_upper).unwrap_or(0.0),
            buckets_away: self.link.as_ref().and_then(|link| link.buckets_away).unwrap_or(0),
        }
    }
}

/// The broadcast hub of selections.
#[derive(Clone)]
pub struct SelectionHub {
    sender: broadcast::Sender<Arc<SelectionRecord>>,
}

impl SelectionHub {
    /// A hub buffering `capacity` selections per subscriber.
    pub fn new(capacity: usize) -> Self {
        SelectionHub {
            sender: broadcast::channel(capacity).0,
        }
    }

    /// A new subscriber, seeing selections published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<SelectionRecord>> {
        self.sender.subscribe()
    }
}

/// The sink that turns records into selections.
pub struct SelectionWriter {
    hub: SelectionHub,
    dir: Option<PathBuf>,
    telemetry: Arc<Telemetry>,
}

/// Selection files hold one hour each.
pub(crate) const SELECTION_SEGMENT_MS: i64 = 3_600_000;

impl SelectionWriter {
    /// Publishes to `hub` and, when `dir` is set, appends JSON lines there.
    pub fn new(hub: SelectionHub, dir: Option<PathBuf>, telemetry: Arc<Telemetry>) -> Self {
        SelectionWriter { hub, dir, telemetry }
    }
}

impl SinkWriter for SelectionWriter {
    fn write(&mut self, records: &[AggregateRecord], _now_ms: i64) -> Result<(), SinkError> {
        let selections: Vec<SelectionRecord> = records.iter().flat_map(SelectionRecord::all_of).collect();
        if selections.is_empty() {
            return Ok(());
        }
        if let Some(dir) = &self.dir {
            fs::create_dir_all(dir).map_err(|source| SinkError::Io {
                path: dir.display().to_string(),
                source,
            })?;
            let mut by_file: std::collections::BTreeMap<PathBuf, Vec<&SelectionRecord>> = Default::default();
            for selection in &selections {
                let start = selection.window_start_ms.div_euclid(SELECTION_SEGMENT_MS) * SELECTION_SEGMENT_MS;
                by_file
                    .entry(dir.join(format!("{}.jsonl", utc_compact(start))))
                    .or_default()
                    .push(selection);
            }
            for (path, selections) in by_file {
                let io = |source| SinkError::Io {
                    path: path.display().to_string(),
                    source,
                };
                let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
                let mut out = BufWriter::new(file);
                for selection in selections {
                    serde_json::to_writer(&mut out, selection).map_err(|error| SinkError::Encode {
                        series: format!("{:?}", selection.series),
                        message: error.to_string(),
                    })?;
                    out.write_all(b"\n").map_err(io)?;
                }
                out.flush().map_err(io)?;
            }
        }
        self.telemetry.selections(selections.len() as u64);
        for selection in selections {
            // No subscriber is not an error: the file (if on) still has it.
            let _ = self.hub.sender.send(Arc::new(selection));
        }
        Ok(())
    }
}

/// The `Selections` gRPC service.
pub struct GrpcSelections {
    hub: SelectionHub,
    tenant_header: String,
    telemetry: Arc<Telemetry>,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl GrpcSelections {
    /// Serves subscribers from `hub`; streams end once `closing` turns true
    /// and they have delivered everything published before that.
    pub fn new(
        hub: SelectionHub,
        tenant_header: String,
        telemetry: Arc<Telemetry>,
        closing: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        GrpcSelections {
            hub,
            tenant_header,
            telemetry,
            closing,
        }
    }
}

type SelectionStream = Pin<Box<dyn Stream<Item = Result<v1::TraceSelection, Status>> + Send>>;

#[tonic::async_trait]
impl v1::selections_server::Selections for GrpcSelections {
    type SubscribeStream = SelectionStream;

    async fn subscribe(&self, request: Request<v1::SubscribeRequest>) -> Result<Response<SelectionStream>, Status> {
        // A tenant named in metadata restricts the stream like the request field does.
        let metadata_tenant = request
            .metadata()
            .get(&self.tenant_header)
            .map(|_| tenant_from_metadata(request.metadata(), &self.tenant_header, ""))
            .transpose()?;
        let filter = request.into_inner();
        let metric = if filter.metric.is_empty() {
            None
        } else {
            Some(
                globset::Glob::new(&filter.metric)
                    .map_err(|error| Status::invalid_argument(format!("metric glob {:?}: {error}", filter.metric)))?
                    .compile_matcher(),
            )
        };
        if let (Some(from_metadata), false) = (&metadata_tenant, filter.tenant.is_empty()) {
            if **from_metadata != *filter.tenant {
                return Err(Status::permission_denied(format!(
                    "tenant {:?} in the request differs from {:?} in metadata",
                    filter.tenant, from_metadata
                )));
            }
        }
        let tenant = metadata_tenant.map(|t| t.to_string()).unwrap_or(filter.tenant);
        let mut receiver = self.hub.subscribe();
        let mut closing = self.closing.clone();
        let telemetry = Arc::clone(&self.telemetry);
        let stream = async_stream_of(
            move |sender: tokio::sync::mpsc::Sender<Result<v1::TraceSelection, Status>>| async move {
                loop {
                    // Biased: what was published before the close is delivered first.
                    let received = tokio::select! {
                        biased;
                        received = receiver.recv() => received,
                        _ = closing.wait_for(|closed| *closed) => return,
                    };
                    let selection = match received {
                        Ok(selection) => selection,
                        Err(broadcast::error::RecvError::Closed) => return,
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            telemetry.selections_lagged(missed);
                            let _ = sender
                                .send(Err(Status::data_loss(format!(
                                    "subscriber too slow: {missed} selections skipped; resubscribe"
                                ))))
                                .await;
                            return;
                        }
                    };
                    if !tenant.is_empty() && selection.tenant != tenant {
                        continue;
                    }
                    if let Some(glob) = &metric {
                        let name = selection
                            .series
                            .get(METRIC_NAME_LABEL)
                            .map(String::as_str)
                            .unwrap_or("");
                        if !glob.is_match(name) {
                            continue;
                        }
                    }
                    if sender.send(Ok(selection.to_wire())).await.is_err() {
                        return;
                    }
                }
            },
        );
        Ok(Response::new(stream))
    }
}

/// Runs `produce` on a task and streams what it sends.
fn async_stream_of<F, Fut>(produce: F) -> SelectionStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<v1::TraceSelection, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(produce(sender));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

/// Where selection files go under a data directory.
pub fn selection_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("selections")
}
