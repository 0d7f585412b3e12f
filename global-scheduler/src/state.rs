//! The global scheduler's view of the world: jobs, their tasks, clusters.
//!
//! Plain data and decisions, no I/O: the [`engine`](crate::engine) asks for
//! writes (`*_writes`), commits them to the store, and only then applies
//! them here (`apply_*`). So memory never runs ahead of etcd, and a crash
//! between the two loses nothing that was acknowledged.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use sched_core::cluster::ClusterId;
use sched_core::error::SpecError;
use sched_core::job::{Job, JobId, JobSpec};
use sched_core::policy::Policy;
use sched_core::rank::Ranker;
use sched_core::resources::{ResourceKind, Resources};
use sched_proto::pb;
use sched_store::{Expect, KeyValue, Revision, Write};
use tokio::sync::broadcast;

use crate::keys::Keys;
use crate::records::{JobRecord, TaskRecord, TaskState};
use crate::registry::Registry;

/// Events kept per job for `describe`; older ones are dropped.
const EVENTS_PER_JOB: usize = 64;

/// Tasks every feasible cluster handed back are offered again, to the best
/// cluster as if none had, once this long has passed since the job's last
/// hand-back: capacity may have freed up since. Long enough that a full
/// cluster is not asked again and again (each refusal costs a round trip
/// and an etcd write per task).
pub const HAND_BACK_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// Pass order: highest priority first, then submission order.
type JobKey = (Reverse<u32>, JobId, String);

fn job_key(j: &JobEntry) -> JobKey {
    (
        Reverse(j.job.spec.priority),
        j.job.id,
        j.record.name.clone(),
    )
}

/// One task as the scheduler tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEntry {
    pub state: TaskState,
    pub cluster: Option<ClusterId>,
    pub machine: Option<String>,
    pub exit_code: Option<i32>,
    pub handed_back: Vec<ClusterId>,
    /// `mod_revision` of the task's key; 0 when it has none (pending).
    pub rev: Revision,
}

impl TaskEntry {
    fn pending() -> Self {
        TaskEntry {
            state: TaskState::Pending,
            cluster: None,
            machine: None,
            exit_code: None,
            handed_back: Vec::new(),
            rev: 0,
        }
    }

    fn expect(&self) -> Expect {
        if self.rev == 0 {
            Expect::Absent
        } else {
            Expect::ModRevision(self.rev)
        }
    }
}

/// One job.
#[derive(Debug, Clone)]
pub struct JobEntry {
    pub job: Job,
    pub record: JobRecord,
    /// `mod_revision` of the job's key.
    pub rev: Revision,
    pub tasks: Vec<TaskEntry>,
    /// Tasks in `pending`.
    pub pending: u32,
    pub events: VecDeque<pb::Event>,
    /// Why the last scheduling pass could not assign its pending tasks.
    pub unschedulable: Option<String>,
    /// When a cluster last handed some of its tasks back (not persisted: a
    /// restarted scheduler retries them at once).
    pub last_hand_back: Option<std::time::Instant>,
}

/// Tasks of one job that a pass hands to one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub job: String,
    pub cluster: ClusterId,
    pub indices: Vec<u32>,
}

/// A task change, computed before the write and applied after it.
#[derive(Debug, Clone)]
pub struct TaskChange {
    pub job: String,
    pub index: u32,
    pub entry: TaskEntry,
    pub write: Write,
    /// For events: what happened.
    pub note: Option<String>,
}

pub struct State {
    pub keys: Keys,
    pub registry: Registry,
    pub policy: Policy,
    jobs: BTreeMap<String, JobEntry>,
    next_id: u32,
    /// Tasks in `pending` over all jobs (bounded by `max_pending_tasks`).
    pub pending_tasks: u64,
    /// Jobs the next pass must look at: new, or with tasks handed back.
    dirty: BTreeSet<JobKey>,
    /// The next pass looks at every job with pending tasks (the clusters
    /// changed: one registered, came back, or freed capacity).
    rescan: bool,
    pub events: broadcast::Sender<pb::Event>,
}

impl State {
    pub fn new(keys: Keys, registry: Registry, policy: Policy) -> Self {
        State {
            keys,
            registry,
            policy,
            jobs: BTreeMap::new(),
            next_id: 0,
            pending_tasks: 0,
            dirty: BTreeSet::new(),
            rescan: false,
            events: broadcast::channel(4096).0,
        }
    }

    pub fn job(&self, name: &str) -> Option<&JobEntry> {
        self.jobs.get(name)
    }

    pub fn jobs(&self) -> impl Iterator<Item = &JobEntry> {
        self.jobs.values()
    }

    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    // ---- submissions ----

