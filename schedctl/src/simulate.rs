//! `schedctl simulate`: the core's simulator over a topology and a workload.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use sched_core::job::{load_workload_with_bands, workload_arrivals, Job};
use sched_core::quota::{admit_in_order, Quotas};
use sched_core::rank::Ranking;
use sched_core::simulate::{simulate_arrivals, JobExplanation, Outcome, Report};
use sched_core::topology::Topology;
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The topology file: locations, links and clusters of machines; or a
    /// machine list CSV of the Alibaba openb trace (`sn,cpu_milli,
    /// memory_mib,gpu,model`), one cluster of machines named by `sn`.
    #[arg(long, value_name = "FILE")]
    topology: PathBuf,
    /// The job file (jobs arrive at their `arrival`, at once without one);
    /// or a pod list CSV of the openb trace, one single-task job per pod.
    #[arg(long, value_name = "FILE")]
    workload: PathBuf,
    /// The policy file (default: the built-in defaults, as in
    /// config/policy.yaml); give it several times to compare policies in a
    /// replay (`--policy a.yaml --policy b.yaml`).
    #[arg(long, value_name = "FILE")]
    policy: Vec<PathBuf>,
    /// The paper's protocol (Weng et al., ATC 2023): tasks drawn at random
    /// from the workload, with no departures, until the GPUs they request
    /// reach this fraction of the GPU capacity (1.0: all of it).
    #[arg(long, value_name = "FRACTION")]
    inflate: Option<f64>,
    /// The seed of `--inflate`'s draws (default 1).
    #[arg(long, value_name = "N", requires = "inflate")]
    seed: Option<u64>,
    /// Draw the replay's curves (GPU and cpu allocation, fragmented GPUs,
    /// waiting tasks) to FILE (SVG), one line per policy.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Write the replay's state after every instant as CSV to FILE.
    #[arg(long, value_name = "FILE")]
    timeline: Option<PathBuf>,
    #[command(flatten)]
    output: crate::output::OutputArgs,
    /// Write every placement as CSV (`job,task,cluster,machine,gpus`) to
    /// FILE; `gpus` is `0+1` for whole devices, `3:460` for a share.
    #[arg(long, value_name = "FILE")]
    placements: Option<PathBuf>,
    /// Explain the decisions for one job: cluster scores, filters, machines.
    #[arg(long, value_name = "JOB")]
    explain: Option<String>,
    /// Quotas per tenant and band (the global scheduler's --quotas file):
    /// jobs over quota, in workload order, are refused as admission would.
    #[arg(long, value_name = "FILE")]
    quotas: Option<PathBuf>,
}

/// A job the quotas refused.
#[derive(Serialize)]
struct Refused {
    job: String,
    reason: String,
}

