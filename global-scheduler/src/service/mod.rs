//! The gRPC handlers: decode, ask the state or queue a command for the
//! engine, encode. No decisions here.
//!
//! - this module: whether this replica leads ([`Role`]), the views reads
//!   are answered from, and request decoding shared by the handlers;
//! - `scheduler`: `clustersched.v1.SchedulerService`, for users and `schedctl`;
//! - `clusters`: `clustersched.internal.v1.Clusters`, for local agents.

mod clusters;
mod paging;
mod scheduler;

use std::collections::BTreeSet;
use std::sync::Arc;

use sched_core::error::SpecError;
use sched_core::job::{parse_job_file, JobSpec, JobSpecText, ResourcesText};
use sched_core::names::check_name;
use sched_core::quantity::QuantityText;
use sched_core::resources::Resources;
use sched_core::room::{ClusterRoom, RoomGroup};
use sched_proto::pb;
use sched_security::Guard;
use tokio::sync::oneshot;
use tonic::{Response, Status};

pub use clusters::ClustersService;
pub use scheduler::SchedulerService;

use crate::convert::from_pb_resources;
use crate::error::ServiceError;
use crate::hub::{Command, Shared};
use crate::policy::{LivePolicy, Source};
use crate::records::MachineClassRecord;
use crate::state::State;

/// Whether this replica leads, and where the leader is if not.
pub struct Role {
    shared: std::sync::RwLock<Option<Arc<Shared>>>,
    leader_hint: std::sync::Mutex<String>,
    /// Where a standby reads jobs from (etcd reads are linearizable, so a
    /// standby's answer includes every job the leader has acknowledged).
    store: Arc<dyn sched_store::Store>,
    config: crate::config::Config,
    /// Who may call what (mutual TLS, tokens).
    guard: Guard,
    /// The policy in force (kept across terms; the leader's state holds
    /// the copy its decisions read).
    policy: std::sync::Mutex<LivePolicy>,
}

/// What a read is answered from: the leader's live state, or, on a
/// standby, the job(s) read from the store for this call.
pub enum View {
    Leader(Arc<Shared>),
    Standby { state: Box<State>, leader: String },
}

impl View {
    pub fn with<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        match self {
            View::Leader(s) => s.read(f),
            View::Standby { state, .. } => f(state),
        }
    }

    /// A standby's answer names the leader, as its refusals do, so that
    /// clients send their next call there.
    pub(crate) fn respond<T>(&self, body: T) -> Response<T> {
        let mut r = Response::new(body);
        if let View::Standby { leader, .. } = self {
            if let Ok(v) = leader.parse() {
                r.metadata_mut()
                    .insert(sched_proto::leader::LEADER_HEADER, v);
            }
        }
        r
    }
}

