//! The simulator: both levels of the scheduler over a topology and a
//! workload, with no network, like Borg's Fauxmaster.
//!
//! The whole workload arrives at once, in file order, and goes through the
//! decisions the daemons make, in the order the daemons make them:
//! 1. A pass of the global level ([`PendingQueue::plan_with`], the same
//!    code the global scheduler runs): jobs by priority, then file order,
//!    each split over the ranked clusters as far as their machines hold
//!    (a [`MachineRoom`] of the cells, as the global scheduler keeps one of
//!    the local agents' reports), at most `local.batch_size` tasks a pass;
//!    a job that fits on no machine anywhere is refused there and then
//!    rather than handed to cluster after cluster.
//! 2. Each cluster packs what the pass handed it, in the order it was
//!    handed ([`pack`], as the local agent packs each batch it receives).
//! 3. Tasks a cluster could not place go back to the queue (handed back),
//!    and the next pass offers them to the other clusters, together with
//!    whatever the last pass had no budget left for.
//!
//! 4. Tasks a cluster could not place even so, when their band may evict
//!    lower-priority work there ([`crate::band`]), go where evicting the
//!    fewest, lowest-priority tasks makes room ([`preempt`], the local
//!    agent's rule); the victims go back to the queue, with their priority.
//!
//! Nothing finishes in a simulation, so the daemons' retry of handed-back
//! tasks after [`HAND_BACK_RETRY_MS`](crate::assign::HAND_BACK_RETRY_MS)
//! could place nothing more: the simulation ends when a round assigns
//! nothing, and what is still pending is unplaced, with the reason the last
//! pass gave.
//!
//! With arrival times ([`simulate_arrivals`]), jobs arrive in waves, in time
//! order: each wave goes through the rounds above before the next arrives,
//! so work that arrives later finds the machines full of earlier work, and
//! preemption decides what gives way.

use serde::Serialize;

use crate::assign::{Assignment, PendingQueue};
use crate::cell::Cell;
use crate::cluster::{ClusterId, ClusterSummary};
use crate::job::{Job, JobId};
use crate::pack::{pack, GroupOutcome, TaskGroup};
use crate::placement::{TaskLocation, Unschedulable};
use crate::policy::Policy;
use crate::preempt::{preempt_batch, Occupancy, Running};
use crate::rank::{Ranker, Ranking};
use crate::resources::{ResourceKind, Resources};
use crate::room::MachineRoom;
use crate::topology::Topology;

/// One round of the decision for the explained job.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainRound {
    /// Tasks of the job decided in this round.
    pub tasks: u32,
    pub ranking: Ranking,
    pub chosen: Option<ClusterId>,
    pub placed: u32,
    /// `(machine name, tasks)`, for the tasks placed in this round.
    pub machines: Vec<(String, u32)>,
    /// Why the chosen cluster handed tasks back, if it did.
    pub handed_back: Option<Unschedulable>,
    /// No cluster had room: the chosen one got the tasks because evicting
    /// lower-priority work there makes room.
    pub preempting: bool,
    /// The tasks evicted to place this round's tasks.
    pub victims: Vec<Victim>,
}

/// A task evicted to make room, for `--explain`.
#[derive(Debug, Clone, Serialize)]
pub struct Victim {
    pub job: JobId,
    pub task: u32,
    pub priority: u32,
    pub machine: String,
}

/// Everything the simulator decided about one job, for `--explain`.
#[derive(Debug, Clone, Serialize)]
pub struct JobExplanation {
    pub job: JobId,
    pub rounds: Vec<ExplainRound>,
}

/// Tasks of a job that found no place, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Unplaced {
    pub job: JobId,
    pub tasks: u32,
    pub reason: String,
}

/// The simulator's decisions.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub cells: Vec<Cell>,
    pub summaries: Vec<ClusterSummary>,
    /// Per job, where each placed task went, in task order.
    pub placements: Vec<Vec<TaskLocation>>,
    /// Per job, the GPU devices of each placed task that has any, by task
    /// index (issue 16).
    pub gpus: Vec<std::collections::BTreeMap<u32, Vec<crate::gpu::GpuSlot>>>,
    pub unplaced: Vec<Unplaced>,
    pub explanation: Option<JobExplanation>,
    /// Tasks evicted by higher-priority ones (each eviction counted).
    pub preemptions: u64,
}

