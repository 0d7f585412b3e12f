//! Choosing a machine and its GPU devices for one task.
//!
//! [`TaskPlacer`] is what the trace replay ([`crate::replay`]) asks for each
//! arriving task; [`PolicyPlacer`] answers as the policy's local strategy
//! does, and the comparison baselines (in the tests) answer by their own
//! published rules.
//!
//! # Fragmentation strategy
//!
//! `strategy: fragmentation` is Fragmentation Gradient Descent (Weng et al.,
//! USENIX ATC 2023): among the machines where the task fits, take the one
//! whose fragmentation against the task mix ([`crate::gpu::frag`]) grows
//! least, and on it the device that makes it grow least. Three changes to the
//! paper's rule:
//!
//! 1. Machines come in the cell's two tiers ([`Cell::class_tiers`]): a
//!    task that needs no GPU goes to a GPU machine only when no machine
//!    without GPUs holds it. In the paper such a task scores a growth of
//!    zero on any machine whose cpu it does not exhaust, so it lands on GPU
//!    machines, where its cpu and memory later keep GPU tasks out.
//! 2. Ties (equal growth, common: every empty machine of a class, every
//!    machine without GPUs) go to best fit: the machine left with the least
//!    free GPU, then the smallest normalized free capacity
//!    ([`crate::cell::fragmentation_key`]), then the lowest id. The paper
//!    leaves ties to the order of Kubernetes' node list.
//!
//! The growth of each machine for each task shape is cached until the
//! machine changes, so a decision reads one number per machine, and
//! machines in the same state share one measurement ([`FragCache`]).

use std::collections::BTreeMap;

use crate::cell::{fragmentation_key, Cell};
use crate::gpu::frag::{FragCache, MachineFree, TaskMix, TaskShape};
use crate::gpu::{self, GpuDemand, GpuSlot};
use crate::labels::Labels;
use crate::machine::MachineId;
use crate::pack::{pack, TaskGroup};
use crate::policy::{LocalPolicy, Strategy};
use crate::resources::Resources;

/// Places one task at a time on a cell.
pub trait TaskPlacer {
    fn name(&self) -> &str;
    /// Chooses a machine and devices for one task of `request` and places
    /// it on `cell`; `None` when no machine takes it.
    fn place(
        &mut self,
        cell: &mut Cell,
        request: &Resources,
        constraints: &Labels,
    ) -> Option<(MachineId, Vec<GpuSlot>)>;
    /// A task left `m` (the cell is already updated).
    fn released(&mut self, _m: MachineId) {}
}

/// The policy's local strategy, one task at a time.
pub struct PolicyPlacer {
    name: String,
    local: LocalPolicy,
    frag: FragmentationPlacer,
}

impl PolicyPlacer {
    /// `mix` is the task mix the fragmentation strategy measures against.
    pub fn new(name: impl Into<String>, local: &LocalPolicy, mix: TaskMix) -> PolicyPlacer {
        PolicyPlacer {
            name: name.into(),
            local: local.clone(),
            frag: FragmentationPlacer::new(mix),
        }
    }
}

impl TaskPlacer for PolicyPlacer {
    fn name(&self) -> &str {
        &self.name
    }

    fn place(
        &mut self,
        cell: &mut Cell,
        request: &Resources,
        constraints: &Labels,
    ) -> Option<(MachineId, Vec<GpuSlot>)> {
        if self.local.strategy == Strategy::Fragmentation {
            return self.frag.place(cell, request, constraints);
        }
        let group = TaskGroup {
            job: crate::job::JobId(0),
            request: *request,
            constraints,
            priority: 0,
            count: 1,
        };
        let mut out = pack(cell, &[group], &self.local);
        let o = out.pop()?;
        let m = *o.placed.first()?;
        Some((m, o.gpus.into_iter().next().unwrap_or_default()))
    }

    fn released(&mut self, m: MachineId) {
        self.frag.released(m);
    }
}

/// A machine's cached choice for one task shape: the growth of its
/// fragmentation and the devices that give it.
#[derive(Debug, Clone)]
struct Choice {
    growth: i64,
    slots: Vec<GpuSlot>,
}

