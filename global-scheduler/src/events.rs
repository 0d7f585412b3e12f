//! Job events in the store: the leader's event writer, reading them back,
//! and the errors of a watch that cannot resume.
//!
//! Events are written in batches, not one commit per event nor per task:
//! the writer wakes when events are recorded, waits [`GATHER`] for more, and
//! commits all of them (one key per event, `P/events/<job>/<cursor>`, plus
//! the deletes of those a job's history dropped and the [`Marks`]) in as few
//! commits as etcd's limits allow, usually one. A busy scheduler thus adds
//! about one commit per [`GATHER`] plus commit time, however many tasks
//! change. A job's event keys go in the same commit as the job's delete
//! ([`State::delete_writes`](crate::state::State::delete_writes)).
//!
//! Watchers get an event only after its batch is stored (see
//! [`state::history`](crate::state::history)); events recorded by a leader
//! that dies before storing them are lost for everyone alike, and cursors
//! never go back (the marks).

use std::sync::Arc;
use std::time::Duration;

use sched_store::batch::{self, Cost, Limits};
use sched_store::{Expect, Store, StoreError, Write};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::event::Event;
use crate::hub::Shared;
use crate::keys::Keys;
use crate::state::history::{Batch, ResumeError};

/// How long the writer waits for more events before a commit.
pub const GATHER: Duration = Duration::from_millis(10);

/// The `google.rpc.ErrorInfo` reason of a watch cursor older than the
/// history kept (Kubernetes answers 410 Gone there).
pub const EXPIRED_REASON: &str = "EXPIRED";

/// Kept beside the events: cursors go on from `next`, and a watch from
/// before `dropped` cannot resume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks {
    pub next: u64,
    pub dropped: u64,
}

/// One event as stored (the job and cursor are in its key).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    unix_ms: i64,
    kind: String,
    message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tasks: Vec<u32>,
}

/// Reads the stored events back (every job's, or job `only`'s) and the
/// marks. An event this version cannot read is skipped with a warning: the
/// history is informative, never worth refusing to lead over.
pub async fn load(
    keys: &Keys,
    store: &Arc<dyn Store>,
    only: Option<&str>,
) -> Result<(Vec<Event>, Marks), StoreError> {
    let prefix = match only {
        Some(job) => keys.job_events(job),
        None => keys.events(),
    };
    let items = store.list(&prefix).await?.items;
    let mut events = Vec::with_capacity(items.len());
    for kv in items {
        match parse(keys, &kv.key, &kv.value) {
            Some(e) => events.push(e),
            None => tracing::warn!(key = %kv.key, "not an event record; skipped"),
        }
    }
    let marks = match store.get(&keys.event_marks()).await? {
        Some(kv) => serde_json::from_slice(&kv.value).unwrap_or_else(|e| {
            tracing::warn!(cause = %e, "event marks unreadable; going on from the events");
            Marks::default()
        }),
        None => Marks::default(),
    };
    Ok((events, marks))
}

fn parse(keys: &Keys, key: &str, value: &[u8]) -> Option<Event> {
    let (job, cursor) = keys.parse_event(key)?;
    let s: Stored = serde_json::from_slice(value).ok()?;
    let mut e = Event::new(job, s.kind.parse().ok()?, s.message);
    e.unix_ms = s.unix_ms;
    e.cursor = cursor;
    e.tasks = s.tasks;
    Some(e)
}

fn value_of(e: &Event) -> Vec<u8> {
    serde_json::to_vec(&Stored {
        unix_ms: e.unix_ms,
        kind: e.kind.as_str().to_string(),
        message: e.message.clone(),
        tasks: e.tasks.clone(),
    })
    .expect("events serialize: plain strings and integers")
}

/// The writes of a batch, in commits: first the deletes of whole jobs (a
/// commit may not put a key under a prefix it deletes), then the puts and
/// single deletes; each commit ends with the marks.
fn commits(keys: &Keys, b: &Batch) -> Vec<Vec<Write>> {
    let marks = serde_json::to_vec(&Marks {
        next: b.next,
        dropped: b.dropped,
    })
    .expect("marks serialize: two integers");
    let marks = Write::put(keys.event_marks(), marks, Expect::Any);
    let room = Limits {
        ops: Limits::COMMIT.ops - 1,
        bytes: Limits::COMMIT.bytes - marks.size(),
    };
    let mut out = Vec::new();
    let mut split = |writes: Vec<Write>| {
        let chunks = batch::chunks_within(writes, room, |w| Cost::of(w));
        for r in &chunks.refused {
            tracing::warn!(cause = %r.reason, "event too large to store; kept in memory only");
        }
        for mut c in chunks.commits {
            c.push(marks.clone());
            out.push(c);
        }
    };
    let had_gone = !b.gone.is_empty();
    if had_gone {
        split(
            b.gone
                .iter()
                .map(|j| Write::delete_prefix(keys.job_events(j)))
                .collect(),
        );
    }
    let mut writes: Vec<Write> = b
        .delete
        .iter()
        .map(|(j, c)| Write::delete(keys.event(j, *c), Expect::Any))
        .collect();
    writes.extend(
        b.put
            .iter()
            .map(|e| Write::put(keys.event(&e.job, e.cursor), value_of(e), Expect::Any)),
    );
    // A key deleted and put in one batch cannot be (a trimmed event is
    // never put again); still, keep each key once.
    writes.sort_by(|a, b| a.key.cmp(&b.key));
    writes.dedup_by(|a, b| a.key == b.key);
    if !writes.is_empty() || !had_gone {
        split(writes);
    }
    out
}