    /// Checks specs (already validated one by one) against the world: names
    /// free (or taken by this very submission, on a retry), locations
    /// known, some machine large enough. Returns the records to create; jobs
    /// a retry already created are left out.
    pub fn check_submission(
        &self,
        specs: Vec<JobSpec>,
        submission_id: &str,
        now_ms: i64,
    ) -> Result<Vec<JobRecord>, SpecError> {
        let world = self.registry.world();
        let mut out = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let field = format!("jobs[{i}]");
            if let Some(existing) = self.jobs.get(&spec.name) {
                if !submission_id.is_empty() && existing.record.submission_id == submission_id {
                    continue;
                }
                return Err(SpecError::new(
                    format!("{field}.name"),
                    format!("a job named {:?} already exists", spec.name),
                ));
            }
            let spec = if world.clusters.iter().all(|c| c.classes.is_empty()) {
                // No cluster has reported a machine yet: nothing to size
                // against; the location must still be one the topology
                // names.
                if let Some(l) = &spec.locality {
                    if world.locality.id(l).is_none() {
                        return Err(unknown_location(&field, l, world.locality.names()));
                    }
                }
                spec
            } else {
                spec.resolve(JobId(0), world, &field)?.spec
            };
            out.push(job_record(spec, submission_id, now_ms));
        }
        Ok(out)
    }

    /// Adds a job whose key was written at `rev`.
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
        self.pending_tasks += u64::from(tasks);
        self.dirty
            .insert((Reverse(record.priority), job.id, name.clone()));
        self.jobs.insert(
            name.clone(),
            JobEntry {
                job,
                record,
                rev,
                tasks: vec![TaskEntry::pending(); tasks as usize],
                pending: tasks,
                events: VecDeque::new(),
                unschedulable: None,
                last_hand_back: None,
            },
        );
    }

    /// Rebuilds jobs and tasks from store snapshots (after a restart).
    pub fn load(&mut self, jobs: &[KeyValue], tasks: &[KeyValue]) -> Result<(), String> {
        let mut records: Vec<(JobRecord, Revision, Revision)> = Vec::with_capacity(jobs.len());
        for kv in jobs {
            let r: JobRecord = serde_json::from_slice(&kv.value)
                .map_err(|e| format!("{}: not a job record: {e}", kv.key))?;
            records.push((r, kv.mod_revision, kv.create_revision));
        }
        // Submission order, as the ids were first given.
        records.sort_by_key(|r| r.2);
        for (r, rev, _) in records {
            let name = r.name.clone();
            self.insert_job(r, rev);
            self.push_job_event(
                &name,
                "recovered",
                "state read back from the store after a scheduler start".to_string(),
            );
        }
        self.rescan = true;
        for kv in tasks {
            let Some((job, index)) = self.keys.parse_task(&kv.key) else {
                return Err(format!("{}: not a task key", kv.key));
            };
            let r: TaskRecord = serde_json::from_slice(&kv.value)
                .map_err(|e| format!("{}: not a task record: {e}", kv.key))?;
            let entry = self.entry_of(&r, kv.mod_revision);
            let Some(j) = self.jobs.get_mut(job) else {
                tracing::warn!(key = %kv.key, "task of an unknown job; ignored");
                continue;
            };
            let Some(t) = j.tasks.get_mut(index as usize) else {
                tracing::warn!(key = %kv.key, "task index out of range; ignored");
                continue;
            };
            if entry.state != TaskState::Pending {
                j.pending -= 1;
                self.pending_tasks -= 1;
            }
            *t = entry;
        }
        Ok(())
    }

    /// Replaces one job's tasks with what the store holds (after another
    /// writer changed them).
    pub fn reload_tasks(&mut self, job: &str, items: &[KeyValue]) -> Result<(), String> {
        let Some(j) = self.jobs.get_mut(job) else {
            return Ok(());
        };
        self.pending_tasks -= u64::from(j.pending);
        j.pending = j.record.tasks;
        self.pending_tasks += u64::from(j.pending);
        for t in j.tasks.iter_mut() {
            *t = TaskEntry::pending();
        }
        self.load(&[], items)
    }

    fn entry_of(&self, r: &TaskRecord, rev: Revision) -> TaskEntry {
        let id = |name: &String| self.registry.id(name);
        TaskEntry {
            state: r.state,
            cluster: r.cluster.as_ref().and_then(id),
            machine: r.machine.clone(),
            exit_code: r.exit_code,
            handed_back: r.handed_back.iter().filter_map(id).collect(),
            rev,
        }
    }

    fn record_of(&self, t: &TaskEntry) -> TaskRecord {
        TaskRecord {
            state: t.state,
            cluster: t.cluster.map(|c| self.registry.name(c).to_string()),
            machine: t.machine.clone(),
            exit_code: t.exit_code,
            handed_back: t
                .handed_back
                .iter()
                .map(|&c| self.registry.name(c).to_string())
                .collect(),
        }
    }

    // ---- scheduling ----

    /// Chooses clusters for up to `limit` pending tasks: jobs by priority
    /// (highest first), then submission order; each group of a job's
    /// pending tasks goes to its best cluster, as many as the cluster's
    /// unclaimed capacity holds, the rest to the next best, and so on.
    pub fn plan(&mut self, limit: u64) -> Vec<Assignment> {
        let order: Vec<JobKey> = if std::mem::take(&mut self.rescan) {
            self.dirty.clear();
            let mut all: Vec<JobKey> = self
                .jobs
                .values()
                .filter(|j| j.pending > 0 && !j.record.cancelled)
                .map(job_key)
                .collect();
            all.sort();
            all
        } else {
            std::mem::take(&mut self.dirty).into_iter().collect()
        };
        let mut summaries = self.registry.summaries();
        let ranker = Ranker::new(&self.policy, self.registry.locality());
        let mut out = Vec::new();
        let mut budget = limit;
        for key in order {
            if budget == 0 {
                // Out of budget: the next pass carries on from here.
                self.dirty.insert(key);
                continue;
            }
            let name = key.2.clone();
            let Some(j) = self.jobs.get_mut(&name) else {
                continue;
            };
            if j.pending == 0 || j.record.cancelled {
                continue;
            }
            // Pending tasks grouped by the clusters that handed them back.
            let mut groups: BTreeMap<Vec<ClusterId>, Vec<u32>> = BTreeMap::new();
            for (i, t) in j.tasks.iter().enumerate() {
                if t.state == TaskState::Pending {
                    groups
                        .entry(t.handed_back.clone())
                        .or_default()
                        .push(i as u32);
                }
            }
            let request = j.job.spec.request;
            let mut why = None;
            for (handed_back, mut indices) in groups {
                if indices.len() as u64 > budget {
                    indices.truncate(budget as usize);
                    self.dirty.insert(key.clone());
                }
                let mut rest = &indices[..];
                while !rest.is_empty() {
                    let mut ranking = ranker.rank(&j.job, &summaries, &handed_back);
                    if ranking.best().is_none()
                        && !handed_back.is_empty()
                        && j.last_hand_back
                            .is_none_or(|t| t.elapsed() >= HAND_BACK_RETRY)
                    {
                        ranking = ranker.rank(&j.job, &summaries, &[]);
                    }
                    let Some(best) = ranking.best() else {
                        why = Some(if summaries.is_empty() {
                            "no cluster has registered yet".to_string()
                        } else {
                            unschedulable_reason(&ranking, &summaries)
                        });
                        break;
                    };
                    let s = &mut summaries[best.0 as usize];
                    let take = fit_count(&s.unclaimed(), &request).clamp(1, rest.len() as u64);
                    let (now, later) = rest.split_at(take as usize);
                    s.queued = s.queued.saturating_add(&request.times(take));
                    s.queue_len += take;
                    out.push(Assignment {
                        job: name.clone(),
                        cluster: best,
                        indices: now.to_vec(),
                    });
                    budget -= take;
                    rest = later;
                }
            }
            if why != j.unschedulable {
                if let Some(w) = &why {
                    tracing::info!(job = %name, reason = %w, "tasks cannot be assigned");
                }
                j.unschedulable = why.clone();
                if let Some(w) = why {
                    let e = event(&name, "unschedulable", w);
                    push_event(&self.events, j, e);
                }
            }
        }
        out
    }

    /// Makes the next pass look at every job with pending tasks.
    pub fn mark_rescan(&mut self) {
        self.rescan = true;
    }

    /// The writes that hand `a`'s tasks to its cluster.
    pub fn assignment_changes(&self, a: &Assignment) -> Vec<TaskChange> {
        let Some(j) = self.jobs.get(&a.job) else {
            return Vec::new();
        };
        a.indices
            .iter()
            .filter_map(|&i| {
                let t = j.tasks.get(i as usize)?;
                if t.state != TaskState::Pending {
                    return None;
                }
                let mut entry = t.clone();
                entry.state = TaskState::Assigned;
                entry.cluster = Some(a.cluster);
                Some(self.change(&a.job, i, t, entry, None))
            })
            .collect()
    }

    fn change(
        &self,
        job: &str,
        index: u32,
        old: &TaskEntry,
        entry: TaskEntry,
        note: Option<String>,
    ) -> TaskChange {
        let value = serde_json::to_vec(&self.record_of(&entry))
            .expect("task records serialize: plain strings and integers");
        TaskChange {
            job: job.to_string(),
            index,
            write: Write::put(self.keys.task(job, index), value, old.expect()),
            entry,
            note,
        }
    }

    /// Applies committed changes (revision `rev`). Returns, per cluster, the
    /// tasks newly assigned to it, for its assignment stream.
    pub fn apply(
        &mut self,
        changes: Vec<TaskChange>,
        rev: Revision,
    ) -> Vec<(ClusterId, pb::AssignmentBatch)> {
        let mut handed: BTreeMap<(ClusterId, String), Vec<u32>> = BTreeMap::new();
        let mut notes: BTreeMap<(String, String), u32> = BTreeMap::new();
        for c in changes {
            let Some(j) = self.jobs.get_mut(&c.job) else {
                continue;
            };
            let Some(t) = j.tasks.get_mut(c.index as usize) else {
                continue;
            };
            let was_pending = t.state == TaskState::Pending;
            let is_pending = c.entry.state == TaskState::Pending;
            *t = c.entry;
            t.rev = rev;
            if t.state == TaskState::Assigned && was_pending {
                if let Some(cluster) = t.cluster {
                    handed
                        .entry((cluster, c.job.clone()))
                        .or_default()
                        .push(c.index);
                }
            }
            if was_pending && !is_pending {
                j.pending -= 1;
                self.pending_tasks -= 1;
            } else if !was_pending && is_pending {
                j.pending += 1;
                self.pending_tasks += 1;
                j.last_hand_back = Some(std::time::Instant::now());
                self.dirty.insert(job_key(j));
            }
            if let Some(n) = c.note {
                *notes.entry((c.job, n)).or_insert(0) += 1;
            }
        }
        for ((job, note), n) in notes {
            if let Some(j) = self.jobs.get_mut(&job) {
                let (kind, text) = note.split_once(':').unwrap_or((note.as_str(), ""));
                let e = event(&job, kind, format!("{n} task(s){text}"));
                push_event(&self.events, j, e);
            }
        }
        let mut out = Vec::with_capacity(handed.len());
        for ((cluster, job), indices) in handed {
            let Some(j) = self.jobs.get_mut(&job) else {
                continue;
            };
            let request = j.job.spec.request;
            let seq = self
                .registry
                .hand_over(cluster, &request, indices.len() as u64);
            let e = event(
                &job,
                "assigned",
                format!(
                    "{} task(s) assigned to cluster {}",
                    indices.len(),
                    self.registry.name(cluster)
                ),
            );
            push_event(&self.events, j, e);
            out.push((
                cluster,
                pb::AssignmentBatch {
                    assignments: vec![assignment_message(j, indices)],
                    cancelled_jobs: Vec::new(),
                    seq,
                },
            ));
        }
        out
    }

    /// Every task currently assigned to `cluster` and not placed (or lost
    /// with its machine), for a (re)connecting agent; and the cancelled jobs
    /// with tasks there.
    pub fn assigned_to(&self, cluster: ClusterId) -> pb::AssignmentBatch {
        let mut batch = pb::AssignmentBatch {
            seq: self.registry.entries()[cluster.0 as usize].handed_total,
            ..Default::default()
        };
        for j in self.jobs.values() {
            let indices: Vec<u32> = j
                .tasks
                .iter()
                .enumerate()
                // Lost tasks are the cluster's to place again (or hand back).
                .filter(|(_, t)| {
                    t.cluster == Some(cluster)
                        && matches!(t.state, TaskState::Assigned | TaskState::Lost)
                })
                .map(|(i, _)| i as u32)
                .collect();
            if j.record.cancelled {
                if j.tasks
                    .iter()
                    .any(|t| t.cluster == Some(cluster) && !t.state.is_final())
                {
                    batch.cancelled_jobs.push(j.record.name.clone());
                }
            } else if !indices.is_empty() {
                batch.assignments.push(assignment_message(j, indices));
            }
        }
        batch
    }

    // ---- reports from clusters ----

    /// The change a cluster's task report asks for; `None` when it is stale
    /// (the task is not that cluster's any more) or changes nothing.
    pub fn report_change(&self, cluster: ClusterId, r: &pb::TaskReport) -> Option<TaskChange> {
        let j = self.jobs.get(&r.job)?;
        let t = j.tasks.get(r.index as usize)?;
        if t.cluster != Some(cluster) || t.state.is_final() {
            return None;
        }
        let state = match pb::TaskState::try_from(r.state).ok()? {
            pb::TaskState::Placed => TaskState::Placed,
            pb::TaskState::Running => TaskState::Running,
            pb::TaskState::Succeeded => TaskState::Succeeded,
            pb::TaskState::Failed => TaskState::Failed,
            pb::TaskState::Lost => TaskState::Lost,
            _ => return None,
        };
        let mut entry = t.clone();
        entry.state = state;
        if !r.machine.is_empty() {
            entry.machine = Some(r.machine.clone());
        }
        if r.exit_code.is_some() {
            entry.exit_code = r.exit_code;
        }
        if entry == *t
            // An agent that restarted knows a running task as placed until
            // its node reports again: not a step back worth writing.
            || (t.state == TaskState::Running && state == TaskState::Placed && entry.machine == t.machine)
        {
            return None;
        }
        let note = match state {
            TaskState::Failed => Some(format!(
                "failed: failed (exit code {})",
                r.exit_code.map_or("unknown".to_string(), |c| c.to_string())
            )),
            TaskState::Lost => Some("lost: lost".to_string()),
            TaskState::Succeeded => Some("succeeded: succeeded".to_string()),
            TaskState::Placed => Some(format!(
                "placed: placed on cluster {}",
                self.registry.name(cluster)
            )),
            _ => None,
        };
        Some(self.change(&r.job, r.index, t, entry, note))
    }

    /// The changes that return tasks a cluster cannot place to `pending`,
    /// remembering the cluster so the next pass tries another.
    pub fn hand_back_changes(&self, cluster: ClusterId, h: &pb::HandBack) -> Vec<TaskChange> {
        let Some(j) = self.jobs.get(&h.job) else {
            return Vec::new();
        };
        let note = format!(
            "handed_back: handed back by cluster {}: {}",
            self.registry.name(cluster),
            h.reason
        );
        h.indices
            .iter()
            .filter_map(|&i| {
                let t = j.tasks.get(i as usize)?;
                // The cluster is the authority on what it holds: a task it
                // hands back is on none of its machines, even when the
                // report that it was lost travels in the same call.
                if t.cluster != Some(cluster) || t.state.is_final() {
                    return None;
                }
                let mut entry = t.clone();
                entry.state = TaskState::Pending;
                entry.cluster = None;
                entry.machine = None;
                if !entry.handed_back.contains(&cluster) {
                    entry.handed_back.push(cluster);
                }
                Some(self.change(&h.job, i, t, entry, Some(note.clone())))
            })
            .collect()
    }

    // ---- cancel ----

    /// The write that marks `name` cancelled.
    pub fn cancel_write(&self, name: &str) -> Option<(JobRecord, Write)> {
        let j = self.jobs.get(name)?;
        let mut record = j.record.clone();
        record.cancelled = true;
        let value = serde_json::to_vec(&record).expect("job records serialize");
        let write = Write::put(self.keys.job(name), value, Expect::ModRevision(j.rev));
        Some((record, write))
    }

    /// Applies a committed cancel; returns the clusters holding its
    /// unfinished tasks.
    pub fn apply_cancel(&mut self, record: JobRecord, rev: Revision) -> Vec<ClusterId> {
        let Some(j) = self.jobs.get_mut(&record.name) else {
            return Vec::new();
        };
        j.record = record;
        j.rev = rev;
        let mut clusters: Vec<ClusterId> = j
            .tasks
            .iter()
            .filter(|t| !t.state.is_final())
            .filter_map(|t| t.cluster)
            .collect();
        clusters.sort();
        clusters.dedup();
        let name = j.record.name.clone();
        push_event(
            &self.events,
            j,
            event(&name, "cancelled", "job cancelled".to_string()),
        );
        clusters
    }

    pub fn push_job_event(&mut self, job: &str, kind: &str, message: String) {
        if let Some(j) = self.jobs.get_mut(job) {
            push_event(&self.events, j, event(job, kind, message));
        }
    }

    // ---- views ----

    pub fn job_state(j: &JobEntry) -> pb::JobState {
        if j.record.cancelled {
            return pb::JobState::Cancelled;
        }
        let mut all_final = true;
        let mut any_failed = false;
        let mut any_started = false;
        for t in &j.tasks {
            all_final &= t.state.is_final();
            any_failed |= t.state == TaskState::Failed;
            any_started |= !matches!(t.state, TaskState::Pending | TaskState::Assigned);
        }
        match (all_final, any_failed, any_started) {
            (true, true, _) => pb::JobState::Failed,
            (true, false, _) => pb::JobState::Succeeded,
            (false, _, true) => pb::JobState::Running,
            _ => pb::JobState::Pending,
        }
    }

    pub fn summary(j: &JobEntry) -> pb::JobSummary {
        let mut c = pb::TaskCounts::default();
        for t in &j.tasks {
            match t.state {
                TaskState::Pending => c.pending += 1,
                TaskState::Assigned => c.assigned += 1,
                TaskState::Placed => c.placed += 1,
                TaskState::Running => c.running += 1,
                TaskState::Succeeded => c.succeeded += 1,
                TaskState::Failed => c.failed += 1,
                TaskState::Lost => c.lost += 1,
            }
        }
        pb::JobSummary {
            name: j.record.name.clone(),
            state: Self::job_state(j) as i32,
            tasks: j.record.tasks,
            counts: Some(c),
            submitted_unix_ms: j.record.submitted_unix_ms,
            request: Some(to_pb_resources(&j.job.spec.request)),
            priority: j.record.priority,
            locality: j.record.locality.clone().unwrap_or_default(),
        }
    }

    pub fn status(&self, j: &JobEntry) -> pb::JobStatus {
        let r = &j.record;
        pb::JobStatus {
            summary: Some(Self::summary(j)),
            spec: Some(pb::JobSpec {
                name: r.name.clone(),
                tasks: i64::from(r.tasks),
                resources: Some(pb::ResourceRequest {
                    cpu: r.request_text.get("cpu").cloned().unwrap_or_default(),
                    memory: r.request_text.get("memory").cloned().unwrap_or_default(),
                    disk: r.request_text.get("disk").cloned(),
                    gpu: r.request_text.get("gpu").cloned(),
                }),
                priority: Some(i64::from(r.priority)),
                locality: r.locality.clone(),
                constraints: r.constraints.clone().into_iter().collect(),
                command: r.command.clone(),
            }),
            tasks: j
                .tasks
                .iter()
                .enumerate()
                .map(|(i, t)| pb::TaskStatus {
                    index: i as u32,
                    state: to_pb_state(t.state) as i32,
                    cluster: t
                        .cluster
                        .map(|c| self.registry.name(c).to_string())
                        .unwrap_or_default(),
                    machine: t.machine.clone().unwrap_or_default(),
                    exit_code: t.exit_code,
                })
                .collect(),
        }
    }

    /// Why `j`'s unfinished tasks are where they are, one line per reason:
    /// pending tasks get the core's ranking of every cluster right now.
    pub fn pending_reasons(&self, j: &JobEntry) -> Vec<String> {
        let mut out = Vec::new();
        if j.record.cancelled {
            return out;
        }
        let summaries = self.registry.summaries();
        let ranker = Ranker::new(&self.policy, self.registry.locality());
        let mut groups: BTreeMap<Vec<ClusterId>, u32> = BTreeMap::new();
        let mut waiting: BTreeMap<ClusterId, u32> = BTreeMap::new();
        for t in &j.tasks {
            match t.state {
                TaskState::Pending => *groups.entry(t.handed_back.clone()).or_insert(0) += 1,
                TaskState::Assigned => {
                    if let Some(c) = t.cluster {
                        *waiting.entry(c).or_insert(0) += 1;
                    }
                }
                _ => {}
            }
        }
        for (handed_back, n) in groups {
            if summaries.is_empty() {
                out.push(format!(
                    "{n} task(s) pending: no cluster has registered yet"
                ));
                continue;
            }
            let ranking = ranker.rank(&j.job, &summaries, &handed_back);
            match ranking.best() {
                Some(best) => out.push(format!(
                    "{n} task(s) pending: about to be assigned (best cluster: {})",
                    self.registry.name(best)
                )),
                None => {
                    let retry = if handed_back.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; clusters that handed tasks back are asked again {} s after the last hand-back",
                            HAND_BACK_RETRY.as_secs()
                        )
                    };
                    out.push(format!(
                        "{n} task(s) pending: {}{retry}",
                        unschedulable_reason(&ranking, &summaries)
                    ));
                    for f in &ranking.filtered {
                        out.push(format!(
                            "  cluster {}: {} ({})",
                            self.registry.name(f.cluster),
                            f.rejection,
                            f.filter
                        ));
                    }
                }
            }
        }
        for (c, n) in waiting {
            out.push(format!(
                "{n} task(s) assigned to cluster {}, waiting for a machine{}",
                self.registry.name(c),
                if self.registry.entries()[c.0 as usize].summary.up {
                    ""
                } else {
                    " (the cluster is down)"
                }
            ));
        }
        out
    }
}

