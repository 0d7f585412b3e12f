//! The node agent: registers its machine (or many hollow ones) with the
//! cluster's local agent, heartbeats, runs the tasks it is given as
//! processes, keeps their output, and reports their states.
//!
//! # Layout
//! - [`tasks`]: task processes, and finding them again after a restart.
//! - [`dirs`]: the task directories under the work dir (their layout, the
//!   trash of deleted jobs), and the sweep that removes old ones.
//! - [`logs`]: the `Node` gRPC service that serves task output.
//! - [`gpus`]: the environment that shows a task its GPU devices.
//! - [`run_as`]: who tasks run as (`--run-as`), and the pool of dynamic
//!   uids. Their resource limits: [`crate::limits`].
//! - this module: the connection to the local agent (register, heartbeat,
//!   work stream, reports), with jittered exponential backoff; the fence;
//!   the periodic sweep of old task directories.
//!
//! # The fence
//! A node that has not heard from its local agent (no registration or
//! heartbeat answered) for the fence timeout stops all its tasks, and
//! reports them lost when it registers again. The global scheduler takes
//! the tasks of a cluster it has not heard from for its
//! `lifecycle.cluster_down_timeout` back and starts them elsewhere; with
//! the fence timeout plus the stop's grace period below that, a task taken
//! back is dead before its copy starts, whether the cluster or only this
//! node was cut off.

pub mod dirs;
pub mod gpus;
pub mod logs;
pub mod run_as;
pub mod tasks;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sched_core::resources::Resources;
use sched_proto::pb;
use sched_proto::pb::machines_client::MachinesClient;
use sched_proto::pb::node_server::NodeServer;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

use sched_proto::backoff::Backoff;
use tasks::Tasks;

use crate::error::AgentError;

/// One machine the node hosts.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub name: String,
    pub capacity: Resources,
    pub labels: std::collections::BTreeMap<String, String>,
    /// GPU devices, numbered 0..gpu_devices (0: none).
    pub gpu_devices: u32,
    /// Their model (empty without devices).
    pub gpu_model: String,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The local agent's URL.
    pub agent: String,
    /// The node's name (the machine's, for a real node).
    pub name: String,
    pub machines: Vec<MachineConfig>,
    pub work_dir: PathBuf,
    /// Hollow machines: tasks pretend to run for this long (or the `N` of a
    /// `sleep N` command) instead of starting processes.
    pub hollow: Option<Duration>,
    /// Tasks are killed when the node agent has been gone this long.
    pub lease: Duration,
    /// Where to serve task logs.
    pub listen: String,
    /// The URL the local agent reaches the logs at (default: the listener's).
    pub advertise: Option<String>,
    /// The `local-agent` binary, which supervises task processes.
    pub supervisor: PathBuf,
    /// Mutual TLS to the local agent and for the logs server.
    pub tls: Option<sched_security::Tls>,
    /// Serve logs in plaintext on a non-loopback address (`--insecure`).
    pub insecure: bool,
    /// Who tasks run as.
    pub run_as: run_as::RunAs,
    /// How tasks' cpu and memory requests are enforced.
    pub limits: crate::limits::Limits,
}

/// The fence timeout when none is given: half the global scheduler's
/// default `lifecycle.cluster_down_timeout` (60 s), which leaves the 5 s
/// grace of the stop and many missed heartbeats of margin.
pub const DEFAULT_FENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// When the node last heard from its local agent: a registration or a
/// heartbeat answered.
struct Contact(Mutex<Instant>);

impl Contact {
    fn new() -> Self {
        Contact(Mutex::new(Instant::now()))
    }

