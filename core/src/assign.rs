//! The global decision over time: which pending tasks go to which cluster,
//! in what order, and when tasks that clusters handed back are offered again.
//!
//! The global scheduler and the simulator both drive one [`PendingQueue`]:
//! tasks enter it when a job is accepted or a cluster hands them back, and
//! each [`PendingQueue::plan_with`] (a *pass*) takes jobs highest priority
//! first, then in submission order, and splits each job's pending tasks
//! over the ranked clusters: the best cluster gets as many as its machines
//! can place (a [`Room`](crate::room) says how many), the next best the
//! rest, and so on ([`Ranker`] does the ranking).
//! Time comes in as an argument (`now_ms`), so the rules are tested without
//! clocks and the simulator can replay them.
//!
//! # Which jobs a pass looks at
//!
//! Assignments only ever shrink what clusters can take, so a job that found
//! no cluster stays unassignable until capacity is freed. A pass therefore
//! looks at the *dirty* jobs (new, cut off by the last pass's budget) unless
//! something freed capacity since the last pass (a cluster came up or
//! reported more room, a cluster handed tasks back, the caller's periodic
//! retry): then it rescans every job with pending tasks, in the same order.
//! Either way the outcome is the one a full rescan would give.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Bound, Range};

use crate::cluster::{ClusterId, ClusterSummary};
use crate::filter::Rejection;
use crate::job::{Job, JobId};
use crate::rank::{ClusterRejection, Ranker, Ranking};
use crate::resources::{ResourceKind, Resources};
use crate::room::{Room, Summed};

/// Tasks every feasible cluster handed back are offered again, to the best
/// cluster as if none had, once this long has passed since the job's last
/// hand-back: capacity may have freed up since. Long enough that a full
/// cluster is not asked again and again (each refusal costs a round trip and
/// an etcd write per task).
pub const HAND_BACK_RETRY_MS: u64 = 30_000;

/// The order of a pass: highest priority first, then submission order.
type Order = (Reverse<u32>, JobId);

/// Tasks of one job that a pass hands to one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub job: JobId,
    pub cluster: ClusterId,
    /// Task indexes, ascending.
    pub indices: Vec<u32>,
    /// The clusters that had handed these tasks back before (so that an
    /// assignment that cannot be persisted goes back where it was).
    pub handed_back: Vec<ClusterId>,
}

/// What one pass decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    pub assignments: Vec<Assignment>,
    /// Jobs whose reason for waiting changed: the new reason, or `None` when
    /// all of the job's tasks looked at found a cluster.
    pub reasons: Vec<(JobId, Option<String>)>,
    /// For the job the pass was asked to trace: each ranking it decided on.
    pub trace: Vec<Decision>,
}

/// One decision about some tasks of a traced job, for explanations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub tasks: u32,
    pub ranking: Ranking,
    /// The cluster that got them; `None` when none could.
    pub chosen: Option<ClusterId>,
    /// No cluster had room: `chosen` gets them because evicting
    /// lower-priority tasks there makes room.
    pub preempting: bool,
}

/// A set of task indexes, kept as sorted, disjoint, non-adjacent ranges: a
/// new job's tasks are one range, so a million pending tasks cost a few
/// bytes until hand-backs cut them up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexSet {
    runs: Vec<Range<u32>>,
    len: u32,
}

impl IndexSet {
    pub fn range(r: Range<u32>) -> Self {
        let len = r.end.saturating_sub(r.start);
        IndexSet {
            runs: if len > 0 { vec![r] } else { Vec::new() },
            len,
        }
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, i: u32) -> bool {
        let k = self.runs.partition_point(|r| r.end <= i);
        self.runs.get(k).is_some_and(|r| r.start <= i)
    }

    /// Adds `i`; false if it was there.
    pub fn insert(&mut self, i: u32) -> bool {
        // The first run that ends at or after i.
        let k = self.runs.partition_point(|r| r.end < i);
        if let Some(r) = self.runs.get_mut(k) {
            if r.start <= i && i < r.end {
                return false;
            }
            if r.end == i {
                r.end += 1;
                // Now adjacent to the next run?
                if self.runs.get(k + 1).is_some_and(|n| n.start == i + 1) {
                    let next = self.runs.remove(k + 1);
                    self.runs[k].end = next.end;
                }
                self.len += 1;
                return true;
            }
            if r.start == i + 1 {
                r.start = i;
                self.len += 1;
                return true;
            }
        }
        self.runs.insert(k, i..i + 1);
        self.len += 1;
        true
    }