/// How many tasks of `request` fit in `free`, resource by resource.
fn fit_count(free: &Resources, request: &Resources) -> u64 {
    ResourceKind::ALL
        .iter()
        .filter(|&&k| request.get(k) > 0)
        .map(|&k| free.get(k) / request.get(k))
        .min()
        .unwrap_or(u64::MAX)
}

fn unschedulable_reason(
    ranking: &sched_core::rank::Ranking,
    summaries: &[sched_core::cluster::ClusterSummary],
) -> String {
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for f in &ranking.filtered {
        *counts.entry(f.rejection.summary()).or_insert(0) += 1;
    }
    let mut parts: Vec<(String, u32)> = counts.into_iter().collect();
    parts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let list: Vec<String> = parts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!(
        "0/{} clusters can take it: {}",
        summaries.len(),
        list.join(", ")
    )
}

fn unknown_location(field: &str, name: &str, known: &[String]) -> SpecError {
    SpecError::new(
        format!("{field}.locality"),
        format!("unknown location {name:?} (known: {})", known.join(", ")),
    )
}

fn job_record(spec: JobSpec, submission_id: &str, now_ms: i64) -> JobRecord {
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
    }
}

fn assignment_message(j: &JobEntry, indices: Vec<u32>) -> pb::Assignment {
    pb::Assignment {
        job: j.record.name.clone(),
        indices,
        request: Some(to_pb_resources(&j.job.spec.request)),
        constraints: j.record.constraints.clone().into_iter().collect(),
        command: j.record.command.clone(),
        priority: j.record.priority,
    }
}