/// Runs the workload through both levels. `progress` is called after each
/// pass with the number of tasks decided so far.
pub fn simulate(
    topology: &Topology,
    jobs: &[Job],
    policy: &Policy,
    explain: Option<JobId>,
    progress: &mut dyn FnMut(u64),
) -> Outcome {
    simulate_with(topology, jobs, policy, explain, progress, &mut pack)
}

/// The local packer's signature, so a baseline can stand in for [`pack`].
pub type Packer<'p> =
    dyn FnMut(&mut Cell, &[TaskGroup<'_>], &crate::policy::LocalPolicy) -> Vec<GroupOutcome> + 'p;

/// [`simulate`] with another local packer (for comparisons).
pub fn simulate_with(
    topology: &Topology,
    jobs: &[Job],
    policy: &Policy,
    explain: Option<JobId>,
    progress: &mut dyn FnMut(u64),
    packer: &mut Packer<'_>,
) -> Outcome {
    run(topology, jobs, &[], policy, explain, progress, packer)
}

/// [`simulate`] with each job arriving at `arrivals[i]` ms (0 for jobs
/// past the end of `arrivals`).
pub fn simulate_arrivals(
    topology: &Topology,
    jobs: &[Job],
    arrivals: &[u64],
    policy: &Policy,
    explain: Option<JobId>,
    progress: &mut dyn FnMut(u64),
) -> Outcome {
    run(
        topology, jobs, arrivals, policy, explain, progress, &mut pack,
    )
}

/// A task's handle in the occupancy: its job and index.
fn handle(job: JobId, task: u32) -> usize {
    ((job.0 as usize) << 32) | task as usize
}

fn unhandle(h: usize) -> (JobId, u32) {
    (JobId((h >> 32) as u32), (h & 0xffff_ffff) as u32)
}

/// Whether any job of the workload may evict another's tasks; when none
/// may, the simulator keeps no occupancy (nothing costs more than before).
fn preemption_possible(jobs: &[Job], policy: &Policy) -> bool {
    let priorities: std::collections::BTreeSet<u32> =
        jobs.iter().map(|j| j.spec.priority).collect();
    priorities.iter().any(|&p| {
        priorities
            .iter()
            .any(|&v| policy.priority.may_preempt(p, v))
    })
}

fn run(
    topology: &Topology,
    jobs: &[Job],
    arrivals: &[u64],
    policy: &Policy,
    explain: Option<JobId>,
    progress: &mut dyn FnMut(u64),
    packer: &mut Packer<'_>,
) -> Outcome {
    let ranker = Ranker::new(policy, &topology.locality);
    let mut cells: Vec<Cell> = topology.clusters.iter().map(Cell::new).collect();
    let mut summaries: Vec<ClusterSummary> = topology
        .clusters
        .iter()
        .map(ClusterSummary::from_cluster)
        .collect();
    let mut gpus = vec![std::collections::BTreeMap::new(); jobs.len()];
    let mut placements: Vec<Vec<TaskLocation>> = jobs
        .iter()
        .map(|j| Vec::with_capacity(j.spec.tasks as usize))
        .collect();
    let mut explanation = explain.map(|job| JobExplanation {
        job,
        rounds: Vec::new(),
    });
    // Why each cluster last handed a job's tasks back, for the report.
    let mut last_why: Vec<Option<(ClusterId, Unschedulable)>> = vec![None; jobs.len()];
    let mut queue = PendingQueue::new();
    let preemption = preemption_possible(jobs, policy);
    let mut occupancy: Vec<Occupancy> = if preemption {
        vec![Occupancy::new(); cells.len()]
    } else {
        Vec::new()
    };
    let mut preemptions = 0u64;
    // The global level asks each cluster's machines how many tasks they
    // hold, as the global scheduler asks the local agents' reports.
    let mut room = MachineRoom::new(&cells);
    let budget = u64::from(policy.local.batch_size.max(1));
    let lookup = |id: JobId| jobs.get(id.0 as usize);
    let mut decided = 0u64;
    // Jobs by arrival, then file order; each wave runs to the end before
    // the next arrives. Time stands still within a wave: nothing finishes,
    // so no hand-back retry is due.
    let arrival = |j: &Job| arrivals.get(j.id.0 as usize).copied().unwrap_or(0);
    let mut order: Vec<&Job> = jobs.iter().collect();
    order.sort_by_key(|j| (arrival(j), j.id));
    let mut next = 0;

    // What each cluster was handed in the pass (kept between passes, so
    // that a pass allocates nothing here).
    let mut handed: Vec<Vec<Assignment>> = vec![Vec::new(); cells.len()];
    while next < order.len() {
        let now_ms = arrival(order[next]);
        while next < order.len() && arrival(order[next]) == now_ms {
            let j = order[next];
            queue.add_job(j.id, j.spec.priority, j.spec.tasks);
            next += 1;
        }
        while queue.has_work() {
            // 1. One pass of the global level.
            room.settle();
            let pass = queue.plan_with(
                &ranker,
                &lookup,
                &mut summaries,
                now_ms,
                budget,
                explain,
                &mut room,
            );
            if let Some(x) = explanation.as_mut() {
                x.rounds
                    .extend(pass.trace.into_iter().map(|d| ExplainRound {
                        tasks: d.tasks,
                        ranking: d.ranking,
                        chosen: d.chosen,
                        placed: 0,
                        machines: Vec::new(),
                        handed_back: None,
                        preempting: d.preempting,
                        victims: Vec::new(),
                    }));
            }
            if pass.assignments.is_empty() {
                continue;
            }
            for a in pass.assignments {
                // Handed over: the room they take is counted until the
                // cluster's machines are read again, as the global
                // scheduler counts it until the next heartbeat.
                let spec = &jobs[a.job.0 as usize].spec;
                room.take(
                    a.cluster,
                    &spec.request,
                    &spec.constraints,
                    a.indices.len() as u64,
                );
                handed[a.cluster.0 as usize].push(a);
            }
            // 2. Each cluster packs what it was handed, in order.
            for (c, assignments) in handed.iter_mut().enumerate() {
                if assignments.is_empty() {
                    continue;
                }
                let cluster = ClusterId(c as u32);
                let groups: Vec<TaskGroup<'_>> = assignments
                    .iter()
                    .map(|a| {
                        let spec = &jobs[a.job.0 as usize].spec;
                        TaskGroup {
                            job: a.job,
                            request: spec.request,
                            constraints: &spec.constraints,
                            priority: spec.priority,
                            count: a.indices.len() as u32,
                        }
                    })
                    .collect();
                let mut outcomes = packer(&mut cells[c], &groups, &policy.local);
                // 4. What did not fit may evict lower-priority work (any
                // placed before, in this batch too).
                let mut evicted: Vec<(JobId, Vec<Running>)> = Vec::new();
                if preemption {
                    for ((a, o), g) in assignments.iter().zip(&outcomes).zip(&groups) {
                        for (&task, &m) in a.indices.iter().zip(&o.placed) {
                            occupancy[c].add(m, running(a.job, task, g, now_ms));
                        }
                    }
                    let waiting: Vec<(TaskGroup<'_>, u32)> = groups
                        .iter()
                        .zip(&outcomes)
                        .map(|(g, o)| (*g, g.count - o.placed.len() as u32))
                        .collect();
                    let placed_before: Vec<usize> =
                        outcomes.iter().map(|o| o.placed.len()).collect();
                    let made = preempt_batch(
                        &mut cells[c],
                        &mut occupancy[c],
                        &waiting,
                        &policy.priority,
                        now_ms as i64,
                        |g, k| {
                            let a = &assignments[g];
                            handle(a.job, a.indices[placed_before[g] + k as usize])
                        },
                    );
                    let mut victims: Vec<Vec<Running>> = vec![Vec::new(); groups.len()];
                    for (g, p) in made {
                        outcomes[g].placed.push(p.machine);
                        victims[g].extend(p.victims);
                    }
                    for (g, (a, o)) in assignments.iter().zip(outcomes.iter_mut()).enumerate() {
                        o.unplaced = (a.indices.len() - o.placed.len()) as u32;
                        if o.unplaced == 0 {
                            o.why = None;
                        }
                        let v = std::mem::take(&mut victims[g]);
                        if !v.is_empty() {
                            evicted.push((a.job, v));
                        }
                    }
                }
                // The packer found room the global level did not count
                // on (it fits tasks otherwise than the room's count
                // assumes): every waiting job is looked at again, as the
                // global scheduler does when a heartbeat reports it.
                if room.refresh(cluster, &cells[c]) {
                    queue.mark_rescan();
                }
                let summary = &mut summaries[c];
                for (a, o) in assignments.drain(..).zip(outcomes) {
                    let spec = &jobs[a.job.0 as usize].spec;
                    let count = a.indices.len() as u64;
                    let placed = o.placed.len();
                    summary.queued = summary.queued.saturating_sub(&spec.request.times(count));
                    summary.queue_len -= count;
                    summary.allocated = summary
                        .allocated
                        .saturating_add(&spec.request.times(placed as u64));
                    if preemption {
                        summary.count_priority(spec.priority, &spec.request, placed as u64, true);
                    }
                    decided += placed as u64;
                    if explain == Some(a.job) {
                        if let Some(round) = explanation.as_mut().and_then(|x| {
                            x.rounds
                                .iter_mut()
                                .rev()
                                .find(|r| r.chosen == Some(cluster) && r.placed == 0)
                        }) {
                            round.placed = placed as u32;
                            round.machines = machine_counts(&cells[c], &o.placed);
                            round.handed_back = o.why.clone();
                        }
                    }
                    for (&task, slots) in a.indices.iter().zip(&o.gpus) {
                        if !slots.is_empty() {
                            gpus[a.job.0 as usize].insert(task, slots.clone());
                        }
                    }
                    placements[a.job.0 as usize].extend(a.indices.iter().zip(&o.placed).map(
                        |(&task, &machine)| TaskLocation {
                            task,
                            cluster,
                            machine,
                        },
                    ));
                    // 3. The rest goes back to the global level.
                    if placed < a.indices.len() {
                        let mut tried = a.handed_back.clone();
                        tried.push(cluster);
                        for &i in &a.indices[placed..] {
                            queue.hand_back(a.job, spec.priority, i, &tried, now_ms);
                        }
                        last_why[a.job.0 as usize] = o.why.map(|w| (cluster, w));
                    }
                }
                // The victims leave their machines and wait again, with
                // their priority.
                for (by, victims) in evicted {
                    let mut report = Vec::new();
                    for v in victims {
                        let (job, task) = unhandle(v.id);
                        let vspec = &jobs[job.0 as usize].spec;
                        gpus[job.0 as usize].remove(&task);
                        let on = &mut placements[job.0 as usize];
                        let Some(at) = on.iter().rposition(|l| l.task == task) else {
                            // Every task in the occupancy was placed here.
                            unreachable!("victim {job}/{task} has no placement");
                        };
                        let l = on.swap_remove(at);
                        summary.allocated = summary.allocated.saturating_sub(&vspec.request);
                        summary.count_priority(vspec.priority, &vspec.request, 1, false);
                        decided -= 1;
                        preemptions += 1;
                        queue.add(job, vspec.priority, task, &[]);
                        if explain == Some(by) {
                            report.push(Victim {
                                job,
                                task,
                                priority: vspec.priority,
                                machine: cells[c].machine_name(l.machine),
                            });
                        }
                    }
                    if let Some(round) = explanation
                        .as_mut()
                        .filter(|_| explain == Some(by))
                        .and_then(|x| {
                            x.rounds
                                .iter_mut()
                                .rev()
                                .find(|r| r.chosen == Some(cluster))
                        })
                    {
                        round.victims = report;
                    }
                }
            }
            progress(decided);
        }
    }
    for p in &mut placements {
        p.sort_unstable_by_key(|l| l.task);
    }
    let mut unplaced = Vec::new();
    for j in jobs {
        let tasks = queue.job_tasks(j.id);
        if tasks == 0 {
            continue;
        }
        let mut reason = queue
            .reason(j.id)
            .unwrap_or("no cluster can take it")
            .to_string();
        if let Some((c, why)) = &last_why[j.id.0 as usize] {
            reason.push_str(&format!(" (last, {}: {why})", summaries[c.0 as usize].name));
        }
        unplaced.push(Unplaced {
            job: j.id,
            tasks,
            reason,
        });
    }
    progress(decided + unplaced.iter().map(|u| u64::from(u.tasks)).sum::<u64>());
    Outcome {
        cells,
        summaries,
        placements,
        gpus,
        unplaced,
        explanation,
        preemptions,
    }
}

/// A placed task as preemption sees it.
fn running(job: JobId, task: u32, group: &TaskGroup<'_>, now_ms: u64) -> Running {
    Running {
        id: handle(job, task),
        priority: group.priority,
        request: group.request,
        started_unix_ms: now_ms as i64,
        // The cell finds the devices of a victim without them.
        gpus: Vec::new(),
    }
}

/// `(machine name, tasks)` for the placed tasks, in machine order.
fn machine_counts(cell: &Cell, placed: &[crate::machine::MachineId]) -> Vec<(String, u32)> {
    let mut ids = placed.to_vec();
    ids.sort();
    let mut out: Vec<(String, u32)> = Vec::new();
    let mut last = None;
    for m in ids {
        if last == Some(m) {
            if let Some(e) = out.last_mut() {
                e.1 += 1;
            }
        } else {
            out.push((cell.machine_name(m), 1));
            last = Some(m);
        }
    }
    out
}

/// Per-cluster figures for reports.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub name: String,
    pub location: String,
    pub tasks_placed: u64,
    pub machines_total: u64,
    pub machines_used: u64,
    pub cpu_utilization: f64,
    pub memory_utilization: f64,
}

/// The simulator's summary, as `schedctl simulate --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tasks_total: u64,
    pub tasks_placed: u64,
    pub tasks_unplaced: u64,
    pub machines_total: u64,
    pub machines_used: u64,
    /// Largest over resources of ceil(total request / one machine's
    /// capacity), when all machines are alike; else `None`.
    pub lower_bound_machines: Option<u64>,
    /// Tasks with a preferred location, and how many landed there.
    pub tasks_with_locality: u64,
    pub tasks_at_preferred_location: u64,
    /// Evictions of lower-priority tasks by higher-priority ones.
    pub tasks_preempted: u64,
    pub clusters: Vec<ClusterReport>,
    pub unplaced: Vec<UnplacedReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnplacedReport {
    pub job: String,
    pub tasks: u32,
    pub reason: String,
}

impl Outcome {
    /// Summarizes the outcome.
    pub fn report(&self, topology: &Topology, jobs: &[Job]) -> Report {
        let tasks_total: u64 = jobs.iter().map(|j| u64::from(j.spec.tasks)).sum();
        let tasks_placed: u64 = self.placements.iter().map(|p| p.len() as u64).sum();
        let mut tasks_with_locality = 0;
        let mut tasks_at_preferred_location = 0;
        for (job, places) in jobs.iter().zip(&self.placements) {
            if let Some(want) = job.locality {
                tasks_with_locality += u64::from(job.spec.tasks);
                tasks_at_preferred_location += places
                    .iter()
                    .filter(|p| topology.clusters[p.cluster.0 as usize].location == want)
                    .count() as u64;
            }
        }
        let clusters: Vec<ClusterReport> = topology
            .clusters
            .iter()
            .zip(&self.cells)
            .map(|(c, cell)| {
                let (cap, alloc) = (cell.capacity(), cell.allocated());
                let util = |k: ResourceKind| {
                    if cap.get(k) == 0 {
                        0.0
                    } else {
                        alloc.get(k) as f64 / cap.get(k) as f64
                    }
                };
                ClusterReport {
                    name: c.name.clone(),
                    location: topology.locality.name(c.location).to_string(),
                    tasks_placed: 0,
                    machines_total: cell.machine_count() as u64,
                    machines_used: cell.machines_used() as u64,
                    cpu_utilization: util(ResourceKind::Cpu),
                    memory_utilization: util(ResourceKind::Memory),
                }
            })
            .collect();
        let mut clusters = clusters;
        for places in &self.placements {
            for p in places {
                clusters[p.cluster.0 as usize].tasks_placed += 1;
            }
        }
        Report {
            tasks_total,
            tasks_placed,
            tasks_unplaced: tasks_total - tasks_placed,
            machines_total: clusters.iter().map(|c| c.machines_total).sum(),
            machines_used: clusters.iter().map(|c| c.machines_used).sum(),
            lower_bound_machines: lower_bound_machines(topology, jobs),
            tasks_with_locality,
            tasks_at_preferred_location,
            tasks_preempted: self.preemptions,
            clusters,
            unplaced: self
                .unplaced
                .iter()
                .map(|u| UnplacedReport {
                    job: jobs[u.job.0 as usize].spec.name.clone(),
                    tasks: u.tasks,
                    reason: u.reason.clone(),
                })
                .collect(),
        }
    }
}

/// The largest over resources of ceil(total request / one machine's
/// capacity), when every machine in the topology has the same capacity.
pub fn lower_bound_machines(topology: &Topology, jobs: &[Job]) -> Option<u64> {
    let mut classes = topology.clusters.iter().flat_map(|c| c.classes.iter());
    let cap = classes.next()?.capacity;
    if !classes.all(|k| k.capacity == cap) {
        return None;
    }
    let total = jobs.iter().fold(Resources::ZERO, |acc, j| {
        acc.saturating_add(&j.spec.request.times(u64::from(j.spec.tasks)))
    });
    ResourceKind::ALL
        .into_iter()
        .filter(|&k| cap.get(k) > 0)
        .map(|k| total.get(k).div_ceil(cap.get(k)))
        .max()
}
