//! Configuration: the process config (`tailfold.yaml`) and the rules schema
//! (`rules.yaml`), as serde types separate from the checked runtime types.

mod error;
mod process;
pub mod rules;

pub use error::ConfigError;
pub use process::{
    defaults, EngineConfig, FlushConfig, GrpcConfig, HistogramSettings, HttpConfig, IngestConfig, IngestLimits,
    LogConfig, ProcessConfig, RemoteWriteConfig, SelectionsConfig, ServiceSettings, StatsdConfig, StatsdSettings,
    StoreConfig,
};
