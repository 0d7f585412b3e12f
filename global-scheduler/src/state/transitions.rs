//! How tasks move: scheduling passes hand pending tasks to clusters (the
//! decision is `sched_core::assign`, the one the simulator runs), clusters
//! report what became of them or hand them back. Failures and losses go
//! through the restart rules of [`super::lifecycle`].
//!
//! Each transition is computed as a [`TaskChange`] (the write and the entry
//! it leads to) and applied only once the write is committed.

use std::collections::BTreeMap;

use sched_core::assign::Assignment;
use sched_core::cluster::ClusterId;
use sched_core::rank::Ranker;
use sched_proto::pb;
use sched_store::{Expect, Revision, Write};

use super::history;
use super::{Event, EventKind};
use super::{State, TaskChange};
use crate::convert::assignment_message;
use crate::keys::Keys;
use crate::records::{index_ranges, AssignmentRecord, TaskState};

/// Runs of consecutive indices an assignment record holds at most: a
/// record stays far below etcd's request limit (about 25 bytes a run),
/// however scattered the indices of a large pass.
pub const RANGES_PER_RECORD: usize = 4096;

/// A task of `job` no longer stands on its assignment record `n` (0:
/// none); `live` counts the job's records' tasks. A record nothing stands
/// on is garbage.
pub(super) fn release(
    live: &mut BTreeMap<u32, u32>,
    n: u32,
    keys: &Keys,
    job: &str,
    garbage: &mut Vec<String>,
) {
    if n == 0 {
        return;
    }
    if let Some(count) = live.get_mut(&n) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            live.remove(&n);
            garbage.push(keys.assignment(job, u64::from(n)));
        }
    }
}

impl State {
    /// One scheduling pass over at most `limit` pending tasks: jobs by
    /// priority (highest first), then submission order; each job's pending
    /// tasks go to its best cluster as far as the cluster's machines have
    /// room (as its agent last reported it, less what was handed over
    /// since; by its summed unclaimed capacity if its agent does not report
    /// room), the rest to the next best, and so on. The tasks are taken out
    /// of the queue: commit [`State::assignment_changes`] and
    /// [`State::apply`] them, or give them back with [`State::requeue`].
    pub fn plan(&mut self, limit: u64) -> Vec<Assignment> {
        // The last pass's tasks packed where their agents will put them:
        // where they fit tighter than the pass counted on, every waiting
        // job is looked at again (as the simulator does once the clusters
        // pack).
        if self.registry.refresh_rooms() {
            self.queue.mark_rescan();
        }
        let mut summaries = self.registry.summaries();
        let now_ms = self.now_ms();
        let (locality, room) = self.registry.for_pass();
        // The last pass's promises were handed over (and taken off the
        // room) or requeued: either way they are not promises any more.
        room.settle();
        let ranker = Ranker::new(&self.policy, locality);
        let (jobs, names) = (&self.jobs, &self.names);
        let lookup = |id| Some(&jobs.get(names.get(&id)?)?.job);
        let pass =
            self.queue
                .plan_with(&ranker, &lookup, &mut summaries, now_ms, limit, None, room);
        drop(ranker);
        // One line per pass, not per job: a pass over 10k waiting jobs
        // would otherwise log 10k lines, and again on the next pass. Each
        // job's reason is in its events (`schedctl describe job`) and at
        // DEBUG.
        let mut waiting = 0usize;
        for (id, why) in pass.reasons {
            let Some(name) = self.names.get(&id).cloned() else {
                continue;
            };
            if let Some(w) = why {
                tracing::debug!(job = %name, reason = %w, "tasks cannot be assigned");
                self.push_job_event(&name, EventKind::Unschedulable, w);
                waiting += 1;
            }
        }
        if waiting > 0 || !pass.assignments.is_empty() {
            let tasks: usize = pass.assignments.iter().map(|a| a.indices.len()).sum();
            tracing::info!(
                assignments = pass.assignments.len(),
                tasks,
                jobs_waiting = waiting,
                "scheduling pass"
            );
        }
        pass.assignments
    }

    /// The changes that hand `a`'s tasks to its cluster. They are made
    /// durable not by their tasks' keys but by one assignment record per
    /// [`RANGES_PER_RECORD`] runs of indices: commit each group's
    /// [`State::assignment_write`] with it, then [`State::apply`] it.
    pub fn assignment_changes(&mut self, a: &Assignment) -> Vec<TaskChange> {
        let Some(name) = self.names.get(&a.job).cloned() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(a.indices.len());
        let mut runs = 0usize;
        let mut last: Option<u32> = None;
        let mut n = 0;
        for &i in &a.indices {
            let Some(j) = self.jobs.get_mut(&name) else {
                break;
            };
            let Some(t) = j.tasks.get(i as usize) else {
                continue;
            };
            if t.state != TaskState::Pending {
                continue;
            }
            if last.and_then(|l| l.checked_add(1)) != Some(i) {
                runs += 1;
            }
            if n == 0 || runs > RANGES_PER_RECORD {
                n = j.next_assignment;
                j.next_assignment += 1;
                runs = 1;
            }
            last = Some(i);
            out.push(TaskChange {
                job: name.clone(),
                index: i,
                entry: t.assigned_to(Some(a.cluster)),
                write: None,
                assignment: Some(n),
                event: None,
            });
        }
        out
    }

