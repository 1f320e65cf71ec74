//! One rule set for the whole cluster, kept in etcd as M3 keeps its rules:
//! the YAML text, its hash, the event time it takes effect from (chosen once,
//! by whoever publishes) and the set it replaces, still in force before then.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::config::{ClusterSettings, RulesSource};
use crate::engine::next_common_boundary;
use crate::reload::RulesReloader;
use crate::rules::{RuleSet, RulesError};

use super::etcd::{EtcdClient, EtcdError, WatchKind};
use super::placement::keys;

/// A rule set as etcd keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedRules {
    /// Counts publishes, from 1.
    pub version: u64,
    /// Content hash of `source` (xxh3-64, hex).
    pub hash: String,
    /// The rules file text.
    pub source: String,
    /// First event time (a window boundary common to both sets) the set
    /// applies to; `None` for the first set, which applies from the start.
    pub effective_from_ms: Option<i64>,
    /// When it was published (ms since the epoch).
    pub published_ms: i64,
    /// Who published it (an instance id).
    pub published_by: String,
    /// The set it replaces, which still applies to events before `effective_from_ms`.
    pub previous: Option<PreviousRules>,
}

/// The set a publish replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousRules {
    /// Its version.
    pub version: u64,
    /// Its hash.
    pub hash: String,
    /// Its text.
    pub source: String,
}

/// The rules key as read, with the revision a publish compares against.
#[derive(Clone, Debug)]
pub struct StoredRules {
    /// The value.
    pub rules: PublishedRules,
    /// etcd's mod revision of the key.
    pub mod_revision: i64,
}

