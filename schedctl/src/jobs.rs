//! The commands that talk to the global scheduler: submit, run, get,
//! describe, cancel, watch.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use sched_core::resources::Resources;
use sched_proto::pb;
use sched_proto::wkt::{self, Timestamp};
use serde::Serialize;
use tokio_stream::StreamExt;

use crate::client::{connect, random_u64, retry, retry_read, status_error, Client, Target};
use crate::human;
use crate::out::{self, outln};
use crate::output::{print_streamed, print_structured, Format, OutputArgs};

/// How long a change (submit, cancel, delete, quota) keeps retrying
/// UNAVAILABLE and RESOURCE_EXHAUSTED: a submit outlasts a scheduler's
/// restart or a full queue, and says so when it gives up. Reads give up
/// sooner (`client::retry_read`).
const RETRY_FOR: Duration = Duration::from_secs(120);

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The job file, YAML: `jobs: [{name, tasks, resources: {cpu, memory},
    /// command, ...}]` (as config/examples/jobs.yaml); `-`: standard input.
    /// A scheduler that cannot be reached is retried for 2 minutes.
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
    /// The job's name (lower-case letters, digits and `-`).
    name: String,
    /// How many identical tasks the job has.
    #[arg(
        long,
        default_value_t = 1,
        allow_hyphen_values = true,
        value_name = "N"
    )]
    tasks: u32,
    /// Cpu per task: cores (`2`, `0.5`) or millicores (`500m`).
    #[arg(long, value_name = "Q", allow_hyphen_values = true)]
    cpu: String,
    /// Memory per task: bytes or with a suffix (`512Mi`, `2Gi`, `1G`).
    #[arg(long, value_name = "Q", allow_hyphen_values = true)]
    memory: String,
    /// Disk per task, as memory (default: none).
    #[arg(long, value_name = "Q", allow_hyphen_values = true)]
    disk: Option<String>,
    /// GPUs per task, as cpu (default: none).
    #[arg(long, value_name = "Q", allow_hyphen_values = true)]
    gpu: Option<String>,
    /// Priority, 0-1000 (higher goes first and may preempt lower bands;
    /// default: the band's, or 0).
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    priority: Option<u32>,
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
    max_attempts: Option<u32>,
    /// Wait before the second attempt, doubled for each further one (`1s`).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    backoff: Option<wkt::Duration>,
    /// Delete the job this long after it finished (`30s`, `24h`; default:
    /// the policy's, 24h).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    ttl_after_finished: Option<wkt::Duration>,
    /// Whose job it is (default: the token's tenant; `default` without
    /// tokens). Only an admin may name another tenant.
    #[arg(long, value_name = "NAME")]
    tenant: Option<String>,
    /// A priority band (`production`, `batch`, ...) instead of --priority.
    #[arg(long, value_name = "NAME", conflicts_with = "priority")]
    band: Option<String>,
    /// Wait, with a progress bar, until every task is placed on a machine.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds (exit 1).
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
        #[command(flatten)]
        output: OutputArgs,
        /// Only jobs in this state.
        #[arg(long, value_parser = ["pending", "running", "succeeded", "failed", "cancelled"])]
        state: Option<String>,
    },
    /// One job and its tasks.
    Job {
        /// The job's name.
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Machines, as their clusters' local agents see them.
    Machines {
        /// Only this cluster's machines.
        #[arg(long, value_name = "C")]
        cluster: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The clusters that registered, with their load.
    Clusters {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// One cluster: its location, state, capacity and load.
    Cluster {
        /// The cluster's name.
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Quotas per tenant and band, with their usage.
    Quotas {
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `schedctl quota`.
#[derive(Debug, clap::Subcommand)]
pub enum QuotaCommand {
    /// Set a tenant's quota in a band (admins); limits not given are
    /// unlimited.
    Set {
        /// The tenant.
        #[arg(long, value_name = "NAME")]
        tenant: String,
        /// The priority band (`production`, `batch`, ...).
        #[arg(long, value_name = "BAND")]
        band: String,
        /// Cpu limit, in cores (`64`) or millicores (`500m`).
        #[arg(long, value_name = "Q")]
        cpu: Option<String>,
        /// Memory limit (`256Gi`).
        #[arg(long, value_name = "Q")]
        memory: Option<String>,
        /// GPU limit, as cpu.
        #[arg(long, value_name = "Q")]
        gpu: Option<String>,
        /// Limit on unfinished tasks.
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        tasks: Option<u64>,
    },
    /// Remove a tenant's quota in a band (admins).
    Remove {
        /// The tenant.
        #[arg(long, value_name = "NAME")]
        tenant: String,
        /// The priority band.
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
    outln!(
        "quota/{tenant}/{band} {}",
        if remove { "removed" } else { "set" }
    )?;
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum DescribeCommand {
    /// A job: its spec, tasks, why pending tasks are pending, its events.
    Job {
        /// The job's name.
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `schedctl logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The task: `JOB/INDEX`, or `JOB` for every task, one after another.
    #[arg(value_name = "JOB[/INDEX]")]
    target: String,
    /// Keep printing until the task exits.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines of each output stream (stdout, stderr) so far.
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
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
        let jobs = list_jobs(&c, pb::JobState::Unspecified as i32, true).await?;
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
                    output: OutputArgs::table(),
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
    let yaml = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("cannot read the job file from standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?
    };
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
        let Some((k, v)) = c.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(crate::usage(format!(
                "--constraints: {c:?} is not key=value"
            )));
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
        outln!("job/{j} submitted")?;
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
                async move {
                    c.get_job(pb::GetJobRequest {
                        name,
                        view: pb::JobView::Summary as i32,
                    })
                    .await
                }
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
    tasks: Option<u64>,
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
    #[serde(serialize_with = "rfc3339", skip_serializing_if = "Option::is_none")]
    submit_time: Option<Timestamp>,
}

#[derive(Serialize)]
struct TaskView {
    index: u32,
    state: &'static str,
    cluster: Option<String>,
    machine: Option<String>,
    exit_code: Option<i32>,
    attempts: u32,
    #[serde(serialize_with = "rfc3339", skip_serializing_if = "Option::is_none")]
    next_retry_time: Option<Timestamp>,
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
    /// Its GPU devices (`0+1`, `3:460`), as the task's `SCHED_GPUS`.
    #[serde(skip_serializing_if = "String::is_empty")]
    gpus: String,
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
    #[serde(serialize_with = "rfc3339", skip_serializing_if = "Option::is_none")]
    last_heartbeat_time: Option<Timestamp>,
}

fn resources(r: Option<&pb::Resources>) -> Resources {
    r.map_or(Resources::ZERO, |r| {
        Resources::from_array([r.cpu_millis, r.memory_bytes, r.disk_bytes, r.gpu_millis])
    })
}

fn request_view(r: Option<&pb::Resources>) -> RequestView {
    let r = resources(r);
    RequestView {
        cpu: human::cpu(r.cpu.0),
        memory: human::bytes(r.memory.0),
        disk: (r.disk.0 > 0).then(|| human::bytes(r.disk.0)),
        gpu: (r.gpu.0 > 0).then(|| human::cpu(r.gpu.0)),
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
        submit_time: s.submit_time,
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
                next_retry_time: t.next_retry_time,
                reason: t.reason.clone(),
                gpus: t.gpus.clone(),
            })
            .collect(),
    }
}

/// A `--backoff` or `--ttl-after-finished` value as a job file writes it
/// (`500ms`, `90s`, `1h30m`; at most 365 days), as the API's duration.
fn duration_arg(text: &str) -> Result<wkt::Duration, String> {
    sched_core::lifecycle::Span::parse("duration", text)
        .map(|s| wkt::duration(s.ms()))
        .map_err(|e| e.reason)
}

/// A duration from the API as a job file writes it (`1h30m`).
fn span(d: &wkt::Duration) -> String {
    wkt::duration_ms(d).map_or_else(
        |_| d.to_string(),
        |ms| sched_core::lifecycle::Span(ms).to_string(),
    )
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

/// An API time as `-o json` and `-o yaml` print it: RFC 3339 in UTC
/// (`2024-02-29T12:34:56.789Z`), as protobuf's JSON mapping writes it.
fn rfc3339<S: serde::Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(t),
        None => s.serialize_none(),
    }
}

/// How long ago `t` was (`42s`, `7m`, `3h`); `-` when unset.
fn age(t: Option<&Timestamp>) -> String {
    let Some(unix_ms) = t.map(wkt::unix_ms) else {
        return "-".to_string();
    };
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
            let output = output.format();
            let state = match state.as_deref() {
                None => pb::JobState::Unspecified,
                Some("pending") => pb::JobState::Pending,
                Some("running") => pb::JobState::Running,
                Some("succeeded") => pb::JobState::Succeeded,
                Some("failed") => pb::JobState::Failed,
                Some(_) => pb::JobState::Cancelled,
            } as i32;
            let jobs = list_jobs(&c, state, false).await?;
            if output.structured() {
                let views: Vec<JobSummaryView> = jobs.iter().map(summary_view).collect();
                return print_structured(&views, output);
            }
            out::print(&jobs_table(&jobs, output == Format::Wide))?;
        }
        GetCommand::Job { name, output } => {
            let output = output.format();
            let s = get_job(&c, &name).await?;
            if output.structured() {
                return print_structured(&job_view(&s), output);
            }
            let v = job_view(&s);
            outln!(
                "job/{}  {}  {} task(s)",
                v.summary.name,
                v.summary.state,
                v.summary.task_count
            )?;
            out::print(&tasks_table(&v.tasks, output == Format::Wide))?;
        }
        GetCommand::Machines { cluster, output } => {
            let output = output.format();
            let cluster = cluster.unwrap_or_default();
            let mut machines = retry_read(|| {
                let mut c = c.clone();
                let cluster = cluster.clone();
                async move { c.list_machines(pb::ListMachinesRequest { cluster }).await }
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .machines;
            machines.sort_by(|a, b| (&a.cluster, &a.name).cmp(&(&b.cluster, &b.name)));
            if output.structured() {
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
            out::print(&machines_table(&machines, output == Format::Wide))?;
        }
        GetCommand::Quotas { output } => {
            let output = output.format();
            let quotas = retry_read(|| {
                let mut c = c.clone();
                async move { c.list_quotas(pb::ListQuotasRequest {}).await }
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .quotas;
            if output.structured() {
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
            out::print(&quotas_table(&quotas))?;
        }
        GetCommand::Clusters { output } => {
            let output = output.format();
            let clusters = list_clusters(&c).await?;
            if output.structured() {
                let views: Vec<ClusterView> = clusters.iter().map(cluster_view).collect();
                return print_structured(&views, output);
            }
            out::print(&clusters_table(&clusters, output == Format::Wide))?;
        }
        GetCommand::Cluster { name, output } => {
            let output = output.format();
            let clusters = list_clusters(&c).await?;
            let Some(cluster) = clusters.iter().find(|c| c.name == name) else {
                return Err(status_error(tonic::Status::not_found(format!(
                    "no cluster named {name:?} has registered"
                ))));
            };
            if output.structured() {
                return print_structured(&cluster_view(cluster), output);
            }
            out::print(&cluster_text(cluster))?;
        }
    }
    Ok(())
}

async fn list_clusters(c: &Client) -> anyhow::Result<Vec<pb::ClusterStatus>> {
    Ok(retry_read(|| {
        let mut c = c.clone();
        async move { c.list_clusters(pb::ListClustersRequest {}).await }
    })
    .await
    .map_err(status_error)?
    .into_inner()
    .clusters)
}

/// `get jobs`: placed and running apart, lost in its own column; wide adds
/// who and what.
fn jobs_table(jobs: &[pb::JobSummary], wide: bool) -> String {
    let mut header = vec![
        "NAME",
        "STATE",
        "TASKS",
        "PENDING",
        "ASSIGNED",
        "PLACED",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "LOST",
    ];
    if wide {
        header.extend(["CANCELLED", "TENANT", "BAND", "PRIORITY", "CPU", "MEMORY"]);
    }
    header.push("AGE");
    let rows = jobs
        .iter()
        .map(|j| {
            let n = j.counts.unwrap_or_default();
            let mut row = vec![
                j.name.clone(),
                job_state_name(j.state).to_string(),
                j.tasks.to_string(),
                n.pending.to_string(),
                n.assigned.to_string(),
                n.placed.to_string(),
                n.running.to_string(),
                n.succeeded.to_string(),
                n.failed.to_string(),
                n.lost.to_string(),
            ];
            if wide {
                let r = request_view(j.request.as_ref());
                row.extend([
                    n.cancelled.to_string(),
                    j.tenant.clone(),
                    j.band.clone(),
                    j.priority.to_string(),
                    r.cpu,
                    r.memory,
                ]);
            }
            row.push(age(j.submit_time.as_ref()));
            row
        })
        .collect();
    table(&header, rows)
}

/// `get job NAME`: one line per task.
fn tasks_table(tasks: &[TaskView], wide: bool) -> String {
    let mut header = vec![
        "INDEX", "STATE", "CLUSTER", "MACHINE", "EXIT", "ATTEMPTS", "RETRY",
    ];
    if wide {
        header.extend(["GPUS", "REASON"]);
    }
    let rows = tasks
        .iter()
        .map(|t| {
            let mut row = vec![
                t.index.to_string(),
                t.state.to_string(),
                t.cluster.clone().unwrap_or_else(|| "-".into()),
                t.machine.clone().unwrap_or_else(|| "-".into()),
                t.exit_code.map_or("-".into(), |c| c.to_string()),
                t.attempts.to_string(),
                t.next_retry_time.as_ref().map_or("-".into(), retry_in),
            ];
            if wide {
                row.push(if t.gpus.is_empty() {
                    "-".into()
                } else {
                    t.gpus.clone()
                });
                row.push(if t.reason.is_empty() {
                    "-".into()
                } else {
                    t.reason.clone()
                });
            }
            row
        })
        .collect();
    table(&header, rows)
}

/// `USED/CAPACITY` in people's units.
fn used_of(used: String, capacity: String) -> String {
    format!("{used}/{capacity}")
}

fn machines_table(machines: &[pb::MachineStatus], wide: bool) -> String {
    let mut header = vec!["CLUSTER", "MACHINE", "STATUS", "CPU", "MEMORY", "TASKS"];
    if wide {
        header.extend(["GPU", "GPU_FREE", "DISK", "LABELS"]);
    }
    let rows = machines
        .iter()
        .map(|m| {
            let cap = request_view(m.capacity.as_ref());
            let alloc = request_view(m.allocated.as_ref());
            let mut row = vec![
                m.cluster.clone(),
                m.name.clone(),
                if m.up { "up" } else { "lost" }.to_string(),
                used_of(alloc.cpu, cap.cpu),
                used_of(alloc.memory, cap.memory),
                m.tasks.len().to_string(),
            ];
            if wide {
                let or_0 = |v: Option<String>| v.unwrap_or_else(|| "0".into());
                let labels: std::collections::BTreeMap<_, _> = m.labels.iter().collect();
                let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                // Free milli-GPUs of each device, by index.
                let free: Vec<String> = m.gpu_free_millis.iter().map(u32::to_string).collect();
                row.extend([
                    used_of(or_0(alloc.gpu), or_0(cap.gpu)),
                    if free.is_empty() {
                        "-".to_string()
                    } else {
                        free.join(",")
                    },
                    used_of(or_0(alloc.disk), or_0(cap.disk)),
                    if labels.is_empty() {
                        "-".to_string()
                    } else {
                        labels.join(",")
                    },
                ]);
            }
            row
        })
        .collect();
    table(&header, rows)
}

fn quotas_table(quotas: &[pb::Quota]) -> String {
    let rows = quotas
        .iter()
        .map(|q| {
            let used = request_view(q.used.as_ref());
            let of = |used: String, limit: &Option<String>| {
                used_of(used, limit.clone().unwrap_or_else(|| "-".into()))
            };
            vec![
                q.tenant.clone(),
                q.band.clone(),
                of(used.cpu, &q.cpu),
                of(used.memory, &q.memory),
                of(used.gpu.unwrap_or_else(|| "0".into()), &q.gpu),
                of(q.used_tasks.to_string(), &q.tasks.map(|t| t.to_string())),
            ]
        })
        .collect();
    table(&["TENANT", "BAND", "CPU", "MEMORY", "GPU", "TASKS"], rows)
}

fn cluster_view(c: &pb::ClusterStatus) -> ClusterView {
    ClusterView {
        name: c.name.clone(),
        location: c.location.clone(),
        up: c.up,
        machines: c.machines,
        capacity: request_view(c.capacity.as_ref()),
        allocated: request_view(c.allocated.as_ref()),
        queued: request_view(c.queued.as_ref()),
        queue_len: c.queue_len,
        last_heartbeat_time: c.last_heartbeat_time,
    }
}

fn clusters_table(clusters: &[pb::ClusterStatus], wide: bool) -> String {
    let mut header = vec![
        "NAME", "LOCATION", "STATUS", "MACHINES", "CPU", "MEMORY", "QUEUE",
    ];
    if wide {
        header.extend(["GPU", "QUEUED_CPU", "QUEUED_MEMORY"]);
    }
    header.push("HEARTBEAT");
    let rows = clusters
        .iter()
        .map(|c| {
            let v = cluster_view(c);
            let mut row = vec![
                v.name,
                v.location,
                if v.up { "up" } else { "down" }.to_string(),
                v.machines.to_string(),
                used_of(v.allocated.cpu, v.capacity.cpu),
                used_of(v.allocated.memory, v.capacity.memory),
                v.queue_len.to_string(),
            ];
            if wide {
                let or_0 = |v: Option<String>| v.unwrap_or_else(|| "0".into());
                row.extend([
                    used_of(or_0(v.allocated.gpu), or_0(v.capacity.gpu)),
                    v.queued.cpu,
                    v.queued.memory,
                ]);
            }
            row.push(age(c.last_heartbeat_time.as_ref()));
            row
        })
        .collect();
    table(&header, rows)
}

/// `get cluster NAME`: one cluster, a field a line.
fn cluster_text(c: &pb::ClusterStatus) -> String {
    let v = cluster_view(c);
    let amounts = |r: &RequestView| {
        let mut s = format!("cpu {}, memory {}", r.cpu, r.memory);
        if let Some(g) = &r.gpu {
            s.push_str(&format!(", gpu {g}"));
        }
        if let Some(d) = &r.disk {
            s.push_str(&format!(", disk {d}"));
        }
        s
    };
    let mut s = String::new();
    s.push_str(&format!("Name:       {}\n", v.name));
    s.push_str(&format!("Location:   {}\n", v.location));
    s.push_str(&format!(
        "Status:     {}\n",
        if v.up { "up" } else { "down" }
    ));
    s.push_str(&format!("Machines:   {}\n", v.machines));
    s.push_str(&format!("Capacity:   {}\n", amounts(&v.capacity)));
    s.push_str(&format!("Allocated:  {}\n", amounts(&v.allocated)));
    s.push_str(&format!(
        "Queued:     {} task(s): {}\n",
        v.queue_len,
        amounts(&v.queued)
    ));
    s.push_str(&format!(
        "Heartbeat:  {} ago\n",
        age(v.last_heartbeat_time.as_ref())
    ));
    s
}

/// A job with every task: its summary (GetJob), then its tasks a page at
/// a time (ListTasks), so that a job of any size stays within the
/// message limits.
async fn get_job(c: &Client, name: &str) -> anyhow::Result<pb::JobStatus> {
    let mut status = retry_read(|| {
        let mut c = c.clone();
        let name = name.to_string();
        async move {
            c.get_job(pb::GetJobRequest {
                name,
                view: pb::JobView::Summary as i32,
            })
            .await
        }
    })
    .await
    .map_err(status_error)?
    .into_inner();
    status.tasks = list_tasks(c, name).await?;
    Ok(status)
}

/// Every task of job `name`, a page at a time.
async fn list_tasks(c: &Client, name: &str) -> anyhow::Result<Vec<pb::TaskStatus>> {
    let mut tasks = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = retry_read(|| {
            let mut c = c.clone();
            let asked = pb::ListTasksRequest {
                job: name.to_string(),
                page_size: TASKS_PER_PAGE,
                page_token: page_token.clone(),
                state: pb::TaskState::Unspecified as i32,
            };
            async move { c.list_tasks(asked).await }
        })
        .await
        .map_err(status_error)?
        .into_inner();
        tasks.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return Ok(tasks);
        }
        page_token = page.next_page_token;
    }
}

/// Tasks asked for per ListTasks call (the server's maximum).
const TASKS_PER_PAGE: i32 = 10_000;
/// Jobs asked for per ListJobs call (the server's maximum).
const JOBS_PER_PAGE: i32 = 1000;

/// Every job (in `state`; unspecified: any), a page at a time. `patient`:
/// retried as long as a command that waits is (else as a read is).
async fn list_jobs(c: &Client, state: i32, patient: bool) -> anyhow::Result<Vec<pb::JobSummary>> {
    let mut jobs = Vec::new();
    let mut page_token = String::new();
    loop {
        let call = || {
            let mut c = c.clone();
            let asked = pb::ListJobsRequest {
                state,
                page_size: JOBS_PER_PAGE,
                page_token: page_token.clone(),
                ..Default::default()
            };
            async move { c.list_jobs(asked).await }
        };
        let page = if patient {
            retry(RETRY_FOR, call).await
        } else {
            retry_read(call).await
        }
        .map_err(status_error)?
        .into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Ok(jobs);
        }
        page_token = page.next_page_token;
    }
}

/// What `describe job -o json|yaml` prints: the job as `get job` shows
/// it, why its pending tasks wait, and its events.
#[derive(Serialize)]
struct DescribeView<'a> {
    #[serde(flatten)]
    job: &'a JobView,
    pending_reasons: &'a [String],
    events: Vec<EventView>,
}

/// One event, as `describe -o json` and `watch -o json` print it.
#[derive(Serialize)]
struct EventView {
    #[serde(serialize_with = "rfc3339", skip_serializing_if = "Option::is_none")]
    event_time: Option<Timestamp>,
    job: String,
    kind: &'static str,
    message: String,
    /// Where `watch` resumes after it (the API's `since`).
    cursor: u64,
    /// The tasks a task event is about.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tasks: Vec<u32>,
}

fn event_view(e: &pb::Event) -> EventView {
    EventView {
        event_time: e.event_time,
        job: e.job.clone(),
        kind: e.kind().name(),
        message: e.message.clone(),
        cursor: e.cursor,
        tasks: e.tasks.clone(),
    }
}

pub async fn describe(server: &Target, cmd: DescribeCommand) -> anyhow::Result<()> {
    let DescribeCommand::Job { name, output } = cmd;
    let output = output.format();
    let c = client(server).await?;
    let d = retry_read(|| {
        let mut c = c.clone();
        let name = name.clone();
        async move { c.describe_job(pb::DescribeJobRequest { name }).await }
    })
    .await
    .map_err(status_error)?
    .into_inner();
    let mut status = d.status.unwrap_or_default();
    let tasks = status.summary.as_ref().map_or(0, |s| s.tasks as usize);
    if status.tasks.len() < tasks {
        // A large job's tasks are not inline: page them.
        status.tasks = list_tasks(&c, &name).await?;
    }
    let v = job_view(&status);
    if output.structured() {
        let view = DescribeView {
            job: &v,
            pending_reasons: &d.pending_reasons,
            events: d.events.iter().map(event_view).collect(),
        };
        return print_structured(&view, output);
    }
    let s = &v.summary;
    let spec = status.spec.unwrap_or_default();
    // In people's units (the spec's own text may be `33072176Ki`).
    let req = &s.request;
    outln!("Name:         {}", s.name)?;
    outln!("State:        {}", s.state)?;
    let c = &s.counts;
    outln!(
        "Tasks:        {} (pending {}, assigned {}, placed {}, running {}, succeeded {}, failed {}, lost {}, cancelled {}, preempted {})",
        s.task_count, c.pending, c.assigned, c.placed, c.running, c.succeeded, c.failed, c.lost, c.cancelled, c.preempted
    )?;
    let mut request = format!("cpu {}, memory {}", req.cpu, req.memory);
    if let Some(d) = &req.disk {
        request.push_str(&format!(", disk {d}"));
    }
    if let Some(g) = &req.gpu {
        request.push_str(&format!(", gpu {g}"));
    }
    outln!("Request:      {request} per task")?;
    outln!("Tenant:       {}", s.tenant)?;
    outln!("Priority:     {} ({})", s.priority, s.band)?;
    outln!("Locality:     {}", s.locality.as_deref().unwrap_or("-"))?;
    if !v.constraints.is_empty() {
        let list: Vec<String> = v
            .constraints
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        outln!("Constraints:  {}", list.join(", "))?;
    }
    if !v.command.is_empty() {
        outln!("Command:      {}", v.command.join(" "))?;
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
            parts.push(format!("backoff {}", span(b)));
        }
        outln!(
            "Restart:      {} (the rest: the policy's defaults)",
            parts.join(", ")
        )?;
    }
    if let Some(t) = &spec.ttl_after_finished {
        outln!("TTL:          deleted {} after it finished", span(t))?;
    }
    // Tasks that needed more than one attempt, or failed: the latest ones.
    let retried: Vec<&TaskView> = v
        .tasks
        .iter()
        .filter(|t| t.attempts > 1 || !t.reason.is_empty())
        .collect();
    if !retried.is_empty() {
        outln!("Attempts:")?;
        for t in retried.iter().take(10) {
            let next = t.next_retry_time.as_ref().map_or(String::new(), |at| {
                format!(", next attempt {}", retry_in(at))
            });
            let reason = if t.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", t.reason)
            };
            outln!(
                "  task {} {} after {} attempt(s){next}{reason}",
                t.index,
                t.state,
                t.attempts
            )?;
        }
        if retried.len() > 10 {
            outln!("  ... and {} more", retried.len() - 10)?;
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
        outln!("Clusters:")?;
        for ((cl, st), n) in by_place {
            outln!("  {cl}: {n} {st}")?;
        }
    }
    if !d.pending_reasons.is_empty() {
        outln!("Why not running:")?;
        for r in &d.pending_reasons {
            outln!("  {r}")?;
        }
    }
    outln!("Events:")?;
    if d.events.is_empty() {
        outln!("  <none>")?;
    }
    for e in &d.events {
        outln!(
            "  {:>5}  {:<13}  {}",
            age(e.event_time.as_ref()),
            e.kind().name(),
            e.message
        )?;
    }
    Ok(())
}

/// `in 3s` (or `now`) for a retry time in Unix ms.
fn retry_in(at: &Timestamp) -> String {
    let at = wkt::unix_ms(at);
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
        /// The job's name.
        name: String,
        /// Cancel it first if it is still running.
        #[arg(long)]
        force: bool,
    },
    /// A cluster gone for good (it must be down): its unfinished tasks go
    /// back to pending, to run elsewhere.
    Cluster {
        /// The cluster's name.
        name: String,
    },
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
            outln!("job/{name} deleted")?;
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
            outln!(
                "cluster/{name} deleted ({} unfinished task(s) taken back)",
                r.tasks_taken_back
            )?;
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
    outln!("job/{name} cancelled")?;
    Ok(())
}

/// Prints events as they happen; reconnects when the scheduler restarts
/// (or a new leader takes over) and resumes after the last event printed
/// (`since`), so none is lost or printed twice.
/// The first connection gives up as other reads do (a wrong address is
/// said in seconds); once following, a restart is waited out.
pub async fn watch(server: &Target, job: Option<String>, output: Format) -> anyhow::Result<()> {
    let c = client(server).await?;
    let job = job.unwrap_or_default();
    let mut first = true;
    // The last event's cursor: where a reconnected stream resumes.
    let mut since: Option<u64> = None;
    loop {
        let call = || {
            let mut c = c.clone();
            let job = job.clone();
            async move { c.watch(pb::WatchRequest { job, since }).await }
        };
        let stream = if first {
            retry_read(call).await
        } else {
            retry(Duration::MAX, call).await
        };
        first = false;
        let mut stream = stream.map_err(status_error)?.into_inner();
        while let Some(e) = stream.next().await {
            if let Ok(e) = &e {
                if e.cursor > 0 {
                    since = Some(e.cursor);
                }
            }
            match e {
                Ok(e) if output.structured() => print_streamed(&event_view(&e), output)?,
                Ok(e) => outln!(
                    "{}  {:<20}  {:<13}  {}",
                    clock(e.event_time.as_ref()),
                    e.job,
                    e.kind().name(),
                    e.message
                )?,
                Err(s) if crate::client::transient(&s) => break,
                Err(s) => return Err(status_error(s)),
            }
        }
        eprintln!("schedctl: watch stream ended; reconnecting");
        tokio::time::sleep(sched_proto::backoff::delay(3)).await;
    }
}

/// `HH:MM:SS.mmm` UTC.
fn clock(t: Option<&Timestamp>) -> String {
    let ms = t.map_or(0, wkt::unix_ms).rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// `schedctl logs JOB[/INDEX] [-f] [--tail N]`: a task's output (every
/// task's, one after the other, without an index).
pub async fn logs(server: &Target, args: LogsArgs) -> anyhow::Result<()> {
    let LogsArgs {
        target,
        follow,
        tail,
    } = args;
    let (job, index) = match target.split_once('/') {
        Some((j, i)) => (
            j.to_string(),
            Some(i.parse::<u32>().map_err(|_| {
                crate::usage(format!(
                    "{target:?}: the task index after '/' must be a number"
                ))
            })?),
        ),
        None => (target.clone(), None),
    };
    if follow && index.is_none() {
        return Err(crate::usage("-f follows one task: give JOB/INDEX"));
    }
    let c = client(server).await?;
    let indices: Vec<u32> = match index {
        Some(i) => vec![i],
        None => {
            let s = get_job(&c, &job).await?;
            s.tasks.iter().map(|t| t.index).collect()
        }
    };
    let many = indices.len() > 1;
    for i in indices {
        if many {
            outln!("==> {job}/{i} <==")?;
        }
        // With --tail, what is there now first, cut to its last lines;
        // then, with -f, the rest as it comes, past what was printed.
        let mut skip = Streams::default();
        if let Some(n) = tail {
            let mut so_far = match log_stream(&c, &job, i, false).await {
                Ok(s) => s,
                Err(s) if many => {
                    outln!("({})", s.message())?;
                    continue;
                }
                Err(s) => return Err(status_error(s)),
            };
            let mut text = Streams::default();
            while let Some(chunk) = so_far.next().await {
                let chunk = chunk.map_err(status_error)?;
                text.of(&chunk.stream).extend_from_slice(&chunk.data);
            }
            out::write_bytes(last_lines(&text.stdout, n))?;
            std::io::Write::write_all(&mut std::io::stderr(), last_lines(&text.stderr, n))?;
            if !follow {
                continue;
            }
            skip = Streams {
                stdout: text.stdout,
                stderr: text.stderr,
            };
        }
        let mut stream = match log_stream(&c, &job, i, follow).await {
            Ok(s) => s,
            Err(s) if many => {
                outln!("({})", s.message())?;
                continue;
            }
            Err(s) => return Err(status_error(s)),
        };
        let mut seen = (0usize, 0usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(status_error)?;
            let (already, n) = if chunk.stream == "stderr" {
                (skip.stderr.len(), &mut seen.1)
            } else {
                (skip.stdout.len(), &mut seen.0)
            };
            // The part of this chunk past what --tail already covered.
            let from = already.saturating_sub(*n).min(chunk.data.len());
            *n += chunk.data.len();
            let data = &chunk.data[from..];
            if chunk.stream == "stderr" {
                std::io::Write::write_all(&mut std::io::stderr(), data)?;
            } else {
                out::write_bytes(data)?;
            }
        }
    }
    Ok(())
}

/// A task's stdout and stderr.
#[derive(Default)]
struct Streams {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Streams {
    fn of(&mut self, stream: &str) -> &mut Vec<u8> {
        if stream == "stderr" {
            &mut self.stderr
        } else {
            &mut self.stdout
        }
    }
}

async fn log_stream(
    c: &Client,
    job: &str,
    index: u32,
    follow: bool,
) -> Result<tonic::Streaming<pb::LogChunk>, tonic::Status> {
    Ok(retry_read(|| {
        let mut c = c.clone();
        let job = job.to_string();
        async move {
            c.task_logs(pb::TaskLogsRequest {
                job,
                index,
                follow,
                machine: String::new(),
            })
            .await
        }
    })
    .await?
    .into_inner())
}

/// The last `n` lines of `text` (a last line without its newline counts).
fn last_lines(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut newlines = 0;
    for (i, &b) in body.iter().enumerate().rev() {
        if b == b'\n' {
            newlines += 1;
            if newlines == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(last_lines(b"a\nb\n", 0), b"");
        assert_eq!(last_lines(b"", 3), b"");
    }

    #[test]
    fn jobs_table_shows_running_and_lost_apart_from_placed() {
        let job = pb::JobSummary {
            name: "web".into(),
            tasks: 6,
            counts: Some(pb::TaskCounts {
                placed: 1,
                running: 2,
                lost: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = jobs_table(&[job], false);
        let mut lines = t.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!(col("PLACED"), "1");
        assert_eq!(col("RUNNING"), "2");
        assert_eq!(col("LOST"), "3");
    }
}
