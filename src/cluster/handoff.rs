//! The handoff of a placement change on each instance: the placement
//! watched (so routing follows a change within moments), what an owner keeps
//! of a moving shard (the new one from the cutover, the old one before the
//! cutoff), when a joining replica may lead, and the change completed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::model::{IngestBatch, SeriesBatch};
use crate::telemetry::Telemetry;

use super::etcd::EtcdClient;
use super::placement::{keys, shard_of, Placement};
use super::view::ClusterView;

/// How often the placement's meta key is read (one small get).
const POLL: Duration = Duration::from_millis(250);

/// Which side of a moving shard's boundary `owner` (an index in `sets`)
/// keeps for the point at `timestamp_ms`: the new owner from the cutover on,
/// the old one before it. `None` when the shard is not moving.
fn keeps(placement: &Placement, shard: u32, owner: usize, timestamp_ms: i64) -> Option<bool> {
    let (from, cutover_ms) = placement.moving_from(shard)?;
    Some(if owner == from {
        timestamp_ms < cutover_ms
    } else {
        timestamp_ms >= cutover_ms
    })
}

/// Points of `series` (of a shard moving or not) that the set at `owner` keeps.
pub fn kept_points(placement: &Placement, shard: u32, owner: usize, series: &SeriesBatch, now_ms: i64) -> u64 {
    if placement.moving_from(shard).is_none() {
        return (series.points.len() + series.histograms.len()) as u64;
    }
    let keep = |timestamp_ms: Option<i64>| keeps(placement, shard, owner, timestamp_ms.unwrap_or(now_ms)) == Some(true);
    series.points.iter().filter(|point| keep(point.timestamp_ms)).count() as u64
        + series
            .histograms
            .iter()
            .filter(|histogram| keep(histogram.timestamp_ms))
            .count() as u64
}

/// What the set of `instance` keeps of `batch` in `placement`: `None` when
/// it keeps everything (no moving shard in it: nothing is copied), else the
/// kept copy. Each discarded point is counted by reason.
pub fn keep_own_side(
    placement: &Placement,
    instance: &str,
    batch: &IngestBatch,
    now_ms: i64,
    telemetry: &Telemetry,
) -> Option<IngestBatch> {
    placement.change.as_ref()?;
    let owner = placement.set_index_of_instance(instance)?;
    let shards: Vec<u32> = batch
        .series
        .iter()
        .map(|series| shard_of(&batch.tenant, &series.labels, placement.shards))
        .collect();
    if shards.iter().all(|shard| placement.moving_from(*shard).is_none()) {
        return None;
    }
    let (mut before_cutover, mut after_cutoff) = (0u64, 0u64);
    let mut kept = IngestBatch {
        tenant: Arc::clone(&batch.tenant),
        series: Vec::with_capacity(batch.series.len()),
    };
    for (series, shard) in batch.series.iter().zip(shards) {
        let Some((from, _)) = placement.moving_from(shard) else {
            kept.series.push(series.clone());
            continue;
        };
        let keep =
            |timestamp_ms: Option<i64>| keeps(placement, shard, owner, timestamp_ms.unwrap_or(now_ms)) == Some(true);
        let mut copy = series.clone();
        copy.points.retain(|point| keep(point.timestamp_ms));
        copy.histograms.retain(|histogram| keep(histogram.timestamp_ms));
        let dropped =
            (series.points.len() + series.histograms.len() - copy.points.len() - copy.histograms.len()) as u64;
        if owner == from {
            after_cutoff += dropped;
        } else {
            before_cutover += dropped;
        }
        if !(copy.points.is_empty() && copy.histograms.is_empty()) {
            kept.series.push(copy);
        }
    }
    for (reason, points) in [("before_cutover", before_cutover), ("after_cutoff", after_cutoff)] {
        if points > 0 {
            telemetry.exporter().count(
                "tailfold_cluster_handoff_discarded_total",
                &[("reason", reason.to_string())],
                points,
            );
        }
    }
    Some(kept)
}