    /// Removes `i`; false if it was not there.
    pub fn remove(&mut self, i: u32) -> bool {
        let k = self.runs.partition_point(|r| r.end <= i);
        let Some(r) = self.runs.get_mut(k) else {
            return false;
        };
        if i < r.start {
            return false;
        }
        self.len -= 1;
        if r.start == i {
            r.start += 1;
            if r.start == r.end {
                self.runs.remove(k);
            }
        } else if r.end == i + 1 {
            r.end -= 1;
        } else {
            let tail = i + 1..r.end;
            r.end = i;
            self.runs.insert(k + 1, tail);
        }
        true
    }

    /// Takes the `n` lowest indexes.
    pub fn take_first(&mut self, n: u32) -> Vec<u32> {
        let n = n.min(self.len);
        let mut out = Vec::with_capacity(n as usize);
        while (out.len() as u32) < n {
            let want = n - out.len() as u32;
            let r = &mut self.runs[0];
            let end = r.start + want.min(r.end - r.start);
            out.extend(r.start..end);
            r.start = end;
            if r.start == r.end {
                self.runs.remove(0);
            }
        }
        self.len -= n;
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.runs.iter().flat_map(|r| r.clone())
    }
}

/// The pending tasks of one job.
#[derive(Debug, Clone, Default)]
struct PendingJob {
    priority: u32,
    /// Pending task indexes, grouped by the clusters that handed them back
    /// (sorted): each group is ranked once per pass.
    groups: BTreeMap<Vec<ClusterId>, IndexSet>,
    tasks: u32,
    last_hand_back_ms: Option<u64>,
    /// Why the last pass that looked at the job could not assign all of it.
    reason: Option<String>,
}

/// Pending tasks of every job, and the rules for assigning them.
#[derive(Debug, Clone, Default)]
pub struct PendingQueue {
    jobs: BTreeMap<JobId, PendingJob>,
    /// The same jobs in pass order.
    order: BTreeSet<Order>,
    /// Jobs the next pass must look at.
    dirty: BTreeSet<Order>,
    /// The next pass looks at every job with pending tasks.
    rescan: bool,
    /// A rescan cut short by its pass's budget: the jobs from here on (in
    /// pass order) are still to be looked at.
    sweep: Option<Bound<Order>>,
    tasks: u64,
}

impl PendingQueue {
    pub fn new() -> Self {
        PendingQueue::default()
    }

    /// Pending tasks over all jobs.
    pub fn tasks(&self) -> u64 {
        self.tasks
    }

    /// Pending tasks of `job`.
    pub fn job_tasks(&self, job: JobId) -> u32 {
        self.jobs.get(&job).map_or(0, |j| j.tasks)
    }

    /// Jobs with pending tasks.
    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Why the last pass could not assign all of `job`'s pending tasks.
    pub fn reason(&self, job: JobId) -> Option<&str> {
        self.jobs.get(&job)?.reason.as_deref()
    }

    /// `job`'s pending tasks, by the clusters that handed them back.
    pub fn groups(&self, job: JobId) -> impl Iterator<Item = (&[ClusterId], &IndexSet)> {
        self.jobs
            .get(&job)
            .into_iter()
            .flat_map(|j| j.groups.iter().map(|(k, v)| (k.as_slice(), v)))
    }

    /// A new job's tasks `0..tasks`, all pending.
    pub fn add_job(&mut self, job: JobId, priority: u32, tasks: u32) {
        if tasks == 0 {
            return;
        }
        let j = self.jobs.entry(job).or_default();
        j.priority = priority;
        let group = j.groups.entry(Vec::new()).or_default();
        let before = group.len();
        if group.is_empty() {
            *group = IndexSet::range(0..tasks);
        } else {
            for i in 0..tasks {
                group.insert(i);
            }
        }
        let added = group.len() - before;
        j.tasks += added;
        self.tasks += u64::from(added);
        self.order.insert((Reverse(priority), job));
        self.dirty.insert((Reverse(priority), job));
    }

    /// One pending task, which the clusters `handed_back` could not place
    /// (read back from the store, or put back after a failed write).
    pub fn add(&mut self, job: JobId, priority: u32, index: u32, handed_back: &[ClusterId]) {
        let mut key = handed_back.to_vec();
        key.sort();
        key.dedup();
        let j = self.jobs.entry(job).or_default();
        j.priority = priority;
        if j.groups.values().any(|g| g.contains(index)) {
            return;
        }
        j.groups.entry(key).or_default().insert(index);
        j.tasks += 1;
        self.tasks += 1;
        self.order.insert((Reverse(priority), job));
        self.dirty.insert((Reverse(priority), job));
    }

