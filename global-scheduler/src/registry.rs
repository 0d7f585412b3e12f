//! The clusters the global scheduler knows: registered by local agents,
//! kept fresh by their heartbeats, and the locations they sit in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sched_core::cluster::{ClassSummary, Cluster, ClusterId, ClusterSummary};
use sched_core::job::{Job, JobId};
use sched_core::labels::Labels;
use sched_core::locality::{Locality, LocationId};
use sched_core::machine::MachineClass;
use sched_core::pack::TaskGroup;
use sched_core::policy::LocalPolicy;
use sched_core::resources::Resources;
use sched_core::room::{ClusterRoom, MachineRoom};
use sched_core::topology::Topology;

use crate::records::ClusterRecord;

/// One registered cluster.
#[derive(Debug, Clone)]
pub struct ClusterEntry {
    pub record: ClusterRecord,
    /// What the ranking sees: capacity from the classes, load from the last
    /// heartbeat plus what was handed over since.
    pub summary: ClusterSummary,
    pub last_heartbeat: Option<Instant>,
    pub last_heartbeat_unix_ms: i64,
    /// Queue reported by the last heartbeat.
    heartbeat_queued: Resources,
    heartbeat_queue_len: u64,
    /// Tasks handed over that the agent had not taken in at its last
    /// heartbeat, so its figures do not count them yet.
    pub in_flight: u64,
    in_flight_request: Resources,
    /// Tasks handed over, in all (the assignment stream's `seq`).
    pub handed_total: u64,
    /// Handed over and not yet seen, oldest first.
    unseen: std::collections::VecDeque<Unseen>,
    /// The machines' room as the last heartbeat reported it (`None`: not
    /// reported).
    report: Option<ClusterRoom>,
    /// Tasks were handed over since the room was last worked out.
    room_stale: bool,
    /// Deleted by an operator: no longer ranked, listed or validated
    /// against (its id stays taken; a cluster registering under the name
    /// later gets a new one).
    pub removed: bool,
    /// Down, and its tasks taken back: nothing more to take until it comes
    /// back (a heartbeat or a registration clears it).
    pub swept: bool,
}

/// Tasks of one job handed to a cluster that its agent had not taken in
/// at its last heartbeat.
#[derive(Debug, Clone)]
struct Unseen {
    /// The assignment `seq` after them.
    seq: u64,
    job: JobId,
    tasks: u64,
    /// One task's request, the job's constraints and priority: the room
    /// they take, and where its agent's packer puts them.
    request: Resources,
    constraints: Labels,
    priority: u32,
}

/// Heartbeat figures from a local agent.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    pub classes: Option<Vec<crate::records::MachineClassRecord>>,
    pub allocated: Resources,
    pub queued: Resources,
    pub queue_len: u64,
    /// The highest assignment `seq` the agent had taken in.
    pub seq_seen: u64,
    /// `allocated` by task priority, lowest first (for preemption).
    pub by_priority: Vec<(u32, Resources)>,
    /// The machines' free capacity, less the agent's queue; `None` from an
    /// agent that does not report it.
    pub room: Option<ClusterRoom>,
}

/// Locations (from the topology file, then from registrations) and clusters.
#[derive(Debug, Clone)]
pub struct Registry {
    location_names: Vec<String>,
    links: Vec<(LocationId, LocationId, u64)>,
    locality: Locality,
    clusters: Vec<ClusterEntry>,
    /// Each cluster's machines' room, from its heartbeats, less what was
    /// handed over since: what scheduling passes split jobs by.
    room: MachineRoom,
    /// How the local agents pack (the policy's `local` section), to
    /// predict where the tasks handed over go.
    local: LocalPolicy,
    by_name: BTreeMap<String, ClusterId>,
    heartbeat_timeout: Duration,
    /// The known world, rebuilt when a registration changes it.
    world: Topology,
    /// Under mutual TLS, the fingerprint of the certificate each cluster's
    /// agent registered with: another certificate for the same name is
    /// refused while the cluster is up (not swapped in), so two agents
    /// cannot take a cluster from each other.
    owners: BTreeMap<String, String>,
}

impl Registry {
    /// Starts from the topology's locations and links (its clusters are not
    /// registered: local agents do that).
    pub fn new(topology: Option<&Topology>, heartbeat_timeout: Duration) -> Self {
        let (location_names, links) = match topology {
            Some(t) => (t.locality.names().to_vec(), t.locality.links().to_vec()),
            None => (Vec::new(), Vec::new()),
        };
        let locality = Locality::new(location_names.clone(), &links);
        let mut r = Registry {
            location_names,
            links,
            locality,
            clusters: Vec::new(),
            room: MachineRoom::default(),
            local: LocalPolicy::default(),
            by_name: BTreeMap::new(),
            heartbeat_timeout,
            owners: BTreeMap::new(),
            world: Topology {
                locality: Locality::new(Vec::new(), &[]),
                clusters: Vec::new(),
            },
        };
        r.world = r.build_world();
        r
    }