impl Role {
    pub fn new(store: Arc<dyn sched_store::Store>, config: crate::config::Config) -> Self {
        Role {
            shared: Default::default(),
            leader_hint: Default::default(),
            store,
            guard: Guard::new(config.tls.is_some(), config.tokens.clone()),
            policy: std::sync::Mutex::new(LivePolicy::new(
                config.policy.clone(),
                config.policy_file.clone(),
            )),
            config,
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, LivePolicy> {
        // Every change is one assignment under the lock: a panic elsewhere
        // cannot leave it half made.
        self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy in force, and where it came from.
    pub fn policy(&self) -> LivePolicy {
        self.live().clone()
    }

    /// The store key of the policy in force.
    fn policy_key(&self) -> String {
        crate::keys::Keys::new(&self.config.prefix).policy()
    }

    /// At takeover: settles the policy between the stored one and this
    /// replica's (see [`LivePolicy::takeover`]) and stores it if this
    /// replica's wins; returns the policy the new term decides with.
    pub(crate) async fn take_over_policy(
        &self,
        store: &Arc<dyn sched_store::Store>,
    ) -> Result<sched_core::policy::Policy, sched_store::StoreError> {
        let key = self.policy_key();
        let stored = store.get(&key).await?;
        let (write, live) = {
            let mut live = self.live();
            let write = live.takeover(stored.as_ref().map(|kv| kv.value.as_slice()));
            (write, live.clone())
        };
        if write {
            store.commit(&[policy_write(key, &live)]).await?;
        }
        tracing::info!(source = %live.source(), "policy in force");
        Ok(live.policy().clone())
    }

    /// Puts a validated `policy` in force: stored first when this replica
    /// leads (so a new leader keeps it), then in the decisions' state; an
    /// event tells the watchers. A standby keeps it for its next term.
    pub async fn set_policy(
        &self,
        policy: sched_core::policy::Policy,
        source: Source,
    ) -> Result<LivePolicy, ServiceError> {
        let mut next = self.policy();
        let old = next.policy().clone();
        next.set(policy.clone(), source);
        let leader = self.leader().ok();
        if let Some(shared) = &leader {
            // Fenced by the leader key: a replica deposed in the meantime
            // stores nothing (and keeps the policy for its next term only).
            shared
                .store
                .commit(&[policy_write(self.policy_key(), &next)])
                .await?;
        }
        *self.live() = next.clone();
        crate::metrics::metrics().policy.observe(if old == policy {
            sched_proto::metrics::policy::Outcome::Unchanged
        } else {
            sched_proto::metrics::policy::Outcome::Applied
        });
        let summary = LivePolicy::summary(&old, &policy);
        tracing::info!(source = %next.source(), reloads = next.reloads(), "policy {summary}");
        if let Some(shared) = leader {
            let message = format!("policy from {}: {summary}", next.source());
            shared.write(|s| s.set_policy(policy, message));
            shared.wake.notify_one();
        }
        Ok(next)
    }

    /// Records a refused policy change (the running policy stays).
    pub fn refuse_policy(&self, why: String) {
        tracing::error!(cause = %why, "policy refused; the running policy stays");
        crate::metrics::metrics()
            .policy
            .observe(sched_proto::metrics::policy::Outcome::Refused);
        self.live().refuse(why);
    }

    /// Reads the `--policy` file again (SIGHUP): validated first, a bad
    /// file refused with the reason logged.
    pub async fn reload_file(&self, path: &std::path::Path) {
        match crate::policy::read_file(path) {
            Ok(p) => {
                if let Err(e) = self.set_policy(p, Source::File(path.to_path_buf())).await {
                    self.refuse_policy(format!("cannot store the policy: {e}"));
                }
            }
            Err(e) => self.refuse_policy(e.to_string()),
        }
    }

    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// This replica's TLS material, for its calls to agents and nodes.
    pub fn tls(&self) -> Option<&sched_security::Tls> {
        self.config.tls.as_ref()
    }

    /// The view to answer a read from: the leader's state, or on a standby
    /// the stored jobs (only job `only`, if given). Job events and the live
    /// figures from heartbeats are the leader's alone.
    pub async fn view(&self, only: Option<&str>) -> Result<View, Status> {
        if let Ok(s) = self.leader() {
            return Ok(View::Leader(s));
        }
        let keys = crate::keys::Keys::new(&self.config.prefix);
        let policy = self.live().policy().clone();
        match crate::recovery::load_state(&keys, &self.store, &self.config, &policy, only).await {
            Ok(state) => Ok(View::Standby {
                state: Box::new(state),
                leader: self.hint(),
            }),
            Err(e) => Err(Status::unavailable(format!(
                "this replica is a standby and cannot read the store: {e}"
            ))),
        }
    }

    /// Where the leader is, as last seen (empty: not known).
    pub fn hint(&self) -> String {
        self.leader_hint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes this replica the leader, serving `shared`.
    pub fn lead(&self, shared: Arc<Shared>) {
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = Some(shared);
    }

    /// Back to standing by.
    pub fn step_down(&self) {
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn is_leader(&self) -> bool {
        self.shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Records where the leader is, for standbys' answers.
    pub fn set_hint(&self, address: String) {
        *self.leader_hint.lock().unwrap_or_else(|p| p.into_inner()) = address;
    }

    /// The leader's state, or UNAVAILABLE naming the leader (in the message
    /// and the `x-sched-leader` header) so that clients try it next.
    pub fn leader(&self) -> Result<Arc<Shared>, Status> {
        if let Some(s) = self
            .shared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(s.clone());
        }
        let hint = self.hint();
        let mut status = if hint.is_empty() {
            Status::unavailable("this replica is a standby and no leader is known yet; retry")
        } else {
            Status::unavailable(format!("this replica is a standby; the leader is {hint}"))
        };
        if let Ok(v) = hint.parse() {
            status
                .metadata_mut()
                .insert(sched_proto::leader::LEADER_HEADER, v);
        }
        Err(status)
    }
}

fn policy_write(key: String, live: &LivePolicy) -> sched_store::Write {
    let value = serde_json::to_vec(&live.record())
        .expect("policy records serialize: plain strings and integers");
    sched_store::Write::put(key, value, sched_store::Expect::Any)
}

pub(crate) async fn ask<T>(
    shared: &Shared,
    make: impl FnOnce(oneshot::Sender<Result<T, ServiceError>>) -> Command,
) -> Result<T, ServiceError> {
    let (tx, rx) = oneshot::channel();
    shared.send(make(tx))?;
    rx.await.map_err(|_| ServiceError::ShuttingDown)?
}

/// A job from the API, checked like a job file's entry `field`.
fn spec_from_pb(j: pb::JobSpec, field: &str) -> Result<JobSpec, SpecError> {
    let r = j.resources.unwrap_or_default();
    let text = JobSpecText {
        name: j.name,
        tasks: i64::from(j.tasks),
        resources: ResourcesText {
            cpu: QuantityText::Text(r.cpu),
            memory: QuantityText::Text(r.memory),
            disk: r.disk.map(QuantityText::Text),
            gpu: r.gpu.map(QuantityText::Text),
        },
        priority: j.priority.map(i64::from),
        locality: j.locality,
        constraints: j.constraints.into_iter().collect(),
        command: j.command,
        restart: match j.restart {
            Some(r) => Some(sched_core::job::RestartText {
                policy: (!r.policy.is_empty()).then_some(r.policy),
                max_attempts: r.max_attempts.map(i64::from),
                backoff: span_text(r.backoff, &format!("{field}.restart.backoff"))?,
            }),
            None => None,
        },
        ttl_after_finished: span_text(
            j.ttl_after_finished,
            &format!("{field}.ttl_after_finished"),
        )?,
        tenant: j.tenant,
        band: j.band,
        arrival: None,
        departure: None,
        gpu_model: None,
    };
    text.validate(field)
}

/// A duration from the API as a job file writes it (`1500ms`), for the
/// job file's checks (at most 365 days) to apply alike.
fn span_text(
    d: Option<sched_proto::wkt::Duration>,
    field: &str,
) -> Result<Option<String>, SpecError> {
    d.map(|d| {
        sched_proto::wkt::duration_ms(&d)
            .map(|ms| format!("{ms}ms"))
            .map_err(|e| SpecError::new(field, e.to_string()))
    })
    .transpose()
}

/// The jobs of a submit call, validated like a job file's (public for the
/// decoder fuzz tests).
pub fn specs_of(req: pb::SubmitRequest, max_jobs: usize) -> Result<Vec<JobSpec>, SpecError> {
    let specs = match (req.yaml.is_empty(), req.jobs.is_empty()) {
        (false, true) => parse_job_file(&req.yaml)?,
        (true, false) => {
            let mut names = BTreeSet::new();
            let mut out = Vec::with_capacity(req.jobs.len());
            for (i, j) in req.jobs.into_iter().enumerate() {
                let spec = spec_from_pb(j, &format!("jobs[{i}]"))?;
                if !names.insert(spec.name.clone()) {
                    return Err(SpecError::new(
                        format!("jobs[{i}].name"),
                        format!("duplicate job name {:?}", spec.name),
                    ));
                }
                out.push(spec);
            }
            out
        }
        (true, true) => return Err(SpecError::new("jobs", "at least one job is required")),
        (false, false) => {
            return Err(SpecError::new(
                "yaml",
                "give either a job file or a list of jobs, not both",
            ))
        }
    };
    if specs.len() > max_jobs {
        return Err(SpecError::new(
            "jobs",
            format!("{} jobs in one call; at most {max_jobs}", specs.len()),
        ));
    }
    Ok(specs)
}

/// A heartbeat's room of `classes` (its classes, converted). Held to what
/// the classes say, so that a wrong report cannot promise more than is
/// there: no more machines of a class than it counts up, none with more
/// free than its capacity; groups of a class not listed are left out.
pub fn room_from_pb(classes: &[MachineClassRecord], room: pb::MachineRoom) -> ClusterRoom {
    let mut up: Vec<u32> = classes.iter().map(|c| c.count).collect();
    let groups: Vec<RoomGroup> = room
        .groups
        .iter()
        .filter_map(|g| {
            let class = classes.get(g.class_index as usize)?;
            let left = &mut up[g.class_index as usize];
            let count = g.count.min(*left);
            *left -= count;
            let capacity = Resources::from(class.capacity);
            let free = from_pb_resources(g.free.as_ref());
            Some(RoomGroup {
                class: g.class_index,
                free: Resources::from_array(std::array::from_fn(|i| {
                    free.as_array()[i].min(capacity.as_array()[i])
                })),
                count,
            })
        })
        .collect();
    let shapes = classes
        .iter()
        .map(|c| (c.capacity.into(), c.labels.clone()))
        .collect();
    ClusterRoom::new(shapes, groups)
}

/// Machine classes from a registration or heartbeat, validated.
pub fn classes_from_pb(
    classes: Vec<pb::MachineClassStatus>,
) -> Result<Vec<MachineClassRecord>, SpecError> {
    let mut names = BTreeSet::new();
    classes
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let field = format!("classes[{i}]");
            check_name(&format!("{field}.name"), &c.name)?;
            if !names.insert(c.name.clone()) {
                return Err(SpecError::new(
                    format!("{field}.name"),
                    format!("duplicate class {:?}", c.name),
                ));
            }
            let capacity = from_pb_resources(c.capacity.as_ref());
            if capacity.cpu.0 == 0 || capacity.memory.0 == 0 {
                return Err(SpecError::new(
                    format!("{field}.capacity"),
                    "a machine needs some cpu and memory",
                ));
            }
            Ok(MachineClassRecord {
                name: c.name,
                capacity: capacity.into(),
                labels: c.labels.into_iter().collect(),
                count: c.count,
                last_seen_unix_ms: 0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, cpu_millis: u64, count: u32) -> pb::MachineClassStatus {
        pb::MachineClassStatus {
            name: name.into(),
            capacity: Some(pb::Resources {
                cpu_millis,
                memory_bytes: 1 << 30,
                ..Default::default()
            }),
            labels: Default::default(),
            count,
        }
    }

    fn group(class_index: u32, cpu_millis: u64, count: u32) -> pb::RoomGroup {
        pb::RoomGroup {
            class_index,
            free: Some(pb::Resources {
                cpu_millis,
                memory_bytes: 1 << 30,
                ..Default::default()
            }),
            count,
        }
    }

    #[test]
    fn a_room_report_is_held_to_what_its_classes_say() {
        let classes = classes_from_pb(vec![class("a", 4000, 3), class("b", 8000, 1)]).unwrap();
        let room = room_from_pb(
            &classes,
            pb::MachineRoom {
                groups: vec![
                    // Two of class a's three machines, then three more: one
                    // is left for them.
                    group(0, 1000, 2),
                    group(0, 4000, 3),
                    // More free than the machine has: its capacity.
                    group(1, 9000, 1),
                    // No such class.
                    group(2, 1000, 5),
                ],
            },
        );
        let groups: Vec<(u32, u64, u32)> = room
            .groups()
            .iter()
            .map(|g| (g.class, g.free.cpu.0, g.count))
            .collect();
        assert_eq!(groups, [(0, 1000, 2), (0, 4000, 1), (1, 8000, 1)]);
    }
}
