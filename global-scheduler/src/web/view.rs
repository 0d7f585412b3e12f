//! What the status page shows, as JSON: read from the leader's state in
//! one short critical section, filtered by tenant as `ListJobs` is.

use serde::Serialize;

use sched_core::resources::{format_bytes, format_cpu};
use sched_proto::pb;
use sched_security::User;

use crate::records::TaskState;
use crate::service::Role;
use crate::state::{JobEntry, State};

/// Jobs listed on the overview, newest first (the page stays small and
/// quick with any number of jobs; the counts cover them all).
pub const MAX_JOBS_LISTED: usize = 200;

#[derive(Debug, Serialize)]
pub struct Problem {
    pub error: String,
}

impl Problem {
    pub fn new(error: String) -> Self {
        Problem { error }
    }
}

/// The overview.
#[derive(Debug, Serialize)]
pub struct Status {
    pub leader: bool,
    /// Where the leader is, on a standby (empty when unknown).
    pub leader_url: String,
    pub user: String,
    pub now_unix_ms: i64,
    pub policy_source: String,
    pub clusters: Vec<ClusterView>,
    /// Jobs by state, over every job the user sees.
    pub job_states: Vec<Count>,
    /// Tasks by state, over the same jobs.
    pub task_states: Vec<Count>,
    pub jobs: Vec<JobView>,
    /// Jobs not listed (past [`MAX_JOBS_LISTED`]).
    pub jobs_not_listed: usize,
}

#[derive(Debug, Serialize)]
pub struct Count {
    pub state: &'static str,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub name: String,
    pub location: String,
    pub up: bool,
    pub machines: u32,
    pub cpu: Usage,
    pub memory: Usage,
    pub queue_len: u64,
}

/// Used (placed + queued) against capacity, in the resource's units and
/// as text.
#[derive(Debug, Serialize)]
pub struct Usage {
    pub used: u64,
    pub capacity: u64,
    /// Per mille of capacity (0..=1000), for the bar.
    pub permille: u64,
    pub text: String,
}

fn usage(used: u64, capacity: u64, fmt: impl Fn(u64) -> String) -> Usage {
    Usage {
        used,
        capacity,
        permille: (used.saturating_mul(1000))
            .checked_div(capacity)
            .unwrap_or(0)
            .min(1000),
        text: format!("{} / {}", fmt(used), fmt(capacity)),
    }
}

#[derive(Debug, Serialize)]
pub struct JobView {
    pub name: String,
    pub tenant: String,
    pub state: &'static str,
    pub tasks: u32,
    pub counts: Vec<Count>,
    pub command: String,
    pub locality: String,
    pub submitted_unix_ms: i64,
    /// Why its pending tasks wait (empty when none do).
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct JobDetail {
    pub leader: bool,
    pub leader_url: String,
    pub job: JobView,
    /// Why each unfinished task is where it is (as `describe` says).
    pub reasons: Vec<String>,
    pub tasks: Vec<TaskView>,
}

#[derive(Debug, Serialize)]
pub struct TaskView {
    pub index: u32,
    pub state: &'static str,
    pub cluster: String,
    pub machine: String,
    pub attempts: u32,
    pub exit_code: Option<i32>,
    pub reason: String,
}

fn job_state_name(s: pb::JobState) -> &'static str {
    match s {
        pb::JobState::Unspecified => "unknown",
        pb::JobState::Pending => "pending",
        pb::JobState::Running => "running",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
    }
}

const JOB_STATES: [&str; 5] = ["pending", "running", "succeeded", "failed", "cancelled"];

const TASK_STATES: [TaskState; 8] = [
    TaskState::Pending,
    TaskState::Assigned,
    TaskState::Placed,
    TaskState::Running,
    TaskState::Succeeded,
    TaskState::Failed,
    TaskState::Lost,
    TaskState::Cancelled,
];

fn task_counts(j: &JobEntry) -> [u64; 8] {
    let mut c = [0u64; 8];
    for t in &j.tasks {
        if let Some(i) = TASK_STATES.iter().position(|s| *s == t.state) {
            c[i] += 1;
        }
    }
    c
}

fn counts(c: &[u64; 8]) -> Vec<Count> {
    TASK_STATES
        .iter()
        .zip(c)
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| Count {
            state: s.as_str(),
            count: *n,
        })
        .collect()
}

