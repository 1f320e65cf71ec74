//! Ingest adapters (gRPC, Prometheus remote write): decode a protocol,
//! validate it, hand the engine plain `IngestBatch`es. They never aggregate.

pub mod auth;
pub mod backpressure;
pub mod budget;
pub mod grpc;
pub mod grpc_decode;
pub mod otlp;
pub mod protowire;
pub mod remote_write;
pub mod statsd;
pub mod validate;

pub use validate::{validate_series, SeriesError};
