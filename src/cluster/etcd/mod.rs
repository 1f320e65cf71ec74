//! A small etcd v3 client over gRPC (the vendored release-3.4 protos): key
//! reads and writes, the transactions the cluster needs, leases kept alive in
//! the background, prefix watches and elections. Fails over between endpoints.

mod election;
mod error;
mod lease;
mod watch;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

pub use election::{Election, Leadership};
pub use error::EtcdError;
pub use lease::LeaseKeeper;
pub use watch::{WatchEvent, WatchKind, WatchStream};

use pb::etcdserverpb::{
    compare, kv_client::KvClient, lease_client::LeaseClient, request_op, DeleteRangeRequest, LeaseGrantRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest,
};

/// The etcd v3 wire types, generated from `proto/etcd` (client side only).
/// Modules mirror the proto packages, which refer to each other.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    /// `mvccpb`: stored key-values and watch events.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// `authpb`: users and roles (referenced by `rpc.proto`, unused here).
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    /// `etcdserverpb`: the KV, Lease, Watch (and other) services.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

/// An etcd lease id (etcd's `int64`).
pub type LeaseId = i64;

/// One stored key and its value, with the revisions etcd keeps for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key (tailfold's keys are UTF-8; other bytes are shown lossily).
    pub key: String,
    /// The value as stored.
    pub value: Vec<u8>,
    /// Revision at which the key was created (0 once deleted, in delete events).
    pub create_revision: i64,
    /// Revision of the last change (for a delete event, the deletion's).
    pub mod_revision: i64,
    /// Lease the key is attached to; 0 for none.
    pub lease: i64,
}

impl From<pb::mvccpb::KeyValue> for KeyValue {
    fn from(kv: pb::mvccpb::KeyValue) -> Self {
        KeyValue {
            key: match String::from_utf8(kv.key) {
                Ok(key) => key,
                Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
            },
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            lease: kv.lease,
        }
    }
}

/// A client of one etcd cluster. Cloning is cheap (the connection is shared).
///
/// Every call runs against the endpoint that last answered; on a transport
/// error or a timeout it reconnects to the next endpoint (in the order given)
/// and retries there, once per endpoint. An etcd error (a refused request) is
/// returned as is.
#[derive(Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// The endpoints as given, e.g. `http://127.0.0.1:2379`, and how to reach them.
    endpoints: Vec<(String, Endpoint)>,
    /// The endpoint in use (index into `endpoints`) and its connection.
    active: Mutex<(usize, Channel)>,
    /// Bound on connecting and on each unary call.
    timeout: Duration,
    /// TTLs of the leases this client granted, so a keeper knows its TTL
    /// before its first renewal answers.
    granted: Mutex<HashMap<LeaseId, i64>>,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient")
            .field("endpoints", &self.endpoints())
            .field("active", &self.active_endpoint())
            .finish()
    }
}

/// What a call is about, for error messages.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    op: &'static str,
    key: &'a str,
}

impl EtcdClient {
    /// Connects to the first reachable endpoint (`http://host:port` each).
    /// `timeout` bounds each connection attempt and every later unary call.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Self, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let parsed = endpoints
            .iter()
            .map(|url| parse_endpoint(url, timeout).map(|endpoint| (url.clone(), endpoint)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut failures = Vec::new();
        for (index, (url, endpoint)) in parsed.iter().enumerate() {
            match connect_one(endpoint, timeout).await {
                Ok(channel) => {
                    return Ok(EtcdClient {
                        inner: Arc::new(Inner {
                            endpoints: parsed,
                            active: Mutex::new((index, channel)),
                            timeout,
                            granted: Mutex::new(HashMap::new()),
                        }),
                    })
                }
                Err(reason) => failures.push(format!("{url}: {reason}")),
            }
        }
        Err(EtcdError::Unreachable {
            op: "connect",
            key: String::new(),
            reasons: failures.join("; "),
        })
    }

    /// The endpoints this client was given.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.endpoints.iter().map(|(url, _)| url.clone()).collect()
    }

