//! Comparison baselines: how Kubernetes and Nomad would choose a machine,
//! written from their published scoring formulas.
//!
//! Both place tasks one at a time, in arrival order, on the feasible machine
//! with the highest score; every machine is scored for every task (the most
//! favourable reading for them: kube-scheduler samples a percentage of nodes
//! in large clusters, Nomad scores a handful). Ties go to the lowest machine
//! id where Kubernetes would pick at random. They exist to be measured
//! against, in the benchmarks and the packing tests, never to schedule.

mod most_allocated;
mod nomad_binpack;

pub use most_allocated::MostAllocated;
pub use nomad_binpack::NomadBinPack;

use crate::cell::Cell;
use crate::machine::MachineId;
use crate::pack::{GroupOutcome, TaskGroup};
use crate::resources::Resources;

/// A machine scorer in the style of a kube-scheduler score plugin.
pub trait NodeScorer {
    fn name(&self) -> &'static str;
    /// The score of putting `request` on a machine of `capacity` where
    /// `used` is already allocated. Higher is better.
    fn score(&self, request: &Resources, used: &Resources, capacity: &Resources) -> f64;
}

/// Places one task on the best-scoring feasible machine of the eligible
/// classes, scanning every machine.
pub fn place_one(
    cell: &mut Cell,
    request: &Resources,
    classes: &[u32],
    scorer: &dyn NodeScorer,
) -> Option<MachineId> {
    let mut best: Option<(f64, MachineId)> = None;
    for (id, st) in cell.machines() {
        if !st.up || !classes.contains(&st.class) || !cell.fits(id, request) {
            continue;
        }
        let cap = cell.capacity_of(id);
        let used = cap.saturating_sub(&st.free);
        let s = scorer.score(request, &used, cap);
        if best.is_none_or(|(b, _)| s > b) {
            best = Some((s, id));
        }
    }
    let (_, m) = best?;
    let _ = cell.place(m, request);
    Some(m)
}

/// Places every task of `groups`, in order, one at a time.
pub fn pack_online(
    cell: &mut Cell,
    groups: &[TaskGroup<'_>],
    scorer: &dyn NodeScorer,
) -> Vec<GroupOutcome> {
    groups
        .iter()
        .map(|g| {
            let classes = cell.eligible_classes(&g.request, g.constraints);
            let mut out = GroupOutcome::default();
            for _ in 0..g.count {
                match place_one(cell, &g.request, &classes, scorer) {
                    Some(m) => out.placed.push(m),
                    None => out.unplaced += 1,
                }
            }
            out
        })
        .collect()
}
