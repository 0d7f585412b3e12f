//! Room: how many of a job's tasks a cluster can actually place, as the
//! global level asks it when it splits a job over clusters.
//!
//! Unclaimed capacity summed over a cluster says too much when it is spread
//! over machines in slivers: 10 cpu free on ten machines do not hold a
//! 2-cpu task on any one of them. [`PendingQueue::plan_with`] asks a
//! [`Room`] instead of summing: the daemon, which sees clusters only
//! through their summaries, asks [`Summed`] (the sum, as before); the
//! simulator, which holds every machine, asks [`MachineRoom`], which counts
//! the copies that fit machine by machine, less what the pass promised
//! already: [`crate::simulate::simulate_exact_split`]. (The default
//! simulation sums, as the daemon does, so that it keeps predicting the
//! daemon's decisions: `tests/tests/agreement.rs`.)
//!
//! A job that no cluster can place even once is found out in the same
//! pass it is ranked, without being handed to any cluster, and remembered
//! by its shape: while no machine's free capacity grows, it is not looked
//! at again (the machines' free capacity per cluster is the cached bound,
//! and its largest value per resource a test that rules most clusters out
//! in one comparison).
//!
//! [`PendingQueue::plan_with`]: crate::assign::PendingQueue::plan_with

use std::collections::BTreeMap;

use crate::cell::Cell;
use crate::cluster::{ClusterId, ClusterSummary};
use crate::job::Job;
use crate::labels::{self, Labels};
use crate::resources::Resources;

/// What the global level asks before handing tasks to a cluster.
pub trait Room {
    /// How many of `job`'s tasks `c` (which the ranking found feasible)
    /// can place now, at most `want`.
    fn fits(&mut self, job: &Job, c: &ClusterSummary, want: u64) -> u64;
    /// `n` of `job`'s tasks were handed to `c` in this pass.
    fn promise(&mut self, job: &Job, c: ClusterId, n: u64);
    /// True when `job` was found to fit on no machine of any cluster and no
    /// machine has gained free capacity since: the pass skips it.
    fn hopeless(&mut self, _job: &Job) -> bool {
        false
    }
    /// No cluster could place even one of `job`'s tasks.
    fn fits_nowhere(&mut self, _job: &Job) {}
}

/// The unclaimed capacity, summed over the cluster: all the daemon knows.
/// A cluster the ranking found feasible always takes at least one task
/// (its local agent finds out, and hands back what it cannot place).
pub struct Summed;

impl Room for Summed {
    fn fits(&mut self, job: &Job, c: &ClusterSummary, want: u64) -> u64 {
        crate::assign::fit_count(&c.unclaimed(), &job.spec.request).clamp(1, want.max(1))
    }

    fn promise(&mut self, _: &Job, _: ClusterId, _: u64) {}
}

/// Machine by machine free capacity of every cluster, for the simulator.
#[derive(Debug, Clone, Default)]
pub struct MachineRoom {
    clusters: Vec<ClusterRoom>,
    /// Bumped whenever a machine's free capacity grows.
    epoch: u64,
    /// Shapes found to fit nowhere, and the epoch then.
    nowhere: BTreeMap<([u64; 4], Labels), u64>,
}

#[derive(Debug, Clone, Default)]
struct ClusterRoom {
    /// Each class's capacity and labels.
    classes: Vec<(Resources, Labels)>,
    /// Per up machine: its class, its free capacity, and that less what
    /// this pass promised.
    class: Vec<u32>,
    actual: Vec<Resources>,
    left: Vec<Resources>,
    /// The largest of `left` and of `actual`, per resource: a task that
    /// exceeds it fits no machine.
    left_ceiling: Resources,
    actual_ceiling: Resources,
}

impl MachineRoom {
    pub fn new(cells: &[Cell]) -> Self {
        let mut room = MachineRoom {
            clusters: vec![ClusterRoom::default(); cells.len()],
            ..Default::default()
        };
        for (c, cell) in cells.iter().enumerate() {
            room.clusters[c].classes = (0..cell.class_count() as u32)
                .map(|k| {
                    let class = cell.class(k);
                    (class.capacity, class.labels.clone())
                })
                .collect();
            room.refresh(ClusterId(c as u32), cell);
        }
        room
    }

    /// Cluster `c`'s machines changed (it packed a batch): its promises are
    /// settled, and its free capacity is read again.
    pub fn refresh(&mut self, c: ClusterId, cell: &Cell) {
        let Some(r) = self.clusters.get_mut(c.0 as usize) else {
            return;
        };
        let before = std::mem::take(&mut r.actual);
        r.class.clear();
        for (_, m) in cell.machines().filter(|(_, m)| m.up) {
            r.class.push(m.class);
            r.actual.push(m.free);
        }
        let grew = before.len() != r.actual.len()
            || before.iter().zip(&r.actual).any(|(b, a)| !a.fits_in(b));
        if grew {
            self.epoch += 1;
        }
        r.left.clone_from(&r.actual);
        r.actual_ceiling = ceiling(&r.actual);
        r.left_ceiling = r.actual_ceiling;
    }
}

