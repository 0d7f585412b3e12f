//! A cluster's machines and the index that orders them by fragmentation.
//!
//! # Fragmentation order
//!
//! A machine's *fragmentation key* is its free capacity, normalized per
//! resource by the machine's capacity and summed over the resources it has:
//!
//! ```text
//! key(m) = Σ_r  free_r(m) × 10^6 / capacity_r(m)
//! ```
//!
//! Best fit chooses, among the machines where a task fits in every resource,
//! the one with the smallest key: the placement that leaves the least
//! capacity free on a machine already in use, so that empty machines stay
//! empty for large tasks and little capacity is stranded in slivers. This is
//! the L1 "norm-based greedy" of Panigrahy et al., "Heuristics for Vector Bin
//! Packing" (Microsoft Research, 2011), applied as Borg's best fit (Verma et
//! al., "Large-scale cluster management at Google with Borg", EuroSys 2015,
//! §3.2). The benchmarks measure it against Kubernetes' MostAllocated and
//! Nomad's binpack scoring.
//!
//! # The index
//!
//! Used machines of each class sit in a `BTreeSet` ordered by `(key, id)`;
//! empty machines sit in a separate set ordered by id. A task with request
//! `q` can only fit a machine whose key is at least `Σ_r q_r × 10^6 /
//! capacity_r`, so the search starts there and walks up until a machine fits
//! in every resource: a placement costs a tree descent, not a scan of the
//! cell. Machines of one class are interchangeable, so an empty machine is
//! taken by lowest id without a search.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::cluster::Cluster;
use crate::filter::{machine_filters, MachineView, TaskShape};
use crate::gpu::{self, GpuDemand, GpuSlot};
use crate::labels::{self, Labels};
use crate::machine::{MachineClass, MachineId};
use crate::placement::Unschedulable;
use crate::resources::Resources;

/// Keys are in millionths of a machine per resource.
pub const KEY_SCALE: u64 = 1_000_000;

/// One machine's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineState {
    pub class: u32,
    pub free: Resources,
    /// Free milli-GPUs of each GPU device (see [`crate::gpu`]); their sum
    /// is `free.gpu`.
    pub gpus: Vec<u32>,
    pub tasks: u32,
    pub up: bool,
    key: u64,
}

#[derive(Debug, Clone)]
struct ClassState {
    class: MachineClass,
    /// Up machines holding at least one task, by `(key, id)`.
    used: BTreeSet<(u64, u32)>,
    /// Up machines holding nothing, by id.
    empty: BTreeSet<u32>,
}

/// A cluster's machines, their free capacity and the fragmentation index.
#[derive(Debug, Clone)]
pub struct Cell {
    classes: Vec<ClassState>,
    machines: Vec<MachineState>,
    /// Per machine, its index within its class (for names such as `std-17`).
    ordinal: Vec<u32>,
    capacity: Resources,
    allocated: Resources,
}

/// The fragmentation key of `free` on a machine of `capacity`.
#[inline]
pub fn fragmentation_key(free: &Resources, capacity: &Resources) -> u64 {
    let (f, c) = (free.as_array(), capacity.as_array());
    let mut key = 0;
    for i in 0..4 {
        // In u64 when the product fits (it does for any machine of less
        // than 18 TB of memory): the same quotient, without a 128-bit
        // division. A resource the machine lacks counts nothing.
        key += match f[i].checked_mul(KEY_SCALE) {
            Some(p) => p.checked_div(c[i]).unwrap_or(0),
            None if c[i] > 0 => {
                ((u128::from(f[i]) * u128::from(KEY_SCALE)) / u128::from(c[i])) as u64
            }
            None => 0,
        };
    }
    key
}

impl Cell {
    /// An empty cell with the machines of `cluster`, numbered class by class.
    pub fn new(cluster: &Cluster) -> Cell {
        let mut cell = Cell {
            classes: Vec::new(),
            machines: Vec::new(),
            ordinal: Vec::new(),
            capacity: Resources::ZERO,
            allocated: Resources::ZERO,
        };
        for class in &cluster.classes {
            let k = cell.add_class(class.clone());
            for _ in 0..class.count {
                cell.add_machine(k);
            }
        }
        cell
    }

    /// Adds a class with no machines yet; returns its index.
    pub fn add_class(&mut self, mut class: MachineClass) -> u32 {
        class.count = 0;
        self.classes.push(ClassState {
            class,
            used: BTreeSet::new(),
            empty: BTreeSet::new(),
        });
        (self.classes.len() - 1) as u32
    }

