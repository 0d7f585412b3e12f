//! Jobs coming in: submissions checked against the world, accepted jobs
//! added, and the whole state read back from the store after a restart.

use std::collections::BTreeMap;

use sched_core::error::SpecError;
use sched_core::job::{Job, JobId, JobSpec};
use sched_store::{KeyValue, Revision, Write, MAX_COMMIT_BYTES};

use super::transitions::release;
use super::{EventKind, JobEntry, State, TaskEntry};
use crate::error::ServiceError;
use crate::keys::{Keys, TaskKey};
use crate::records::{AssignmentRecord, JobRecord, TaskRecord, TaskState};

/// The store's records could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct LoadError {
    pub key: String,
    pub reason: String,
}

impl State {
    /// Checks specs (already validated one by one) against the world: names
    /// free (or taken by this very submission, on a retry), locations
    /// known, some machine large enough, the record small enough for one
    /// store commit. Returns the records to create; jobs a retry already
    /// created are left out.
    pub fn check_submission(
        &self,
        specs: Vec<JobSpec>,
        submission_id: &str,
        now_ms: i64,
    ) -> Result<Vec<JobRecord>, ServiceError> {
        let world = self.registry.world();
        let mut out = Vec::with_capacity(specs.len());
        for (i, mut spec) in specs.into_iter().enumerate() {
            let field = format!("jobs[{i}]");
            spec.resolve_band(&self.policy.priority, &field)?;
            if spec.command.is_empty() {
                return Err(ServiceError::Invalid(SpecError::new(
                    format!("{field}.command"),
                    "is required: the program to run and its arguments, such as [\"sh\", \"-c\", \"echo hi\"]",
                )));
            }
            if let Some(existing) = self.jobs.get(&spec.name) {
                if submission_id.is_empty() || existing.record.submission_id != submission_id {
                    return Err(ServiceError::AlreadyExists(SpecError::new(
                        format!("{field}.name"),
                        format!("a job named {:?} already exists", spec.name),
                    )));
                }
                // A retry of this very submission: fine if it asks for
                // the same job, refused if the id was reused for another.
                let asked = job_record(spec, submission_id, existing.record.submitted_unix_ms);
                check_same_spec(&existing.record, &asked, &field)?;
                continue;
            }
            let spec = if world.clusters.iter().all(|c| c.classes.is_empty()) {
                // No cluster has reported a machine yet: nothing to size
                // against; the location must still be one the topology
                // names.
                if let Some(l) = &spec.locality {
                    if world.locality.id(l).is_none() {
                        return Err(ServiceError::Invalid(SpecError::new(
                            format!("{field}.locality"),
                            format!(
                                "unknown location {l:?} (known: {})",
                                world.locality.names().join(", ")
                            ),
                        )));
                    }
                }
                spec
            } else {
                spec.resolve(JobId(0), world, &field)?.spec
            };
            let record = job_record(spec, submission_id, now_ms);
            check_size(&self.keys, &record, &field)?;
            out.push(record);
        }
        Ok(out)
    }

    /// Adds a job whose key was written at `rev`; its tasks are pending.
    pub fn insert_job(&mut self, record: JobRecord, rev: Revision) {
        let name = record.name.clone();
        if self.jobs.contains_key(&name) {
            return;
        }
        let tasks = record.tasks;
        let job = Job {
            id: JobId(self.next_id),
            locality: record
                .locality
                .as_deref()
                .and_then(|l| self.registry.locality().id(l)),
            spec: spec_of(&record),
        };
        self.next_id += 1;
        let mut task = TaskEntry::pending();
        if record.cancelled {
            // Never placed when the job was cancelled.
            task.state = TaskState::Cancelled;
        } else {
            self.queue.add_job(job.id, record.priority, tasks);
        }
        let open = if record.cancelled { 0 } else { tasks };
        self.names.insert(job.id, name.clone());
        // Its history as stored, when the state is read back.
        let (events, events_dropped) = self.log.take_loaded(&name);
        self.jobs.insert(
            name,
            JobEntry {
                job,
                record,
                rev,
                tasks: vec![task; tasks as usize],
                events,
                events_dropped,
                open,
                finished_at: None,
                assignments: BTreeMap::new(),
                next_assignment: 1,
            },
        );
    }

    /// Rebuilds jobs and tasks from store snapshots (after a restart).
    pub fn load(&mut self, jobs: &[KeyValue], tasks: &[KeyValue]) -> Result<(), LoadError> {
        let mut records: Vec<(JobRecord, Revision, Revision)> = Vec::with_capacity(jobs.len());
        for kv in jobs {
            let r: JobRecord = serde_json::from_slice(&kv.value).map_err(|e| LoadError {
                key: kv.key.clone(),
                reason: format!("not a job record: {e}"),
            })?;
            records.push((r, kv.mod_revision, kv.create_revision));
        }
        // Submission order, as the ids were first given.
        records.sort_by_key(|r| r.2);
        for (r, rev, _) in records {
            let name = r.name.clone();
            self.insert_job(r, rev);
            self.push_job_event(
                &name,
                EventKind::Recovered,
                "state read back from the store after a scheduler start".to_string(),
            );
        }
        self.log.loaded_done();
        self.queue.mark_rescan();
        self.load_tasks(tasks)?;
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        for name in names {
            self.recount(&name);
        }
        Ok(())
    }

