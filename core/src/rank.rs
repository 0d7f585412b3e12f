//! The global decision: which cluster gets a job's tasks.
//!
//! Filter out the clusters that cannot run the task at all, score the rest
//! as Σ weight × term, and order them best first, ties to the lower cluster
//! id. The ranking keeps every term and every rejection so the decision can
//! be explained.

use serde::Serialize;

use crate::band::PriorityPolicy;
use crate::cluster::{ClusterId, ClusterSummary};
use crate::filter::{cluster_filters, Rejection, TaskShape};
use crate::job::Job;
use crate::locality::Locality;
use crate::policy::{Policy, ScorerName};
use crate::resources::ResourceKind;
use crate::score::Score;
use crate::scorer::{Alignment, ClusterScorer, Headroom, LocalityScorer, QueueLength};

/// The number of scoring terms.
pub const TERMS: usize = 4;

/// One feasible cluster's score.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterScore {
    pub cluster: ClusterId,
    /// Σ weight × term.
    pub total: u64,
    /// Each configured term's `(name, weight, score)`.
    pub terms: [(ScorerName, u32, Score); TERMS],
    /// How many of `terms` are configured.
    pub term_count: u8,
}

impl ClusterScore {
    pub fn terms(&self) -> &[(ScorerName, u32, Score)] {
        &self.terms[..usize::from(self.term_count)]
    }
}

/// A cluster ruled out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterRejection {
    pub cluster: ClusterId,
    pub filter: &'static str,
    pub rejection: Rejection,
}

/// The outcome of ranking clusters for a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ranking {
    /// Feasible clusters, best first.
    pub ranked: Vec<ClusterScore>,
    /// Clusters ruled out, in cluster order.
    pub filtered: Vec<ClusterRejection>,
}

impl Ranking {
    pub fn best(&self) -> Option<ClusterId> {
        self.ranked.first().map(|s| s.cluster)
    }

    /// Puts the whole ranking in order: best first, ties to the lower id
    /// (ids are unique, so the order is total and an unstable sort gives
    /// the same result as a stable one).
    pub fn sort(&mut self) {
        self.ranked.sort_unstable_by(order);
    }

    /// The ranking put in order ([`Ranking::sort`]).
    pub fn sorted(mut self) -> Self {
        self.sort();
        self
    }

    /// Moves the best cluster to the front, leaving the others in no
    /// particular order: one scan instead of a sort.
    pub fn best_to_front(&mut self) {
        let best = (0..self.ranked.len()).min_by(|&a, &b| order(&self.ranked[a], &self.ranked[b]));
        if let Some(i) = best {
            self.ranked.swap(0, i);
        }
    }
}

/// Ranking order: the higher total first, ties to the lower cluster id.
fn order(a: &ClusterScore, b: &ClusterScore) -> std::cmp::Ordering {
    b.total.cmp(&a.total).then(a.cluster.cmp(&b.cluster))
}

/// The cluster ranking pipeline, built from a validated policy.
pub struct Ranker<'a> {
    scorers: Vec<(u32, Box<dyn ClusterScorer + 'a>)>,
    max_scored: usize,
    /// Which priorities may evict which, for [`Ranker::preemption_target`].
    bands: PriorityPolicy,
}

