//! Trace replay: tasks arrive and depart in time order and are placed one
//! at a time by the local strategy, as the GPU-sharing studies replay
//! production traces.
//!
//! The events run in time order; at one instant, arrivals (in input order)
//! come before departures. An arriving task goes to the first cluster, in
//! topology order, whose [`TaskPlacer`] finds it a machine and devices; a
//! task no cluster takes waits, and the waiting tasks are offered again, in
//! arrival order, whenever a departure frees room. A waiting task whose
//! departure comes leaves unplaced.
//!
//! After each instant the replay records a [`Sample`]: what is allocated of
//! each resource, the GPUs unallocated and fragmented (the expected
//! fragments against the task mix, [`crate::gpu::frag`]), and the waiting
//! tasks.
//!
//! - [`openb`]: the Alibaba `openb` CSV files (machines, pods) as they are.
//! - [`inflate`]: the paper's protocol: tasks drawn from a trace until the
//!   requested GPUs reach a fraction of the capacity.

pub mod inflate;
pub mod openb;

use serde::Serialize;

use crate::cell::Cell;
use crate::cluster::ClusterId;
use crate::gpu::frag::{FragCache, MachineFree, TaskMix};
use crate::gpu::strategy::TaskPlacer;
use crate::gpu::GpuSlot;
use crate::labels::Labels;
use crate::machine::MachineId;
use crate::resources::Resources;
use crate::topology::Topology;

/// One task of a replayed workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayTask {
    /// Its job's name, and its index in the job.
    pub job: String,
    pub task: u32,
    pub request: Resources,
    pub constraints: Labels,
    pub arrival_ms: u64,
    /// When it finishes; `None`: it runs to the end.
    pub departure_ms: Option<u64>,
}

/// Where a task ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayPlacement {
    pub cluster: ClusterId,
    pub machine: MachineId,
    pub gpus: Vec<GpuSlot>,
    pub at_ms: u64,
}

/// The state after one instant of the replay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    pub time_ms: u64,
    /// Milli-GPUs requested by the tasks arrived so far.
    pub gpu_milli_arrived: u64,
    pub allocated: Resources,
    /// Capacity minus allocated, in milli-GPUs.
    pub gpu_milli_unallocated: u64,
    /// Expected fragmented milli-GPUs over the task mix: `Σ_m F(m) / Σ_t p_t`.
    pub gpu_milli_fragmented: u64,
    pub tasks_waiting: u64,
    pub tasks_running: u64,
}

/// What the replay did.
#[derive(Debug, Clone)]
pub struct ReplayOutcome {
    pub cells: Vec<Cell>,
    /// Per task (input order): where it ran, if it did.
    pub placements: Vec<Option<ReplayPlacement>>,
    pub samples: Vec<Sample>,
    pub capacity: Resources,
    /// Milli-GPUs requested by every task.
    pub gpu_milli_arrived: u64,
    /// Milli-GPUs allocated right after the last arrival.
    pub gpu_milli_allocated: u64,
    /// Tasks that never ran.
    pub tasks_unplaced: u64,
}

/// The task mix of a workload: its shapes weighted by their counts.
pub fn task_mix(tasks: &[ReplayTask]) -> TaskMix {
    TaskMix::from_tasks(tasks.iter().map(|t| (&t.request, &t.constraints, 1)))
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrive(usize),
    Depart(usize),
}

