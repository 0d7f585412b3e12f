//! The flat baseline: one Kubernetes-style scheduler over every machine of
//! every cluster, scoring with MostAllocated.
//!
//! Kubernetes' rule (NodeResourcesFit, MostAllocated strategy, cpu and
//! memory weighted 1): a node's score is the mean over resources of
//! `requested × 100 / allocatable` (integer division, `requested` counting
//! the incoming pod), and the pod goes to the feasible node that scores
//! highest; ties here go to the lowest machine id. Tasks are placed one at
//! a time, in submission order.
//!
//! The result is exactly that of scoring every machine for every task, but
//! two kinds of machine are skipped because they can never win: machines
//! that cannot hold the smallest request of the workload any more, and all
//! empty machines but the first (an empty machine scores no more than any
//! used one that fits, and all empty machines of one capacity score alike).

use sched_core::job::Job;
use sched_core::resources::Resources;
use sched_core::topology::Topology;

/// What the flat baseline did.
#[derive(Debug, Clone)]
pub struct FlatOutcome {
    pub tasks_placed: u64,
    pub tasks_unplaced: u64,
    pub machines_used: u64,
    pub seconds: f64,
}

fn share(requested: u64, capacity: u64) -> u64 {
    (requested.min(capacity) * 100)
        .checked_div(capacity)
        .unwrap_or(0)
}

/// MostAllocated's node score for `request` on a machine with `used` of
/// `capacity` already allocated.
pub fn most_allocated(request: &Resources, used: &Resources, capacity: &Resources) -> u64 {
    let r = used.saturating_add(request);
    (share(r.cpu.0, capacity.cpu.0) + share(r.memory.0, capacity.memory.0)) / 2
}

/// Places every task of `jobs` on the machines of `topology`, flat.
/// With `every_machine`, each task scores every feasible machine, as
/// kube-scheduler does (filter every node, score the feasible ones); the
/// placements are the same, only the time differs.
pub fn flat_most_allocated(topology: &Topology, jobs: &[Job], every_machine: bool) -> FlatOutcome {
    let mut capacity: Vec<Resources> = Vec::new();
    for c in &topology.clusters {
        for k in &c.classes {
            capacity.extend(std::iter::repeat_n(k.capacity, k.count as usize));
        }
    }
    let smallest = jobs
        .iter()
        .fold(Resources::from_array([u64::MAX; 4]), |acc, j| {
            Resources::from_array(std::array::from_fn(|i| {
                acc.as_array()[i].min(j.spec.request.as_array()[i])
            }))
        });
    let started = std::time::Instant::now();
    let mut used = vec![Resources::ZERO; capacity.len()];
    // Used machines that may still take a task, and the next empty one.
    let mut open: Vec<u32> = Vec::new();
    let mut next_empty = 0usize;
    let (mut placed, mut unplaced) = (0u64, 0u64);
    for j in jobs {
        let request = j.spec.request;
        for _ in 0..j.spec.tasks {
            if every_machine {
                let mut best: Option<(u64, u32)> = None;
                for (m, (u, cap)) in used.iter().zip(&capacity).enumerate() {
                    if !u.saturating_add(&request).fits_in(cap) {
                        continue;
                    }
                    let s = most_allocated(&request, u, cap);
                    if best.is_none_or(|(b, _)| s > b) {
                        best = Some((s, m as u32));
                    }
                }
                match best {
                    Some((_, m)) => {
                        placed += 1;
                        let u = &mut used[m as usize];
                        *u = u.saturating_add(&request);
                    }
                    None => unplaced += 1,
                }
                continue;
            }
            let mut best: Option<(u64, u32)> = None;
            for &m in &open {
                let (u, cap) = (&used[m as usize], &capacity[m as usize]);
                if !u.saturating_add(&request).fits_in(cap) {
                    continue;
                }
                let s = most_allocated(&request, u, cap);
                if best.is_none_or(|(b, id)| s > b || (s == b && m < id)) {
                    best = Some((s, m));
                }
            }
            if next_empty < capacity.len() && request.fits_in(&capacity[next_empty]) {
                let m = next_empty as u32;
                let s = most_allocated(&request, &Resources::ZERO, &capacity[next_empty]);
                if best.is_none_or(|(b, id)| s > b || (s == b && m < id)) {
                    best = Some((s, m));
                }
            }
            let Some((_, m)) = best else {
                unplaced += 1;
                continue;
            };
            placed += 1;
            if m as usize == next_empty {
                next_empty += 1;
                open.push(m);
            }
            let u = &mut used[m as usize];
            *u = u.saturating_add(&request);
            if !u.saturating_add(&smallest).fits_in(&capacity[m as usize]) {
                open.retain(|&o| o != m);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    FlatOutcome {
        tasks_placed: placed,
        tasks_unplaced: unplaced,
        machines_used: used.iter().filter(|u| !u.is_zero()).count() as u64,
        seconds,
    }
}