pub use sched_proto::convert::{from_pb as from_pb_resources, to_pb as to_pb_resources};

pub fn to_pb_state(s: TaskState) -> pb::TaskState {
    match s {
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Assigned => pb::TaskState::Assigned,
        TaskState::Placed => pb::TaskState::Placed,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Lost => pb::TaskState::Lost,
    }
}

fn event(job: &str, kind: &str, message: String) -> pb::Event {
    pb::Event {
        unix_ms: crate::now_unix_ms(),
        job: job.to_string(),
        kind: kind.to_string(),
        message,
    }
}

fn push_event(tx: &broadcast::Sender<pb::Event>, j: &mut JobEntry, e: pb::Event) {
    if j.events.len() == EVENTS_PER_JOB {
        j.events.pop_front();
    }
    j.events.push_back(e.clone());
    // No watcher is not an error.
    let _ = tx.send(e);
}

#[cfg(test)]
mod tests {
    use sched_core::resources::Resources;
    use sched_core::topology::Topology;

    use super::*;
    use crate::records::{ClusterRecord, MachineClassRecord};
    use crate::registry::Heartbeat;

    const TOPOLOGY: &str = r#"
locations: [{name: east}, {name: west}]
links: [{from: east, to: west, latency_ms: 70}]
clusters:
  - {name: unused, location: east, machines: [{class: std, count: 1, cpu: 1, memory: 1Gi}]}
"#;

