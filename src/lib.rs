//! tailfold: a streaming aggregation tier for metrics.
//!
//! Raw samples come in over gRPC ([`ingest`]), are matched against YAML rules
//! ([`rules`]), folded into per-window state ([`engine`], [`aggregate`]) and
//! flushed as aggregate records to sinks ([`sink`]): the embedded file store
//! and the trace selection stream. See DESIGN.md for the data path.

pub mod admin;
pub mod aggregate;
pub mod api;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod fuzzing;
pub mod ingest;
pub mod limits;
pub mod loadgen;
pub mod model;
mod prefetch;
pub mod profile;
pub mod reload;
pub mod rules;
pub mod server;
pub mod sink;
pub mod telemetry;
pub mod tls;
pub mod wal;
