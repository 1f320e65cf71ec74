//! The limits stage, between ingest and rules: per-tenant sample rate (token
//! bucket with burst) and active-series caps, shedding nice-to-have series
//! (the `limits.drop_priority` list) before anything else, and the bound on
//! ingest requests in flight. Time is passed in; every drop is counted.

mod bucket;
mod inflight;
mod tenant;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::config::{LimitSettings, TenantLimit};
use crate::model::{series_key, DropReason, IngestBatch, Labels, Outcome, SeriesBatch, SeriesKey};
use crate::telemetry::Telemetry;

pub use bucket::TokenBucket;
pub use inflight::{InflightGate, InflightPermit};

use tenant::{NewSeries, TenantState};

/// Tenant limits and the in-flight gate, shared by every ingest path.
pub struct Limits {
    settings: LimitSettings,
    /// False when no tenant has a limit: `admit` is then free.
    enabled: bool,
    tenants: RwLock<HashMap<Arc<str>, Arc<Mutex<TenantState>>>>,
    gate: InflightGate,
    telemetry: Arc<Telemetry>,
    /// The `rule` of drops of series no drop-priority entry names.
    unnamed: Arc<str>,
}

/// What the limits stage decided for one series of a batch.
#[derive(Clone, Copy, Debug, Default)]
struct Plan {
    key: u64,
    class: u16,
    known: bool,
    /// Points (scalar, then histograms) asked for and admitted by the rate limit.
    demand: u64,
    admitted: u64,
    /// Refused by the active-series limit.
    series_refused: bool,
}

impl Plan {
    /// Whether any of the series goes on to the engine.
    fn is_admitted(&self) -> bool {
        !self.series_refused && self.admitted > 0
    }
}

impl Limits {
    /// Limits under `settings`, counting drops into `telemetry`.
    pub fn new(settings: LimitSettings, telemetry: Arc<Telemetry>) -> Self {
        Limits {
            enabled: settings.any_limit(),
            gate: InflightGate::new(settings.max_inflight_requests),
            settings,
            tenants: RwLock::new(HashMap::new()),
            telemetry,
            unnamed: Arc::from(""),
        }
    }

    /// No tenant limit, the default in-flight bound.
    pub fn unlimited() -> Self {
        Limits::new(LimitSettings::default(), Arc::new(Telemetry::default()))
    }

    /// The settings in force.
    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    /// The bound on ingest requests in flight.
    pub fn gate(&self) -> &InflightGate {
        &self.gate
    }

    /// Active input series of `tenant` (0 for a tenant without limits).
    pub fn active_series(&self, tenant: &str) -> usize {
        self.tenants
            .read()
            .get(tenant)
            .map_or(0, |state| state.lock().series.len())
    }

    /// Tenants whose limit state is kept (tenants with a limit, seen within `idle_series_ms`).
    pub fn tracked_tenants(&self) -> usize {
        self.tenants.read().len()
    }

