//! Which tasks to evict so that a higher-priority task fits: the rule of
//! Kubernetes' default preemption (the PostFilter plugin
//! `DefaultPreemption`, "Pod Priority and Preemption" in its docs):
//!
//! 1. **On one machine** ([`victims_on`]): take away every task the
//!    preemptor may evict; if the task still does not fit, the machine
//!    cannot help. Otherwise give tasks back ("reprieve" them), highest
//!    priority first (then the longest-running first, whose loss costs
//!    most), as long as the preemptor still fits; the ones not given back
//!    are the victims. The result is minimal: no victim can be spared
//!    alone.
//! 2. **Across machines** ([`choose`]): the machine with the fewest
//!    victims; then the lowest highest-victim priority; then the least
//!    started time lost (the sum of the victims' running times); then the
//!    most room left once the task is placed (for the next task waiting:
//!    our addition, it decides only between otherwise equal machines);
//!    then the first machine.
//!
//! [`preempt`] applies the rule to a [`Cell`]: the local agent and the
//! simulator call it for the tasks that [`crate::pack::pack`] could not
//! place, with an [`Occupancy`] saying which task holds what where.

use crate::band::PriorityPolicy;
use crate::cell::Cell;
use crate::gpu::GpuSlot;
use crate::machine::MachineId;
use crate::pack::TaskGroup;
use crate::resources::Resources;

/// A task running on a machine, as preemption sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// The caller's handle for the task.
    pub id: usize,
    pub priority: u32,
    pub request: Resources,
    /// When it started, ms since the epoch (for the time a kill loses).
    pub started_unix_ms: i64,
    /// The GPU devices it holds (empty without GPUs): an eviction gives
    /// back exactly these, a reprieve takes exactly these again.
    pub gpus: Vec<GpuSlot>,
}

/// A machine where eviction could make room.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The caller's handle for the machine.
    pub machine: usize,
    /// Its unallocated resources now.
    pub free: Resources,
    /// Its capacity (to weigh what is left after the eviction).
    pub capacity: Resources,
    pub running: &'a [Running],
}

/// What evicting on one machine costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    pub machine: usize,
    /// The victims' ids, highest priority first.
    pub victims: Vec<usize>,
    pub highest_priority: u32,
    /// The sum of the victims' running times at `now`, ms.
    pub time_lost_ms: i64,
    /// What is left free once the victims are gone and the task placed
    /// (the cell's fragmentation key: more is better, other tasks waiting
    /// may use it).
    pub room_left: u64,
}

/// The fewest tasks of `running` to evict so that `need` fits beside
/// `free`, evicting only tasks for which `evictable(priority)` holds;
/// `None` if even evicting all of them is not enough. `Some(empty)` when it
/// fits already.
pub fn victims_on(
    free: Resources,
    running: &[Running],
    need: Resources,
    evictable: impl Fn(u32) -> bool,
) -> Option<Vec<Running>> {
    let mut pool: Vec<Running> = running
        .iter()
        .filter(|r| evictable(r.priority))
        .cloned()
        .collect();
    let mut room = pool
        .iter()
        .fold(free, |acc, r| acc.saturating_add(&r.request));
    if !need.fits_in(&room) {
        return None;
    }
    // Reprieve the most valuable first: highest priority, then the one
    // running longest (an earlier start loses more work), then the
    // smallest (keeping small tasks and evicting large ones takes fewer
    // victims), then by id.
    pool.sort_by_key(|r| {
        (
            std::cmp::Reverse(r.priority),
            r.started_unix_ms,
            r.request.as_array().iter().sum::<u64>(),
            r.id,
        )
    });
    let mut victims = Vec::new();
    for r in pool {
        let without = room.saturating_sub(&r.request);
        if need.fits_in(&without) {
            room = without;
        } else {
            victims.push(r);
        }
    }
    Some(victims)
}

