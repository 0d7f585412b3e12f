//! The simulator: both levels of the scheduler over a topology and a
//! workload, with no network, like Borg's Fauxmaster.
//!
//! The whole workload arrives at once, in file order, and goes through the
//! code the daemons use: [`Ranker`] picks a cluster for each job, each
//! cluster's [`Cell`] packs what it was handed with [`pack`], and tasks a
//! cluster cannot place go back to the global level for the next best
//! cluster. Jobs are taken in batches of at most `local.batch_size` tasks.
//! Within a batch, the global level sees the tasks it has already handed to
//! each cluster (its queue), as it does in the daemons.

use serde::Serialize;

use crate::cell::Cell;
use crate::cluster::{ClusterId, ClusterSummary};
use crate::job::{Job, JobId};
use crate::pack::{pack, GroupOutcome, TaskGroup};
use crate::placement::{TaskLocation, Unschedulable};
use crate::policy::Policy;
use crate::rank::{Ranker, Ranking};
use crate::resources::{ResourceKind, Resources};
use crate::topology::Topology;

/// Tasks of one job waiting in the current batch.
#[derive(Debug, Clone)]
struct Entry {
    job: JobId,
    count: u32,
    handed_back: Vec<ClusterId>,
    last_why: Option<(ClusterId, Unschedulable)>,
}

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
    /// Per job, where each placed task went; task `i` is `placements[job][i]`.
    pub placements: Vec<Vec<TaskLocation>>,
    pub unplaced: Vec<Unplaced>,
    pub explanation: Option<JobExplanation>,
}

/// Runs the workload through both levels. `progress` is called after each
/// batch with the number of tasks decided so far.
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
    let ranker = Ranker::new(policy, &topology.locality);
    let mut cells: Vec<Cell> = topology.clusters.iter().map(Cell::new).collect();
    let mut summaries: Vec<ClusterSummary> = topology
        .clusters
        .iter()
        .map(ClusterSummary::from_cluster)
        .collect();
    let mut placements: Vec<Vec<TaskLocation>> = jobs
        .iter()
        .map(|j| Vec::with_capacity(j.spec.tasks as usize))
        .collect();
    let mut unplaced = Vec::new();
    let mut explanation = explain.map(|job| JobExplanation {
        job,
        rounds: Vec::new(),
    });
    let batch_size = policy.local.batch_size.max(1);
    let mut queues: Vec<Vec<Entry>> = vec![Vec::new(); cells.len()];
    let mut decided = 0u64;

    let mut next_job = 0usize;
    let mut offset = 0u32; // tasks of `jobs[next_job]` already batched
    while next_job < jobs.len() {
        // Take up to `batch_size` tasks, in file order, splitting large jobs.
        let mut pending = Vec::new();
        let mut room = batch_size;
        while room > 0 && next_job < jobs.len() {
            let job = &jobs[next_job];
            let n = (job.spec.tasks - offset).min(room);
            pending.push(Entry {
                job: job.id,
                count: n,
                handed_back: Vec::new(),
                last_why: None,
            });
            room -= n;
            offset += n;
            if offset == job.spec.tasks {
                next_job += 1;
                offset = 0;
            }
        }

        while !pending.is_empty() {
            // Global: each entry to its best cluster.
            for e in pending.drain(..) {
                let job = &jobs[e.job.0 as usize];
                let ranking = ranker.rank(job, &summaries, &e.handed_back);
                let explaining = explain == Some(e.job);
                match ranking.best() {
                    None => {
                        decided += u64::from(e.count);
                        unplaced.push(Unplaced {
                            job: e.job,
                            tasks: e.count,
                            reason: unplaced_reason(&ranking, &e, &summaries),
                        });
                        if explaining {
                            if let Some(x) = explanation.as_mut() {
                                x.rounds.push(ExplainRound {
                                    tasks: e.count,
                                    ranking,
                                    chosen: None,
                                    placed: 0,
                                    machines: Vec::new(),
                                    handed_back: None,
                                });
                            }
                        }
                    }
                    Some(c) => {
                        let s = &mut summaries[c.0 as usize];
                        s.queued = s
                            .queued
                            .saturating_add(&job.spec.request.times(u64::from(e.count)));
                        s.queue_len += u64::from(e.count);
                        if explaining {
                            if let Some(x) = explanation.as_mut() {
                                x.rounds.push(ExplainRound {
                                    tasks: e.count,
                                    ranking,
                                    chosen: Some(c),
                                    placed: 0,
                                    machines: Vec::new(),
                                    handed_back: None,
                                });
                            }
                        }
                        queues[c.0 as usize].push(e);
                    }
                }
            }
            // Local: each cluster packs what it was handed.
            for (c, queue) in queues.iter_mut().enumerate() {
                if queue.is_empty() {
                    continue;
                }
                let cluster = ClusterId(c as u32);
                let groups: Vec<TaskGroup<'_>> = queue
                    .iter()
                    .map(|e| {
                        let spec = &jobs[e.job.0 as usize].spec;
                        TaskGroup {
                            job: e.job,
                            request: spec.request,
                            constraints: &spec.constraints,
                            priority: spec.priority,
                            count: e.count,
                        }
                    })
                    .collect();
                let outcomes = packer(&mut cells[c], &groups, &policy.local);
                let summary = &mut summaries[c];
                for (mut e, o) in queue.drain(..).zip(outcomes) {
                    let request = jobs[e.job.0 as usize].spec.request;
                    let placed = o.placed.len() as u32;
                    summary.queued = summary
                        .queued
                        .saturating_sub(&request.times(u64::from(e.count)));
                    summary.queue_len -= u64::from(e.count);
                    summary.allocated = summary
                        .allocated
                        .saturating_add(&request.times(u64::from(placed)));
                    decided += u64::from(placed);
                    if explain == Some(e.job) {
                        if let Some(round) = explanation.as_mut().and_then(|x| x.rounds.last_mut())
                        {
                            round.placed = placed;
                            round.machines = machine_counts(&cells[c], &o.placed);
                            round.handed_back = o.why.clone();
                        }
                    }
                    placements[e.job.0 as usize].extend(
                        o.placed
                            .iter()
                            .map(|&machine| TaskLocation { cluster, machine }),
                    );
                    if o.unplaced > 0 {
                        e.count = o.unplaced;
                        e.handed_back.push(cluster);
                        e.last_why = o.why.map(|w| (cluster, w));
                        pending.push(e);
                    }
                }
            }
        }
        progress(decided);
    }
    Outcome {
        cells,
        summaries,
        placements,
        unplaced,
        explanation,
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

/// Why no cluster would take the tasks: the clusters' rejections counted,
/// and the last cluster's own account of its machines.
fn unplaced_reason(ranking: &Ranking, e: &Entry, summaries: &[ClusterSummary]) -> String {
    let mut counts: std::collections::BTreeMap<String, u32> = Default::default();
    for f in &ranking.filtered {
        *counts.entry(f.rejection.summary()).or_insert(0) += 1;
    }
    let mut parts: Vec<(String, u32)> = counts.into_iter().collect();
    parts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let list: Vec<String> = parts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    let mut reason = format!(
        "0/{} clusters can take it: {}",
        summaries.len(),
        list.join(", ")
    );
    if let Some((c, why)) = &e.last_why {
        reason.push_str(&format!(" (last, {}: {why})", summaries[c.0 as usize].name));
    }
    reason
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