    /// A task a cluster handed back at `now_ms`; `handed_back` includes
    /// that cluster. The capacity it was promised is free again, so the next
    /// pass rescans every job.
    pub fn hand_back(
        &mut self,
        job: JobId,
        priority: u32,
        index: u32,
        handed_back: &[ClusterId],
        now_ms: u64,
    ) {
        self.add(job, priority, index, handed_back);
        if let Some(j) = self.jobs.get_mut(&job) {
            j.last_hand_back_ms = Some(now_ms);
        }
        self.rescan = true;
    }

    /// `index` of `job` is no longer pending; false if it was not.
    pub fn remove(&mut self, job: JobId, index: u32) -> bool {
        let Some(j) = self.jobs.get_mut(&job) else {
            return false;
        };
        let mut found = None;
        for (k, g) in j.groups.iter_mut() {
            if g.remove(index) {
                found = Some((k.clone(), g.is_empty()));
                break;
            }
        }
        let Some((key, empty)) = found else {
            return false;
        };
        if empty {
            j.groups.remove(&key);
        }
        j.tasks -= 1;
        self.tasks -= 1;
        if j.tasks == 0 {
            let priority = j.priority;
            self.forget(job, priority);
        }
        true
    }

    /// `job` has no pending task left.
    fn forget(&mut self, job: JobId, priority: u32) {
        self.jobs.remove(&job);
        self.order.remove(&(Reverse(priority), job));
        self.dirty.remove(&(Reverse(priority), job));
    }

    /// Removes all of `job`'s pending tasks (cancelled); returns how many.
    pub fn remove_job(&mut self, job: JobId) -> u32 {
        let Some(j) = self.jobs.get(&job) else {
            return 0;
        };
        let (tasks, priority) = (j.tasks, j.priority);
        self.forget(job, priority);
        self.tasks -= u64::from(tasks);
        tasks
    }

    /// Puts an assignment that could not be persisted back.
    pub fn requeue(&mut self, a: &Assignment, priority: u32) {
        for &i in &a.indices {
            self.add(a.job, priority, i, &a.handed_back);
        }
    }

    /// Makes the next pass look at every job with pending tasks (capacity
    /// may have been freed).
    pub fn mark_rescan(&mut self) {
        self.rescan = true;
    }

    /// Whether the next pass has anything to look at.
    pub fn has_work(&self) -> bool {
        !self.jobs.is_empty() && (self.rescan || self.sweep.is_some() || !self.dirty.is_empty())
    }

