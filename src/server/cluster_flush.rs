//! The flush of a cluster instance: read the shard set's flush marks from
//! etcd, drop what the leader flushed, and when leading flush what is due,
//! hand rollup shares to their owners and record the new marks after the
//! store has the records. Without etcd nothing is flushed (late, never lost).

use std::sync::Arc;

use crate::cluster::coordinator::{Coordinator, FlushMark, FlushMarks, Role};
use crate::cluster::router::Router;
use crate::engine::{FlushGate, FlushStats, PolicyMarks};

use super::flush_loop::FlushLoop;

/// The cluster parts the flush loop needs.
pub(super) struct ClusterFlush {
    pub(super) coordinator: Arc<Coordinator>,
    pub(super) router: Arc<Router>,
}

impl FlushLoop {
    /// One flush of a cluster instance (see the module docs). `everything` is
    /// never asked of a cluster: open windows stay with the set's other replica.
    pub(super) async fn flush_clustered(self: &Arc<Self>, cluster: &ClusterFlush, settle: bool) -> FlushStats {
        // Leadership is not handed over (drain) between the check and the recorded marks.
        let _flushing = cluster.coordinator.flush_guard().await;
        let now_ms = self.clock.now_ms();
        let role = cluster.coordinator.role();
        let exporter = self.telemetry.exporter();
        let marks = match cluster.coordinator.read_marks().await {
            Ok(marks) => marks,
            Err(error) => {
                tracing::warn!(%error, "etcd unreachable: flushing waits (windows are kept, ingest goes on)");
                exporter.count(
                    "tailfold_cluster_flush_waits_total",
                    &[("reason", "etcd".to_string())],
                    1,
                );
                return FlushStats::default();
            }
        };
        // An instance a completed change took out of the placement (it is
        // stopping) flushes and records nothing more: its set's marks belong
        // to the replica that took its place, or to nobody.
        // A replica a placement change takes out of its set, restarted after
        // the cutover, flushes only the windows before it (it may have missed
        // later ones while down); the replica joining in its place the rest.
        // Both are judged by one read of the placement: read twice, a change
        // completing in between would make a restarted leaving replica
        // "placed" by the first read and not leaving by the second, and it
        // would flush its partial windows after the cutover and record marks
        // past it, so the joining replica would drop its whole ones.
        let placement = cluster.coordinator.view().placement();
        let placed = cluster.coordinator.view().my_set(&placement).is_some();
        let leaving_from_ms = cluster.coordinator.leaving_from_ms(&placement);
        let lead = placed && matches!(role, Role::Leading { .. }) && cluster.coordinator.still_leads(&role).await;
        if matches!(role, Role::Unknown) {
            exporter.count(
                "tailfold_cluster_flush_waits_total",
                &[("reason", "no_leadership".to_string())],
                1,
            );
        }
        let own: PolicyMarks = marks.iter().map(|(policy, mark)| (*policy, mark.until_ms)).collect();
        let rollups: PolicyMarks = marks
            .iter()
            .map(|(policy, mark)| (*policy, mark.rollups_until_ms))
            .collect();
        let (due_own, due_rollups) = self.engine.due_until(now_ms);
        // Up to where every policy of the set was flushed, as a follower knows it.
        let set_flushed_until: Option<i64> = due_own
            .iter()
            .map(|(policy, _)| own.iter().find(|(known, _)| known == policy).map(|(_, until)| *until))
            .collect::<Option<Vec<i64>>>()
            .and_then(|ends| ends.into_iter().min());
        let this = Arc::clone(self);
        let work = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut shares = Vec::new();
            let mut chunks = Vec::new();
            let gate = FlushGate {
                lead,
                flushed_until: &own,
                rollups_until: &rollups,
                leaving_from_ms,
            };
            let stats = this.engine.flush_gated(
                now_ms,
                false,
                gate,
                |records| chunks.push(records),
                |chunk| shares.extend(chunk),
            );
            this.telemetry
                .flushed(stats.flushed.windows as u64, stats.flushed.records as u64);
            let watermarks = this.engine.watermarks();
            // The marks are recorded only once the store has the records.
            let committable = this.deliver_logged(this.wal.as_deref(), chunks, now_ms, lead || settle, settle);
            this.telemetry.flush_completed(now_ms, started.elapsed());
            this.telemetry.exporter().upkeep();
            (stats, shares, committable.then_some(watermarks))
        });
        let Ok((stats, shares, watermarks)) = work.await else {
            tracing::error!("cluster flush task failed");
            return FlushStats::default();
        };
        if stats.dropped > 0 {
            exporter.count("tailfold_cluster_windows_dropped_total", &[], stats.dropped as u64);
        }
        if !shares.is_empty() && lead {
            cluster.router.share(cluster.coordinator.set(), shares).await;
        }
        // The log's checkpoint before etcd's marks: a crash between the two
        // flushes these windows again (here or on a replica), never loses them.
        if let (Some(wal), Some(watermarks)) = (&self.wal, watermarks) {
            // A leader flushed every due window; a follower only what the marks say.
            let flushed_at_ms = if lead { Some(now_ms) } else { set_flushed_until };
            if let Some(flushed_at_ms) = flushed_at_ms {
                self.commit_log(wal, watermarks, flushed_at_ms, false);
            }
            self.telemetry.wal_size(wal.size_bytes());
        }
        if !lead {
            return stats.flushed;
        }
        let mut recorded: FlushMarks = marks;
        let leader = cluster.coordinator.view().settings().instance.clone();
        for ((policy, own_due), (_, rollups_due)) in due_own.iter().zip(&due_rollups) {
            let mark = recorded.entry(*policy).or_insert_with(|| FlushMark {
                until_ms: i64::MIN,
                rollups_until_ms: i64::MIN,
                leader: leader.clone(),
            });
            let cap = leaving_from_ms.unwrap_or(i64::MAX);
            mark.until_ms = mark.until_ms.max((*own_due).min(cap));
            mark.rollups_until_ms = mark.rollups_until_ms.max((*rollups_due).min(cap));
            mark.leader = leader.clone();
        }
        match cluster.coordinator.record_marks(&role, &recorded).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "leadership lost before the flush was recorded; the next leader flushes after the last recorded mark"
            ),
            Err(error) => {
                tracing::warn!(%error, "cannot record the flush marks; the next leader may flush these windows again")
            }
        }
        stats.flushed
    }
}
