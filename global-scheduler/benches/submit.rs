//! Submit-to-persisted throughput against a real, local etcd.
//!
//! `cargo bench -p global-scheduler --bench submit [-- JOBS]`
//!
//! Starts etcd on free loopback ports, then measures, in one run:
//! 1. etcd alone: the same job records the scheduler would write, put in
//!    transactions of 128 guarded puts, one transaction at a time (the
//!    scheduler's writer also keeps one in flight), and, for context, with
//!    four in flight;
//! 2. the global scheduler (in this process, over gRPC on loopback, on that
//!    etcd): concurrent clients submit JOBS jobs of 100 tasks, 1, 10 or 100
//!    jobs per call; a call returns once its jobs are in etcd. Each of the
//!    three is run twice, in plaintext and then with mutual TLS and a token
//!    (the scheduler started with a scheduler certificate and a token file,
//!    the clients showing a user certificate and sending `authorization:
//!    Bearer`), each on a fresh scheduler and key prefix. The clients'
//!    connections are open before the clock starts: the figures are the
//!    cost of encryption and of checking certificate and token on every
//!    call, not of handshakes.
//!
//! It reports jobs/s, tasks/s and the ratio of (2) to (1), and for each
//! row the ratio of the mTLS rate to the plaintext one. Targets (issue 3):
//! at least 20,000 tasks/s, and at least half of etcd's rate (plaintext).
//! `SCHED_BENCH_SECURITY=plaintext` (or `mtls`) runs one mode only; the
//! default is both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use global_scheduler::records::{JobRecord, ResourcesRecord};
use global_scheduler::Config;
use sched_proto::pb;
use sched_proto::pb::scheduler_service_client::SchedulerServiceClient;
use sched_security::{certs, tokens, Kind, Tls, Tokens};
use sched_store::testing::EtcdServer;
use sched_store::{EtcdStore, Expect, Store, Write, MAX_OPS_PER_COMMIT};
use tokio_util::sync::CancellationToken;

const TASKS_PER_JOB: u32 = 100;
const CONNECTIONS: usize = 8;

/// How the scheduler and its clients talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plaintext,
    /// Mutual TLS, and a bearer token on every call.
    MutualTls,
}

impl Mode {
    /// The modes `SCHED_BENCH_SECURITY` asks for (`plaintext`, `mtls`;
    /// unset or `both`: both, plaintext first).
    fn from_env() -> Vec<Mode> {
        match std::env::var("SCHED_BENCH_SECURITY").as_deref() {
            Err(_) | Ok("both") => vec![Mode::Plaintext, Mode::MutualTls],
            Ok("plaintext") => vec![Mode::Plaintext],
            Ok("mtls") => vec![Mode::MutualTls],
            Ok(other) => panic!("SCHED_BENCH_SECURITY={other}: plaintext, mtls or both"),
        }
    }
}

/// What the mTLS runs use: a throwaway CA's certificates for the
/// scheduler and for a user, and that user's token.
struct Security {
    server: Tls,
    user: Tls,
    token: String,
    tokens: Tokens,
    _dir: tempfile::TempDir,
}

impl Security {
    fn new() -> Security {
        let dir = tempfile::tempdir().unwrap();
        certs::init_ca(dir.path()).unwrap();
        let load = |kind, name| {
            let req = certs::Request {
                kind,
                name,
                sans: &[],
                days: 1,
            };
            let (crt, key) = certs::issue(dir.path(), &req, dir.path()).unwrap();
            let ca = dir.path().join(certs::CA_CERT);
            Tls::load(Some(&ca), Some(&crt), Some(&key))
                .unwrap()
                .unwrap()
        };
        let (server, user) = (
            load(Kind::Scheduler, "scheduler"),
            load(Kind::User, "bench"),
        );
        let token = tokens::generate().unwrap();
        // The default tenant, so that the job records are the plaintext
        // runs' byte for byte; a submitter, as a user submitting is.
        let tokens = Tokens::parse(&format!(
            "tokens:\n  - {{user: bench, tenant: default, role: submitter, sha256: {}}}\n",
            tokens::sha256_hex(&token)
        ))
        .unwrap();
        Security {
            server,
            user,
            token,
            tokens,
            _dir: dir,
        }
    }
}