    /// One pass, each cluster asked by its summed unclaimed capacity
    /// ([`Summed`]): see [`PendingQueue::plan_with`].
    pub fn plan<'j>(
        &mut self,
        ranker: &Ranker<'_>,
        job: &dyn Fn(JobId) -> Option<&'j Job>,
        summaries: &mut [ClusterSummary],
        now_ms: u64,
        budget: u64,
        trace: Option<JobId>,
    ) -> Pass {
        self.plan_with(ranker, job, summaries, now_ms, budget, trace, &mut Summed)
    }

    /// One pass: assigns up to `budget` pending tasks to clusters, taking
    /// them out of the queue and counting them as queued in `summaries`
    /// (indexed by `ClusterId`). `job` looks a job up by id; a job it does
    /// not know is dropped from the queue. The rankings behind `trace`'s
    /// decisions come back in [`Pass::trace`].
    ///
    /// `room` says how many tasks each cluster can actually place: the
    /// best-ranked cluster that can place at least one gets as many as it
    /// can, the next the rest; clusters that can place none are ruled out
    /// ("no machine with room for it"), and a job `room` knows fits nowhere
    /// is not looked at. A job whose band may evict others is split by
    /// summed capacity instead ([`Summed`]; see `Evicting`).
    #[allow(clippy::too_many_arguments)]
    pub fn plan_with<'j>(
        &mut self,
        ranker: &Ranker<'_>,
        job: &dyn Fn(JobId) -> Option<&'j Job>,
        summaries: &mut [ClusterSummary],
        now_ms: u64,
        budget: u64,
        trace: Option<JobId>,
        room: &mut dyn Room,
    ) -> Pass {
        if std::mem::take(&mut self.rescan) {
            self.sweep = Some(Bound::Unbounded);
        }
        let mut pass = Pass::default();
        let mut budget = budget;
        // The dirty jobs and the rest of a rescan, merged in pass order;
        // what the budget leaves is where the next pass starts.
        while budget > 0 {
            let swept = self
                .sweep
                .and_then(|from| self.order.range((from, Bound::Unbounded)).next().copied());
            let key = match (swept, self.dirty.first().copied()) {
                (None, None) => {
                    self.sweep = None;
                    break;
                }
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).expect("one of them"),
            };
            if swept == Some(key) {
                self.sweep = Some(Bound::Excluded(key));
            }
            self.dirty.remove(&key);
            self.plan_job(
                key,
                ranker,
                job,
                summaries,
                now_ms,
                &mut budget,
                trace,
                &mut pass,
                room,
            );
        }
        pass
    }

    /// One job's part of a pass.
    #[allow(clippy::too_many_arguments)]
    fn plan_job<'j>(
        &mut self,
        key: Order,
        ranker: &Ranker<'_>,
        job: &dyn Fn(JobId) -> Option<&'j Job>,
        summaries: &mut [ClusterSummary],
        now_ms: u64,
        budget: &mut u64,
        trace: Option<JobId>,
        pass: &mut Pass,
        room: &mut dyn Room,
    ) {
        let id = key.1;
        let Some(spec) = job(id) else {
            self.remove_job(id);
            return;
        };
        let mut evicting;
        let room: &mut dyn Room = if ranker.bands().evicts(spec.spec.priority) {
            evicting = Evicting(room);
            &mut evicting
        } else {
            room
        };
        let Some(j) = self.jobs.get_mut(&id) else {
            return;
        };
        // Found to fit nowhere, and nothing freed since: its reason stands
        // (a job of the same shape not looked at yet is, once, for its
        // reason).
        if trace != Some(id) && j.reason.is_some() && room.hopeless(spec) {
            return;
        }
        let request = spec.spec.request;
        let retry = j
            .last_hand_back_ms
            .is_none_or(|t| now_ms >= t.saturating_add(HAND_BACK_RETRY_MS));
        let mut why = None;
        let mut groups = std::mem::take(&mut j.groups);
        for (handed_back, group) in groups.iter_mut() {
            while !group.is_empty() {
                if *budget == 0 {
                    // Cut short: the next pass carries on with this job.
                    self.dirty.insert(key);
                    break;
                }
                let mut ranking = ranker.rank_best_first(spec, summaries, handed_back);
                if ranking.best().is_none() && !handed_back.is_empty() && retry {
                    ranking = ranker.rank_best_first(spec, summaries, &[]);
                }
                let left = group.len();
                let fit = ask_room(&*room, spec, &mut ranking, summaries, left);
                let preempting = match ranking.best() {
                    Some(_) => None,
                    None => ranker.preemption_target(spec, &ranking, summaries),
                };
                if let Some((target, fit)) = preempting {
                    // No cluster has room, but evicting lower-priority work
                    // in `target` would make some: its local agent decides
                    // which tasks go.
                    let s = &mut summaries[target.0 as usize];
                    let take = fit.clamp(1, u64::from(left)).min(*budget);
                    let total = request.times(take);
                    let displaced = total.saturating_sub(&s.unclaimed());
                    s.claim_preemptible(spec.spec.priority, displaced, ranker.bands());
                    if trace == Some(id) {
                        pass.trace.push(Decision {
                            tasks: take as u32,
                            ranking: ranking.sorted(),
                            chosen: Some(target),
                            preempting: true,
                        });
                    }
                    s.queued = s.queued.saturating_add(&total);
                    s.queue_len += take;
                    *budget -= take;
                    j.tasks -= take as u32;
                    self.tasks -= take;
                    pass.assignments.push(Assignment {
                        job: id,
                        cluster: target,
                        indices: group.take_first(take as u32),
                        handed_back: handed_back.clone(),
                    });
                    continue;
                }
                let Some(best) = ranking.best() else {
                    room.fits_nowhere(spec);
                    why = Some(unassignable_reason(&ranking, summaries));
                    if trace == Some(id) {
                        pass.trace.push(Decision {
                            tasks: left,
                            ranking: ranking.sorted(),
                            chosen: None,
                            preempting: false,
                        });
                    }
                    break;
                };
                let s = &mut summaries[best.0 as usize];
                let take = fit.min(*budget);
                room.promise(spec, best, take);
                if trace == Some(id) {
                    pass.trace.push(Decision {
                        tasks: take as u32,
                        ranking: ranking.sorted(),
                        chosen: Some(best),
                        preempting: false,
                    });
                }
                s.queued = s.queued.saturating_add(&request.times(take));
                s.queue_len += take;
                *budget -= take;
                j.tasks -= take as u32;
                self.tasks -= take;
                pass.assignments.push(Assignment {
                    job: id,
                    cluster: best,
                    indices: group.take_first(take as u32),
                    handed_back: handed_back.clone(),
                });
            }
        }
        groups.retain(|_, g| !g.is_empty());
        j.groups = groups;
        if j.tasks == 0 {
            if j.reason.is_some() {
                pass.reasons.push((id, None));
            }
            let priority = j.priority;
            self.forget(id, priority);
            return;
        }
        if why != j.reason {
            j.reason = why.clone();
            pass.reasons.push((id, why));
        }
    }
}