    /// Applies `batch.tenant`'s limits at `now_ms`: returns the batch itself
    /// when all of it is admitted, else a copy of what is admitted. What is not
    /// is counted in `outcome` and in telemetry by tenant, reason and rule.
    pub fn admit<'a>(&self, batch: &'a IngestBatch, now_ms: i64, outcome: &mut Outcome) -> Cow<'a, IngestBatch> {
        if !self.enabled {
            return Cow::Borrowed(batch);
        }
        let limit = self.settings.for_tenant(&batch.tenant);
        if !limit.is_limited() || batch.series.is_empty() {
            return Cow::Borrowed(batch);
        }
        // Hashed before the tenant's lock is taken, so concurrent requests of one
        // tenant wait less; the engine reuses these identities (one hash per series).
        let keys: Vec<SeriesKey> = batch
            .series
            .iter()
            .map(|series| series_key(&batch.tenant, &series.labels))
            .collect();
        let mut plans: Vec<Plan> = keys
            .iter()
            .map(|key| Plan {
                key: key.hash,
                ..Plan::default()
            })
            .collect();
        let state = self.tenant(&batch.tenant, limit, now_ms);
        let mut state = state.lock();
        state.last_seen_ms = now_ms;
        let classes = self.settings.drop_priority.len() + 1;
        let rated = state.bucket.is_some();
        for (series, plan) in batch.series.iter().zip(&mut plans) {
            (plan.class, plan.known) = match state.series.get_mut(&plan.key) {
                Some(tracked) => {
                    tracked.last_seen_ms = now_ms;
                    (tracked.class, true)
                }
                None => (self.class_of(&series.labels), false),
            };
            plan.demand = points_of(series);
            // Without a rate limit everything passes it; with one, `grant` decides.
            plan.admitted = if rated { 0 } else { plan.demand };
        }

        let mut rate_limited = false;
        if let Some(bucket) = state.bucket.as_mut() {
            bucket.refill(now_ms);
            rate_limited = grant(bucket, &mut plans, classes, |_| true);
        }

        // Active series: a new series with something admitted needs a slot.
        let mut given_back = false;
        let mut series_refused = false;
        for plan in &mut plans {
            if plan.known || plan.admitted == 0 {
                continue;
            }
            if state.admit_new(plan.key, plan.class, now_ms) == NewSeries::Refused {
                plan.series_refused = true;
                series_refused = true;
                if let Some(bucket) = state.bucket.as_mut() {
                    bucket.give_back(plan.admitted);
                    given_back |= plan.admitted > 0;
                }
            }
        }
        // Tokens held for refused new series go to the series that keep flowing.
        if rate_limited && given_back {
            if let Some(bucket) = state.bucket.as_mut() {
                rate_limited = grant(bucket, &mut plans, classes, |plan| {
                    !plan.series_refused && (plan.known || plan.admitted > 0)
                });
            }
        }
        drop(state);
        if !rate_limited && !series_refused {
            outcome.series_keys = keys;
            return Cow::Borrowed(batch);
        }
        self.count_drops(&batch.tenant, &plans, outcome);
        outcome.series_keys = keys
            .into_iter()
            .zip(&plans)
            .filter(|(_, plan)| plan.is_admitted())
            .map(|(key, _)| key)
            .collect();
        Cow::Owned(admitted_part(batch, &plans))
    }

    /// Counts what `plans` dropped, by reason and drop-priority rule.
    fn count_drops(&self, tenant: &str, plans: &[Plan], outcome: &mut Outcome) {
        let classes = self.settings.drop_priority.len() + 1;
        let mut rate = vec![0u64; classes];
        let mut series = vec![0u64; classes];
        for plan in plans {
            if plan.series_refused {
                series[plan.class as usize] += plan.demand;
            } else {
                rate[plan.class as usize] += plan.demand - plan.admitted;
            }
        }
        for class in 0..classes {
            let rule = self
                .settings
                .drop_priority
                .get(class)
                .map_or(&self.unnamed, |entry| &entry.name);
            for (reason, count) in [
                (DropReason::RateLimited, rate[class]),
                (DropReason::SeriesLimited, series[class]),
            ] {
                if count > 0 {
                    outcome.reject_by_limit(reason, rule, count);
                    self.telemetry.limit_dropped(tenant, reason, rule, count);
                }
            }
        }
    }

    /// The drop-priority class of `labels`: its first matching entry, else the last class.
    fn class_of(&self, labels: &Labels) -> u16 {
        let list = &self.settings.drop_priority;
        list.iter()
            .position(|entry| entry.filter.matches(labels))
            .unwrap_or(list.len()) as u16
    }

    fn tenant(&self, tenant: &Arc<str>, limit: TenantLimit, now_ms: i64) -> Arc<Mutex<TenantState>> {
        if let Some(state) = self.tenants.read().get(tenant) {
            return Arc::clone(state);
        }
        let droppable = self.settings.drop_priority.len();
        Arc::clone(
            self.tenants
                .write()
                .entry(Arc::clone(tenant))
                .or_insert_with(|| Arc::new(Mutex::new(TenantState::new(limit, droppable, now_ms)))),
        )
    }

    /// Forgets series silent for `idle_series_ms`, and tenants with none left
    /// (their bucket would be full again by then anyway).
    pub fn evict_idle(&self, now_ms: i64) {
        if !self.enabled {
            return;
        }
        let idle_ms = self.settings.idle_series_ms as i64;
        let gone = |state: &TenantState| state.series.is_empty() && now_ms.saturating_sub(state.last_seen_ms) > idle_ms;
        // Each tenant is swept under its own lock, so ingest of the others goes on;
        // the map is write-locked only to remove tenants found idle.
        let tenants: Vec<_> = self
            .tenants
            .read()
            .iter()
            .map(|(name, state)| (Arc::clone(name), Arc::clone(state)))
            .collect();
        let mut idle = Vec::new();
        for (name, state) in tenants {
            let mut state = state.lock();
            state.evict_idle(now_ms, idle_ms);
            if gone(&state) {
                idle.push(name);
            }
        }
        if !idle.is_empty() {
            let mut map = self.tenants.write();
            for name in idle {
                if map.get(&name).is_some_and(|state| gone(&state.lock())) {
                    map.remove(&name);
                }
            }
        }
    }
}

