//! The one way to split writes into commits.
//!
//! A commit may carry at most [`MAX_OPS_PER_COMMIT`] writes and
//! [`MAX_COMMIT_BYTES`] bytes (etcd refuses more). Every writer hands its
//! writes to [`chunks`], which packs them greedily, in order, into as few
//! commits as the two limits allow. A write that alone exceeds a limit can
//! never be committed: it is refused with a [`TooLarge`] naming its key and
//! its size, so the caller can hand it back or answer with an error instead
//! of retrying it forever.
//!
//! Callers that carry bookkeeping beside each write pass their own items and
//! say where the write is:
//! ```
//! use sched_store::batch;
//! use sched_store::{Expect, Write};
//!
//! struct Change { write: Write, task: u32 }
//! let changes = vec![
//!     Change { write: Write::put("a", "x", Expect::Absent), task: 1 },
//!     Change { write: Write::put("b", vec![0; 2_000_000], Expect::Absent), task: 2 },
//! ];
//! let split = batch::chunks(changes, |c| &c.write);
//! assert_eq!(split.commits.len(), 1);
//! assert_eq!(split.refused[0].item.task, 2);
//! assert_eq!(split.refused[0].reason.key, "b");
//! ```
//! An item that stands for several writes (a whole submit call) states its
//! [`Cost`] through [`chunks_within`].

use crate::{Write, MAX_COMMIT_BYTES, MAX_OPS_PER_COMMIT};

/// What one commit may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most writes.
    pub ops: usize,
    /// The most bytes, as [`Write::size`] counts them.
    pub bytes: usize,
}

impl Limits {
    /// The store's limits for a caller's writes: one operation of etcd's
    /// is kept for a fence.
    pub const COMMIT: Limits = Limits {
        ops: MAX_OPS_PER_COMMIT,
        bytes: MAX_COMMIT_BYTES,
    };

    /// For the steady stream of task and placement writes (a scheduling
    /// pass's, a cluster's reports, an agent's placements). etcd keeps
    /// its last raft entries in memory, one entry a commit, whatever their
    /// size: at least 5,000 (fixed in etcd 3.4, for followers to catch
    /// up) and up to `--snapshot-count` more. So the size of these commits
    /// sets etcd's memory. Full commits (127 writes, about 24 KB) held some
    /// 130 MB of entries in a million-task soak (etcd at 390 MiB); commits
    /// of 64 hold half that (etcd at 260 MiB), for about a tenth of the
    /// scale run's throughput (etcd spends more per commit than per
    /// write).
    pub const STREAM: Limits = Limits {
        ops: 64,
        bytes: MAX_COMMIT_BYTES,
    };
}

/// What one item adds to a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost<'a> {
    /// The key named when the item is too large (the first, if several).
    pub key: &'a str,
    pub ops: usize,
    pub bytes: usize,
}

impl<'a> Cost<'a> {
    /// The cost of one write.
    pub fn of(write: &'a Write) -> Self {
        Cost {
            key: &write.key,
            ops: 1,
            bytes: write.size(),
        }
    }
}

/// An item that no commit can hold, even alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} is too large for one commit: {size} {what}, limit {limit}")]
pub struct TooLarge {
    /// The item's key (see [`Cost::key`]).
    pub key: String,
    /// Which limit: `"bytes"` or `"writes"`.
    pub what: &'static str,
    pub size: usize,
    pub limit: usize,
}

/// A refused item and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused<T> {
    pub item: T,
    pub reason: TooLarge,
}

/// Items split into commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunks<T> {
    /// In the input's order, none empty, each within the limits.
    pub commits: Vec<Vec<T>>,
    /// The items too large for any commit, in the input's order.
    pub refused: Vec<Refused<T>>,
}

impl<T> Chunks<T> {
    /// The commits, or the first refusal if any item was too large.
    pub fn strict(self) -> Result<Vec<Vec<T>>, TooLarge> {
        match self.refused.into_iter().next() {
            Some(r) => Err(r.reason),
            None => Ok(self.commits),
        }
    }
}

/// Splits items, one write each, into commits within [`Limits::COMMIT`].
pub fn chunks<T>(items: impl IntoIterator<Item = T>, write: impl Fn(&T) -> &Write) -> Chunks<T> {
    chunks_within(items, Limits::COMMIT, |t| Cost::of(write(t)))
}