/// The fragmentation strategy, with its caches.
#[derive(Debug, Default)]
pub struct FragmentationPlacer {
    mix: TaskMix,
    cache: FragCache,
    shapes: BTreeMap<TaskShape, usize>,
    /// Per machine, per shape id: the cached choice (`None`: not measured
    /// since the machine last changed).
    choices: Vec<Vec<Option<Choice>>>,
    /// Whether the cpu-only-off-GPU-machines tiers and best-fit ties apply
    /// (false: the paper's plain rule, lowest id on ties).
    pub tiers: bool,
}

impl FragmentationPlacer {
    /// This project's rule: tiers, best-fit ties, and the mix weighted by
    /// GPUs ([`TaskMix::weighted_by_gpus`]).
    pub fn new(mix: TaskMix) -> FragmentationPlacer {
        FragmentationPlacer {
            mix: mix.weighted_by_gpus(),
            tiers: true,
            ..Default::default()
        }
    }

    /// The paper's rule: every feasible machine, ties to the lowest id.
    pub fn paper(mix: TaskMix) -> FragmentationPlacer {
        FragmentationPlacer {
            mix,
            tiers: false,
            ..Default::default()
        }
    }

    /// The fragmentation of machine `m` against the mix.
    pub fn fragmentation(&mut self, cell: &Cell, m: MachineId) -> u64 {
        let st = cell.machine(m);
        let class = cell.class(st.class);
        let free = MachineFree {
            cpu: st.free.cpu.0,
            memory: st.free.memory.0,
            gpus: &st.gpus,
            labels: &class.labels,
        };
        self.cache.get(st.class, &free, &self.mix)
    }

    fn shape_id(&mut self, request: &Resources, constraints: &Labels) -> usize {
        let shape = TaskShape::of(request, constraints);
        let n = self.shapes.len();
        *self.shapes.entry(shape).or_insert(n)
    }

    /// The best devices on `m` for a task and the growth they cause.
    fn measure(&mut self, cell: &Cell, m: MachineId, request: &Resources) -> Option<Choice> {
        let st = cell.machine(m);
        let demand = GpuDemand::of(request.gpu.0);
        let options: Vec<Vec<GpuSlot>> = match demand {
            GpuDemand::Share(d) => {
                // One option per distinct free amount: devices with the same
                // free capacity give the same measure.
                let mut seen: Vec<u32> = Vec::new();
                let mut v = Vec::new();
                for (i, &f) in st.gpus.iter().enumerate() {
                    if f >= d && !seen.contains(&f) {
                        seen.push(f);
                        v.push(vec![GpuSlot {
                            device: i as u32,
                            milli: d,
                        }]);
                    }
                }
                v
            }
            _ => vec![gpu::choose(&st.gpus, demand)?],
        };
        let before = self.fragmentation(cell, m) as i64;
        let class = cell.class(st.class);
        let (cpu, memory) = (
            st.free.cpu.0.saturating_sub(request.cpu.0),
            st.free.memory.0.saturating_sub(request.memory.0),
        );
        let mut best: Option<(i64, u32, Vec<GpuSlot>)> = None;
        for slots in options {
            let mut gpus = st.gpus.clone();
            gpu::take(&mut gpus, &slots);
            let after = MachineFree {
                cpu,
                memory,
                gpus: &gpus,
                labels: &class.labels,
            };
            let growth = self.cache.get(st.class, &after, &self.mix) as i64 - before;
            // Equal growth: the tighter device (least free before).
            let tight = slots.first().map_or(0, |s| st.gpus[s.device as usize]);
            if best
                .as_ref()
                .is_none_or(|(g, t, _)| (growth, tight) < (*g, *t))
            {
                best = Some((growth, tight, slots));
            }
        }
        best.map(|(growth, _, slots)| Choice { growth, slots })
    }

