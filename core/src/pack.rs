//! The local decision: packing a batch of waiting tasks onto a cell's machines.
//!
//! # Phases
//!
//! 1. **Order.** Tasks of one job share a request and constraints, so the
//!    batch is a list of *groups* (equivalence classes), sorted by priority,
//!    then size (largest first), then arrival.
//! 2. **Top up.** Each group goes, task by task, to the used machine where it
//!    fits most tightly ([`Cell::best_fit_used`]). The next task of the same
//!    group goes to the same machine while it still fits: that machine's key
//!    only fell, every machine below it already failed the same request, so
//!    it is provably still the best fit, so as many as fit go there at once
//!    and most placements skip the index.
//! 3. **Open machines.** What is left goes onto empty machines, one machine
//!    at a time: the largest waiting task opens it, and a bounded
//!    depth-first search picks the set of other waiting tasks that leaves it
//!    the least slack (normalized free capacity). This is the Minimum Bin
//!    Slack heuristic of Gupta and Ho ("A new heuristic algorithm for the
//!    one-dimensional bin-packing problem", Production Planning & Control,
//!    1999), taken to several resources and to groups of identical tasks; the
//!    search visits at most `search_budget` nodes per machine and starts from
//!    the greedy fill (each group in order, as many as fit), so a budget of 0
//!    is plain first fit decreasing onto each new machine.
//!
//! Nothing already placed moves: the batch only adds tasks, so packing is
//! stable, and packing an empty batch changes nothing.
//!
//! With the `spread` strategy every task goes to the emptiest machine that
//! holds it instead (worst fit), for operators who want headroom everywhere.
//! With `fragmentation`, tasks go one at a time, in the same order, where
//! GPU fragmentation grows least ([`crate::gpu::strategy`]).
//!
//! GPU requests are placed on devices ([`crate::gpu`]): a machine fits a
//! task only when its devices do ([`Cell::fits`]), and each outcome lists
//! the devices of each placed task.

use crate::cell::{fragmentation_key, Cell};
use crate::gpu::frag::TaskMix;
use crate::gpu::strategy::{FragmentationPlacer, TaskPlacer};
use crate::gpu::GpuSlot;
use crate::job::JobId;
use crate::labels::Labels;
use crate::machine::MachineId;
use crate::placement::Unschedulable;
use crate::policy::{LocalPolicy, Strategy};
use crate::resources::Resources;

/// Some identical waiting tasks of one job.
#[derive(Debug, Clone, Copy)]
pub struct TaskGroup<'a> {
    pub job: JobId,
    pub request: Resources,
    pub constraints: &'a Labels,
    pub priority: u32,
    pub count: u32,
}

/// What became of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupOutcome {
    /// The machine of each placed task, in placement order.
    pub placed: Vec<MachineId>,
    /// The GPU devices of each placed task, beside `placed` (empty lists
    /// for tasks without GPUs).
    pub gpus: Vec<Vec<GpuSlot>>,
    /// Tasks that found no machine.
    pub unplaced: u32,
    /// Why, when `unplaced > 0`.
    pub why: Option<Unschedulable>,
}