    /// Recomputes a job's unfinished tasks, and when it finished, after its
    /// tasks were read back.
    fn recount(&mut self, name: &str) {
        let Some(j) = self.jobs.get_mut(name) else {
            return;
        };
        j.open = j.tasks.iter().filter(|t| !t.state.is_final()).count() as u32;
        j.finished_at = (j.open == 0).then(|| {
            j.tasks
                .iter()
                .filter_map(|t| t.ended)
                .max()
                .unwrap_or_else(crate::records::now_unix_ms)
        });
    }

    /// Takes in the keys under `P/tasks/`: each task's own key, then the
    /// assignment records, oldest first, each for the tasks whose key is
    /// older than it.
    fn load_tasks(&mut self, tasks: &[KeyValue]) -> Result<(), LoadError> {
        let mut records: Vec<(&str, u32, AssignmentRecord, Revision)> = Vec::new();
        for kv in tasks {
            let (job, index) = match self.keys.parse_under_tasks(&kv.key) {
                Some((job, TaskKey::Task(index))) => (job, index),
                Some((job, TaskKey::Assignment(n))) => {
                    let r: AssignmentRecord =
                        serde_json::from_slice(&kv.value).map_err(|e| LoadError {
                            key: kv.key.clone(),
                            reason: format!("not an assignment record: {e}"),
                        })?;
                    let n = u32::try_from(n).map_err(|_| LoadError {
                        key: kv.key.clone(),
                        reason: "assignment number out of range".to_string(),
                    })?;
                    records.push((job, n, r, kv.mod_revision));
                    continue;
                }
                None => {
                    return Err(LoadError {
                        key: kv.key.clone(),
                        reason: "not a task key".to_string(),
                    })
                }
            };
            let r: TaskRecord = serde_json::from_slice(&kv.value).map_err(|e| LoadError {
                key: kv.key.clone(),
                reason: format!("not a task record: {e}"),
            })?;
            let entry = self.entry_of(&r, kv.mod_revision);
            if !self.settle_loaded(job, index, entry) {
                tracing::warn!(key = %kv.key, "task of an unknown job or out of range; ignored");
            }
        }
        records.sort_by_key(|r| r.3);
        for (job, n, r, rev) in records {
            let cluster = self.registry.id(&r.cluster);
            let Some(j) = self.jobs.get_mut(job) else {
                tracing::warn!(job, n, "assignment record of an unknown job; ignored");
                continue;
            };
            j.next_assignment = j.next_assignment.max(n.saturating_add(1));
            let mut stands = 0u32;
            for index in r.indices() {
                let Some(j) = self.jobs.get(job) else { break };
                let Some(t) = j.tasks.get(index as usize) else {
                    continue;
                };
                if t.rev > rev || t.arev > rev {
                    continue;
                }
                let mut entry = t.assigned_to(cluster);
                let before = entry.assignment;
                (entry.assignment, entry.arev) = (n, rev);
                self.settle_loaded(job, index, entry);
                if let Some(j) = self.jobs.get_mut(job) {
                    release(
                        &mut j.assignments,
                        before,
                        &self.keys,
                        job,
                        &mut self.garbage,
                    );
                }
                stands += 1;
            }
            if let Some(j) = self.jobs.get_mut(job) {
                if stands == 0 {
                    self.garbage.push(self.keys.assignment(job, u64::from(n)));
                } else {
                    j.assignments.insert(n, stands);
                }
            }
        }
        Ok(())
    }

    /// Puts a task read back in its place, with the queue to match; false
    /// if its job or index is unknown.
    fn settle_loaded(&mut self, job: &str, index: u32, mut entry: TaskEntry) -> bool {
        let Some(j) = self.jobs.get_mut(job) else {
            return false;
        };
        let Some(t) = j.tasks.get_mut(index as usize) else {
            return false;
        };
        let (id, priority, cancelled) = (j.job.id, j.record.priority, j.record.cancelled);
        // A cancel writes only the job: what had not reached a machine
        // then is cancelled.
        if cancelled && !entry.state.is_final() && !entry.state.is_on_machine() {
            entry.state = TaskState::Cancelled;
        }
        *t = entry.clone();
        self.queue.remove(id, index);
        self.waiting.retain(|w| (w.1, w.2) != (id, index));
        if entry.state == TaskState::Pending {
            self.enqueue(id, priority, index, &entry, false);
        }
        true
    }