impl<'a> Ranker<'a> {
    /// `policy` must have passed [`Policy::validate`].
    pub fn new(policy: &Policy, locality: &'a Locality) -> Self {
        let scorers = policy
            .global
            .scorers
            .iter()
            .map(|s| {
                let scorer: Box<dyn ClusterScorer + 'a> = match s.name {
                    ScorerName::Locality => Box::new(LocalityScorer {
                        locality,
                        shape: policy.global.locality,
                    }),
                    ScorerName::Headroom => Box::new(Headroom),
                    ScorerName::Queue => Box::new(QueueLength {
                        shape: policy.global.queue,
                    }),
                    ScorerName::Alignment => Box::new(Alignment),
                };
                (s.weight as u32, scorer)
            })
            .collect();
        Ranker {
            scorers,
            max_scored: policy.global.max_clusters_scored as usize,
            bands: policy.priority.clone(),
        }
    }

    pub fn bands(&self) -> &PriorityPolicy {
        &self.bands
    }

    /// When `ranking` found no cluster with room for `job`: the cluster
    /// where evicting tasks the job's band may evict would make room for at
    /// least one task, displacing the least (the largest share of a
    /// cluster's capacity, over resources, that one task takes beyond its
    /// unclaimed capacity; ties to the lower id), with how many tasks its
    /// unclaimed plus preemptible capacity holds. Only clusters ruled out
    /// for want of capacity are looked at: no eviction cures a constraint
    /// or a machine too small.
    pub fn preemption_target(
        &self,
        job: &Job,
        ranking: &Ranking,
        clusters: &[ClusterSummary],
    ) -> Option<(ClusterId, u64)> {
        // Most jobs' bands may evict nothing: no cluster to look at.
        if !self.bands.evicts(job.spec.priority) {
            return None;
        }
        let request = &job.spec.request;
        let mut best: Option<(u64, ClusterId, u64)> = None;
        for f in &ranking.filtered {
            if !f.rejection.preemption_could_help() {
                continue;
            }
            // Callers index summaries by id; search only if they do not.
            let Some(c) = clusters
                .get(f.cluster.0 as usize)
                .filter(|c| c.id == f.cluster)
                .or_else(|| clusters.iter().find(|c| c.id == f.cluster))
            else {
                continue;
            };
            let unclaimed = c.unclaimed();
            let preemptible = c.preemptible_for(job.spec.priority, &self.bands);
            // Nothing to evict: no eviction makes room (a cluster whose
            // machines have no room for the task may still sum enough).
            if preemptible.is_zero() {
                continue;
            }
            let room = unclaimed.saturating_add(&preemptible);
            let fit = crate::assign::fit_count(&room, request);
            if fit == 0 {
                continue;
            }
            let displaced = request.saturating_sub(&unclaimed);
            let share = ResourceKind::ALL
                .iter()
                .filter(|&&k| c.capacity.get(k) > 0)
                .map(|&k| crate::resources::share_ppm(displaced.get(k), c.capacity.get(k)))
                .max()
                .unwrap_or(0);
            if best.is_none_or(|(s, id, _)| (share, c.id) < (s, id)) {
                best = Some((share, c.id, fit));
            }
        }
        best.map(|(_, id, fit)| (id, fit))
    }

    /// Ranks `clusters` for `job`, best first. Clusters in `handed_back`
    /// already tried the job's tasks and could not place them; they are
    /// ruled out.
    pub fn rank(
        &self,
        job: &Job,
        clusters: &[ClusterSummary],
        handed_back: &[ClusterId],
    ) -> Ranking {
        let mut ranking = self.rank_best_first(job, clusters, handed_back);
        ranking.sort();
        ranking
    }

    /// [`Ranker::rank`] with only the best cluster in its place: the rest
    /// of `ranked` is in no particular order until [`Ranking::sort`]. A
    /// scheduling pass mostly needs the best cluster alone, and sorting a
    /// hundred scores for every job was a tenth of the simulator's time.
    pub fn rank_best_first(
        &self,
        job: &Job,
        clusters: &[ClusterSummary],
        handed_back: &[ClusterId],
    ) -> Ranking {
        let shape = TaskShape {
            request: &job.spec.request,
            constraints: &job.spec.constraints,
        };
        let mut ranking = Ranking {
            ranked: Vec::with_capacity(clusters.len()),
            filtered: Vec::new(),
        };
        let mut admit = |c: &ClusterSummary| -> bool {
            if handed_back.contains(&c.id) {
                ranking.filtered.push(ClusterRejection {
                    cluster: c.id,
                    filter: "handed_back",
                    rejection: Rejection::HandedBack,
                });
                return false;
            }
            for f in cluster_filters() {
                if let Err(rejection) = f.check(&shape, c) {
                    ranking.filtered.push(ClusterRejection {
                        cluster: c.id,
                        filter: f.name(),
                        rejection,
                    });
                    return false;
                }
            }
            true
        };
        if self.max_scored > 0 && clusters.len() > self.max_scored {
            let mut feasible: Vec<&ClusterSummary> = clusters.iter().filter(|c| admit(c)).collect();
            // Sampling limit: a window of the feasible clusters that
            // rotates with the job id, so that different jobs see different
            // samples but the same job always sees the same one.
            if feasible.len() > self.max_scored {
                let start = (job.id.0 as usize).wrapping_mul(2_654_435_761) % feasible.len();
                feasible.rotate_left(start);
                feasible.truncate(self.max_scored);
            }
            ranking.ranked = feasible.iter().map(|c| self.score(job, c)).collect();
        } else {
            ranking.ranked.extend(
                clusters
                    .iter()
                    .filter(|c| admit(c))
                    .map(|c| self.score(job, c)),
            );
        }
        ranking.best_to_front();
        ranking
    }

    fn score(&self, job: &Job, c: &ClusterSummary) -> ClusterScore {
        let mut terms = [(ScorerName::Locality, 0, Score::ZERO); TERMS];
        let mut total = 0u64;
        for (i, (weight, scorer)) in self.scorers.iter().enumerate() {
            let s = scorer.score(job, c);
            total += u64::from(*weight) * u64::from(s.get());
            terms[i] = (scorer.name(), *weight, s);
        }
        ClusterScore {
            cluster: c.id,
            total,
            terms,
            term_count: self.scorers.len() as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locality::LocationId;
    use crate::resources::Resources;
    use crate::test_support::{cluster_summary, east_west, job};

    #[test]
    fn weighted_sum_and_order() {
        let l = east_west();
        let policy = Policy::default(); // locality 4, headroom 1, queue 1
        let r = Ranker::new(&policy, &l);
        let mut j = job("j", 10, 1000, 1 << 30);
        j.locality = Some(LocationId(0));
        let mut east = cluster_summary(0, 100_000, 100 << 30);
        east.allocated = Resources::new(90_000, 10 << 30); // 90% cpu used
        let mut west = cluster_summary(1, 100_000, 100 << 30);
        west.location = LocationId(1);
        let ranking = r.rank(&j, &[east, west], &[]);
        // east: 4 * 1000 (local) + 1 * 100 (headroom 1 - 0.9) + 1 * 1000 (empty queue) = 5100
        // west: 4 * 125 (70 ms) + 1 * 1000 + 1 * 1000 = 2500
        assert_eq!(ranking.ranked[0].cluster, ClusterId(0));
        assert_eq!(ranking.ranked[0].total, 5100);
        assert_eq!(ranking.ranked[1].total, 2500);
    }

    #[test]
    fn ties_go_to_the_lower_id() {
        let l = east_west();
        let r = Ranker::new(&Policy::default(), &l);
        let j = job("j", 1, 1000, 1 << 30);
        let a = cluster_summary(7, 10_000, 10 << 30);
        let b = cluster_summary(3, 10_000, 10 << 30);
        let ranking = r.rank(&j, &[a, b], &[]);
        assert_eq!(ranking.ranked[0].cluster, ClusterId(3));
        assert_eq!(ranking.ranked[0].total, ranking.ranked[1].total);
    }

    #[test]
    fn filtered_clusters_say_why() {
        let l = east_west();
        let r = Ranker::new(&Policy::default(), &l);
        let j = job("j", 1, 8000, 1 << 30);
        let mut down = cluster_summary(0, 100_000, 100 << 30);
        down.up = false;
        let small = cluster_summary(1, 4000, 100 << 30); // one 4-core class
        let mut full = cluster_summary(2, 100_000, 100 << 30);
        full.allocated = Resources::new(95_000, 0);
        let tried = cluster_summary(3, 100_000, 100 << 30);
        let ok = cluster_summary(4, 100_000, 100 << 30);
        let ranking = r.rank(&j, &[down, small, full, tried, ok], &[ClusterId(3)]);
        let reasons: Vec<_> = ranking
            .filtered
            .iter()
            .map(|f| f.rejection.summary())
            .collect();
        assert_eq!(
            reasons,
            [
                "cluster down",
                "no machine with enough cpu",
                "cluster out of cpu",
                "cluster could not place it"
            ]
        );
        assert_eq!(ranking.best(), Some(ClusterId(4)));
    }

    #[test]
    fn best_first_agrees_with_the_full_ranking() {
        let l = east_west();
        let r = Ranker::new(&Policy::default(), &l);
        let j = job("j", 1, 1000, 1 << 30);
        // Clusters with varied load and some equal totals (ties).
        let clusters: Vec<ClusterSummary> = (0..40u32)
            .map(|i| {
                let mut c = cluster_summary(i, 100_000, 100 << 30);
                c.allocated = Resources::new(u64::from(i % 7) * 10_000, u64::from(i % 3) << 30);
                c.location = LocationId(i % 2);
                c
            })
            .collect();
        let full = r.rank(&j, &clusters, &[ClusterId(5)]);
        let mut lazy = r.rank_best_first(&j, &clusters, &[ClusterId(5)]);
        assert_eq!(lazy.best(), full.best());
        assert_eq!(lazy.filtered, full.filtered);
        // Taking the best away again and again yields the full order.
        let mut order = Vec::new();
        while !lazy.ranked.is_empty() {
            order.push(lazy.ranked.swap_remove(0).cluster);
            lazy.best_to_front();
        }
        let expected: Vec<ClusterId> = full.ranked.iter().map(|s| s.cluster).collect();
        assert_eq!(order, expected);
    }
}