/// Whether `replica` must get what starts at `earliest_ms` even while etcd
/// lists it as gone: a replica a replace takes out of its set is the only
/// one holding the set's windows before the cutover (the joining one never
/// flushes them), so points and rollup shares for those wait for it up to
/// the forward timeout, as for a one-replica set restarting.
pub fn must_reach(placement: &Placement, replica: &str, earliest_ms: i64) -> bool {
    leaving_cutover(placement, replica).is_some_and(|cutover_ms| earliest_ms < cutover_ms)
}

/// When the change in flight in `placement` takes `instance` out of a set
/// that stays (a replace): its cutover. `None` when no change is in flight,
/// when `instance` stays, or is not placed (a completed change took it out).
pub fn leaving_cutover(placement: &Placement, instance: &str) -> Option<i64> {
    let change = placement.change.as_ref()?;
    let set = placement.set_of_instance(instance)?;
    (change.leaving.iter().any(|id| id == instance) && !change.leaving_sets.contains(&set.set))
        .then_some(change.cutover_ms)
}

/// The index in `sets` of the owner of the rollup window starting at
/// `start_ms` of a rollup output in `shard`: the old owner before the cutover.
pub fn share_owner(placement: &Placement, shard: u32, start_ms: i64) -> usize {
    match placement.moving_from(shard) {
        Some((from, cutover_ms)) if start_ms < cutover_ms => from,
        _ => placement.set_index_of_shard(shard),
    }
}

/// Whether the set at `owner` keeps a rollup share of `shard` for the window
/// starting at `start_ms`; a refused one is counted by reason.
pub fn keeps_share(placement: &Placement, shard: u32, owner: usize, start_ms: i64, telemetry: &Telemetry) -> bool {
    match keeps(placement, shard, owner, start_ms) {
        None | Some(true) => true,
        Some(false) => {
            let from_old = placement.moving_from(shard).is_some_and(|(from, _)| from == owner);
            let reason = if from_old { "after_cutoff" } else { "before_cutover" };
            telemetry.exporter().count(
                "tailfold_cluster_handoff_discarded_total",
                &[("reason", reason.to_string())],
                1,
            );
            false
        }
    }
}

/// Keeps `view`'s placement current: the meta key is read every 250 ms and
/// the whole placement when its revision moved. Once the cutover of a change
/// has passed it tries to complete it (any instance may: the write compares
/// on the placement's revision). Says `left` once this instance, having been
/// placed, is no longer in the placement.
pub async fn follow_placement(
    client: EtcdClient,
    view: Arc<ClusterView>,
    now_ms: impl Fn() -> i64 + Send + Sync + 'static,
    left: watch::Sender<bool>,
    telemetry: Arc<Telemetry>,
) {
    let cluster = view.settings().cluster.clone();
    let instance = view.settings().instance.clone();
    let mut revision = 0;
    loop {
        tokio::time::sleep(POLL).await;
        let Ok(Some(meta)) = client.get(&keys::meta(&cluster)).await else {
            continue;
        };
        if meta.mod_revision != revision {
            match Placement::load_versioned(&client, &cluster).await {
                Ok(Some((placement, read_at))) => {
                    revision = read_at;
                    let placed = placement.set_of_instance(&instance).is_some();
                    announce(&placement, view.placement().version);
                    view.set_placement(placement);
                    if !placed {
                        tracing::info!(instance = %instance, "left the cluster: every shard it held is cut off and flushed");
                        let _ = left.send(true);
                        return;
                    }
                }
                Ok(None) => continue,
                Err(error) => {
                    tracing::error!(%error, "the new placement cannot be used; routing by the last one");
                    continue;
                }
            }
        }
        let placement = view.placement();
        let past_cutover_ms = placement
            .change
            .as_ref()
            .map_or(0, |change| (now_ms() - change.cutover_ms).max(0));
        telemetry.exporter().set(
            "tailfold_cluster_handoff_in_flight_seconds",
            &[],
            past_cutover_ms as f64 / 1_000.0,
        );
        let Some(change) = &placement.change else {
            continue;
        };
        if now_ms() < change.cutover_ms {
            continue;
        }
        match super::change::complete(&client, &cluster, now_ms()).await {
            Ok(true) => {
                tracing::info!(what = %change.what, "placement change completed: its shards are available on their new owners");
                telemetry
                    .exporter()
                    .count("tailfold_cluster_handoffs_completed_total", &[], 1);
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "cannot complete the placement change yet"),
        }
    }
}