    /// The write of the assignment record for `changes`, changes of one
    /// job that share a record number (from [`State::assignment_changes`]).
    pub fn assignment_write(&self, changes: &[TaskChange]) -> Option<Write> {
        let first = changes.first()?;
        let n = first.assignment?;
        let cluster = first.entry.cluster?;
        let record = AssignmentRecord {
            cluster: self.registry.name(cluster).to_string(),
            tasks: index_ranges(changes.iter().map(|c| c.index)),
        };
        let value = serde_json::to_vec(&record).expect("assignment records serialize");
        Some(Write::put(
            self.keys.assignment(&first.job, u64::from(n)),
            value,
            Expect::Absent,
        ))
    }

    /// Changes that were not committed: tasks they would have taken out of
    /// `pending` wait for the next pass again.
    pub fn requeue(&mut self, changes: &[TaskChange]) {
        for c in changes {
            let Some(j) = self.jobs.get(&c.job) else {
                continue;
            };
            let Some(t) = j.tasks.get(c.index as usize) else {
                continue;
            };
            if t.state == TaskState::Pending && !j.record.cancelled {
                let (id, priority, t) = (j.job.id, j.record.priority, t.clone());
                self.enqueue(id, priority, c.index, &t, false);
            }
        }
        self.queue.mark_rescan();
    }

    /// Applies committed changes (revision `rev`). Returns, per cluster, the
    /// tasks newly assigned to it, for its assignment stream.
    pub fn apply(
        &mut self,
        changes: Vec<TaskChange>,
        rev: Revision,
    ) -> BTreeMap<ClusterId, pb::AssignmentBatch> {
        // Per (cluster, job), in the order the changes come (a pass's
        // order), which is the order the cluster will pack them in.
        let mut handed: Vec<((ClusterId, String), Vec<u32>)> = Vec::new();
        let mut slot: BTreeMap<(ClusterId, String), usize> = BTreeMap::new();
        let mut noted: BTreeMap<(String, EventKind, String), Vec<u32>> = BTreeMap::new();
        for c in changes {
            let Some(j) = self.jobs.get_mut(&c.job) else {
                continue;
            };
            let Some(t) = j.tasks.get_mut(c.index as usize) else {
                continue;
            };
            let was_pending = t.state == TaskState::Pending;
            let is_pending = c.entry.state == TaskState::Pending;
            let (was_final, is_final) = (t.state.is_final(), c.entry.state.is_final());
            // What stands for the task in the store: memory keeps the
            // record it has, whatever the change was computed from.
            let (assignment, arev) = (t.assignment, t.arev);
            *t = c.entry;
            (t.assignment, t.arev) = (assignment, arev);
            if c.write.is_some() || c.assignment.is_some() {
                // Its key or a newer record stands for it now.
                release(
                    &mut j.assignments,
                    t.assignment,
                    &self.keys,
                    &c.job,
                    &mut self.garbage,
                );
                (t.assignment, t.arev) = (0, 0);
            }
            if c.write.is_some() {
                t.rev = rev;
            }
            if let Some(n) = c.assignment {
                (t.assignment, t.arev) = (n, rev);
                *j.assignments.entry(n).or_insert(0) += 1;
            }
            if is_final && !was_final {
                j.open -= 1;
                if j.open == 0 {
                    j.finished_at = Some(t.ended.unwrap_or_else(crate::records::now_unix_ms));
                }
            } else if was_final && !is_final {
                j.open += 1;
                j.finished_at = None;
            }
            if t.state == TaskState::Assigned && was_pending {
                if let Some(cluster) = t.cluster {
                    let i = *slot.entry((cluster, c.job.clone())).or_insert_with(|| {
                        handed.push(((cluster, c.job.clone()), Vec::new()));
                        handed.len() - 1
                    });
                    handed[i].1.push(c.index);
                }
            }
            if was_pending && !is_pending {
                self.queue.remove(j.job.id, c.index);
            } else if !was_pending && is_pending && !j.record.cancelled {
                let (id, priority, t) = (j.job.id, j.record.priority, t.clone());
                self.enqueue(id, priority, c.index, &t, true);
            }
            if let Some((kind, text)) = c.event {
                noted.entry((c.job, kind, text)).or_default().push(c.index);
            }
        }
        for ((job, kind, text), tasks) in noted {
            let n = tasks.len();
            self.push_task_event(&job, kind, format!("{n} task(s) {text}"), tasks);
        }
        let mut out: BTreeMap<ClusterId, pb::AssignmentBatch> = BTreeMap::new();
        for ((cluster, job), indices) in handed {
            let Some(j) = self.jobs.get_mut(&job) else {
                continue;
            };
            let seq = self
                .registry
                .hand_over(cluster, &j.job, indices.len() as u64);
            let e = Event::new(
                &job,
                EventKind::Assigned,
                format!(
                    "{} task(s) assigned to cluster {}",
                    indices.len(),
                    self.registry.name(cluster)
                ),
            )
            .with_tasks(indices.clone());
            history::push(&mut self.log, j, e);
            let batch = out.entry(cluster).or_default();
            batch
                .assignments
                .push(assignment_message(&j.record, indices));
            batch.seq = seq;
        }
        out
    }

