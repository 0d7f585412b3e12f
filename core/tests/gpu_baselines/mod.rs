//! Baselines for GPU-sharing placement, written from their published rules
//! as Weng et al. describe them ("Beware of Fragmentation", USENIX ATC
//! 2023, §6.1), to be measured against, never to schedule.
//!
//! All place one task at a time on a feasible machine (up, labels and GPU
//! model met, room in cpu and memory, the GPU demand fits its devices:
//! [`Cell::fits`]); ties go to the lowest machine id. Except where a rule
//! says otherwise, a share goes to the device where it fits most tightly
//! ([`sched_core::gpu::choose`]).
//!
//! - **Random fit**: a feasible machine drawn uniformly (seeded).
//! - **Best fit**: the machine left with the least resources: the smallest
//!   sum of normalized free cpu and free GPU after placing.
//! - **Dot product**: the machine whose free resources have the smallest
//!   dot product with the task's demand, both normalized by the machine's
//!   capacity (cpu and GPU), i.e. the one the task aligns with least in
//!   spare room: it packs tasks where their dimensions are scarce (the
//!   paper's reading of Tetris, Grandl et al., SIGCOMM 2014).
//! - **GPU packing**: GPU tasks first to a device already in use that can
//!   take them, then to free devices of machines already in use, then to
//!   idle machines; among those, the machine with the fewest free GPUs.
//! - **FGD (paper)**: [`FragmentationPlacer::paper`]: the machine and
//!   device where fragmentation against the task mix grows least, every
//!   feasible machine, ties to the lowest id.

#![allow(dead_code)]

use sched_core::cell::Cell;
use sched_core::gpu::frag::TaskMix;
use sched_core::gpu::strategy::{FragmentationPlacer, TaskPlacer};
use sched_core::gpu::{self, GpuDemand, GpuSlot};
use sched_core::labels::Labels;
use sched_core::machine::MachineId;
use sched_core::replay::inflate::SplitMix64;
use sched_core::resources::Resources;

/// The feasible machines of `cell` for a task.
fn feasible<'a>(
    cell: &'a Cell,
    request: &'a Resources,
    constraints: &'a Labels,
) -> impl Iterator<Item = MachineId> + 'a {
    let classes = cell.eligible_classes(request, constraints);
    cell.machines()
        .filter(move |(id, st)| st.up && classes.contains(&st.class) && cell.fits(*id, request))
        .map(|(id, _)| id)
}

fn put(cell: &mut Cell, m: MachineId, request: &Resources) -> (MachineId, Vec<GpuSlot>) {
    let slots = cell.place(m, request);
    (m, slots)
}

/// `free / capacity` of cpu and GPU, in millionths.
fn norm(free: u64, cap: u64) -> u64 {
    (free * 1_000_000).checked_div(cap).unwrap_or(0)
}

pub struct RandomFit(pub SplitMix64);

impl TaskPlacer for RandomFit {
    fn name(&self) -> &str {
        "random-fit"
    }
    fn place(
        &mut self,
        cell: &mut Cell,
        r: &Resources,
        c: &Labels,
    ) -> Option<(MachineId, Vec<GpuSlot>)> {
        let all: Vec<MachineId> = feasible(cell, r, c).collect();
        if all.is_empty() {
            return None;
        }
        let m = all[self.0.below(all.len())];
        Some(put(cell, m, r))
    }
}

pub struct BestFit;

impl TaskPlacer for BestFit {
    fn name(&self) -> &str {
        "best-fit"
    }
    fn place(
        &mut self,
        cell: &mut Cell,
        r: &Resources,
        c: &Labels,
    ) -> Option<(MachineId, Vec<GpuSlot>)> {
        let m = feasible(cell, r, c).min_by_key(|&m| {
            let (st, cap) = (cell.machine(m), cell.capacity_of(m));
            let left = st.free.saturating_sub(r);
            (norm(left.cpu.0, cap.cpu.0) + norm(left.gpu.0, cap.gpu.0), m)
        })?;
        Some(put(cell, m, r))
    }
}

pub struct DotProduct;

impl TaskPlacer for DotProduct {
    fn name(&self) -> &str {
        "dot-product"
    }
    fn place(
        &mut self,
        cell: &mut Cell,
        r: &Resources,
        c: &Labels,
    ) -> Option<(MachineId, Vec<GpuSlot>)> {
        let m = feasible(cell, r, c).min_by_key(|&m| {
            let (st, cap) = (cell.machine(m), cell.capacity_of(m));
            let dot = u128::from(norm(r.cpu.0, cap.cpu.0))
                * u128::from(norm(st.free.cpu.0, cap.cpu.0))
                + u128::from(norm(r.gpu.0, cap.gpu.0)) * u128::from(norm(st.free.gpu.0, cap.gpu.0));
            (dot, m)
        })?;
        Some(put(cell, m, r))
    }
}

pub struct GpuPacking;