    /// Adds an empty, up machine of class `k`; returns its id.
    pub fn add_machine(&mut self, k: u32) -> MachineId {
        let id = self.machines.len() as u32;
        let class = &mut self.classes[k as usize];
        let capacity = class.class.capacity;
        self.ordinal.push(class.class.count);
        class.class.count += 1;
        class.empty.insert(id);
        self.machines.push(MachineState {
            class: k,
            free: capacity,
            gpus: gpu::empty_devices(capacity.gpu.0),
            tasks: 0,
            up: true,
            key: fragmentation_key(&capacity, &capacity),
        });
        self.capacity = self.capacity.saturating_add(&capacity);
        MachineId(id)
    }

    pub fn machine(&self, m: MachineId) -> &MachineState {
        &self.machines[m.0 as usize]
    }

    /// Every machine with its id, in id order.
    pub fn machines(&self) -> impl Iterator<Item = (MachineId, &MachineState)> {
        self.machines
            .iter()
            .enumerate()
            .map(|(i, m)| (MachineId(i as u32), m))
    }

    pub fn machine_count(&self) -> usize {
        self.machines.len()
    }

    pub fn class(&self, k: u32) -> &MachineClass {
        &self.classes[k as usize].class
    }

    pub fn class_count(&self) -> usize {
        self.classes.len()
    }

    pub fn capacity_of(&self, m: MachineId) -> &Resources {
        &self.class(self.machine(m).class).capacity
    }

    /// The machine's name as the simulator shows it: `<class>-<ordinal>`.
    pub fn machine_name(&self, m: MachineId) -> String {
        let st = self.machine(m);
        self.class(st.class)
            .machine_name(self.ordinal[m.0 as usize])
    }

    pub fn capacity(&self) -> Resources {
        self.capacity
    }

    pub fn allocated(&self) -> Resources {
        self.allocated
    }

    /// Machines holding at least one task.
    pub fn machines_used(&self) -> usize {
        self.machines.iter().filter(|m| m.tasks > 0).count()
    }

    fn unindex(&mut self, m: u32) {
        let st = &self.machines[m as usize];
        if !st.up {
            return;
        }
        let class = &mut self.classes[st.class as usize];
        if st.tasks == 0 {
            class.empty.remove(&m);
        } else {
            class.used.remove(&(st.key, m));
        }
    }

    fn index(&mut self, m: u32) {
        let st = &mut self.machines[m as usize];
        if !st.up {
            return;
        }
        let class = &mut self.classes[st.class as usize];
        st.key = fragmentation_key(&st.free, &class.class.capacity);
        if st.tasks == 0 {
            class.empty.insert(m);
        } else {
            class.used.insert((st.key, m));
        }
    }

    /// True when a task of `request` fits on `m`: in every resource, and
    /// its GPU demand on the machine's devices (a share on one device,
    /// whole devices free).
    #[inline]
    pub fn fits(&self, m: MachineId, request: &Resources) -> bool {
        let st = &self.machines[m.0 as usize];
        request.fits_in(&st.free) && gpu::fits(&st.gpus, GpuDemand::of(request.gpu.0))
    }

    /// Puts a task of `request` on `m`, on the devices [`gpu::choose`]
    /// picks; returns them. The caller has checked that it fits.
    pub fn place(&mut self, m: MachineId, request: &Resources) -> Vec<GpuSlot> {
        let demand = GpuDemand::of(request.gpu.0);
        // The caller checked `fits`, which is what `choose` needs.
        let slots = gpu::choose(&self.machine(m).gpus, demand).unwrap_or_default();
        self.place_on(m, request, &slots);
        slots
    }

    /// Puts a task of `request` on `m`, on the devices `slots`. The caller
    /// has checked that it fits there ([`gpu::check_slots`]).
    pub fn place_on(&mut self, m: MachineId, request: &Resources, slots: &[GpuSlot]) {
        debug_assert!(
            request.fits_in(&self.machine(m).free),
            "placement over capacity"
        );
        debug_assert_eq!(
            gpu::check_slots(&self.machine(m).gpus, GpuDemand::of(request.gpu.0), slots),
            Ok(()),
            "invalid GPU devices"
        );
        self.unindex(m.0);
        let st = &mut self.machines[m.0 as usize];
        st.free = st.free.saturating_sub(request);
        gpu::take(&mut st.gpus, slots);
        st.tasks += 1;
        self.allocated = self.allocated.saturating_add(request);
        self.index(m.0);
    }

