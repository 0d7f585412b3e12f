//! The local agent's view of its cluster: machines (from node agents),
//! tasks handed over by the global scheduler and not placed yet, and
//! placements. Plain data and decisions: [`super`] persists placements in
//! the store before any node hears of them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sched_core::cell::Cell;
use sched_core::job::JobId;
use sched_core::labels::Labels;
use sched_core::machine::{MachineClass, MachineId};
use sched_core::pack::{pack, TaskGroup};
use sched_core::policy::LocalPolicy;
use sched_core::resources::Resources;
use sched_proto::pb;
use sched_store::{Expect, KeyValue, Revision, Write};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{from_pb, to_pb};

pub type TaskKey = (String, u32);
pub type WorkSender = mpsc::Sender<Result<pb::WorkBatch, tonic::Status>>;

/// A placement as stored at `P/placements/<cluster>/<job>/<index>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRecord {
    pub machine: String,
    pub attempt: u64,
    pub state: PlacementState,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    #[serde(default)]
    pub disk_bytes: u64,
    #[serde(default)]
    pub gpu_millis: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub constraints: Labels,
    #[serde(default)]
    pub priority: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementState {
    Placed,
    Running,
    Succeeded,
    Failed,
    Lost,
}

impl PlacementState {
    fn is_final(self) -> bool {
        matches!(self, PlacementState::Succeeded | PlacementState::Failed)
    }

