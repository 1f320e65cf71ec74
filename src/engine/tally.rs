//! The per-point tally of one batch: how many windows each point was routed
//! to, how many refused it and why, and which output window refused what, so
//! the answer counts a point as accepted, partial (some outputs refused it)
//! or rejected, and names each refusing output.

use std::sync::Arc;

use crate::model::{DropReason, Outcome};

use super::route::SeriesRoute;

/// A window that refused a point: indices into the batch's routes.
#[derive(Clone, Copy)]
pub(super) struct WindowRefusal {
    pub(super) route: u32,
    pub(super) target: u16,
    pub(super) slot: u16,
    pub(super) reason: DropReason,
}

impl WindowRefusal {
    pub(super) fn new(route: u32, target: u16, slot: u16, reason: DropReason) -> Self {
        WindowRefusal {
            route,
            target,
            slot,
            reason,
        }
    }
}

/// Reused across batches (in the thread's scratch), so it allocates nothing once warm.
#[derive(Default)]
pub(super) struct PointTally {
    /// Per point: windows it was routed to that have not refused it.
    windows_left: Vec<u16>,
    /// Per point: why its last refused window refused it.
    last_refusal: Vec<DropReason>,
    /// Per point: windows that refused it (due already, flushed, kind conflict).
    refused_windows: Vec<u16>,
    /// Every refusing window of the batch (empty when nothing is late).
    refusals: Vec<WindowRefusal>,
    /// Due windows met while routing the point being pushed.
    due: u16,
}

impl PointTally {
    pub(super) fn clear(&mut self) {
        self.windows_left.clear();
        self.last_refusal.clear();
        self.refused_windows.clear();
        self.refusals.clear();
        self.due = 0;
    }

    /// The index the next point pushed gets.
    pub(super) fn next_point(&self) -> u32 {
        self.windows_left.len() as u32
    }

    /// A window of the point being routed is due already: it refuses the point as late.
    pub(super) fn due(&mut self, route: u32, target: u16, slot: u16) {
        self.due += 1;
        self.refusals
            .push(WindowRefusal::new(route, target, slot, DropReason::TooLate));
    }

    /// Ends the routing of a point that went to `routed` windows (0: refused as late by all).
    pub(super) fn push_point(&mut self, routed: u16) {
        self.windows_left.push(routed);
        self.last_refusal.push(DropReason::TooLate);
        self.refused_windows.push(std::mem::take(&mut self.due));
    }

    /// Window `refusal` refused point `point` when folding.
    pub(super) fn refuse(&mut self, point: u32, refusal: WindowRefusal) {
        let point = point as usize;
        self.windows_left[point] -= 1;
        self.last_refusal[point] = refusal.reason;
        self.refused_windows[point] += 1;
        self.refusals.push(refusal);
    }

    /// Adds the batch's points to `outcome`: accepted (by at least one
    /// window; partial when another refused), or rejected for the last
    /// refusal; and what each output refused, named by the batch's `routes`.
    pub(super) fn finish(&self, routes: &[Arc<SeriesRoute>], outcome: &mut Outcome) {
        let points = self
            .windows_left
            .iter()
            .zip(&self.last_refusal)
            .zip(&self.refused_windows);
        for ((left, reason), refused) in points {
            if *left > 0 {
                outcome.accepted += 1;
                if *refused > 0 {
                    outcome.partial += 1;
                }
            } else {
                outcome.reject(*reason, 1);
            }
        }
        // Each output says what it refused, so a point its own output refused is
        // never acknowledged as taken because a rollup took it (or the reverse).
        for refusal in &self.refusals {
            let target = &routes[refusal.route as usize].targets[refusal.target as usize];
            let name = target.labels.metric_name().unwrap_or_default();
            let policy = target.slots[refusal.slot as usize].policy;
            outcome.refuse_output(refusal.reason, name, policy, 1);
        }
    }
}