/// `-o json|yaml` output: the core's report plus timing and the explanation.
#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    report: &'a Report,
    scheduling_seconds: f64,
    placements_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    explain: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    refused: Vec<Refused>,
    gpu_milli_total: u64,
    gpu_milli_arrived: u64,
    gpu_milli_allocated: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let replay_mode = crate::replay::is_csv(&args.topology)
        || args.inflate.is_some()
        || args.plot.is_some()
        || args.timeline.is_some()
        || args.policy.len() > 1
        || crate::replay::job_file_needs_replay(&args.workload)?;
    if replay_mode {
        return replay(args);
    }
    let topology = Topology::from_yaml(&super::read(&args.topology)?)
        .with_context(|| format!("invalid topology {}", args.topology.display()))?;
    let policy = super::load_policy(args.policy.first())?;
    let workload = super::read(&args.workload)?;
    let jobs = load_workload_with_bands(&workload, &topology, &policy.priority)
        .with_context(|| format!("invalid workload {}", args.workload.display()))?;
    let arrivals = workload_arrivals(&workload)
        .with_context(|| format!("invalid workload {}", args.workload.display()))?;
    let mut refused = Vec::new();
    let (jobs, arrivals) = match &args.quotas {
        None => (jobs, arrivals),
        Some(path) => {
            let quotas = Quotas::from_yaml(&super::read(path)?, &policy.priority)
                .with_context(|| format!("invalid quotas {}", path.display()))?;
            let verdicts = admit_in_order(&jobs, &quotas, &policy.priority);
            let mut admitted = Vec::with_capacity(jobs.len());
            let mut kept = Vec::with_capacity(jobs.len());
            for ((mut job, verdict), arrival) in jobs.into_iter().zip(verdicts).zip(&arrivals) {
                match verdict {
                    Ok(()) => {
                        // Ids index the workload: renumber what is left.
                        job.id = sched_core::job::JobId(admitted.len() as u32);
                        admitted.push(job);
                        kept.push(*arrival);
                    }
                    Err(e) => refused.push(Refused {
                        job: job.spec.name.clone(),
                        reason: e.to_string(),
                    }),
                }
            }
            (admitted, kept)
        }
    };
    let explain = match &args.explain {
        None => None,
        Some(name) => match jobs.iter().find(|j| j.spec.name == *name) {
            Some(j) => Some(j.id),
            None => bail!(
                "--explain: no job named {name:?} in {}",
                args.workload.display()
            ),
        },
    };

    let total: u64 = jobs.iter().map(|j| u64::from(j.spec.tasks)).sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} tasks decided ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // Show the bar only for runs long enough to watch.
    let started = Instant::now();
    let mut progress = |decided: u64| {
        if started.elapsed() > Duration::from_millis(500) {
            bar.set_position(decided);
        }
    };
    let outcome = simulate_arrivals(&topology, &jobs, &arrivals, &policy, explain, &mut progress);
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let report = outcome.report(&topology, &jobs);
    if let Some(path) = &args.placements {
        write_placements(path, &topology, &jobs, &outcome)?;
    }
    let rate = if seconds > 0.0 {
        report.tasks_placed as f64 / seconds
    } else {
        0.0
    };
    let format = args.output.format();
    let mut out = std::io::stdout().lock();
    if format.structured() {
        let explain = outcome
            .explanation
            .as_ref()
            .map(|x| explain_json(x, &topology, &jobs));
        let gpu = |f: fn(&sched_core::cell::Cell) -> u64| outcome.cells.iter().map(f).sum();
        let json = JsonReport {
            report: &report,
            scheduling_seconds: seconds,
            placements_per_second: rate,
            explain,
            refused,
            gpu_milli_total: gpu(|c| c.capacity().gpu.0),
            gpu_milli_arrived: jobs
                .iter()
                .map(|j| j.spec.request.gpu.0 * u64::from(j.spec.tasks))
                .sum(),
            gpu_milli_allocated: gpu(|c| c.allocated().gpu.0),
        };
        drop(out);
        crate::output::print_structured(&json, format)?;
    } else {
        for r in &refused {
            writeln!(out, "refused {}: {}", r.job, r.reason)?;
        }
        out.write_all(summary_table(&report, seconds, rate).as_bytes())?;
        if let Some(x) = &outcome.explanation {
            out.write_all(explain_text(x, &topology, &jobs).as_bytes())?;
        }
    }
    Ok(())
}

/// Replay mode: see [`crate::replay`].
fn replay(args: Args) -> anyhow::Result<()> {
    if args.explain.is_some() || args.quotas.is_some() {
        return Err(crate::Usage(
            "--explain and --quotas are not available in a replay (CSV files, GPU requests, departures, --inflate, --plot, --timeline or several --policy)".into(),
        )
        .into());
    }
    if let Some(f) = args.inflate {
        if !(f > 0.0 && f <= 10.0) {
            return Err(crate::Usage(format!("--inflate {f}: a fraction in (0, 10]")).into());
        }
    }
    let mut policies = Vec::new();
    if args.policy.is_empty() {
        policies.push(("default".to_string(), super::load_policy(None)?));
    }
    for p in &args.policy {
        let mut name = crate::replay::policy_name(Some(p));
        if policies.iter().any(|(n, _)| *n == name) {
            name = p.display().to_string();
        }
        policies.push((name, super::load_policy(Some(p))?));
    }
    crate::replay::run(crate::replay::Request {
        topology: &args.topology,
        workload: &args.workload,
        policies,
        inflate: args.inflate,
        seed: args.seed.unwrap_or(1),
        plot: args.plot.as_deref(),
        timeline: args.timeline.as_deref(),
        placements: args.placements.as_deref(),
        format: args.output.format(),
    })
}