    fn to_pb(self) -> pb::TaskState {
        match self {
            PlacementState::Placed => pb::TaskState::Placed,
            PlacementState::Running => pb::TaskState::Running,
            PlacementState::Succeeded => pb::TaskState::Succeeded,
            PlacementState::Failed => pb::TaskState::Failed,
            PlacementState::Lost => pb::TaskState::Lost,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Placement {
    pub record: PlacementRecord,
    /// `mod_revision` of its key; 0 before it is written.
    pub rev: Revision,
    /// Whether its request is counted on its machine in the cell.
    pub accounted: bool,
}

impl Placement {
    fn queued(&self) -> Queued {
        Queued {
            request: self.request(),
            constraints: self.record.constraints.clone(),
            command: self.record.command.clone(),
            priority: self.record.priority,
        }
    }

    fn request(&self) -> Resources {
        Resources::from_array([
            self.record.cpu_millis,
            self.record.memory_bytes,
            self.record.disk_bytes,
            self.record.gpu_millis,
        ])
    }
}

/// A task handed over and waiting for a machine.
#[derive(Debug, Clone)]
pub struct Queued {
    pub request: Resources,
    pub constraints: Labels,
    pub command: Vec<String>,
    pub priority: u32,
}

#[derive(Debug, Clone)]
pub struct MachineEntry {
    pub node: String,
    pub capacity: Resources,
    pub labels: Labels,
    pub id: MachineId,
}

pub struct NodeEntry {
    pub address: String,
    pub machines: Vec<String>,
    pub last_heartbeat: Instant,
    pub up: bool,
    work: Option<WorkSender>,
    /// Work for the node before its stream is open.
    backlog: pb::WorkBatch,
}

/// Placements to write, computed before the write and applied after it.
#[derive(Debug, Default)]
pub struct Plan {
    pub writes: Vec<(TaskKey, Placement, Write)>,
}

pub struct AgentState {
    pub cluster: String,
    prefix: String,
    cell: Cell,
    classes: BTreeMap<([u64; 4], Labels), u32>,
    pub machines: BTreeMap<String, MachineEntry>,
    machine_names: Vec<String>,
    pub nodes: BTreeMap<String, NodeEntry>,
    pub placements: BTreeMap<TaskKey, Placement>,
    pub queue: BTreeMap<TaskKey, Queued>,
    cancelled: BTreeSet<String>,
    /// Reports for the global scheduler, sent by the upstream loop.
    pub reports: Vec<pb::TaskReport>,
    pub hand_backs: Vec<pb::HandBack>,
    /// Placements whose new state is not in the store yet.
    dirty: BTreeSet<TaskKey>,
    pub seq_seen: u64,
    policy: LocalPolicy,
    started: Instant,
    /// Machines whose node is silent this long are lost.
    pub machine_timeout: Duration,
}

impl AgentState {
    pub fn new(
        cluster: &str,
        prefix: &str,
        policy: LocalPolicy,
        machine_timeout: Duration,
    ) -> Self {
        AgentState {
            cluster: cluster.to_string(),
            prefix: format!("{}/placements/{cluster}/", prefix.trim_end_matches('/')),
            cell: Cell::new(&sched_core::cluster::Cluster {
                id: sched_core::cluster::ClusterId(0),
                name: cluster.to_string(),
                location: sched_core::locality::LocationId(0),
                classes: Vec::new(),
            }),
            classes: BTreeMap::new(),
            machines: BTreeMap::new(),
            machine_names: Vec::new(),
            nodes: BTreeMap::new(),
            placements: BTreeMap::new(),
            queue: BTreeMap::new(),
            cancelled: BTreeSet::new(),
            reports: Vec::new(),
            hand_backs: Vec::new(),
            dirty: BTreeSet::new(),
            seq_seen: 0,
            policy,
            started: Instant::now(),
            machine_timeout,
        }
    }

    /// The prefix of this cluster's placement keys.
    pub fn placements_prefix(&self) -> &str {
        &self.prefix
    }

    /// The store key of a task's placement.
    pub fn placement_key(&self, k: &TaskKey) -> String {
        self.key(k)
    }

    fn key(&self, k: &TaskKey) -> String {
        format!("{}{}/{:07}", self.prefix, k.0, k.1)
    }

    /// Reads placements back from the store (after a restart). Their
    /// machines are counted once their nodes register again.
    pub fn load(&mut self, items: &[KeyValue]) -> Result<(), String> {
        for kv in items {
            let rest = kv
                .key
                .strip_prefix(&self.prefix)
                .ok_or("key outside the prefix")?;
            let (job, index) = rest
                .split_once('/')
                .ok_or_else(|| format!("{}: bad key", kv.key))?;
            let index: u32 = index
                .parse()
                .map_err(|_| format!("{}: bad index", kv.key))?;
            let record: PlacementRecord = serde_json::from_slice(&kv.value)
                .map_err(|e| format!("{}: not a placement: {e}", kv.key))?;
            let key = (job.to_string(), index);
            let placement = Placement {
                record,
                rev: kv.mod_revision,
                accounted: false,
            };
            // Lost before the restart and not placed again yet: back to the
            // queue, or it would wait forever.
            if placement.record.state == PlacementState::Lost {
                self.queue.insert(key.clone(), placement.queued());
            }
            self.placements.insert(key, placement);
        }
        Ok(())
    }

    // ---- machines ----

    fn class_of(&mut self, capacity: Resources, labels: &Labels) -> u32 {
        let key = (capacity.as_array(), labels.clone());
        if let Some(&k) = self.classes.get(&key) {
            return k;
        }
        let k = self.cell.add_class(MachineClass {
            name: format!("class-{}", self.classes.len()),
            count: 0,
            capacity,
            labels: labels.clone(),
        });
        self.classes.insert(key, k);
        k
    }

    /// A node (re)registers with its machines and the tasks it knows.
    pub fn register_node(
        &mut self,
        node: &str,
        address: &str,
        machines: &[pb::MachineSpec],
        tasks: &[pb::NodeTask],
    ) {
        let mut names = Vec::with_capacity(machines.len());
        for m in machines {
            let capacity = from_pb(m.capacity.as_ref());
            let labels: Labels = m.labels.clone().into_iter().collect();
            let id = match self.machines.get(&m.name) {
                Some(e) if e.capacity == capacity && e.labels == labels => e.id,
                _ => {
                    // New (or changed: a changed machine is a new one; the
                    // old id stays down).
                    if let Some(old) = self.machines.get(&m.name) {
                        self.cell.set_up(old.id, false);
                    }
                    let k = self.class_of(capacity, &labels);
                    let id = self.cell.add_machine(k);
                    self.machine_names.push(m.name.clone());
                    id
                }
            };
            self.cell.set_up(id, true);
            self.machines.insert(
                m.name.clone(),
                MachineEntry {
                    node: node.to_string(),
                    capacity,
                    labels,
                    id,
                },
            );
            names.push(m.name.clone());
        }
        let entry = self
            .nodes
            .entry(node.to_string())
            .or_insert_with(|| NodeEntry {
                address: String::new(),
                machines: Vec::new(),
                last_heartbeat: Instant::now(),
                up: true,
                work: None,
                backlog: pb::WorkBatch::default(),
            });
        entry.address = address.to_string();
        entry.machines = names.clone();
        entry.last_heartbeat = Instant::now();
        entry.up = true;
        entry.work = None;
        entry.backlog = pb::WorkBatch::default();

        // Count the placements on these machines that were read back from
        // the store.
        let on_node: BTreeSet<&String> = names.iter().collect();
        let keys: Vec<TaskKey> = self
            .placements
            .iter()
            .filter(|(_, p)| on_node.contains(&p.record.machine))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            let (machine, request, accounted, state) = {
                let p = &self.placements[k];
                (
                    p.record.machine.clone(),
                    p.request(),
                    p.accounted,
                    p.record.state,
                )
            };
            if !accounted && !state.is_final() && state != PlacementState::Lost {
                if let Some(m) = self.machines.get(&machine) {
                    if request.fits_in(&self.cell.machine(m.id).free) {
                        self.cell.place(m.id, &request);
                        if let Some(p) = self.placements.get_mut(k) {
                            p.accounted = true;
                        }
                    }
                }
            }
        }
        // What the node runs vs what it should.
        let mut known: BTreeSet<TaskKey> = BTreeSet::new();
        for t in tasks {
            known.insert((t.job.clone(), t.index));
            self.node_report(node, t);
        }
        for k in keys {
            if known.contains(&k) {
                continue;
            }
            let Some(p) = self.placements.get(&k) else {
                continue;
            };
            match p.record.state {
                // Persisted, never started (or the start was lost): start it.
                PlacementState::Placed => {
                    let start = self.start_message(&k, p);
                    self.send(node, |b| b.start.push(start));
                }
                // It ran there and the node no longer has it.
                PlacementState::Running => self.lose(&k),
                _ => {}
            }
        }
    }

    pub fn open_work(&mut self, node: &str, tx: WorkSender) -> bool {
        let Some(n) = self.nodes.get_mut(node) else {
            return false;
        };
        let backlog = std::mem::take(&mut n.backlog);
        if !backlog.start.is_empty() || !backlog.stop.is_empty() {
            let _ = tx.try_send(Ok(backlog));
        }
        n.work = Some(tx);
        true
    }

    fn send(&mut self, node: &str, add: impl FnOnce(&mut pb::WorkBatch)) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let mut batch = pb::WorkBatch::default();
        add(&mut batch);
        if let Some(tx) = &n.work {
            match tx.try_send(Ok(batch)) {
                Ok(()) => {}
                Err(
                    mpsc::error::TrySendError::Full(Ok(b))
                    | mpsc::error::TrySendError::Closed(Ok(b)),
                ) => {
                    // The node is not reading: it gets everything again
                    // when it registers next.
                    n.work = None;
                    n.backlog.start.extend(b.start);
                    n.backlog.stop.extend(b.stop);
                }
                Err(_) => n.work = None,
            }
        } else {
            n.backlog.start.extend(batch.start);
            n.backlog.stop.extend(batch.stop);
        }
    }

    /// False asks the node to register again: it is unknown or lost, or
    /// work is waiting for it with no open stream to carry it (the stream
    /// broke): registering again reopens the stream and resends the work.
    pub fn heartbeat(&mut self, node: &str) -> bool {
        match self.nodes.get_mut(node) {
            Some(n) if n.up => {
                n.last_heartbeat = Instant::now();
                let stranded = n.work.as_ref().is_none_or(|w| w.is_closed())
                    && (!n.backlog.start.is_empty() || !n.backlog.stop.is_empty());
                !stranded
            }
            _ => false,
        }
    }

    /// Nodes silent for the timeout are lost, with their machines; their
    /// tasks go back to the queue. After a restart, placements on machines
    /// that never came back are lost too.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let lost: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.up && now.duration_since(n.last_heartbeat) > self.machine_timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for node in &lost {
            let machines = self
                .nodes
                .get(node)
                .map(|n| n.machines.clone())
                .unwrap_or_default();
            if let Some(n) = self.nodes.get_mut(node) {
                n.up = false;
                n.work = None;
            }
            for m in &machines {
                if let Some(e) = self.machines.get(m) {
                    self.cell.set_up(e.id, false);
                }
            }
            let on: BTreeSet<&String> = machines.iter().collect();
            let keys: Vec<TaskKey> = self
                .placements
                .iter()
                .filter(|(_, p)| {
                    on.contains(&p.record.machine)
                        && !p.record.state.is_final()
                        && p.record.state != PlacementState::Lost
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                self.lose(&k);
            }
            tracing::warn!(node = %node, machines = machines.len(), "node missed its heartbeats: its machines are lost");
        }
        if now.duration_since(self.started) > self.machine_timeout {
            let orphans: Vec<TaskKey> = self
                .placements
                .iter()
                .filter(|(_, p)| {
                    !p.record.state.is_final()
                        && p.record.state != PlacementState::Lost
                        && !self.machines.contains_key(&p.record.machine)
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in orphans {
                self.lose(&k);
            }
        }
        lost
    }

    /// A placement's machine is gone: free it, report the task lost, and
    /// queue it to be placed again (a new attempt).
    fn lose(&mut self, k: &TaskKey) {
        let Some(p) = self.placements.get_mut(k) else {
            return;
        };
        let request = p.request();
        if p.accounted {
            if let Some(m) = self.machines.get(&p.record.machine) {
                self.cell.release(m.id, &request, 1);
            }
            p.accounted = false;
        }
        p.record.state = PlacementState::Lost;
        let queued = p.queued();
        self.dirty.insert(k.clone());
        self.reports.push(pb::TaskReport {
            job: k.0.clone(),
            index: k.1,
            state: pb::TaskState::Lost as i32,
            machine: String::new(),
            exit_code: None,
        });
        if !self.cancelled.contains(&k.0) {
            self.queue.insert(k.clone(), queued);
        }
    }

    // ---- tasks from the global scheduler ----

    pub fn receive(&mut self, batch: pb::AssignmentBatch) {
        self.seq_seen = self.seq_seen.max(batch.seq);
        for job in batch.cancelled_jobs {
            self.cancel(&job);
        }
        for a in batch.assignments {
            let request = from_pb(a.request.as_ref());
            let constraints: Labels = a.constraints.into_iter().collect();
            for i in a.indices {
                let k = (a.job.clone(), i);
                if let Some(p) = self.placements.get(&k) {
                    if p.record.state != PlacementState::Lost {
                        // Already here (a resync): say where it is.
                        self.reports.push(pb::TaskReport {
                            job: k.0.clone(),
                            index: k.1,
                            state: p.record.state.to_pb() as i32,
                            machine: p.record.machine.clone(),
                            exit_code: p.record.exit_code,
                        });
                        continue;
                    }
                }
                self.queue.entry(k).or_insert_with(|| Queued {
                    request,
                    constraints: constraints.clone(),
                    command: a.command.clone(),
                    priority: a.priority,
                });
            }
        }
    }

    fn cancel(&mut self, job: &str) {
        self.cancelled.insert(job.to_string());
        self.queue.retain(|k, _| k.0 != job);
        let running: Vec<(TaskKey, String)> = self
            .placements
            .iter()
            .filter(|(k, p)| {
                k.0 == job && !p.record.state.is_final() && p.record.state != PlacementState::Lost
            })
            .map(|(k, p)| (k.clone(), p.record.machine.clone()))
            .collect();
        for (k, machine) in running {
            let Some(node) = self.machines.get(&machine).map(|m| m.node.clone()) else {
                continue;
            };
            self.send(&node, |b| {
                b.stop.push(pb::TaskStop {
                    job: k.0.clone(),
                    index: k.1,
                    machine: machine.clone(),
                })
            });
        }
    }

    // ---- placing ----

    /// Packs the queue onto the machines. Placed tasks come back as writes
    /// (their cell capacity is taken now and given back by [`Self::revert`] if the
    /// write fails); tasks that fit nowhere are handed back.
    pub fn plan(&mut self, limit: usize) -> Plan {
        let mut plan = Plan::default();
        if self.queue.is_empty() {
            return plan;
        }
        // Tasks of one job share a request: one group per job.
        let mut jobs: BTreeMap<String, (Queued, Vec<u32>)> = BTreeMap::new();
        for (k, q) in self.queue.iter().take(limit) {
            jobs.entry(k.0.clone())
                .or_insert_with(|| (q.clone(), Vec::new()))
                .1
                .push(k.1);
        }
        let names: Vec<String> = jobs.keys().cloned().collect();
        let groups: Vec<TaskGroup<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let (q, indices) = &jobs[n];
                TaskGroup {
                    job: JobId(i as u32),
                    request: q.request,
                    constraints: &q.constraints,
                    priority: q.priority,
                    count: indices.len() as u32,
                }
            })
            .collect();
        let outcomes = pack(&mut self.cell, &groups, &self.policy);
        let no_machines_yet =
            self.machines.is_empty() || self.started.elapsed() < self.machine_timeout;
        for (i, o) in outcomes.into_iter().enumerate() {
            let name = &names[i];
            let (q, indices) = &jobs[name];
            for (&index, m) in indices.iter().zip(&o.placed) {
                let k = (name.clone(), index);
                let machine = self.machine_names[m.0 as usize].clone();
                let previous = self.placements.get(&k);
                let attempt = previous.map_or(1, |p| p.record.attempt + 1);
                let expect = previous.map_or(Expect::Absent, |p| {
                    if p.rev == 0 {
                        Expect::Absent
                    } else {
                        Expect::ModRevision(p.rev)
                    }
                });
                let [cpu_millis, memory_bytes, disk_bytes, gpu_millis] = q.request.as_array();
                let record = PlacementRecord {
                    machine,
                    attempt,
                    state: PlacementState::Placed,
                    cpu_millis,
                    memory_bytes,
                    disk_bytes,
                    gpu_millis,
                    command: q.command.clone(),
                    exit_code: None,
                    constraints: q.constraints.clone(),
                    priority: q.priority,
                };
                let value = serde_json::to_vec(&record).expect("placement records serialize");
                let write = Write::put(self.key(&k), value, expect);
                self.queue.remove(&k);
                plan.writes.push((
                    k,
                    Placement {
                        record,
                        rev: 0,
                        accounted: true,
                    },
                    write,
                ));
            }
            let unplaced: Vec<u32> = indices[o.placed.len()..].to_vec();
            if unplaced.is_empty() || no_machines_yet {
                // Right after a start, machines are still registering: keep
                // the tasks rather than bounce them.
                continue;
            }
            let reason = o.why.as_ref().map_or_else(
                || "no machine can take it".to_string(),
                |w| {
                    let top: Vec<String> = w
                        .top_reasons()
                        .into_iter()
                        .take(3)
                        .map(|(r, n)| format!("{n} machine(s): {r}"))
                        .collect();
                    format!(
                        "0/{} machines fit: {}",
                        w.machines_considered,
                        top.join("; ")
                    )
                },
            );
            for index in &unplaced {
                self.queue.remove(&(name.clone(), *index));
            }
            self.hand_backs.push(pb::HandBack {
                job: name.clone(),
                indices: unplaced,
                reason,
            });
        }
        plan
    }

