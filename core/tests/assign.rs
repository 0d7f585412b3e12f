//! Properties of the global decision over time (`sched_core::assign`), on
//! random jobs, clusters, budgets and hand-backs:
//!
//! - no task is lost or handed out twice: every task is pending, or in
//!   exactly one assignment not handed back;
//! - a pass never assigns more than its budget, and never gives a cluster
//!   more than its unclaimed capacity holds, except the one task that is
//!   always allowed (the split takes at least one);
//! - a cluster that handed a task back is not given it again before the
//!   retry time;
//! - passes stop: with no hand-backs and nothing freed, repeated passes
//!   assign nothing new once the queue says it has no work, and every job
//!   still waiting has a reason.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use sched_core::assign::{fit_count, PendingQueue, HAND_BACK_RETRY_MS};
use sched_core::cluster::{ClassSummary, ClusterId, ClusterSummary};
use sched_core::job::{Job, JobId, JobSpec};
use sched_core::locality::{Locality, LocationId};
use sched_core::policy::Policy;
use sched_core::rank::Ranker;
use sched_core::resources::Resources;

fn cluster(id: u32, machines: u32, cpu: u64, up: bool) -> ClusterSummary {
    let capacity = Resources::new(cpu * 1000, 64 << 30);
    ClusterSummary {
        id: ClusterId(id),
        name: format!("c{id}"),
        location: LocationId(id % 2),
        up,
        classes: vec![ClassSummary {
            capacity,
            labels: BTreeMap::new(),
            count: machines,
        }],
        capacity: capacity.times(u64::from(machines)),
        allocated: Resources::ZERO,
        queued: Resources::ZERO,
        queue_len: 0,
        by_priority: Vec::new(),
    }
}

fn job(id: u32, tasks: u32, cpu_millis: u64, priority: u32) -> Job {
    Job {
        id: JobId(id),
        spec: JobSpec {
            name: format!("j{id}"),
            tasks,
            request: Resources::new(cpu_millis, 1 << 30),
            priority,
            locality: None,
            constraints: BTreeMap::new(),
            command: Vec::new(),
            restart: Default::default(),
            ttl_after_finished: None,
            tenant: sched_core::job::DEFAULT_TENANT.to_string(),
            band: None,
        },
        locality: Some(LocationId(id % 2)),
    }
}

prop_compose! {
    fn world()(
        clusters in prop::collection::vec((1u32..20, 1u64..32, prop::bool::weighted(0.9)), 1..5),
        jobs in prop::collection::vec((1u32..60, 1u64..8, 0u32..3), 1..25),
        budget in 1u64..200,
        hand_backs in prop::collection::vec((0usize..1000, 0u32..4), 0..40),
    ) -> (Vec<ClusterSummary>, Vec<Job>, u64, Vec<(usize, u32)>) {
        let clusters = clusters
            .into_iter()
            .enumerate()
            .map(|(i, (m, cpu, up))| cluster(i as u32, m, cpu, up))
            .collect();
        let jobs = jobs
            .into_iter()
            .enumerate()
            .map(|(i, (n, cpu, prio))| job(i as u32, n, cpu * 500, prio * 100))
            .collect();
        (clusters, jobs, budget, hand_backs)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn tasks_are_conserved_and_limits_hold((clusters, jobs, budget, hand_backs) in world()) {
        let locality = Locality::new(vec!["a".into(), "b".into()], &[(LocationId(0), LocationId(1), 20)]);
        let policy = Policy::default();
        let ranker = Ranker::new(&policy, &locality);
        let lookup = |id: JobId| jobs.get(id.0 as usize);
        let mut summaries = clusters.clone();
        let mut queue = PendingQueue::new();
        for j in &jobs {
            queue.add_job(j.id, j.spec.priority, j.spec.tasks);
        }
        let total: u64 = jobs.iter().map(|j| u64::from(j.spec.tasks)).sum();
        // Where each assigned task is, and who handed it back when.
        let mut held: BTreeMap<(JobId, u32), ClusterId> = BTreeMap::new();
        let mut refused: BTreeMap<(JobId, u32), (BTreeSet<ClusterId>, u64)> = BTreeMap::new();
        let mut now_ms = 0u64;
        let mut hand_backs = hand_backs.into_iter();
        for _ in 0..60 {
            if !queue.has_work() {
                // Something frees capacity now and then: a hand-back.
                let Some((pick, advance)) = hand_backs.next() else { break };
                now_ms += u64::from(advance) * HAND_BACK_RETRY_MS / 2;
                if held.is_empty() {
                    continue;
                }
                let (&(job, index), &cluster) = held.iter().nth(pick % held.len()).unwrap();
                held.remove(&(job, index));
                let request = jobs[job.0 as usize].spec.request;
                let s = &mut summaries[cluster.0 as usize];
                s.queued = s.queued.saturating_sub(&request);
                s.queue_len -= 1;
                let entry = refused.entry((job, index)).or_default();
                entry.0.insert(cluster);
                entry.1 = now_ms;
                let tried: Vec<ClusterId> = entry.0.iter().copied().collect();
                queue.hand_back(job, jobs[job.0 as usize].spec.priority, index, &tried, now_ms);
                continue;
            }
            let before: Vec<Resources> = summaries.iter().map(ClusterSummary::unclaimed).collect();
            let pass = queue.plan(&ranker, &lookup, &mut summaries, now_ms, budget, None);
            let assigned: u64 = pass.assignments.iter().map(|a| a.indices.len() as u64).sum();
            prop_assert!(assigned <= budget, "{assigned} assigned on a budget of {budget}");
            // Per cluster: what it got in the pass fits its unclaimed
            // capacity, but for the one task a split always takes.
            let mut got: BTreeMap<ClusterId, Vec<(Resources, u64)>> = BTreeMap::new();
            for a in &pass.assignments {
                prop_assert!(clusters[a.cluster.0 as usize].up, "a task went to a down cluster");
                let request = jobs[a.job.0 as usize].spec.request;
                got.entry(a.cluster).or_default().push((request, a.indices.len() as u64));
                for &i in &a.indices {
                    prop_assert!(held.insert((a.job, i), a.cluster).is_none(), "task {:?}/{i} handed out twice", a.job);
                    if let Some((tried, at)) = refused.get(&(a.job, i)) {
                        prop_assert!(
                            !tried.contains(&a.cluster) || now_ms >= at + HAND_BACK_RETRY_MS,
                            "task {:?}/{i} back on {:?}, which handed it back, before the retry time",
                            a.job, a.cluster
                        );
                    }
                }
            }
            for (c, parts) in got {
                let mut free = before[c.0 as usize];
                for (request, n) in parts {
                    let fit = fit_count(&free, &request);
                    prop_assert!(n <= fit.max(1), "{n} tasks given to {c:?} where {fit} fit");
                    free = free.saturating_sub(&request.times(n));
                }
            }
            prop_assert_eq!(queue.tasks() + held.len() as u64, total, "tasks lost or made up");
        }
        // Settled: every waiting job says why.
        if !queue.has_work() {
            for j in &jobs {
                if queue.job_tasks(j.id) > 0 {
                    prop_assert!(queue.reason(j.id).is_some(), "job {:?} waits with no reason", j.id);
                }
            }
        }
    }
}