fn ceiling(free: &[Resources]) -> Resources {
    free.iter().fold(Resources::ZERO, |acc, f| acc.max(f))
}

/// How many copies of `q` fit in `free`.
fn copies(q: &Resources, free: &Resources) -> u64 {
    crate::assign::fit_count(free, q)
}

impl ClusterRoom {
    fn eligible(&self, request: &Resources, constraints: &Labels) -> Vec<bool> {
        self.classes
            .iter()
            .map(|(cap, l)| request.fits_in(cap) && labels::satisfies(constraints, l))
            .collect()
    }

    /// Copies of `request` that fit in `free` (`left` or `actual`), at
    /// most `want`.
    fn count(&self, job: &Job, actual: bool, want: u64) -> u64 {
        let request = &job.spec.request;
        let (free, top) = if actual {
            (&self.actual, &self.actual_ceiling)
        } else {
            (&self.left, &self.left_ceiling)
        };
        if !request.fits_in(top) || want == 0 {
            return 0;
        }
        let eligible = self.eligible(request, &job.spec.constraints);
        let mut n = 0u64;
        for (f, &k) in free.iter().zip(&self.class) {
            if eligible[k as usize] && request.fits_in(f) {
                // Saturating: a request of nothing fits without end.
                n = n.saturating_add(copies(request, f));
                if n >= want {
                    return want;
                }
            }
        }
        n
    }
}

impl Room for MachineRoom {
    fn fits(&mut self, job: &Job, c: &ClusterSummary, want: u64) -> u64 {
        self.clusters
            .get(c.id.0 as usize)
            .map_or(0, |r| r.count(job, false, want))
    }

    /// Takes the copies from the machines in order, as many on each as fit.
    fn promise(&mut self, job: &Job, c: ClusterId, n: u64) {
        let Some(r) = self.clusters.get_mut(c.0 as usize) else {
            return;
        };
        let request = &job.spec.request;
        let eligible = r.eligible(request, &job.spec.constraints);
        let mut left = n;
        for (f, &k) in r.left.iter_mut().zip(&r.class) {
            if left == 0 {
                break;
            }
            if !eligible[k as usize] {
                continue;
            }
            let take = copies(request, f).min(left);
            if take > 0 {
                *f = f.saturating_sub(&request.times(take));
                left -= take;
            }
        }
        r.left_ceiling = ceiling(&r.left);
    }

    fn hopeless(&mut self, job: &Job) -> bool {
        let key = (job.spec.request.as_array(), job.spec.constraints.clone());
        self.nowhere.get(&key) == Some(&self.epoch)
    }

    /// Remembered only when no machine holds one task even with this
    /// pass's promises given back: then only a machine gaining free
    /// capacity can change it.
    fn fits_nowhere(&mut self, job: &Job) {
        if self.clusters.iter().all(|r| r.count(job, true, 1) == 0) {
            let key = (job.spec.request.as_array(), job.spec.constraints.clone());
            self.nowhere.insert(key, self.epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Cluster;
    use crate::locality::LocationId;
    use crate::machine::{MachineClass, MachineId};
    use crate::test_support::job;

    /// A cell of two 4-cpu machines with 3 cpu taken on each.
    fn slivers() -> Cell {
        let mut cell = Cell::new(&Cluster {
            id: ClusterId(0),
            name: "c0".into(),
            location: LocationId(0),
            classes: vec![MachineClass {
                name: "m".into(),
                count: 2,
                capacity: Resources::new(4000, 1 << 30),
                labels: Labels::new(),
            }],
        });
        for m in 0..2 {
            cell.place(MachineId(m), &Resources::new(3000, 0));
        }
        cell
    }

    #[test]
    fn counts_machine_by_machine_and_remembers_what_fits_nowhere() {
        let mut cell = slivers();
        let mut room = MachineRoom::new(std::slice::from_ref(&cell));
        let summary = ClusterSummary::from_cluster(&Cluster {
            id: ClusterId(0),
            name: "c0".into(),
            location: LocationId(0),
            classes: vec![],
        });
        let (small, large) = (job("s", 10, 1000, 0), job("l", 1, 2000, 0));
        // 2 cpu free summed, but one on each machine: two 1-cpu tasks, no
        // 2-cpu one.
        assert_eq!(room.fits(&small, &summary, 10), 2);
        assert_eq!(room.fits(&large, &summary, 10), 0);
        room.promise(&small, ClusterId(0), 1);
        assert_eq!(room.fits(&small, &summary, 10), 1);
        assert!(!room.hopeless(&large));
        room.fits_nowhere(&large);
        assert!(room.hopeless(&large));
        // A machine gains room: looked at again.
        cell.release(MachineId(1), &Resources::new(3000, 0), 1);
        room.refresh(ClusterId(0), &cell);
        assert!(!room.hopeless(&large));
        assert_eq!(room.fits(&large, &summary, 10), 2);
    }
}
