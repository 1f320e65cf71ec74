//! The bound on ingest work in flight: every request (gRPC `Write`, remote
//! write, a statsd datagram) holds a permit while it is decoded and folded. When
//! none is left the request is refused at once rather than queued, so memory
//! stays bounded under a flood and senders see backpressure.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits for ingest requests in flight; cloning shares them.
#[derive(Clone, Debug)]
pub struct InflightGate {
    permits: Arc<Semaphore>,
    capacity: usize,
}

/// Held while one request is being handled.
#[derive(Debug)]
pub struct InflightPermit {
    _permit: OwnedSemaphorePermit,
}

impl InflightGate {
    /// A gate letting `capacity` requests in at once.
    pub fn new(capacity: usize) -> Self {
        InflightGate {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// A permit, or `None` when `capacity` requests are in flight.
    pub fn try_enter(&self) -> Option<InflightPermit> {
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .ok()
            .map(|permit| InflightPermit { _permit: permit })
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    /// Requests allowed in flight at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_capacity_until_a_permit_returns() {
        let gate = InflightGate::new(2);
        let first = gate.try_enter().expect("first");
        let _second = gate.try_enter().expect("second");
        assert!(gate.try_enter().is_none());
        assert_eq!(gate.in_flight(), 2);
        drop(first);
        assert!(gate.clone().try_enter().is_some());
    }
}