    /// The value of `key`, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let request = RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        let response = self.range(Target { op: "get", key }, request).await?;
        Ok(response.kvs.into_iter().next().map(KeyValue::from))
    }

    /// Every key starting with `prefix`, sorted by key.
    pub async fn get_prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        let request = RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix),
            sort_order: pb::etcdserverpb::range_request::SortOrder::Ascend as i32,
            sort_target: pb::etcdserverpb::range_request::SortTarget::Key as i32,
            ..Default::default()
        };
        let response = self
            .range(
                Target {
                    op: "get prefix",
                    key: prefix,
                },
                request,
            )
            .await?;
        Ok(response.kvs.into_iter().map(KeyValue::from).collect())
    }

    /// Writes `key` (attached to `lease` if given); returns the store revision of the write.
    pub async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64, EtcdError> {
        let request = put_request(key, value, lease);
        let response = self
            .call(Target { op: "put", key }, |channel| {
                let request = request.clone();
                async move { KvClient::new(channel).put(request).await }
            })
            .await?;
        Ok(response.header.map_or(0, |header| header.revision))
    }

    /// Deletes `key`; true if it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, EtcdError> {
        let request = DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        let response = self
            .call(Target { op: "delete", key }, |channel| {
                let request = request.clone();
                async move { KvClient::new(channel).delete_range(request).await }
            })
            .await?;
        Ok(response.deleted > 0)
    }

    /// Writes `key` only if it does not exist; true if written.
    pub async fn create(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<bool, EtcdError> {
        let compare = compare_revision(key, compare::CompareTarget::Create, 0);
        self.txn(
            Target { op: "create", key },
            vec![compare],
            put_request(key, value, lease),
        )
        .await
    }

    /// Writes `key` only if its last change was at `expected_mod_revision`
    /// (0: only if it does not exist); true if written.
    pub async fn compare_and_put(
        &self,
        key: &str,
        expected_mod_revision: i64,
        value: Vec<u8>,
    ) -> Result<bool, EtcdError> {
        let compare = compare_revision(key, compare::CompareTarget::Mod, expected_mod_revision);
        self.txn(
            Target {
                op: "compare and put",
                key,
            },
            vec![compare],
            put_request(key, value, None),
        )
        .await
    }

    /// Writes `key` only while `guard_key` exists attached to `guard_lease`:
    /// a leader recording something only while it still leads. True if written.
    pub async fn put_if_lease_holds(
        &self,
        guard_key: &str,
        guard_lease: LeaseId,
        key: &str,
        value: Vec<u8>,
    ) -> Result<bool, EtcdError> {
        // A missing key compares as lease 0, which no granted lease is.
        let compare = pb::etcdserverpb::Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Lease as i32,
            key: guard_key.as_bytes().to_vec(),
            target_union: Some(compare::TargetUnion::Lease(guard_lease)),
            ..Default::default()
        };
        self.txn(
            Target {
                op: "put if lease holds",
                key,
            },
            vec![compare],
            put_request(key, value, None),
        )
        .await
    }

    /// Writes every `puts` and deletes every `deletes` in one transaction,
    /// only if `key` was last changed at `expected_mod_revision`; true if written.
    pub async fn compare_and_write(
        &self,
        key: &str,
        expected_mod_revision: i64,
        puts: Vec<(String, Vec<u8>)>,
        deletes: Vec<String>,
    ) -> Result<bool, EtcdError> {
        let compare = compare_revision(key, compare::CompareTarget::Mod, expected_mod_revision);
        let mut success: Vec<RequestOp> = puts
            .into_iter()
            .map(|(key, value)| RequestOp {
                request: Some(request_op::Request::RequestPut(put_request(&key, value, None))),
            })
            .collect();
        success.extend(deletes.into_iter().map(|key| RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.into_bytes(),
                ..Default::default()
            })),
        }));
        let request = TxnRequest {
            compare: vec![compare],
            success,
            failure: Vec::new(),
        };
        let target = Target {
            op: "compare and write",
            key,
        };
        self.commit(target, request).await
    }

    /// Grants a lease of `ttl_s` seconds (etcd may raise very short TTLs to its minimum).
    pub async fn lease_grant(&self, ttl_s: i64) -> Result<LeaseId, EtcdError> {
        if ttl_s <= 0 {
            return Err(EtcdError::InvalidTtl { ttl_s });
        }
        let request = LeaseGrantRequest { ttl: ttl_s, id: 0 };
        let target = Target {
            op: "lease grant",
            key: "",
        };
        let response = self
            .call(target, |channel| async move {
                LeaseClient::new(channel).lease_grant(request).await
            })
            .await?;
        if !response.error.is_empty() {
            return Err(self.refused(target, response.error));
        }
        self.inner.granted.lock().insert(response.id, response.ttl);
        Ok(response.id)
    }

    /// Revokes `lease`: every key attached to it is deleted.
    pub async fn lease_revoke(&self, lease: LeaseId) -> Result<(), EtcdError> {
        let request = LeaseRevokeRequest { id: lease };
        self.call(
            Target {
                op: "lease revoke",
                key: "",
            },
            |channel| async move { LeaseClient::new(channel).lease_revoke(request).await },
        )
        .await?;
        self.inner.granted.lock().remove(&lease);
        Ok(())
    }

    /// Keeps `lease` alive in the background until the keeper is dropped.
    pub fn keep_alive(&self, lease: LeaseId) -> LeaseKeeper {
        LeaseKeeper::start(self.clone(), lease)
    }

    /// Streams every change under `prefix` from `from_revision` on (0: from
    /// now). Resolves once etcd has set the watch up, so nothing after the
    /// call is missed.
    pub async fn watch_prefix(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, EtcdError> {
        WatchStream::open(self, prefix, from_revision).await
    }

    /// A range read with the whole response (header revision included).
    pub(crate) async fn range(&self, target: Target<'_>, request: RangeRequest) -> Result<RangeResponse, EtcdError> {
        self.call(target, |channel| {
            let request = request.clone();
            async move { KvClient::new(channel).range(request).await }
        })
        .await
    }

    /// Runs one transaction; true if its comparisons held.
    async fn commit(&self, target: Target<'_>, request: TxnRequest) -> Result<bool, EtcdError> {
        let response = self
            .call(target, |channel| {
                let request = request.clone();
                async move { KvClient::new(channel).txn(request).await }
            })
            .await?;
        Ok(response.succeeded)
    }

    /// One compare-then-put transaction; true if the comparisons held.
    async fn txn(
        &self,
        target: Target<'_>,
        compares: Vec<pb::etcdserverpb::Compare>,
        put: PutRequest,
    ) -> Result<bool, EtcdError> {
        let request = TxnRequest {
            compare: compares,
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(put)),
            }],
            failure: Vec::new(),
        };
        self.commit(target, request).await
    }

    /// Runs `rpc` on the active connection; on a transport error or timeout,
    /// on each other endpoint in turn (the active one last, reconnected).
    pub(crate) async fn call<T, F, Fut>(&self, target: Target<'_>, rpc: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let (first, channel) = self.inner.active.lock().clone();
        let mut failures = Vec::new();
        match self.attempt(first, channel, target, &rpc).await {
            Ok(value) => return Ok(value),
            Err(Failure::Refused(error)) => return Err(error),
            Err(Failure::Transport(reason)) => failures.push(reason),
        }
        let count = self.inner.endpoints.len();
        for step in 1..=count {
            let index = (first + step) % count;
            let (url, endpoint) = &self.inner.endpoints[index];
            let channel = match connect_one(endpoint, self.inner.timeout).await {
                Ok(channel) => channel,
                Err(reason) => {
                    failures.push(format!("{url}: {reason}"));
                    continue;
                }
            };
            *self.inner.active.lock() = (index, channel.clone());
            match self.attempt(index, channel, target, &rpc).await {
                Ok(value) => return Ok(value),
                Err(Failure::Refused(error)) => return Err(error),
                Err(Failure::Transport(reason)) => failures.push(reason),
            }
        }
        Err(EtcdError::Unreachable {
            op: target.op,
            key: target.key.to_string(),
            reasons: failures.join("; "),
        })
    }

    async fn attempt<T, F, Fut>(
        &self,
        index: usize,
        channel: Channel,
        target: Target<'_>,
        rpc: &F,
    ) -> Result<T, Failure>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let url = &self.inner.endpoints[index].0;
        match tokio::time::timeout(self.inner.timeout, rpc(channel)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) if is_transport(&status) => Err(Failure::Transport(format!("{url}: {}", status.message()))),
            Ok(Err(status)) => Err(Failure::Refused(EtcdError::Rpc {
                op: target.op,
                key: target.key.to_string(),
                endpoint: url.clone(),
                code: status.code(),
                message: status.message().to_string(),
            })),
            Err(_) => Err(Failure::Transport(format!(
                "{url}: no answer within {} ms",
                self.inner.timeout.as_millis()
            ))),
        }
    }

    /// An error etcd reported inside a successful response.
    fn refused(&self, target: Target<'_>, message: String) -> EtcdError {
        EtcdError::Rpc {
            op: target.op,
            key: target.key.to_string(),
            endpoint: self.active_endpoint(),
            code: tonic::Code::FailedPrecondition,
            message,
        }
    }

    /// The endpoint calls go to now.
    pub fn active_endpoint(&self) -> String {
        let index = self.inner.active.lock().0;
        self.inner.endpoints[index].0.clone()
    }

    /// The TTL etcd granted `lease`, if this client granted it.
    pub(crate) fn granted_ttl(&self, lease: LeaseId) -> Option<i64> {
        self.inner.granted.lock().get(&lease).copied()
    }

    /// Bound on each unary call.
    pub(crate) fn timeout(&self) -> Duration {
        self.inner.timeout
    }
}