    fn touch(&self) {
        // Holds a plain Instant, written in one step.
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn last(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Capacity of this machine: all cpus and all memory.
pub fn detect_capacity() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(1 << 30, |kb| kb * 1024);
    Resources::new(cpus * 1000, memory)
}

fn channel(url: &str, tls: Option<&sched_security::Tls>) -> Result<Channel, AgentError> {
    let endpoint = sched_security::tls::endpoint(url, tls)
        .map_err(|e| sched_core::error::SpecError::new("--agent", e.to_string()))?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .connect_lazy())
}

/// Runs the node agent until `shutdown`, fenced after
/// [`DEFAULT_FENCE_TIMEOUT`]; then stops its tasks.
pub async fn run(config: NodeConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    run_fenced(config, Some(DEFAULT_FENCE_TIMEOUT), shutdown).await
}

/// Runs the node agent until `shutdown`; then stops its tasks. With
/// `fence_timeout`, it stops its tasks when it has not heard from its local
/// agent for that long (see the module's doc).
pub async fn run_fenced(
    config: NodeConfig,
    fence_timeout: Option<Duration>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let closed = dirs::secure_work_dir(&config.work_dir, &config.work_dir.join("lease"))
        .map_err(|e| AgentError::io(format!("work dir {}", config.work_dir.display()), e))?;
    if config.hollow.is_none() {
        tracing::info!("{}", config.run_as.describe());
        tracing::info!("{}", config.limits.describe());
        if let (run_as::RunAs::Dynamic(_) | run_as::RunAs::User { .. }, Some(first)) =
            (&config.run_as, closed.first())
        {
            tracing::warn!(
                dir = %first.display(),
                "tasks cannot pass {} (not searchable by others): they start in their directory but cannot reach it by path ($HOME)",
                first.display()
            );
        }
    }
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let tasks = Tasks::new(&config, report_tx)?;
    let tracker = TaskTracker::new();

    // The lease the task supervisors watch.
    {
        let tasks = tasks.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => tasks.renew_lease(),
                }
            }
        });
    }

    // Old task directories: once at the start, then periodically, and at
    // once when the local agent gives a new retention.
    {
        let tasks = tasks.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            loop {
                let sweeping = tasks.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || sweeping.sweep()).await {
                    tracing::error!(cause = %e, "the sweep of old task directories failed");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(dirs::sweep_every(tasks.retention())) => {}
                    _ = tasks.retention_changed() => {}
                }
            }
        });
    }

    let contact = Arc::new(Contact::new());
    if let Some(timeout) = fence_timeout {
        tracker.spawn(fence_loop(
            tasks.clone(),
            contact.clone(),
            timeout,
            shutdown.clone(),
        ));
    }

    // Task logs.
    let listen = |e| AgentError::io(format!("cannot listen on {}", config.listen), e);
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(listen)?;
    let local = listener.local_addr().map_err(listen)?;
    sched_security::tls::check_listen(
        local,
        config.tls.as_ref(),
        config.insecure,
        "node agent (logs)",
    )
    .map_err(|e| sched_core::error::SpecError::new("--listen", e))?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let address = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{local}"));
    {
        let guard = sched_security::Guard::new(config.tls.is_some(), None);
        let service = NodeServer::new(logs::LogsService::new(tasks.clone(), guard));
        let shutdown = shutdown.clone();
        let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
        if let Some(tls) = &config.tls {
            builder = builder
                .tls_config(tls.server())
                .map_err(AgentError::Serve)?;
        }
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<NodeServer<logs::LogsService>>().await;
        tracker.spawn(async move {
            let r = builder
                .layer(crate::metrics::node().grpc.clone())
                .add_service(health_service)
                .add_service(sched_proto::reflection::service())
                .add_service(service)
                .serve_with_incoming_shutdown(
                    sched_proto::process::incoming(listener),
                    shutdown.cancelled_owned(),
                )
                .await;
            if let Err(e) = r {
                tracing::error!(cause = %e, "logs server stopped");
            }
        });
    }

    let client = MachinesClient::new(channel(&config.agent, config.tls.as_ref())?);
    tracker.spawn(report_loop(
        client.clone(),
        config.name.clone(),
        report_rx,
        shutdown.clone(),
    ));
    tracing::info!(node = %config.name, machines = config.machines.len(), %address, "node agent started");

    let mut backoff = Backoff::new();
    while !shutdown.is_cancelled() {
        let before = contact.last();
        let session = session(
            &config,
            &address,
            client.clone(),
            &tasks,
            &contact,
            fence_timeout,
            &shutdown,
        );
        match session.await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                if contact.last() != before {
                    // It was connected: start the backoff over.
                    backoff.reset();
                }
                tracing::warn!(cause = %e, "lost the local agent; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
    // Stop cleanly: the tasks go, and the local agent hears they are lost so
    // it can place them elsewhere at once.
    tasks.stop_all(Duration::from_secs(5)).await;
    if let Some(parent) = &config.limits.parent {
        // The node agent's cgroup, once its tasks' are gone (the kernel
        // refuses while any is left).
        let _ = std::fs::remove_dir(parent);
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(3), tracker.wait()).await;
    Ok(())
}

/// Stops every task once the local agent has been silent for `timeout`,
/// once per silence.
async fn fence_loop(
    tasks: Arc<Tasks>,
    contact: Arc<Contact>,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    // Ten checks per timeout: a fence comes at most a tenth late; within
    // [10 ms, 1 s] so that it neither spins nor lags.
    let every = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The contact the last fence followed: one fence per silence.
    let mut fenced_after: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let last = contact.last();
        if last.elapsed() < timeout || fenced_after == Some(last) {
            continue;
        }
        fenced_after = Some(last);
        let stopped = tasks.stop_all_lost();
        tracing::warn!(
            silent_ms = last.elapsed().as_millis() as u64,
            fence_timeout_ms = timeout.as_millis() as u64,
            stopped,
            "fenced: no word from the local agent; every task is stopped and will be reported lost"
        );
    }
}