    /// A state with clusters `(name, location, machines of 4 cpu / 16 GiB)`,
    /// all up and empty.
    fn state(clusters: &[(&str, &str, u32)]) -> State {
        let topology = Topology::from_yaml(TOPOLOGY).unwrap();
        let mut registry = Registry::new(Some(&topology), std::time::Duration::from_secs(5));
        for (name, location, machines) in clusters {
            registry.register(
                ClusterRecord {
                    name: name.to_string(),
                    location: location.to_string(),
                    address: String::new(),
                    classes: vec![MachineClassRecord {
                        name: "std".into(),
                        capacity: Resources::new(4000, 16 << 30).into(),
                        labels: Default::default(),
                        count: *machines,
                    }],
                    seen_classes: Vec::new(),
                    registered_unix_ms: 0,
                },
                true,
            );
        }
        State::new(Keys::new("/t"), registry, Policy::default())
    }

    fn submit(
        s: &mut State,
        name: &str,
        tasks: u32,
        cpu_millis: u64,
        locality: Option<&str>,
        priority: u32,
    ) {
        let spec = JobSpec {
            name: name.into(),
            tasks,
            request: Resources::new(cpu_millis, 1 << 30),
            priority,
            locality: locality.map(str::to_string),
            constraints: Default::default(),
            command: Vec::new(),
        };
        let records = s.check_submission(vec![spec], "sub", 0).unwrap();
        for r in records {
            s.insert_job(r, 1);
        }
    }

