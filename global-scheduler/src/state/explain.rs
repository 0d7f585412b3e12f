//! Views of jobs for the API, and why their tasks are where they are.

use std::collections::BTreeMap;

use sched_core::assign::{ask_room_as_a_pass, unassignable_reason, HAND_BACK_RETRY_MS};
use sched_core::cluster::ClusterId;
use sched_core::rank::Ranker;
use sched_proto::{pb, wkt};

use super::{JobEntry, State};
use crate::convert::to_pb_resources;
use crate::records::TaskState;

impl State {
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

    pub fn summary(&self, j: &JobEntry) -> pb::JobSummary {
        let mut c = pb::TaskCounts::default();
        for t in &j.tasks {
            match t.state {
                TaskState::Pending if t.preempted => c.preempted += 1,
                TaskState::Pending => c.pending += 1,
                TaskState::Assigned => c.assigned += 1,
                TaskState::Placed => c.placed += 1,
                TaskState::Running => c.running += 1,
                TaskState::Succeeded => c.succeeded += 1,
                TaskState::Failed => c.failed += 1,
                TaskState::Lost => c.lost += 1,
                TaskState::Cancelled => c.cancelled += 1,
            }
        }
        pb::JobSummary {
            name: j.record.name.clone(),
            state: Self::job_state(j) as i32,
            tasks: j.record.tasks,
            counts: Some(c),
            submit_time: Some(wkt::timestamp(j.record.submitted_unix_ms)),
            request: Some(to_pb_resources(&j.job.spec.request)),
            priority: j.record.priority,
            locality: j.record.locality.clone().unwrap_or_default(),
            tenant: j.record.tenant.clone(),
            band: self
                .policy
                .priority
                .band_name(j.record.priority)
                .to_string(),
        }
    }

    pub fn status(&self, j: &JobEntry) -> pb::JobStatus {
        let r = &j.record;
        pb::JobStatus {
            summary: Some(self.summary(j)),
            spec: Some(pb::JobSpec {
                name: r.name.clone(),
                tasks: r.tasks,
                resources: Some(pb::ResourceRequest {
                    cpu: r.request_text.get("cpu").cloned().unwrap_or_default(),
                    memory: r.request_text.get("memory").cloned().unwrap_or_default(),
                    disk: r.request_text.get("disk").cloned(),
                    gpu: r.request_text.get("gpu").cloned(),
                }),
                priority: Some(r.priority),
                locality: r.locality.clone(),
                constraints: r.constraints.clone().into_iter().collect(),
                command: r.command.clone(),
                restart: (!r.restart.is_empty()).then(|| pb::RestartPolicy {
                    policy: r
                        .restart
                        .policy
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default(),
                    max_attempts: r.restart.max_attempts,
                    backoff: r.restart.backoff.map(|b| wkt::duration(b.ms())),
                }),
                ttl_after_finished: r.ttl_after_finished.map(|t| wkt::duration(t.ms())),
                tenant: Some(r.tenant.clone()),
                band: None,
            }),
            tasks: j
                .tasks
                .iter()
                .enumerate()
                .map(|(i, t)| self.task_status(i, t))
                .collect(),
        }
    }

    /// Task `index` of a job, as the API shows it.
    pub fn task_status(&self, index: usize, t: &super::TaskEntry) -> pb::TaskStatus {
        pb::TaskStatus {
            index: index as u32,
            state: t.shown_state() as i32,
            cluster: t
                .cluster
                .map(|c| self.registry.name(c).to_string())
                .unwrap_or_default(),
            machine: t.machine.clone().unwrap_or_default(),
            gpus: t.gpus.clone(),
            exit_code: t.exit_code,
            attempts: t.attempts,
            next_retry_time: t
                .retry_at
                .filter(|_| t.state == TaskState::Pending)
                .map(wkt::timestamp),
            reason: t.reason.clone(),
        }
    }

