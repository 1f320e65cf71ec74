//! Ingest adapters (gRPC, Prometheus remote write): decode a protocol,
//! validate it, hand the engine plain `IngestBatch`es. They never aggregate.

pub mod auth;
pub mod backpressure;
pub mod grpc;
pub mod otlp;
pub mod remote_write;
pub mod statsd;
pub mod validate;

pub use validate::{validate_series, SeriesError};