/// Why one attempt failed: worth another endpoint, or final.
enum Failure {
    Transport(String),
    Refused(EtcdError),
}

/// Errors that say nothing about the request, only that this endpoint did not
/// take it: worth trying another. etcd itself answers `Unavailable` when its
/// member has no leader, which another member may not share.
fn is_transport(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown | tonic::Code::Cancelled => {
            let message = status.message();
            message.contains("transport") || message.contains("connection")
        }
        _ => false,
    }
}

/// Checks an endpoint URL: `http://host:port` (no TLS, no path).
fn parse_endpoint(url: &str, timeout: Duration) -> Result<Endpoint, EtcdError> {
    let invalid = |reason: &str| EtcdError::InvalidEndpoint {
        endpoint: url.to_string(),
        reason: reason.to_string(),
    };
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(|error| invalid(&error.to_string()))?;
    let uri = endpoint.uri();
    match uri.scheme_str() {
        Some("http") => {}
        Some(scheme) => {
            return Err(invalid(&format!(
                "scheme {scheme:?} is not supported, use http://host:port"
            )))
        }
        None => return Err(invalid("no scheme, use http://host:port")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("no host, use http://host:port"));
    }
    if uri.port_u16().is_none() {
        return Err(invalid("no port, use http://host:port (etcd's default is 2379)"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid("a path is not allowed, use http://host:port"));
    }
    // HTTP/2 pings only while a stream (a watch, a keep-alive) is open, and no
    // more often than etcd's default --grpc-keepalive-min-time (5 s) allows:
    // a dead peer ends those streams instead of leaving them silent.
    Ok(endpoint
        .connect_timeout(timeout)
        .http2_keep_alive_interval(timeout.max(Duration::from_secs(10)))
        .keep_alive_timeout(timeout)
        .keep_alive_while_idle(false))
}

async fn connect_one(endpoint: &Endpoint, timeout: Duration) -> Result<Channel, String> {
    match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(error)) => Err(error_chain(&error)),
        Err(_) => Err(format!("no connection within {} ms", timeout.as_millis())),
    }
}

/// An error and its sources on one line ("transport error: tcp connect error: Connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn put_request(key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value,
        lease: lease.unwrap_or(0),
        ..Default::default()
    }
}

fn compare_revision(key: &str, target: compare::CompareTarget, revision: i64) -> pb::etcdserverpb::Compare {
    let union = match target {
        compare::CompareTarget::Create => compare::TargetUnion::CreateRevision(revision),
        _ => compare::TargetUnion::ModRevision(revision),
    };
    pb::etcdserverpb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: target as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(union),
        ..Default::default()
    }
}

/// The end of the key range holding every key that starts with `prefix`:
/// the prefix with its last byte below 0xff incremented (etcd's own rule;
/// `\0` means "to the end of the key space").
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
