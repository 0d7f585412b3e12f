//! `schedctl simulate` in replay mode: tasks arrive and depart in time
//! order ([`sched_core::replay`]), one policy or several side by side,
//! with a timeline and a plot.
//!
//! Replay mode is taken when the files are the Alibaba openb CSVs, when the
//! job file has departures, or with `--inflate`, `--plot`, `--timeline` or
//! several `--policy` flags. Clusters are tried in topology order for each
//! task (the replay has no global ranking: the traces it is for are one
//! cluster).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use sched_core::gpu::strategy::{PolicyPlacer, TaskPlacer};
use sched_core::gpu::SlotsDisplay;
use sched_core::job::{load_workload_with_bands, workload_arrivals, workload_departures};
use sched_core::policy::Policy;
use sched_core::replay::openb::{parse_machines, parse_pods};
use sched_core::replay::{inflate::inflate, replay, task_mix, ReplayOutcome, ReplayTask, Sample};
use sched_core::topology::Topology;
use serde::Serialize;

/// What the replay needs from the command line.
pub struct Request<'a> {
    pub topology: &'a Path,
    pub workload: &'a Path,
    pub policies: Vec<(String, Policy)>,
    pub inflate: Option<f64>,
    pub seed: u64,
    pub plot: Option<&'a Path>,
    pub timeline: Option<&'a Path>,
    pub placements: Option<&'a Path>,
    pub format: crate::output::Format,
}

/// True when `p` names a CSV file.
pub fn is_csv(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

/// The topology, and each machine's name when the file gives them (CSV).
pub fn load_topology(path: &Path) -> anyhow::Result<(Topology, Option<Vec<String>>)> {
    let text = super::read(path)?;
    if is_csv(path) {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_lowercase().replace('_', "-"))
            .unwrap_or_else(|| "trace".into());
        let t = parse_machines(&text, &stem)
            .with_context(|| format!("invalid machine list {}", path.display()))?;
        Ok((t.topology, Some(t.names)))
    } else {
        let t = Topology::from_yaml(&text)
            .with_context(|| format!("invalid topology {}", path.display()))?;
        Ok((t, None))
    }
}

/// The workload's tasks: a pod list (CSV) or a job file with `arrival` and
/// `departure`.
pub fn load_tasks(
    path: &Path,
    topology: &Topology,
    policy: &Policy,
) -> anyhow::Result<Vec<ReplayTask>> {
    let text = super::read(path)?;
    let ctx = || format!("invalid workload {}", path.display());
    if is_csv(path) {
        return parse_pods(&text).with_context(ctx);
    }
    let jobs = load_workload_with_bands(&text, topology, &policy.priority).with_context(ctx)?;
    let arrivals = workload_arrivals(&text).with_context(ctx)?;
    let departures = workload_departures(&text).with_context(ctx)?;
    let mut tasks = Vec::new();
    for ((j, a), d) in jobs.iter().zip(arrivals).zip(departures) {
        for t in 0..j.spec.tasks {
            tasks.push(ReplayTask {
                job: j.spec.name.clone(),
                task: t,
                request: j.spec.request,
                constraints: j.spec.constraints.clone(),
                arrival_ms: a,
                departure_ms: d,
            });
        }
    }
    Ok(tasks)
}

/// Whether a workload needs the replay: a pod list, or a job file with
/// departures. (GPU requests alone do not: the batch simulator places them
/// on devices too, with the global ranking across clusters.)
pub fn job_file_needs_replay(path: &Path) -> anyhow::Result<bool> {
    if is_csv(path) {
        return Ok(true);
    }
    let text = super::read(path)?;
    let departures = workload_departures(&text)
        .with_context(|| format!("invalid workload {}", path.display()))?;
    Ok(departures.iter().any(Option::is_some))
}

/// One policy's figures, as `-o json` prints them.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub policy: String,
    pub tasks_total: u64,
    pub tasks_placed: u64,
    pub tasks_unplaced: u64,
    /// GPU capacity, in milli-GPUs.
    pub gpu_milli_total: u64,
    /// Milli-GPUs requested by all tasks.
    pub gpu_milli_arrived: u64,
    /// Milli-GPUs allocated right after the last arrival.
    pub gpu_milli_allocated: u64,
    pub gpu_allocation_rate: f64,
    pub gpus_unallocated: f64,
    /// Expected fragmented milli-GPUs after the last arrival.
    pub gpu_milli_fragmented: u64,
    pub cpu_utilization: f64,
    pub memory_utilization: f64,
    pub peak_gpu_milli_allocated: u64,
    pub max_tasks_waiting: u64,
    /// Mean time from arrival to placement of the tasks placed.
    pub mean_wait_seconds: f64,
    pub scheduling_seconds: f64,
}

#[derive(Serialize)]
struct JsonOut<'a> {
    #[serde(flatten)]
    first: &'a ReplayReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    policies: Option<&'a [ReplayReport]>,
}

