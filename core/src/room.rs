//! Room: how many of a job's tasks a cluster can actually place, as the
//! global level asks it when it splits a job over clusters.
//!
//! Unclaimed capacity summed over a cluster says too much when it is spread
//! over machines in slivers: 10 cpu free on ten machines do not hold a
//! 2-cpu task on any one of them. [`PendingQueue::plan_with`] asks a
//! [`Room`] instead of summing, and the global scheduler and the simulator
//! ask the same one, a [`MachineRoom`]: each cluster's up machines' free
//! capacity in [`RoomGroup`]s (machines of one class with the same free
//! capacity, counted), from which it counts the copies of a task that fit,
//! group by group, less what the pass promised already
//! ([`ClusterRoom::take`]: as many copies on each machine as fit, in
//! turn). The simulator builds the groups from its cells
//! ([`ClusterRoom::of_cell`]) and reads them again once a cluster has
//! packed a batch. A local agent builds them from its cell the same way
//! and sends them in its heartbeat, with the tasks it holds and has not
//! placed yet packed on them ([`ClusterRoom::pack`], the packer itself, on
//! machines rebuilt from the groups); the global scheduler packs the tasks
//! it handed over since on the last report the same way once a pass is
//! handed over, so that it knows what its agents will have left before
//! they say, as the simulator does. Where the packer fits a batch tighter
//! than the pass's count assumed, both look at every waiting job again.
//! A cluster whose agent sends no groups (an older agent) is asked as
//! before, by its summed capacity ([`Summed`]): a cluster the ranking
//! found feasible takes at least one task, and its local agent hands back
//! what it cannot place.
//!
//! A job whose band may evict others is split by summed capacity whatever
//! the machines hold (`assign.rs`): a cluster with no room may make some
//! by eviction, and only its local agent knows which tasks go.
//!
//! A job that no cluster can place even once is found out in the same
//! pass it is ranked, without being handed to any cluster, and remembered
//! by its shape: while no machine's free capacity grows, it is not looked
//! at again (the groups' largest free capacity per resource is a test that
//! rules most clusters out in one comparison).
//!
//! GPU devices are counted as their sum, as the cluster summaries count
//! them: a machine with two half-free devices looks as if it held a whole
//! one, and its local agent hands such a task back (a machine rebuilt for
//! packing has its GPU use on whole devices and one share).
//!
//! [`PendingQueue::plan_with`]: crate::assign::PendingQueue::plan_with

use std::collections::{BTreeMap, BTreeSet};

use crate::cell::Cell;
use crate::cluster::{Cluster, ClusterId, ClusterSummary};
use crate::job::Job;
use crate::labels::{self, Labels};
use crate::locality::LocationId;
use crate::machine::MachineClass;
use crate::pack::TaskGroup;
use crate::policy::LocalPolicy;
use crate::resources::Resources;

/// What the global level asks before handing tasks to a cluster.
pub trait Room {
    /// How many of `job`'s tasks `c` (which the ranking found feasible)
    /// can place now, at most `want`.
    fn fits(&self, job: &Job, c: &ClusterSummary, want: u64) -> u64;
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

/// The unclaimed capacity, summed over the cluster: all that is known of
/// a cluster whose agent does not report its machines' room. A cluster the
/// ranking found feasible always takes at least one task (its local agent
/// finds out, and hands back what it cannot place).
pub struct Summed;

impl Room for Summed {
    fn fits(&self, job: &Job, c: &ClusterSummary, want: u64) -> u64 {
        crate::assign::fit_count(&c.unclaimed(), &job.spec.request).clamp(1, want.max(1))
    }

    fn promise(&mut self, _: &Job, _: ClusterId, _: u64) {}
}

/// Up machines of one class with the same free capacity, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomGroup {
    /// The machines' class: an index into [`ClusterRoom::classes`].
    pub class: u32,
    /// One machine's free capacity: its capacity less what is placed on it.
    pub free: Resources,
    pub count: u32,
}