    /// Why `j`'s unfinished tasks are where they are, one line per reason:
    /// pending tasks get the core's ranking of every cluster right now.
    pub fn pending_reasons(&self, j: &JobEntry) -> Vec<String> {
        let mut out = Vec::new();
        if j.record.cancelled {
            let stopping = j.tasks.iter().filter(|t| t.state.is_on_machine()).count();
            if stopping > 0 {
                out.push(format!(
                    "{stopping} task(s) being stopped: the job was cancelled"
                ));
            }
            return out;
        }
        // Tasks evicted for higher-priority work, and by whom.
        let preempted: Vec<&super::TaskEntry> = j
            .tasks
            .iter()
            .filter(|t| t.state == TaskState::Pending && t.preempted)
            .collect();
        if let Some(last) = preempted.iter().max_by_key(|t| t.retry_at) {
            out.push(format!(
                "{} task(s) preempted: evicted for higher-priority work, waiting to run again (last: {})",
                preempted.len(),
                last.reason
            ));
        }
        // Tasks waiting out their restart backoff.
        let now = crate::records::now_unix_ms();
        let backing_off: Vec<&super::TaskEntry> = j
            .tasks
            .iter()
            .filter(|t| t.state == TaskState::Pending && t.retry_at.is_some_and(|at| at > now))
            .collect();
        if let Some(next) = backing_off.iter().filter_map(|t| t.retry_at).min() {
            let last = backing_off
                .iter()
                .max_by_key(|t| t.retry_at)
                .map_or("", |t| t.reason.as_str());
            out.push(format!(
                "{} task(s) pending: waiting out their restart backoff (next retry in {} ms; last: {last})",
                backing_off.len(),
                next - now
            ));
        }
        let summaries = self.registry.summaries();
        let ranker = Ranker::new(&self.policy, self.registry.locality());
        // Pending tasks a pass has taken out of the queue and whose
        // assignment is being written.
        let pending = j
            .tasks
            .iter()
            .filter(|t| t.state == TaskState::Pending)
            .count() as u32;
        let queued = self.queue.job_tasks(j.job.id);
        if pending > queued {
            out.push(format!(
                "{} task(s) pending: being assigned (the write is in progress)",
                pending - queued
            ));
        }
        for (handed_back, tasks) in self.queue.groups(j.job.id) {
            let n = tasks.len();
            if summaries.is_empty() {
                out.push(format!(
                    "{n} task(s) pending: no cluster has registered yet"
                ));
                continue;
            }
            let mut ranking = ranker.rank(&j.job, &summaries, handed_back);
            ask_room_as_a_pass(
                &ranker,
                self.registry.room(),
                &j.job,
                &mut ranking,
                &summaries,
                n,
            );
            match ranking.best() {
                Some(best) => out.push(format!(
                    "{n} task(s) pending: about to be assigned (best cluster: {})",
                    self.registry.name(best)
                )),
                None => {
                    out.push(self.preemption_outlook(j, &ranker, &ranking, &summaries));
                    let retry = if handed_back.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; clusters that handed tasks back are asked again {} s after the last hand-back",
                            HAND_BACK_RETRY_MS / 1000
                        )
                    };
                    out.push(format!(
                        "{n} task(s) pending: {}{retry}",
                        unassignable_reason(&ranking, &summaries)
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
        let mut waiting: BTreeMap<ClusterId, u32> = BTreeMap::new();
        for t in &j.tasks {
            if let (TaskState::Assigned, Some(c)) = (t.state, t.cluster) {
                *waiting.entry(c).or_insert(0) += 1;
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

    /// Whether evicting lower-priority work could place `j`'s tasks that
    /// no cluster has room for, as `describe` says it.
    fn preemption_outlook(
        &self,
        j: &JobEntry,
        ranker: &Ranker<'_>,
        ranking: &sched_core::rank::Ranking,
        summaries: &[sched_core::cluster::ClusterSummary],
    ) -> String {
        let bands = &self.policy.priority;
        let priority = j.record.priority;
        let band = bands.band_name(priority);
        let evicts = bands
            .band_of(priority)
            .map(|b| b.preempts.clone())
            .unwrap_or_default();
        if evicts.is_empty() {
            return format!(
                "  preemption: cannot help, band {band} (priority {priority}) may not evict any band"
            );
        }
        match ranker.preemption_target(&j.job, ranking, summaries) {
            Some((c, n)) => format!(
                "  preemption: could place {n} task(s) on cluster {} by evicting {} tasks; the next pass hands them over",
                self.registry.name(c),
                evicts.join(" or ")
            ),
            None => format!(
                "  preemption: cannot help, no cluster has room even without its {} tasks",
                evicts.join(" and ")
            ),
        }
    }
}