    /// The write for `plan` failed: give the capacity back and requeue.
    pub fn revert(&mut self, writes: Vec<(TaskKey, Placement, Write)>) {
        for (k, p, _) in writes {
            if let Some(m) = self.machines.get(&p.record.machine) {
                self.cell.release(m.id, &p.request(), 1);
            }
            self.queue.insert(k, p.queued());
        }
    }

    /// The write for `plan` is in the store (at `rev`): record the
    /// placements, tell the nodes, tell the global scheduler.
    pub fn apply(&mut self, writes: Vec<(TaskKey, Placement, Write)>, rev: Revision) {
        // One work batch per node, not one per task.
        let mut starts: BTreeMap<String, Vec<pb::TaskStart>> = BTreeMap::new();
        for (k, mut p, _) in writes {
            p.rev = rev;
            let start = self.start_message(&k, &p);
            if let Some(m) = self.machines.get(&p.record.machine) {
                starts.entry(m.node.clone()).or_default().push(start);
            }
            self.reports.push(pb::TaskReport {
                job: k.0.clone(),
                index: k.1,
                state: pb::TaskState::Placed as i32,
                machine: p.record.machine.clone(),
                exit_code: None,
            });
            self.placements.insert(k, p);
        }
        for (node, s) in starts {
            self.send(&node, |b| b.start = s);
        }
    }