fn report(name: &str, tasks: &[ReplayTask], out: &ReplayOutcome, seconds: f64) -> ReplayReport {
    let last_arrival = tasks.iter().map(|t| t.arrival_ms).max().unwrap_or(0);
    let at = out
        .samples
        .iter()
        .find(|s| s.time_ms >= last_arrival)
        .or(out.samples.last());
    let cap = out.capacity;
    let share = |a: u64, c: u64| if c == 0 { 0.0 } else { a as f64 / c as f64 };
    let placed: Vec<(u64, u64)> = tasks
        .iter()
        .zip(&out.placements)
        .filter_map(|(t, p)| p.as_ref().map(|p| (t.arrival_ms, p.at_ms)))
        .collect();
    let wait_ms: u64 = placed.iter().map(|(a, p)| p - a).sum();
    ReplayReport {
        policy: name.to_string(),
        tasks_total: tasks.len() as u64,
        tasks_placed: placed.len() as u64,
        tasks_unplaced: out.tasks_unplaced,
        gpu_milli_total: cap.gpu.0,
        gpu_milli_arrived: out.gpu_milli_arrived,
        gpu_milli_allocated: out.gpu_milli_allocated,
        gpu_allocation_rate: share(out.gpu_milli_allocated, cap.gpu.0),
        gpus_unallocated: cap.gpu.0.saturating_sub(out.gpu_milli_allocated) as f64 / 1000.0,
        gpu_milli_fragmented: at.map_or(0, |s| s.gpu_milli_fragmented),
        cpu_utilization: at.map_or(0.0, |s| share(s.allocated.cpu.0, cap.cpu.0)),
        memory_utilization: at.map_or(0.0, |s| share(s.allocated.memory.0, cap.memory.0)),
        peak_gpu_milli_allocated: out
            .samples
            .iter()
            .map(|s| s.allocated.gpu.0)
            .max()
            .unwrap_or(0),
        max_tasks_waiting: out
            .samples
            .iter()
            .map(|s| s.tasks_waiting)
            .max()
            .unwrap_or(0),
        mean_wait_seconds: if placed.is_empty() {
            0.0
        } else {
            wait_ms as f64 / placed.len() as f64 / 1000.0
        },
        scheduling_seconds: seconds,
    }
}

/// One policy's replay, for the plot.
pub struct Series {
    pub name: String,
    pub samples: Vec<Sample>,
    pub capacity: sched_core::resources::Resources,
}

pub fn run(req: Request<'_>) -> anyhow::Result<()> {
    let (topology, names) = load_topology(req.topology)?;
    let first = &req.policies[0].1;
    let mut tasks = load_tasks(req.workload, &topology, first)?;
    let mix = task_mix(&tasks);
    if let Some(f) = req.inflate {
        let capacity: u64 = topology.clusters.iter().map(|c| c.capacity().gpu.0).sum();
        if capacity == 0 {
            bail!("--inflate: the topology has no GPUs");
        }
        tasks = inflate(&tasks, capacity, f, req.seed);
        if tasks.is_empty() {
            bail!("--inflate: the workload asks for no GPU");
        }
    }
    let mut reports = Vec::new();
    let mut series = Vec::new();
    for (i, (name, policy)) in req.policies.iter().enumerate() {
        let started = Instant::now();
        let mut placers: Vec<Box<dyn TaskPlacer>> = topology
            .clusters
            .iter()
            .map(|_| {
                Box::new(PolicyPlacer::new(name.clone(), &policy.local, mix.clone()))
                    as Box<dyn TaskPlacer>
            })
            .collect();
        let out = replay(&topology, &tasks, &mut placers, &mix);
        let seconds = started.elapsed().as_secs_f64();
        if i == 0 {
            if let Some(path) = req.placements {
                write_placements(path, &topology, names.as_deref(), &tasks, &out)?;
            }
        }
        reports.push(report(name, &tasks, &out, seconds));
        series.push(Series {
            name: name.clone(),
            samples: out.samples,
            capacity: out.capacity,
        });
    }
    if let Some(path) = req.timeline {
        write_timeline(path, &series)?;
    }
    if let Some(path) = req.plot {
        crate::plot::draw(path, &series, req.inflate.is_some())?;
    }
    if req.format.structured() {
        let json = JsonOut {
            first: &reports[0],
            policies: (reports.len() > 1).then_some(&reports[..]),
        };
        crate::output::print_structured(&json, req.format)?;
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(table(&reports).as_bytes())?;
    }
    Ok(())
}

