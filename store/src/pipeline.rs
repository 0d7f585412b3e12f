//! Several commits in flight at once.
//!
//! A writer with more than one commit's worth of writes (a scheduling pass
//! of 10,000 tasks is some 80 commits) used to send them one after another,
//! each waiting for its round trip through raft and the disk. etcd batches
//! the proposals that are waiting together into one raft append and one
//! fsync, so commits sent together cost little more than one; a writer that
//! waits for each before sending the next gets none of that.
//! [`commit_all`] keeps up to `depth` commits in flight and still delivers
//! the results in the order the commits were given.
//!
//! Order is kept where it matters:
//! - two commits that write the same key are never in flight together, so
//!   the later one applies after the earlier, as if sent one by one;
//! - a commit marked as a barrier (for example the one that stores a job's
//!   spec before its placements, or a prefix delete) waits for every commit
//!   before it, and every commit after it waits for it;
//! - after the first failure no further commit is started: the ones already
//!   in flight finish (their results are delivered, successes included,
//!   since they are in the store), and the ones not started are returned.

use std::collections::BTreeSet;

use futures_util::stream::{FuturesOrdered, StreamExt};

use crate::{Op, Revision, Store, StoreError, Write};

/// How many commits a writer keeps in flight: enough for etcd to fold a
/// pass's commits into a few raft appends, few enough that a failure
/// leaves little already sent.
pub const DEPTH: usize = 8;

/// One commit for [`commit_all`]: its writes, what the caller keeps beside
/// them, and whether it must run alone.
pub struct Pending<T> {
    pub writes: Vec<Write>,
    pub item: T,
    pub barrier: bool,
}

impl<T> Pending<T> {
    pub fn new(writes: Vec<Write>, item: T) -> Self {
        Pending {
            writes,
            item,
            barrier: false,
        }
    }

    /// See the module's documentation.
    pub fn barrier(mut self) -> Self {
        self.barrier = true;
        self
    }

    /// A prefix delete touches keys no list can name: it runs alone.
    fn alone(&self) -> bool {
        self.barrier || self.writes.iter().any(|w| matches!(w.op, Op::DeletePrefix))
    }
}

/// Commits `commits` with up to `depth` (at least 1) in flight, calling
/// `done` with each one's item and result in the order given. Returns the
/// items of the commits not started because one failed before them.
pub async fn commit_all<T>(
    store: &dyn Store,
    commits: impl IntoIterator<Item = Pending<T>>,
    depth: usize,
    mut done: impl FnMut(T, Result<Revision, StoreError>),
) -> Vec<T> {
    let depth = depth.max(1);
    let mut waiting = commits.into_iter().peekable();
    let mut in_flight = FuturesOrdered::new();
    // The keys of the commits in flight, and whether one of them runs alone.
    let mut keys: BTreeSet<String> = BTreeSet::new();
    let mut alone_in_flight = false;
    let mut failed = false;
    loop {
        while !failed && in_flight.len() < depth && !alone_in_flight {
            let Some(next) = waiting.peek() else { break };
            let alone = next.alone();
            let blocked = if alone {
                !in_flight.is_empty()
            } else {
                next.writes.iter().any(|w| keys.contains(&w.key))
            };
            if blocked {
                break;
            }
            let next = waiting.next().expect("peeked");
            keys.extend(next.writes.iter().map(|w| w.key.clone()));
            alone_in_flight = alone;
            let Pending { writes, item, .. } = next;
            in_flight.push_back(async move {
                let result = store.commit(&writes).await;
                (writes, item, result)
            });
        }
        let Some((writes, item, result)) = in_flight.next().await else {
            break;
        };
        for w in &writes {
            keys.remove(&w.key);
        }
        if in_flight.is_empty() {
            alone_in_flight = false;
        }
        failed |= result.is_err();
        done(item, result);
    }
    waiting.map(|p| p.item).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Expect, MemStore};

    fn put(key: &str, expect: Expect) -> Write {
        Write::put(key, b"v".to_vec(), expect)
    }

    #[tokio::test]
    async fn results_come_in_order_and_all_commits_land() {
        let store = MemStore::new();
        let commits = (0..20).map(|i| Pending::new(vec![put(&format!("k{i}"), Expect::Absent)], i));
        let mut seen = Vec::new();
        let left = commit_all(&store, commits, 4, |i, r| {
            assert!(r.is_ok(), "commit {i}: {r:?}");
            seen.push(i);
        })
        .await;
        assert!(left.is_empty());
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
        assert_eq!(store.list("k").await.unwrap().items.len(), 20);
    }

    #[tokio::test]
    async fn a_key_written_twice_is_written_in_order() {
        let store = MemStore::new();
        // The second commit expects the key the first creates: run
        // together, it could fail.
        let commits = vec![
            Pending::new(vec![put("a", Expect::Absent)], 0),
            Pending::new(vec![Write::put("a", b"2".to_vec(), Expect::Any)], 1),
            Pending::new(vec![Write::delete("a", Expect::Any)], 2),
        ];
        let mut ok = 0;
        commit_all(&store, commits, 8, |_, r| {
            r.unwrap();
            ok += 1;
        })
        .await;
        assert_eq!(ok, 3);
        assert!(store.get("a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn nothing_starts_after_a_failure_and_the_rest_is_returned() {
        let store = MemStore::new();
        store.commit(&[put("taken", Expect::Any)]).await.unwrap();
        // Depth 1: the failing commit is the only one in flight, so none
        // after it starts.
        let commits = vec![
            Pending::new(vec![put("x", Expect::Absent)], "x"),
            Pending::new(vec![put("taken", Expect::Absent)], "taken"),
            Pending::new(vec![put("y", Expect::Absent)], "y"),
        ];
        let mut results = Vec::new();
        let left = commit_all(&store, commits, 1, |i, r| results.push((i, r.is_ok()))).await;
        assert_eq!(results, vec![("x", true), ("taken", false)]);
        assert_eq!(left, vec!["y"]);
        assert!(store.get("y").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_barrier_runs_after_the_commits_before_it() {
        let store = MemStore::new();
        let commits = vec![
            Pending::new(vec![put("a", Expect::Absent)], 0),
            Pending::new(vec![put("b", Expect::Absent)], 1),
            // Deletes what the two before it wrote: only right after them.
            Pending::new(vec![Write::delete_prefix("")], 2),
            Pending::new(vec![put("c", Expect::Absent)], 3),
        ];
        commit_all(&store, commits, 8, |_, r| {
            r.unwrap();
        })
        .await;
        let keys: Vec<String> = store
            .list("")
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, vec!["c".to_string()]);
    }
}
