//! Writers of new jobs: a few tasks that take accepted submissions from a
//! bounded queue and group-commit them, many calls per transaction (split by
//! `sched_store::batch`, each job key guarded by `Absent`), answering each
//! call once all of its jobs are in etcd. A call's jobs enter the state
//! together, so a scheduling pass sees a whole submission or none of it.
//!
//! Several writers keep several transactions in flight: etcd's commit
//! latency, not our CPU, bounds one writer, and job creations are
//! independent of each other and of what the engine writes.

use std::collections::VecDeque;
use std::sync::Arc;

use sched_store::batch::{self, Cost, Limits};
use sched_store::{Expect, Store, StoreError, Write, MAX_OPS_PER_COMMIT};
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use crate::error::ServiceError;
use crate::hub::{Reply, Shared, Submission};
use crate::records::JobRecord;
use crate::state::admission::{check_same_spec, job_write};
use crate::state::EventKind;

/// Transactions in flight at once. etcd here sustains about 1.4x the
/// throughput with 4 transactions in flight than with 1 (see the submit
/// benchmark); more adds little on a small machine.
pub const WRITERS: usize = 4;

pub struct Submitter {
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    rx: Arc<Mutex<mpsc::Receiver<Submission>>>,
}

impl Submitter {
    /// `WRITERS` submitters sharing one queue.
    pub fn pool(
        shared: Arc<Shared>,
        store: Arc<dyn Store>,
        rx: mpsc::Receiver<Submission>,
    ) -> Vec<Submitter> {
        let rx = Arc::new(Mutex::new(rx));
        (0..WRITERS)
            .map(|_| Submitter {
                shared: shared.clone(),
                store: store.clone(),
                rx: rx.clone(),
            })
            .collect()
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            // Take what is queued, up to one transaction's worth of jobs.
            let batch = {
                let mut rx = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    rx = self.rx.lock() => rx,
                };
                let first = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    s = rx.recv() => match s {
                        Some(s) => s,
                        None => return,
                    },
                };
                let mut ops = first.records.len();
                let mut batch = vec![first];
                while ops < MAX_OPS_PER_COMMIT {
                    match rx.try_recv() {
                        Ok(s) => {
                            ops += s.records.len();
                            batch.push(s);
                        }
                        Err(_) => break,
                    }
                }
                batch
            };
            self.submit(batch).await;
            self.shared.wake.notify_one();
        }
    }

    /// Group commit: the jobs of many submit calls in as few transactions
    /// as the limits allow; a call is answered once all its jobs are in.
    async fn submit(&self, submits: Vec<Submission>) {
        // A name in two calls of one round: a retry of the same submission
        // (the client gave up waiting and called again) is answered once
        // the first is in; another submission loses, as it would have a
        // moment later.
        let mut seen: std::collections::BTreeMap<String, JobRecord> = Default::default();
        let mut accepted = Vec::with_capacity(submits.len());
        let mut retries = Vec::new();
        for Submission { records, reply } in submits {
            if records.iter().any(|r| seen.contains_key(&r.name)) {
                match retry_of(&seen, &records) {
                    Ok(()) => retries.push((records, reply)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
                continue;
            }
            seen.extend(records.iter().map(|r| (r.name.clone(), r.clone())));
            accepted.push((records, reply));
        }
        self.submit_round(accepted).await;
        // After the first attempts: each retry finds its jobs there (same
        // submission id) and succeeds without writing them twice.
        for (records, reply) in retries {
            let _ = reply.send(self.submit_one(records).await);
        }
    }

    async fn submit_round(&self, accepted: Vec<(Vec<JobRecord>, Reply<()>)>) {
        let keys = self.shared.read(|s| s.keys().clone());
        let calls: Vec<(Vec<JobRecord>, Vec<Write>, Reply<()>)> = accepted
            .into_iter()
            .filter(|(records, _)| !records.is_empty())
            .map(|(records, reply)| {
                let writes = records.iter().map(|r| job_write(&keys, r)).collect();
                (records, writes, reply)
            })
            .collect();
        // Whole calls packed into commits; a call too large for one commit
        // is written alone, in as many as it needs.
        let split = batch::chunks_within(calls, Limits::COMMIT, |(_, w, _)| Cost {
            key: w.first().map_or("", |w| w.key.as_str()),
            ops: w.len(),
            bytes: w.iter().map(Write::size).sum(),
        });
        for r in split.refused {
            let (records, _, reply) = r.item;
            let _ = reply.send(self.submit_one(records).await);
        }
        for mut group in split.commits {
            if group.len() == 1 {
                let (records, _, reply) = group.pop().expect("one call");
                let _ = reply.send(self.submit_one(records).await);
                continue;
            }
            let writes: Vec<Write> = group
                .iter()
                .flat_map(|(_, w, _)| w.iter().cloned())
                .collect();
            match self.store.commit(&writes).await {
                Ok(rev) => {
                    for (records, _, reply) in group {
                        self.accept(vec![(records, rev)]);
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(StoreError::Conflict { .. }) => {
                    // Someone else holds one of the names: commit call by
                    // call to find out whose.
                    for (records, _, reply) in group {
                        let _ = reply.send(self.submit_one(records).await);
                    }
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "cannot persist submissions");
                    for (_, _, reply) in group {
                        let _ = reply.send(Err(e.clone().into()));
                    }
                }
            }
        }
    }

    /// One call's jobs, in as many commits as it needs; they enter the
    /// state together once all are in. All or none: on an error, the
    /// jobs this call wrote are deleted again (and, if even that fails,
    /// taken into the state as they are in the store, so that the two
    /// agree).
    async fn submit_one(&self, records: Vec<JobRecord>) -> Result<(), ServiceError> {
        let mut committed: Vec<(Vec<JobRecord>, i64)> = Vec::new();
        let mut written: Vec<(String, i64)> = Vec::new();
        let result = self.write_all(records, &mut committed, &mut written).await;
        if result.is_err() && !written.is_empty() {
            let undo: Vec<Write> = written
                .iter()
                .map(|(key, rev)| Write::delete(key.clone(), Expect::ModRevision(*rev)))
                .collect();
            let mut undone = true;
            for chunk in undo.chunks(MAX_OPS_PER_COMMIT) {
                if let Err(e) = self.store.commit(chunk).await {
                    tracing::warn!(cause = %e, "cannot take back a refused submission's jobs");
                    undone = false;
                    break;
                }
            }
            if undone {
                return result;
            }
        }
        self.accept(committed);
        result
    }

    async fn write_all(
        &self,
        records: Vec<JobRecord>,
        committed: &mut Vec<(Vec<JobRecord>, i64)>,
        written: &mut Vec<(String, i64)>,
    ) -> Result<(), ServiceError> {
        let keys = self.shared.read(|s| s.keys().clone());
        let mut todo: VecDeque<JobRecord> = records.into();
        'split: while !todo.is_empty() {
            let with_writes = todo.drain(..).map(|r| {
                let w = job_write(&keys, &r);
                (r, w)
            });
            // Records were size-checked at admission; a refusal here is
            // still an answer, not a retry.
            let chunks = batch::chunks(with_writes, |(_, w)| w)
                .strict()
                .map_err(|e| sched_core::error::SpecError::new("jobs", e.to_string()))?;
            let mut chunks = chunks.into_iter();
            while let Some(chunk) = chunks.next() {
                let (mut chunk, writes): (Vec<JobRecord>, Vec<Write>) = chunk.into_iter().unzip();
                match self.store.commit(&writes).await {
                    Ok(rev) => {
                        written.extend(writes.into_iter().map(|w| (w.key, rev)));
                        committed.push((chunk, rev));
                    }
                    Err(StoreError::Conflict { key, .. }) => {
                        // Either an earlier attempt of this very submission
                        // got in (its answer was lost), or the name is taken.
                        let Some(i) = chunk.iter().position(|r| keys.job(&r.name) == key) else {
                            return Err(StoreError::Conflict {
                                key,
                                expected: Expect::Absent,
                                actual: None,
                            }
                            .into());
                        };
                        let mine = chunk.remove(i);
                        let theirs: Option<(JobRecord, i64)> =
                            self.store.get(&key).await?.and_then(|kv| {
                                Some((serde_json::from_slice(&kv.value).ok()?, kv.mod_revision))
                            });
                        match theirs {
                            Some((t, rev))
                                if !mine.submission_id.is_empty()
                                    && t.submission_id == mine.submission_id =>
                            {
                                check_same_spec(&t, &mine, "jobs")?;
                                committed.push((vec![t], rev));
                                todo.extend(chunk);
                                todo.extend(chunks.flatten().map(|(r, _)| r));
                                continue 'split;
                            }
                            _ => return Err(name_taken(&mine.name)),
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Applies committed job records, all under one lock.
    fn accept(&self, committed: Vec<(Vec<JobRecord>, i64)>) {
        if committed.is_empty() {
            return;
        }
        self.shared.write(|state| {
            for (records, rev) in committed {
                for r in records {
                    let (name, tasks) = (r.name.clone(), r.tasks);
                    state.insert_job(r, rev);
                    state.push_job_event(
                        &name,
                        EventKind::Submitted,
                        format!("accepted with {tasks} task(s)"),
                    );
                }
            }
        });
    }
}

/// ALREADY_EXISTS for job `name`.
fn name_taken(name: &str) -> ServiceError {
    ServiceError::AlreadyExists(sched_core::error::SpecError::new(
        "jobs.name",
        format!("a job named {name:?} already exists"),
    ))
}

/// Whether a call whose names overlap calls already in this round
/// (`seen`) is a retry of one of them (same submission id, same specs),
/// to be answered once that is in; an error otherwise.
fn retry_of(
    seen: &std::collections::BTreeMap<String, JobRecord>,
    records: &[JobRecord],
) -> Result<(), ServiceError> {
    for r in records {
        let Some(first) = seen.get(&r.name) else {
            continue;
        };
        if r.submission_id.is_empty() || first.submission_id != r.submission_id {
            return Err(ServiceError::AlreadyExists(
                sched_core::error::SpecError::new(
                    "jobs.name",
                    format!(
                        "a job named {:?} is being submitted by another call",
                        r.name
                    ),
                ),
            ));
        }
        check_same_spec(first, r, "jobs")?;
    }
    Ok(())
}