    pub fn locality(&self) -> &Locality {
        &self.locality
    }

    fn location(&mut self, name: &str) -> LocationId {
        if let Some(id) = self.locality.id(name) {
            return id;
        }
        // A location no topology mentioned: known from now on, linked to
        // nothing (so only its own clusters count as local to it).
        self.location_names.push(name.to_string());
        self.locality = Locality::new(self.location_names.clone(), &self.links);
        self.world = self.build_world();
        LocationId(self.location_names.len() as u32 - 1)
    }

    /// Records that the certificate `fingerprint` speaks for cluster
    /// `name`, unless another one does and the cluster is up. The first
    /// certificate seen after a failover claims it.
    pub fn claim(&mut self, name: &str, fingerprint: &str) -> Result<(), String> {
        if let Some(owner) = self.owners.get(name) {
            if owner == fingerprint {
                return Ok(());
            }
            let up = self
                .by_name
                .get(name)
                .is_some_and(|id| self.clusters[id.0 as usize].summary.up);
            if up {
                return Err(format!(
                    "cluster {name} is held by another agent's certificate (sha256 {}...) \
                     that is still heartbeating; stop that agent, or wait until the cluster \
                     is down",
                    &owner[..owner.len().min(12)]
                ));
            }
        }
        self.owners
            .insert(name.to_string(), fingerprint.to_string());
        Ok(())
    }

    /// Whether the certificate `fingerprint` may speak for cluster `name`
    /// now: it is the one that registered it (or none has since a
    /// failover, and it claims it).
    pub fn owned_by(&mut self, name: &str, fingerprint: &str) -> Result<(), String> {
        match self.owners.get(name) {
            Some(owner) if owner != fingerprint => Err(format!(
                "cluster {name} was registered by another agent's certificate; register again"
            )),
            Some(_) => Ok(()),
            None => self.claim(name, fingerprint),
        }
    }

    /// `record` with the machine shapes already known for its cluster, as
    /// it should be stored.
    pub fn with_seen_classes(&self, mut record: ClusterRecord) -> ClusterRecord {
        if let Some(&id) = self.by_name.get(&record.name) {
            record.remember_classes(&self.clusters[id.0 as usize].record.seen_classes);
        } else {
            record.remember_classes(&[]);
        }
        record
    }

    /// Adds or updates a cluster from its registration. A new cluster is
    /// down until its first heartbeat.
    pub fn register(&mut self, record: ClusterRecord, heartbeat_now: bool) -> ClusterId {
        let record = self.with_seen_classes(record);
        let location = self.location(&record.location);
        let classes = class_summaries(&record);
        let capacity = classes.iter().fold(Resources::ZERO, |acc, c| {
            acc.saturating_add(&c.capacity.times(u64::from(c.count)))
        });
        let id = match self.by_name.get(&record.name) {
            Some(&id) => id,
            None => {
                let id = ClusterId(self.clusters.len() as u32);
                self.by_name.insert(record.name.clone(), id);
                self.clusters.push(ClusterEntry {
                    summary: ClusterSummary {
                        id,
                        name: record.name.clone(),
                        location,
                        up: false,
                        classes: Vec::new(),
                        capacity: Resources::ZERO,
                        allocated: Resources::ZERO,
                        queued: Resources::ZERO,
                        queue_len: 0,
                        by_priority: Vec::new(),
                    },
                    record: record.clone(),
                    last_heartbeat: None,
                    last_heartbeat_unix_ms: 0,
                    heartbeat_queued: Resources::ZERO,
                    heartbeat_queue_len: 0,
                    in_flight: 0,
                    in_flight_request: Resources::ZERO,
                    handed_total: 0,
                    unseen: std::collections::VecDeque::new(),
                    report: None,
                    room_stale: false,
                    removed: false,
                    swept: false,
                });
                id
            }
        };
        let known = self.world.clusters.len();
        let total = self.clusters.len();
        let e = &mut self.clusters[id.0 as usize];
        e.summary.location = location;
        e.summary.classes = classes;
        e.summary.capacity = capacity;
        let world_changed = e.record.seen_classes != record.seen_classes
            || e.record.location != record.location
            || known != total;
        e.record = record;
        if heartbeat_now {
            e.swept = false;
            e.last_heartbeat = Some(Instant::now());
            e.last_heartbeat_unix_ms = crate::records::now_unix_ms();
            e.summary.up = true;
        }
        if world_changed {
            self.world = self.build_world();
        }
        id
    }