/// One connection: register, then follow the work stream while heartbeating.
async fn session(
    config: &NodeConfig,
    address: &str,
    mut client: MachinesClient<Channel>,
    tasks: &Arc<Tasks>,
    contact: &Contact,
    fence_timeout: Option<Duration>,
    shutdown: &CancellationToken,
) -> Result<(), AgentError> {
    let machines = config
        .machines
        .iter()
        .map(|m| pb::MachineSpec {
            name: m.name.clone(),
            capacity: Some(crate::to_pb(&m.capacity)),
            labels: m.labels.clone().into_iter().collect(),
            gpu_devices: m.gpu_devices,
            gpu_model: m.gpu_model.clone(),
        })
        .collect();
    let r = client
        .register_node(pb::RegisterNodeRequest {
            node: config.name.clone(),
            address: address.to_string(),
            machines,
            tasks: tasks.known(),
        })
        .await?
        .into_inner();
    contact.touch();
    tasks.set_retention_ms(r.task_dir_retention_ms);
    let interval = Duration::from_millis(u64::from(r.heartbeat_interval_ms.max(50)));
    if let Some(timeout) = fence_timeout.filter(|t| *t < interval * 3) {
        tracing::warn!(
            fence_timeout_ms = timeout.as_millis() as u64,
            heartbeat_interval_ms = interval.as_millis() as u64,
            "the fence timeout is under three heartbeats: a late heartbeat or two will stop every task"
        );
    }
    let mut work = client
        .work(pb::WorkRequest {
            node: config.name.clone(),
        })
        .await?
        .into_inner();
    let mut beat = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = beat.tick() => {
                // Jitter: up to a tenth of the interval, so that many nodes
                // started together do not beat in step.
                tokio::time::sleep(sched_proto::backoff::jitter(interval / 10)).await;
                let r = client.node_heartbeat(pb::NodeHeartbeatRequest { node: config.name.clone() }).await?;
                contact.touch();
                if r.into_inner().register_again {
                    return Err(AgentError::SessionEnded("the local agent asked to register again"));
                }
            }
            batch = work.next() => {
                let batch = match batch {
                    Some(b) => b?,
                    None => return Err(AgentError::SessionEnded("work stream ended")),
                };
                // Forgets first: a job deleted and submitted again under its
                // name may come in one batch, its new tasks after.
                for job in &batch.forget_jobs {
                    tasks.forget(job);
                }
                for s in batch.stop {
                    tasks.stop(&s.job, s.index);
                }
                for s in batch.start {
                    tasks.start(s);
                }
            }
        }
    }
}

/// Sends task reports to the local agent in batches, keeping them until
/// they are acknowledged.
async fn report_loop(
    mut client: MachinesClient<Channel>,
    node: String,
    mut rx: mpsc::UnboundedReceiver<pb::NodeTask>,
    shutdown: CancellationToken,
) {
    let mut unsent: Vec<pb::NodeTask> = Vec::new();
    let mut backoff = Backoff::new();
    loop {
        if unsent.is_empty() {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(t) => unsent.push(t),
                    None => return,
                },
                _ = shutdown.cancelled() => {
                    // Flush what the shutdown itself produced, briefly.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while let Ok(t) = rx.try_recv() { unsent.push(t); }
                    if !unsent.is_empty() {
                        let _ = tokio::time::timeout(Duration::from_secs(2), client.node_report(pb::NodeReportRequest { node: node.clone(), tasks: unsent.clone() })).await;
                    }
                    return;
                }
            }
        }
        while let Ok(t) = rx.try_recv() {
            unsent.push(t);
        }
        let req = pb::NodeReportRequest {
            node: node.clone(),
            tasks: unsent.clone(),
        };
        match client.node_report(req).await {
            Ok(_) => {
                unsent.clear();
                backoff.reset();
            }
            Err(e) => {
                tracing::debug!(cause = %e, "report not delivered; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}