/// The leader's event writer: stores recorded events in batches until
/// `stop`, then once more (so a leader stepping down keeps what it can).
pub async fn run(shared: Arc<Shared>, store: Arc<dyn Store>, stop: CancellationToken) {
    let keys = shared.read(|s| s.keys().clone());
    let wake = shared.read(|s| s.events().wake());
    let mut backoff = Duration::from_millis(50);
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = wake.notified() => false,
        };
        if !stopping {
            // More events usually follow the first (a pass, a report).
            tokio::time::sleep(GATHER).await;
        }
        while let Some(b) = shared.write(|s| s.events().has_batch().then(|| s.take_batch())) {
            match write(&keys, &store, &b).await {
                Ok(()) => {
                    backoff = Duration::from_millis(50);
                    shared.write(|s| s.batch_stored());
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "cannot store job events; retrying");
                    shared.write(|s| s.batch_failed(b));
                    if stopping || matches!(e, StoreError::Fenced(_)) {
                        return;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        if stopping {
            return;
        }
    }
}

async fn write(keys: &Keys, store: &Arc<dyn Store>, b: &Batch) -> Result<(), StoreError> {
    for c in commits(keys, b) {
        store.commit(&c).await?;
    }
    Ok(())
}

/// The status a watch that cannot resume ends with.
pub fn resume_status(e: ResumeError) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let message = e.to_string();
    match e {
        ResumeError::NotFound(_) => tonic::Status::not_found(message),
        ResumeError::Expired { since, dropped, .. } => {
            let metadata: std::collections::HashMap<String, String> = [
                ("since".to_string(), since.to_string()),
                ("dropped".to_string(), dropped.to_string()),
            ]
            .into_iter()
            .collect();
            tonic::Status::with_error_details(
                tonic::Code::FailedPrecondition,
                message,
                ErrorDetails::with_error_info(EXPIRED_REASON, "clustersched.v1", metadata),
            )
        }
        ResumeError::Ahead { .. } => {
            let details = ErrorDetails::with_bad_request_violation(
                "since",
                "ahead of the newest event's cursor",
            );
            tonic::Status::with_error_details(tonic::Code::OutOfRange, message, details)
        }
    }
}

/// A watch stream's sender: the replayed events, then live ones of `job`
/// (every job when empty) that `visible` lets through, each once, in cursor
/// order. Ends with UNAVAILABLE when the server stops leading (shutdown or
/// lost leadership) or the watcher falls behind: the client resumes with
/// the last cursor it got, on whichever replica leads.
pub async fn follow(
    job: String,
    replay: Vec<Event>,
    mut rx: tokio::sync::broadcast::Receiver<Event>,
    visible: impl Fn(&str) -> bool + Send + 'static,
    tx: tokio::sync::mpsc::Sender<Result<sched_proto::pb::Event, tonic::Status>>,
    stop: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut last = 0;
    for e in replay {
        last = e.cursor;
        if visible(&e.job) && tx.send(Ok(crate::convert::to_pb_event(&e))).await.is_err() {
            return;
        }
    }
    let end = loop {
        let e = tokio::select! {
            _ = stop.cancelled() => break "the scheduler stopped leading".to_string(),
            _ = tx.closed() => return,
            r = rx.recv() => match r {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    break format!("the watcher fell behind by {n} event(s)")
                }
                Err(RecvError::Closed) => break "the scheduler stopped leading".to_string(),
            },
        };
        if e.cursor <= last || !(job.is_empty() || e.job == job) || !visible(&e.job) {
            continue;
        }
        last = e.cursor;
        if tx.send(Ok(crate::convert::to_pb_event(&e))).await.is_err() {
            return;
        }
    };
    let resume = if last > 0 {
        format!("watch again with since={last}")
    } else {
        "watch again".to_string()
    };
    let _ = tx
        .send(Err(tonic::Status::unavailable(format!("{end}; {resume}"))))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    #[test]
    fn events_round_trip_through_their_keys() {
        let keys = Keys::new("/p");
        let mut e =
            Event::new("web", EventKind::Placed, "2 task(s) placed".into()).with_tasks(vec![3, 1]);
        e.cursor = 42;
        let back = parse(&keys, &keys.event("web", 42), &value_of(&e)).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.tasks, vec![1, 3]);
    }

    #[test]
    fn a_batch_deletes_whole_jobs_first_and_ends_each_commit_with_the_marks() {
        let keys = Keys::new("/p");
        let mut e = Event::new("new", EventKind::Submitted, "x".into());
        e.cursor = 9;
        let b = Batch {
            put: vec![e],
            delete: vec![("old".into(), 3)],
            gone: vec!["gone".into()],
            next: 10,
            dropped: 3,
        };
        let c = commits(&keys, &b);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0][0], Write::delete_prefix("/p/events/gone/"));
        assert_eq!(c[1].len(), 3);
        assert_eq!(c[1][2].key, "/p/event-marks");
        let marks: Marks = match &c[1][2].op {
            sched_store::Op::Put(v) => serde_json::from_slice(v).unwrap(),
            _ => panic!("marks are a put"),
        };
        assert_eq!(
            marks,
            Marks {
                next: 10,
                dropped: 3
            }
        );
    }
}