fn record(name: &str) -> JobRecord {
    JobRecord {
        name: name.to_string(),
        tasks: TASKS_PER_JOB,
        request: ResourcesRecord {
            cpu_millis: 500,
            memory_bytes: 512 << 20,
            disk_bytes: 0,
            gpu_millis: 0,
        },
        request_text: [("cpu", "500m"), ("memory", "512Mi")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        priority: 0,
        locality: None,
        constraints: Default::default(),
        command: vec!["sleep".to_string(), "1".to_string()],
        submission_id: "0123456789abcdef".to_string(),
        submitted_unix_ms: 1_795_000_000_000,
        cancelled: false,
        restart: Default::default(),
        ttl_after_finished: None,
        tenant: sched_core::job::DEFAULT_TENANT.to_string(),
    }
}

/// etcd alone: `jobs` records in 128-put transactions, `in_flight` at once.
async fn etcd_alone(store: &EtcdStore, prefix: &str, jobs: usize, in_flight: usize) -> Duration {
    let writes: Vec<Write> = (0..jobs)
        .map(|i| {
            let r = record(&format!("job-{i}"));
            Write::put(
                format!("{prefix}/jobs/job-{i}"),
                serde_json::to_vec(&r).unwrap(),
                Expect::Absent,
            )
        })
        .collect();
    let chunks: Vec<Vec<Write>> = writes
        .chunks(MAX_OPS_PER_COMMIT)
        .map(<[Write]>::to_vec)
        .collect();
    let start = Instant::now();
    let queue = Arc::new(std::sync::Mutex::new(chunks));
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let store = store.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                loop {
                    let Some(chunk) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    store.commit(&chunk).await.expect("commit");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    start.elapsed()
}

/// The scheduler: `jobs` submit calls from `callers` concurrent clients;
/// with `security`, over mutual TLS with a token.
async fn through_scheduler(
    etcd: &str,
    prefix: &str,
    jobs: usize,
    callers: usize,
    per_call: usize,
    security: Option<&Security>,
) -> Duration {
    let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(&[etcd.to_string()]).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if security.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    let mut config = Config::new(Default::default());
    config.prefix = prefix.to_string();
    config.max_pending_tasks = u64::MAX;
    config.tls = security.map(|s| s.server.clone());
    config.tokens = security.map(|s| s.tokens.clone());
    let client_tls = security.map(|s| &s.user);
    let bearer = sched_security::Bearer::new(security.map(|s| s.token.as_str())).unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(global_scheduler::run(
        listener,
        store,
        config,
        shutdown.clone(),
    ));
    // Leading (the health service says SERVING) before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sched_proto::process::serving_tls(
        &url,
        "clustersched.v1.SchedulerService",
        Duration::from_secs(1),
        client_tls,
    )
    .await
    .unwrap_or(false)
    {
        assert!(
            Instant::now() < deadline,
            "the scheduler did not lead within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Several HTTP/2 connections, as many independent clients would open.
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let endpoint = sched_security::tls::endpoint(&url, client_tls).unwrap();
        let channel = loop {
            if let Ok(c) = endpoint.connect().await {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        clients.push(SchedulerServiceClient::with_interceptor(
            channel,
            bearer.clone(),
        ));
    }
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..callers)
        .map(|k| {
            let mut c = clients[k % CONNECTIONS].clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(per_call, std::sync::atomic::Ordering::Relaxed);
                    if first >= jobs {
                        break;
                    }
                    let req = pb::SubmitRequest {
                        yaml: String::new(),
                        jobs: (first..(first + per_call).min(jobs))
                            .map(|i| pb::JobSpec {
                                name: format!("job-{i}"),
                                tasks: TASKS_PER_JOB,
                                resources: Some(pb::ResourceRequest {
                                    cpu: "500m".to_string(),
                                    memory: "512Mi".to_string(),
                                    disk: None,
                                    gpu: None,
                                }),
                                priority: None,
                                locality: None,
                                constraints: Default::default(),
                                command: vec!["sleep".to_string(), "1".to_string()],
                                ..Default::default()
                            })
                            .collect(),
                        submission_id: format!("{first:016x}"),
                    };
                    loop {
                        match c.submit(req.clone()).await {
                            Ok(_) => break,
                            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                                tokio::time::sleep(Duration::from_millis(5)).await
                            }
                            Err(s) => panic!("submit: {s:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = start.elapsed();
    shutdown.cancel();
    server.await.unwrap().unwrap();
    elapsed
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let jobs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let etcd = EtcdServer::start().expect("start etcd (is etcd-server installed?)");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = EtcdStore::connect(&[etcd.url()]).await.unwrap();
        // Warm etcd up (its first writes allocate the WAL and the db).
        etcd_alone(&store, "/warmup", 2_000, 1).await;
        let alone = etcd_alone(&store, "/alone1", jobs, 1).await;
        let alone4 = etcd_alone(&store, "/alone4", jobs, 4).await;
        let bytes = serde_json::to_vec(&record("job-12345")).unwrap().len();
        println!(
            "submit-to-persisted, {jobs} jobs of {TASKS_PER_JOB} tasks, job record {bytes} bytes, etcd at {}",
            etcd.url()
        );
        println!(
            "  etcd alone, 128-put transactions, 1 in flight:   {:>7.3} s {:>8.0} jobs/s",
            alone.as_secs_f64(),
            rate(jobs, alone)
        );
        println!(
            "  etcd alone, 128-put transactions, 4 in flight:   {:>7.3} s {:>8.0} jobs/s",
            alone4.as_secs_f64(),
            rate(jobs, alone4)
        );
        // (jobs per call, concurrent callers): single-job calls as `schedctl
        // run` makes them, and job files of 10 and 100 jobs. Each in both
        // modes back to back, so that both see the same etcd (its db grows
        // with every run) and the same neighbours on the machine.
        let modes = Mode::from_env();
        let security = modes.contains(&Mode::MutualTls).then(Security::new);
        let mut ratios = Vec::new();
        for (run, (per_call, callers)) in [(1, 256), (10, 64), (100, 16)].into_iter().enumerate() {
            let mut rates = (None, None);
            for &mode in &modes {
                let (label, prefix, security) = match mode {
                    Mode::Plaintext => (
                        format!("global-scheduler, {per_call:>3} job(s)/call, {callers:>3} callers:"),
                        format!("/sched{run}"),
                        None,
                    ),
                    Mode::MutualTls => (
                        // As wide as the plaintext label, so that the columns line up.
                        format!("{:<47}", "  same, mTLS and a token:"),
                        format!("/mtls{run}"),
                        security.as_ref(),
                    ),
                };
                let ours = through_scheduler(&etcd.url(), &prefix, jobs, callers, per_call, security).await;
                let tasks_per_s = rate(jobs * TASKS_PER_JOB as usize, ours);
                println!(
                    "  {label} {:>7.3} s {:>8.0} jobs/s {:>9.0} tasks/s  ratio {:.2} (vs 4 in flight {:.2})",
                    ours.as_secs_f64(),
                    rate(jobs, ours),
                    tasks_per_s,
                    alone.as_secs_f64() / ours.as_secs_f64(),
                    alone4.as_secs_f64() / ours.as_secs_f64(),
                );
                match mode {
                    Mode::Plaintext => rates.0 = Some(tasks_per_s),
                    Mode::MutualTls => rates.1 = Some(tasks_per_s),
                }
            }
            if let (Some(plain), Some(mtls)) = rates {
                ratios.push((per_call, plain, mtls));
            }
        }
        if !ratios.is_empty() {
            println!("  mTLS and a token / plaintext, tasks/s:");
            for (per_call, plain, mtls) in ratios {
                println!(
                    "    {per_call:>3} job(s)/call: {mtls:>9.0} / {plain:>9.0} = {:.2}",
                    mtls / plain
                );
            }
        }
    });
}
