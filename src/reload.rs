//! Rules hot reload: the rules file is re-read when it changes (polled by
//! modification time, size and content hash), on SIGHUP and on
//! `POST /-/reload`. A valid file is staged in the engine to take over at the
//! next window boundary common to its policies; an invalid one is refused,
//! logged with its file, rule and field, and counted, and the old rules stay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64;

use crate::clock::Clock;
use crate::engine::Engine;
use crate::rules::{RuleSet, RulesError};
use crate::telemetry::Telemetry;

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
        }
    }

    /// Reloads when the file's modification time or size changed since it
    /// was last read and has stayed the same since the previous look.
    pub fn poll(&self) -> Option<Result<ReloadOutcome, RulesError>> {
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
    pub fn reload(&self, trigger: &str) -> Result<ReloadOutcome, RulesError> {
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