    /// Puts `n` tasks of `request`, which asks for no GPU, on `m`,
    /// re-indexing it once. The caller has checked that they fit (GPU
    /// tasks go one by one through [`Cell::place`]: each needs devices).
    pub fn place_n(&mut self, m: MachineId, request: &Resources, n: u32) {
        debug_assert_eq!(request.gpu.0, 0, "place_n with a GPU request");
        if n == 0 {
            return;
        }
        let total = request.times(u64::from(n));
        debug_assert!(
            total.fits_in(&self.machine(m).free),
            "placement over capacity"
        );
        self.unindex(m.0);
        let st = &mut self.machines[m.0 as usize];
        st.free = st.free.saturating_sub(&total);
        st.tasks += n;
        self.allocated = self.allocated.saturating_add(&total);
        self.index(m.0);
    }

    /// Takes one task of `request` off `m`, with the devices it was given.
    pub fn release_on(&mut self, m: MachineId, request: &Resources, slots: &[GpuSlot]) {
        let total = self.capacity_of(m).gpu.0;
        gpu::give(&mut self.machines[m.0 as usize].gpus, total, slots);
        self.release_counts(m, request, 1);
    }

    /// Takes `n` tasks of `request` off `m` (they finished, failed or moved).
    /// Without their devices, GPUs are given back where
    /// [`gpu::guess_release`] finds them; [`Cell::release_on`] is exact.
    pub fn release(&mut self, m: MachineId, request: &Resources, n: u32) {
        let demand = GpuDemand::of(request.gpu.0);
        if demand != GpuDemand::None {
            let total = self.capacity_of(m).gpu.0;
            let st = &mut self.machines[m.0 as usize];
            for _ in 0..n {
                let slots = gpu::guess_release(&st.gpus, total, demand);
                gpu::give(&mut st.gpus, total, &slots);
            }
        }
        self.release_counts(m, request, n);
    }

    fn release_counts(&mut self, m: MachineId, request: &Resources, n: u32) {
        self.unindex(m.0);
        let capacity = *self.capacity_of(m);
        let st = &mut self.machines[m.0 as usize];
        debug_assert!(st.tasks >= n, "releasing more tasks than the machine holds");
        let total = request.times(u64::from(n));
        // Free capacity can never exceed the machine's capacity.
        let (free, cap) = (
            st.free.saturating_add(&total).as_array(),
            capacity.as_array(),
        );
        st.free = Resources::from_array(std::array::from_fn(|i| free[i].min(cap[i])));
        st.tasks -= n.min(st.tasks);
        if st.tasks == 0 {
            // Nothing left on the machine: every device is whole again,
            // whatever a release without devices guessed.
            st.gpus = gpu::empty_devices(capacity.gpu.0);
        }
        self.allocated = self.allocated.saturating_sub(&total);
        self.index(m.0);
    }

    /// Marks a machine up or down. A down machine takes no new tasks; its
    /// tasks stay accounted until the caller releases them.
    pub fn set_up(&mut self, m: MachineId, up: bool) {
        if self.machine(m).up == up {
            return;
        }
        if !up {
            self.unindex(m.0);
            self.machines[m.0 as usize].up = false;
        } else {
            self.machines[m.0 as usize].up = true;
            self.index(m.0);
        }
    }

    /// The classes whose machines carry `constraints` and are large enough
    /// for `request` when empty.
    pub fn eligible_classes(&self, request: &Resources, constraints: &Labels) -> Vec<u32> {
        (0..self.classes.len() as u32)
            .filter(|&k| {
                let c = &self.classes[k as usize].class;
                request.fits_in(&c.capacity) && labels::satisfies(constraints, &c.labels)
            })
            .collect()
    }

    /// The eligible classes in two tiers: first those where the task wastes
    /// no scarce resource, then machines with GPUs for a task that needs
    /// none. A cpu-only task on a GPU machine can strand its GPUs, the
    /// fragmentation that Weng et al. measure in "Beware of Fragmentation:
    /// Scheduling GPU-Sharing Workloads with Fragmentation Gradient Descent"
    /// (USENIX ATC 2023); such tasks go there only when nothing else fits.
    pub fn class_tiers(&self, request: &Resources, constraints: &Labels) -> [Vec<u32>; 2] {
        let (mut plain, mut scarce) = (Vec::new(), Vec::new());
        for k in self.eligible_classes(request, constraints) {
            if request.gpu.0 == 0 && self.class(k).capacity.gpu.0 > 0 {
                scarce.push(k);
            } else {
                plain.push(k);
            }
        }
        [plain, scarce]
    }

