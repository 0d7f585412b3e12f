//! The cluster's machines: which node agent hosts each, their capacity and
//! labels, the cell that packing decides over (free capacity, the
//! fragmentation index), and which nodes are alive.
//!
//! Rules kept here:
//! - a machine that registers again unchanged keeps its id (and the tasks
//!   counted on it); one whose capacity or labels changed is a new machine,
//!   and the old id stays down;
//! - a node silent longer than the timeout is lost, and its machines go
//!   down: they take no new tasks until the node registers again;
//! - a machine registered with `gpu_devices` has that many devices of
//!   1000 milli-GPUs (its GPU capacity) and the label `gpu-model`, which
//!   jobs' GPU model constraints match.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sched_core::cell::Cell;
use sched_core::gpu::{GpuDemand, GpuSlot, DEVICE_MILLI, GPU_MODEL_LABEL};
use sched_core::labels::Labels;
use sched_core::machine::{MachineClass, MachineId};
use sched_core::pack::{pack, GroupOutcome, TaskGroup};
use sched_core::policy::LocalPolicy;
use sched_core::resources::Resources;
use sched_core::room::ClusterRoom;
use sched_proto::pb;

use crate::error::AgentError;
use crate::{from_pb, to_pb};

#[derive(Debug, Clone)]
pub struct Machine {
    /// The node agent that hosts it.
    pub node: String,
    pub capacity: Resources,
    pub labels: Labels,
    pub id: MachineId,
}

#[derive(Debug, Clone)]
struct Node {
    address: String,
    machines: Vec<String>,
    last_heartbeat: Instant,
    up: bool,
}

/// A node found silent, with its machines (now down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostNode {
    pub node: String,
    pub machines: Vec<String>,
}

/// A machine's capacity and labels.
type Shape = ([u64; 4], Labels);

pub struct Inventory {
    cell: Cell,
    /// Machine classes by shape: machines of one shape share a class, so
    /// packing considers each shape once.
    classes: BTreeMap<Shape, u32>,
    machines: BTreeMap<String, Machine>,
    /// Machine names by id.
    names: Vec<String>,
    nodes: BTreeMap<String, Node>,
    /// A node silent this long is lost.
    timeout: Duration,
}

impl Inventory {
    pub fn new(cluster: &str, timeout: Duration) -> Self {
        Inventory {
            cell: Cell::new(&sched_core::cluster::Cluster {
                id: sched_core::cluster::ClusterId(0),
                name: cluster.to_string(),
                location: sched_core::locality::LocationId(0),
                classes: Vec::new(),
            }),
            classes: BTreeMap::new(),
            machines: BTreeMap::new(),
            names: Vec::new(),
            nodes: BTreeMap::new(),
            timeout,
        }
    }

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

    /// A node (re)registers with its machines, which are up from now on.
    /// Returns their names.
    pub fn register(
        &mut self,
        node: &str,
        address: &str,
        machines: &[pb::MachineSpec],
        now: Instant,
    ) -> Vec<String> {
        let mut names = Vec::with_capacity(machines.len());
        for m in machines {
            let (capacity, labels) = shape(m);
            let id = match self.machines.get(&m.name) {
                Some(e) if e.capacity == capacity && e.labels == labels => e.id,
                old => {
                    if let Some(old) = old {
                        self.cell.set_up(old.id, false);
                    }
                    let k = self.class_of(capacity, &labels);
                    let id = self.cell.add_machine(k);
                    debug_assert_eq!(id.0 as usize, self.names.len());
                    self.names.push(m.name.clone());
                    id
                }
            };
            self.cell.set_up(id, true);
            self.machines.insert(
                m.name.clone(),
                Machine {
                    node: node.to_string(),
                    capacity,
                    labels,
                    id,
                },
            );
            names.push(m.name.clone());
        }
        self.nodes.insert(
            node.to_string(),
            Node {
                address: address.to_string(),
                machines: names.clone(),
                last_heartbeat: now,
                up: true,
            },
        );
        names
    }