/// One cluster's room: its machine classes (capacity and labels) and its
/// up machines' free capacity, in groups. Identical machines collapse into
/// one group (an empty cluster of one class is one group), so there are at
/// most as many groups as up machines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterRoom {
    classes: Vec<(Resources, Labels)>,
    /// By class, then free capacity (cpu first), smallest first: the order
    /// [`ClusterRoom::take`] fills them in, about the packer's best fit.
    /// Groups split by `take` follow, unmerged.
    groups: Vec<RoomGroup>,
    /// The largest free capacity per resource: a task that exceeds it
    /// fits on no machine.
    ceiling: Resources,
}

/// How many copies of `q` fit in `free`.
fn copies(q: &Resources, free: &Resources) -> u64 {
    crate::assign::fit_count(free, q)
}

impl ClusterRoom {
    /// The room of `classes` from `groups`; machines of the same class and
    /// free capacity are merged, and groups of no machine or of a class
    /// not in `classes` are left out.
    pub fn new(
        classes: Vec<(Resources, Labels)>,
        groups: impl IntoIterator<Item = RoomGroup>,
    ) -> Self {
        let mut merged: BTreeMap<(u32, [u64; 4]), u32> = BTreeMap::new();
        for g in groups {
            if g.count > 0 && (g.class as usize) < classes.len() {
                let n = merged.entry((g.class, g.free.as_array())).or_insert(0);
                *n = n.saturating_add(g.count);
            }
        }
        let groups: Vec<RoomGroup> = merged
            .into_iter()
            .map(|((class, free), count)| RoomGroup {
                class,
                free: Resources::from_array(free),
                count,
            })
            .collect();
        let ceiling = ceiling(&groups);
        ClusterRoom {
            classes,
            groups,
            ceiling,
        }
    }

    /// The room of `cell`'s up machines, by the cell's classes.
    pub fn of_cell(cell: &Cell) -> Self {
        let classes = (0..cell.class_count() as u32)
            .map(|k| {
                let class = cell.class(k);
                (class.capacity, class.labels.clone())
            })
            .collect();
        let groups = cell
            .machines()
            .filter(|(_, m)| m.up)
            .map(|(_, m)| RoomGroup {
                class: m.class,
                free: m.free,
                count: 1,
            });
        ClusterRoom::new(classes, groups)
    }

    /// These machines as a cell, each holding what it has not free.
    fn to_cell(&self) -> Cell {
        let mut cell = Cell::new(&Cluster {
            id: ClusterId(0),
            name: String::new(),
            location: LocationId(0),
            classes: Vec::new(),
        });
        for (capacity, labels) in &self.classes {
            cell.add_class(MachineClass {
                name: String::new(),
                count: 0,
                capacity: *capacity,
                labels: labels.clone(),
            });
        }
        for g in &self.groups {
            let capacity = self.classes[g.class as usize].0;
            let used = capacity.saturating_sub(&g.free);
            let mut plain = used;
            plain.gpu.0 = 0;
            for _ in 0..g.count {
                let m = cell.add_machine(g.class);
                if !plain.is_zero() {
                    cell.place_n(m, &plain, 1);
                }
                // GPU use as whole devices and one share: the devices'
                // split is not reported.
                let (whole, share) = (used.gpu.0 / 1000 * 1000, used.gpu.0 % 1000);
                for gpu in [whole, share] {
                    let q = Resources::ZERO.with_gpu(gpu);
                    if gpu > 0 && cell.fits(m, &q) {
                        cell.place(m, &q);
                    }
                }
            }
        }
        cell
    }

