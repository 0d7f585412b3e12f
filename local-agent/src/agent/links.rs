//! The work streams to node agents: what each node is told to start and
//! stop.
//!
//! Rules kept here:
//! - work for a node whose stream is not open yet waits in its backlog and
//!   goes out first when the stream opens;
//! - a node that does not read its stream (full) or whose stream closed is
//!   cut off: its work goes back to the backlog, and its next heartbeat asks
//!   it to register again ([`NodeLinks::stranded`]), which reopens the
//!   stream and resends the work;
//! - one message stays far below gRPC's 4 MiB limit, however long the
//!   commands: starts are split over several batches.

use std::collections::BTreeMap;

use prost::Message;
use sched_proto::pb;
use tokio::sync::mpsc;

/// The sending end of a node's work stream.
pub type WorkSender = mpsc::Sender<Result<pb::WorkBatch, tonic::Status>>;

/// Bytes of one work batch: a quarter of gRPC's default 4 MiB message
/// limit, so a batch is never refused by the node's decoder.
const MAX_BATCH_BYTES: usize = 1 << 20;

#[derive(Default)]
struct Link {
    work: Option<WorkSender>,
    /// Work for the node while no stream carries it.
    backlog: pb::WorkBatch,
}

#[derive(Default)]
pub struct NodeLinks {
    links: BTreeMap<String, Link>,
}

impl NodeLinks {
    /// A node registered: its old stream and backlog are gone (what it
    /// should run is worked out again from what it reports).
    pub fn reset(&mut self, node: &str) {
        self.links.insert(node.to_string(), Link::default());
    }

    /// A node was lost: no stream, nothing waiting.
    pub fn close(&mut self, node: &str) {
        if let Some(l) = self.links.get_mut(node) {
            l.work = None;
        }
    }

    /// Opens a registered node's stream, sending its backlog first. False
    /// if the node never registered.
    pub fn open(&mut self, node: &str, tx: WorkSender) -> bool {
        let Some(l) = self.links.get_mut(node) else {
            return false;
        };
        l.work = Some(tx);
        let backlog = std::mem::take(&mut l.backlog);
        Self::send(l, backlog);
        true
    }

    pub fn start(&mut self, node: &str, starts: Vec<pb::TaskStart>) {
        let Some(l) = self.links.get_mut(node) else {
            return;
        };
        Self::send(
            l,
            pb::WorkBatch {
                start: starts,
                ..Default::default()
            },
        );
    }

    /// Tells one node to stop and forget `jobs`.
    pub fn forget_on(&mut self, node: &str, jobs: Vec<String>) {
        let Some(l) = self.links.get_mut(node) else {
            return;
        };
        Self::send(
            l,
            pb::WorkBatch {
                forget_jobs: jobs,
                ..Default::default()
            },
        );
    }

    pub fn stop(&mut self, node: &str, stop: pb::TaskStop) {
        let Some(l) = self.links.get_mut(node) else {
            return;
        };
        Self::send(
            l,
            pb::WorkBatch {
                stop: vec![stop],
                ..Default::default()
            },
        );
    }

    /// Work waits for the node and no open stream can carry it.
    pub fn stranded(&self, node: &str) -> bool {
        self.links
            .get(node)
            .is_some_and(|l| l.work.as_ref().is_none_or(|w| w.is_closed()) && !is_empty(&l.backlog))
    }

    fn send(l: &mut Link, batch: pb::WorkBatch) {
        if is_empty(&batch) {
            return;
        }
        let Some(tx) = &l.work else {
            keep(&mut l.backlog, batch);
            return;
        };
        let mut parts = split(batch).into_iter();
        for part in parts.by_ref() {
            match tx.try_send(Ok(part)) {
                Ok(()) => {}
                Err(
                    mpsc::error::TrySendError::Full(Ok(b))
                    | mpsc::error::TrySendError::Closed(Ok(b)),
                ) => {
                    // The node is not reading: it gets everything again
                    // when it registers next.
                    l.work = None;
                    keep(&mut l.backlog, b);
                    break;
                }
                Err(_) => {
                    l.work = None;
                    break;
                }
            }
        }
        for b in parts {
            keep(&mut l.backlog, b);
        }
    }
}

fn is_empty(b: &pb::WorkBatch) -> bool {
    b.start.is_empty() && b.stop.is_empty() && b.forget_jobs.is_empty()
}