impl TaskPlacer for GpuPacking {
    fn name(&self) -> &str {
        "gpu-packing"
    }
    fn place(
        &mut self,
        cell: &mut Cell,
        r: &Resources,
        c: &Labels,
    ) -> Option<(MachineId, Vec<GpuSlot>)> {
        let demand = GpuDemand::of(r.gpu.0);
        let m = feasible(cell, r, c).min_by_key(|&m| {
            let st = cell.machine(m);
            let cap = cell.capacity_of(m).gpu.0;
            let in_use_device = match demand {
                GpuDemand::Share(d) => st.gpus.iter().any(|&f| f >= d && f < 1000),
                _ => false,
            };
            let tier = if in_use_device {
                0
            } else if st.free.gpu.0 < cap {
                1
            } else {
                2
            };
            (tier, st.free.gpu.0, m)
        })?;
        // A share goes to a used device first (best fit does that), whole
        // GPUs to free ones.
        debug_assert!(gpu::fits(&cell.machine(m).gpus, demand));
        Some(put(cell, m, r))
    }
}

/// The paper's FGD, ties to the lowest id.
pub fn fgd_paper(mix: TaskMix) -> FragmentationPlacer {
    FragmentationPlacer::paper(mix)
}

/// The paper's experiment: the openb trace, its machines, its task mix.
pub struct Openb {
    pub machines: sched_core::replay::openb::TraceMachines,
    pub pods: Vec<sched_core::replay::ReplayTask>,
    pub mix: TaskMix,
}

/// The openb files: `$OPENB_DIR`, or the copy in the
/// repository's `data/alibaba-openb`.
pub fn openb_dir() -> std::path::PathBuf {
    match std::env::var_os("OPENB_DIR") {
        Some(d) => d.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/alibaba-openb"),
    }
}

pub fn load_openb() -> Openb {
    use sched_core::replay::openb::{parse_machines, parse_pods};
    let dir = openb_dir();
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| {
            panic!(
                "cannot read {} ({e}); set OPENB_DIR to the openb csv folder",
                dir.join(f).display()
            )
        })
    };
    let machines = parse_machines(&read("openb_node_list_all_node.csv"), "openb").unwrap();
    let pods = parse_pods(&read("openb_pod_list_default.csv")).unwrap();
    let mix = sched_core::replay::task_mix(&pods);
    Openb {
        machines,
        pods,
        mix,
    }
}

/// The strategies compared: this project's two, then the baselines.
pub fn placers(mix: &TaskMix, seed: u64) -> Vec<Box<dyn TaskPlacer>> {
    use sched_core::gpu::strategy::PolicyPlacer;
    use sched_core::policy::{LocalPolicy, Strategy};
    let local = |strategy| LocalPolicy {
        strategy,
        ..LocalPolicy::default()
    };
    vec![
        Box::new(PolicyPlacer::new(
            "ours: fragmentation",
            &local(Strategy::Fragmentation),
            mix.clone(),
        )),
        Box::new(PolicyPlacer::new(
            "ours: best_fit",
            &local(Strategy::BestFit),
            mix.clone(),
        )),
        Box::new(fgd_paper(mix.clone())),
        Box::new(BestFit),
        Box::new(DotProduct),
        Box::new(GpuPacking),
        Box::new(RandomFit(SplitMix64::new(seed ^ 0x5eed))),
    ]
}

/// One strategy's result on one seed.
#[derive(Debug, Clone)]
pub struct Run {
    pub name: String,
    pub gpu_milli_total: u64,
    pub gpu_milli_arrived: u64,
    pub gpu_milli_allocated: u64,
    pub tasks: usize,
    pub tasks_unplaced: u64,
}

/// Runs every strategy on the inflated workload of `seed`, checking every
/// placement.
pub fn experiment(o: &Openb, seed: u64, fraction: f64) -> Vec<Run> {
    use sched_core::replay::{check_placements, inflate::inflate, replay};
    let topology = &o.machines.topology;
    let capacity = topology.clusters[0].capacity().gpu.0;
    let tasks = inflate(&o.pods, capacity, fraction, seed);
    placers(&o.mix, seed)
        .into_iter()
        .map(|p| {
            let name = p.name().to_string();
            let mut ps = vec![p];
            let started = std::time::Instant::now();
            let out = replay(topology, &tasks, &mut ps, &o.mix);
            if std::env::var_os("GPU_TIMING").is_some() {
                eprintln!("{name}: {:.2} s", started.elapsed().as_secs_f64());
            }
            if let Err(e) = check_placements(topology, &tasks, &out) {
                panic!("{name}, seed {seed}: invalid placement: {e}");
            }
            for c in &out.cells {
                c.check_invariants().unwrap();
            }
            Run {
                name,
                gpu_milli_total: out.capacity.gpu.0,
                gpu_milli_arrived: out.gpu_milli_arrived,
                gpu_milli_allocated: out.gpu_milli_allocated,
                tasks: tasks.len(),
                tasks_unplaced: out.tasks_unplaced,
            }
        })
        .collect()
}

/// The mean over seeds per strategy, as table rows:
/// `(name, allocation rate %, unallocated GPUs)`.
pub fn table(runs: &[Vec<Run>]) -> Vec<(String, f64, f64)> {
    let n = runs.len() as f64;
    (0..runs[0].len())
        .map(|i| {
            let alloc: f64 = runs
                .iter()
                .map(|r| r[i].gpu_milli_allocated as f64)
                .sum::<f64>()
                / n;
            let total = runs[0][i].gpu_milli_total as f64;
            (
                runs[0][i].name.clone(),
                100.0 * alloc / total,
                (total - alloc) / 1000.0,
            )
        })
        .collect()
}