/// Packs `groups` onto `cell`; returns one outcome per group, in order.
pub fn pack(cell: &mut Cell, groups: &[TaskGroup<'_>], policy: &LocalPolicy) -> Vec<GroupOutcome> {
    let mut out: Vec<GroupOutcome> = groups
        .iter()
        .map(|g| GroupOutcome {
            placed: Vec::with_capacity(g.count as usize),
            ..Default::default()
        })
        .collect();
    if groups.is_empty() {
        return out;
    }
    let eligible: Vec<[Vec<u32>; 2]> = groups
        .iter()
        .map(|g| cell.class_tiers(&g.request, g.constraints))
        .collect();
    let order = order_groups(cell, groups);
    let mut left: Vec<u32> = groups.iter().map(|g| g.count).collect();

    match policy.strategy {
        Strategy::Spread => {
            for &g in &order {
                while left[g] > 0 {
                    let request = &groups[g].request;
                    let Some(m) = eligible[g]
                        .iter()
                        .find_map(|tier| cell.emptiest_fit(request, tier))
                    else {
                        break;
                    };
                    let slots = cell.place(m, &groups[g].request);
                    out[g].placed.push(m);
                    out[g].gpus.push(slots);
                    left[g] -= 1;
                }
            }
        }
        Strategy::Fragmentation => {
            // The batch's own mix: the live agent knows no other.
            let mix = TaskMix::from_tasks(
                groups
                    .iter()
                    .map(|g| (&g.request, g.constraints, u64::from(g.count))),
            );
            let mut placer = FragmentationPlacer::new(mix);
            for &g in &order {
                while left[g] > 0 {
                    let Some((m, slots)) =
                        placer.place(cell, &groups[g].request, groups[g].constraints)
                    else {
                        break;
                    };
                    out[g].placed.push(m);
                    out[g].gpus.push(slots);
                    left[g] -= 1;
                }
            }
        }
        Strategy::BestFit => {
            for &g in &order {
                top_up(
                    cell,
                    &groups[g].request,
                    &eligible[g],
                    &mut left[g],
                    &mut out[g],
                );
            }
            open_machines(
                cell,
                groups,
                &eligible,
                &order,
                &mut left,
                &mut out,
                policy.search_budget,
            );
        }
    }

    for (g, group) in groups.iter().enumerate() {
        if left[g] > 0 {
            out[g].unplaced = left[g];
            out[g].why = Some(cell.diagnose(&group.request, group.constraints));
        }
    }
    out
}

/// Groups by priority (high first), then size on the cell's largest
/// machine (large first), then input order.
fn order_groups(cell: &Cell, groups: &[TaskGroup<'_>]) -> Vec<usize> {
    let largest = (0..cell.class_count() as u32)
        .fold(Resources::ZERO, |acc, k| acc.max(&cell.class(k).capacity));
    let size: Vec<u64> = groups
        .iter()
        .map(|g| fragmentation_key(&g.request, &largest))
        .collect();
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by(|&a, &b| {
        groups[b]
            .priority
            .cmp(&groups[a].priority)
            .then(size[b].cmp(&size[a]))
            .then(a.cmp(&b))
    });
    order
}

/// Places as many of `left` tasks as fit onto used machines, tightest first
/// within the first tier of classes that has room.
fn top_up(
    cell: &mut Cell,
    request: &Resources,
    tiers: &[Vec<u32>; 2],
    left: &mut u32,
    out: &mut GroupOutcome,
) {
    let mut last: Option<MachineId> = None;
    while *left > 0 {
        if request.gpu.0 == 0 {
            let Some(m) = tiers.iter().find_map(|t| cell.best_fit_used(request, t)) else {
                return;
            };
            // As many as still fit there, at once: one re-index.
            let n = max_copies(request, &cell.machine(m).free).min(*left);
            cell.place_n(m, request, n);
            out.placed.extend(std::iter::repeat_n(m, n as usize));
            out.gpus.extend(std::iter::repeat_n(Vec::new(), n as usize));
            *left -= n;
            continue;
        }
        // GPU tasks one by one: each gets devices of its own.
        let m = match last {
            Some(m) if cell.fits(m, request) => m,
            _ => match tiers.iter().find_map(|t| cell.best_fit_used(request, t)) {
                Some(m) => m,
                None => return,
            },
        };
        let slots = cell.place(m, request);
        out.placed.push(m);
        out.gpus.push(slots);
        *left -= 1;
        last = Some(m);
    }
}

/// Phase 3: opens empty machines one at a time and fills each with the set
/// of waiting tasks that leaves the least slack.
#[allow(clippy::too_many_arguments)]
fn open_machines(
    cell: &mut Cell,
    groups: &[TaskGroup<'_>],
    eligible: &[[Vec<u32>; 2]],
    order: &[usize],
    left: &mut [u32],
    out: &mut [GroupOutcome],
    budget: u32,
) {
    let mut cursor = 0;
    loop {
        while cursor < order.len() && left[order[cursor]] == 0 {
            cursor += 1;
        }
        let Some(&first) = order.get(cursor) else {
            return;
        };
        // Try each class with an empty machine, in the first tier that has
        // one; keep the fill with the least slack, ties to the lower class.
        let mut best: Option<(u64, u32, FillPlan)> = None;
        let tier = eligible[first]
            .iter()
            .find(|t| t.iter().any(|&k| cell.has_empty(k)));
        for &k in tier.into_iter().flatten() {
            if !cell.has_empty(k) {
                continue;
            }
            let (slack, fill) =
                fill_machine(cell, k, groups, eligible, order, cursor, left, budget);
            if best
                .as_ref()
                .is_none_or(|(s, bk, _)| (slack, k) < (*s, *bk))
            {
                best = Some((slack, k, fill));
            }
        }
        match best {
            Some((_, k, fill)) => {
                let Some(m) = cell.empty_machine(k) else {
                    // has_empty(k) was checked just above and nothing ran since.
                    unreachable!("class {k} lost its empty machine");
                };
                for (g, n) in fill {
                    let request = &groups[g].request;
                    if request.gpu.0 == 0 {
                        cell.place_n(m, request, n);
                        out[g].placed.extend(std::iter::repeat_n(m, n as usize));
                        out[g]
                            .gpus
                            .extend(std::iter::repeat_n(Vec::new(), n as usize));
                        left[g] -= n;
                        continue;
                    }
                    // The fill counts GPUs in total; devices may hold fewer
                    // shares (two 0.6 shares need two devices). What does
                    // not fit waits for the next machine.
                    for _ in 0..n {
                        if !cell.fits(m, request) {
                            break;
                        }
                        let slots = cell.place(m, request);
                        out[g].placed.push(m);
                        out[g].gpus.push(slots);
                        left[g] -= 1;
                    }
                }
            }
            None => {
                // No empty machine can take the largest waiting group: the
                // machines opened earlier in this batch may still have room.
                let g = first;
                top_up(
                    cell,
                    &groups[g].request,
                    &eligible[g],
                    &mut left[g],
                    &mut out[g],
                );
                // Whatever is still left of this group is unplaceable here.
                cursor += 1;
            }
        }
    }
}

/// `(group, count)` pairs: how many tasks of each group go on a machine.
type FillPlan = Vec<(usize, u32)>;

/// The search state for filling one empty machine of one class.
struct Fill<'a> {
    /// Candidate groups (indices into the batch) in size order.
    cands: Vec<usize>,
    requests: Vec<Resources>,
    avail: Vec<u32>,
    /// `suffix[i]`: the total size of every candidate from `i` on.
    suffix: Vec<u64>,
    capacity: &'a Resources,
    nodes: u32,
    budget: u32,
    chosen: Vec<(usize, u32)>,
    best_slack: u64,
    best: Vec<(usize, u32)>,
}

/// Chooses the waiting tasks that fill an empty machine of class `k` best,
/// given that one task of `order[cursor]` opens it. Returns the slack (the
/// machine's fragmentation key after the fill) and `(group, count)` pairs.
#[allow(clippy::too_many_arguments)]
fn fill_machine(
    cell: &Cell,
    k: u32,
    groups: &[TaskGroup<'_>],
    eligible: &[[Vec<u32>; 2]],
    order: &[usize],
    cursor: usize,
    left: &[u32],
    budget: u32,
) -> (u64, Vec<(usize, u32)>) {
    let capacity = &cell.class(k).capacity;
    let first = order[cursor];
    let mut cands = Vec::new();
    let mut avail = Vec::new();
    for &g in &order[cursor..] {
        let n = left[g] - u32::from(g == first);
        if n > 0 && eligible[g].iter().any(|t| t.contains(&k)) {
            cands.push(g);
            avail.push(n);
        }
    }
    let requests: Vec<Resources> = cands.iter().map(|&g| groups[g].request).collect();
    let volume: Vec<u64> = requests
        .iter()
        .map(|r| fragmentation_key(r, capacity))
        .collect();
    let mut suffix = vec![0u64; cands.len() + 1];
    for i in (0..cands.len()).rev() {
        suffix[i] = suffix[i + 1].saturating_add(volume[i].saturating_mul(u64::from(avail[i])));
    }
    let free = capacity.saturating_sub(&groups[first].request);
    let slack = fragmentation_key(&free, capacity);
    let mut fill = Fill {
        cands,
        requests,
        avail,
        suffix,
        capacity,
        nodes: 0,
        budget,
        chosen: Vec::new(),
        best_slack: slack,
        best: Vec::new(),
    };
    fill.greedy(free);
    if budget > 0 {
        fill.search(0, free, slack);
    }
    let mut result: Vec<(usize, u32)> = vec![(first, 1)];
    for (i, n) in fill.best {
        let g = fill.cands[i];
        if g == first {
            result[0].1 += n;
        } else {
            result.push((g, n));
        }
    }
    (fill.best_slack, result)
}

impl Fill<'_> {
    /// The greedy fill: each candidate in order, as many copies as fit.
    fn greedy(&mut self, mut free: Resources) {
        for i in 0..self.cands.len() {
            let n = max_copies(&self.requests[i], &free).min(self.avail[i]);
            if n > 0 {
                free = free.saturating_sub(&self.requests[i].times(u64::from(n)));
                self.chosen.push((i, n));
            }
        }
        let slack = fragmentation_key(&free, self.capacity);
        if slack < self.best_slack {
            self.best_slack = slack;
            self.best.clone_from(&self.chosen);
        }
        self.chosen.clear();
    }

    /// Depth-first search over how many copies of each candidate to take,
    /// largest candidates first, bounded by the node budget.
    fn search(&mut self, start: usize, free: Resources, slack: u64) {
        self.nodes += 1;
        if slack < self.best_slack {
            self.best_slack = slack;
            self.best.clone_from(&self.chosen);
        }
        // Even taking every remaining task could not beat the best fill.
        if self.best_slack == 0 || slack.saturating_sub(self.suffix[start]) >= self.best_slack {
            return;
        }
        let mut previous: Option<Resources> = None;
        for i in start..self.cands.len() {
            if self.nodes >= self.budget {
                return;
            }
            let q = self.requests[i];
            // A group with the same request as one just tried at this level
            // leads to the same fills.
            if previous == Some(q) {
                continue;
            }
            let most = max_copies(&q, &free).min(self.avail[i]);
            if most == 0 {
                continue;
            }
            previous = Some(q);
            for n in (1..=most).rev() {
                let taken = q.times(u64::from(n));
                let next_free = free.saturating_sub(&taken);
                let next_slack = fragmentation_key(&next_free, self.capacity);
                self.chosen.push((i, n));
                self.search(i + 1, next_free, next_slack);
                self.chosen.pop();
                if self.best_slack == 0 || self.nodes >= self.budget {
                    return;
                }
            }
        }
    }
}

/// How many copies of `q` fit in `free`.
#[inline]
fn max_copies(q: &Resources, free: &Resources) -> u32 {
    let (q, f) = (q.as_array(), free.as_array());
    let mut n = u64::from(u32::MAX);
    for i in 0..4 {
        if let Some(k) = f[i].checked_div(q[i]) {
            n = n.min(k);
        }
    }
    n as u32
}
