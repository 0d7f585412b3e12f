//! Tasks handed over by the global scheduler and waiting for a machine,
//! the jobs it cancelled, and the last assignment batch taken in.
//!
//! Rules kept here:
//! - a task waits once, however often it is handed over (a resync);
//! - a cancelled job's tasks leave the queue, and a task of it that is
//!   lost does not come back.

use std::collections::{BTreeMap, BTreeSet};

use super::keys::TaskKey;

#[derive(Debug, Default)]
pub struct Queue {
    waiting: BTreeSet<TaskKey>,
    cancelled: BTreeSet<String>,
    /// The highest assignment sequence number taken in.
    seq_seen: u64,
}

impl Queue {
    /// A task handed over.
    pub fn add(&mut self, k: TaskKey) {
        self.waiting.insert(k);
    }

    /// A task lost on its machine, to be placed again unless its job was
    /// cancelled. True if it waits again.
    pub fn requeue(&mut self, k: TaskKey) -> bool {
        if self.cancelled.contains(&k.0) {
            return false;
        }
        self.waiting.insert(k)
    }

    pub fn remove(&mut self, k: &TaskKey) {
        self.waiting.remove(k);
    }

    pub fn cancel(&mut self, job: &str) {
        self.cancelled.insert(job.to_string());
        self.waiting.retain(|k| k.0 != job);
    }

    /// The first `limit` waiting tasks, by job (they stay in the queue).
    pub fn first(&self, limit: usize) -> BTreeMap<String, Vec<u32>> {
        let mut jobs: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (job, index) in self.waiting.iter().take(limit) {
            jobs.entry(job.clone()).or_default().push(*index);
        }
        jobs
    }

    pub fn iter(&self) -> impl Iterator<Item = &TaskKey> {
        self.waiting.iter()
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
        let first = q.first(10);
        assert_eq!(first["web"], [0]);
        assert_eq!(first["api"], [2]);
        assert_eq!(q.first(1).len(), 1);
    }

    #[test]
    fn a_cancelled_job_leaves_and_does_not_come_back() {
        let mut q = Queue::default();
        q.add(k("web", 0));
        q.add(k("api", 0));
        q.cancel("web");
        assert_eq!(q.iter().collect::<Vec<_>>(), [&k("api", 0)]);
        assert!(!q.requeue(k("web", 1)));
        assert!(q.requeue(k("api", 1)));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn the_highest_sequence_is_kept() {
        let mut q = Queue::default();
        q.seen(5);
        q.seen(3);
        assert_eq!(q.seq_seen(), 5);
    }
}
