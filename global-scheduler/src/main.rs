//! `global-scheduler`: serves the job API and the cluster API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use global_scheduler::Config;
use sched_store::{EtcdStore, MemStore, Store};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "global-scheduler", version, about)]
struct Args {
    /// Address to serve gRPC on; `stdin`: the listening socket given as
    /// standard input (how `schedctl dev` starts it).
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    listen: String,
    /// This replica's URL as clients and other replicas reach it (default:
    /// http:// and the --listen address). Standbys name the leader by it.
    #[arg(long, value_name = "URL", value_parser = sched_proto::flags::url)]
    advertise: Option<String>,
    /// etcd endpoints, comma-separated (`http://127.0.0.1:2379`). Without
    /// it, state is kept in memory only and is lost on exit.
    #[arg(
        long,
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        value_parser = sched_proto::flags::url
    )]
    etcd: Vec<String>,
    /// Key prefix in etcd (every key of this scheduler starts with it).
    #[arg(long, default_value = "/sched", value_name = "P")]
    prefix: String,
    /// Policy file (default: the built-in policy, as in config/policy.yaml).
    /// Read again on SIGHUP (a bad file is refused and the policy in force
    /// kept); `schedctl policy apply` changes it too.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Topology file: the locations and the latency between them.
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// How often local agents heartbeat, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS", value_parser = positive())]
    heartbeat_interval_ms: u64,
    /// A cluster silent for this long is marked down, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS", value_parser = positive())]
    heartbeat_timeout_ms: u64,
    /// Calls waiting for the writer before submit answers RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 4096, value_name = "N", value_parser = positive_usize())]
    queue: usize,
    /// Tasks waiting for a cluster before submit answers RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 2_000_000, value_name = "N", value_parser = positive())]
    max_pending_tasks: u64,
    /// User tokens (YAML: `tokens: [{user, tenant, role, sha256}]`). With
    /// it every call to the job API needs `authorization: Bearer TOKEN`.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Quotas per tenant and band (YAML: `quotas: [{tenant, band, cpu,
    /// memory, gpu, tasks}]`); `schedctl quota set` changes them live.
    #[arg(long, value_name = "FILE")]
    quotas: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP: a
    /// loopback or monitoring-only address).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Serve a read-only status page (clusters, jobs, tasks) over HTTP on
    /// this address; with --tokens it asks for a token. Plain HTTP: keep it
    /// on loopback (or behind a TLS proxy) when tokens are in force.
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    tls: sched_security::TlsArgs,
    #[command(flatten)]
    etcd_tls: sched_security::tls::EtcdTlsArgs,
}

/// A count or a duration that must not be zero (clap says which flag).
fn positive() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..)
}

/// As [`positive`], for sizes.
fn positive_usize() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

fn read<T>(
    path: &PathBuf,
    parse: impl Fn(&str) -> Result<T, sched_core::error::SpecError>,
) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text).with_context(|| format!("invalid {}", path.display()))
}

async fn serve(args: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    let policy = match &args.policy {
        Some(p) => read(p, sched_core::policy::Policy::from_yaml)?,
        None => sched_core::policy::Policy::default(),
    };
    let topology = args
        .topology
        .as_ref()
        .map(|t| read(t, sched_core::topology::Topology::from_yaml))
        .transpose()?;
    let quotas = match &args.quotas {
        Some(p) => read(p, |t| {
            sched_core::quota::Quotas::from_yaml(t, &policy.priority)
        })?,
        None => Default::default(),
    };
    let mut config = Config::new(policy);
    config.quotas = quotas;
    config.policy_file = args.policy.clone();
    config.prefix = args.prefix.clone();
    config.topology = topology;
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_interval_ms.max(10));
    config.heartbeat_timeout = Duration::from_millis(args.heartbeat_timeout_ms.max(20));
    config.queue = args.queue.max(1);
    config.max_pending_tasks = args.max_pending_tasks;
    config.advertise = args.advertise.clone();
    config.tls = args.tls.load()?;
    if let Some(t) = &config.tls {
        anyhow::ensure!(
            t.identity().kind == sched_security::Kind::Scheduler,
            "--tls-cert: {} is not a scheduler certificate (schedctl certs issue --kind scheduler)",
            t.identity()
        );
    }
    config.tokens = args
        .tokens
        .as_deref()
        .map(sched_security::Tokens::load)
        .transpose()?;
    if let Some(t) = &config.tokens {
        tracing::info!(tokens = t.len(), "user tokens in force");
    }
    let etcd_tls = args
        .etcd_tls
        .load()?
        .map(|(ca, identity)| sched_store::EtcdTls { ca, identity });

    let store: Arc<dyn Store> = if args.etcd.is_empty() {
        tracing::warn!("no --etcd given: state is kept in memory and lost on exit");
        Arc::new(MemStore::new())
    } else {
        Arc::new(
            EtcdStore::connect_tls(&args.etcd, etcd_tls.as_ref())
                .await
                .with_context(|| format!("cannot connect to etcd at {}", args.etcd.join(",")))?,
        )
    };
    let metrics = global_scheduler::metrics::metrics();
    let store: Arc<dyn Store> = Arc::new(sched_store::observe::Observed::new(
        store,
        metrics.store.clone(),
    ));
    if let Some(addr) = &args.metrics_listen {
        let listener = sched_proto::metrics::http::bind(addr)
            .await
            .with_context(|| format!("--metrics-listen: cannot listen on {addr}"))?;
        sched_proto::metrics::http::spawn(listener, metrics.exposition(), shutdown.clone());
    }
    let listener = sched_proto::process::listen(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    sched_security::tls::check_listen(
        listener.local_addr()?,
        config.tls.as_ref(),
        args.tls.insecure,
        "global scheduler",
    )
    .map_err(anyhow::Error::msg)?;
    if let Some(addr) = args.http_listen {
        // The page has no client certificates to check: with TLS but no
        // tokens, anyone who reaches it would see everything.
        anyhow::ensure!(
            addr.ip().is_loopback() || config.tls.is_none() || config.tokens.is_some(),
            "--http-listen {addr}: with TLS and no --tokens the status page cannot tell \
             who is looking; give --tokens or listen on loopback"
        );
        config.http_listen = Some(addr);
    }
    if config.tls.is_none() && config.tokens.is_some() {
        tracing::warn!("tokens without TLS: tokens cross the network in plaintext");
    }
    Ok(global_scheduler::run(listener, store, config, shutdown).await?)
}

fn main() -> ExitCode {
    let args = Args::parse();
    sched_proto::process::main(|shutdown| serve(args, shutdown))
}
