//! Rules hot reload: the rules file is re-read when it changes (polled by
//! modification time, size and content hash), on SIGHUP and on
//! `POST /-/reload`. A valid file is staged in the engine to take over at the
//! next window boundary common to its policies; an invalid one is refused,
//! logged with its file, rule and field, and counted, and the old rules stay.
//! In a cluster a valid file is published to etcd instead, and every
//! instance (this one too) stages what etcd holds at the time chosen there.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use xxhash_rust::xxh3::xxh3_64;

use crate::clock::Clock;
use crate::cluster::etcd::EtcdClient;
use crate::cluster::rules::{self as cluster_rules, ClusterRulesError, PublishedRules, StartRules};
use crate::config::{ClusterSettings, RulesSource};
use crate::engine::Engine;
use crate::rules::{RuleSet, RulesError};
use crate::telemetry::Telemetry;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read or does not compile (nothing was published).
    #[error("{0}")]
    Rules(#[from] RulesError),
    /// The cluster's rules in etcd cannot be read or were not replaced.
    #[error("{0}")]
    Cluster(#[from] ClusterRulesError),
}

/// A cluster instance's link to its cluster's rules in etcd.
pub struct ClusterLink {
    /// etcd.
    pub client: EtcdClient,
    /// The instance's cluster settings.
    pub settings: ClusterSettings,
}

/// Where a cluster instance stands with the cluster's rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Agreement {
    /// Hash of the newest rules this instance folds (in force or staged).
    pub hash: String,
    /// Version of the cluster's rules seen last (0: none).
    pub cluster_version: u64,
    /// Their hash.
    pub cluster_hash: Option<String>,
    /// When they take effect (`null`: from the start).
    pub effective_from_ms: Option<i64>,
    /// Why this instance does not fold them (`null` when it does).
    pub differs: Option<String>,
}

/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The file's content is what is already loaded.
    Unchanged,
    /// A new rule set was validated; it applies to events from `effective_from_ms` on.
    Staged {
        /// First event time (a window boundary) under the new rules.
        effective_from_ms: i64,
    },
    /// In a cluster: published to etcd; every instance switches at `effective_from_ms`.
    Published {
        /// The cluster's rules version now.
        version: u64,
        /// Its content hash.
        hash: String,
        /// First event time (a window boundary common to both sets) under the new rules.
        effective_from_ms: i64,
    },
}

/// One rule set the engine keeps, for `GET /-/rules`.
#[derive(Clone, Debug, Serialize)]
pub struct LoadedRules {
    /// First event time the set applies to (`null` for the set loaded at start).
    pub effective_from_ms: Option<i64>,
    /// Clock time it was loaded.
    pub loaded_at_ms: i64,
    /// Whether it applies to events at the current clock time.
    pub in_force: bool,
    /// Number of rules (mapping, drop and rollup).
    pub rule_count: usize,
    /// Content hash of the file text (xxh3, hex).
    pub content_hash: String,
    /// The file text it was compiled from.
    pub source: String,
}

/// What `GET /-/rules` shows.
#[derive(Clone, Debug, Serialize)]
pub struct RulesStatus {
    /// The rules file.
    pub file: String,
    /// Rule sets kept, oldest first: the one in force and any waiting for its boundary.
    pub rule_sets: Vec<LoadedRules>,
    /// The error of the last refused reload, if the last attempt was refused.
    pub last_error: Option<String>,
    /// In a cluster: the cluster's rules and whether this instance folds them.
    pub cluster: Option<Agreement>,
}

#[derive(Clone)]
struct Loaded {
    from_ms: i64,
    loaded_at_ms: i64,
    hash: u64,
    source: String,
}

struct State {
    /// Modification time and size of the file last read, to skip reading unchanged files.
    stamp: Option<(SystemTime, u64)>,
    /// A changed stamp seen at the last look: read once it holds for a whole
    /// interval, so a file still being written is not read half-way.
    settling: Option<(SystemTime, u64)>,
    loaded: Vec<Loaded>,
    last_error: Option<String>,
}

