//! What the agent's loops and its service share: its state behind a lock
//! that only this module takes, and the signals between them.
//!
//! Each method is one step under the lock, never held across an `.await`:
//! the planner plans, commits without the lock, then applies.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use sched_proto::pb;
use sched_store::{KeyValue, Revision};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::change::Change;
use super::config::AgentConfig;
use super::links::WorkSender;
use super::reports::Outgoing;
use super::state::AgentState;
use crate::error::AgentError;

pub struct Agent {
    state: Mutex<AgentState>,
    /// Wakes the planner.
    pub wake: Notify,
    /// Wakes the upstream loop (reports to send).
    pub upstream: Notify,
    pub config: AgentConfig,
    /// The policy in force: `config.policy` until a SIGHUP reads the
    /// `--policy` file again.
    policy: Mutex<sched_core::policy::Policy>,
    /// Fires when the agent shuts down: open streams end.
    pub shutdown: CancellationToken,
}

impl Agent {
    pub fn new(state: AgentState, config: AgentConfig, shutdown: CancellationToken) -> Self {
        Agent {
            state: Mutex::new(state),
            wake: Notify::new(),
            upstream: Notify::new(),
            policy: Mutex::new(config.policy.clone()),
            config,
            shutdown,
        }
    }

    fn state(&self) -> MutexGuard<'_, AgentState> {
        // State changes are applied in single steps under the lock; a panic
        // elsewhere leaves it consistent enough to go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy in force.
    pub fn policy(&self) -> sched_core::policy::Policy {
        self.policy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts a validated policy in force from the next pass on.
    pub fn set_policy(&self, policy: sched_core::policy::Policy) {
        self.state().set_policy(policy.local.clone());
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = policy;
        self.wake.notify_one();
    }

    // ---- node agents (the service) ----

    pub fn register_node(&self, r: &pb::RegisterNodeRequest) {
        let now = Instant::now();
        self.state()
            .register_node(&r.node, &r.address, &r.machines, &r.tasks, now);
        self.wake.notify_one();
        self.upstream.notify_one();
    }

    /// False asks the node to register again.
    pub fn node_heartbeat(&self, node: &str) -> bool {
        self.state().heartbeat(node, Instant::now())
    }

    pub fn open_work(&self, node: &str, tx: WorkSender) -> Result<(), AgentError> {
        self.state().open_work(node, tx)
    }

    pub fn node_reports(&self, node: &str, tasks: &[pb::NodeTask]) -> Result<(), AgentError> {
        self.state().node_reports(node, tasks)?;
        self.wake.notify_one();
        self.upstream.notify_one();
        Ok(())
    }

    pub fn machine_statuses(&self) -> Vec<pb::MachineStatus> {
        self.state().machine_statuses()
    }

    /// The node serving a task's output, and the task's machine.
    pub fn task_node(&self, job: &str, index: u32) -> Result<(String, String), AgentError> {
        self.state().task_node(job, index)
    }

    // ---- the planner ----

    /// Expires silent nodes, then plans a pass: the commits to write.
    pub fn plan(&self, limit: usize) -> Vec<Vec<Change>> {
        let now = Instant::now();
        let mut st = self.state();
        st.expire(now);
        let commits = st.commits(limit, now);
        let m = crate::metrics::agent();
        m.queued_tasks.set(st.queue_len() as i64);
        drop(st);
        let placed = commits
            .iter()
            .flatten()
            .filter(|c| matches!(c, Change::Place { .. }))
            .count();
        m.tasks_placed.inc_by(placed as u64);
        m.pass_duration.observe(now.elapsed().as_secs_f64());
        commits
    }

    pub fn applied(&self, commit: Vec<Change>, rev: Revision) {
        self.state().applied(commit, rev);
    }

    /// See [`AgentState::failed`].
    pub fn failed(&self, commit: Vec<Change>, err: &AgentError) -> Vec<String> {
        self.state().failed(commit, err)
    }

    pub fn refresh(&self, key: &str, kv: Option<KeyValue>) {
        self.state().refresh(key, kv);
    }

    pub fn check(&self) -> Result<(), AgentError> {
        self.state().check()
    }

    // ---- the global scheduler (the upstream loop) ----

    pub fn classes(&self) -> Vec<pb::MachineClassStatus> {
        self.state().classes()
    }

    pub fn heartbeat_request(&self) -> pb::HeartbeatRequest {
        self.state().heartbeat_request()
    }

    pub fn receive(&self, batch: pb::AssignmentBatch) {
        self.state().receive(batch);
        self.wake.notify_one();
    }

    pub fn resync_reports(&self) {
        self.state().resync_reports();
    }

    pub fn take_reports(&self, max: usize) -> Outgoing {
        self.state().take_reports(max)
    }

    pub fn put_back_reports(&self, out: Outgoing) {
        self.state().put_back_reports(out);
    }

    /// See [`AgentState::reports_delivered`].
    pub fn reports_delivered(&self, tasks: &[pb::TaskReport]) {
        self.state().reports_delivered(tasks);
    }

    /// See [`AgentState::session_failed`].
    pub fn session_failed(&self) {
        self.state().session_failed();
        self.wake.notify_one();
    }

    pub fn pending_reports(&self) -> usize {
        self.state().pending_reports()
    }
}