    fn start_message(&self, k: &TaskKey, p: &Placement) -> pb::TaskStart {
        pb::TaskStart {
            job: k.0.clone(),
            index: k.1,
            machine: p.record.machine.clone(),
            command: p.record.command.clone(),
            request: Some(to_pb(&p.request())),
            attempt: p.record.attempt,
            cluster: self.cluster.clone(),
        }
    }

    // ---- reports from nodes ----

    pub fn node_report(&mut self, node: &str, t: &pb::NodeTask) {
        let k = (t.job.clone(), t.index);
        let current = self.placements.get(&k).filter(|p| {
            p.record.attempt == t.attempt
                && p.record.machine == t.machine
                && p.record.state != PlacementState::Lost
        });
        let state = pb::TaskState::try_from(t.state).unwrap_or(pb::TaskState::Unspecified);
        let Some(p) = current else {
            // Not (or no longer) this task's placement: a stale copy. Stop it.
            if state == pb::TaskState::Running {
                tracing::warn!(job = %t.job, index = t.index, machine = %t.machine, attempt = t.attempt, "stopping a task that is not placed here");
                let stop = pb::TaskStop {
                    job: t.job.clone(),
                    index: t.index,
                    machine: t.machine.clone(),
                };
                self.send(node, |b| b.stop.push(stop));
            }
            return;
        };
        let old = p.record.state;
        let new = match state {
            pb::TaskState::Running => PlacementState::Running,
            pb::TaskState::Succeeded => PlacementState::Succeeded,
            pb::TaskState::Failed => PlacementState::Failed,
            pb::TaskState::Lost => {
                self.lose(&k);
                return;
            }
            _ => return,
        };
        if old == new || old.is_final() {
            return;
        }
        let p = self.placements.get_mut(&k).expect("checked above");
        p.record.state = new;
        p.record.exit_code = t.exit_code;
        let request = p.request();
        if new.is_final() {
            if p.accounted {
                p.accounted = false;
                if let Some(m) = self.machines.get(&p.record.machine) {
                    self.cell.release(m.id, &request, 1);
                }
            }
            self.dirty.insert(k.clone());
        }
        self.reports.push(pb::TaskReport {
            job: k.0.clone(),
            index: k.1,
            state: new.to_pb() as i32,
            machine: t.machine.clone(),
            exit_code: t.exit_code,
        });
    }