/// Grants tokens to the points of `eligible` plans not yet admitted. The bucket
/// is split into `classes` bands; a class may only take tokens above its band's
/// floor, so under sustained overload the bucket drains to where nice-to-have
/// series stop while the rest still flows. Classes are served most important
/// first, each class's series in batch order. Returns whether any plan is left
/// short (rate limited).
fn grant(bucket: &mut TokenBucket, plans: &mut [Plan], classes: usize, eligible: impl Fn(&Plan) -> bool) -> bool {
    let mut budget = vec![0u64; classes];
    for plan in plans.iter().filter(|plan| eligible(plan)) {
        budget[plan.class as usize] += plan.demand - plan.admitted;
    }
    for class in (0..classes).rev() {
        let floor = bucket.burst() * (classes - 1 - class) as f64 / classes as f64;
        let granted = budget[class].min(bucket.available_above(floor));
        bucket.take(granted);
        budget[class] = granted;
    }
    let mut short = false;
    for plan in plans.iter_mut() {
        if eligible(plan) {
            let left = &mut budget[plan.class as usize];
            let more = (plan.demand - plan.admitted).min(*left);
            plan.admitted += more;
            *left -= more;
        }
        short |= !plan.series_refused && plan.admitted < plan.demand;
    }
    short
}

/// Points a series asks for: scalar points plus native histograms (one each, as the engine counts them).
fn points_of(series: &SeriesBatch) -> u64 {
    (series.points.len() + series.histograms.len()) as u64
}

/// A copy of the admitted part of `batch`: the first admitted points of each series, then histograms.
fn admitted_part(batch: &IngestBatch, plans: &[Plan]) -> IngestBatch {
    let series = batch
        .series
        .iter()
        .zip(plans)
        .filter(|(_, plan)| plan.is_admitted())
        .map(|(series, plan)| {
            let admitted = plan.admitted as usize;
            let points = admitted.min(series.points.len());
            let histograms = (admitted - points).min(series.histograms.len());
            SeriesBatch {
                labels: series.labels.clone(),
                kind: series.kind,
                cumulative: series.cumulative,
                points: series.points[..points].to_vec(),
                histograms: series.histograms[..histograms].to_vec(),
            }
        })
        .collect();
    IngestBatch {
        tenant: Arc::clone(&batch.tenant),
        series,
    }
}

#[cfg(test)]
mod tests;
