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
//!    first machine.

use crate::resources::Resources;

/// A task running on a machine, as preemption sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    /// The caller's handle for the task.
    pub id: usize,
    pub priority: u32,
    pub request: Resources,
    /// When it started, ms since the epoch (for the time a kill loses).
    pub started_unix_ms: i64,
}

/// A machine where eviction could make room.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The caller's handle for the machine.
    pub machine: usize,
    /// Its unallocated resources now.
    pub free: Resources,
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
        .copied()
        .collect();
    let mut room = pool
        .iter()
        .fold(free, |acc, r| acc.saturating_add(&r.request));
    if !need.fits_in(&room) {
        return None;
    }
    // Reprieve the most valuable first: highest priority, then the one
    // running longest (an earlier start loses more work), then by id.
    pool.sort_by_key(|r| (std::cmp::Reverse(r.priority), r.started_unix_ms, r.id));
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
        let e = Eviction {
            machine: c.machine,
            highest_priority: victims.iter().map(|v| v.priority).max().unwrap_or(0),
            time_lost_ms: victims
                .iter()
                .map(|v| (now_unix_ms - v.started_unix_ms).max(0))
                .sum(),
            victims: victims.iter().map(|v| v.id).collect(),
        };
        let key = |e: &Eviction| (e.victims.len(), e.highest_priority, e.time_lost_ms);
        if best.as_ref().is_none_or(|b| key(&e) < key(b)) {
            best = Some(e);
        }
    }
    best
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
}