    /// Packs `batch` on these machines as the cluster's local agent packs a
    /// batch it is handed ([`crate::pack::pack`], the same code): the room
    /// it will have left, predicted, closer than [`ClusterRoom::take`]
    /// (the packer orders a batch by size and mixes jobs on a machine).
    /// Without the minimum-slack search on new machines (a budget of 0:
    /// first fit decreasing): it changes which tasks share a machine more
    /// than how many fit, and it was 62% of the global scheduler's CPU in
    /// the scale run, which predicts each cluster's room at every heartbeat.
    pub fn pack(&mut self, batch: &[TaskGroup<'_>], policy: &LocalPolicy) {
        if batch.is_empty() {
            return;
        }
        let mut cell = self.to_cell();
        let predict = LocalPolicy {
            search_budget: 0,
            ..policy.clone()
        };
        crate::pack::pack(&mut cell, batch, &predict);
        let classes = std::mem::take(&mut self.classes);
        *self = ClusterRoom::of_cell(&cell);
        self.classes = classes;
    }

    /// Each class's capacity and labels.
    pub fn classes(&self) -> &[(Resources, Labels)] {
        &self.classes
    }

    pub fn groups(&self) -> &[RoomGroup] {
        &self.groups
    }

    /// Per class: whether its labels meet `constraints`.
    fn eligible(&self, constraints: &Labels) -> Vec<bool> {
        self.classes
            .iter()
            .map(|(_, l)| labels::satisfies(constraints, l))
            .collect()
    }

    /// How many copies of `request` fit on the machines of the classes
    /// that meet `constraints`, machine by machine, at most `want`.
    pub fn count(&self, request: &Resources, constraints: &Labels, want: u64) -> u64 {
        if want == 0 || !request.fits_in(&self.ceiling) {
            return 0;
        }
        let eligible = self.eligible(constraints);
        let mut n = 0u64;
        for g in &self.groups {
            if eligible[g.class as usize] && request.fits_in(&g.free) {
                // Saturating: a request of nothing fits without end.
                n = n.saturating_add(copies(request, &g.free).saturating_mul(u64::from(g.count)));
                if n >= want {
                    return want;
                }
            }
        }
        n
    }

    /// Takes `n` copies of `request` off the machines that meet
    /// `constraints`, in group order, as many on each machine as fit;
    /// returns how many found room.
    pub fn take(&mut self, request: &Resources, constraints: &Labels, n: u64) -> u64 {
        if n == 0 || !request.fits_in(&self.ceiling) {
            return 0;
        }
        let eligible = self.eligible(constraints);
        let mut left = n;
        // Groups split off are pushed at the end, past `len`: each machine
        // is filled once.
        let len = self.groups.len();
        for i in 0..len {
            if left == 0 {
                break;
            }
            let g = self.groups[i];
            if !eligible[g.class as usize] || !request.fits_in(&g.free) {
                continue;
            }
            let each = copies(request, &g.free);
            // Machines filled with `each` copies, then one with the rest.
            let full = (left / each).min(u64::from(g.count));
            if full > 0 {
                self.split(i, full as u32, g.free.saturating_sub(&request.times(each)));
                left -= full * each;
            }
            if left > 0 && full < u64::from(g.count) {
                self.split(i, 1, g.free.saturating_sub(&request.times(left)));
                left = 0;
            }
        }
        self.ceiling = ceiling(&self.groups);
        n - left
    }

    /// `k` of group `i`'s machines now have `free` left.
    fn split(&mut self, i: usize, k: u32, free: Resources) {
        let g = &mut self.groups[i];
        if k == g.count {
            g.free = free;
            return;
        }
        g.count -= k;
        let class = g.class;
        self.groups.push(RoomGroup {
            class,
            free,
            count: k,
        });
    }

    /// Whether some machine here has free capacity that no machine of its
    /// class (the same capacity and labels) had in `before`: only then may
    /// a task that fit on no machine there fit now. (Counts do not matter:
    /// the question is whether one copy fits anywhere.)
    fn grew_from(&self, before: &ClusterRoom) -> bool {
        if self.classes == before.classes && self.groups == before.groups {
            return false;
        }
        // This room's classes as `before` numbered them.
        let old: Vec<Option<u32>> = self
            .classes
            .iter()
            .map(|c| before.classes.iter().position(|b| b == c).map(|k| k as u32))
            .collect();
        let exact: BTreeSet<(u32, [u64; 4])> = before
            .groups
            .iter()
            .map(|g| (g.class, g.free.as_array()))
            .collect();
        self.groups.iter().any(|g| match old[g.class as usize] {
            None => true,
            Some(k) => {
                // Largest first (the sorted groups' end), where a machine
                // with as much room is found soonest.
                !exact.contains(&(k, g.free.as_array()))
                    && !before
                        .groups
                        .iter()
                        .rev()
                        .any(|b| b.class == k && g.free.fits_in(&b.free))
            }
        })
    }
}

fn ceiling(groups: &[RoomGroup]) -> Resources {
    groups
        .iter()
        .fold(Resources::ZERO, |acc, g| acc.max(&g.free))
}

/// The room of every cluster, machine by machine, for the global level:
/// what it was last told less what it handed over since (`actual`), and
/// that less what the current pass promised (`left`).
#[derive(Debug, Clone, Default)]
pub struct MachineRoom {
    /// By cluster id; `None` for a cluster whose room is not known (asked
    /// by its summed capacity instead).
    clusters: Vec<Option<Known>>,
    /// Bumped whenever a machine's free capacity grows.
    epoch: u64,
    /// Shapes found to fit nowhere, and the epoch then.
    nowhere: BTreeMap<([u64; 4], Labels), u64>,
}

#[derive(Debug, Clone)]
struct Known {
    actual: ClusterRoom,
    left: ClusterRoom,
    /// `left` differs from `actual`.
    promised: bool,
}

impl MachineRoom {
    /// The room of the simulator's cells, cluster `i` being `cells[i]`.
    pub fn new(cells: &[Cell]) -> Self {
        let mut room = MachineRoom::default();
        for (c, cell) in cells.iter().enumerate() {
            room.refresh(ClusterId(c as u32), cell);
        }
        room
    }