    /// Queues a report of every stored placement's state. It supersedes the
    /// queued reports but the losses (the global scheduler keeps the last
    /// report of a task in a call, and tells a job's events of a task lost
    /// and placed again), so however often sessions fail and start again,
    /// the queue holds one report per placement plus the losses.
    pub fn resync_reports(&mut self) {
        self.reports
            .retain(|r| r.state == pb::TaskState::Lost as i32);
        let current = self
            .placements
            .iter()
            .filter(|(_, p)| p.rev != 0)
            .map(|(k, p)| {
                let lost = p.record.state == PlacementState::Lost;
                pb::TaskReport {
                    job: k.0.clone(),
                    index: k.1,
                    state: p.record.state.to_pb() as i32,
                    machine: if lost {
                        String::new()
                    } else {
                        p.record.machine.clone()
                    },
                    exit_code: p.record.exit_code,
                }
            });
        self.reports.extend(current);
    }

    /// Writes for placements whose state changed (final, or lost).
    pub fn dirty_writes(&mut self, limit: usize) -> Vec<(TaskKey, Write)> {
        let keys: Vec<TaskKey> = self.dirty.iter().take(limit).cloned().collect();
        keys.into_iter()
            .filter_map(|k| {
                self.dirty.remove(&k);
                let p = self.placements.get(&k)?;
                if p.rev == 0 {
                    return None;
                }
                let value = serde_json::to_vec(&p.record).expect("placement records serialize");
                Some((
                    k.clone(),
                    Write::put(self.key(&k), value, Expect::ModRevision(p.rev)),
                ))
            })
            .collect()
    }