fn table(reports: &[ReplayReport]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<24} {:>7} {:>7} {:>9} {:>9} {:>12} {:>11} {:>6} {:>7} {:>9} {:>10}",
        "POLICY",
        "TASKS",
        "PLACED",
        "UNPLACED",
        "GPU ALLOC",
        "UNALLOC GPUS",
        "FRAG GPUS",
        "CPU",
        "MEMORY",
        "PEAK GPUS",
        "MEAN WAIT"
    );
    for r in reports {
        let _ = writeln!(
            s,
            "{:<24} {:>7} {:>7} {:>9} {:>8.2}% {:>12.1} {:>11.1} {:>5.1}% {:>6.1}% {:>9.1} {:>9.1}s",
            r.policy,
            r.tasks_total,
            r.tasks_placed,
            r.tasks_unplaced,
            r.gpu_allocation_rate * 100.0,
            r.gpus_unallocated,
            r.gpu_milli_fragmented as f64 / 1000.0,
            r.cpu_utilization * 100.0,
            r.memory_utilization * 100.0,
            r.peak_gpu_milli_allocated as f64 / 1000.0,
            r.mean_wait_seconds,
        );
    }
    let _ = writeln!(
        s,
        "\nFigures right after the last arrival (PEAK GPUS: the most allocated at once); {} GPUs in all, {:.1} requested.",
        reports[0].gpu_milli_total / 1000,
        reports[0].gpu_milli_arrived as f64 / 1000.0
    );
    s
}

fn write_placements(
    path: &Path,
    topology: &Topology,
    names: Option<&[String]>,
    tasks: &[ReplayTask],
    out: &ReplayOutcome,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    writeln!(w, "job,task,cluster,machine,gpus")?;
    for (t, p) in tasks.iter().zip(&out.placements) {
        let Some(p) = p else { continue };
        let c = p.cluster.0 as usize;
        let machine = match names {
            Some(n) => n[p.machine.0 as usize].clone(),
            None => out.cells[c].machine_name(p.machine),
        };
        writeln!(
            w,
            "{},{},{},{machine},{}",
            t.job,
            t.task,
            topology.clusters[c].name,
            SlotsDisplay(&p.gpus)
        )?;
    }
    w.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

fn write_timeline(path: &Path, series: &[Series]) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    writeln!(w, "policy,time_s,gpu_milli_arrived,cpu_milli_allocated,memory_bytes_allocated,gpu_milli_allocated,gpu_milli_unallocated,gpu_milli_fragmented,tasks_waiting,tasks_running")?;
    for s in series {
        for x in &s.samples {
            writeln!(
                w,
                "{},{:.3},{},{},{},{},{},{},{},{}",
                s.name,
                x.time_ms as f64 / 1000.0,
                x.gpu_milli_arrived,
                x.allocated.cpu.0,
                x.allocated.memory.0,
                x.allocated.gpu.0,
                x.gpu_milli_unallocated,
                x.gpu_milli_fragmented,
                x.tasks_waiting,
                x.tasks_running
            )?;
        }
    }
    w.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The policy's name in tables and plots: its file's stem, or `default`.
pub fn policy_name(path: Option<&PathBuf>) -> String {
    path.and_then(|p| p.file_stem()).map_or_else(
        || "default".to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job file with GPU shares and departures goes through the replay,
    /// and the placements CSV names the devices.
    #[test]
    fn job_file_with_gpus_replays_and_names_devices() {
        let dir = tempfile::tempdir().unwrap();
        let topo = dir.path().join("topology.yaml");
        let jobs = dir.path().join("jobs.yaml");
        let csv = dir.path().join("placements.csv");
        std::fs::write(
            &topo,
            "locations: [{name: l}]\nclusters:\n  - name: c\n    location: l\n    machines:\n      - {class: g, count: 1, cpu: 16, memory: 64Gi, gpu: 2, gpu_model: T4}\n",
        )
        .unwrap();
        std::fs::write(
            &jobs,
            "jobs:\n  - {name: half, tasks: 4, resources: {cpu: 1, memory: 1Gi, gpu: 0.5}, gpu_model: T4}\n  - {name: whole, tasks: 1, resources: {cpu: 1, memory: 1Gi, gpu: 1}, arrival: 1s, departure: 2s}\n",
        )
        .unwrap();
        assert!(job_file_needs_replay(&jobs).unwrap());
        run(Request {
            topology: &topo,
            workload: &jobs,
            policies: vec![("default".into(), Policy::default())],
            inflate: None,
            seed: 1,
            plot: None,
            timeline: None,
            placements: Some(&csv),
            format: crate::output::Format::Json,
        })
        .unwrap();
        let text = std::fs::read_to_string(&csv).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "job,task,cluster,machine,gpus");
        // Four halves fill both devices, two per device; the whole GPU that
        // arrives later finds no free device and never runs.
        let mut gpus: Vec<&str> = lines[1..]
            .iter()
            .map(|l| l.rsplit(',').next().unwrap())
            .collect();
        gpus.sort();
        assert_eq!(gpus, ["0:500", "0:500", "1:500", "1:500"]);
    }
}