    /// Plans, and applies the plan as if etcd took it.
    fn pass(s: &mut State, limit: u64) -> Vec<(String, String, usize)> {
        let plan = s.plan(limit);
        let changes: Vec<TaskChange> = plan.iter().flat_map(|a| s.assignment_changes(a)).collect();
        s.apply(changes, 2);
        plan.iter()
            .map(|a| {
                (
                    a.job.clone(),
                    s.registry.name(a.cluster).to_string(),
                    a.indices.len(),
                )
            })
            .collect()
    }

    #[test]
    fn a_job_goes_to_its_location_as_far_as_unclaimed_capacity_holds() {
        // east-a: 2 machines x 4 cpu = 8 cpu; 12 tasks of 1 cpu: 8 fit east
        // (locality wins), the other 4 go to the next best, west-a.
        let mut s = state(&[("east-a", "east", 2), ("west-a", "west", 10)]);
        submit(&mut s, "web", 12, 1000, Some("east"), 0);
        assert_eq!(
            pass(&mut s, 1000),
            [
                ("web".into(), "east-a".into(), 8),
                ("web".into(), "west-a".into(), 4)
            ]
        );
        assert_eq!(s.pending_tasks, 0);
        // Everything is promised: the next pass has nothing to do.
        assert!(pass(&mut s, 1000).is_empty());
    }