/// The room for a job whose band may evict others: each cluster as far as
/// its summed capacity goes ([`Summed`]), whatever its machines hold, since
/// a cluster without room may make some by eviction and only its local
/// agent knows which tasks go. What its tasks are handed still takes the
/// room they find, and it is never remembered as fitting nowhere (an
/// eviction makes room without any machine's free capacity growing first).
struct Evicting<'r>(&'r mut dyn Room);

impl Room for Evicting<'_> {
    fn fits(&self, job: &Job, c: &ClusterSummary, want: u64) -> u64 {
        Summed.fits(job, c, want)
    }

    fn promise(&mut self, job: &Job, c: ClusterId, n: u64) {
        self.0.promise(job, c, n);
    }
}

/// `ranking` (of `want` of `job`'s tasks) as a pass decides on it, for
/// explanations: the clusters whose machines cannot place one of them, as
/// `room` says, ruled out, best first, until one can. Returns how many
/// that one can place.
pub fn ask_room_as_a_pass(
    ranker: &Ranker<'_>,
    room: &dyn Room,
    job: &Job,
    ranking: &mut Ranking,
    summaries: &[ClusterSummary],
    want: u32,
) -> u64 {
    if ranker.bands().evicts(job.spec.priority) {
        ask_room(&Summed, job, ranking, summaries, want)
    } else {
        ask_room(room, job, ranking, summaries, want)
    }
}

/// Asks `room` about the ranked clusters, best first, until one can place
/// at least one of `want` tasks; those that can place none move to the
/// filtered clusters (in cluster order). Returns how many the first one
/// can place (0 when none can). `ranking` needs only its best cluster in
/// front ([`Ranker::rank_best_first`]); the next best is found when the
/// best refuses.
fn ask_room(
    room: &dyn Room,
    job: &Job,
    ranking: &mut Ranking,
    summaries: &[ClusterSummary],
    want: u32,
) -> u64 {
    let mut moved: Vec<ClusterRejection> = Vec::new();
    let mut fit = 0;
    while let Some(s) = ranking.ranked.first() {
        fit = room.fits(job, &summaries[s.cluster.0 as usize], u64::from(want));
        if fit > 0 {
            break;
        }
        let s = ranking.ranked.swap_remove(0);
        moved.push(ClusterRejection {
            cluster: s.cluster,
            filter: "machine_room",
            rejection: Rejection::NoMachineWithRoom,
        });
        ranking.best_to_front();
    }
    if !moved.is_empty() {
        // Merged into the filtered clusters, which stay in cluster order.
        moved.sort_unstable_by_key(|f| f.cluster);
        let before = std::mem::take(&mut ranking.filtered);
        ranking.filtered.reserve(before.len() + moved.len());
        let (mut a, mut b) = (before.into_iter().peekable(), moved.into_iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.cluster <= y.cluster => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, _) => b.next(),
            };
            match next {
                Some(f) => ranking.filtered.push(f),
                None => break,
            }
        }
    }
    fit
}

/// How many tasks of `request` fit in `free`, resource by resource.
pub fn fit_count(free: &Resources, request: &Resources) -> u64 {
    ResourceKind::ALL
        .iter()
        .filter(|&&k| request.get(k) > 0)
        .map(|&k| free.get(k) / request.get(k))
        .min()
        .unwrap_or(u64::MAX)
}

