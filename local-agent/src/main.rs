//! `local-agent`: the per-cluster agent (`serve`), the per-machine node
//! agent (`node`), and the supervisor of task processes (`supervise`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use local_agent::agent::AgentConfig;
use local_agent::limits::Limits;
use local_agent::node::run_as::{Identity, RunAs, UidRange};
use local_agent::node::{detect_capacity, MachineConfig, NodeConfig};
use sched_core::quantity::QuantityText;
use sched_store::{EtcdStore, MemStore, Store};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "local-agent", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The cluster agent: places the tasks the global scheduler hands over
    /// on the cluster's machines.
    Serve(ServeArgs),
    /// The node agent: runs tasks on this machine (or on N hollow ones).
    Node(NodeArgs),
    /// Runs one task process for the node agent (internal).
    #[command(hide = true)]
    Supervise(local_agent::supervise::Args),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The cluster's name.
    #[arg(long, value_name = "NAME")]
    cluster: String,
    /// The cluster's location (a name from the global scheduler's topology).
    #[arg(long, value_name = "LOC")]
    location: String,
    /// Where node agents reach this agent; `stdin`: the listening socket
    /// given as standard input (how `schedctl dev` starts it).
    #[arg(long, default_value = "127.0.0.1:7080", value_name = "ADDR")]
    listen: String,
    /// This agent's URL as the global scheduler reaches it (default: the
    /// --listen address); set it when listening on 0.0.0.0.
    #[arg(long, value_name = "URL", value_parser = sched_proto::flags::url)]
    advertise: Option<String>,
    /// The global scheduler (several replicas: comma-separated).
    #[arg(long, default_value = "http://127.0.0.1:7070", value_name = "URL")]
    global: String,
    /// etcd endpoints, comma-separated. Without it, placements are kept in
    /// memory only.
    #[arg(
        long,
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        value_parser = sched_proto::flags::url
    )]
    etcd: Vec<String>,
    /// Key prefix in etcd (the global scheduler's --prefix).
    #[arg(long, default_value = "/sched", value_name = "P")]
    prefix: String,
    /// Policy file (the `local` section decides packing); read again on
    /// SIGHUP (a bad file is refused and the policy in force kept).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// How often node agents heartbeat, in milliseconds.
    #[arg(long, default_value_t = 500, value_name = "MS", value_parser = positive())]
    node_heartbeat_ms: u64,
    /// A node silent this long is lost with its machines, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS", value_parser = positive())]
    machine_timeout_ms: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP: a
    /// loopback or monitoring-only address).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    #[command(flatten)]
    tls: sched_security::TlsArgs,
    #[command(flatten)]
    etcd_tls: sched_security::tls::EtcdTlsArgs,
}

#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// The cluster's local agent.
    #[arg(
        long,
        default_value = "http://127.0.0.1:7080",
        value_name = "URL",
        value_parser = sched_proto::flags::url
    )]
    agent: String,
    /// The machine's name (with --hollow: the prefix of NAME-0, NAME-1, ...).
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Cpu to offer (default: every cpu of this machine).
    #[arg(long, value_name = "Q", allow_hyphen_values = true)]
    cpu: Option<String>,
    /// Memory to offer (default: all memory of this machine).
    #[arg(long, value_name = "Q", allow_hyphen_values = true)]
    memory: Option<String>,
    /// Disk to offer (default: none).
    #[arg(long, value_name = "Q")]
    disk: Option<String>,
    /// GPUs to offer, as an amount without devices (default: none); see
    /// --gpus for devices.
    #[arg(long, value_name = "Q", conflicts_with = "gpus")]
    gpu: Option<String>,
    /// GPU devices to offer, numbered 0..N (at most 64): tasks see theirs
    /// in CUDA_VISIBLE_DEVICES and SCHED_GPUS (needs --gpu-model).
    #[arg(
        long,
        value_name = "N",
        requires = "gpu_model",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(sched_core::gpu::MAX_DEVICES))
    )]
    gpus: Option<u32>,
    /// The model of the --gpus devices (`V100M16`), which jobs' GPU model
    /// constraints match (the machine's label `gpu-model`).
    #[arg(long, value_name = "MODEL", requires = "gpus", value_parser = gpu_model)]
    gpu_model: Option<String>,
    /// Machine labels, `k=v,...`.
    #[arg(
        long,
        value_name = "K=V,...",
        value_delimiter = ',',
        value_parser = sched_proto::flags::label
    )]
    labels: Vec<String>,
    /// Where task directories (output, exit codes) live.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Host N simulated machines whose tasks only pretend to run.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    hollow: Option<u32>,
    /// How long a hollow task runs, unless its command is `sleep N`.
    #[arg(long, default_value_t = 10_000, value_name = "MS", value_parser = positive())]
    hollow_duration_ms: u64,
    /// Tasks are killed when this agent has been gone this long; keep it
    /// below the local agent's --machine-timeout-ms.
    #[arg(long, default_value_t = 3000, value_name = "MS", value_parser = positive())]
    lease_ms: u64,
    /// Where to serve task logs.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    listen: String,
    /// This node's URL as its local agent reaches it (default: the
    /// --listen address); set it when listening on 0.0.0.0.
    #[arg(long, value_name = "URL", value_parser = sched_proto::flags::url)]
    advertise: Option<String>,
    /// Stop every task (then report them lost) when the local agent has
    /// answered no registration or heartbeat for this long; 0: never. Keep
    /// it, plus the 5 s grace of a stop, shorter than the global
    /// scheduler's `lifecycle.cluster_down_timeout` (default 60 s), after
    /// which tasks are taken back from a silent cluster and started
    /// elsewhere: so that none runs twice.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    fence_timeout_ms: u64,
    /// Who tasks run as. `dynamic`: a uid (and gid) of its own per task
    /// attempt, from --uid-range, free again once it has ended; `self`: this
    /// agent's own user; a user name or a numeric uid: that user, for every
    /// task: tasks then share one uid and are not isolated from each other.
    /// Default: `dynamic` when the agent runs as root, `self` otherwise.
    #[arg(long, value_name = "MODE")]
    run_as: Option<String>,
    /// The uids (and gids) of `--run-as dynamic`; the default is systemd's
    /// range for dynamic users.
    #[arg(long, default_value = "61184-65519", value_name = "FIRST-LAST")]
    uid_range: String,
    /// Lets `--run-as` be root (uid 0): tasks then have every right on the
    /// machine.
    #[arg(long)]
    allow_root_tasks: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP: a
    /// loopback or monitoring-only address).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    #[command(flatten)]
    tls: sched_security::TlsArgs,
}

