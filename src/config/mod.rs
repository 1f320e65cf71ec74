//! Configuration: the process config (`tailfold.yaml`) and the rules schema
//! (`rules.yaml`), as serde types separate from the checked runtime types.

mod cluster;
mod error;
mod limits;
mod operations;
mod otlp;
mod process;
mod remote_write;
pub mod rules;
mod security;
mod statsd;

pub use cluster::defaults as cluster_defaults;
pub use cluster::{ClusterConfig, ClusterSettings, RulesSource};
pub use error::ConfigError;
pub use limits::{DropPriority, DropPriorityConfig, LimitSettings, LimitsConfig, TenantLimit, TenantLimitsConfig};
pub use operations::{ProfileConfig, ReloadConfig};
pub use otlp::{OtlpConfig, OtlpSettings, SpanConfig, SpanLabel};
pub use process::{
    defaults, EngineConfig, FlushConfig, GrpcConfig, HistogramSettings, HttpConfig, IngestConfig, IngestLimits,
    LogConfig, ProcessConfig, SelectionsConfig, ServiceSettings, StoreConfig,
};
pub use remote_write::RemoteWriteConfig;
pub use security::{AdminToken, AuthConfig, AuthSettings, TlsConfig, TlsSettings, TokenConfig, MIN_TOKEN_BYTES};
pub use statsd::{StatsdConfig, StatsdSettings};