    /// The used machine (holding tasks already) of the eligible classes
    /// where `request` fits most tightly: the smallest fragmentation key.
    pub fn best_fit_used(&self, request: &Resources, classes: &[u32]) -> Option<MachineId> {
        let mut best: Option<(u64, u32)> = None;
        for &k in classes {
            let class = &self.classes[k as usize];
            let floor = fragmentation_key(request, &class.class.capacity);
            for &(key, m) in class.used.range((floor, 0)..) {
                if let Some((b, _)) = best {
                    // Compare by what is left after placing: key - floor.
                    if key - floor >= b {
                        break;
                    }
                }
                if self.fits(MachineId(m), request) {
                    let slack = key - floor;
                    if best.is_none_or(|(b, bm)| (slack, m) < (b, bm)) {
                        best = Some((slack, m));
                    }
                    break;
                }
            }
        }
        best.map(|(_, m)| MachineId(m))
    }

    /// The lowest-id empty machine of class `k`, if any.
    pub fn empty_machine(&self, k: u32) -> Option<MachineId> {
        self.classes[k as usize]
            .empty
            .first()
            .map(|&m| MachineId(m))
    }

    /// Whether class `k` has an empty machine.
    pub fn has_empty(&self, k: u32) -> bool {
        !self.classes[k as usize].empty.is_empty()
    }

    /// For best fit: the empty machine of the eligible class that the task
    /// fills most (the smallest machine that holds it), ties to lower class.
    pub fn best_fit_empty(&self, request: &Resources, classes: &[u32]) -> Option<MachineId> {
        classes
            .iter()
            .filter_map(|&k| {
                let class = &self.classes[k as usize];
                let m = *class.empty.first()?;
                let cap = &class.class.capacity;
                let slack = fragmentation_key(cap, cap) - fragmentation_key(request, cap);
                Some((slack, k, m))
            })
            .min()
            .map(|(_, _, m)| MachineId(m))
    }

    /// For spread: the machine with the most free capacity where the task
    /// fits, empty machines first.
    pub fn emptiest_fit(&self, request: &Resources, classes: &[u32]) -> Option<MachineId> {
        let mut best: Option<(u64, std::cmp::Reverse<u32>)> = None;
        for &k in classes {
            let class = &self.classes[k as usize];
            if let Some(&m) = class.empty.first() {
                let cap = &class.class.capacity;
                let cand = (fragmentation_key(cap, cap), std::cmp::Reverse(m));
                best = best.max(Some(cand));
                continue;
            }
            for &(key, m) in class.used.iter().rev() {
                if best.is_some_and(|(b, _)| key < b) {
                    break;
                }
                if self.fits(MachineId(m), request) {
                    best = best.max(Some((key, std::cmp::Reverse(m))));
                    break;
                }
            }
        }
        best.map(|(_, std::cmp::Reverse(m))| MachineId(m))
    }

    /// Explains why no machine takes a task of `request` with `constraints`:
    /// every machine is run through the machine filters and the rejections
    /// are counted.
    pub fn diagnose(&self, request: &Resources, constraints: &Labels) -> Unschedulable {
        let shape = TaskShape {
            request,
            constraints,
        };
        let mut why = Unschedulable {
            machines_considered: self.machines.len() as u32,
            ..Default::default()
        };
        for st in &self.machines {
            let class = &self.classes[st.class as usize].class;
            let view = MachineView {
                capacity: &class.capacity,
                free: &st.free,
                labels: &class.labels,
                up: st.up,
            };
            if let Some(r) = machine_filters()
                .iter()
                .find_map(|f| f.check(&shape, &view).err())
            {
                why.record(r, 1);
            }
        }
        why
    }

