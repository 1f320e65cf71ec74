//! Per-window aggregation state: counters, gauges, distributions (a base-2
//! exponential histogram whose buckets keep one exemplar each) and sets.

mod aggregation;
mod counter;
pub mod exemplar;
mod gauge;
pub mod histogram;
mod set;

pub use aggregation::{Aggregation, AggregationError};
pub use counter::CounterState;
pub use gauge::GaugeState;
pub use set::{SetParts, SetPartsError, SetState};
