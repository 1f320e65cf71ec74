//! Keeping a lease alive: a background task renewing it at a third of its
//! TTL, and a flag that turns false for good once the lease is known gone or
//! could not be renewed for a whole TTL (so its keys may be gone too).

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::pb::etcdserverpb::{lease_client::LeaseClient, LeaseKeepAliveRequest};
use super::{EtcdClient, EtcdError, LeaseId, Target};

/// Renews a lease until dropped. See [`LeaseKeeper::alive`].
pub struct LeaseKeeper {
    lease: LeaseId,
    alive: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    pub(super) fn start(client: EtcdClient, lease: LeaseId) -> Self {
        let (sender, alive) = watch::channel(true);
        let task = tokio::spawn(keep(client, lease, sender));
        LeaseKeeper { lease, alive, task }
    }

    /// The lease kept.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }

    /// True while the lease is believed held. Turns false, and stays false,
    /// once a renewal finds the lease gone or no renewal succeeded for a whole
    /// TTL (counted from the last success, by this process's clock); renewing
    /// stops then. Until the first renewal succeeds the TTL is the one this
    /// client granted, if it granted the lease.
    pub fn alive(&self) -> watch::Receiver<bool> {
        self.alive.clone()
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Shortest wait between failed renewals: etcd outages are not hammered.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest wait between failed renewals.
const RETRY_MAX: Duration = Duration::from_millis(500);

async fn keep(client: EtcdClient, lease: LeaseId, alive: watch::Sender<bool>) {
    let mut ttl = client.granted_ttl(lease).map(ttl_duration);
    let mut last_renewed = Instant::now();
    loop {
        let deadline = ttl.map(|ttl| last_renewed + ttl);
        let bound = match deadline {
            Some(deadline) => client.timeout().min(deadline.saturating_duration_since(Instant::now())),
            None => client.timeout(),
        };
        let outcome = tokio::time::timeout(bound, renew(&client, lease)).await;
        match outcome {
            Ok(Ok(granted_s)) if granted_s <= 0 => {
                tracing::warn!(lease = format!("{lease:x}"), "etcd lease is gone (expired or revoked)");
                alive.send_replace(false);
                return;
            }
            Ok(Ok(granted_s)) => {
                let granted = ttl_duration(granted_s);
                ttl = Some(granted);
                last_renewed = Instant::now();
                tokio::time::sleep(granted / 3).await;
                continue;
            }
            Ok(Err(error)) => {
                tracing::debug!(lease = format!("{lease:x}"), %error, "etcd lease renewal failed");
            }
            Err(_) => {}
        }
        if let Some(ttl) = ttl {
            if last_renewed.elapsed() >= ttl {
                tracing::warn!(
                    lease = format!("{lease:x}"),
                    ttl_ms = ttl.as_millis() as u64,
                    "etcd lease not renewed for a whole ttl: treated as lost"
                );
                alive.send_replace(false);
                return;
            }
        }
        let retry = ttl.map_or(RETRY_MAX, |ttl| (ttl / 10).clamp(RETRY_MIN, RETRY_MAX));
        tokio::time::sleep(retry).await;
    }
}

fn ttl_duration(ttl_s: i64) -> Duration {
    Duration::from_secs(ttl_s.max(0) as u64)
}

/// One renewal on a fresh keep-alive stream (one HTTP/2 stream per renewal,
/// every TTL/3: cheap, and each renewal fails over like any call). Returns
/// the TTL etcd granted again, 0 or less when the lease is gone.
async fn renew(client: &EtcdClient, lease: LeaseId) -> Result<i64, EtcdError> {
    let target = Target {
        op: "lease keep-alive",
        key: "",
    };
    let mut responses = client
        .call(target, |channel| async move {
            let (requests, receiver) = mpsc::channel(1);
            requests
                .try_send(LeaseKeepAliveRequest { id: lease })
                .expect("empty channel");
            // The request side closes after this one message: etcd answers it first.
            drop(requests);
            LeaseClient::new(channel)
                .lease_keep_alive(ReceiverStream::new(receiver))
                .await
        })
        .await?;
    match responses.message().await {
        Ok(Some(response)) => Ok(response.ttl),
        Ok(None) => Err(EtcdError::Rpc {
            op: target.op,
            key: String::new(),
            endpoint: client.active_endpoint(),
            code: tonic::Code::Unavailable,
            message: "stream closed without an answer".to_string(),
        }),
        Err(status) => Err(EtcdError::Rpc {
            op: target.op,
            key: String::new(),
            endpoint: client.active_endpoint(),
            code: status.code(),
            message: status.message().to_string(),
        }),
    }
}