    pub fn is_registered(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// A heartbeat: false if the node is unknown or was lost (it must
    /// register again).
    pub fn heartbeat(&mut self, node: &str, now: Instant) -> bool {
        match self.nodes.get_mut(node) {
            Some(n) if n.up => {
                n.last_heartbeat = now;
                true
            }
            _ => false,
        }
    }

    /// Nodes silent longer than the timeout at `now` are lost: their
    /// machines go down.
    pub fn expire(&mut self, now: Instant) -> Vec<LostNode> {
        let mut lost = Vec::new();
        for (name, n) in &mut self.nodes {
            if n.up && now.saturating_duration_since(n.last_heartbeat) > self.timeout {
                n.up = false;
                for m in &n.machines {
                    if let Some(e) = self.machines.get(m) {
                        self.cell.set_up(e.id, false);
                    }
                }
                lost.push(LostNode {
                    node: name.clone(),
                    machines: n.machines.clone(),
                });
            }
        }
        lost
    }

    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.machines.get(name)
    }

    /// The address of the node agent hosting `machine`.
    pub fn address_of(&self, machine: &str) -> Option<&str> {
        let m = self.machines.get(machine)?;
        self.nodes.get(&m.node).map(|n| n.address.as_str())
    }

    /// Whether any machine ever registered.
    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
    }

    /// Counts a task of `request` on `machine`, on the GPU devices `gpus`
    /// it was placed on, if the machine is there and the task fits there,
    /// on those devices (a placement read back after a restart); returns
    /// where, and the devices. A running task's devices are never chosen
    /// anew; only a placement stored before devices were recorded (a GPU
    /// request without devices) gets them chosen now.
    pub fn take(
        &mut self,
        machine: &str,
        request: &Resources,
        gpus: &[GpuSlot],
    ) -> Option<(MachineId, Vec<GpuSlot>)> {
        let id = self.machines.get(machine)?.id;
        let st = self.cell.machine(id);
        let demand = GpuDemand::of(request.gpu.0);
        if gpus.is_empty() && demand != GpuDemand::None {
            if !self.cell.fits(id, request) {
                return None;
            }
            return Some((id, self.cell.place(id, request)));
        }
        if !request.fits_in(&st.free)
            || sched_core::gpu::check_slots(&st.gpus, demand, gpus).is_err()
        {
            return None;
        }
        self.cell.place_on(id, request, gpus);
        Some((id, gpus.to_vec()))
    }

    /// Gives back a task counted on `id`, with its GPU devices.
    pub fn release(&mut self, id: MachineId, request: &Resources, gpus: &[GpuSlot]) {
        self.cell.release_on(id, request, gpus);
    }

    /// Packs groups of tasks onto the up machines; their capacity is taken
    /// until [`Inventory::release`]d.
    pub fn pack(&mut self, groups: &[TaskGroup<'_>], policy: &LocalPolicy) -> Vec<GroupOutcome> {
        pack(&mut self.cell, groups, policy)
    }

    /// The cell, for preemption (`sched_core::preempt`), which moves
    /// capacity between tasks the way packing does.
    pub fn cell_mut(&mut self) -> &mut sched_core::cell::Cell {
        &mut self.cell
    }

    /// The name of the machine `id`.
    pub fn name(&self, id: MachineId) -> &str {
        &self.names[id.0 as usize]
    }

    /// The classes with machines up, in the order the global scheduler is
    /// told them: each with its index in the cell, its shape, and how many
    /// of its machines are up.
    fn up_classes(&self) -> Vec<(u32, &Shape, u32)> {
        let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
        for m in self.machines.values() {
            let st = self.cell.machine(m.id);
            if st.up {
                *counts.entry(st.class).or_insert(0) += 1;
            }
        }
        self.classes
            .iter()
            .filter_map(|(shape, &k)| Some((k, shape, *counts.get(&k)?)))
            .collect()
    }

    /// Classes for the global scheduler: capacity, labels, machines up.
    pub fn classes(&self) -> Vec<pb::MachineClassStatus> {
        self.up_classes()
            .into_iter()
            .map(|(k, (cap, labels), count)| pb::MachineClassStatus {
                name: format!("class-{k}"),
                capacity: Some(to_pb(&Resources::from_array(*cap))),
                labels: labels.clone().into_iter().collect(),
                count,
            })
            .collect()
    }

    /// The up machines' free capacity for the global scheduler, in groups
    /// whose classes index [`Inventory::classes`], less the room that
    /// `queued` will take: tasks taken in and not packed yet, packed as the
    /// global scheduler predicts this agent packs them
    /// ([`ClusterRoom::pack`]), so that it neither hands their room out
    /// again nor finds room it did not count on once they are packed.
    pub fn room(&self, queued: &[TaskGroup<'_>], policy: &LocalPolicy) -> pb::MachineRoom {
        let mut room = ClusterRoom::of_cell(&self.cell);
        room.pack(queued, policy);
        let mut index = vec![None; self.cell.class_count()];
        for (i, (k, _, _)) in self.up_classes().into_iter().enumerate() {
            index[k as usize] = Some(i as u32);
        }
        pb::MachineRoom {
            groups: room
                .groups()
                .iter()
                .filter_map(|g| {
                    Some(pb::RoomGroup {
                        class_index: index[g.class as usize]?,
                        free: Some(to_pb(&g.free)),
                        count: g.count,
                    })
                })
                .collect(),
        }
    }

    pub fn allocated(&self) -> Resources {
        self.cell.allocated()
    }

    /// Every machine, with the tasks on it (`tasks`: by machine name).
    pub fn statuses(
        &self,
        cluster: &str,
        mut tasks: BTreeMap<&str, Vec<String>>,
    ) -> Vec<pb::MachineStatus> {
        self.machines
            .iter()
            .map(|(name, m)| {
                let st = self.cell.machine(m.id);
                pb::MachineStatus {
                    name: name.clone(),
                    cluster: cluster.to_string(),
                    up: st.up,
                    capacity: Some(to_pb(&m.capacity)),
                    allocated: Some(to_pb(&m.capacity.saturating_sub(&st.free))),
                    labels: m.labels.clone().into_iter().collect(),
                    tasks: tasks.remove(name.as_str()).unwrap_or_default(),
                    gpu_free_millis: st.gpus.clone(),
                }
            })
            .collect()
    }

    /// The cell's bookkeeping against a recount.
    pub fn check(&self) -> Result<(), AgentError> {
        self.cell.check_invariants().map_err(AgentError::Invariant)
    }
}

/// A registered machine's capacity and labels: `gpu_devices` whole
/// devices and the label [`GPU_MODEL_LABEL`] when it has GPU devices (the
/// registration was checked to agree with them).
fn shape(m: &pb::MachineSpec) -> (Resources, Labels) {
    let mut capacity = from_pb(m.capacity.as_ref());
    let mut labels: Labels = m.labels.clone().into_iter().collect();
    if m.gpu_devices > 0 {
        capacity.gpu.0 = u64::from(m.gpu_devices) * u64::from(DEVICE_MILLI);
        labels.insert(GPU_MODEL_LABEL.to_string(), m.gpu_model.clone());
    }
    (capacity, labels)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const GIB: u64 = 1 << 30;

    pub fn machine(name: &str, cpu_millis: u64) -> pb::MachineSpec {
        pb::MachineSpec {
            name: name.to_string(),
            capacity: Some(pb::Resources {
                cpu_millis,
                memory_bytes: 4 * GIB,
                disk_bytes: 0,
                gpu_millis: 0,
            }),
            labels: Default::default(),
            gpu_devices: 0,
            gpu_model: String::new(),
        }
    }

    fn cpu(millis: u64) -> Resources {
        Resources::new(millis, GIB)
    }

    #[test]
    fn machines_of_one_shape_share_a_class_and_count_while_up() {
        let t0 = Instant::now();
        let mut inv = Inventory::new("east-a", Duration::from_secs(5));
        inv.register(
            "n0",
            "http://n0",
            &[machine("m0", 2000), machine("m1", 2000)],
            t0,
        );
        inv.register("n1", "http://n1", &[machine("m2", 4000)], t0);
        let counts: Vec<(u64, u32)> = inv
            .classes()
            .iter()
            .map(|c| (c.capacity.unwrap().cpu_millis, c.count))
            .collect();
        assert_eq!(counts, [(2000, 2), (4000, 1)]);
        assert_eq!(inv.address_of("m2"), Some("http://n1"));
        assert_eq!(inv.machine("m1").unwrap().node, "n0");
    }

    #[test]
    fn a_silent_node_is_lost_after_the_timeout_with_its_machines() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(5);
        let mut inv = Inventory::new("east-a", timeout);
        inv.register("n0", "", &[machine("m0", 2000)], t0);
        inv.register("n1", "", &[machine("m1", 2000)], t0);
        assert!(inv.heartbeat("n1", t0 + Duration::from_secs(4)));
        // Exactly the timeout is not yet silent "longer than" it.
        assert!(inv.expire(t0 + timeout).is_empty());
        let lost = inv.expire(t0 + Duration::from_secs(6));
        assert_eq!(
            lost,
            [LostNode {
                node: "n0".into(),
                machines: vec!["m0".into()]
            }]
        );
        // Lost once, not at every pass.
        assert!(inv.expire(t0 + Duration::from_secs(7)).is_empty());
        // A lost node's heartbeat asks it to register again; its machine
        // is down and out of the classes.
        assert!(!inv.heartbeat("n0", t0 + Duration::from_secs(7)));
        assert!(!inv.heartbeat("stranger", t0));
        assert_eq!(inv.classes()[0].count, 1);
        // Registering again brings it back.
        inv.register(
            "n0",
            "",
            &[machine("m0", 2000)],
            t0 + Duration::from_secs(8),
        );
        assert_eq!(inv.classes()[0].count, 2);
        assert!(inv.check().is_ok());
    }

    #[test]
    fn a_machine_registered_again_unchanged_keeps_its_tasks() {
        let t0 = Instant::now();
        let mut inv = Inventory::new("east-a", Duration::from_secs(5));
        inv.register("n0", "", &[machine("m0", 2000)], t0);
        let (id, _) = inv.take("m0", &cpu(1500), &[]).unwrap();
        // No room for a second one.
        assert_eq!(inv.take("m0", &cpu(1000), &[]), None);
        assert_eq!(inv.take("nowhere", &cpu(1), &[]), None);
        inv.register("n0", "", &[machine("m0", 2000)], t0);
        assert_eq!(inv.machine("m0").unwrap().id, id);
        assert_eq!(inv.allocated().cpu.0, 1500);
        inv.release(id, &cpu(1500), &[]);
        assert_eq!(inv.allocated().cpu.0, 0);
        assert!(inv.check().is_ok());
    }

    #[test]
    fn gpu_devices_become_capacity_and_a_model_label_and_are_taken_exactly() {
        let t0 = Instant::now();
        let mut inv = Inventory::new("east-a", Duration::from_secs(5));
        let mut g = machine("g0", 8000);
        g.gpu_devices = 2;
        g.gpu_model = "V100M16".into();
        inv.register("n0", "", &[g.clone()], t0);
        let m = inv.machine("g0").unwrap();
        assert_eq!(m.capacity.gpu.0, 2000);
        assert_eq!(m.labels[GPU_MODEL_LABEL], "V100M16");
        let half = Resources::from_array([1000, GIB, 0, 500]);
        let on = |device| [GpuSlot { device, milli: 500 }];
        // Read back after a restart: the stored devices, never others.
        let (id, _) = inv.take("g0", &half, &on(1)).unwrap();
        inv.take("g0", &half, &on(1)).unwrap();
        // Device 1 is full: a third share stored there does not fit.
        assert_eq!(inv.take("g0", &half, &on(1)), None);
        assert_eq!(inv.take("g0", &half, &on(7)), None);
        let statuses = inv.statuses("east-a", BTreeMap::new());
        assert_eq!(statuses[0].gpu_free_millis, [1000, 0]);
        inv.release(id, &half, &on(1));
        let statuses = inv.statuses("east-a", BTreeMap::new());
        assert_eq!(statuses[0].gpu_free_millis, [1000, 500]);
        // A GPU placement stored without devices (by an older agent) gets
        // them now, where they are free.
        let (_, chosen) = inv.take("g0", &half, &[]).unwrap();
        assert_eq!(chosen, on(1));
        inv.release(id, &half, &chosen);
        // Registering again unchanged keeps the machine and its devices.
        inv.register("n0", "", &[g], t0);
        assert_eq!(inv.machine("g0").unwrap().id, id);
        assert!(inv.check().is_ok());
    }

    #[test]
    fn a_machine_whose_shape_changed_is_a_new_machine() {
        let t0 = Instant::now();
        let mut inv = Inventory::new("east-a", Duration::from_secs(5));
        inv.register("n0", "", &[machine("m0", 2000)], t0);
        let (old, _) = inv.take("m0", &cpu(1000), &[]).unwrap();
        inv.register("n0", "", &[machine("m0", 8000)], t0);
        let new = inv.machine("m0").unwrap().id;
        assert_ne!(new, old);
        assert_eq!(inv.name(new), "m0");
        // Only the new one is up; the task stays counted on the old one
        // until it is released there.
        let counts: Vec<(u64, u32)> = inv
            .classes()
            .iter()
            .map(|c| (c.capacity.unwrap().cpu_millis, c.count))
            .collect();
        assert_eq!(counts, [(8000, 1)]);
        inv.release(old, &cpu(1000), &[]);
        assert_eq!(inv.allocated().cpu.0, 0);
        assert!(inv.check().is_ok());
    }
}