/// A count or a duration that must not be zero (clap says which flag).
fn positive() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..)
}

/// The TLS material of `args`, whose certificate must be a `kind` named
/// `name`: a component cannot start under another's identity.
fn load_tls(
    args: &sched_security::TlsArgs,
    kind: sched_security::Kind,
    name: &str,
) -> anyhow::Result<Option<sched_security::Tls>> {
    let tls = args.load()?;
    if let Some(t) = &tls {
        let id = t.identity();
        anyhow::ensure!(
            id.kind == kind && id.name == name,
            "--tls-cert: the certificate is {id}'s, not {kind}/{name}'s \
             (schedctl certs issue --kind {kind} --name {name})"
        );
    }
    Ok(tls)
}

async fn serve(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    sched_core::names::check_name("--cluster", &args.cluster)?;
    sched_core::names::check_name("--location", &args.location)?;
    let tls = load_tls(&args.tls, sched_security::Kind::Cluster, &args.cluster)?;
    let etcd_tls = args
        .etcd_tls
        .load()?
        .map(|(ca, identity)| sched_store::EtcdTls { ca, identity });
    let policy = match &args.policy {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            sched_core::policy::Policy::from_yaml(&text)
                .with_context(|| format!("invalid {}", p.display()))?
        }
        None => Default::default(),
    };
    let store: Arc<dyn Store> = if args.etcd.is_empty() {
        tracing::warn!("no --etcd given: placements are kept in memory and lost on exit");
        Arc::new(MemStore::new())
    } else {
        Arc::new(
            EtcdStore::connect_tls(&args.etcd, etcd_tls.as_ref())
                .await
                .with_context(|| format!("cannot connect to etcd at {}", args.etcd.join(",")))?,
        )
    };
    let metrics = local_agent::metrics::agent();
    let store: Arc<dyn Store> = Arc::new(sched_store::observe::Observed::new(
        store,
        metrics.store.clone(),
    ));
    serve_metrics(
        args.metrics_listen.as_deref(),
        metrics.exposition(),
        &shutdown,
    )
    .await?;
    let listener = sched_proto::process::listen(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    sched_security::tls::check_listen(
        listener.local_addr()?,
        tls.as_ref(),
        args.tls.insecure,
        "local agent",
    )
    .map_err(anyhow::Error::msg)?;
    let config = AgentConfig {
        cluster: args.cluster,
        location: args.location,
        global: args.global,
        prefix: args.prefix,
        policy,
        policy_file: args.policy.clone(),
        node_heartbeat: Duration::from_millis(args.node_heartbeat_ms.max(10)),
        machine_timeout: Duration::from_millis(args.machine_timeout_ms.max(20)),
        advertise: args.advertise,
        tls,
    };
    Ok(local_agent::agent::run(listener, store, config, shutdown).await?)
}