    /// Replaces one job's tasks with what the store holds (after another
    /// writer changed them).
    pub fn reload_tasks(&mut self, job: &str, items: &[KeyValue]) -> Result<(), LoadError> {
        let Some(j) = self.jobs.get_mut(job) else {
            return Ok(());
        };
        let mut fresh = TaskEntry::pending();
        if j.record.cancelled {
            fresh.state = TaskState::Cancelled;
        }
        let n = j.tasks.len();
        let before = std::mem::replace(&mut j.tasks, vec![fresh; n]);
        j.assignments.clear();
        let (id, priority, tasks) = (j.job.id, j.record.priority, j.record.tasks);
        self.queue.remove_job(id);
        self.waiting.retain(|w| w.1 != id);
        if !j.record.cancelled {
            self.queue.add_job(id, priority, tasks);
        }
        self.load_tasks(items)?;
        // Progress on machines is in memory only: where the stored version
        // is the one it came from (the same revisions, still `assigned`
        // there), it stands.
        if let Some(j) = self.jobs.get_mut(job) {
            for (t, old) in j.tasks.iter_mut().zip(before) {
                if old.version() != (0, 0)
                    && old.version() == t.version()
                    && old.state.is_on_machine()
                    && t.state == TaskState::Assigned
                    && old.cluster == t.cluster
                {
                    *t = old;
                }
            }
        }
        self.recount(job);
        Ok(())
    }
}

/// The write that creates a job's key.
pub fn job_write(keys: &Keys, r: &JobRecord) -> Write {
    let value = serde_json::to_vec(r).expect("job records serialize: strings and integers");
    Write::put(keys.job(&r.name), value, sched_store::Expect::Absent)
}

/// A retry of submission `asked.submission_id` must ask for the job it
/// created (`existing`): the same id with another spec is refused
/// (FAILED_PRECONDITION, naming the first field that differs) rather than
/// answered with a job the caller did not ask for.
pub(crate) fn check_same_spec(
    existing: &JobRecord,
    asked: &JobRecord,
    field: &str,
) -> Result<(), ServiceError> {
    let differs = [
        ("tasks", existing.tasks != asked.tasks),
        (
            "resources",
            existing.request != asked.request || existing.request_text != asked.request_text,
        ),
        ("priority", existing.priority != asked.priority),
        ("locality", existing.locality != asked.locality),
        ("constraints", existing.constraints != asked.constraints),
        ("command", existing.command != asked.command),
        ("restart", existing.restart != asked.restart),
        (
            "ttl_after_finished",
            existing.ttl_after_finished != asked.ttl_after_finished,
        ),
        ("tenant", existing.tenant != asked.tenant),
    ];
    match differs.iter().find(|(_, d)| *d) {
        None => Ok(()),
        Some((part, _)) => Err(ServiceError::SubmissionReused(SpecError::new(
            format!("{field}.{part}"),
            format!(
                "submission {:?} already created job {:?} with another {part}; a retry must send the same spec (or use a new submission_id)",
                asked.submission_id, asked.name
            ),
        ))),
    }
}

/// A job record must fit in one store commit (with room for the fence):
/// refused at submit, naming the field that makes it large, rather than
/// failing its write for ever.
fn check_size(keys: &Keys, record: &JobRecord, field: &str) -> Result<(), SpecError> {
    let size = job_write(keys, record).size();
    if size <= MAX_COMMIT_BYTES {
        return Ok(());
    }
    let command: usize = record.command.iter().map(|a| a.len() + 3).sum();
    let constraints: usize = record
        .constraints
        .iter()
        .map(|(k, v)| k.len() + v.len() + 6)
        .sum();
    let part = if command >= constraints {
        "command"
    } else {
        "constraints"
    };
    Err(SpecError::new(
        format!("{field}.{part}"),
        format!("the job is {size} bytes stored; at most {MAX_COMMIT_BYTES} fit in one commit"),
    ))
}

pub(super) fn job_record(spec: JobSpec, submission_id: &str, now_ms: i64) -> JobRecord {
    use sched_core::resources::{format_bytes, format_cpu, format_gpu};
    let r = spec.request;
    let mut text = BTreeMap::new();
    text.insert("cpu".to_string(), format_cpu(r.cpu));
    text.insert("memory".to_string(), format_bytes(r.memory));
    if r.disk.0 > 0 {
        text.insert("disk".to_string(), format_bytes(r.disk));
    }
    if r.gpu.0 > 0 {
        text.insert("gpu".to_string(), format_gpu(r.gpu));
    }
    JobRecord {
        name: spec.name,
        tasks: spec.tasks,
        request: spec.request.into(),
        request_text: text,
        priority: spec.priority,
        locality: spec.locality,
        constraints: spec.constraints,
        command: spec.command,
        submission_id: submission_id.to_string(),
        submitted_unix_ms: now_ms,
        cancelled: false,
        restart: spec.restart,
        ttl_after_finished: spec.ttl_after_finished,
        tenant: spec.tenant,
    }
}

fn spec_of(r: &JobRecord) -> JobSpec {
    JobSpec {
        name: r.name.clone(),
        tasks: r.tasks,
        request: r.request.into(),
        priority: r.priority,
        locality: r.locality.clone(),
        constraints: r.constraints.clone(),
        command: r.command.clone(),
        restart: r.restart,
        ttl_after_finished: r.ttl_after_finished,
        tenant: r.tenant.clone(),
        band: None,
    }
}
