//! The commands that talk to the global scheduler: submit, run, get,
//! describe, cancel, watch.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use sched_core::resources::{format_bytes, format_cpu, format_gpu, Resources};
use sched_proto::pb;
use serde::Serialize;
use tokio_stream::StreamExt;

use crate::client::{connect, random_u64, retry, status_error, Client, Target};

/// How long a call keeps retrying UNAVAILABLE and RESOURCE_EXHAUSTED.
const RETRY_FOR: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The job file (see DESIGN.md: `jobs: [{name, tasks, resources, ...}]`).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
    /// Wait, with a progress bar, until every task is placed on a machine.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds (exit 1).
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The job's name.
    name: String,
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    tasks: i64,
    /// Cpu per task: cores (`2`, `0.5`) or millicores (`500m`).
    #[arg(long, value_name = "Q", allow_hyphen_values = true)]
    cpu: String,
    /// Memory per task: bytes or with a suffix (`512Mi`, `2Gi`, `1G`).
    #[arg(long, value_name = "Q", allow_hyphen_values = true)]
    memory: String,
    #[arg(long, value_name = "Q", allow_hyphen_values = true)]
    disk: Option<String>,
    #[arg(long, value_name = "Q", allow_hyphen_values = true)]
    gpu: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    priority: Option<i64>,
    /// Preferred location.
    #[arg(long, value_name = "L")]
    locality: Option<String>,
    /// Machine labels the tasks require, `k=v,...`.
    #[arg(long, value_name = "K=V,...", value_delimiter = ',')]
    constraints: Vec<String>,
    /// Restart failed tasks: `never` or `on-failure` (default: the policy's,
    /// on-failure).
    #[arg(long, value_name = "POLICY")]
    restart: Option<String>,
    /// Attempts a task may make in all (default: the policy's, 3).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    max_attempts: Option<i64>,
    /// Wait before the second attempt, doubled for each further one (`1s`).
    #[arg(long, value_name = "DURATION")]
    backoff: Option<String>,
    /// Delete the job this long after it finished (`30s`, `24h`; default:
    /// the policy's, 24h).
    #[arg(long, value_name = "DURATION")]
    ttl_after_finished: Option<String>,
    /// Whose job it is (default: the token's tenant; `default` without
    /// tokens). Only an admin may name another tenant.
    #[arg(long, value_name = "NAME")]
    tenant: Option<String>,
    /// A priority band (`production`, `batch`, ...) instead of --priority.
    #[arg(long, value_name = "NAME", conflicts_with = "priority")]
    band: Option<String>,
    #[arg(long)]
    wait: bool,
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    timeout: u64,
    /// The command each task runs, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum GetCommand {
    /// Every job, one line each.
    Jobs {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
        /// Only jobs in this state.
        #[arg(long, value_parser = ["pending", "running", "succeeded", "failed", "cancelled"])]
        state: Option<String>,
    },
    /// One job and its tasks.
    Job {
        name: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Machines, as their clusters' local agents see them.
    Machines {
        /// Only this cluster's machines.
        #[arg(long, value_name = "C")]
        cluster: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// The clusters that registered, with their load.
    Clusters {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Quotas per tenant and band, with their usage.
    Quotas {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

/// `schedctl quota`.
#[derive(Debug, clap::Subcommand)]
pub enum QuotaCommand {
    /// Set a tenant's quota in a band (admins); limits not given are
    /// unlimited.
    Set {
        #[arg(long, value_name = "NAME")]
        tenant: String,
        #[arg(long, value_name = "BAND")]
        band: String,
        #[arg(long, value_name = "Q")]
        cpu: Option<String>,
        #[arg(long, value_name = "Q")]
        memory: Option<String>,
        #[arg(long, value_name = "Q")]
        gpu: Option<String>,
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        tasks: Option<i64>,
    },
    /// Remove a tenant's quota in a band (admins).
    Remove {
        #[arg(long, value_name = "NAME")]
        tenant: String,
        #[arg(long, value_name = "BAND")]
        band: String,
    },
}

pub async fn quota(server: &Target, cmd: QuotaCommand) -> anyhow::Result<()> {
    let (quota, remove) = match cmd {
        QuotaCommand::Set {
            tenant,
            band,
            cpu,
            memory,
            gpu,
            tasks,
        } => (
            pb::Quota {
                tenant,
                band,
                cpu,
                memory,
                gpu,
                tasks,
                ..Default::default()
            },
            false,
        ),
        QuotaCommand::Remove { tenant, band } => (
            pb::Quota {
                tenant,
                band,
                ..Default::default()
            },
            true,
        ),
    };
    let (tenant, band) = (quota.tenant.clone(), quota.band.clone());
    let c = client(server).await?;
    retry(RETRY_FOR, || {
        let mut c = c.clone();
        let quota = quota.clone();
        async move {
            c.set_quota(pb::SetQuotaRequest {
                quota: Some(quota),
                remove,
            })
            .await
        }
    })
    .await
    .map_err(status_error)?;
    println!(
        "quota/{tenant}/{band} {}",
        if remove { "removed" } else { "set" }
    );
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum DescribeCommand {
    /// A job: its spec, tasks, why pending tasks are pending, its events.
    Job { name: String },
}

async fn client(server: &Target) -> anyhow::Result<Client> {
    connect(server)
}

fn submission_id() -> String {
    format!("{:016x}", random_u64())
}

/// Submits a job file (for `schedctl dev --submit`).
pub async fn submit_file(server: &Target, file: &std::path::Path) -> anyhow::Result<()> {
    let yaml =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let request = pb::SubmitRequest {
        yaml,
        jobs: Vec::new(),
        submission_id: submission_id(),
    };
    submit_request(server, request, false, 0).await
}

/// Waits until every job has finished, prints them; an error if any failed.
pub async fn wait_done_and_print(server: &Target, timeout: Duration) -> anyhow::Result<()> {
    let c = client(server).await?;
    let start = Instant::now();
    loop {
        let jobs = retry(RETRY_FOR, || {
            let mut c = c.clone();
            async move { c.list_jobs(pb::ListJobsRequest { state: 0 }).await }
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .jobs;
        let done = |s: i32| {
            [
                pb::JobState::Succeeded,
                pb::JobState::Failed,
                pb::JobState::Cancelled,
            ]
            .iter()
            .any(|d| *d as i32 == s)
        };
        let finished = jobs.iter().all(|j| done(j.state));
        let timed_out = start.elapsed() > timeout;
        if finished || timed_out {
            get(
                server,
                GetCommand::Jobs {
                    output: Format::Table,
                    state: None,
                },
            )
            .await?;
        }
        if finished {
            let failed: Vec<&str> = jobs
                .iter()
                .filter(|j| j.state != pb::JobState::Succeeded as i32)
                .map(|j| j.name.as_str())
                .collect();
            if !failed.is_empty() {
                bail!("not succeeded: {}", failed.join(", "));
            }
            return Ok(());
        }
        if timed_out {
            bail!("jobs not finished after {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn submit(server: &Target, args: SubmitArgs) -> anyhow::Result<()> {
    let yaml = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let request = pb::SubmitRequest {
        yaml,
        jobs: Vec::new(),
        submission_id: submission_id(),
    };
    submit_request(server, request, args.wait, args.timeout).await
}

pub async fn run(server: &Target, args: RunArgs) -> anyhow::Result<()> {
    let mut constraints = std::collections::HashMap::new();
    for c in &args.constraints {
        let Some((k, v)) = c.split_once('=') else {
            bail!("--constraints: {c:?} is not key=value");
        };
        constraints.insert(k.to_string(), v.to_string());
    }
    let job = pb::JobSpec {
        name: args.name,
        tasks: args.tasks,
        resources: Some(pb::ResourceRequest {
            cpu: args.cpu,
            memory: args.memory,
            disk: args.disk,
            gpu: args.gpu,
        }),
        priority: args.priority,
        locality: args.locality,
        constraints,
        command: args.command,
        restart: (args.restart.is_some() || args.max_attempts.is_some() || args.backoff.is_some())
            .then(|| pb::RestartPolicy {
                policy: args.restart.unwrap_or_default(),
                max_attempts: args.max_attempts,
                backoff: args.backoff,
            }),
        ttl_after_finished: args.ttl_after_finished,
        tenant: args.tenant,
        band: args.band,
    };
    let request = pb::SubmitRequest {
        yaml: String::new(),
        jobs: vec![job],
        submission_id: submission_id(),
    };
    submit_request(server, request, args.wait, args.timeout).await
}

async fn submit_request(
    server: &Target,
    request: pb::SubmitRequest,
    wait: bool,
    timeout: u64,
) -> anyhow::Result<()> {
    let mut c = client(server).await?;
    // The same submission id on every attempt: a retry after a lost answer
    // is recognised, not refused as a duplicate.
    let resp = retry(RETRY_FOR, || {
        let mut c = c.clone();
        let r = request.clone();
        async move { c.submit(r).await }
    })
    .await
    .map_err(status_error)?
    .into_inner();
    for j in &resp.jobs {
        println!("job/{j} submitted");
    }
    if wait {
        wait_placed(&mut c, &resp.jobs, resp.tasks, Duration::from_secs(timeout)).await?;
    }
    Ok(())
}

/// Polls the jobs until every task is on a machine (or finished).
async fn wait_placed(
    c: &mut Client,
    jobs: &[String],
    total: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} placed {pos}/{len} tasks [{bar:30}] {elapsed} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let start = Instant::now();
    loop {
        let mut placed = 0u64;
        let mut cancelled = Vec::new();
        for name in jobs {
            let s = retry(RETRY_FOR, || {
                let mut c = c.clone();
                let name = name.clone();
                async move { c.get_job(pb::GetJobRequest { name }).await }
            })
            .await
            .map_err(status_error)?
            .into_inner();
            let summary = s.summary.unwrap_or_default();
            let n = summary.counts.unwrap_or_default();
            placed += u64::from(n.placed + n.running + n.succeeded + n.failed);
            if summary.state == pb::JobState::Cancelled as i32 {
                cancelled.push(name.clone());
            }
        }
        bar.set_position(placed);
        if placed >= total {
            bar.finish_with_message("done");
            return Ok(());
        }
        if !cancelled.is_empty() {
            bar.abandon();
            bail!("cancelled while waiting: {}", cancelled.join(", "));
        }
        if start.elapsed() > timeout {
            bar.abandon();
            bail!(
                "{placed}/{total} tasks placed after {} s; `schedctl describe job NAME` says why",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---- views: what -o json / yaml print ----

#[derive(Serialize)]
struct RequestView {
    cpu: String,
    memory: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    disk: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu: Option<String>,
}

#[derive(Serialize, Default)]
struct CountsView {
    pending: u32,
    assigned: u32,
    placed: u32,
    running: u32,
    succeeded: u32,
    failed: u32,
    lost: u32,
    cancelled: u32,
    preempted: u32,
}

#[derive(Serialize)]
struct QuotaView {
    tenant: String,
    band: String,
    cpu: Option<String>,
    memory: Option<String>,
    gpu: Option<String>,
    tasks: Option<i64>,
    used: RequestView,
    used_tasks: u64,
}

#[derive(Serialize)]
struct JobSummaryView {
    name: String,
    state: &'static str,
    task_count: u32,
    counts: CountsView,
    request: RequestView,
    priority: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    locality: Option<String>,
    tenant: String,
    band: String,
    submitted_unix_ms: i64,
}

#[derive(Serialize)]
struct TaskView {
    index: u32,
    state: &'static str,
    cluster: Option<String>,
    machine: Option<String>,
    exit_code: Option<i32>,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_retry_unix_ms: Option<i64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
}

#[derive(Serialize)]
struct JobView {
    #[serde(flatten)]
    summary: JobSummaryView,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    command: Vec<String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    constraints: std::collections::BTreeMap<String, String>,
    tasks: Vec<TaskView>,
}

#[derive(Serialize)]
struct MachineView {
    name: String,
    cluster: String,
    up: bool,
    capacity: RequestView,
    allocated: RequestView,
    labels: std::collections::BTreeMap<String, String>,
    tasks: Vec<String>,
}

#[derive(Serialize)]
struct ClusterView {
    name: String,
    location: String,
    up: bool,
    machines: u32,
    capacity: RequestView,
    allocated: RequestView,
    queued: RequestView,
    queue_len: u64,
    last_heartbeat_unix_ms: i64,
}

fn resources(r: Option<&pb::Resources>) -> Resources {
    r.map_or(Resources::ZERO, |r| {
        Resources::from_array([r.cpu_millis, r.memory_bytes, r.disk_bytes, r.gpu_millis])
    })
}

fn request_view(r: Option<&pb::Resources>) -> RequestView {
    let r = resources(r);
    RequestView {
        cpu: format_cpu(r.cpu),
        memory: format_bytes(r.memory),
        disk: (r.disk.0 > 0).then(|| format_bytes(r.disk)),
        gpu: (r.gpu.0 > 0).then(|| format_gpu(r.gpu)),
    }
}

pub fn job_state_name(s: i32) -> &'static str {
    match pb::JobState::try_from(s) {
        Ok(pb::JobState::Pending) => "pending",
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Succeeded) => "succeeded",
        Ok(pb::JobState::Failed) => "failed",
        Ok(pb::JobState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

fn task_state_name(s: i32) -> &'static str {
    match pb::TaskState::try_from(s) {
        Ok(pb::TaskState::Pending) => "pending",
        Ok(pb::TaskState::Assigned) => "assigned",
        Ok(pb::TaskState::Placed) => "placed",
        Ok(pb::TaskState::Running) => "running",
        Ok(pb::TaskState::Succeeded) => "succeeded",
        Ok(pb::TaskState::Failed) => "failed",
        Ok(pb::TaskState::Lost) => "lost",
        Ok(pb::TaskState::Cancelled) => "cancelled",
        Ok(pb::TaskState::Preempted) => "preempted",
        _ => "unknown",
    }
}

fn summary_view(s: &pb::JobSummary) -> JobSummaryView {
    let c = s.counts.unwrap_or_default();
    JobSummaryView {
        name: s.name.clone(),
        state: job_state_name(s.state),
        task_count: s.tasks,
        counts: CountsView {
            pending: c.pending,
            assigned: c.assigned,
            placed: c.placed,
            running: c.running,
            succeeded: c.succeeded,
            failed: c.failed,
            lost: c.lost,
            cancelled: c.cancelled,
            preempted: c.preempted,
        },
        request: request_view(s.request.as_ref()),
        priority: s.priority,
        locality: (!s.locality.is_empty()).then(|| s.locality.clone()),
        tenant: s.tenant.clone(),
        band: s.band.clone(),
        submitted_unix_ms: s.submitted_unix_ms,
    }
}

fn job_view(s: &pb::JobStatus) -> JobView {
    let spec = s.spec.clone().unwrap_or_default();
    JobView {
        summary: summary_view(&s.summary.clone().unwrap_or_default()),
        command: spec.command,
        constraints: spec.constraints.into_iter().collect(),
        tasks: s
            .tasks
            .iter()
            .map(|t| TaskView {
                index: t.index,
                state: task_state_name(t.state),
                cluster: (!t.cluster.is_empty()).then(|| t.cluster.clone()),
                machine: (!t.machine.is_empty()).then(|| t.machine.clone()),
                exit_code: t.exit_code,
                attempts: t.attempts,
                next_retry_unix_ms: t.next_retry_unix_ms,
                reason: t.reason.clone(),
            })
            .collect(),
    }
}

fn print_structured<T: Serialize>(value: &T, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_yaml::to_string(value)?),
        Format::Table => unreachable!("tables are printed by each command"),
    }
    Ok(())
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn age(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".to_string();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let s = ((now - unix_ms) / 1000).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

pub async fn get(server: &Target, cmd: GetCommand) -> anyhow::Result<()> {
    let c = client(server).await?;
    match cmd {
        GetCommand::Jobs { output, state } => {
            let state = match state.as_deref() {
                None => pb::JobState::Unspecified,
                Some("pending") => pb::JobState::Pending,
                Some("running") => pb::JobState::Running,
                Some("succeeded") => pb::JobState::Succeeded,
                Some("failed") => pb::JobState::Failed,
                Some(_) => pb::JobState::Cancelled,
            } as i32;
            let jobs = retry(RETRY_FOR, || {
                let mut c = c.clone();
                async move { c.list_jobs(pb::ListJobsRequest { state }).await }
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .jobs;
            if output != Format::Table {
                let views: Vec<JobSummaryView> = jobs.iter().map(summary_view).collect();
                return print_structured(&views, output);
            }
            let rows = jobs
                .iter()
                .map(|j| {
                    let n = j.counts.unwrap_or_default();
                    vec![
                        j.name.clone(),
                        job_state_name(j.state).to_string(),
                        j.tasks.to_string(),
                        n.pending.to_string(),
                        n.assigned.to_string(),
                        (n.placed + n.running).to_string(),
                        n.succeeded.to_string(),
                        n.failed.to_string(),
                        age(j.submitted_unix_ms),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "NAME",
                        "STATE",
                        "TASKS",
                        "PENDING",
                        "ASSIGNED",
                        "PLACED",
                        "SUCCEEDED",
                        "FAILED",
                        "AGE"
                    ],
                    rows
                )
            );
        }
        GetCommand::Job { name, output } => {
            let s = get_job(&c, &name).await?;
            if output != Format::Table {
                return print_structured(&job_view(&s), output);
            }
            let v = job_view(&s);
            println!(
                "job/{}  {}  {} task(s)",
                v.summary.name, v.summary.state, v.summary.task_count
            );
            let rows = v
                .tasks
                .iter()
                .map(|t| {
                    vec![
                        t.index.to_string(),
                        t.state.to_string(),
                        t.cluster.clone().unwrap_or_else(|| "-".into()),
                        t.machine.clone().unwrap_or_else(|| "-".into()),
                        t.exit_code.map_or("-".into(), |c| c.to_string()),
                        t.attempts.to_string(),
                        t.next_retry_unix_ms.map_or("-".into(), retry_in),
                        if t.reason.is_empty() {
                            "-".into()
                        } else {
                            t.reason.clone()
                        },
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "INDEX", "STATE", "CLUSTER", "MACHINE", "EXIT", "ATTEMPTS", "RETRY",
                        "REASON"
                    ],
                    rows
                )
            );
        }
        GetCommand::Machines { cluster, output } => {
            let cluster = cluster.unwrap_or_default();
            let mut machines = retry(RETRY_FOR, || {
                let mut c = c.clone();
                let cluster = cluster.clone();
                async move { c.list_machines(pb::ListMachinesRequest { cluster }).await }
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .machines;
            machines.sort_by(|a, b| (&a.cluster, &a.name).cmp(&(&b.cluster, &b.name)));
            if output != Format::Table {
                let views: Vec<MachineView> = machines
                    .iter()
                    .map(|m| MachineView {
                        name: m.name.clone(),
                        cluster: m.cluster.clone(),
                        up: m.up,
                        capacity: request_view(m.capacity.as_ref()),
                        allocated: request_view(m.allocated.as_ref()),
                        labels: m.labels.clone().into_iter().collect(),
                        tasks: m.tasks.clone(),
                    })
                    .collect();
                return print_structured(&views, output);
            }
            let rows = machines
                .iter()
                .map(|m| {
                    let cap = resources(m.capacity.as_ref());
                    let alloc = resources(m.allocated.as_ref());
                    vec![
                        m.cluster.clone(),
                        m.name.clone(),
                        if m.up { "up" } else { "lost" }.to_string(),
                        format!("{}/{}", format_cpu(alloc.cpu), format_cpu(cap.cpu)),
                        format!(
                            "{}/{}",
                            format_bytes(alloc.memory),
                            format_bytes(cap.memory)
                        ),
                        m.tasks.len().to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["CLUSTER", "MACHINE", "STATUS", "CPU", "MEMORY", "TASKS"],
                    rows
                )
            );
        }
        GetCommand::Quotas { output } => {
            let quotas = retry(RETRY_FOR, || {
                let mut c = c.clone();
                async move { c.list_quotas(pb::ListQuotasRequest {}).await }
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .quotas;
            if output != Format::Table {
                let views: Vec<QuotaView> = quotas
                    .iter()
                    .map(|q| QuotaView {
                        tenant: q.tenant.clone(),
                        band: q.band.clone(),
                        cpu: q.cpu.clone(),
                        memory: q.memory.clone(),
                        gpu: q.gpu.clone(),
                        tasks: q.tasks,
                        used: request_view(q.used.as_ref()),
                        used_tasks: q.used_tasks,
                    })
                    .collect();
                return print_structured(&views, output);
            }
            println!(
                "{:<16} {:<12} {:>16} {:>20} {:>10} {:>14}",
                "TENANT", "BAND", "CPU", "MEMORY", "GPU", "TASKS"
            );
            for q in &quotas {
                let used = resources(q.used.as_ref());
                let of = |used: String, limit: &Option<String>| {
                    format!("{used}/{}", limit.as_deref().unwrap_or("-"))
                };
                println!(
                    "{:<16} {:<12} {:>16} {:>20} {:>10} {:>14}",
                    q.tenant,
                    q.band,
                    of(sched_core::resources::format_cpu(used.cpu), &q.cpu),
                    of(sched_core::resources::format_bytes(used.memory), &q.memory),
                    of(sched_core::resources::format_gpu(used.gpu), &q.gpu),
                    of(q.used_tasks.to_string(), &q.tasks.map(|t| t.to_string())),
                );
            }
        }
        GetCommand::Clusters { output } => {
            let clusters = retry(RETRY_FOR, || {
                let mut c = c.clone();
                async move { c.list_clusters(pb::ListClustersRequest {}).await }
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .clusters;
            if output != Format::Table {
                let views: Vec<ClusterView> = clusters
                    .iter()
                    .map(|c| ClusterView {
                        name: c.name.clone(),
                        location: c.location.clone(),
                        up: c.up,
                        machines: c.machines,
                        capacity: request_view(c.capacity.as_ref()),
                        allocated: request_view(c.allocated.as_ref()),
                        queued: request_view(c.queued.as_ref()),
                        queue_len: c.queue_len,
                        last_heartbeat_unix_ms: c.last_heartbeat_unix_ms,
                    })
                    .collect();
                return print_structured(&views, output);
            }
            let rows = clusters
                .iter()
                .map(|c| {
                    let cap = resources(c.capacity.as_ref());
                    let alloc = resources(c.allocated.as_ref());
                    vec![
                        c.name.clone(),
                        c.location.clone(),
                        if c.up { "up" } else { "down" }.to_string(),
                        c.machines.to_string(),
                        format!("{}/{}", format_cpu(alloc.cpu), format_cpu(cap.cpu)),
                        format!(
                            "{}/{}",
                            format_bytes(alloc.memory),
                            format_bytes(cap.memory)
                        ),
                        c.queue_len.to_string(),
                        age(c.last_heartbeat_unix_ms),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "NAME",
                        "LOCATION",
                        "STATUS",
                        "MACHINES",
                        "CPU",
                        "MEMORY",
                        "QUEUE",
                        "HEARTBEAT"
                    ],
                    rows
                )
            );
        }
    }
    Ok(())
}

async fn get_job(c: &Client, name: &str) -> anyhow::Result<pb::JobStatus> {
    Ok(retry(RETRY_FOR, || {
        let mut c = c.clone();
        let name = name.to_string();
        async move { c.get_job(pb::GetJobRequest { name }).await }
    })
    .await
    .map_err(status_error)?
    .into_inner())
}

pub async fn describe(server: &Target, cmd: DescribeCommand) -> anyhow::Result<()> {
    let DescribeCommand::Job { name } = cmd;
    let c = client(server).await?;
    let d = retry(RETRY_FOR, || {
        let mut c = c.clone();
        let name = name.clone();
        async move { c.describe_job(pb::DescribeJobRequest { name }).await }
    })
    .await
    .map_err(status_error)?
    .into_inner();
    let status = d.status.unwrap_or_default();
    let v = job_view(&status);
    let s = &v.summary;
    let spec = status.spec.unwrap_or_default();
    let req = spec.resources.unwrap_or_default();
    println!("Name:         {}", s.name);
    println!("State:        {}", s.state);
    let c = &s.counts;
    println!(
        "Tasks:        {} (pending {}, assigned {}, placed {}, running {}, succeeded {}, failed {}, lost {}, cancelled {}, preempted {})",
        s.task_count, c.pending, c.assigned, c.placed, c.running, c.succeeded, c.failed, c.lost, c.cancelled, c.preempted
    );
    let mut request = format!("cpu {}, memory {}", req.cpu, req.memory);
    if let Some(d) = &req.disk {
        request.push_str(&format!(", disk {d}"));
    }
    if let Some(g) = &req.gpu {
        request.push_str(&format!(", gpu {g}"));
    }
    println!("Request:      {request} per task");
    println!("Tenant:       {}", s.tenant);
    println!("Priority:     {} ({})", s.priority, s.band);
    println!("Locality:     {}", s.locality.as_deref().unwrap_or("-"));
    if !v.constraints.is_empty() {
        let list: Vec<String> = v
            .constraints
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("Constraints:  {}", list.join(", "));
    }
    if !v.command.is_empty() {
        println!("Command:      {}", v.command.join(" "));
    }
    if let Some(r) = &spec.restart {
        let mut parts = Vec::new();
        if !r.policy.is_empty() {
            parts.push(format!("policy {}", r.policy));
        }
        if let Some(n) = r.max_attempts {
            parts.push(format!("max_attempts {n}"));
        }
        if let Some(b) = &r.backoff {
            parts.push(format!("backoff {b}"));
        }
        println!(
            "Restart:      {} (the rest: the policy's defaults)",
            parts.join(", ")
        );
    }
    if let Some(t) = &spec.ttl_after_finished {
        println!("TTL:          deleted {t} after it finished");
    }
    // Tasks that needed more than one attempt, or failed: the latest ones.
    let retried: Vec<&TaskView> = v
        .tasks
        .iter()
        .filter(|t| t.attempts > 1 || !t.reason.is_empty())
        .collect();
    if !retried.is_empty() {
        println!("Attempts:");
        for t in retried.iter().take(10) {
            let next = t.next_retry_unix_ms.map_or(String::new(), |at| {
                format!(", next attempt {}", retry_in(at))
            });
            let reason = if t.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", t.reason)
            };
            println!(
                "  task {} {} after {} attempt(s){next}{reason}",
                t.index, t.state, t.attempts
            );
        }
        if retried.len() > 10 {
            println!("  ... and {} more", retried.len() - 10);
        }
    }
    // Where the tasks are, grouped.
    let mut by_place: std::collections::BTreeMap<(String, &str), u32> = Default::default();
    for t in &v.tasks {
        if let Some(cl) = &t.cluster {
            *by_place.entry((cl.clone(), t.state)).or_insert(0) += 1;
        }
    }
    if !by_place.is_empty() {
        println!("Clusters:");
        for ((cl, st), n) in by_place {
            println!("  {cl}: {n} {st}");
        }
    }
    if !d.pending_reasons.is_empty() {
        println!("Why not running:");
        for r in &d.pending_reasons {
            println!("  {r}");
        }
    }
    println!("Events:");
    if d.events.is_empty() {
        println!("  <none>");
    }
    for e in &d.events {
        println!(
            "  {:>5}  {:<13}  {}",
            age(e.unix_ms),
            e.kind().name(),
            e.message
        );
    }
    Ok(())
}

/// `in 3s` (or `now`) for a retry time in Unix ms.
fn retry_in(at: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    if at <= now {
        "now".to_string()
    } else {
        format!("in {}", sched_core::lifecycle::Span((at - now) as u64))
    }
}

/// What `schedctl delete` removes.
#[derive(Debug, clap::Subcommand)]
pub enum DeleteCommand {
    /// A finished job and everything it left (tasks, placements, events,
    /// task directories after the retention); its name is free at once.
    Job {
        name: String,
        /// Cancel it first if it is still running.
        #[arg(long)]
        force: bool,
    },
    /// A cluster gone for good (it must be down): its unfinished tasks go
    /// back to pending, to run elsewhere.
    Cluster { name: String },
}

pub async fn delete(server: &Target, cmd: DeleteCommand) -> anyhow::Result<()> {
    let c = client(server).await?;
    match cmd {
        DeleteCommand::Job { name, force } => {
            retry(RETRY_FOR, || {
                let mut c = c.clone();
                let name = name.clone();
                async move { c.delete_job(pb::DeleteJobRequest { name, force }).await }
            })
            .await
            .map_err(status_error)?;
            println!("job/{name} deleted");
        }
        DeleteCommand::Cluster { name } => {
            let r = retry(RETRY_FOR, || {
                let mut c = c.clone();
                let name = name.clone();
                async move { c.delete_cluster(pb::DeleteClusterRequest { name }).await }
            })
            .await
            .map_err(status_error)?
            .into_inner();
            println!(
                "cluster/{name} deleted ({} unfinished task(s) taken back)",
                r.tasks_taken_back
            );
        }
    }
    Ok(())
}

pub async fn cancel(server: &Target, name: String) -> anyhow::Result<()> {
    let c = client(server).await?;
    retry(RETRY_FOR, || {
        let mut c = c.clone();
        let name = name.clone();
        async move { c.cancel_job(pb::CancelJobRequest { name }).await }
    })
    .await
    .map_err(status_error)?;
    println!("job/{name} cancelled");
    Ok(())
}

/// Prints events as they happen; reconnects when the scheduler restarts.
pub async fn watch(server: &Target, job: Option<String>) -> anyhow::Result<()> {
    let c = client(server).await?;
    let job = job.unwrap_or_default();
    loop {
        let mut stream = retry(Duration::MAX, || {
            let mut c = c.clone();
            let job = job.clone();
            async move { c.watch(pb::WatchRequest { job }).await }
        })
        .await
        .map_err(status_error)?
        .into_inner();
        while let Some(e) = stream.next().await {
            match e {
                Ok(e) => println!(
                    "{}  {:<20}  {:<13}  {}",
                    clock(e.unix_ms),
                    e.job,
                    e.kind().name(),
                    e.message
                ),
                Err(s) if crate::client::transient(&s) => break,
                Err(s) => return Err(status_error(s)),
            }
        }
        eprintln!("schedctl: watch stream ended; reconnecting");
        tokio::time::sleep(sched_proto::backoff::delay(3)).await;
    }
}

/// `HH:MM:SS.mmm` UTC.
fn clock(unix_ms: i64) -> String {
    let ms = unix_ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// `schedctl logs JOB[/INDEX] [-f]`: a task's output (every task's, one
/// after the other, without an index).
pub async fn logs(server: &Target, target: String, follow: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let (job, index) = match target.split_once('/') {
        Some((j, i)) => (
            j.to_string(),
            Some(i.parse::<u32>().map_err(|_| {
                anyhow::anyhow!("{target:?}: the task index after '/' must be a number")
            })?),
        ),
        None => (target.clone(), None),
    };
    let c = client(server).await?;
    let indices: Vec<u32> = match index {
        Some(i) => vec![i],
        None => {
            if follow {
                bail!("-f follows one task: give JOB/INDEX");
            }
            let s = get_job(&c, &job).await?;
            s.tasks.iter().map(|t| t.index).collect()
        }
    };
    let many = indices.len() > 1;
    for i in indices {
        if many {
            println!("==> {job}/{i} <==");
        }
        let stream = retry(RETRY_FOR, || {
            let mut c = c.clone();
            let job = job.clone();
            async move {
                c.task_logs(pb::TaskLogsRequest {
                    job,
                    index: i,
                    follow,
                    machine: String::new(),
                })
                .await
            }
        })
        .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) if many => {
                println!("({})", s.message());
                continue;
            }
            Err(s) => return Err(status_error(s)),
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(status_error)?;
            if chunk.stream == "stderr" {
                std::io::stderr().write_all(&chunk.data)?;
            } else {
                std::io::stdout().write_all(&chunk.data)?;
            }
        }
        std::io::stdout().flush()?;
    }
    Ok(())
}