    /// Cluster `c`'s machines changed (it packed a batch): its room is
    /// read again. Returns whether it has room that it was not thought to
    /// have ([`MachineRoom::set`]).
    pub fn refresh(&mut self, c: ClusterId, cell: &Cell) -> bool {
        self.set(c, Some(ClusterRoom::of_cell(cell)))
    }

    /// Cluster `c`'s room is now `room` (`None`: not known), promises made
    /// to it included. Returns whether it has room it did not have before
    /// (a machine's free capacity grew, or the room became known). Jobs
    /// found to fit nowhere are looked at again then, and when the room
    /// becomes unknown (the cluster may hold them, for all that is known).
    pub fn set(&mut self, c: ClusterId, room: Option<ClusterRoom>) -> bool {
        let i = c.0 as usize;
        // Outer `None`: never set.
        let before = self.clusters.get(i).map(Option::as_ref);
        let (look_again, grew) = match (before, &room) {
            (Some(Some(before)), Some(after)) => {
                let grew = after.grew_from(&before.actual);
                (grew, grew)
            }
            (Some(None), None) => (false, false),
            (_, Some(_)) => (true, true),
            (_, None) => (true, false),
        };
        if look_again {
            self.epoch += 1;
        }
        if i >= self.clusters.len() {
            self.clusters.resize(i + 1, None);
        }
        self.clusters[i] = room.map(|actual| Known {
            left: actual.clone(),
            actual,
            promised: false,
        });
        grew
    }

    /// `n` tasks of `request` under `constraints` were handed to `c` for
    /// good: they take room there, as the pass counted them, until `c`'s
    /// room is [`MachineRoom::set`] again (its machines read, or its
    /// report with them packed on it).
    pub fn take(&mut self, c: ClusterId, request: &Resources, constraints: &Labels, n: u64) {
        if let Some(Some(k)) = self.clusters.get_mut(c.0 as usize) {
            k.actual.take(request, constraints, n);
            // Promised already, in the pass that handed them over: `left`
            // is `actual` again at the next [`MachineRoom::settle`].
            k.promised = true;
        }
    }

    /// Drops the promises of the last pass (those handed over were
    /// [`MachineRoom::take`]n since; the others were not handed over).
    pub fn settle(&mut self) {
        for k in self.clusters.iter_mut().flatten() {
            if std::mem::take(&mut k.promised) {
                k.left.clone_from(&k.actual);
            }
        }
    }
}

impl Room for MachineRoom {
    fn fits(&self, job: &Job, c: &ClusterSummary, want: u64) -> u64 {
        match self.clusters.get(c.id.0 as usize) {
            Some(Some(k)) => k.left.count(&job.spec.request, &job.spec.constraints, want),
            _ => Summed.fits(job, c, want),
        }
    }

