//! Tasks handed over by the global scheduler and waiting for a machine,
//! and the last assignment batch taken in.
//!
//! Rules kept here:
//! - a task waits once, however often it is handed over (a resync);
//! - tasks are packed in the order they arrived, so a batch of the global
//!   scheduler is packed in the order its pass decided it (priority, then
//!   submission), as the simulator packs it;
//! - a cancelled job's tasks leave the queue (a lost task does not come
//!   back by itself: the global scheduler decides whether it runs again).

use std::collections::{BTreeMap, BTreeSet};

use super::keys::TaskKey;

#[derive(Debug, Default)]
pub struct Queue {
    /// Waiting tasks and when each arrived.
    waiting: BTreeMap<TaskKey, u64>,
    /// The same tasks in arrival order.
    arrival: BTreeSet<(u64, TaskKey)>,
    next: u64,
    /// The highest assignment sequence number taken in.
    seq_seen: u64,
}

impl Queue {
    /// A task handed over; true if it was not waiting already.
    pub fn add(&mut self, k: TaskKey) -> bool {
        if self.waiting.contains_key(&k) {
            return false;
        }
        let at = self.next;
        self.next += 1;
        self.arrival.insert((at, k.clone()));
        self.waiting.insert(k, at);
        true
    }

    pub fn remove(&mut self, k: &TaskKey) {
        if let Some(at) = self.waiting.remove(k) {
            self.arrival.remove(&(at, k.clone()));
        }
    }

    pub fn cancel(&mut self, job: &str) {
        self.waiting.retain(|k, _| k.0 != job);
        self.arrival.retain(|(_, k)| k.0 != job);
    }

    /// The first `limit` waiting tasks in arrival order, grouped by job,
    /// jobs in the order their first task arrived (they stay in the queue).
    pub fn first(&self, limit: usize) -> Vec<(String, Vec<u32>)> {
        let mut jobs: Vec<(String, Vec<u32>)> = Vec::new();
        let mut at: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, (job, index)) in self.arrival.iter().take(limit) {
            let i = *at.entry(job.as_str()).or_insert_with(|| {
                jobs.push((job.clone(), Vec::new()));
                jobs.len() - 1
            });
            jobs[i].1.push(*index);
        }
        for (_, indices) in &mut jobs {
            indices.sort_unstable();
        }
        jobs
    }

    /// Waiting tasks, by key.
    pub fn iter(&self) -> impl Iterator<Item = &TaskKey> {
        self.waiting.keys()
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// An assignment batch numbered `seq` was taken in.
    pub fn seen(&mut self, seq: u64) {
        self.seq_seen = self.seq_seen.max(seq);
    }

    pub fn seq_seen(&self) -> u64 {
        self.seq_seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(job: &str, i: u32) -> TaskKey {
        (job.to_string(), i)
    }

    #[test]
    fn a_task_handed_over_twice_waits_once() {
        let mut q = Queue::default();
        q.add(k("web", 0));
        q.add(k("web", 0));
        q.add(k("api", 2));
        assert_eq!(q.len(), 2);
        // In arrival order: web first.
        assert_eq!(
            q.first(10),
            [("web".to_string(), vec![0]), ("api".to_string(), vec![2])]
        );
        assert_eq!(q.first(1).len(), 1);
    }

    #[test]
    fn a_cancelled_job_leaves() {
        let mut q = Queue::default();
        q.add(k("web", 0));
        q.add(k("api", 0));
        q.cancel("web");
        assert_eq!(q.iter().collect::<Vec<_>>(), [&k("api", 0)]);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn jobs_come_out_in_arrival_order_and_a_requeued_task_goes_last() {
        let mut q = Queue::default();
        q.add(k("zeta", 1));
        q.add(k("alpha", 0));
        q.add(k("zeta", 0));
        q.remove(&k("zeta", 1));
        assert!(q.add(k("zeta", 1)));
        assert_eq!(
            q.first(10),
            [
                ("alpha".to_string(), vec![0]),
                ("zeta".to_string(), vec![0, 1])
            ]
        );
        // The limit counts tasks in arrival order.
        assert_eq!(q.first(1), [("alpha".to_string(), vec![0])]);
    }

    #[test]
    fn the_highest_sequence_is_kept() {
        let mut q = Queue::default();
        q.seen(5);
        q.seen(3);
        assert_eq!(q.seq_seen(), 5);
    }
}
