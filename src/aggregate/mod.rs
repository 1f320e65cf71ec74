//! Per-window aggregation state: counters, gauges and distributions (a
//! base-2 exponential histogram whose buckets keep one exemplar each).

mod aggregation;
mod counter;
pub mod exemplar;
mod gauge;
pub mod histogram;

pub use aggregation::{Aggregation, AggregationError};
pub use counter::CounterState;
pub use gauge::GaugeState;