    /// Records a heartbeat; `None` if the cluster is not registered, else
    /// whether the cluster can now take more than before (it came up, or
    /// has more unclaimed capacity in some resource, or a machine with
    /// more room), which is worth a scheduling pass over every pending job.
    pub fn heartbeat(&mut self, name: &str, hb: Heartbeat) -> Option<bool> {
        let id = *self.by_name.get(name)?;
        let before = {
            let s = &self.clusters[id.0 as usize].summary;
            (s.up, s.unclaimed(), s.classes.clone())
        };
        if let Some(classes) = hb.classes {
            let mut record = self.clusters[id.0 as usize].record.clone();
            record.classes = classes;
            self.register(record, false);
        }
        let e = &mut self.clusters[id.0 as usize];
        e.swept = false;
        e.last_heartbeat = Some(Instant::now());
        e.last_heartbeat_unix_ms = crate::records::now_unix_ms();
        e.summary.up = true;
        e.summary.allocated = hb.allocated;
        e.summary.by_priority = hb.by_priority;
        e.heartbeat_queued = hb.queued;
        e.heartbeat_queue_len = hb.queue_len;
        // The heartbeat's figures count every task up to `seq_seen`.
        while e.unseen.front().is_some_and(|u| u.seq <= hb.seq_seen) {
            if let Some(u) = e.unseen.pop_front() {
                e.in_flight -= u.tasks;
                e.in_flight_request = e
                    .in_flight_request
                    .saturating_sub(&u.request.times(u.tasks));
            }
        }
        e.refresh_queue();
        e.report = hb.room;
        let after = e.summary.unclaimed().as_array();
        let grew = before.1.as_array().iter().zip(after).any(|(b, a)| a > *b);
        let changed = before.2 != e.summary.classes;
        let more_room = self.refresh_room(id);
        Some(!before.0 || grew || changed || more_room)
    }

    /// Works cluster `id`'s room out again: its last report, with the tasks
    /// handed over that its agent had not taken in packed on it as its
    /// agent will pack them. Returns whether it has room it was not
    /// thought to have.
    fn refresh_room(&mut self, id: ClusterId) -> bool {
        let e = &mut self.clusters[id.0 as usize];
        e.room_stale = false;
        let room = e.report.clone().map(|mut room| {
            let batch: Vec<TaskGroup<'_>> = e
                .unseen
                .iter()
                .map(|u| TaskGroup {
                    job: u.job,
                    request: u.request,
                    constraints: &u.constraints,
                    priority: u.priority,
                    count: u.tasks as u32,
                })
                .collect();
            room.pack(&batch, &self.local);
            room
        });
        self.room.set(id, room)
    }

    /// Works out the room of the clusters handed tasks since (once a pass
    /// is handed over, so that each packs it as one batch, as its agent
    /// does); returns whether one has room it was not thought to have
    /// (its tasks fit tighter than the pass counted on), which is worth a
    /// pass over every pending job.
    pub fn refresh_rooms(&mut self) -> bool {
        let mut grew = false;
        for i in 0..self.clusters.len() {
            if self.clusters[i].room_stale {
                grew |= self.refresh_room(ClusterId(i as u32));
            }
        }
        grew
    }

    /// How local agents pack, from the policy in force.
    pub fn set_local_policy(&mut self, local: LocalPolicy) {
        self.local = local;
    }

    /// A down cluster's tasks were all taken back.
    pub fn mark_swept(&mut self, id: ClusterId) {
        if let Some(e) = self.clusters.get_mut(id.0 as usize) {
            e.swept = !e.summary.up;
        }
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_timeout
    }

    /// Forgets a cluster for good (it must be down); false if unknown.
    pub fn remove(&mut self, name: &str) -> bool {
        let Some(id) = self.by_name.remove(name) else {
            return false;
        };
        self.owners.remove(name);
        let e = &mut self.clusters[id.0 as usize];
        e.removed = true;
        e.summary.up = false;
        e.summary.classes.clear();
        e.summary.capacity = Resources::ZERO;
        e.record.seen_classes.clear();
        e.record.classes.clear();
        // No room: never a reason to look at a job again.
        self.room.set(id, Some(ClusterRoom::default()));
        self.world = self.build_world();
        true
    }