/// Reloads the rules file into the engine.
pub struct RulesReloader {
    path: PathBuf,
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    telemetry: Arc<Telemetry>,
    state: Mutex<State>,
    cluster: Option<ClusterLink>,
    agreement: watch::Sender<Agreement>,
}

impl RulesReloader {
    /// A reloader of `path`, whose current text (if readable) is what the
    /// engine was started with.
    pub fn new(path: &Path, engine: Arc<Engine>, clock: Arc<dyn Clock>, telemetry: Arc<Telemetry>) -> Self {
        let source = std::fs::read_to_string(path).ok();
        let hash = source.as_deref().map(|text| xxh3_64(text.as_bytes()));
        let loaded = Loaded {
            from_ms: i64::MIN,
            loaded_at_ms: clock.now_ms(),
            hash: hash.unwrap_or(0),
            source: source.unwrap_or_default(),
        };
        RulesReloader {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                stamp: stamp(path),
                settling: None,
                loaded: vec![loaded],
                last_error: None,
            }),
            engine,
            clock,
            telemetry,
            cluster: None,
            agreement: watch::Sender::new(Agreement::default()),
        }
    }

    /// A cluster instance's reloader of `path`: the engine was started with
    /// `start`'s sets; reloads publish to etcd through `link`.
    pub fn clustered(
        path: &Path,
        engine: Arc<Engine>,
        clock: Arc<dyn Clock>,
        telemetry: Arc<Telemetry>,
        link: ClusterLink,
        start: &StartRules,
    ) -> Self {
        let mut reloader = RulesReloader::new(path, engine, clock, telemetry);
        let loaded_at_ms = reloader.clock.now_ms();
        reloader.state.get_mut().loaded = start
            .sets
            .iter()
            .map(|(from, _, source)| Loaded {
                from_ms: from.unwrap_or(i64::MIN),
                loaded_at_ms,
                hash: xxh3_64(source.as_bytes()),
                source: source.clone(),
            })
            .collect();
        reloader.cluster = Some(link);
        let published = start.stored.as_ref().map(|stored| &stored.rules);
        reloader.set_agreement(Agreement {
            hash: String::new(),
            cluster_version: published.map_or(0, |rules| rules.version),
            cluster_hash: published.map(|rules| rules.hash.clone()),
            effective_from_ms: published.and_then(|rules| rules.effective_from_ms),
            differs: start.differs.clone(),
        });
        reloader
    }

    /// Reloads when the file's modification time or size changed since it
    /// was last read and has stayed the same since the previous look.
    pub fn poll(&self) -> Option<Result<ReloadOutcome, ReloadError>> {
        let now = stamp(&self.path);
        {
            let mut state = self.state.lock();
            if now == state.stamp || now.is_none() {
                state.settling = None;
                return None;
            }
            if now != state.settling {
                state.settling = now;
                return None;
            }
            state.stamp = now;
            state.settling = None;
        }
        Some(self.reload("file change"))
    }

    /// Reads, validates and stages the rules file (`trigger` names the cause in logs).
    /// In a cluster the file is published to etcd (compare-and-swap on the
    /// version read) and staged from there.
    pub fn reload(&self, trigger: &str) -> Result<ReloadOutcome, ReloadError> {
        let Some(link) = &self.cluster else {
            return self.reload_local(trigger).map_err(ReloadError::from);
        };
        let file = self.path.display().to_string();
        let result = self.publish(link, &file);
        match &result {
            Ok(outcome) => {
                self.state.lock().last_error = None;
                self.telemetry.rules_in_sync();
                if !matches!(outcome, ReloadOutcome::Unchanged) {
                    self.telemetry.rules_reloaded(true);
                }
                tracing::info!(%file, trigger, ?outcome, "rules reload in the cluster");
            }
            Err(error) => {
                self.state.lock().last_error = Some(error.to_string());
                self.telemetry.rules_reloaded(false);
                let (rule, field) = match error {
                    ReloadError::Rules(error) => (error.location().map(ToString::to_string), error.field()),
                    ReloadError::Cluster(_) => (None, None),
                };
                tracing::error!(%file, trigger, rule, field, %error, "rules reload refused; nothing was published, the cluster's rules stay");
            }
        }
        result
    }

    /// Validates the file and publishes it over the cluster's rules.
    fn publish(&self, link: &ClusterLink, file: &str) -> Result<ReloadOutcome, ReloadError> {
        let text = std::fs::read_to_string(&self.path).map_err(|io| RulesError::Read {
            file: file.to_string(),
            io,
        })?;
        let rules = RuleSet::parse(&text, file)?;
        let cluster = link.settings.cluster.as_str();
        let runtime = tokio::runtime::Handle::current();
        let stored = runtime.block_on(cluster_rules::read(&link.client, cluster))?;
        let Some(stored) = stored else {
            return Err(ClusterRulesError::Unreadable {
                cluster: cluster.to_string(),
                key: crate::cluster::placement::keys::rules(cluster),
                problem: "no rules published (key deleted?): restart an instance to publish its file".into(),
            }
            .into());
        };
        if stored.rules.hash == cluster_rules::hash_text(&text) {
            self.apply_cluster(&stored.rules);
            return Ok(ReloadOutcome::Unchanged);
        }
        let publish = cluster_rules::Publish {
            cluster,
            by: &link.settings.instance,
            source: &text,
            rules: &rules,
            now_ms: self.clock.now_ms(),
            margin_ms: link.settings.rules_margin_ms,
        };
        let published = runtime.block_on(cluster_rules::publish(&link.client, publish, Some(&stored)))?;
        self.apply_cluster(&published);
        Ok(ReloadOutcome::Published {
            version: published.version,
            hash: published.hash.clone(),
            effective_from_ms: published.effective_from_ms.unwrap_or(i64::MIN),
        })
    }

    /// Stages the cluster's rules `published` (what etcd holds now) unless
    /// they are the newest here already; notes whether this instance folds
    /// them. The time they apply from was chosen by their publisher.
    pub fn apply_cluster(&self, published: &PublishedRules) {
        let Some(link) = &self.cluster else { return };
        let mut state = self.state.lock();
        let newest = state.loaded.last().map(|loaded| format!("{:016x}", loaded.hash));
        let file_hash = || {
            std::fs::read_to_string(&self.path)
                .map(|text| cluster_rules::hash_text(&text))
                .unwrap_or_default()
        };
        let differs = if newest.as_deref() == Some(published.hash.as_str()) {
            None
        } else if link.settings.rules_source == RulesSource::File && file_hash() != published.hash {
            Some(format!(
                "the rules file {} (hash {}) differs from the cluster's rules version {} (hash {}) and cluster.rules_source is file",
                self.path.display(),
                file_hash(),
                published.version,
                published.hash
            ))
        } else {
            self.stage_published(&mut state, &link.settings.cluster, published)
                .err()
        };
        drop(state);
        self.set_agreement(Agreement {
            hash: String::new(),
            cluster_version: published.version,
            cluster_hash: Some(published.hash.clone()),
            effective_from_ms: published.effective_from_ms,
            differs,
        });
    }

    fn stage_published(&self, state: &mut State, cluster: &str, published: &PublishedRules) -> Result<(), String> {
        let rules =
            cluster_rules::compile(cluster, published.version, &published.source).map_err(|error| error.to_string())?;
        let rule_count = rules.rule_count();
        let now_ms = self.clock.now_ms();
        let loaded = Loaded {
            from_ms: published.effective_from_ms.unwrap_or(i64::MIN),
            loaded_at_ms: now_ms,
            hash: xxh3_64(published.source.as_bytes()),
            source: published.source.clone(),
        };
        match published.effective_from_ms {
            Some(from_ms) => {
                self.engine
                    .stage_rules_at(rules, from_ms)
                    .map_err(|error| format!("cluster rules version {}: {error}", published.version))?;
                if from_ms < now_ms {
                    tracing::error!(version = published.version, effective_from_ms = from_ms, late_ms = now_ms - from_ms, "the cluster's rules reached this instance after their effective time: windows since then hold samples folded here by the old rules");
                    self.telemetry
                        .exporter()
                        .count("tailfold_cluster_rules_late_total", &[], 1);
                }
            }
            None => {
                // Rules for every event time (the cluster's first set), met by
                // an instance that folded other rules: it took nothing while it
                // differed (no forwards, no leading), so it switches at once.
                tracing::warn!(
                    version = published.version,
                    "the cluster's rules apply from the start: switching every window at once"
                );
                self.engine.replace_rules(rules);
                state.loaded.clear();
            }
        }
        state.loaded.push(loaded);
        self.telemetry.rules_reloaded(true);
        tracing::info!(version = published.version, hash = %published.hash, rules = rule_count, effective_from_ms = published.effective_from_ms, by = %published.published_by, "the cluster's rules are staged; they apply from their boundary on every instance");
        Ok(())
    }

    /// The cluster's rules key cannot be read: this instance may not fold the cluster's rules.
    pub fn cluster_unreadable(&self, problem: &str) {
        let mut agreement = self.agreement.borrow().clone();
        agreement.differs = Some(format!("cannot read the cluster's rules: {problem}"));
        self.set_agreement(agreement);
    }

    fn set_agreement(&self, mut agreement: Agreement) {
        agreement.hash = self.newest_hash();
        let before = self.agreement.borrow().differs.clone();
        match (&before, &agreement.differs) {
            (_, Some(reason)) if before.as_ref() != Some(reason) => {
                tracing::error!(reason = %reason, version = agreement.cluster_version, "RULES DIFFER FROM THE CLUSTER'S: this instance neither leads nor forwards until it folds the cluster's rules");
            }
            (Some(_), None) => tracing::info!(
                version = agreement.cluster_version,
                "this instance folds the cluster's rules again"
            ),
            _ => {}
        }
        let exporter = self.telemetry.exporter();
        exporter.set(
            "tailfold_cluster_rules_agree",
            &[],
            if agreement.differs.is_none() { 1.0 } else { 0.0 },
        );
        exporter.set("tailfold_cluster_rules_version", &[], agreement.cluster_version as f64);
        // Only a real change wakes the campaign (it re-registers on each).
        self.agreement.send_if_modified(|current| {
            let changed = *current != agreement;
            *current = agreement;
            changed
        });
    }

    /// Where this instance stands with the cluster's rules (always agreeing on a single node).
    pub fn agreement(&self) -> Agreement {
        self.agreement.borrow().clone()
    }

    /// Why this instance does not fold the cluster's rules, if it does not.
    pub fn differs(&self) -> Option<String> {
        self.agreement.borrow().differs.clone()
    }

    /// Version of the cluster's rules seen last (0 on a single node).
    pub fn cluster_version(&self) -> u64 {
        self.agreement.borrow().cluster_version
    }

    /// Changes of [`RulesReloader::agreement`].
    pub fn subscribe(&self) -> watch::Receiver<Agreement> {
        self.agreement.subscribe()
    }

    /// Whether `hash` (hex) is one of the rule sets this instance still
    /// folds some window with: a forward made under it folds here under the
    /// set each window's time selects, the same on every instance.
    pub fn knows_hash(&self, hash: &str) -> bool {
        let kept: Vec<i64> = self.engine.rule_sets().iter().map(|(from, _)| *from).collect();
        let state = self.state.lock();
        let newest = state.loaded.len().saturating_sub(1);
        state
            .loaded
            .iter()
            .enumerate()
            .filter(|(index, loaded)| *index == newest || kept.contains(&loaded.from_ms))
            .any(|(_, loaded)| format!("{:016x}", loaded.hash) == hash)
    }

    fn reload_local(&self, trigger: &str) -> Result<ReloadOutcome, RulesError> {
        let file = self.path.display().to_string();
        let text = std::fs::read_to_string(&self.path).map_err(|io| RulesError::Read { file: file.clone(), io });
        let mut state = self.state.lock();
        let result = text.and_then(|text| {
            let hash = xxh3_64(text.as_bytes());
            if state.loaded.last().is_some_and(|loaded| loaded.hash == hash) {
                return Ok(None);
            }
            let rules = RuleSet::parse(&text, &file)?;
            Ok(Some((rules, text, hash)))
        });
        match result {
            Ok(None) => {
                // The file holds the rules in force again (e.g. a bad edit was undone).
                state.last_error = None;
                self.telemetry.rules_in_sync();
                Ok(ReloadOutcome::Unchanged)
            }
            Ok(Some((rules, source, hash))) => {
                let now_ms = self.clock.now_ms();
                let rule_count = rules.rule_count();
                let from_ms = self.engine.stage_rules(rules, now_ms);
                state.loaded.push(Loaded {
                    from_ms,
                    loaded_at_ms: now_ms,
                    hash,
                    source,
                });
                state.last_error = None;
                self.telemetry.rules_reloaded(true);
                tracing::info!(%file, trigger, rules = rule_count, effective_from_ms = from_ms, "rules reloaded; they apply from the next window boundary");
                Ok(ReloadOutcome::Staged {
                    effective_from_ms: from_ms,
                })
            }
            Err(error) => {
                state.last_error = Some(error.to_string());
                self.telemetry.rules_reloaded(false);
                let rule = error.location().map(ToString::to_string);
                tracing::error!(%file, trigger, rule, field = error.field(), %error, "rules reload refused; the previous rules stay in force");
                Err(error)
            }
        }
    }

    /// The rule sets kept and the last error.
    pub fn status(&self) -> RulesStatus {
        let now_ms = self.clock.now_ms();
        let kept: Vec<i64> = self.engine.rule_sets().iter().map(|(from, _)| *from).collect();
        let in_force_from = kept.iter().copied().filter(|from| *from <= now_ms).max();
        let mut state = self.state.lock();
        // Forget sets the engine has retired (or replaced), keeping the newest.
        let newest = state.loaded.len() - 1;
        let mut index = 0;
        state.loaded.retain(|loaded| {
            index += 1;
            index - 1 == newest || kept.contains(&loaded.from_ms)
        });
        let counts = self.engine.rule_sets();
        RulesStatus {
            file: self.path.display().to_string(),
            rule_sets: state
                .loaded
                .iter()
                .map(|loaded| LoadedRules {
                    effective_from_ms: (loaded.from_ms != i64::MIN).then_some(loaded.from_ms),
                    loaded_at_ms: loaded.loaded_at_ms,
                    in_force: Some(loaded.from_ms) == in_force_from,
                    rule_count: counts
                        .iter()
                        .find(|(from, _)| *from == loaded.from_ms)
                        .map_or(0, |(_, rules)| rules.rule_count()),
                    content_hash: format!("{:016x}", loaded.hash),
                    source: loaded.source.clone(),
                })
                .collect(),
            last_error: state.last_error.clone(),
            cluster: self.cluster.as_ref().map(|_| self.agreement()),
        }
    }

    /// Content hash (xxh3, hex) of the newest rules loaded: what a cluster
    /// instance sends with every forward, and checks on every forward it takes.
    pub fn newest_hash(&self) -> String {
        let state = self.state.lock();
        format!("{:016x}", state.loaded.last().map_or(0, |loaded| loaded.hash))
    }

    /// Clock time the rule set in force now was loaded.
    pub fn loaded_at_ms(&self) -> i64 {
        let now_ms = self.clock.now_ms();
        let state = self.state.lock();
        state
            .loaded
            .iter()
            .filter(|loaded| loaded.from_ms <= now_ms)
            .map(|loaded| loaded.loaded_at_ms)
            .next_back()
            .unwrap_or(0)
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}