fn write_placements(
    path: &PathBuf,
    topology: &Topology,
    jobs: &[Job],
    outcome: &Outcome,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    writeln!(w, "job,task,cluster,machine,gpus")?;
    for ((job, places), gpus) in jobs.iter().zip(&outcome.placements).zip(&outcome.gpus) {
        for p in places {
            let slots = gpus.get(&p.task).map(Vec::as_slice).unwrap_or_default();
            let cluster = &topology.clusters[p.cluster.0 as usize].name;
            let machine = outcome.cells[p.cluster.0 as usize].machine_name(p.machine);
            writeln!(
                w,
                "{},{},{cluster},{machine},{}",
                job.spec.name,
                p.task,
                sched_core::gpu::SlotsDisplay(slots)
            )?;
        }
    }
    w.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

fn summary_table(r: &Report, seconds: f64, rate: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<20} {:<14} {:>10} {:>10} {:>10} {:>7} {:>7}",
        "CLUSTER", "LOCATION", "TASKS", "MACHINES", "USED", "CPU", "MEMORY"
    );
    for c in &r.clusters {
        let _ = writeln!(
            s,
            "{:<20} {:<14} {:>10} {:>10} {:>10} {:>6.1}% {:>6.1}%",
            c.name,
            c.location,
            c.tasks_placed,
            c.machines_total,
            c.machines_used,
            c.cpu_utilization * 100.0,
            c.memory_utilization * 100.0
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "tasks:    {} placed of {} ({} unplaced)",
        r.tasks_placed, r.tasks_total, r.tasks_unplaced
    );
    let bound = r
        .lower_bound_machines
        .map_or(String::new(), |b| format!(", lower bound {b}"));
    let _ = writeln!(
        s,
        "machines: {} used of {}{bound}",
        r.machines_used, r.machines_total
    );
    if r.tasks_with_locality > 0 {
        let _ = writeln!(
            s,
            "locality: {} of {} tasks with a preferred location landed there ({:.1}%)",
            r.tasks_at_preferred_location,
            r.tasks_with_locality,
            100.0 * r.tasks_at_preferred_location as f64 / r.tasks_with_locality as f64
        );
    }
    let _ = writeln!(
        s,
        "time:     {seconds:.3} s deciding, {rate:.0} placements/s"
    );
    if !r.unplaced.is_empty() {
        let _ = writeln!(s, "\nUNPLACED");
        for u in &r.unplaced {
            let _ = writeln!(s, "  {} ({} tasks): {}", u.job, u.tasks, u.reason);
        }
    }
    s
}

fn cluster_name(topology: &Topology, id: sched_core::cluster::ClusterId) -> &str {
    &topology.clusters[id.0 as usize].name
}

fn ranking_text(s: &mut String, ranking: &Ranking, topology: &Topology) {
    let _ = writeln!(
        s,
        "    {:<20} {:>8}  TERMS (name weight x score)",
        "CLUSTER", "TOTAL"
    );
    for c in &ranking.ranked {
        let terms: Vec<String> = c
            .terms()
            .iter()
            .map(|(n, w, sc)| format!("{} {w}x{sc}", n.as_str()))
            .collect();
        let _ = writeln!(
            s,
            "    {:<20} {:>8}  {}",
            cluster_name(topology, c.cluster),
            c.total,
            terms.join(", ")
        );
    }
    for f in &ranking.filtered {
        let _ = writeln!(
            s,
            "    {:<20} {:>8}  filtered by {}: {}",
            cluster_name(topology, f.cluster),
            "-",
            f.filter,
            f.rejection
        );
    }
}