    /// Takes the copies from the machines in group order, as many on each
    /// as fit.
    fn promise(&mut self, job: &Job, c: ClusterId, n: u64) {
        if let Some(Some(k)) = self.clusters.get_mut(c.0 as usize) {
            k.left.take(&job.spec.request, &job.spec.constraints, n);
            k.promised = true;
        }
    }

    fn hopeless(&mut self, job: &Job) -> bool {
        let key = (job.spec.request.as_array(), job.spec.constraints.clone());
        self.nowhere.get(&key) == Some(&self.epoch)
    }

    /// Remembered only when every cluster's room is known and no machine
    /// holds one task even with this pass's promises given back: then
    /// only a machine gaining free capacity can change it.
    fn fits_nowhere(&mut self, job: &Job) {
        let (request, constraints) = (&job.spec.request, &job.spec.constraints);
        let nowhere = self.clusters.iter().all(|k| {
            k.as_ref()
                .is_some_and(|k| k.actual.count(request, constraints, 1) == 0)
        });
        if nowhere {
            let key = (request.as_array(), constraints.clone());
            self.nowhere.insert(key, self.epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::MachineId;
    use crate::test_support::job;

    const GIB: u64 = 1 << 30;

    fn cpu(millis: u64) -> Resources {
        Resources::new(millis, GIB)
    }

    /// A cell of `count` 4-cpu machines with 3 cpu taken on each.
    fn slivers(count: u32) -> Cell {
        let mut cell = Cell::new(&Cluster {
            id: ClusterId(0),
            name: "c0".into(),
            location: LocationId(0),
            classes: vec![MachineClass {
                name: "m".into(),
                count,
                capacity: Resources::new(4000, 16 * GIB),
                labels: Labels::new(),
            }],
        });
        for m in 0..count {
            cell.place(MachineId(m), &Resources::new(3000, 0));
        }
        cell
    }

    fn summary(id: u32) -> ClusterSummary {
        ClusterSummary::from_cluster(&Cluster {
            id: ClusterId(id),
            name: format!("c{id}"),
            location: LocationId(0),
            classes: vec![],
        })
    }

    /// One class of 4-cpu, 16 GiB machines with `labels`.
    fn class(labels: &[(&str, &str)]) -> (Resources, Labels) {
        (
            Resources::new(4000, 16 * GIB),
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn group(class: u32, free_cpu: u64, count: u32) -> RoomGroup {
        RoomGroup {
            class,
            free: Resources::new(free_cpu, 16 * GIB),
            count,
        }
    }

    #[test]
    fn identical_machines_are_one_group() {
        let mut cell = slivers(1000);
        assert_eq!(
            ClusterRoom::of_cell(&cell).groups(),
            [RoomGroup {
                class: 0,
                free: Resources::new(1000, 16 * GIB),
                count: 1000
            }]
        );
        // One machine freed, one down: two groups, 999 machines.
        cell.release(MachineId(0), &Resources::new(3000, 0), 1);
        cell.set_up(MachineId(1), false);
        let room = ClusterRoom::of_cell(&cell);
        let counts: Vec<(u64, u32)> = room
            .groups()
            .iter()
            .map(|g| (g.free.cpu.0, g.count))
            .collect();
        assert_eq!(counts, [(1000, 998), (4000, 1)]);
    }

    #[test]
    fn slivers_do_not_hold_a_task_larger_than_each() {
        // Ten machines with 1 cpu free each: 10 cpu summed, but no 2-cpu
        // task fits on any one; ten 1-cpu tasks do.
        let room = ClusterRoom::new(vec![class(&[])], [group(0, 1000, 10)]);
        let none = Labels::new();
        assert_eq!(room.count(&cpu(2000), &none, 5), 0);
        assert_eq!(room.count(&cpu(1000), &none, 50), 10);
        assert_eq!(room.count(&cpu(1000), &none, 4), 4, "at most `want`");
        // 400m: two on each machine (2 × 400 = 800 <= 1000 < 1200).
        assert_eq!(room.count(&cpu(400), &none, 100), 20);
        // Memory counts too: 16 GiB free holds two 8 GiB tasks, not three.
        assert_eq!(room.count(&Resources::new(100, 8 * GIB), &none, 100), 20);
    }

    /// Each group's free cpu and machine count, sorted.
    fn free_cpu_and_count(room: &ClusterRoom) -> Vec<(u64, u32)> {
        let mut left: Vec<(u64, u32)> = room
            .groups()
            .iter()
            .map(|g| (g.free.cpu.0, g.count))
            .collect();
        left.sort();
        left
    }

    #[test]
    fn taking_fills_machines_in_turn_and_splits_their_group() {
        // Four empty 4-cpu machines; 1.5-cpu tasks fit two on each.
        let mut room = ClusterRoom::new(vec![class(&[])], [group(0, 4000, 4)]);
        let none = Labels::new();
        let q = cpu(1500);
        assert_eq!(room.count(&q, &none, 100), 8);
        // Five copies: two machines full (1 cpu left), one holding one
        // (2.5 cpu left), one untouched.
        assert_eq!(room.take(&q, &none, 5), 5);
        let left = free_cpu_and_count(&room);
        assert_eq!(left, [(1000, 2), (2500, 1), (4000, 1)]);
        assert_eq!(room.count(&q, &none, 100), 3);
        // More than there is room for: only what fits is taken.
        assert_eq!(room.take(&q, &none, 10), 3);
        assert_eq!(room.count(&q, &none, 100), 0);
        assert_eq!(room.count(&cpu(1000), &none, 100), 4);
    }

    #[test]
    fn packing_a_batch_leaves_the_room_the_packer_leaves() {
        // Two empty 4-cpu machines and one with 1 cpu free. Three 1-cpu
        // tasks: the packer tops up the used machine first, then opens one
        // empty machine for the other two.
        let mut room = ClusterRoom::new(vec![class(&[])], [group(0, 4000, 2), group(0, 1000, 1)]);
        let none = Labels::new();
        let batch = [TaskGroup {
            job: crate::job::JobId(0),
            request: cpu(1000),
            constraints: &none,
            priority: 0,
            count: 3,
        }];
        room.pack(&batch, &LocalPolicy::default());
        let left = free_cpu_and_count(&room);
        assert_eq!(left, [(0, 1), (2000, 1), (4000, 1)]);
        assert_eq!(room.classes(), [class(&[])]);
    }

    #[test]
    fn constraints_count_only_the_classes_whose_labels_meet_them() {
        let room = ClusterRoom::new(
            vec![class(&[]), class(&[("ssd", "true")])],
            [group(0, 4000, 10), group(1, 2000, 3), group(7, 4000, 100)],
        );
        // The group of an unknown class is left out.
        assert_eq!(room.groups().len(), 2);
        let ssd: Labels = [("ssd".to_string(), "true".to_string())].into();
        assert_eq!(room.count(&cpu(1000), &ssd, 100), 6);
        assert_eq!(room.count(&cpu(1000), &Labels::new(), 100), 46);
        assert_eq!(room.count(&cpu(3000), &ssd, 100), 0);
    }

    #[test]
    fn counts_machine_by_machine_and_remembers_what_fits_nowhere() {
        let mut cell = slivers(2);
        let mut room = MachineRoom::new(std::slice::from_ref(&cell));
        let c0 = summary(0);
        let (small, large) = (job("s", 10, 1000, 0), job("l", 1, 2000, 0));
        // 2 cpu free summed, but one on each machine: two 1-cpu tasks, no
        // 2-cpu one.
        assert_eq!(room.fits(&small, &c0, 10), 2);
        assert_eq!(room.fits(&large, &c0, 10), 0);
        room.promise(&small, ClusterId(0), 1);
        assert_eq!(room.fits(&small, &c0, 10), 1);
        room.settle();
        assert_eq!(room.fits(&small, &c0, 10), 2, "promises given back");
        assert!(!room.hopeless(&large));
        room.fits_nowhere(&large);
        assert!(room.hopeless(&large));
        // A task placed changes nothing for it.
        cell.place(MachineId(0), &Resources::new(500, 0));
        room.refresh(ClusterId(0), &cell);
        assert!(room.hopeless(&large));
        // A machine gains room: looked at again.
        cell.release(MachineId(1), &Resources::new(3000, 0), 1);
        room.refresh(ClusterId(0), &cell);
        assert!(!room.hopeless(&large));
        assert_eq!(room.fits(&large, &c0, 10), 2);
    }

    #[test]
    fn a_cluster_of_unknown_room_is_asked_by_its_summed_capacity() {
        let mut room = MachineRoom::default();
        // Cluster 0 reports slivers; cluster 1 reports nothing.
        room.set(
            ClusterId(0),
            Some(ClusterRoom::new(vec![class(&[])], [group(0, 1000, 10)])),
        );
        room.set(ClusterId(1), None);
        let mut c1 = summary(1);
        c1.capacity = Resources::new(8000, 64 * GIB);
        let large = job("l", 4, 2000, 0);
        assert_eq!(room.fits(&large, &summary(0), 4), 0);
        // 8 cpu summed: four 2-cpu tasks.
        assert_eq!(room.fits(&large, &c1, 4), 4);
        // It might fit there: not remembered as fitting nowhere.
        room.fits_nowhere(&large);
        assert!(!room.hopeless(&large));
        // Once cluster 1 reports (full), it is.
        room.set(
            ClusterId(1),
            Some(ClusterRoom::new(vec![class(&[])], [group(0, 0, 2)])),
        );
        room.fits_nowhere(&large);
        assert!(room.hopeless(&large));
    }

    #[test]
    fn handed_over_tasks_take_room_until_the_next_report() {
        let mut room = MachineRoom::default();
        let report = || Some(ClusterRoom::new(vec![class(&[])], [group(0, 4000, 2)]));
        room.set(ClusterId(0), report());
        let j = job("j", 8, 2000, 0);
        assert_eq!(room.fits(&j, &summary(0), 8), 4);
        room.take(ClusterId(0), &cpu(2000), &Labels::new(), 3);
        room.settle();
        assert_eq!(room.fits(&j, &summary(0), 8), 1);
        // A report is the room from then on (the caller takes off what was
        // handed over and its agent had not taken in yet): the same report
        // with the three taken off is no growth.
        let mut seen = report();
        if let Some(r) = seen.as_mut() {
            r.take(&cpu(2000), &Labels::new(), 3);
        }
        assert!(!room.set(ClusterId(0), seen));
        assert_eq!(room.fits(&j, &summary(0), 8), 1);
        // Without them (placed, then finished) it is.
        assert!(room.set(ClusterId(0), report()));
        assert_eq!(room.fits(&j, &summary(0), 8), 4);
    }

    #[test]
    fn growth_is_a_machine_with_room_no_machine_of_its_class_had() {
        let before = ClusterRoom::new(
            vec![class(&[]), class(&[("ssd", "true")])],
            [group(0, 4000, 1), group(0, 0, 3), group(1, 1000, 2)],
        );
        // Fewer machines, less room: no growth.
        let less = ClusterRoom::new(
            vec![class(&[]), class(&[("ssd", "true")])],
            [group(0, 2000, 1), group(0, 0, 3), group(1, 1000, 1)],
        );
        assert!(!less.grew_from(&before));
        // More machines with room another had: no growth either (a task
        // that fit nowhere still fits nowhere).
        let same = ClusterRoom::new(
            vec![class(&[]), class(&[("ssd", "true")])],
            [group(0, 4000, 4), group(1, 1000, 2)],
        );
        assert!(!same.grew_from(&before));
        // An ssd machine with 2 cpu free: growth.
        let more = ClusterRoom::new(
            vec![class(&[]), class(&[("ssd", "true")])],
            [group(0, 0, 4), group(1, 2000, 1)],
        );
        assert!(more.grew_from(&before));
        // The classes numbered otherwise: compared by their shape.
        let renumbered = ClusterRoom::new(
            vec![class(&[("ssd", "true")]), class(&[])],
            [group(1, 4000, 1), group(0, 1000, 2)],
        );
        assert!(!renumbered.grew_from(&before));
        let new_class = ClusterRoom::new(vec![class(&[("gpu", "yes")])], [group(0, 0, 1)]);
        assert!(new_class.grew_from(&before));
    }
}