fn job_view(state: &State, j: &JobEntry) -> JobView {
    let r = &j.record;
    JobView {
        name: r.name.clone(),
        tenant: r.tenant.clone(),
        state: job_state_name(State::job_state(j)),
        tasks: r.tasks,
        counts: counts(&task_counts(j)),
        command: r.command.join(" "),
        locality: r.locality.clone().unwrap_or_default(),
        submitted_unix_ms: r.submitted_unix_ms,
        reason: if state.pending_of(j) > 0 {
            state.unschedulable(j).unwrap_or_default().to_string()
        } else {
            String::new()
        },
    }
}

/// The overview for `user`: on a standby, only that it is one and where
/// the leader is (clusters' live figures are the leader's alone).
pub fn status(role: &Role, user: &User) -> Status {
    let mut out = Status {
        leader: false,
        leader_url: role.hint(),
        user: user.name.clone(),
        now_unix_ms: crate::records::now_unix_ms(),
        policy_source: role.policy().source().to_string(),
        clusters: Vec::new(),
        job_states: Vec::new(),
        task_states: Vec::new(),
        jobs: Vec::new(),
        jobs_not_listed: 0,
    };
    let Ok(shared) = role.leader() else {
        return out;
    };
    out.leader = true;
    out.leader_url.clear();
    shared.read(|state| {
        out.clusters = state
            .registry()
            .entries()
            .iter()
            .filter(|e| !e.removed)
            .map(|e| {
                let s = &e.summary;
                ClusterView {
                    name: e.record.name.clone(),
                    location: e.record.location.clone(),
                    up: s.up,
                    machines: s.classes.iter().map(|c| c.count).sum(),
                    cpu: usage(s.allocated.cpu.0 + s.queued.cpu.0, s.capacity.cpu.0, |v| {
                        format_cpu(sched_core::resources::MilliCpu(v))
                    }),
                    memory: usage(
                        s.allocated.memory.0 + s.queued.memory.0,
                        s.capacity.memory.0,
                        |v| format_bytes(sched_core::resources::Bytes(v)),
                    ),
                    queue_len: s.queue_len,
                }
            })
            .collect();
        let mut jobs: Vec<&JobEntry> = state
            .jobs()
            .filter(|j| user.sees(&j.record.tenant))
            .collect();
        // Newest first; the id breaks ties in submission order.
        jobs.sort_by_key(|j| std::cmp::Reverse((j.record.submitted_unix_ms, j.job.id)));
        let mut by_job_state = [0u64; 5];
        let mut by_task_state = [0u64; 8];
        for j in &jobs {
            let name = job_state_name(State::job_state(j));
            if let Some(i) = JOB_STATES.iter().position(|s| *s == name) {
                by_job_state[i] += 1;
            }
            for (sum, n) in by_task_state.iter_mut().zip(task_counts(j)) {
                *sum += n;
            }
        }
        out.job_states = JOB_STATES
            .iter()
            .zip(by_job_state)
            .map(|(s, n)| Count { state: s, count: n })
            .collect();
        out.task_states = counts(&by_task_state);
        out.jobs_not_listed = jobs.len().saturating_sub(MAX_JOBS_LISTED);
        out.jobs = jobs
            .iter()
            .take(MAX_JOBS_LISTED)
            .map(|j| job_view(state, j))
            .collect();
    });
    out
}

/// One job with its tasks, if `user` may see it (on a standby: none).
pub fn job(role: &Role, user: &User, name: &str) -> Option<JobDetail> {
    let shared = role.leader().ok()?;
    shared.read(|state| {
        let j = state.job(name).filter(|j| user.sees(&j.record.tenant))?;
        Some(JobDetail {
            leader: true,
            leader_url: String::new(),
            job: job_view(state, j),
            reasons: state.pending_reasons(j),
            tasks: j
                .tasks
                .iter()
                .enumerate()
                .map(|(i, t)| TaskView {
                    index: i as u32,
                    state: t.state.as_str(),
                    cluster: t
                        .cluster
                        .map(|c| state.registry().name(c).to_string())
                        .unwrap_or_default(),
                    machine: t.machine.clone().unwrap_or_default(),
                    attempts: t.attempts,
                    exit_code: t.exit_code,
                    reason: t.reason.clone(),
                })
                .collect(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_per_mille_and_capped() {
        assert_eq!(usage(1, 4, |v| v.to_string()).permille, 250);
        assert_eq!(usage(5, 4, |v| v.to_string()).permille, 1000);
        assert_eq!(usage(5, 0, |v| v.to_string()).permille, 0);
    }
}
