//! The JSON values stored under the keys of [`crate::keys`].

use std::collections::BTreeMap;

use sched_core::lifecycle::{RestartSpec, Span};
use sched_core::resources::Resources;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, for records and events.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One task's request in integer units (the core's units, named so that
/// `etcdctl` output explains itself).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesRecord {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    #[serde(default)]
    pub disk_bytes: u64,
    #[serde(default)]
    pub gpu_millis: u64,
}

impl From<Resources> for ResourcesRecord {
    fn from(r: Resources) -> Self {
        let [cpu_millis, memory_bytes, disk_bytes, gpu_millis] = r.as_array();
        ResourcesRecord {
            cpu_millis,
            memory_bytes,
            disk_bytes,
            gpu_millis,
        }
    }
}

impl From<ResourcesRecord> for Resources {
    fn from(r: ResourcesRecord) -> Self {
        Resources::from_array([r.cpu_millis, r.memory_bytes, r.disk_bytes, r.gpu_millis])
    }
}

/// A job as accepted: `P/jobs/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub name: String,
    pub tasks: u32,
    pub request: ResourcesRecord,
    /// The request as the user wrote it (quantities), for `get job`.
    pub request_text: BTreeMap<String, String>,
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub constraints: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The client's id for the submission that created the job: a retry of
    /// it is recognised and succeeds.
    pub submission_id: String,
    pub submitted_unix_ms: i64,
    #[serde(default)]
    pub cancelled: bool,
    /// What the job said of restarts (the policy's defaults fill the rest,
    /// so a policy change reaches the jobs that did not choose).
    #[serde(default, skip_serializing_if = "RestartSpec::is_empty")]
    pub restart: RestartSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_after_finished: Option<Span>,
    /// Whose job it is (records written before tenants are `default`'s).
    #[serde(default = "default_tenant")]
    pub tenant: String,
}

fn default_tenant() -> String {
    sched_core::job::DEFAULT_TENANT.to_string()
}

/// A task's state, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Assigned,
    Placed,
    Running,
    Succeeded,
    Failed,
    Lost,
    Cancelled,
}

impl TaskState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// On a machine (or about to be): what a cancel must stop there.
    pub fn is_on_machine(self) -> bool {
        matches!(self, TaskState::Placed | TaskState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Placed => "placed",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Lost => "lost",
            TaskState::Cancelled => "cancelled",
        }
    }
}

/// Tasks of one job that a scheduling pass handed to one cluster:
/// `P/tasks/<job>/assigned-<n>`. One key for all of them, instead of one
/// per task: the key of a task is written only when it changes after that
/// (handed back, lost, ended), and then the newer of the two (by
/// revision) says where the task stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    pub cluster: String,
    /// Task indices as inclusive ranges `[first, last]`, in the pass's
    /// order.
    pub tasks: Vec<[u32; 2]>,
}

impl AssignmentRecord {
    /// Every index the record names.
    pub fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.tasks.iter().flat_map(|&[a, b]| a..=b)
    }
}

/// Consecutive indices as inclusive ranges (`0,1,2,5` is `[0,2],[5,5]`).
pub fn index_ranges(indices: impl IntoIterator<Item = u32>) -> Vec<[u32; 2]> {
    let mut out: Vec<[u32; 2]> = Vec::new();
    for i in indices {
        match out.last_mut() {
            Some(r) if r[1].checked_add(1) == Some(i) => r[1] = i,
            _ => out.push([i, i]),
        }
    }
    out
}

/// A task that has left `pending` at least once: `P/tasks/<job>/<index>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// The GPU devices of its placement on `machine` (`0+1`, `3:460`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gpus: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Clusters that could not place the task; it is not offered to them
    /// again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handed_back: Vec<String>,
    /// Attempts started (placements on a machine).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// A pending task waiting out its restart backoff: when it may go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_unix_ms: Option<i64>,
    /// Why it is in its state, when there is more to say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When it reached a final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_unix_ms: Option<i64>,
    /// Pending because higher-priority work evicted it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub preempted: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One class of identical machines of a registered cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineClassRecord {
    pub name: String,
    pub capacity: ResourcesRecord,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub count: u32,
    /// In `seen_classes`: when a cluster last reported the shape (0: read
    /// from an older record, counted as now).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub last_seen_unix_ms: i64,
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

/// A registered cluster: `P/clusters/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub name: String,
    pub location: String,
    /// Where its local agent serves `clustersched.internal.v1.Machines`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    pub classes: Vec<MachineClassRecord>,
    /// Every machine shape the cluster has reported, with the most machines
    /// of it seen at once. Jobs are validated against these, so a job is not
    /// refused while machines are briefly away (an agent restarting, nodes
    /// re-registering); it waits, pending, with its reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen_classes: Vec<MachineClassRecord>,
    pub registered_unix_ms: i64,
}

impl ClusterRecord {
    /// `seen_classes` grown by `more` and by the current classes, which
    /// are stamped as seen now.
    pub fn remember_classes(&mut self, more: &[MachineClassRecord]) {
        let now = now_unix_ms();
        let current: Vec<MachineClassRecord> = self
            .classes
            .iter()
            .map(|c| MachineClassRecord {
                last_seen_unix_ms: now,
                ..c.clone()
            })
            .collect();
        for c in more.iter().chain(&current) {
            let seen = if c.last_seen_unix_ms == 0 {
                now
            } else {
                c.last_seen_unix_ms
            };
            match self
                .seen_classes
                .iter_mut()
                .find(|s| s.capacity == c.capacity && s.labels == c.labels)
            {
                Some(s) => {
                    s.count = s.count.max(c.count);
                    s.last_seen_unix_ms = s.last_seen_unix_ms.max(seen);
                }
                None => self.seen_classes.push(MachineClassRecord {
                    last_seen_unix_ms: seen,
                    ..c.clone()
                }),
            }
        }
    }
}