/// Adds `b` to a backlog. A node applies a batch's forgets first, so a
/// forget that arrives after starts of the job (a job deleted, then its
/// name used again) drops those starts from the backlog: they belonged to
/// the deleted job.
fn keep(backlog: &mut pb::WorkBatch, b: pb::WorkBatch) {
    for job in &b.forget_jobs {
        backlog.start.retain(|s| &s.job != job);
        backlog.stop.retain(|s| &s.job != job);
    }
    backlog.forget_jobs.extend(b.forget_jobs);
    backlog.stop.extend(b.stop);
    backlog.start.extend(b.start);
}

/// Splits a batch into batches of at most [`MAX_BATCH_BYTES`] (stops
/// first, in the first batch).
fn split(batch: pb::WorkBatch) -> Vec<pb::WorkBatch> {
    if batch.encoded_len() <= MAX_BATCH_BYTES {
        return vec![batch];
    }
    let mut out = Vec::new();
    let mut current = pb::WorkBatch {
        start: Vec::new(),
        stop: batch.stop,
        forget_jobs: batch.forget_jobs,
    };
    let mut bytes = current.encoded_len();
    for s in batch.start {
        // The field's tag and length prefix: a few bytes more than the
        // message.
        let size = s.encoded_len() + 8;
        if bytes + size > MAX_BATCH_BYTES && !is_empty(&current) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.start.push(s);
    }
    if !is_empty(&current) {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(index: u32, command_bytes: usize) -> pb::TaskStart {
        pb::TaskStart {
            job: "web".into(),
            index,
            machine: "m0".into(),
            command: vec!["x".repeat(command_bytes)],
            request: None,
            attempt: 1,
            cluster: "east-a".into(),
            gpus: Vec::new(),
        }
    }

    fn stop(index: u32) -> pb::TaskStop {
        pb::TaskStop {
            job: "web".into(),
            index,
            machine: "m0".into(),
        }
    }

    #[test]
    fn work_waits_for_the_stream_and_goes_out_when_it_opens() {
        let mut links = NodeLinks::default();
        links.reset("n0");
        links.start("n0", vec![start(0, 4)]);
        links.stop("n0", stop(1));
        // No stream yet: stranded, so its heartbeat asks it to register.
        assert!(links.stranded("n0"));
        let (tx, mut rx) = mpsc::channel(8);
        assert!(links.open("n0", tx));
        assert!(!links.stranded("n0"));
        let b = rx.try_recv().unwrap().unwrap();
        assert_eq!((b.start.len(), b.stop.len()), (1, 1));
        links.start("n0", vec![start(2, 4)]);
        assert_eq!(rx.try_recv().unwrap().unwrap().start[0].index, 2);
    }

    #[test]
    fn an_unknown_node_gets_no_stream() {
        let mut links = NodeLinks::default();
        let (tx, _rx) = mpsc::channel(1);
        assert!(!links.open("n9", tx));
        links.start("n9", vec![start(0, 4)]);
        assert!(!links.stranded("n9"));
    }

    #[test]
    fn a_node_that_does_not_read_is_cut_off_and_keeps_its_work() {
        let mut links = NodeLinks::default();
        links.reset("n0");
        let (tx, mut rx) = mpsc::channel(1);
        links.open("n0", tx);
        links.start("n0", vec![start(0, 4)]);
        // The buffer is full: the second batch waits in the backlog.
        links.start("n0", vec![start(1, 4)]);
        assert!(links.stranded("n0"));
        assert_eq!(rx.try_recv().unwrap().unwrap().start[0].index, 0);
        // Registering again starts afresh.
        links.reset("n0");
        assert!(!links.stranded("n0"));
    }

    #[test]
    fn a_closed_stream_keeps_the_work_for_the_next_one() {
        let mut links = NodeLinks::default();
        links.reset("n0");
        let (tx, rx) = mpsc::channel(8);
        links.open("n0", tx);
        drop(rx);
        links.stop("n0", stop(3));
        assert!(links.stranded("n0"));
        let (tx, mut rx) = mpsc::channel(8);
        links.open("n0", tx);
        assert_eq!(rx.try_recv().unwrap().unwrap().stop[0].index, 3);
    }

    #[test]
    fn long_commands_are_sent_in_several_batches_under_the_limit() {
        let mut links = NodeLinks::default();
        links.reset("n0");
        let (tx, mut rx) = mpsc::channel(64);
        links.open("n0", tx);
        // 400 starts of ~11 KB each: about 4.4 MB in all.
        links.start("n0", (0..400).map(|i| start(i, 11_000)).collect());
        let mut indices = Vec::new();
        while let Ok(b) = rx.try_recv() {
            let b = b.unwrap();
            assert!(b.encoded_len() <= MAX_BATCH_BYTES, "{}", b.encoded_len());
            indices.extend(b.start.iter().map(|s| s.index));
        }
        assert_eq!(indices, (0..400).collect::<Vec<_>>());
    }
}
