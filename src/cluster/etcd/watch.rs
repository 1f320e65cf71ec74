//! A watch of one key prefix: etcd's bidirectional Watch stream, set up and
//! confirmed before it is handed out, yielding each revision's events.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::pb::etcdserverpb::{watch_client::WatchClient, watch_request, WatchCreateRequest, WatchRequest};
use super::pb::mvccpb::event::EventType;
use super::{prefix_end, EtcdClient, EtcdError, KeyValue, Target};

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchKind {
    /// Written (created or changed).
    Put,
    /// Deleted (by a delete or by its lease expiring).
    Delete,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: WatchKind,
    /// The key as written; for a delete, its key and the deletion's revision.
    pub kv: KeyValue,
}

/// The changes under a prefix, as etcd streams them.
pub struct WatchStream {
    prefix: String,
    endpoint: String,
    /// Kept open: closing the request side could end the watch.
    _requests: mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<super::pb::etcdserverpb::WatchResponse>,
    /// Store revision of the last response (the watch's start, at first).
    revision: i64,
    ended: bool,
}

impl WatchStream {
    pub(super) async fn open(client: &EtcdClient, prefix: &str, from_revision: i64) -> Result<Self, EtcdError> {
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix),
                start_revision: from_revision,
                ..Default::default()
            })),
        };
        let target = Target {
            op: "watch",
            key: prefix,
        };
        let (requests, mut responses) = client
            .call(target, |channel| {
                let create = create.clone();
                async move {
                    let (requests, receiver) = mpsc::channel(1);
                    // Sent before the call: etcd answers (and so the call
                    // resolves) only once it has a request to answer.
                    requests.try_send(create).expect("empty channel");
                    let response = WatchClient::new(channel).watch(ReceiverStream::new(receiver)).await?;
                    Ok(response.map(|responses| (requests, responses)))
                }
            })
            .await?;
        let endpoint = client.active_endpoint();
        let ended = |reason: String| EtcdError::WatchEnded {
            prefix: prefix.to_string(),
            endpoint: endpoint.clone(),
            reason,
        };
        let first = tokio::time::timeout(client.timeout(), responses.message())
            .await
            .map_err(|_| ended(format!("not set up within {} ms", client.timeout().as_millis())))?
            .map_err(|status| ended(status.message().to_string()))?
            .ok_or_else(|| ended("closed before it was set up".to_string()))?;
        if first.canceled || !first.created {
            return Err(canceled(prefix, &first));
        }
        Ok(WatchStream {
            prefix: prefix.to_string(),
            endpoint,
            _requests: requests,
            responses,
            // Watching from now: everything up to the store's revision is
            // past. From an older revision: nothing after it is delivered yet.
            revision: if from_revision > 0 {
                from_revision - 1
            } else {
                first.header.map_or(0, |header| header.revision)
            },
            ended: false,
        })
    }

    /// The next batch of events (one etcd response: one or more revisions).
    /// An error ends the stream: the caller watches again from
    /// [`WatchStream::revision`]` + 1`. `None` after that.
    pub async fn next(&mut self) -> Option<Result<Vec<WatchEvent>, EtcdError>> {
        while !self.ended {
            let response = match self.responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return Some(Err(self.end("closed by etcd".to_string()))),
                Err(status) => return Some(Err(self.end(status.message().to_string()))),
            };
            if response.canceled {
                self.ended = true;
                return Some(Err(canceled(&self.prefix, &response)));
            }
            if response.events.is_empty() {
                // A progress notification: everything up to its revision is delivered.
                if let Some(header) = &response.header {
                    self.revision = self.revision.max(header.revision);
                }
                continue;
            }
            if let Some(last) = response.events.iter().filter_map(|event| event.kv.as_ref()).next_back() {
                self.revision = self.revision.max(last.mod_revision);
            }
            let events = response
                .events
                .into_iter()
                .map(|event| WatchEvent {
                    kind: if event.r#type == EventType::Delete as i32 {
                        WatchKind::Delete
                    } else {
                        WatchKind::Put
                    },
                    kv: event.kv.map(KeyValue::from).unwrap_or_else(|| KeyValue {
                        key: String::new(),
                        value: Vec::new(),
                        create_revision: 0,
                        mod_revision: 0,
                        lease: 0,
                    }),
                })
                .collect();
            return Some(Ok(events));
        }
        None
    }

    /// The store revision the stream has seen up to: every change at or below
    /// it under the prefix has been delivered.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    fn end(&mut self, reason: String) -> EtcdError {
        self.ended = true;
        EtcdError::WatchEnded {
            prefix: self.prefix.clone(),
            endpoint: self.endpoint.clone(),
            reason,
        }
    }
}

fn canceled(prefix: &str, response: &super::pb::etcdserverpb::WatchResponse) -> EtcdError {
    let reason = if response.compact_revision > 0 {
        format!(
            "revisions up to {} were compacted; watch again from a later one",
            response.compact_revision
        )
    } else if response.cancel_reason.is_empty() {
        "canceled without a reason".to_string()
    } else {
        response.cancel_reason.clone()
    };
    EtcdError::WatchCanceled {
        prefix: prefix.to_string(),
        reason,
    }
}