    /// What the store holds for a placement whose last write had an unknown
    /// outcome: keep its revision, so the next write's guard matches. A
    /// stored placement we do not know of is one whose write landed after
    /// all; no node was told of it, so it counts as lost.
    pub fn refresh(&mut self, k: &TaskKey, stored: Option<KeyValue>) {
        let Some(kv) = stored else {
            if let Some(p) = self.placements.get_mut(k) {
                p.rev = 0;
            }
            return;
        };
        match self.placements.get_mut(k) {
            Some(p) => p.rev = kv.mod_revision,
            None => {
                if let Ok(mut record) = serde_json::from_slice::<PlacementRecord>(&kv.value) {
                    record.state = PlacementState::Lost;
                    self.placements.insert(
                        k.clone(),
                        Placement {
                            record,
                            rev: kv.mod_revision,
                            accounted: false,
                        },
                    );
                }
            }
        }
    }

    pub fn set_rev(&mut self, k: &TaskKey, rev: Revision) {
        if let Some(p) = self.placements.get_mut(k) {
            p.rev = rev;
        }
    }

    pub fn mark_dirty(&mut self, k: TaskKey) {
        self.dirty.insert(k);
    }

    // ---- views ----

    /// Classes for the global scheduler: capacity, labels, machines up.
    pub fn classes(&self) -> Vec<pb::MachineClassStatus> {
        let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
        for m in self.machines.values() {
            if self.cell.machine(m.id).up {
                *counts.entry(self.cell.machine(m.id).class).or_insert(0) += 1;
            }
        }
        self.classes
            .iter()
            .filter_map(|((cap, labels), k)| {
                let count = *counts.get(k)?;
                Some(pb::MachineClassStatus {
                    name: format!("class-{k}"),
                    capacity: Some(to_pb(&Resources::from_array(*cap))),
                    labels: labels.clone().into_iter().collect(),
                    count,
                })
            })
            .collect()
    }