fn announce(placement: &Placement, before: u64) {
    if placement.version == before {
        return;
    }
    match &placement.change {
        Some(change) => tracing::info!(
            version = placement.version,
            what = %change.what,
            cutover_ms = change.cutover_ms,
            shards_moved = change.shards_moved(),
            "placement change staged: routing to old and new owners across the cutover"
        ),
        None => tracing::info!(version = placement.version, "placement changed"),
    }
}

/// Waits while this instance joined its set by a change still in flight
/// and the set has not flushed every window before the cutover (or the
/// cutover has not passed): only then does it hold every window after the
/// set's last flush, whatever its own start time.
pub async fn wait_until_may_lead(client: &EtcdClient, view: &ClusterView, set: u32, now_ms: &impl Fn() -> i64) {
    let instance = &view.settings().instance;
    let mut announced = false;
    loop {
        let placement = view.placement();
        let Some(change) = placement
            .change
            .as_ref()
            .filter(|change| change.joining.contains(instance))
        else {
            return;
        };
        if now_ms() >= change.cutover_ms {
            let prefix = keys::flush_prefix(&view.settings().cluster, set);
            if let Ok(marks) = client.get_prefix(&prefix).await {
                let flushed = !marks.is_empty()
                    && marks.iter().all(|kv| {
                        serde_json::from_slice::<super::coordinator::FlushMark>(&kv.value).is_ok_and(|mark| {
                            mark.until_ms >= change.cutover_ms && mark.rollups_until_ms >= change.cutover_ms
                        })
                    });
                if flushed {
                    return;
                }
            }
        }
        if !announced {
            tracing::info!(
                cutover_ms = change.cutover_ms,
                "joined the shard set: not campaigning until the set flushed every window before the cutover"
            );
            announced = true;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::change::{plan, Request};
    use crate::cluster::placement::spec;
    use crate::model::{Kind, Labels, Point};

    const CUTOVER: i64 = 10_000;

    /// 3 sets of 16 shards, a fourth added with its cutover at 10 s.
    fn adding() -> Placement {
        let three = Placement::initial("c", 16, 1, ["a", "b", "c"].map(spec).to_vec()).unwrap();
        plan(&three, &Request::Add(vec![spec("d")]), 0, CUTOVER).unwrap()
    }

    /// A series of tenant `t` in a moving shard (`moving`) or not.
    fn series_in(placement: &Placement, moving: bool) -> SeriesBatch {
        (0..)
            .map(|n| Labels::from_pairs([("__name__", "x"), ("n", &n.to_string())]))
            .find(|labels| placement.moving_from(shard_of("t", labels, placement.shards)).is_some() == moving)
            .map(|labels| SeriesBatch {
                labels,
                kind: Kind::Counter,
                cumulative: false,
                points: vec![
                    Point::new(1.0, Some(CUTOVER - 1), None),
                    Point::new(1.0, Some(CUTOVER), None),
                    Point::new(1.0, None, None),
                ],
                histograms: Vec::new(),
            })
            .unwrap()
    }

    #[test]
    fn each_owner_keeps_its_side_of_the_cutover_and_counts_the_rest() {
        let placement = adding();
        let telemetry = Telemetry::default();
        let batch = IngestBatch {
            tenant: Arc::from("t"),
            series: vec![series_in(&placement, true), series_in(&placement, false)],
        };
        let shard = shard_of("t", &batch.series[0].labels, placement.shards);
        let (old, _) = placement.moving_from(shard).unwrap();
        let old_id = placement.sets[old].instances[0].id.clone();
        // Arrival time (no timestamp) before the cutover: the old owner's.
        let now_ms = CUTOVER - 500;
        let at_old = keep_own_side(&placement, &old_id, &batch, now_ms, &telemetry).unwrap();
        let at_new = keep_own_side(&placement, "d", &batch, now_ms, &telemetry).unwrap();
        let stamps = |batch: &IngestBatch| -> Vec<Option<i64>> {
            batch.series[0].points.iter().map(|point| point.timestamp_ms).collect()
        };
        assert_eq!(stamps(&at_old), vec![Some(CUTOVER - 1), None]);
        assert_eq!(stamps(&at_new), vec![Some(CUTOVER)]);
        assert_eq!(at_old.series[1].points.len(), 3, "a series not moving is kept whole");
        let new = placement.set_index_of_instance("d").unwrap();
        assert_eq!(kept_points(&placement, shard, old, &batch.series[0], now_ms), 2);
        assert_eq!(kept_points(&placement, shard, new, &batch.series[0], now_ms), 1);
        let text = telemetry.exporter().render(&telemetry.snapshot(), &Default::default());
        assert!(
            text.contains("tailfold_cluster_handoff_discarded_total{reason=\"before_cutover\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tailfold_cluster_handoff_discarded_total{reason=\"after_cutoff\"} 1"),
            "{text}"
        );
        // Nothing moves: nothing is copied.
        let still = IngestBatch {
            tenant: Arc::from("t"),
            series: vec![series_in(&placement, false)],
        };
        assert!(keep_own_side(&placement, "d", &still, now_ms, &telemetry).is_none());
    }

    #[test]
    fn rollup_shares_go_to_the_owner_of_their_window_and_leaving_replicas_are_waited_for() {
        let placement = adding();
        let shard = (0..16).find(|shard| placement.moving_from(*shard).is_some()).unwrap();
        let (old, _) = placement.moving_from(shard).unwrap();
        assert_eq!(share_owner(&placement, shard, CUTOVER - 1_000), old);
        assert_eq!(
            share_owner(&placement, shard, CUTOVER),
            placement.set_index_of_shard(shard)
        );
        let three = Placement::initial("c", 16, 1, ["a", "b", "c"].map(spec).to_vec()).unwrap();
        let replacing = plan(
            &three,
            &Request::Replace {
                old: "b".into(),
                new: spec("e"),
            },
            0,
            CUTOVER,
        )
        .unwrap();
        assert!(must_reach(&replacing, "b", CUTOVER - 1));
        assert!(
            !must_reach(&replacing, "b", CUTOVER),
            "after the cutover the joining replica has it"
        );
        assert!(!must_reach(&replacing, "e", CUTOVER - 1));
        assert!(!must_reach(&placement, "a", 0), "an add moves no replica");
    }

    /// What a restarted leaving replica flushes is judged by the same
    /// placement read as whether it is placed: in flight it is placed and
    /// leaves from the cutover; once the change completed it is neither.
    #[test]
    fn a_leaving_replica_leaves_from_the_cutover_until_the_change_completes() {
        let three = Placement::initial("c", 16, 1, ["a", "b", "c"].map(spec).to_vec()).unwrap();
        let replace = Request::Replace {
            old: "b".into(),
            new: spec("e"),
        };
        let in_flight = plan(&three, &replace, 0, CUTOVER).unwrap();
        assert!(in_flight.set_of_instance("b").is_some());
        assert_eq!(leaving_cutover(&in_flight, "b"), Some(CUTOVER));
        assert_eq!(
            leaving_cutover(&in_flight, "e"),
            None,
            "the joining replica flushes from the cutover"
        );
        assert_eq!(leaving_cutover(&in_flight, "a"), None);
        assert_eq!(
            leaving_cutover(&adding(), "c"),
            None,
            "an add takes no replica out of a set that stays"
        );
        let completed = Placement::initial("c", 16, 1, ["a", "e", "c"].map(spec).to_vec()).unwrap();
        assert!(completed.set_of_instance("b").is_none());
        assert_eq!(leaving_cutover(&completed, "b"), None);
    }
}