    /// The first batch of a (re)connecting agent's stream: every task
    /// assigned to `cluster` and not placed yet; in `held`, every job that
    /// exists, with the unfinished tasks the cluster holds (a job not
    /// listed was deleted, a task not listed taken back, while the agent
    /// was away: they must stop there); and the cancelled jobs with tasks
    /// still on its machines.
    pub fn assigned_to(&self, cluster: ClusterId) -> pb::AssignmentBatch {
        let mut batch = pb::AssignmentBatch {
            seq: self.registry.entries()[cluster.0 as usize].handed_total,
            resync: true,
            ..Default::default()
        };
        for j in self.jobs.values() {
            let mut assigned = Vec::new();
            let mut held = Vec::new();
            for (i, t) in j.tasks.iter().enumerate() {
                if t.cluster != Some(cluster) || t.state.is_final() {
                    continue;
                }
                held.push(i as u32);
                // Lost tasks (stored by an older version) are the cluster's
                // to report again.
                if matches!(t.state, TaskState::Assigned | TaskState::Lost) {
                    assigned.push(i as u32);
                }
            }
            let name = j.record.name.clone();
            if j.record.cancelled {
                if !held.is_empty() {
                    batch.cancelled_jobs.push(name.clone());
                }
            } else if !assigned.is_empty() {
                batch
                    .assignments
                    .push(assignment_message(&j.record, assigned));
            }
            batch.held.push(pb::JobTasks {
                job: name,
                indices: held,
            });
        }
        batch
    }

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
            pb::TaskState::Preempted => {
                let mut entry = t.clone();
                let event = self.after_preemption(j, &mut entry, &r.reason);
                return Some(self.change(&r.job, r.index, t, entry, Some(event)));
            }
            _ => return None,
        };
        let mut entry = t.clone();
        entry.state = state;
        if !r.machine.is_empty() {
            entry.machine = Some(r.machine.clone());
            entry.gpus = r.gpus.clone();
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
        // The first word of a placement: an attempt has started. (The key
        // keeps `assigned` and the attempts before this one until the task
        // ends, so a new leader that hears of it again from the cluster's
        // resync counts the same attempt once too.)
        if t.state == TaskState::Assigned && state != TaskState::Lost {
            entry.attempts += 1;
            entry.reason.clear();
        }
        let cluster_name = self.registry.name(cluster);
        let event = match state {
            TaskState::Failed => {
                let code = r.exit_code.map_or("unknown".to_string(), |c| c.to_string());
                let what = match r.exit_code {
                    // The node knows more than the code: it was killed
                    // for exceeding its memory request.
                    _ if !r.reason.is_empty() => format!("failed: {} (exit code {code})", r.reason),
                    Some(127) => format!("failed: the command was not found (exit code {code})"),
                    Some(126) => {
                        format!("failed: the command could not be executed (exit code {code})")
                    }
                    _ => format!("failed (exit code {code})"),
                };
                Some(self.after_attempt(j, &mut entry, false, what))
            }
            TaskState::Lost => Some(self.after_attempt(
                j,
                &mut entry,
                true,
                format!("lost with its machine on cluster {cluster_name}"),
            )),
            TaskState::Succeeded => {
                entry.ended = Some(crate::records::now_unix_ms());
                Some((EventKind::Succeeded, "succeeded".to_string()))
            }
            TaskState::Placed => Some((
                EventKind::Placed,
                format!("placed on cluster {cluster_name}"),
            )),
            TaskState::Running => Some((EventKind::Running, "running".to_string())),
            _ => None,
        };
        if entry.state.is_on_machine() {
            // Progress on a machine is not written: the key keeps what it
            // had (`assigned`) until the task ends (see the module notes of
            // `state`).
            return Some(self.memory_change(&r.job, r.index, entry, event));
        }
        Some(self.change(&r.job, r.index, t, entry, event))
    }

    /// The changes that return tasks a cluster cannot place to `pending`,
    /// remembering the cluster so the next pass tries another.
    pub fn hand_back_changes(&self, cluster: ClusterId, h: &pb::HandBack) -> Vec<TaskChange> {
        let Some(j) = self.jobs.get(&h.job) else {
            return Vec::new();
        };
        let text = format!(
            "handed back by cluster {}: {}",
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
                entry.gpus.clear();
                if !entry.handed_back.contains(&cluster) {
                    entry.handed_back.push(cluster);
                }
                let event = Some((EventKind::HandedBack, text.clone()));
                Some(self.change(&h.job, i, t, entry, event))
            })
            .collect()
    }
}