/// The cheapest eviction among `candidates` for a task of `need`, by the
/// rule in the module's documentation; `None` if no machine can make room.
pub fn choose(
    candidates: &[Candidate<'_>],
    need: Resources,
    evictable: impl Fn(u32) -> bool,
    now_unix_ms: i64,
) -> Option<Eviction> {
    let mut best: Option<Eviction> = None;
    for c in candidates {
        let Some(victims) = victims_on(c.free, c.running, need, &evictable) else {
            continue;
        };
        let freed = victims
            .iter()
            .fold(c.free, |acc, v| acc.saturating_add(&v.request))
            .saturating_sub(&need);
        let e = Eviction {
            room_left: crate::cell::fragmentation_key(&freed, &c.capacity),
            machine: c.machine,
            highest_priority: victims.iter().map(|v| v.priority).max().unwrap_or(0),
            time_lost_ms: victims
                .iter()
                .map(|v| (now_unix_ms - v.started_unix_ms).max(0))
                .sum(),
            victims: victims.iter().map(|v| v.id).collect(),
        };
        let key = |e: &Eviction| {
            (
                e.victims.len(),
                e.highest_priority,
                e.time_lost_ms,
                std::cmp::Reverse(e.room_left),
            )
        };
        if best.as_ref().is_none_or(|b| key(&e) < key(b)) {
            best = Some(e);
        }
    }
    best
}

/// The tasks on each machine of a cell, as preemption sees them.
#[derive(Debug, Clone, Default)]
pub struct Occupancy {
    machines: Vec<Vec<Running>>,
}

impl Occupancy {
    pub fn new() -> Self {
        Occupancy::default()
    }

    /// Counts `task` on machine `m`.
    pub fn add(&mut self, m: MachineId, task: Running) {
        let i = m.0 as usize;
        if self.machines.len() <= i {
            self.machines.resize_with(i + 1, Vec::new);
        }
        self.machines[i].push(task);
    }

    /// Takes the task `id` off machine `m`; `None` if it is not there.
    pub fn remove(&mut self, m: MachineId, id: usize) -> Option<Running> {
        let on = self.machines.get_mut(m.0 as usize)?;
        let at = on.iter().position(|r| r.id == id)?;
        Some(on.swap_remove(at))
    }

    /// The tasks on machine `m`.
    pub fn on(&self, m: MachineId) -> &[Running] {
        self.machines.get(m.0 as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether any task here may be evicted by one of `priority`.
    pub fn any_evictable(&self, priority: u32, bands: &PriorityPolicy) -> bool {
        self.machines
            .iter()
            .flatten()
            .any(|r| bands.may_preempt(priority, r.priority))
    }
}

/// One task placed by evicting others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    pub machine: MachineId,
    /// The evicted tasks, highest priority first.
    pub victims: Vec<Running>,
    /// The handle the caller gave the preemptor.
    pub preemptor: usize,
    /// The GPU devices the preemptor took (empty without GPUs).
    pub gpus: Vec<GpuSlot>,
}

/// Places up to `count` tasks of `group` on `cell` by evicting tasks the
/// bands let them evict: [`preempt_batch`] for one group.
pub fn preempt(
    cell: &mut Cell,
    occupancy: &mut Occupancy,
    group: &TaskGroup<'_>,
    count: u32,
    bands: &PriorityPolicy,
    now_unix_ms: i64,
    mut ids: impl FnMut(u32) -> usize,
) -> Vec<Preemption> {
    preempt_batch(
        cell,
        occupancy,
        &[(*group, count)],
        bands,
        now_unix_ms,
        |_, k| ids(k),
    )
    .into_iter()
    .map(|(_, p)| p)
    .collect()
}

/// At most this many waiting tasks are tried together on one machine.
const FILL_LIMIT: usize = 32;

/// Places what it can of `waiting` (`(group, tasks)` pairs) on `cell` by
/// evicting tasks the bands let them evict; returns each task placed, with
/// its group's index in `waiting`, machine and victims.
///
/// For one task this is [`choose`]'s rule. For several waiting at once it
/// is the same rule per task placed: priority by priority (highest first),
/// each step takes the machine where evicting makes room for some of the
/// waiting tasks (largest first, as many as fit) at the fewest victims per
/// task placed; ties go to more tasks placed, then as [`choose`] breaks
/// them. Task by task, a machine emptied for one small task would strand
/// the room its victims leave; taken together, one large victim can make
/// room for several. The victims' capacity is released in `cell` and they
/// leave `occupancy`; each preemptor is placed in `cell` and counted in
/// `occupancy` with the handle `ids(group, k)` (the group's `k`-th task
/// placed) and `now_unix_ms` as its start. Never over-commits a machine.
pub fn preempt_batch(
    cell: &mut Cell,
    occupancy: &mut Occupancy,
    waiting: &[(TaskGroup<'_>, u32)],
    bands: &PriorityPolicy,
    now_unix_ms: i64,
    mut ids: impl FnMut(usize, u32) -> usize,
) -> Vec<(usize, Preemption)> {
    let mut out: Vec<(usize, Preemption)> = Vec::new();
    let mut left: Vec<u32> = waiting.iter().map(|(_, n)| *n).collect();
    let mut taken: Vec<u32> = vec![0; waiting.len()];
    let classes: Vec<Vec<u32>> = waiting
        .iter()
        .map(|(g, _)| {
            let tiers = cell.class_tiers(&g.request, g.constraints);
            tiers.into_iter().flatten().collect()
        })
        .collect();
    let largest = (0..cell.class_count() as u32)
        .fold(Resources::ZERO, |acc, k| acc.max(&cell.class(k).capacity));
    let mut levels: Vec<u32> = waiting.iter().map(|(g, _)| g.priority).collect();
    levels.sort_unstable_by(|a, b| b.cmp(a));
    levels.dedup();
    for priority in levels {
        if !occupancy.any_evictable(priority, bands) {
            continue;
        }
        let evictable = |p: u32| bands.may_preempt(priority, p);
        // This level's groups, largest request first.
        let mut order: Vec<usize> = (0..waiting.len())
            .filter(|&g| waiting[g].0.priority == priority)
            .collect();
        order.sort_by_key(|&g| {
            (
                std::cmp::Reverse(crate::cell::fragmentation_key(
                    &waiting[g].0.request,
                    &largest,
                )),
                g,
            )
        });
        while let Some(step) = best_step(
            cell,
            occupancy,
            waiting,
            &order,
            &left,
            &classes,
            &evictable,
            now_unix_ms,
        ) {
            let m = step.machine;
            let mut victims = Vec::with_capacity(step.victims.len());
            for id in step.victims {
                let Some(v) = occupancy.remove(m, id) else {
                    // best_step picked it from this machine's list.
                    unreachable!("victim {id} is not on machine {m}");
                };
                if v.gpus.is_empty() {
                    // Devices unknown to the caller: the cell finds them.
                    cell.release(m, &v.request, 1);
                } else {
                    cell.release_on(m, &v.request, &v.gpus);
                }
                victims.push(v);
            }
            // The victims go with the first task placed; the others fit in
            // the room they leave.
            for (i, g) in step.tasks.into_iter().enumerate() {
                let request = waiting[g].0.request;
                let preemptor = ids(g, taken[g]);
                taken[g] += 1;
                left[g] -= 1;
                let gpus = cell.place(m, &request);
                occupancy.add(
                    m,
                    Running {
                        id: preemptor,
                        priority,
                        request,
                        started_unix_ms: now_unix_ms,
                        gpus: gpus.clone(),
                    },
                );
                let victims = if i == 0 {
                    std::mem::take(&mut victims)
                } else {
                    Vec::new()
                };
                out.push((
                    g,
                    Preemption {
                        machine: m,
                        victims,
                        preemptor,
                        gpus,
                    },
                ));
            }
        }
    }
    let mut plain: Vec<Preemption> = out.iter().map(|(_, p)| p.clone()).collect();
    reprieve(cell, occupancy, &mut plain);
    for ((_, p), spared) in out.iter_mut().zip(plain) {
        *p = spared;
    }
    out
}

/// One step of [`preempt_batch`]: a machine, its victims, and the waiting
/// tasks (by group) that go there.
struct Step {
    machine: MachineId,
    victims: Vec<usize>,
    tasks: Vec<usize>,
}

#[allow(clippy::too_many_arguments)]
fn best_step(
    cell: &Cell,
    occupancy: &Occupancy,
    waiting: &[(TaskGroup<'_>, u32)],
    order: &[usize],
    left: &[u32],
    classes: &[Vec<u32>],
    evictable: &impl Fn(u32) -> bool,
    now_unix_ms: i64,
) -> Option<Step> {
    // (victims, tasks) compared as victims per task, then more tasks, then
    // choose()'s order.
    type Key = (usize, usize, u32, i64, std::cmp::Reverse<u64>, MachineId);
    let better = |a: &Key, b: &Key| {
        let (va, ta) = (a.0 as u64, a.1 as u64);
        let (vb, tb) = (b.0 as u64, b.1 as u64);
        (va * tb)
            .cmp(&(vb * ta))
            .then(tb.cmp(&ta))
            .then((a.2, a.3, a.4, a.5).cmp(&(b.2, b.3, b.4, b.5)))
            .is_lt()
    };
    let mut best: Option<(Key, Step)> = None;
    for (m, st) in cell.machines() {
        if !st.up {
            continue;
        }
        let running = occupancy.on(m);
        let pool = running
            .iter()
            .filter(|r| evictable(r.priority))
            .fold(st.free, |acc, r| acc.saturating_add(&r.request));
        // The waiting tasks, largest first, as many as fit in everything
        // eviction could free here.
        let mut fill: Vec<usize> = Vec::new();
        let mut room = pool;
        for &g in order {
            if left[g] == 0 || !classes[g].contains(&st.class) {
                continue;
            }
            let request = &waiting[g].0.request;
            let mut n = 0;
            while n < left[g] && fill.len() < FILL_LIMIT && request.fits_in(&room) {
                room = room.saturating_sub(request);
                fill.push(g);
                n += 1;
            }
        }
        if fill.is_empty() {
            continue;
        }
        // Each prefix of the fill, at its own cost.
        let mut need = Resources::ZERO;
        for i in 0..fill.len() {
            need = need.saturating_add(&waiting[fill[i]].0.request);
            let Some(victims) = victims_on(st.free, running, need, evictable) else {
                break;
            };
            let left_free = victims
                .iter()
                .fold(st.free, |acc, v| acc.saturating_add(&v.request))
                .saturating_sub(&need);
            let key: Key = (
                victims.len(),
                i + 1,
                victims.iter().map(|v| v.priority).max().unwrap_or(0),
                victims
                    .iter()
                    .map(|v| (now_unix_ms - v.started_unix_ms).max(0))
                    .sum(),
                std::cmp::Reverse(crate::cell::fragmentation_key(
                    &left_free,
                    cell.capacity_of(m),
                )),
                m,
            );
            if best.as_ref().is_none_or(|(b, _)| better(&key, b)) {
                best = Some((
                    key,
                    Step {
                        machine: m,
                        victims: victims.iter().map(|v| v.id).collect(),
                        tasks: fill[..=i].to_vec(),
                    },
                ));
            }
        }
    }
    best.map(|(_, step)| step)
}

/// Task by task, the choice of victims is myopic: room made for one task
/// may, with the next tasks placed, leave space where an earlier victim
/// fits again. Such victims are given back their place (they have not been
/// stopped yet), the most valuable first (as [`victims_on`] orders them),
/// then the smallest (more of them fit).
fn reprieve(cell: &mut Cell, occupancy: &mut Occupancy, out: &mut [Preemption]) {
    let mut all: Vec<(usize, usize)> = out
        .iter()
        .enumerate()
        .flat_map(|(p, e)| (0..e.victims.len()).map(move |v| (p, v)))
        .collect();
    all.sort_by_key(|&(p, v)| {
        let r = &out[p].victims[v];
        (
            std::cmp::Reverse(r.priority),
            r.started_unix_ms,
            r.request.as_array().iter().sum::<u64>(),
            r.id,
        )
    });
    let mut spared = vec![Vec::new(); out.len()];
    for (p, v) in all {
        let (m, r) = (out[p].machine, out[p].victims[v].clone());
        // A reprieved task has not stopped: it keeps its own devices.
        let own_devices = crate::gpu::check_slots(
            &cell.machine(m).gpus,
            crate::gpu::GpuDemand::of(r.request.gpu.0),
            &r.gpus,
        )
        .is_ok();
        if cell.fits(m, &r.request) && (r.gpus.is_empty() || own_devices) {
            if r.gpus.is_empty() {
                let _ = cell.place(m, &r.request);
            } else {
                cell.place_on(m, &r.request, &r.gpus);
            }
            occupancy.add(m, r);
            spared[p].push(v);
        }
    }
    for (e, mut gone) in out.iter_mut().zip(spared) {
        gone.sort_unstable();
        for v in gone.into_iter().rev() {
            e.victims.remove(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(millis: u64) -> Resources {
        Resources::new(millis, 0)
    }

    fn task(id: usize, priority: u32, millis: u64, started: i64) -> Running {
        Running {
            id,
            priority,
            request: cpu(millis),
            started_unix_ms: started,
            gpus: Vec::new(),
        }
    }

    /// Batch (priority 2000) and best effort (500) are evictable by a
    /// production task of 7000.
    fn below_7000(p: u32) -> bool {
        p < 6000
    }

    #[test]
    fn on_one_machine_the_fewest_and_least_valuable_go() {
        // A 4000m machine, full: 1000m each of priorities 2000, 500, 500,
        // 2000 started at 0, 10, 20, 30. A 2000m task needs two evicted.
        // Reprieve order: (2000, started 0), (2000, 30), (500, 10),
        // (500, 20). Room with all four gone: 4000. Keep #0: 3000 >= 2000,
        // kept. Keep #3: 2000 >= 2000, kept. Keep #1: 1000 < 2000, victim.
        // Keep #2: 1000 < 2000, victim. Victims: the two best-effort tasks.
        let running = [
            task(0, 2000, 1000, 0),
            task(1, 500, 1000, 10),
            task(2, 500, 1000, 20),
            task(3, 2000, 1000, 30),
        ];
        let v = victims_on(cpu(0), &running, cpu(2000), below_7000).unwrap();
        let ids: Vec<usize> = v.iter().map(|r| r.id).collect();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn free_room_counts_and_a_fit_needs_no_victim() {
        // 1500m free, a 1000m task: fits, no victim.
        let running = [task(0, 500, 1000, 0)];
        assert_eq!(
            victims_on(cpu(1500), &running, cpu(1000), below_7000),
            Some(vec![])
        );
        // 500m free + one 1000m evictable = 1500m >= 1500m: one victim.
        assert_eq!(
            victims_on(cpu(500), &running, cpu(1500), below_7000)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn tasks_that_may_not_be_evicted_make_a_machine_useless() {
        // Only a production task (6500) runs: nothing evictable, 0 + 0 <
        // 1000m.
        let running = [task(0, 6500, 4000, 0)];
        assert_eq!(victims_on(cpu(0), &running, cpu(1000), below_7000), None);
    }

    #[test]
    fn among_machines_fewest_victims_then_lowest_priority_then_least_time_lost() {
        let now = 100_000;
        // m0: one 2000m batch task (2000) started at 0: 1 victim, highest
        // 2000, time lost 100,000.
        let m0 = [task(0, 2000, 2000, 0)];
        // m1: two 1000m best-effort tasks: 2 victims (more), loses.
        let m1 = [task(1, 500, 1000, 50_000), task(2, 500, 1000, 60_000)];
        // m2: one 2000m best-effort (500) task started at 90,000: 1
        // victim, highest 500 < 2000: beats m0.
        let m2 = [task(3, 500, 2000, 90_000)];
        let c = |machine, running| Candidate {
            machine,
            free: cpu(0),
            capacity: cpu(4000),
            running,
        };
        let e = choose(
            &[c(0, &m0[..]), c(1, &m1[..]), c(2, &m2[..])],
            cpu(2000),
            below_7000,
            now,
        )
        .unwrap();
        assert_eq!((e.machine, e.victims.clone()), (2, vec![3]));
        assert_eq!((e.highest_priority, e.time_lost_ms), (500, 10_000));

        // A tie on count and priority: m3's batch task started at 80,000
        // loses 20,000 ms, m0's 100,000: m3 wins.
        let m3 = [task(4, 2000, 2000, 80_000)];
        let e = choose(&[c(0, &m0[..]), c(3, &m3[..])], cpu(2000), below_7000, now).unwrap();
        assert_eq!((e.machine, e.time_lost_ms), (3, 20_000));

        // A full tie: the first machine.
        let m5 = [task(5, 2000, 2000, 0)];
        let e = choose(&[c(0, &m0[..]), c(5, &m5[..])], cpu(2000), below_7000, now).unwrap();
        assert_eq!(e.machine, 0);

        // No machine can make room.
        let big = [task(6, 500, 1000, 0)];
        assert!(choose(&[c(6, &big[..])], cpu(2000), below_7000, now).is_none());
    }

    /// A cell of `machines` machines of 4000m, each holding four 1000m
    /// batch tasks (priority 2000) started at 0; handles `m * 4 + i`.
    fn full_of_batch(machines: u32) -> (Cell, Occupancy) {
        use crate::cluster::{Cluster, ClusterId};
        use crate::locality::LocationId;
        use crate::machine::MachineClass;
        let cluster = Cluster {
            id: ClusterId(0),
            name: "c0".into(),
            location: LocationId(0),
            classes: vec![MachineClass {
                name: "std".into(),
                count: machines,
                capacity: cpu(4000),
                labels: Default::default(),
            }],
        };
        let mut cell = Cell::new(&cluster);
        let mut occupancy = Occupancy::new();
        for m in 0..machines {
            for i in 0..4 {
                cell.place(MachineId(m), &cpu(1000));
                occupancy.add(MachineId(m), task((m * 4 + i) as usize, 2000, 1000, 0));
            }
        }
        (cell, occupancy)
    }

    fn group(priority: u32, millis: u64, constraints: &crate::labels::Labels) -> TaskGroup<'_> {
        TaskGroup {
            job: crate::job::JobId(9),
            request: cpu(millis),
            constraints,
            priority,
            count: 0,
        }
    }

    #[test]
    fn a_cell_makes_room_task_by_task_and_never_over_commits() {
        let bands = PriorityPolicy::default();
        let (mut cell, mut occ) = full_of_batch(2);
        let none = Default::default();
        // Three production tasks (7000) of 2000m on two full 4000m machines.
        // Step 1: on either machine, evicting all four batch tasks makes
        // room for two preemptors (4 victims / 2 tasks), as does evicting
        // two for one (2 / 1): a tie on the ratio; more tasks placed wins:
        // m0, four victims, two tasks (the victims go with the first).
        // Step 2: the third task: two victims on m1 (m0 holds production,
        // which production may not evict).
        let prod = group(7000, 2000, &none);
        let done = preempt(&mut cell, &mut occ, &prod, 3, &bands, 100, |k| {
            100 + k as usize
        });
        let by_machine: Vec<(u32, usize)> = done
            .iter()
            .map(|p| (p.machine.0, p.victims.len()))
            .collect();
        assert_eq!(by_machine, [(0, 4), (0, 0), (1, 2)]);
        assert_eq!(cell.allocated(), cpu(8000));
        assert!(cell.check_invariants().is_ok());
        // Six victims in all, each a batch task, none twice.
        let mut victims: Vec<usize> = done
            .iter()
            .flat_map(|p| p.victims.iter().map(|v| v.id))
            .collect();
        victims.sort();
        victims.dedup();
        assert_eq!(victims.len(), 6);
        // A second production job finds nothing it may evict on m0 and
        // only 2 x 1000m of batch on m1: one task of 2000m fits, the next
        // does not: production does not preempt production.
        let more = preempt(&mut cell, &mut occ, &prod, 2, &bands, 200, |k| {
            200 + k as usize
        });
        assert_eq!(more.len(), 1);
        assert_eq!(more[0].machine, MachineId(1));
        assert!(occ.on(MachineId(0)).iter().all(|r| r.priority == 7000));
        assert!(occ.on(MachineId(1)).iter().all(|r| r.priority == 7000));
    }

    #[test]
    fn a_victim_gives_back_exactly_its_own_gpu_devices() {
        use crate::cluster::{Cluster, ClusterId};
        use crate::gpu::GpuSlot;
        use crate::locality::LocationId;
        use crate::machine::MachineClass;
        let cluster = Cluster {
            id: ClusterId(0),
            name: "c0".into(),
            location: LocationId(0),
            classes: vec![MachineClass {
                name: "gpu".into(),
                count: 1,
                capacity: Resources::from_array([4000, 0, 0, 2000]),
                labels: Default::default(),
            }],
        };
        let mut cell = Cell::new(&cluster);
        let mut occ = Occupancy::new();
        let share = Resources::from_array([1000, 0, 0, 500]);
        // Task 0 on device 1 (started last: the one to go), task 1 on
        // device 0; guessing would free device 0, the lowest in use.
        for (id, device, started) in [(0, 1, 50), (1, 0, 0)] {
            let gpus = vec![GpuSlot { device, milli: 500 }];
            cell.place_on(MachineId(0), &share, &gpus);
            occ.add(
                MachineId(0),
                Running {
                    gpus,
                    request: share,
                    ..task(id, 2000, 0, started)
                },
            );
        }
        let bands = PriorityPolicy::default();
        let none = Default::default();
        let prod = group(7000, 3000, &none);
        let done = preempt(&mut cell, &mut occ, &prod, 1, &bands, 100, |_| 9);
        assert_eq!(done.len(), 1);
        let victims: Vec<usize> = done[0].victims.iter().map(|v| v.id).collect();
        assert_eq!(victims, [0]);
        assert!(done[0].gpus.is_empty());
        assert_eq!(cell.machine(MachineId(0)).gpus, [500, 1000]);
        assert!(cell.check_invariants().is_ok());
    }

    #[test]
    fn batch_does_not_evict_batch_and_a_task_too_large_evicts_nothing() {
        let bands = PriorityPolicy::default();
        let (mut cell, mut occ) = full_of_batch(1);
        let none = Default::default();
        // Batch (3000) may evict only best effort: nothing here.
        let batch = group(3000, 1000, &none);
        assert!(preempt(&mut cell, &mut occ, &batch, 1, &bands, 0, |_| 0).is_empty());
        // Production asking more than a whole machine: nothing evicted.
        let huge = group(7000, 5000, &none);
        assert!(preempt(&mut cell, &mut occ, &huge, 1, &bands, 0, |_| 0).is_empty());
        assert_eq!(occ.on(MachineId(0)).len(), 4);
        assert_eq!(cell.allocated(), cpu(4000));
    }
}