fn explain_text(x: &JobExplanation, topology: &Topology, jobs: &[Job]) -> String {
    let job = &jobs[x.job.0 as usize];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nEXPLAIN job {} ({} tasks of {}{})",
        job.spec.name,
        job.spec.tasks,
        job.spec.request,
        job.spec
            .locality
            .as_ref()
            .map_or(String::new(), |l| format!(", prefers {l}"))
    );
    for (i, round) in x.rounds.iter().enumerate() {
        let _ = writeln!(s, "  round {}: {} tasks", i + 1, round.tasks);
        ranking_text(&mut s, &round.ranking, topology);
        match round.chosen {
            None => {
                let _ = writeln!(s, "    -> no cluster can take them: unplaced");
            }
            Some(c) => {
                let _ = writeln!(
                    s,
                    "    -> {}: placed {} on {} machines",
                    cluster_name(topology, c),
                    round.placed,
                    round.machines.len()
                );
                for (m, n) in round.machines.iter().take(20) {
                    let _ = writeln!(s, "       {m}: {n}");
                }
                if round.machines.len() > 20 {
                    let _ = writeln!(s, "       ... {} more machines", round.machines.len() - 20);
                }
                if round.preempting {
                    let _ = writeln!(
                        s,
                        "       (no cluster had room: evicting lower-priority tasks there makes some)"
                    );
                }
                if !round.victims.is_empty() {
                    let _ = writeln!(
                        s,
                        "    -> evicted {} task(s): the fewest whose eviction makes room per task placed, lowest priority first, least work lost:",
                        round.victims.len()
                    );
                    for v in round.victims.iter().take(20) {
                        let _ = writeln!(
                            s,
                            "       {}/{} (priority {}) on {}",
                            jobs[v.job.0 as usize].spec.name, v.task, v.priority, v.machine
                        );
                    }
                }
                if let Some(why) = &round.handed_back {
                    let _ = writeln!(
                        s,
                        "    -> handed back {}: {why}",
                        round.tasks - round.placed
                    );
                }
            }
        }
    }
    s
}

fn explain_json(x: &JobExplanation, topology: &Topology, jobs: &[Job]) -> serde_json::Value {
    let rounds: Vec<serde_json::Value> = x
        .rounds
        .iter()
        .map(|r| {
            let ranked: Vec<serde_json::Value> = r
                .ranking
                .ranked
                .iter()
                .map(|c| {
                    let terms: serde_json::Map<String, serde_json::Value> = c
                        .terms()
                        .iter()
                        .map(|(n, w, sc)| {
                            (
                                n.as_str().to_string(),
                                serde_json::json!({"weight": w, "score": sc.get()}),
                            )
                        })
                        .collect();
                    serde_json::json!({
                        "cluster": cluster_name(topology, c.cluster),
                        "total": c.total,
                        "terms": terms,
                    })
                })
                .collect();
            let filtered: Vec<serde_json::Value> = r
                .ranking
                .filtered
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "cluster": cluster_name(topology, f.cluster),
                        "filter": f.filter,
                        "reason": f.rejection.to_string(),
                    })
                })
                .collect();
            serde_json::json!({
                "tasks": r.tasks,
                "ranked": ranked,
                "filtered": filtered,
                "chosen": r.chosen.map(|c| cluster_name(topology, c)),
                "placed": r.placed,
                "machines": r.machines,
                "handed_back": r.handed_back.as_ref().map(|w| w.to_string()),
                "preempting": r.preempting,
                "victims": r.victims.iter().map(|v| serde_json::json!({
                    "job": jobs[v.job.0 as usize].spec.name,
                    "task": v.task,
                    "priority": v.priority,
                    "machine": v.machine,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "job": jobs[x.job.0 as usize].spec.name,
        "rounds": rounds,
    })
}
