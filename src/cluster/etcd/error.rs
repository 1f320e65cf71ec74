//! Everything that can go wrong talking to etcd, each naming the endpoint,
//! key or lease involved.

use thiserror::Error;

use super::LeaseId;

/// An etcd client error.
#[derive(Debug, Error)]
pub enum EtcdError {
    /// `connect` was given no endpoint.
    #[error("no etcd endpoint given")]
    NoEndpoints,
    /// An endpoint string is not `http://host:port`.
    #[error("invalid etcd endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// No endpoint answered (connection refused, reset, timed out).
    #[error("etcd {op} {key:?}: no endpoint answered: {reasons}")]
    Unreachable {
        op: &'static str,
        key: String,
        reasons: String,
    },
    /// etcd answered with an error.
    #[error("etcd {op} {key:?} at {endpoint}: {code:?}: {message}")]
    Rpc {
        op: &'static str,
        key: String,
        endpoint: String,
        code: tonic::Code,
        message: String,
    },
    /// A lease TTL that is not positive.
    #[error("etcd lease ttl must be positive, got {ttl_s} s")]
    InvalidTtl { ttl_s: i64 },
    /// A lease expired or was revoked while it was needed (a campaign's).
    #[error("etcd lease {lease:x} is gone (expired or revoked): {what}")]
    LeaseGone { lease: LeaseId, what: String },
    /// etcd canceled a watch (e.g. its start revision was compacted away).
    #[error("etcd watch of prefix {prefix:?} canceled: {reason}")]
    WatchCanceled { prefix: String, reason: String },
    /// A watch stream ended or broke.
    #[error("etcd watch of prefix {prefix:?} at {endpoint} ended: {reason}")]
    WatchEnded {
        prefix: String,
        endpoint: String,
        reason: String,
    },
}

impl EtcdError {
    /// True when etcd could not be reached at all (as opposed to refusing
    /// or failing a request): the caller may wait and retry.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, EtcdError::Unreachable { .. } | EtcdError::WatchEnded { .. })
    }
}