    #[test]
    fn higher_priority_first_when_the_pass_is_limited() {
        let mut s = state(&[("east-a", "east", 10)]);
        submit(&mut s, "low", 5, 100, None, 0);
        submit(&mut s, "high", 5, 100, None, 500);
        // A pass of 7 tasks: all of `high`, then 2 of `low`; `low` is
        // carried over to the next pass.
        assert_eq!(
            pass(&mut s, 7),
            [
                ("high".into(), "east-a".into(), 5),
                ("low".into(), "east-a".into(), 2)
            ]
        );
        assert_eq!(pass(&mut s, 7), [("low".into(), "east-a".into(), 3)]);
    }

    #[test]
    fn handed_back_tasks_skip_the_cluster_that_refused_them() {
        let mut s = state(&[("east-a", "east", 10), ("west-a", "west", 10)]);
        submit(&mut s, "web", 4, 1000, Some("east"), 0);
        assert_eq!(pass(&mut s, 100), [("web".into(), "east-a".into(), 4)]);
        let east = s.registry.id("east-a").unwrap();
        let changes = s.hand_back_changes(
            east,
            &pb::HandBack {
                job: "web".into(),
                indices: vec![1, 3],
                reason: "full".into(),
            },
        );
        assert_eq!(changes.len(), 2);
        s.apply(changes, 3);
        assert_eq!(s.job("web").unwrap().pending, 2);
        assert_eq!(pass(&mut s, 100), [("web".into(), "west-a".into(), 2)]);
        // A stale report (a task now on west-a) changes nothing.
        let stale = pb::TaskReport {
            job: "web".into(),
            index: 1,
            state: pb::TaskState::Placed as i32,
            machine: "m1".into(),
            exit_code: None,
        };
        assert!(s.report_change(east, &stale).is_none());
    }

    #[test]
    fn a_hand_back_returns_a_task_the_scheduler_still_thinks_runs() {
        // The agent lost the machine and could not place the task again;
        // the loss and the hand-back reach the scheduler in one call, so
        // the task is still `running` here when the hand-back is read.
        let mut s = state(&[("east-a", "east", 10), ("west-a", "west", 10)]);
        submit(&mut s, "web", 2, 1000, Some("east"), 0);
        pass(&mut s, 100);
        let east = s.registry.id("east-a").unwrap();
        let running = pb::TaskReport {
            job: "web".into(),
            index: 0,
            state: pb::TaskState::Running as i32,
            machine: "m1".into(),
            exit_code: None,
        };
        let c = s.report_change(east, &running).unwrap();
        s.apply(vec![c], 3);
        // A restarted agent knows it as placed until the node reports:
        // no step back.
        let placed = pb::TaskReport {
            state: pb::TaskState::Placed as i32,
            ..running.clone()
        };
        assert!(s.report_change(east, &placed).is_none());
        let changes = s.hand_back_changes(
            east,
            &pb::HandBack {
                job: "web".into(),
                indices: vec![0],
                reason: "no machine".into(),
            },
        );
        assert_eq!(changes.len(), 1);
        s.apply(changes, 4);
        assert_eq!(s.job("web").unwrap().pending, 1);
        assert_eq!(pass(&mut s, 100), [("web".into(), "west-a".into(), 1)]);
    }