/// Starts `/metrics` at `addr`, if given.
async fn serve_metrics(
    addr: Option<&str>,
    exposition: sched_proto::metrics::http::Exposition,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    if let Some(addr) = addr {
        let listener = sched_proto::metrics::http::bind(addr)
            .await
            .with_context(|| format!("--metrics-listen: cannot listen on {addr}"))?;
        sched_proto::metrics::http::spawn(listener, exposition, shutdown.clone());
    }
    Ok(())
}

/// `--gpu-model`: one model name (`V100M16`).
fn gpu_model(s: &str) -> Result<String, String> {
    sched_core::topology::check_gpu_model("--gpu-model", s, false).map_err(|e| e.reason)?;
    Ok(s.to_string())
}

async fn node(args: NodeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    sched_core::names::check_name("--name", &args.name)?;
    let tls = load_tls(&args.tls, sched_security::Kind::Node, &args.name)?;
    let detected = detect_capacity();
    let quantity =
        |q: &Option<String>, default: String| QuantityText::Text(q.clone().unwrap_or(default));
    let capacity = sched_core::quantity::parse_resources(
        "machine",
        &quantity(&args.cpu, format!("{}m", detected.cpu.0)),
        &quantity(&args.memory, detected.memory.0.to_string()),
        args.disk.clone().map(QuantityText::Text).as_ref(),
        args.gpu.clone().map(QuantityText::Text).as_ref(),
    )?;
    if capacity.cpu.0 == 0 || capacity.memory.0 == 0 {
        anyhow::bail!("--cpu and --memory must be more than zero");
    }
    let mut labels = std::collections::BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--labels: {l:?} is not key=value"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    // Clap saw to it that --gpus and --gpu-model come together.
    let gpus = args.gpus.unwrap_or(0);
    let gpu_model = args.gpu_model.clone().unwrap_or_default();
    let label = sched_core::gpu::GPU_MODEL_LABEL;
    if gpus > 0 && labels.get(label).is_some_and(|l| *l != gpu_model) {
        anyhow::bail!("--labels: {label} disagrees with --gpu-model {gpu_model}");
    }
    let mut capacity = capacity;
    if gpus > 0 {
        capacity.gpu.0 = u64::from(gpus) * u64::from(sched_core::gpu::DEVICE_MILLI);
    }
    let machines = match args.hollow {
        None => vec![MachineConfig {
            name: args.name.clone(),
            capacity,
            labels,
            gpu_devices: gpus,
            gpu_model,
        }],
        Some(n) => (0..n)
            .map(|i| MachineConfig {
                name: format!("{}-{i}", args.name),
                capacity,
                labels: labels.clone(),
                gpu_devices: gpus,
                gpu_model: gpu_model.clone(),
            })
            .collect(),
    };
    let work_dir = args
        .work_dir
        .unwrap_or_else(|| std::env::temp_dir().join("sched-node").join(&args.name));
    // Hollow machines run no processes: nobody to run them as, nothing to
    // limit.
    let me = Identity::current();
    let (run_as, limits) = if args.hollow.is_some() {
        (RunAs::Myself(me), Limits::rlimits())
    } else {
        let range: UidRange = args.uid_range.parse()?;
        let lookup = |name: &str| {
            let user = match name.parse::<u32>() {
                Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
                Err(_) => nix::unistd::User::from_name(name),
            };
            user.ok().flatten().map(|u| Identity {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            })
        };
        let run_as = RunAs::resolve(
            args.run_as.as_deref(),
            range,
            args.allow_root_tasks,
            me,
            lookup,
        )?;
        (run_as, Limits::detect(&work_dir))
    };
    let config = NodeConfig {
        agent: args.agent,
        name: args.name,
        machines,
        work_dir,
        hollow: args
            .hollow
            .map(|_| Duration::from_millis(args.hollow_duration_ms)),
        lease: Duration::from_millis(args.lease_ms.max(500)),
        listen: args.listen,
        advertise: args.advertise,
        supervisor: std::env::current_exe().context("cannot find the local-agent binary")?,
        tls,
        insecure: args.tls.insecure,
        run_as,
        limits,
    };
    let fence_timeout =
        (args.fence_timeout_ms > 0).then(|| Duration::from_millis(args.fence_timeout_ms));
    serve_metrics(
        args.metrics_listen.as_deref(),
        local_agent::metrics::node().exposition(),
        &shutdown,
    )
    .await?;
    Ok(local_agent::node::run_fenced(config, fence_timeout, shutdown).await?)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Command::Supervise(a) = args.command {
        return match local_agent::supervise::run(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("supervise: {e:#}");
                ExitCode::from(127)
            }
        };
    }
    sched_proto::process::main(|shutdown| async move {
        match args.command {
            Command::Serve(a) => serve(a, shutdown).await,
            Command::Node(a) => node(a, shutdown).await,
            Command::Supervise(_) => unreachable!("handled above"),
        }
    })
}