    pub fn allocated(&self) -> Resources {
        self.cell.allocated()
    }

    pub fn queued(&self) -> Resources {
        self.queue
            .values()
            .fold(Resources::ZERO, |a, q| a.saturating_add(&q.request))
    }

    pub fn machine_statuses(&self) -> Vec<pb::MachineStatus> {
        let mut tasks: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (k, p) in &self.placements {
            if p.accounted {
                tasks
                    .entry(p.record.machine.as_str())
                    .or_default()
                    .push(format!("{}/{}", k.0, k.1));
            }
        }
        self.machines
            .iter()
            .map(|(name, m)| {
                let st = self.cell.machine(m.id);
                pb::MachineStatus {
                    name: name.clone(),
                    cluster: self.cluster.clone(),
                    up: st.up,
                    capacity: Some(to_pb(&m.capacity)),
                    allocated: Some(to_pb(&m.capacity.saturating_sub(&st.free))),
                    labels: m.labels.clone().into_iter().collect(),
                    tasks: tasks.remove(name.as_str()).unwrap_or_default(),
                }
            })
            .collect()
    }

    /// The node address serving a task's output.
    pub fn task_node(&self, job: &str, index: u32) -> Option<(String, String)> {
        let p = self.placements.get(&(job.to_string(), index))?;
        let m = self.machines.get(&p.record.machine)?;
        let n = self.nodes.get(&m.node)?;
        Some((n.address.clone(), p.record.machine.clone()))
    }