/// Why no cluster can take a job's tasks, for events, `describe` and the
/// simulator's report: the clusters' rejections, counted, most common first.
pub fn unassignable_reason(ranking: &Ranking, summaries: &[ClusterSummary]) -> String {
    if summaries.is_empty() {
        return "no cluster has registered yet".to_string();
    }
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for f in &ranking.filtered {
        *counts.entry(f.rejection.summary()).or_insert(0) += 1;
    }
    let mut parts: Vec<(String, u32)> = counts.into_iter().collect();
    parts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let list: Vec<String> = parts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!(
        "0/{} clusters can take it: {}",
        summaries.len(),
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locality::LocationId;
    use crate::policy::Policy;
    use crate::test_support::{cluster_summary, east_west, job};

    /// Clusters 0 (east) and 1 (west) of `cpu` millicores each.
    fn clusters(cpu: [u64; 2]) -> Vec<ClusterSummary> {
        let mut east = cluster_summary(0, cpu[0], 1 << 40);
        east.location = LocationId(0);
        let mut west = cluster_summary(1, cpu[1], 1 << 40);
        west.location = LocationId(1);
        vec![east, west]
    }

    fn jobs(specs: &[(u32, u32, u64, Option<u32>)]) -> Vec<Job> {
        specs
            .iter()
            .enumerate()
            .map(|(i, &(tasks, priority, cpu, loc))| {
                let mut j = job(&format!("j{i}"), tasks, cpu, 1 << 20);
                j.id = JobId(i as u32);
                j.spec.priority = priority;
                j.locality = loc.map(LocationId);
                j
            })
            .collect()
    }

    fn counts(p: &Pass) -> Vec<(u32, u32, usize)> {
        p.assignments
            .iter()
            .map(|a| (a.job.0, a.cluster.0, a.indices.len()))
            .collect()
    }

    #[test]
    fn index_sets_keep_ranges() {
        let mut s = IndexSet::range(0..10);
        assert!(s.remove(4));
        assert!(!s.remove(4));
        assert_eq!(s.len(), 9);
        assert_eq!(s.runs, [0..4, 5..10]);
        assert!(s.insert(4));
        assert_eq!(s.runs, vec![0..10]);
        assert_eq!(s.take_first(3), [0, 1, 2]);
        assert!(s.insert(20));
        assert!(s.insert(19));
        assert!(s.insert(0));
        assert_eq!(s.runs, [0..1, 3..10, 19..21]);
        assert_eq!(s.take_first(4), [0, 3, 4, 5]);
        assert_eq!(s.iter().collect::<Vec<_>>(), [6, 7, 8, 9, 19, 20]);
        assert!(s.contains(19) && !s.contains(18));
        assert_eq!(s.len(), 6);
    }

    #[test]
    fn a_full_cluster_takes_production_where_eviction_displaces_least() {
        // Both clusters hold 10 cpu, all of it batch (priority 2000); west
        // has 1 cpu unclaimed besides. Production tasks of 2 cpu fit
        // nowhere without eviction. One task displaces 2 cpu of batch in
        // east (20% of it), 1 cpu in west (10%): west. West can hold 5
        // (1 free + 9 of batch = 10 cpu); the job asks 6: the 6th goes
        // east (its 5 tasks claimed west's batch capacity).
        let l = east_west();
        let policy = Policy::default();
        let r = Ranker::new(&policy, &l);
        let mut summaries = clusters([10_000, 10_000]);
        summaries[0].allocated = Resources::new(10_000, 0);
        summaries[0].by_priority = vec![(2000, Resources::new(10_000, 0))];
        summaries[1].allocated = Resources::new(9_000, 0);
        summaries[1].by_priority = vec![(2000, Resources::new(9_000, 0))];
        let js = jobs(&[(6, 7000, 2000, None), (1, 3000, 1000, None)]);
        let mut q = PendingQueue::new();
        for j in &js {
            q.add_job(j.id, j.spec.priority, j.spec.tasks);
        }
        let lookup = |id: JobId| js.get(id.0 as usize);
        let p = q.plan(&r, &lookup, &mut summaries, 0, 100, Some(JobId(0)));
        assert_eq!(counts(&p), [(0, 1, 5), (0, 0, 1)]);
        assert!(p.trace.iter().all(|d| d.preempting));
        // Batch may not evict batch: the batch job waits.
        assert_eq!(q.job_tasks(JobId(1)), 1);
        assert!(q.reason(JobId(1)).unwrap().contains("cluster out of cpu"));
    }

    #[test]
    fn a_job_fills_its_best_cluster_then_spills_to_the_next() {
        // east holds 8 cpu: 8 of 12 one-cpu tasks stay local (locality 4 x
        // 1000 outranks west's 4 x 125), the other 4 spill west.
        let l = east_west();
        let policy = Policy::default();
        let r = Ranker::new(&policy, &l);
        let js = jobs(&[(12, 0, 1000, Some(0))]);
        let mut q = PendingQueue::new();
        q.add_job(JobId(0), 0, 12);
        let mut s = clusters([8000, 100_000]);
        let p = q.plan(&r, &|id| js.get(id.0 as usize), &mut s, 0, 1000, None);
        assert_eq!(counts(&p), [(0, 0, 8), (0, 1, 4)]);
        assert_eq!(p.assignments[1].indices, [8, 9, 10, 11]);
        assert_eq!(q.tasks(), 0);
        assert_eq!(s[0].queue_len, 8);
        assert!(!q.has_work());
    }

    /// A room that holds `holds[c]` tasks in cluster `c`, whatever the job.
    struct Holds(Vec<u64>);

    impl Room for Holds {
        fn fits(&self, _: &Job, c: &ClusterSummary, want: u64) -> u64 {
            self.0[c.id.0 as usize].min(want)
        }

        fn promise(&mut self, _: &Job, c: ClusterId, n: u64) {
            let held = &mut self.0[c.0 as usize];
            *held = held.saturating_sub(n);
        }
    }

    #[test]
    fn the_split_follows_what_each_cluster_can_place() {
        // East ranks first (locality) and sums room for 8 one-cpu tasks,
        // but its machines hold 3: 3 go east, the other 9 west. With no
        // room anywhere, the job waits, both clusters ruled out.
        let l = east_west();
        let policy = Policy::default();
        let r = Ranker::new(&policy, &l);
        let js = jobs(&[(12, 0, 1000, Some(0)), (2, 0, 1000, None)]);
        let get = |id: JobId| js.get(id.0 as usize);
        let mut q = PendingQueue::new();
        q.add_job(JobId(0), 0, 12);
        let mut s = clusters([8000, 100_000]);
        let mut room = Holds(vec![3, 9]);
        let p = q.plan_with(&r, &get, &mut s, 0, 1000, None, &mut room);
        assert_eq!(counts(&p), [(0, 0, 3), (0, 1, 9)]);
        q.add_job(JobId(1), 0, 2);
        let p = q.plan_with(&r, &get, &mut s, 0, 1000, None, &mut room);
        assert!(p.assignments.is_empty());
        assert_eq!(
            p.reasons,
            [(
                JobId(1),
                Some("0/2 clusters can take it: 2 no machine with room for it".into())
            )]
        );
    }

    #[test]
    fn a_job_that_may_evict_is_split_by_summed_capacity() {
        // No machine has room, but production (6000) may evict batch and
        // best effort: east, ranked first, sums room for all 4 and gets
        // them (its local agent evicts), and the room is still promised
        // what it had. A best-effort job waits.
        let l = east_west();
        let policy = Policy::default();
        let r = Ranker::new(&policy, &l);
        let js = jobs(&[(4, 6000, 1000, Some(0)), (4, 0, 1000, Some(0))]);
        let get = |id: JobId| js.get(id.0 as usize);
        let mut q = PendingQueue::new();
        q.add_job(JobId(0), 6000, 4);
        q.add_job(JobId(1), 0, 4);
        let mut s = clusters([8000, 8000]);
        let mut room = Holds(vec![1, 0]);
        let p = q.plan_with(&r, &get, &mut s, 0, 1000, None, &mut room);
        assert_eq!(counts(&p), [(0, 0, 4)]);
        assert_eq!(room.0, [0, 0]);
    }

    #[test]
    fn priority_first_and_the_budget_carries_over() {
        let l = east_west();
        let policy = Policy::default();
        let r = Ranker::new(&policy, &l);
        let js = jobs(&[(5, 0, 100, None), (5, 500, 100, None)]);
        let mut q = PendingQueue::new();
        q.add_job(JobId(0), 0, 5);
        q.add_job(JobId(1), 500, 5);
        let mut s = clusters([100_000, 0]);
        let get = |id: JobId| js.get(id.0 as usize);
        let p = q.plan(&r, &get, &mut s, 0, 7, None);
        assert_eq!(counts(&p), [(1, 0, 5), (0, 0, 2)]);
        let p = q.plan(&r, &get, &mut s, 0, 7, None);
        assert_eq!(counts(&p), [(0, 0, 3)]);
    }

    #[test]
    fn handed_back_tasks_skip_the_cluster_until_the_retry_time() {
        let l = east_west();
        let policy = Policy::default();
        let r = Ranker::new(&policy, &l);
        let js = jobs(&[(4, 0, 1000, Some(0))]);
        let get = |id: JobId| js.get(id.0 as usize);
        let mut q = PendingQueue::new();
        q.add_job(JobId(0), 0, 4);
        // Only east is up.
        let mut s = clusters([100_000, 100_000]);
        s[1].up = false;
        let p = q.plan(&r, &get, &mut s, 0, 100, None);
        assert_eq!(counts(&p), [(0, 0, 4)]);
        // East hands two back at t = 1 s: nothing else can take them.
        q.hand_back(JobId(0), 0, 1, &[ClusterId(0)], 1000);
        q.hand_back(JobId(0), 0, 3, &[ClusterId(0)], 1000);
        assert!(q.has_work());
        let mut s = clusters([100_000, 100_000]);
        s[1].up = false;
        let p = q.plan(&r, &get, &mut s, 2000, 100, None);
        assert!(p.assignments.is_empty());
        assert_eq!(
            p.reasons,
            [(
                JobId(0),
                Some(
                    "0/2 clusters can take it: 1 cluster could not place it, 1 cluster down".into()
                )
            )]
        );
        // Not yet: 30 s after the hand-back, east is asked again.
        q.mark_rescan();
        let p = q.plan(&r, &get, &mut s, 1000 + HAND_BACK_RETRY_MS - 1, 100, None);
        assert!(p.assignments.is_empty() && p.reasons.is_empty());
        q.mark_rescan();
        let p = q.plan(&r, &get, &mut s, 1000 + HAND_BACK_RETRY_MS, 100, None);
        assert_eq!(counts(&p), [(0, 0, 2)]);
        assert_eq!(p.assignments[0].indices, [1, 3]);
        assert_eq!(p.assignments[0].handed_back, [ClusterId(0)]);
        assert_eq!(p.reasons, [(JobId(0), None)]);
    }

    #[test]
    fn an_unassignable_job_waits_until_capacity_is_freed() {
        let l = east_west();
        let policy = Policy::default();
        let r = Ranker::new(&policy, &l);
        let js = jobs(&[(4, 0, 1000, None), (2, 0, 1000, None)]);
        let get = |id: JobId| js.get(id.0 as usize);
        let mut q = PendingQueue::new();
        q.add_job(JobId(0), 0, 4);
        q.add_job(JobId(1), 0, 2);
        let mut s = clusters([4000, 0]);
        s[1].up = false;
        let p = q.plan(&r, &get, &mut s, 0, 100, None);
        assert_eq!(counts(&p), [(0, 0, 4)]);
        assert!(p.reasons[0].1.as_ref().unwrap().contains("out of cpu"));
        // Nothing freed: the next pass has nothing to look at.
        assert!(!q.has_work());
        // East hands one of job 0's back: job 1 is looked at again, in order.
        q.hand_back(JobId(0), 0, 2, &[ClusterId(0)], 5);
        let mut s = clusters([4000, 0]);
        s[1].up = false;
        s[0].allocated = Resources::new(3000, 0);
        let p = q.plan(&r, &get, &mut s, 5, 100, None);
        assert_eq!(counts(&p), [(1, 0, 1)]);
        assert_eq!(q.job_tasks(JobId(0)), 1);
        assert_eq!(q.job_tasks(JobId(1)), 1);
    }

    #[test]
    fn requeue_and_remove() {
        let mut q = PendingQueue::new();
        q.add_job(JobId(3), 7, 3);
        assert!(q.remove(JobId(3), 1));
        assert!(!q.remove(JobId(3), 1));
        q.requeue(
            &Assignment {
                job: JobId(3),
                cluster: ClusterId(0),
                indices: vec![1],
                handed_back: vec![ClusterId(2)],
            },
            7,
        );
        let groups: Vec<(Vec<ClusterId>, Vec<u32>)> = q
            .groups(JobId(3))
            .map(|(k, v)| (k.to_vec(), v.iter().collect()))
            .collect();
        assert_eq!(
            groups,
            [(vec![], vec![0, 2]), (vec![ClusterId(2)], vec![1])]
        );
        assert_eq!(q.remove_job(JobId(3)), 3);
        assert_eq!(q.tasks(), 0);
    }
}