    /// Chooses a machine and devices for one task, without placing it.
    pub fn choose(
        &mut self,
        cell: &Cell,
        request: &Resources,
        constraints: &Labels,
    ) -> Option<(MachineId, Vec<GpuSlot>)> {
        let shape = self.shape_id(request, constraints);
        if self.choices.len() < cell.machine_count() {
            self.choices.resize(cell.machine_count(), Vec::new());
        }
        let tiers: Vec<Vec<u32>> = if self.tiers {
            cell.class_tiers(request, constraints).into()
        } else {
            vec![cell.eligible_classes(request, constraints)]
        };
        for tier in tiers {
            let mut in_tier = vec![false; cell.class_count()];
            for &k in &tier {
                in_tier[k as usize] = true;
            }
            // (growth, free GPU after, key after, id)
            let mut best: Option<(i64, u64, u64, u32)> = None;
            for i in 0..cell.machine_count() {
                let m = MachineId(i as u32);
                let st = cell.machine(m);
                if !st.up || !in_tier[st.class as usize] || !cell.fits(m, request) {
                    continue;
                }
                if self.choices[i].get(shape).is_none_or(Option::is_none) {
                    let Some(c) = self.measure(cell, m, request) else {
                        continue;
                    };
                    let row = &mut self.choices[i];
                    if row.len() <= shape {
                        row.resize(shape + 1, None);
                    }
                    row[shape] = Some(c);
                }
                // Measured just above when it was not cached.
                let Some(choice) = &self.choices[i][shape] else {
                    continue;
                };
                let rank = if self.tiers {
                    let left = st.free.saturating_sub(request);
                    (
                        choice.growth,
                        left.gpu.0,
                        fragmentation_key(&left, cell.capacity_of(m)),
                        m.0,
                    )
                } else {
                    (choice.growth, 0, 0, m.0)
                };
                if best.is_none_or(|b| rank < b) {
                    best = Some(rank);
                }
            }
            if let Some((.., id)) = best {
                let slots = self.choices[id as usize][shape]
                    .as_ref()
                    .map(|c| c.slots.clone())
                    .unwrap_or_default();
                return Some((MachineId(id), slots));
            }
        }
        None
    }

    /// Forgets what was measured on `m` (it changed).
    pub fn released(&mut self, m: MachineId) {
        if let Some(row) = self.choices.get_mut(m.0 as usize) {
            row.clear();
        }
    }
}

impl TaskPlacer for FragmentationPlacer {
    fn name(&self) -> &str {
        if self.tiers {
            "fragmentation"
        } else {
            "fgd-paper"
        }
    }

    fn place(
        &mut self,
        cell: &mut Cell,
        request: &Resources,
        constraints: &Labels,
    ) -> Option<(MachineId, Vec<GpuSlot>)> {
        let (m, slots) = self.choose(cell, request, constraints)?;
        cell.place_on(m, request, &slots);
        self.released(m);
        Some((m, slots))
    }

    fn released(&mut self, m: MachineId) {
        FragmentationPlacer::released(self, m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Cluster, ClusterId};
    use crate::locality::LocationId;
    use crate::machine::MachineClass;

    fn gpu_cell(machines: u32, gpus: u64) -> Cell {
        Cell::new(&Cluster {
            id: ClusterId(0),
            name: "c".into(),
            location: LocationId(0),
            classes: vec![MachineClass {
                name: "g".into(),
                count: machines,
                capacity: Resources::new(64_000, 1 << 40).with_gpu(gpus * 1000),
                labels: Labels::new(),
            }],
        })
    }

    #[test]
    fn shares_pack_onto_one_device_and_keep_whole_devices_whole() {
        // Mix: half the tasks want 0.5 GPU, half want one whole GPU.
        let half = Resources::new(1000, 1).with_gpu(500);
        let whole = Resources::new(1000, 1).with_gpu(1000);
        let none = Labels::new();
        let mix = TaskMix::from_tasks([(&half, &none, 1), (&whole, &none, 1)]);
        let mut p = FragmentationPlacer::new(mix);
        let mut cell = gpu_cell(2, 2);
        let a = p.place(&mut cell, &half, &none).unwrap();
        let b = p.place(&mut cell, &half, &none).unwrap();
        // The second half goes on the same device as the first: a half-free
        // device is a fragment for whole-GPU tasks, a full one is not.
        assert_eq!(a.0, b.0);
        assert_eq!(a.1[0].device, b.1[0].device);
        let w = p.place(&mut cell, &whole, &none).unwrap();
        assert_eq!(
            w.0, a.0,
            "the whole GPU fills the same machine's free device"
        );
        cell.check_invariants().unwrap();
    }
}