/// Splits items, one write each, into commits within [`Limits::STREAM`].
pub fn stream_chunks<T>(
    items: impl IntoIterator<Item = T>,
    write: impl Fn(&T) -> &Write,
) -> Chunks<T> {
    chunks_within(items, Limits::STREAM, |t| Cost::of(write(t)))
}

/// Splits items into commits within `limits`, greedily and in order: an item
/// starts a new commit only when it does not fit in the current one.
pub fn chunks_within<T>(
    items: impl IntoIterator<Item = T>,
    limits: Limits,
    cost: impl Fn(&T) -> Cost<'_>,
) -> Chunks<T> {
    let mut out = Chunks {
        commits: Vec::new(),
        refused: Vec::new(),
    };
    let mut current = Vec::new();
    let (mut ops, mut bytes) = (0usize, 0usize);
    for item in items {
        let c = cost(&item);
        let over = if c.bytes > limits.bytes {
            Some(("bytes", c.bytes, limits.bytes))
        } else if c.ops > limits.ops {
            Some(("writes", c.ops, limits.ops))
        } else {
            None
        };
        if let Some((what, size, limit)) = over {
            let reason = TooLarge {
                key: c.key.to_string(),
                what,
                size,
                limit,
            };
            out.refused.push(Refused { item, reason });
            continue;
        }
        if !current.is_empty() && (ops + c.ops > limits.ops || bytes + c.bytes > limits.bytes) {
            out.commits.push(std::mem::take(&mut current));
            (ops, bytes) = (0, 0);
        }
        ops += c.ops;
        bytes += c.bytes;
        current.push(item);
    }
    if !current.is_empty() {
        out.commits.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::Expect;

    fn put(i: usize, bytes: usize) -> Write {
        Write::put(format!("k{i}"), vec![0u8; bytes], Expect::Any)
    }

    #[test]
    fn the_stream_of_task_writes_goes_in_commits_of_64() {
        let writes: Vec<Write> = (0..200).map(|i| put(i, 50)).collect();
        let split = stream_chunks(writes, |w| w);
        let sizes: Vec<usize> = split.commits.iter().map(Vec::len).collect();
        assert_eq!(sizes, [64, 64, 64, 8]);
        // A write too large for any commit is still refused.
        let split = stream_chunks(vec![put(0, MAX_COMMIT_BYTES + 1)], |w| w);
        assert_eq!(split.refused.len(), 1);
    }

    #[test]
    fn an_empty_list_needs_no_commit() {
        let split = chunks(Vec::<Write>::new(), |w| w);
        assert!(split.commits.is_empty() && split.refused.is_empty());
    }

    #[test]
    fn the_count_limit_splits() {
        // 300 small writes: 127 + 127 + 46.
        let writes: Vec<Write> = (0..300).map(|i| put(i, 10)).collect();
        let split = chunks(writes, |w| w).strict().unwrap();
        let lens: Vec<usize> = split.iter().map(Vec::len).collect();
        assert_eq!(lens, [127, 127, 46]);
    }

    #[test]
    fn the_byte_limit_splits() {
        // Each write is 3 + 500_000 + 16 bytes: two fit in 1_400_000, not three.
        let writes: Vec<Write> = (0..5).map(|i| put(i, 500_000)).collect();
        let split = chunks(writes, |w| w).strict().unwrap();
        let lens: Vec<usize> = split.iter().map(Vec::len).collect();
        assert_eq!(lens, [2, 2, 1]);
    }

    #[test]
    fn a_write_too_large_alone_is_refused_by_key() {
        let writes = vec![put(0, 10), put(1, MAX_COMMIT_BYTES), put(2, 10)];
        let split = chunks(writes.clone(), |w| w);
        assert_eq!(split.commits, [vec![writes[0].clone(), writes[2].clone()]]);
        let reason = &split.refused[0].reason;
        assert_eq!(reason.key, "k1");
        assert_eq!(reason.what, "bytes");
        assert_eq!(reason.size, MAX_COMMIT_BYTES + 2 + 16);
        assert!(reason.to_string().contains("k1"), "{reason}");
        assert_eq!(chunks(writes, |w| w).strict().unwrap_err().key, "k1");
    }

    #[test]
    fn a_prefix_delete_is_one_write_without_a_value() {
        let w = Write::delete_prefix("jobs/web/");
        // 9 bytes of prefix, 9 of the range's end, 16 of framing; like a
        // single delete, no value.
        let cost = Cost::of(&w);
        assert_eq!(
            (cost.key, cost.ops, cost.bytes),
            ("jobs/web/", 1, 9 + 9 + 16)
        );
        assert_eq!(w.expect, Expect::Any);
        let deletes: Vec<Write> = (0..200)
            .map(|i| Write::delete_prefix(format!("jobs/{i}/")))
            .collect();
        let split = chunks(deletes, |w| w).strict().unwrap();
        let lens: Vec<usize> = split.iter().map(Vec::len).collect();
        assert_eq!(lens, [127, 73]);
    }

    #[test]
    fn an_item_of_too_many_writes_is_refused() {
        let limits = Limits { ops: 3, bytes: 100 };
        let split = chunks_within([2usize, 4, 1], limits, |n| Cost {
            key: "call",
            ops: *n,
            bytes: 0,
        });
        assert_eq!(split.commits, [vec![2, 1]]);
        assert_eq!(split.refused[0].item, 4);
        assert_eq!(split.refused[0].reason.what, "writes");
    }

    /// An item in the property tests: its position and its cost.
    #[derive(Debug, Clone, PartialEq)]
    struct Item {
        id: usize,
        ops: usize,
        bytes: usize,
    }

    fn items() -> impl Strategy<Value = (Limits, Vec<Item>)> {
        (1usize..20, 1usize..1000).prop_flat_map(|(max_ops, max_bytes)| {
            let item = (0..max_ops + 3, 0..max_bytes + max_bytes / 4 + 2);
            let list = proptest::collection::vec(item, 0..200).prop_map(|v| {
                v.into_iter()
                    .enumerate()
                    .map(|(id, (ops, bytes))| Item { id, ops, bytes })
                    .collect::<Vec<_>>()
            });
            (
                Just(Limits {
                    ops: max_ops,
                    bytes: max_bytes,
                }),
                list,
            )
        })
    }

    fn cost(i: &Item) -> Cost<'_> {
        Cost {
            key: "item",
            ops: i.ops,
            bytes: i.bytes,
        }
    }

    fn fits(i: &Item, limits: Limits) -> bool {
        i.ops <= limits.ops && i.bytes <= limits.bytes
    }

    proptest! {
        #[test]
        fn chunks_keep_limits_order_and_every_item((limits, items) in items()) {
            let split = chunks_within(items.clone(), limits, cost);
            for commit in &split.commits {
                prop_assert!(!commit.is_empty());
                prop_assert!(commit.iter().map(|i| i.ops).sum::<usize>() <= limits.ops);
                prop_assert!(commit.iter().map(|i| i.bytes).sum::<usize>() <= limits.bytes);
            }
            // Order kept, nothing lost or duplicated: the commits in turn are
            // exactly the items that fit, and the refused exactly the others.
            let kept: Vec<&Item> = split.commits.iter().flatten().collect();
            let fitting: Vec<&Item> = items.iter().filter(|i| fits(i, limits)).collect();
            prop_assert_eq!(kept, fitting);
            let refused: Vec<&Item> = split.refused.iter().map(|r| &r.item).collect();
            let oversize: Vec<&Item> = items.iter().filter(|i| !fits(i, limits)).collect();
            prop_assert_eq!(refused, oversize);
            for r in &split.refused {
                prop_assert!(r.reason.size > r.reason.limit);
            }
        }

        #[test]
        fn a_commit_is_closed_only_when_the_next_item_does_not_fit((limits, items) in items()) {
            let split = chunks_within(items, limits, cost);
            for pair in split.commits.windows(2) {
                let next = &pair[1][0];
                let ops: usize = pair[0].iter().map(|i| i.ops).sum();
                let bytes: usize = pair[0].iter().map(|i| i.bytes).sum();
                prop_assert!(ops + next.ops > limits.ops || bytes + next.bytes > limits.bytes);
            }
        }

        #[test]
        fn writes_chunk_within_the_store_limits(sizes in proptest::collection::vec(0usize..40_000, 0..400)) {
            let writes: Vec<Write> = sizes.iter().enumerate().map(|(i, b)| put(i, *b)).collect();
            let split = chunks(writes.clone(), |w| w).strict().unwrap();
            for commit in &split {
                prop_assert!(commit.len() <= MAX_OPS_PER_COMMIT);
                prop_assert!(commit.iter().map(Write::size).sum::<usize>() <= MAX_COMMIT_BYTES);
            }
            prop_assert_eq!(split.concat(), writes);
        }
    }
}