    #[test]
    fn jobs_are_sized_against_every_machine_a_cluster_has_had() {
        let mut s = state(&[("east-a", "east", 10)]);
        let spec = |cpu_millis| JobSpec {
            name: "big".into(),
            tasks: 1,
            request: Resources::new(cpu_millis, 1 << 30),
            priority: 0,
            locality: None,
            constraints: Default::default(),
            command: Vec::new(),
        };
        // The agent restarts and registers before its nodes do: no machine
        // right now, but a 4-cpu task still fits what the cluster has.
        let mut record = s.registry.entries()[0].record.clone();
        record.classes.clear();
        record.seen_classes.clear();
        s.registry.register(record, true);
        assert_eq!(s.registry.entries()[0].record.seen_classes.len(), 1);
        assert!(s.check_submission(vec![spec(4000)], "a", 0).is_ok());
        // What no machine ever had is still refused, naming the field.
        let e = s.check_submission(vec![spec(5000)], "b", 0).unwrap_err();
        assert_eq!(e.field, "jobs[0].resources.cpu");
    }

    #[test]
    fn a_heartbeat_counts_only_the_assignments_it_has_seen() {
        let mut s = state(&[("east-a", "east", 1)]);
        submit(&mut s, "a", 3, 1000, None, 0);
        pass(&mut s, 100);
        let e = &s.registry.entries()[0];
        assert_eq!((e.in_flight, e.handed_total), (3, 3));
        // A heartbeat sent before the agent took the batch in (seq 0):
        // the 3 tasks stay counted, so only 1 more cpu looks free.
        s.registry.heartbeat("east-a", Heartbeat::default());
        assert_eq!(s.registry.entries()[0].summary.unclaimed().cpu.0, 1000);
        // Once it has seen seq 3 its own figures count them.
        s.registry.heartbeat(
            "east-a",
            Heartbeat {
                allocated: Resources::new(3000, 3 << 30),
                seq_seen: 3,
                ..Default::default()
            },
        );
        let e = &s.registry.entries()[0];
        assert_eq!(e.in_flight, 0);
        assert_eq!(e.summary.unclaimed().cpu.0, 1000);
    }

    #[test]
    fn freed_capacity_gets_the_rest_of_a_job() {
        let mut s = state(&[("east-a", "east", 1)]);
        submit(&mut s, "a", 5, 1000, None, 0);
        assert_eq!(pass(&mut s, 100), [("a".into(), "east-a".into(), 4)]);
        assert!(pass(&mut s, 100).is_empty());
        let east = s.registry.id("east-a").unwrap();
        // The agent took the batch in and placed the four; then they finished.
        let improved = s.registry.heartbeat(
            "east-a",
            Heartbeat {
                allocated: Resources::new(4000, 4 << 30),
                seq_seen: 4,
                ..Default::default()
            },
        );
        assert_eq!(improved, Some(false));
        for i in 0..4 {
            let r = pb::TaskReport {
                job: "a".into(),
                index: i,
                state: pb::TaskState::Succeeded as i32,
                machine: "m".into(),
                exit_code: Some(0),
            };
            let c = s.report_change(east, &r).unwrap();
            s.apply(vec![c], 5);
        }
        let improved = s.registry.heartbeat(
            "east-a",
            Heartbeat {
                seq_seen: 4,
                ..Default::default()
            },
        );
        assert_eq!(improved, Some(true));
        s.mark_rescan();
        assert_eq!(pass(&mut s, 100), [("a".into(), "east-a".into(), 1)]);
    }

    #[test]
    fn a_resubmission_with_the_same_id_is_skipped_and_another_is_refused() {
        let mut s = state(&[("east-a", "east", 1)]);
        submit(&mut s, "a", 1, 100, None, 0);
        let spec = s.job("a").unwrap().job.spec.clone();
        assert!(s
            .check_submission(vec![spec.clone()], "sub", 0)
            .unwrap()
            .is_empty());
        let err = s.check_submission(vec![spec], "other", 0).unwrap_err();
        assert_eq!(err.field, "jobs[0].name");
    }

    #[test]
    fn load_rebuilds_pending_counts_from_task_keys() {
        let mut s = state(&[("east-a", "east", 10)]);
        submit(&mut s, "web", 5, 100, None, 0);
        pass(&mut s, 2);
        let job = serde_json::to_vec(&s.job("web").unwrap().record).unwrap();
        let task = |i: u32| {
            let t = &s.job("web").unwrap().tasks[i as usize];
            KeyValue {
                key: s.keys.task("web", i),
                value: serde_json::to_vec(&s.record_of(t)).unwrap(),
                mod_revision: 2,
                create_revision: 2,
            }
        };
        let tasks = [task(0), task(1)];
        let mut fresh = state(&[("east-a", "east", 10)]);
        fresh
            .load(
                &[KeyValue {
                    key: "/t/jobs/web".into(),
                    value: job,
                    mod_revision: 1,
                    create_revision: 1,
                }],
                &tasks,
            )
            .unwrap();
        let j = fresh.job("web").unwrap();
        assert_eq!(j.pending, 3);
        assert_eq!(fresh.pending_tasks, 3);
        assert_eq!(j.tasks[0].state, TaskState::Assigned);
        assert_eq!(j.tasks[0].rev, 2);
        assert_eq!(j.events.back().unwrap().kind, "recovered");
    }
}