    /// Forgets machine shapes that no cluster has reported for `ttl_ms`
    /// (at `now_unix_ms`), so that jobs only they could run are refused
    /// again; returns the names of the clusters whose records changed.
    pub fn expire_classes(&mut self, now_unix_ms: i64, ttl_ms: u64) -> Vec<String> {
        let mut changed = Vec::new();
        for e in &mut self.clusters {
            let before = e.record.seen_classes.len();
            let current = e.record.classes.clone();
            e.record.seen_classes.retain(|s| {
                current
                    .iter()
                    .any(|c| c.capacity == s.capacity && c.labels == s.labels)
                    || now_unix_ms.saturating_sub(s.last_seen_unix_ms) <= ttl_ms as i64
            });
            if e.record.seen_classes.len() != before {
                changed.push(e.record.name.clone());
            }
        }
        if !changed.is_empty() {
            self.world = self.build_world();
        }
        changed
    }

    /// Marks clusters whose heartbeats stopped as down; returns their names.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut down = Vec::new();
        for e in &mut self.clusters {
            let late = e
                .last_heartbeat
                .is_none_or(|t| now.duration_since(t) > self.heartbeat_timeout);
            if e.summary.up && late {
                e.summary.up = false;
                down.push(e.record.name.clone());
            }
        }
        down
    }

    /// Counts `tasks` of `job` handed to `id` until a heartbeat says the
    /// agent has them; returns the assignment `seq` after them.
    pub fn hand_over(&mut self, id: ClusterId, job: &Job, tasks: u64) -> u64 {
        let e = &mut self.clusters[id.0 as usize];
        let spec = &job.spec;
        e.handed_total += tasks;
        e.in_flight += tasks;
        e.in_flight_request = e
            .in_flight_request
            .saturating_add(&spec.request.times(tasks));
        e.unseen.push_back(Unseen {
            seq: e.handed_total,
            job: job.id,
            tasks,
            request: spec.request,
            constraints: spec.constraints.clone(),
            priority: spec.priority,
        });
        e.refresh_queue();
        // As the pass promised them, until the next pass works the room out
        // with them packed ([`Registry::refresh_rooms`]).
        e.room_stale = true;
        self.room.take(id, &spec.request, &spec.constraints, tasks);
        e.handed_total
    }

    /// Each cluster's machines' room, as passes split jobs by it.
    pub fn room(&self) -> &MachineRoom {
        &self.room
    }

    /// What a scheduling pass needs of the registry beside the summaries:
    /// the locations (for the ranking) and the clusters' room.
    pub fn for_pass(&mut self) -> (&Locality, &mut MachineRoom) {
        (&self.locality, &mut self.room)
    }

    pub fn id(&self, name: &str) -> Option<ClusterId> {
        self.by_name.get(name).copied()
    }

    pub fn name(&self, id: ClusterId) -> &str {
        &self.clusters[id.0 as usize].record.name
    }

    pub fn entries(&self) -> &[ClusterEntry] {
        &self.clusters
    }

    /// Summaries for ranking, indexed by `ClusterId`.
    pub fn summaries(&self) -> Vec<ClusterSummary> {
        self.clusters.iter().map(|e| e.summary.clone()).collect()
    }

    /// The known world as a topology, to validate jobs against: every
    /// location, and every machine shape each cluster has reported.
    pub fn world(&self) -> &Topology {
        &self.world
    }

    fn build_world(&self) -> Topology {
        let clusters = self
            .clusters
            .iter()
            .filter(|e| !e.removed)
            .map(|e| Cluster {
                id: e.summary.id,
                name: e.record.name.clone(),
                location: e.summary.location,
                classes: e
                    .record
                    .seen_classes
                    .iter()
                    .map(|c| MachineClass {
                        name: c.name.clone(),
                        count: c.count,
                        capacity: c.capacity.into(),
                        labels: c.labels.clone(),
                    })
                    .collect(),
            })
            .collect();
        Topology {
            locality: self.locality.clone(),
            clusters,
        }
    }
}

impl ClusterEntry {
    fn refresh_queue(&mut self) {
        self.summary.queued = self
            .heartbeat_queued
            .saturating_add(&self.in_flight_request);
        self.summary.queue_len = self.heartbeat_queue_len + self.in_flight;
    }
}

fn class_summaries(record: &ClusterRecord) -> Vec<ClassSummary> {
    record
        .classes
        .iter()
        .map(|c| ClassSummary {
            capacity: c.capacity.into(),
            labels: c.labels.clone(),
            count: c.count,
        })
        .collect()
}