    pub fn check(&self) -> Result<(), String> {
        self.cell.check_invariants()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn agent() -> AgentState {
        AgentState::new(
            "east-a",
            "/sched",
            LocalPolicy::default(),
            Duration::from_secs(0),
        )
    }

    fn machine(name: &str, cpu_millis: u64) -> pb::MachineSpec {
        pb::MachineSpec {
            name: name.to_string(),
            capacity: Some(pb::Resources {
                cpu_millis,
                memory_bytes: 4 * GIB,
                disk_bytes: 0,
                gpu_millis: 0,
            }),
            labels: Default::default(),
        }
    }

    fn assign(job: &str, indices: Vec<u32>) -> pb::AssignmentBatch {
        pb::AssignmentBatch {
            assignments: vec![pb::Assignment {
                job: job.to_string(),
                indices,
                request: Some(pb::Resources {
                    cpu_millis: 1000,
                    memory_bytes: GIB,
                    disk_bytes: 0,
                    gpu_millis: 0,
                }),
                constraints: Default::default(),
                command: vec!["true".to_string()],
                priority: 0,
            }],
            cancelled_jobs: Vec::new(),
            seq: 1,
        }
    }

    fn states(reports: &[pb::TaskReport]) -> Vec<(u32, pb::TaskState, String)> {
        reports
            .iter()
            .map(|r| {
                (
                    r.index,
                    pb::TaskState::try_from(r.state).unwrap(),
                    r.machine.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn a_resync_reports_every_stored_placement() {
        let mut a = agent();
        a.register_node("n0", "", &[machine("m0", 2000)], &[]);
        a.receive(assign("web", vec![0, 1, 2]));
        let plan = a.plan(100);
        // Two fit; the third is handed back.
        assert_eq!(plan.writes.len(), 2);
        a.apply(plan.writes, 7);
        a.node_report(
            "n0",
            &pb::NodeTask {
                job: "web".into(),
                index: 0,
                machine: "m0".into(),
                state: pb::TaskState::Succeeded as i32,
                exit_code: Some(0),
                attempt: 1,
            },
        );
        // The call that carried these reports failed, and the agent died
        // with them.
        a.reports.clear();
        a.resync_reports();
        // Sessions that fail and start again do not pile reports up.
        a.resync_reports();
        assert_eq!(
            states(&a.reports),
            [
                (0, pb::TaskState::Succeeded, "m0".to_string()),
                (1, pb::TaskState::Placed, "m0".to_string()),
            ]
        );
        assert_eq!(a.reports[0].exit_code, Some(0));
        assert_eq!(a.hand_backs.len(), 1);
    }

    #[test]
    fn a_lost_machine_reports_the_loss_before_the_hand_back() {
        let mut a = agent();
        a.register_node("n0", "", &[machine("m0", 1000)], &[]);
        a.receive(assign("web", vec![0]));
        let plan = a.plan(100);
        a.apply(plan.writes, 7);
        a.reports.clear();
        // The node goes silent (timeout 0): the task is lost, and with no
        // machine left it is handed back in the same pass.
        a.expire(Instant::now() + Duration::from_millis(1));
        a.plan(100);
        assert_eq!(
            states(&a.reports),
            [(0, pb::TaskState::Lost, String::new())]
        );
        assert_eq!(a.hand_backs.len(), 1);
        assert_eq!(a.hand_backs[0].indices, [0]);
        assert!(a.check().is_ok());
    }
}
