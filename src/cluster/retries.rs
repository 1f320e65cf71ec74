//! The forwarded batches an owner took lately, by (sender, batch id), so a
//! sender's retry of a batch whose answer was lost (the owner killed after
//! logging it, a connection cut) gets the first answer instead of being
//! folded twice. Entries live as long as a sender may retry, bounded in number.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

use crate::api::cluster_v1::ForwardResponse;

/// Most batches remembered; past it the oldest are forgotten first.
const MAX_REMEMBERED: usize = 1 << 20;

/// Where a batch stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// Not seen: the caller folds it (and must call [`Retries::done`] or [`Retries::failed`]).
    New,
    /// Being folded by an earlier attempt: the sender should retry shortly.
    InFlight,
    /// Folded: this was the answer.
    Done(ForwardResponse),
}

#[derive(Default)]
struct Table {
    entries: HashMap<(String, u64), Option<ForwardResponse>>,
    /// Keys with their arrival time, oldest first, for expiry.
    order: VecDeque<(i64, (String, u64))>,
}

/// The remembered batches of one instance.
pub struct Retries {
    /// How long after its arrival time a batch may still be retried.
    keep_ms: i64,
    table: Mutex<Table>,
}

impl Retries {
    /// Remembers batches for `keep_ms` after their arrival time.
    pub fn new(keep_ms: u64) -> Self {
        Retries {
            keep_ms: keep_ms as i64,
            table: Mutex::new(Table::default()),
        }
    }

    /// Checks in the batch `id` from `from`, stamped `now_ms`.
    pub fn check_in(&self, from: &str, id: u64, now_ms: i64) -> Seen {
        let mut table = self.table.lock();
        expire(&mut table, now_ms - self.keep_ms);
        let key = (from.to_string(), id);
        match table.entries.get(&key) {
            Some(Some(answer)) => Seen::Done(answer.clone()),
            Some(None) => Seen::InFlight,
            None => {
                table.entries.insert(key.clone(), None);
                table.order.push_back((now_ms, key));
                Seen::New
            }
        }
    }

    /// Records the answer to a batch checked in as new.
    pub fn done(&self, from: &str, id: u64, answer: ForwardResponse) {
        if let Some(entry) = self.table.lock().entries.get_mut(&(from.to_string(), id)) {
            *entry = Some(answer);
        }
    }

    /// Forgets a batch checked in as new that was not folded: a retry folds it.
    pub fn failed(&self, from: &str, id: u64) {
        self.table.lock().entries.remove(&(from.to_string(), id));
    }

    /// Remembers a batch replayed from the write-ahead log at start.
    pub fn replayed(&self, from: String, id: u64, now_ms: i64, answer: ForwardResponse) {
        let mut table = self.table.lock();
        table.entries.insert((from.clone(), id), Some(answer));
        table.order.push_back((now_ms, (from, id)));
    }

    /// Batches remembered.
    pub fn len(&self) -> usize {
        self.table.lock().entries.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn expire(table: &mut Table, before_ms: i64) {
    while let Some((arrived_ms, _)) = table.order.front() {
        if *arrived_ms >= before_ms && table.order.len() <= MAX_REMEMBERED {
            break;
        }
        let (_, key) = table.order.pop_front().expect("front exists");
        table.entries.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(accepted: u64) -> ForwardResponse {
        ForwardResponse {
            accepted,
            ..ForwardResponse::default()
        }
    }

    #[test]
    fn a_retry_gets_the_first_answer_and_an_unfinished_one_waits() {
        let retries = Retries::new(10_000);
        assert_eq!(retries.check_in("a", 1, 1_000), Seen::New);
        assert_eq!(retries.check_in("a", 1, 1_000), Seen::InFlight);
        // Another sender's batch with the same id is another batch.
        assert_eq!(retries.check_in("b", 1, 1_000), Seen::New);
        retries.done("a", 1, answer(5));
        assert_eq!(retries.check_in("a", 1, 1_000), Seen::Done(answer(5)));
    }

    #[test]
    fn a_failed_batch_is_folded_by_its_retry() {
        let retries = Retries::new(10_000);
        assert_eq!(retries.check_in("a", 7, 1_000), Seen::New);
        retries.failed("a", 7);
        assert_eq!(retries.check_in("a", 7, 1_000), Seen::New);
    }

    #[test]
    fn batches_are_forgotten_after_the_retry_time() {
        let retries = Retries::new(10_000);
        retries.replayed("a".into(), 1, 1_000, answer(3));
        assert_eq!(retries.check_in("a", 1, 10_999), Seen::Done(answer(3)));
        assert_eq!(retries.check_in("a", 2, 11_001), Seen::New);
        assert_eq!(retries.len(), 1, "the batch of 1,000 expired at 11,000");
        assert_eq!(retries.check_in("a", 1, 11_001), Seen::New);
    }
}
