//! Leader election under one key prefix, with the semantics of etcd's own
//! `concurrency` package: each campaigner writes `prefix/<lease hex>` under
//! its lease; the lowest create revision leads; the others wait in line.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::pb::etcdserverpb::{range_request, RangeRequest, RangeResponse};
use super::{prefix_end, EtcdClient, EtcdError, KeyValue, LeaseId, Target, WatchKind};

/// One election: who leads what the prefix names (e.g. a shard set).
#[derive(Clone, Debug)]
pub struct Election {
    client: EtcdClient,
    /// The prefix with a trailing `/`: campaign keys sit right under it.
    prefix: String,
}

/// A won campaign: the leader's key, held while `lease` lives.
#[derive(Debug)]
pub struct Leadership {
    /// The leader's key, `prefix/<lease hex>` (a guard for
    /// [`EtcdClient::put_if_lease_holds`]).
    pub key: String,
    /// The lease the key is attached to.
    pub lease: LeaseId,
    /// Create revision of the key: this leadership's place in line.
    pub revision: i64,
    client: EtcdClient,
}

/// Wait between attempts while etcd does not answer.
const RETRY: Duration = Duration::from_millis(250);

impl Election {
    /// The election under `prefix` (e.g. `/tailfold/c1/elections/0`).
    pub fn new(client: EtcdClient, prefix: &str) -> Self {
        Election {
            client,
            prefix: format!("{}/", prefix.trim_end_matches('/')),
        }
    }

    /// Joins the line with `value` (e.g. the instance id) under `lease`, and
    /// resolves once every key with a lower create revision is gone: this
    /// campaigner leads. Fails if the key disappears while waiting (the lease
    /// expired or was revoked), and if etcd stays unreachable for a whole
    /// lease TTL (the lease may be gone by then). Campaigning again with the
    /// same lease keeps the place in line and updates the value.
    pub async fn campaign(&self, lease: LeaseId, value: Vec<u8>) -> Result<Leadership, EtcdError> {
        let key = format!("{}{lease:x}", self.prefix);
        if !self.client.create(&key, value.clone(), Some(lease)).await? {
            let existing = self.client.get(&key).await?;
            if existing.is_some_and(|kv| kv.value != value) {
                self.client.put(&key, value, Some(lease)).await?;
            }
        }
        let revision = match self.client.get(&key).await? {
            Some(kv) => kv.create_revision,
            None => return Err(gone(lease, &key)),
        };
        let patience = Duration::from_secs(self.client.granted_ttl(lease).unwrap_or(0).max(0) as u64)
            .max(self.client.timeout() * 3);
        let mut unreachable_since: Option<Instant> = None;
        loop {
            match self.wait_in_line(&key, lease, revision).await {
                Ok(true) => {
                    return Ok(Leadership {
                        key,
                        lease,
                        revision,
                        client: self.client.clone(),
                    })
                }
                Ok(false) => unreachable_since = None,
                Err(error) if error.is_unreachable() => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= patience {
                        return Err(error);
                    }
                    tokio::time::sleep(RETRY).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One look at the line: true if `key` leads; false once the key ahead
    /// of it is deleted (look again). Errors if `key` itself is gone.
    async fn wait_in_line(&self, key: &str, lease: LeaseId, revision: i64) -> Result<bool, EtcdError> {
        match self.client.get(key).await? {
            Some(kv) if kv.create_revision == revision => {}
            _ => return Err(gone(lease, key)),
        }
        let ahead = self
            .range_first(range_request::SortOrder::Descend, revision - 1)
            .await?;
        let Some(ahead_kv) = ahead.kvs.into_iter().next() else {
            return Ok(true);
        };
        let from = ahead.header.map_or(0, |header| header.revision) + 1;
        // The whole prefix, not just the key ahead: our own key's deletion
        // (lease expiry) must end the wait too.
        let mut stream = self.client.watch_prefix(&self.prefix, from).await?;
        while let Some(events) = stream.next().await {
            for event in events? {
                if event.kind != WatchKind::Delete {
                    continue;
                }
                if event.kv.key.as_bytes() == ahead_kv.key.as_slice() {
                    return Ok(false);
                }
                if event.kv.key == key {
                    return Err(gone(lease, key));
                }
            }
        }
        Ok(false)
    }

    /// The leader's key and value, if anyone campaigns.
    pub async fn leader(&self) -> Result<Option<KeyValue>, EtcdError> {
        let response = self.range_first(range_request::SortOrder::Ascend, 0).await?;
        Ok(response.kvs.into_iter().next().map(KeyValue::from))
    }

    /// The leader's value, kept current by a watch in a background task that
    /// ends when every receiver is dropped. While etcd is unreachable it keeps
    /// the last value it saw.
    pub fn observe(&self) -> watch::Receiver<Option<String>> {
        let (sender, receiver) = watch::channel(None);
        let election = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = sender.closed() => {}
                _ = election.follow(&sender) => {}
            }
        });
        receiver
    }

    /// Keeps `sender` at the current leader's value, forever.
    async fn follow(&self, sender: &watch::Sender<Option<String>>) {
        let publish = |response: RangeResponse| {
            let value = response
                .kvs
                .first()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            sender.send_if_modified(|current| {
                let changed = *current != value;
                *current = value;
                changed
            });
            response.header.map_or(0, |header| header.revision)
        };
        loop {
            let revision = match self.range_first(range_request::SortOrder::Ascend, 0).await {
                Ok(response) => publish(response),
                Err(_) => {
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            let Ok(mut stream) = self.client.watch_prefix(&self.prefix, revision + 1).await else {
                tokio::time::sleep(RETRY).await;
                continue;
            };
            // Any change under the prefix may change who leads: look again.
            while let Some(Ok(_)) = stream.next().await {
                match self.range_first(range_request::SortOrder::Ascend, 0).await {
                    Ok(response) => {
                        publish(response);
                    }
                    Err(_) => break,
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// The first key under the prefix by create revision, in `order`, among
    /// keys created at or below `max_create_revision` (0: any).
    async fn range_first(
        &self,
        order: range_request::SortOrder,
        max_create_revision: i64,
    ) -> Result<RangeResponse, EtcdError> {
        let request = RangeRequest {
            key: self.prefix.as_bytes().to_vec(),
            range_end: prefix_end(&self.prefix),
            limit: 1,
            sort_order: order as i32,
            sort_target: range_request::SortTarget::Create as i32,
            max_create_revision,
            ..Default::default()
        };
        let target = Target {
            op: "election range",
            key: &self.prefix,
        };
        self.client.range(target, request).await
    }
}

impl Leadership {
    /// Steps down: deletes the leader key, so the next in line leads.
    pub async fn resign(self) -> Result<(), EtcdError> {
        self.client.delete(&self.key).await?;
        Ok(())
    }
}

fn gone(lease: LeaseId, key: &str) -> EtcdError {
    EtcdError::LeaseGone {
        lease,
        what: format!("campaign key {key:?} was deleted"),
    }
}