    /// Checks the bookkeeping against a recount (for tests and debug builds):
    /// no machine over capacity, totals consistent, index complete.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut allocated = Resources::ZERO;
        for (i, st) in self.machines.iter().enumerate() {
            let cap = &self.classes[st.class as usize].class.capacity;
            if !st.free.fits_in(cap) {
                return Err(format!(
                    "machine {i}: free {} exceeds capacity {cap}",
                    st.free
                ));
            }
            allocated = allocated.saturating_add(&cap.saturating_sub(&st.free));
            let device_free: u64 = st.gpus.iter().map(|&g| u64::from(g)).sum();
            if device_free != st.free.gpu.0 {
                return Err(format!(
                    "machine {i}: devices have {device_free} milli-GPUs free, the machine {}",
                    st.free.gpu.0
                ));
            }
            let class = &self.classes[st.class as usize];
            let indexed = if st.tasks == 0 {
                class.empty.contains(&(i as u32))
            } else {
                class.used.contains(&(st.key, i as u32))
            };
            if st.up != indexed {
                return Err(format!("machine {i}: index out of step"));
            }
        }
        if allocated != self.allocated {
            return Err(format!(
                "allocated {} != recount {allocated}",
                self.allocated
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterId;
    use crate::locality::LocationId;
    use std::collections::BTreeMap;

    fn cell(classes: &[(u32, u64, u64)]) -> Cell {
        Cell::new(&Cluster {
            id: ClusterId(0),
            name: "c".into(),
            location: LocationId(0),
            classes: classes
                .iter()
                .enumerate()
                .map(|(i, &(count, cpu, mem))| MachineClass {
                    name: format!("k{i}"),
                    count,
                    capacity: Resources::new(cpu, mem),
                    labels: BTreeMap::new(),
                })
                .collect(),
        })
    }

    #[test]
    fn key_is_normalized_free_capacity() {
        let cap = Resources::new(4000, 1000);
        // cpu 1000/4000 = 0.25, memory 500/1000 = 0.5: 250000 + 500000
        assert_eq!(fragmentation_key(&Resources::new(1000, 500), &cap), 750_000);
        // An empty machine: 1 + 1 = 2 million.
        assert_eq!(fragmentation_key(&cap, &cap), 2_000_000);
    }

    #[test]
    fn best_fit_prefers_the_tightest_used_machine() {
        let mut c = cell(&[(3, 4000, 1000)]);
        let (m0, m1) = (MachineId(0), MachineId(1));
        c.place(m0, &Resources::new(1000, 250)); // key 0.75 + 0.75 = 1.5M
        c.place(m1, &Resources::new(3000, 750)); // key 0.25 + 0.25 = 0.5M
        let q = Resources::new(500, 100);
        assert_eq!(c.best_fit_used(&q, &[0]), Some(m1));
        // A task too big for m1 goes to m0, never to the empty m2.
        let big = Resources::new(2000, 100);
        assert_eq!(c.best_fit_used(&big, &[0]), Some(m0));
        assert_eq!(c.best_fit_used(&Resources::new(3500, 1), &[0]), None);
        assert_eq!(c.best_fit_empty(&big, &[0]), Some(MachineId(2)));
        // Spread takes the empty machine.
        assert_eq!(c.emptiest_fit(&q, &[0]), Some(MachineId(2)));
        c.check_invariants().unwrap();
    }

    #[test]
    fn best_fit_skips_machines_short_in_one_resource() {
        let mut c = cell(&[(2, 4000, 1000)]);
        c.place(MachineId(0), &Resources::new(3900, 0)); // tight on cpu, key 0.025 + 1
        c.place(MachineId(1), &Resources::new(1000, 500)); // key 0.75 + 0.5
                                                           // 200m does not fit machine 0's 100m even though its key is lower.
        assert_eq!(
            c.best_fit_used(&Resources::new(200, 10), &[0]),
            Some(MachineId(1))
        );
    }

    #[test]
    fn release_and_down_keep_the_index_in_step() {
        let mut c = cell(&[(2, 4000, 1000)]);
        let q = Resources::new(1000, 100);
        c.place(MachineId(0), &q);
        c.place(MachineId(0), &q);
        c.release(MachineId(0), &q, 2);
        assert_eq!(c.machine(MachineId(0)).free, Resources::new(4000, 1000));
        assert_eq!(c.empty_machine(0), Some(MachineId(0)));
        c.set_up(MachineId(0), false);
        assert_eq!(c.empty_machine(0), Some(MachineId(1)));
        c.check_invariants().unwrap();
        let why = c.diagnose(&Resources::new(5000, 1), &BTreeMap::new());
        assert_eq!(why.reasons["machine down"], 1);
        assert_eq!(why.reasons["insufficient cpu"], 1);
    }
}