/// Why the cluster's rules cannot be read or published.
#[derive(Debug, thiserror::Error)]
pub enum ClusterRulesError {
    /// etcd cannot be reached or refused the call.
    #[error("cluster rules: {0}")]
    Etcd(#[from] EtcdError),
    /// The key holds something this version cannot read.
    #[error("cluster {cluster}: rules key {key} is unreadable: {problem}")]
    Unreadable {
        /// Cluster id.
        cluster: String,
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// A set etcd holds does not compile here.
    #[error("cluster {cluster}: rules version {version} in etcd do not compile here: {error}")]
    Invalid {
        /// Cluster id.
        cluster: String,
        /// Its version.
        version: u64,
        /// The compile error.
        error: Box<RulesError>,
    },
    /// Another publish changed the key since it was read.
    #[error("cluster {cluster}: another publish won; etcd now holds rules version {version} (hash {hash}) from {by}: nothing was published, reload again to publish over it")]
    Conflict {
        /// Cluster id.
        cluster: String,
        /// The version now in etcd.
        version: u64,
        /// Its hash.
        hash: String,
        /// Its publisher.
        by: String,
    },
    /// The last published set has not taken effect yet.
    #[error("cluster {cluster}: rules version {version} take effect at {effective_from_ms} ms, still ahead: publish again after that")]
    Pending {
        /// Cluster id.
        cluster: String,
        /// The pending version.
        version: u64,
        /// When it takes effect.
        effective_from_ms: i64,
    },
}

/// Content hash of a rules text, as every instance computes and shows it.
pub fn hash_text(text: &str) -> String {
    format!("{:016x}", xxh3_64(text.as_bytes()))
}

/// Reads the cluster's rules; `None` when nothing was published yet.
pub async fn read(client: &EtcdClient, cluster: &str) -> Result<Option<StoredRules>, ClusterRulesError> {
    let key = keys::rules(cluster);
    let Some(kv) = client.get(&key).await? else {
        return Ok(None);
    };
    let rules = decode(cluster, &key, &kv.value)?;
    Ok(Some(StoredRules {
        rules,
        mod_revision: kv.mod_revision,
    }))
}

fn decode(cluster: &str, key: &str, value: &[u8]) -> Result<PublishedRules, ClusterRulesError> {
    let rules: PublishedRules = serde_json::from_slice(value).map_err(|error| ClusterRulesError::Unreadable {
        cluster: cluster.to_string(),
        key: key.to_string(),
        problem: error.to_string(),
    })?;
    if hash_text(&rules.source) != rules.hash {
        return Err(ClusterRulesError::Unreadable {
            cluster: cluster.to_string(),
            key: key.to_string(),
            problem: format!("hash {} does not match its text", rules.hash),
        });
    }
    Ok(rules)
}

/// Compiles a published set's text.
pub fn compile(cluster: &str, version: u64, source: &str) -> Result<RuleSet, ClusterRulesError> {
    RuleSet::parse(source, &format!("etcd rules version {version}")).map_err(|error| ClusterRulesError::Invalid {
        cluster: cluster.to_string(),
        version,
        error: Box::new(error),
    })
}

/// What a publish writes.
pub struct Publish<'a> {
    /// Cluster id.
    pub cluster: &'a str,
    /// Publisher (instance id).
    pub by: &'a str,
    /// The new text, already compiled into `rules`.
    pub source: &'a str,
    /// The compiled text.
    pub rules: &'a RuleSet,
    /// Clock time now.
    pub now_ms: i64,
    /// Least time from now to the effective boundary.
    pub margin_ms: u64,
}

/// Publishes a new set over `current` (`None`: the first set) with a
/// compare-and-swap on the key's revision; a concurrent publish makes it fail
/// with [`ClusterRulesError::Conflict`]. The effective time is chosen here,
/// once for every instance: the first boundary common to the policies of
/// both sets at least `margin_ms` ahead.
pub async fn publish(
    client: &EtcdClient,
    publish: Publish<'_>,
    current: Option<&StoredRules>,
) -> Result<PublishedRules, ClusterRulesError> {
    let cluster = publish.cluster;
    let (version, effective_from_ms, previous, expected) = match current {
        None => (1, None, None, 0),
        Some(stored) => {
            let now = &stored.rules;
            if let Some(from) = now.effective_from_ms.filter(|from| *from > publish.now_ms) {
                return Err(ClusterRulesError::Pending {
                    cluster: cluster.to_string(),
                    version: now.version,
                    effective_from_ms: from,
                });
            }
            let mut policies = compile(cluster, now.version, &now.source)?.storage_policies();
            policies.extend(publish.rules.storage_policies());
            let from = next_common_boundary(&policies, publish.now_ms + publish.margin_ms as i64 - 1);
            let previous = PreviousRules {
                version: now.version,
                hash: now.hash.clone(),
                source: now.source.clone(),
            };
            (now.version + 1, Some(from), Some(previous), stored.mod_revision)
        }
    };
    let rules = PublishedRules {
        version,
        hash: hash_text(publish.source),
        source: publish.source.to_string(),
        effective_from_ms,
        published_ms: publish.now_ms,
        published_by: publish.by.to_string(),
        previous,
    };
    let value = serde_json::to_vec(&rules).expect("published rules serialise");
    if client.compare_and_put(&keys::rules(cluster), expected, value).await? {
        return Ok(rules);
    }
    let now = read(client, cluster).await?;
    let (version, hash, by) = now.map_or((0, String::new(), String::new()), |stored| {
        (stored.rules.version, stored.rules.hash, stored.rules.published_by)
    });
    Err(ClusterRulesError::Conflict {
        cluster: cluster.to_string(),
        version,
        hash,
        by,
    })
}

/// The rule sets an instance starts with, oldest first: each with the event
/// time it applies from (`None`: from the start), its text and hash.
pub struct StartRules {
    /// The sets.
    pub sets: Vec<(Option<i64>, RuleSet, String)>,
    /// The cluster's rules as read.
    pub stored: Option<StoredRules>,
    /// Why this instance does not fold the cluster's rules, if it does not.
    pub differs: Option<String>,
}

/// Reads the cluster's rules at start (publishing the local file when the
/// cluster has none yet) and picks what this instance folds with.
pub async fn at_start(
    client: &EtcdClient,
    settings: &ClusterSettings,
    file: &Path,
    file_rules: RuleSet,
    now_ms: i64,
) -> Result<StartRules, ClusterRulesError> {
    let cluster = settings.cluster.as_str();
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let file_hash = hash_text(&text);
    let mut stored = read(client, cluster).await?;
    if stored.is_none() {
        let first = Publish {
            cluster,
            by: &settings.instance,
            source: &text,
            rules: &file_rules,
            now_ms,
            margin_ms: settings.rules_margin_ms,
        };
        match publish(client, first, None).await {
            Ok(rules) => {
                tracing::info!(cluster, hash = %rules.hash, file = %file.display(), "published the rules file as the cluster's first rules (version 1)");
                stored = read(client, cluster).await?;
            }
            Err(ClusterRulesError::Conflict { .. }) => stored = read(client, cluster).await?,
            Err(error) => return Err(error),
        }
    }
    let Some(current) = stored else {
        return Err(ClusterRulesError::Unreadable {
            cluster: cluster.to_string(),
            key: keys::rules(cluster),
            problem: "deleted right after it was published".into(),
        });
    };
    let published = &current.rules;
    let own = |differs: String| StartRules {
        sets: vec![(None, file_rules.clone(), text.clone())],
        stored: Some(current.clone()),
        differs: Some(differs),
    };
    if settings.rules_source == RulesSource::File && published.hash != file_hash {
        return Ok(own(format!(
            "the rules file {} (hash {file_hash}) differs from the cluster's rules version {} (hash {}) and cluster.rules_source is file",
            file.display(),
            published.version,
            published.hash
        )));
    }
    let sets = match published_sets(cluster, published) {
        Ok(sets) => sets,
        Err(error) => return Ok(own(format!("{error}; folding the rules file instead"))),
    };
    if published.hash != file_hash {
        tracing::warn!(cluster, file = %file.display(), file_hash, version = published.version, hash = %published.hash, "the rules file differs from the cluster's: following the cluster's rules in etcd");
    }
    Ok(StartRules {
        sets,
        stored: Some(current),
        differs: None,
    })
}

/// The sets a published value stands for: its previous (while it may still
/// be in force) and itself from its effective time.
fn published_sets(
    cluster: &str,
    published: &PublishedRules,
) -> Result<Vec<(Option<i64>, RuleSet, String)>, ClusterRulesError> {
    let current = compile(cluster, published.version, &published.source)?;
    match (&published.previous, published.effective_from_ms) {
        (Some(previous), Some(from)) => Ok(vec![
            (
                None,
                compile(cluster, previous.version, &previous.source)?,
                previous.source.clone(),
            ),
            (Some(from), current, published.source.clone()),
        ]),
        _ => Ok(vec![(None, current, published.source.clone())]),
    }
}

/// Keeps `reloader` on the cluster's rules: reads the key, then watches it,
/// handing every new version over; reads again after a broken watch.
pub async fn follow(client: EtcdClient, cluster: String, reloader: Arc<RulesReloader>) {
    let key = keys::rules(&cluster);
    loop {
        let revision = match client.get(&key).await {
            Ok(Some(kv)) => {
                match decode(&cluster, &key, &kv.value) {
                    Ok(rules) => reloader.apply_cluster(&rules),
                    Err(error) => reloader.cluster_unreadable(&error.to_string()),
                }
                kv.mod_revision
            }
            Ok(None) => 0,
            Err(error) => {
                tracing::warn!(%error, "cannot read the cluster's rules; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut stream = match client.watch_prefix(&keys::rules_prefix(&cluster), revision + 1).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "cannot watch the cluster's rules; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(events) = stream.next().await {
            let Ok(events) = events else { break };
            for event in events.into_iter().filter(|event| event.kind == WatchKind::Put) {
                match decode(&cluster, &key, &event.kv.value) {
                    Ok(rules) => reloader.apply_cluster(&rules),
                    Err(error) => reloader.cluster_unreadable(&error.to_string()),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