/// Replays `tasks` on the clusters of `topology`, one placer per cluster.
/// `mix` is the task mix that the fragmentation samples measure against.
pub fn replay(
    topology: &Topology,
    tasks: &[ReplayTask],
    placers: &mut [Box<dyn TaskPlacer + '_>],
    mix: &TaskMix,
) -> ReplayOutcome {
    let mut cells: Vec<Cell> = topology.clusters.iter().map(Cell::new).collect();
    assert_eq!(placers.len(), cells.len(), "one placer per cluster");
    let capacity = cells
        .iter()
        .fold(Resources::ZERO, |a, c| a.saturating_add(&c.capacity()));
    let weight: u64 = mix.shapes.iter().map(|(_, n)| n).sum::<u64>().max(1);
    let mut frag = FragCache::default();
    // Per cluster, per machine: its current fragmentation.
    let mut machine_frag: Vec<Vec<u64>> = Vec::with_capacity(cells.len());
    let mut frag_total = 0u64;
    for cell in &cells {
        let v: Vec<u64> = (0..cell.machine_count())
            .map(|i| measure(&mut frag, cell, MachineId(i as u32), mix))
            .collect();
        frag_total += v.iter().sum::<u64>();
        machine_frag.push(v);
    }

    let mut events: Vec<(u64, Event)> = Vec::with_capacity(tasks.len() * 2);
    for (i, t) in tasks.iter().enumerate() {
        events.push((t.arrival_ms, Event::Arrive(i)));
        if let Some(d) = t.departure_ms {
            events.push((d.max(t.arrival_ms), Event::Depart(i)));
        }
    }
    events.sort();
    let last_arrival = tasks.iter().map(|t| t.arrival_ms).max().unwrap_or(0);

    let mut placements: Vec<Option<ReplayPlacement>> = vec![None; tasks.len()];
    let mut ran = vec![false; tasks.len()];
    let mut waiting: std::collections::BTreeSet<usize> = Default::default();
    let mut done = vec![false; tasks.len()];
    let mut samples = Vec::new();
    let (mut arrived, mut running) = (0u64, 0u64);
    let mut allocated_at_last_arrival = None;
    let mut e = 0;
    while e < events.len() {
        let now = events[e].0;
        let mut freed = false;
        while e < events.len() && events[e].0 == now {
            match events[e].1 {
                Event::Arrive(i) => {
                    arrived += tasks[i].request.gpu.0;
                    let put = try_place(
                        &mut cells,
                        placers,
                        &tasks[i],
                        now,
                        mix,
                        &mut frag,
                        &mut machine_frag,
                        &mut frag_total,
                    );
                    match put {
                        Some(p) => {
                            placements[i] = Some(p);
                            ran[i] = true;
                            running += 1;
                        }
                        None => {
                            waiting.insert(i);
                        }
                    }
                }
                Event::Depart(i) => {
                    done[i] = true;
                    if waiting.remove(&i) {
                        // It never ran: it leaves the queue.
                    } else if let Some(p) = placements[i].as_ref().filter(|_| ran[i]) {
                        let c = p.cluster.0 as usize;
                        cells[c].release_on(p.machine, &tasks[i].request, &p.gpus);
                        placers[c].released(p.machine);
                        refresh(
                            &mut frag,
                            &cells[c],
                            p.machine,
                            mix,
                            &mut machine_frag[c],
                            &mut frag_total,
                        );
                        ran[i] = false;
                        running -= 1;
                        freed = true;
                    }
                }
            }
            e += 1;
        }
        if freed && !waiting.is_empty() {
            let queue: Vec<usize> = waiting.iter().copied().collect();
            for i in queue {
                if let Some(p) = try_place(
                    &mut cells,
                    placers,
                    &tasks[i],
                    now,
                    mix,
                    &mut frag,
                    &mut machine_frag,
                    &mut frag_total,
                ) {
                    waiting.remove(&i);
                    placements[i] = Some(p);
                    ran[i] = true;
                    running += 1;
                }
            }
        }
        let allocated = cells
            .iter()
            .fold(Resources::ZERO, |a, c| a.saturating_add(&c.allocated()));
        if now == last_arrival && allocated_at_last_arrival.is_none() {
            allocated_at_last_arrival = Some(allocated.gpu.0);
        }
        samples.push(Sample {
            time_ms: now,
            gpu_milli_arrived: arrived,
            allocated,
            gpu_milli_unallocated: capacity.gpu.0.saturating_sub(allocated.gpu.0),
            gpu_milli_fragmented: frag_total / weight,
            tasks_waiting: waiting.len() as u64,
            tasks_running: running,
        });
    }
    let tasks_unplaced = placements.iter().filter(|p| p.is_none()).count() as u64;
    ReplayOutcome {
        cells,
        placements,
        samples,
        capacity,
        gpu_milli_arrived: arrived,
        gpu_milli_allocated: allocated_at_last_arrival.unwrap_or(0),
        tasks_unplaced,
    }
}

fn measure(frag: &mut FragCache, cell: &Cell, m: MachineId, mix: &TaskMix) -> u64 {
    let st = cell.machine(m);
    if !st.up {
        return 0;
    }
    let free = MachineFree {
        cpu: st.free.cpu.0,
        memory: st.free.memory.0,
        gpus: &st.gpus,
        labels: &cell.class(st.class).labels,
    };
    frag.get(st.class, &free, mix)
}

fn refresh(
    frag: &mut FragCache,
    cell: &Cell,
    m: MachineId,
    mix: &TaskMix,
    machine_frag: &mut [u64],
    total: &mut u64,
) {
    let f = measure(frag, cell, m, mix);
    let slot = &mut machine_frag[m.0 as usize];
    *total = *total - *slot + f;
    *slot = f;
}

#[allow(clippy::too_many_arguments)]
fn try_place(
    cells: &mut [Cell],
    placers: &mut [Box<dyn TaskPlacer + '_>],
    task: &ReplayTask,
    now: u64,
    mix: &TaskMix,
    frag: &mut FragCache,
    machine_frag: &mut [Vec<u64>],
    total: &mut u64,
) -> Option<ReplayPlacement> {
    for (c, (cell, placer)) in cells.iter_mut().zip(placers.iter_mut()).enumerate() {
        if let Some((m, gpus)) = placer.place(cell, &task.request, &task.constraints) {
            refresh(frag, cell, m, mix, &mut machine_frag[c], total);
            return Some(ReplayPlacement {
                cluster: ClusterId(c as u32),
                machine: m,
                gpus,
                at_ms: now,
            });
        }
    }
    None
}

/// Checks every placement of a replay that ran to the end without
/// departures: re-places each task, in order, on a fresh copy of its
/// cluster with exactly the devices it was given, and refuses a device
/// over 1000 milli, a share split over devices, a whole GPU on a device not
/// wholly free, or a GPU model (any label constraint) not met. The first
/// violation, when there is one.
pub fn check_placements(
    topology: &Topology,
    tasks: &[ReplayTask],
    outcome: &ReplayOutcome,
) -> Result<(), String> {
    use crate::gpu::{check_slots, GpuDemand};
    let mut cells: Vec<Cell> = topology.clusters.iter().map(Cell::new).collect();
    let mut order: Vec<(u64, usize)> = outcome
        .placements
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().map(|p| (p.at_ms, i)))
        .collect();
    order.sort();
    for (_, i) in order {
        let t = &tasks[i];
        let Some(p) = &outcome.placements[i] else {
            continue;
        };
        let cell = &mut cells[p.cluster.0 as usize];
        let st = cell.machine(p.machine);
        let labels = &cell.class(st.class).labels;
        if !crate::labels::satisfies(&t.constraints, labels) {
            return Err(format!(
                "{}/{}: machine {} does not meet {:?}",
                t.job, t.task, p.machine, t.constraints
            ));
        }
        if !t.request.fits_in(&st.free) {
            return Err(format!(
                "{}/{}: machine {} over capacity",
                t.job, t.task, p.machine
            ));
        }
        check_slots(&st.gpus, GpuDemand::of(t.request.gpu.0), &p.gpus)
            .map_err(|e| format!("{}/{} on {}: {e}", t.job, t.task, p.machine))?;
        cell.place_on(p.machine, &t.request, &p.gpus);
        if cell.machine(p.machine).gpus.iter().any(|&g| g > 1000) {
            return Err(format!("{}/{}: a device over 1000 milli", t.job, t.task));
        }
    }
    Ok(())
}
