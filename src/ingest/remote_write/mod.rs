//! Prometheus remote write 1.0 receiver: snappy-compressed protobuf over HTTP,
//! decoded into the same `IngestBatch`es as gRPC, under the same label rules
//! and limits. Only decodes and validates; the engine aggregates.
//!
//! Decisions, in one place:
//! - **Status codes** (spec "Retries & Backoff"): 204 when everything was
//!   valid; 400 with a plain-text reason when anything was invalid (bad
//!   snappy or protobuf, a size limit, a series breaking the label rules, an
//!   unreadable native histogram). Valid series of a partly bad request are
//!   still folded in, as the spec allows, and the sender does not retry a
//!   4xx, so nothing is folded twice. 415 for a content encoding or protobuf
//!   message it cannot read; 503 while shutting down (the sender retries).
//!   Drops by policy (late, future, drop rules) and non-finite values are
//!   counted, not answered with 400: Prometheus sends NaN legitimately.
//! - **Kinds**: native histogram series are distributions (`cumulative`
//!   unless their reset hint is GAUGE); float series are cumulative counters
//!   or gauges, see [`decode::is_running_total`].
//! - **Stale markers** are skipped and counted (`stale_markers`).
//! - **Exemplars** (`trace_id`, `span_id` labels) link a float sample with
//!   the same timestamp, or the first native histogram at or after them.

pub mod decode;
pub mod histogram;
mod http;

pub use decode::{RemoteWriteError, STALE_NAN_BITS};
pub use histogram::HistogramError;
pub use http::{http_router, ingest_router, probe_router, HttpState};

#[cfg(test)]
mod tests;
