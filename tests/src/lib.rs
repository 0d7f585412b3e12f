//! What the end-to-end tests in `tests/tests/` share:
//!
//! - [`Scheduler`]: the real `global-scheduler` binary on a free loopback
//!   port, killed with SIGKILL and restarted at will;
//! - [`TestCluster`]: a cluster that speaks the real `clustersched.internal.v1.Clusters`
//!   protocol (register, heartbeat, assignment stream, reports) and places
//!   what it is handed on numbered machines, up to a slot limit, handing
//!   back the rest. It stands where a local agent stands, so the global
//!   scheduler can be tested on its own; it records every assignment it
//!   receives so tests can prove nothing was handed over twice;
//! - [`pki::Pki`]: a throwaway CA issuing component and user certificates
//!   and tokens, for the processes above run with mutual TLS;
//!   [`user_client`] calls the scheduler as a user would, with a
//!   certificate and a bearer token;
//! - the mutual TLS mode: with `SCHED_TEST_TLS=1` in the environment
//!   ([`tls_mode`]), every process above is started with a certificate for
//!   what it is (from one throwaway CA per test process), every URL is
//!   `https://`, and the harness's own clients ([`channel`],
//!   [`Scheduler::client`], [`schedctl_command`]...) show the certificate
//!   the servers expect, so that the same tests prove the stack works with
//!   mTLS on every hop. Without it, everything is plaintext as before;
//! - re-exports of the etcd helpers from `sched_store::testing`.
//!
//! The binaries are the ones `cargo test --workspace` builds next to the
//! test executables (`target/<profile>/`).
//!
//! Tests that start etcd are `#[ignore = "needs etcd"]`: plain `cargo test`
//! reports them ignored, and `cargo test -- --include-ignored` runs them,
//! failing each with how to install etcd ([`start_etcd`]) if it is missing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sched_proto::pb;
use sched_proto::pb::clusters_client::ClustersClient;
use sched_proto::pb::scheduler_service_client::SchedulerServiceClient;
pub use sched_store::testing::{
    etcd_available, free_port, start_etcd, EtcdServer, Guarded, INSTALL_ETCD,
};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

pub mod pki;

use pki::Pki;
use sched_security::{Kind, Tls};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A workspace binary built next to the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("tests run from target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// A directory any task may write in, whatever its uid (a node agent
/// running as root runs each task as a uid of its own): `path`, mode 1777
/// like /tmp, its parent made passable by all (0711).
pub fn shared_dir(path: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).expect("create the shared dir");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o1777))
        .expect("open the shared dir to all");
    if let Some(parent) = path.parent() {
        let mode = std::fs::metadata(parent)
            .expect("the parent")
            .permissions()
            .mode();
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o711))
            .expect("make the parent passable");
    }
    path.to_path_buf()
}

/// Starts etcd, or fails the test saying how to install it; never `None`
/// (the `Option` is kept for callers written when a missing etcd skipped
/// the test). New tests call [`start_etcd`].
pub fn etcd() -> Option<EtcdServer> {
    Some(start_etcd())
}

/// The environment variable that runs the end-to-end tests with mutual TLS
/// on every hop: `SCHED_TEST_TLS=1 cargo test -p sched-tests ...`.
pub const TLS_ENV: &str = "SCHED_TEST_TLS";

/// The user name on the harness's own certificate. The schedulers the
/// harness starts take no `--tokens`, so any `user` certificate is an
/// admin, as the tests (written for plaintext) expect.
pub const TEST_USER: &str = "tester";

/// Whether this run has mutual TLS on every hop (`SCHED_TEST_TLS=1`).
pub fn tls_mode() -> bool {
    std::env::var(TLS_ENV).is_ok_and(|v| v == "1")
}

/// The certificates of the TLS mode: one throwaway CA for the whole test
/// process, and one certificate per component, issued once and shared by
/// every test that names that component. Sharing matters beyond speed:
/// tests run in parallel threads, and two issuing the same name into one
/// directory at once could leave a certificate beside the other's key.
struct TestPki {
    pki: Pki,
    issued: Mutex<BTreeMap<(Kind, String), [PathBuf; 3]>>,
}

impl TestPki {
    /// The CA, certificate and key files for `kind`/`name`.
    fn files(&self, kind: Kind, name: &str) -> [PathBuf; 3] {
        // A panic while issuing fails that test; the map is still whole.
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        issued
            .entry((kind, name.to_string()))
            .or_insert_with(|| self.pki.issue_in(&format!("{kind}-{name}"), kind, name))
            .clone()
    }
}

/// The TLS mode's CA, created on first use; `None` without the mode. Its
/// temporary directory outlives the process (statics are never dropped):
/// a few kilobytes per test binary in the temporary directory.
fn test_pki() -> Option<&'static TestPki> {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    tls_mode().then(|| {
        PKI.get_or_init(|| TestPki {
            pki: Pki::new(),
            issued: Mutex::new(BTreeMap::new()),
        })
    })
}

/// In the TLS mode, the `--tls-ca/--tls-cert/--tls-key` flags of a
/// certificate for `kind`/`name`; without it, none.
pub fn tls_flags(kind: Kind, name: &str) -> Vec<String> {
    let Some(pki) = test_pki() else {
        return Vec::new();
    };
    let [ca, crt, key] = pki.files(kind, name);
    sched_security::tls::flags(&ca, &crt, &key)
}

/// In the TLS mode, a certificate for `kind`/`name` loaded for a client;
/// without it, `None`.
pub fn test_tls(kind: Kind, name: &str) -> Option<Tls> {
    let [ca, crt, key] = test_pki()?.files(kind, name);
    let tls = Tls::load(Some(&ca), Some(&crt), Some(&key))
        .expect("the test certificate is readable")
        .expect("all three files");
    Some(tls)
}

/// The harness's user certificate (an admin: see [`TEST_USER`]) in the TLS
/// mode; `None` without it.
pub fn user_tls() -> Option<Tls> {
    test_tls(Kind::User, TEST_USER)
}

/// `extra` with the TLS mode's flags for `kind`/`name` added, unless the
/// caller already chose its own (`--tls-ca` among `extra`): a test that
/// runs its own CA (tests/tests/security.rs) keeps it.
fn with_tls_flags(extra: &[&str], kind: Kind, name: &str) -> Vec<String> {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    if !extra.contains(&"--tls-ca") {
        args.extend(tls_flags(kind, name));
    }
    args
}

/// `schedctl`, ready for `--server URL`: in the TLS mode with the
/// harness's user certificate in its `SCHEDCTL_TLS_*` environment.
pub fn schedctl_command() -> Command {
    let mut cmd = Command::new(bin("schedctl"));
    if let Some(pki) = test_pki() {
        let [ca, crt, key] = pki.files(Kind::User, TEST_USER);
        cmd.env("SCHEDCTL_TLS_CA", ca)
            .env("SCHEDCTL_TLS_CERT", crt)
            .env("SCHEDCTL_TLS_KEY", key);
    }
    cmd
}

/// The real `global-scheduler` on a loopback port.
pub struct Scheduler {
    child: Option<Guarded>,
    pub port: u16,
    args: Vec<String>,
    /// The test's own certificate, when the scheduler runs with mutual TLS.
    tls: Option<Tls>,
}

impl Scheduler {
    /// Starts it against `etcd_url` with `extra` arguments, and waits until
    /// its health service says SERVING.
    /// In the TLS mode, with the `scheduler` certificate, checked with the
    /// harness's user certificate.
    pub async fn start(etcd_url: &str, extra: &[&str]) -> Scheduler {
        let mut s = Scheduler::new(etcd_url, extra);
        s.restart().await;
        s
    }

    /// [`Scheduler::start`] with mutual TLS: `extra` holds its `--tls-*`
    /// flags, and `client` is the certificate the test checks it with.
    pub async fn start_tls(etcd_url: &str, extra: &[&str], client: Tls) -> Scheduler {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut s = Scheduler::with_args(etcd_url, extra, Some(client));
        s.restart().await;
        s
    }

    /// Not started yet: on a free port, against `etcd_url`; in the TLS
    /// mode with the `scheduler` certificate (unless `extra` has its own).
    fn new(etcd_url: &str, extra: &[&str]) -> Scheduler {
        let args = with_tls_flags(extra, Kind::Scheduler, "scheduler");
        Scheduler::with_args(etcd_url, args, user_tls())
    }

    /// Not started yet, with exactly these `extra` arguments; `tls` is the
    /// test's own certificate when it serves mutual TLS.
    fn with_args(etcd_url: &str, extra: Vec<String>, tls: Option<Tls>) -> Scheduler {
        let port = free_port();
        let mut args = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--etcd".to_string(),
            etcd_url.to_string(),
        ];
        args.extend(extra);
        Scheduler {
            child: None,
            port,
            args,
            tls,
        }
    }

    /// A lazily connecting channel to it, showing the test's certificate
    /// when it serves mutual TLS.
    fn channel(&self) -> Channel {
        channel_with(&self.url(), self.tls.as_ref())
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// The scheduler's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref()?.program_pid()
    }

    /// SIGTERM; returns whether it exited within `deadline`.
    pub fn terminate(&mut self, deadline: Duration) -> bool {
        terminate(&mut self.child, deadline)
    }

    /// Starts it again with the same arguments (same port, same etcd) and
    /// waits until it leads: after a kill -9, until the old lease expires.
    pub async fn restart(&mut self) {
        self.spawn();
        wait_service(
            &self.url(),
            "clustersched.v1.SchedulerService",
            Duration::from_secs(30),
            self.tls.as_ref(),
        )
        .await;
    }

    /// Starts a replica on a new port without waiting for it to lead: it
    /// may stand by.
    pub async fn start_standby(etcd_url: &str, extra: &[&str]) -> Scheduler {
        let mut s = Scheduler::new(etcd_url, extra);
        s.spawn();
        wait_service(&s.url(), "", Duration::from_secs(30), s.tls.as_ref()).await;
        s
    }

    /// Whether it leads now (its `clustersched.v1.SchedulerService` service is SERVING).
    pub async fn leads(&self) -> bool {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel());
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "clustersched.v1.SchedulerService".to_string(),
            })
            .await;
        r.is_ok_and(|r| {
            r.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        })
    }

    /// Starts it again without waiting (a replica may stand by).
    pub fn spawn(&mut self) {
        self.kill9();
        let mut cmd = Command::new(bin("global-scheduler"));
        cmd.args(&self.args).current_dir(repo());
        let name = format!("global-scheduler-{}", self.port);
        self.child = Some(Guarded::spawn_named(cmd, &name).expect("start global-scheduler"));
    }

    /// A client of its user API (in the TLS mode, as the harness's user).
    pub async fn client(&self) -> SchedulerServiceClient<Channel> {
        SchedulerServiceClient::new(self.channel())
    }

    /// Machines in the clusters that are up, as this scheduler sees them
    /// (0 if the call fails).
    pub async fn machines_up(&self) -> u32 {
        self.client()
            .await
            .list_clusters(pb::ListClustersRequest {})
            .await
            .map(|r| {
                r.into_inner()
                    .clusters
                    .iter()
                    .filter(|c| c.up)
                    .map(|c| c.machines)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Waits until exactly `n` machines are up.
    pub async fn wait_machines_up(&self, n: u32, timeout: Duration) {
        eventually(&format!("{n} machine(s) up"), timeout, || async {
            (self.machines_up().await == n).then_some(())
        })
        .await;
    }

    /// A job's status, or `None` if the call fails (not found, or the
    /// scheduler is down).
    /// Every job's summary, or `None` if the call fails.
    pub async fn jobs(&self) -> Option<Vec<pb::JobSummary>> {
        crate::list_all_jobs!(self.client().await)
            .ok()
            .map(|r| r.into_inner().jobs)
    }

    pub async fn job(&self, name: &str) -> Option<pb::JobStatus> {
        self.client()
            .await
            .get_job(pb::GetJobRequest {
                name: name.to_string(),
                view: pb::JobView::Full as i32,
            })
            .await
            .ok()
            .map(|r| r.into_inner())
    }
}

/// A real `local-agent serve` for one cluster.
pub struct LocalAgent {
    child: Option<Guarded>,
    pub port: u16,
    args: Vec<String>,
    /// The test's own certificate, when the agent runs with mutual TLS.
    tls: Option<Tls>,
}

impl LocalAgent {
    /// Starts it for `cluster` at `location`, against the scheduler at
    /// `global` and etcd at `etcd_url`, with quick heartbeats for tests.
    pub async fn start(cluster: &str, location: &str, global: &str, etcd_url: &str) -> LocalAgent {
        LocalAgent::start_with(cluster, location, global, etcd_url, &[]).await
    }

    /// [`LocalAgent::start`] with `extra` arguments (a `--policy` file).
    ///
    /// In the TLS mode, with a `cluster` certificate for `cluster`, checked
    /// with the `scheduler` certificate (the one its Machines service
    /// answers, see [`LocalAgent::machines`]).
    pub async fn start_with(
        cluster: &str,
        location: &str,
        global: &str,
        etcd_url: &str,
        extra: &[&str],
    ) -> LocalAgent {
        let args = with_tls_flags(extra, Kind::Cluster, cluster);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let client = test_tls(Kind::Scheduler, "scheduler");
        LocalAgent::start_tls(cluster, location, global, etcd_url, &args, client).await
    }

    /// [`LocalAgent::start_with`]; with `client`, over mutual TLS (`extra`
    /// holds the agent's `--tls-*` flags, `client` is the certificate the
    /// test checks it with).
    pub async fn start_tls(
        cluster: &str,
        location: &str,
        global: &str,
        etcd_url: &str,
        extra: &[&str],
        client: Option<Tls>,
    ) -> LocalAgent {
        let port = free_port();
        let mut args: Vec<String> = [
            "serve",
            "--cluster",
            cluster,
            "--location",
            location,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--global",
            global,
            "--etcd",
            etcd_url,
            "--node-heartbeat-ms",
            "200",
            "--machine-timeout-ms",
            "2000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut a = LocalAgent {
            child: None,
            port,
            args,
            tls: client,
        };
        a.restart().await;
        a
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// The agent's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref()?.program_pid()
    }

    /// SIGTERM; returns whether it exited within `deadline`.
    pub fn terminate(&mut self, deadline: Duration) -> bool {
        terminate(&mut self.child, deadline)
    }

    /// The machines of this cluster as the agent itself sees them (its
    /// nodes registered, with the tasks it counts on each), or `None` if
    /// the call fails.
    pub async fn machines(&self) -> Option<Vec<pb::MachineStatus>> {
        pb::machines_client::MachinesClient::new(channel_with(&self.url(), self.tls.as_ref()))
            .list_machines(pb::ListMachinesRequest {
                cluster: String::new(),
            })
            .await
            .ok()
            .map(|r| r.into_inner().machines)
    }

    /// `ListMachines` with `cluster` as the filter, called as the global
    /// scheduler calls it.
    pub async fn list_machines(
        &self,
        cluster: &str,
    ) -> Result<Vec<pb::MachineStatus>, tonic::Status> {
        pb::machines_client::MachinesClient::new(channel_with(&self.url(), self.tls.as_ref()))
            .list_machines(pb::ListMachinesRequest {
                cluster: cluster.to_string(),
            })
            .await
            .map(|r| r.into_inner().machines)
    }

    pub async fn restart(&mut self) {
        self.kill9();
        let mut cmd = Command::new(bin("local-agent"));
        cmd.args(&self.args).current_dir(repo());
        let name = format!("local-agent-{}", self.port);
        self.child = Some(Guarded::spawn_named(cmd, &name).expect("start local-agent serve"));
        wait_service(&self.url(), "", Duration::from_secs(30), self.tls.as_ref()).await;
    }
}

/// A real `local-agent node` with a declared capacity and its own work dir.
pub struct NodeAgent {
    child: Option<Guarded>,
    pub name: String,
    pub work_dir: PathBuf,
    args: Vec<String>,
}

impl NodeAgent {
    pub fn start(agent: &str, name: &str, cpu: &str, memory: &str, work_dir: PathBuf) -> NodeAgent {
        NodeAgent::start_with(agent, name, cpu, memory, work_dir, &[])
    }

    /// [`NodeAgent::start`] with `extra` arguments; in the TLS mode with a
    /// `node` certificate for `name` (unless `extra` has its own).
    pub fn start_with(
        agent: &str,
        name: &str,
        cpu: &str,
        memory: &str,
        work_dir: PathBuf,
        extra: &[&str],
    ) -> NodeAgent {
        let mut args: Vec<String> = [
            "node",
            "--agent",
            agent,
            "--name",
            name,
            "--cpu",
            cpu,
            "--memory",
            memory,
            "--work-dir",
            work_dir.to_str().expect("a UTF-8 path"),
            "--lease-ms",
            "1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(with_tls_flags(extra, Kind::Node, name));
        let mut n = NodeAgent {
            child: None,
            name: name.to_string(),
            work_dir,
            args,
        };
        n.restart();
        n
    }

    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    pub fn restart(&mut self) {
        self.kill9();
        let mut cmd = Command::new(bin("local-agent"));
        cmd.args(&self.args).current_dir(repo());
        let name = format!("node-{}", self.name);
        self.child = Some(Guarded::spawn_named(cmd, &name).expect("start local-agent node"));
    }

    /// SIGTERM; returns whether it exited within `deadline`.
    pub fn terminate(&mut self, deadline: Duration) -> bool {
        terminate(&mut self.child, deadline)
    }

    /// Attempt directories of `job`'s task `index` on this node.
    pub fn attempts(&self, job: &str, index: u32) -> Vec<u64> {
        let dir = self
            .work_dir
            .join("tasks")
            .join(job)
            .join(index.to_string());
        let mut out: Vec<u64> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Whether attempt `attempt` of `job`'s task `index` has exited on this
    /// node: its supervisor wrote the exit code, whether or not the node
    /// agent was there to see it.
    pub fn exited(&self, job: &str, index: u32, attempt: u64) -> bool {
        self.work_dir
            .join("tasks")
            .join(job)
            .join(index.to_string())
            .join(attempt.to_string())
            .join("exit")
            .exists()
    }
}

/// A child's output read line by line as it comes, so that a test can wait
/// for what the program says instead of guessing how long it takes to say
/// it.
pub struct Lines {
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: String,
}

impl Lines {
    /// Reads `from` (a child's `stdout` or `stderr`) on a thread of its own
    /// until it ends.
    pub fn follow(from: impl std::io::Read + Send + 'static) -> Lines {
        use std::io::BufRead;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(from).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines {
            rx,
            seen: String::new(),
        }
    }

    /// Waits for a line containing `needle` and returns it; panics, with
    /// what was said so far, if none comes within `timeout` or the output
    /// ends first.
    pub async fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let found = tokio::time::timeout(timeout, async {
            while let Some(line) = self.rx.recv().await {
                self.seen.push_str(&line);
                self.seen.push('\n');
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the output ended without {needle:?}:\n{}", self.seen),
            Err(_) => panic!(
                "no {needle:?} in the output after {timeout:?}:\n{}",
                self.seen
            ),
        }
    }

    /// Everything said, once the output ends (the child has exited).
    pub async fn all(mut self) -> String {
        while let Some(line) = self.rx.recv().await {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        self.seen
    }
}

/// A lazily connecting channel (calls fail with UNAVAILABLE while the
/// server is down, and work again once it is back). Several URLs,
/// comma-separated, give a channel spread over the reachable ones. In the
/// TLS mode, `https://` URLs are dialled with the harness's user
/// certificate (`http://` ones stay plaintext, for tests that check a
/// plaintext caller is refused).
pub fn channel(url: &str) -> Channel {
    let tls = if url.contains("https://") {
        user_tls()
    } else {
        None
    };
    channel_with(url, tls.as_ref())
}

/// [`channel`], showing `tls`'s certificate when given (mutual TLS), in
/// plaintext when not.
fn channel_with(url: &str, tls: Option<&Tls>) -> Channel {
    let endpoints: Vec<Endpoint> = url
        .split(',')
        .map(|u| {
            match tls {
                Some(t) => sched_security::tls::endpoint(u, Some(t)).expect("a valid URL"),
                None => Channel::from_shared(u.to_string()).expect("a valid URL"),
            }
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(20))
        })
        .collect();
    if endpoints.len() == 1 {
        endpoints[0].connect_lazy()
    } else {
        Channel::balance_list(endpoints.into_iter())
    }
}

/// A lazily connecting channel over mutual TLS, showing `tls`'s
/// certificate.
pub fn tls_channel(url: &str, tls: &Tls) -> Channel {
    channel_with(url, Some(tls))
}

pub use sched_security::Bearer;

/// A client of the scheduler's job API as a user calls it.
pub type UserClient =
    SchedulerServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// A user's client of the scheduler at `url`: plaintext, or with `tls`
/// over mutual TLS (a user certificate), sending `token` with every call
/// if given.
pub fn user_client(url: &str, tls: Option<&Tls>, token: Option<&str>) -> UserClient {
    let channel = match tls {
        Some(t) => tls_channel(url, t),
        None => channel(url),
    };
    SchedulerServiceClient::with_interceptor(channel, Bearer::new(token).expect("an ASCII token"))
}

/// The keys of the jobs stored under the default prefix, in order.
pub async fn job_keys(store: &dyn sched_store::Store) -> Vec<String> {
    store
        .list("/sched/jobs/")
        .await
        .expect("list the stored jobs")
        .items
        .into_iter()
        .map(|kv| kv.key)
        .collect()
}

/// A channel to the leader among the comma-separated replicas in `urls`
/// (what schedctl and the local agents use).
pub fn leader_channel(urls: &str) -> sched_proto::leader::LeaderChannel {
    leader_channel_timeouts(urls, Duration::from_secs(2), Duration::from_secs(20))
}

/// [`leader_channel`] with these connect and per-call timeouts. In the TLS
/// mode, `https://` replicas are dialled with the harness's user
/// certificate, as [`channel`] does.
pub fn leader_channel_timeouts(
    urls: &str,
    connect_timeout: Duration,
    timeout: Duration,
) -> sched_proto::leader::LeaderChannel {
    let tls = if urls.contains("https://") {
        user_tls()
    } else {
        None
    };
    sched_proto::leader::LeaderChannel::with_tls(urls, tls, connect_timeout, timeout)
        .expect("valid URLs")
}

/// Waits until the gRPC health service at `url` reports the process
/// SERVING.
pub async fn wait_serving(url: &str, timeout: Duration) {
    wait_service(url, "", timeout, None).await
}

/// Waits until the global scheduler at `url` leads (a standby reports its
/// `clustersched.v1.SchedulerService` service NOT_SERVING).
pub async fn wait_leading(url: &str, timeout: Duration) {
    wait_service(url, "clustersched.v1.SchedulerService", timeout, None).await
}

/// Waits until `service` at `url` is SERVING, asking with `tls`'s
/// certificate, or as [`channel`] would without it.
async fn wait_service(url: &str, service: &str, timeout: Duration, tls: Option<&Tls>) {
    let start = Instant::now();
    let channel = match tls {
        Some(t) => tls_channel(url, t),
        None => channel(url),
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    loop {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_string(),
            })
            .await;
        if let Ok(r) = r {
            if r.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                return;
            }
        }
        assert!(
            start.elapsed() < timeout,
            "{url} not serving after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `timeout`
/// saying what it waited for.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How a [`TestCluster`] is made.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    pub location: String,
    /// Machines of one class: how many, each with this cpu (millicores) and
    /// memory (bytes).
    pub machines: u32,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub labels: BTreeMap<String, String>,
    /// Tasks it places before handing the rest back.
    pub slots: usize,
}

impl ClusterSpec {
    pub fn new(name: &str, location: &str) -> Self {
        ClusterSpec {
            name: name.to_string(),
            location: location.to_string(),
            machines: 10,
            cpu_millis: 32_000,
            memory_bytes: 128 << 30,
            labels: BTreeMap::new(),
            slots: usize::MAX,
        }
    }
}

/// What a test cluster has seen.
#[derive(Debug, Default, Clone)]
pub struct ClusterLog {
    /// Placed tasks: (job, index) -> machine.
    pub placed: BTreeMap<(String, u32), String>,
    /// Tasks handed back.
    pub handed_back: Vec<(String, u32)>,
    /// Assignments received for a task it already held (resyncs after a
    /// reconnect resend what is still assigned; those are not counted
    /// when the task was not yet reported placed).
    pub repeated: u64,
    pub cancelled: Vec<String>,
    /// Reports the scheduler has acknowledged.
    pub reports_acked: u64,
}

/// A cluster speaking the real protocol; see the crate docs.
pub struct TestCluster {
    pub spec: ClusterSpec,
    log: Arc<Mutex<ClusterLog>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestCluster {
    /// Registers with the scheduler at `url` and starts serving it; to
    /// `https://` URLs in the TLS mode, with a `cluster` certificate for
    /// its name.
    pub fn start(url: &str, spec: ClusterSpec) -> TestCluster {
        let log = Arc::new(Mutex::new(ClusterLog::default()));
        let stop = CancellationToken::new();
        let tls = if url.contains("https://") {
            test_tls(Kind::Cluster, &spec.name)
        } else {
            None
        };
        let task = tokio::spawn(cluster_loop(
            channel_with(url, tls.as_ref()),
            spec.clone(),
            log.clone(),
            stop.clone(),
        ));
        TestCluster {
            spec,
            log,
            stop,
            task,
        }
    }

    pub fn log(&self) -> ClusterLog {
        self.log.lock().unwrap().clone()
    }

    /// Stops heartbeating and reading assignments, as a dead agent would.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn class(spec: &ClusterSpec) -> pb::MachineClassStatus {
    pb::MachineClassStatus {
        name: "std".to_string(),
        capacity: Some(pb::Resources {
            cpu_millis: spec.cpu_millis,
            memory_bytes: spec.memory_bytes,
            disk_bytes: 0,
            gpu_millis: 0,
        }),
        labels: spec.labels.clone().into_iter().collect(),
        count: spec.machines,
    }
}

async fn register(
    c: &mut ClustersClient<Channel>,
    spec: &ClusterSpec,
    stop: &CancellationToken,
) -> Duration {
    loop {
        let r = c
            .register_cluster(pb::RegisterClusterRequest {
                cluster: spec.name.clone(),
                location: spec.location.clone(),
                classes: vec![class(spec)],
                address: String::new(),
            })
            .await;
        match r {
            Ok(r) => {
                return Duration::from_millis(u64::from(
                    r.into_inner().heartbeat_interval_ms.max(50),
                ))
            }
            Err(_) if !stop.is_cancelled() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => return Duration::from_secs(1),
        }
    }
}

async fn cluster_loop(
    ch: Channel,
    spec: ClusterSpec,
    log: Arc<Mutex<ClusterLog>>,
    stop: CancellationToken,
) {
    let mut c = ClustersClient::new(ch);
    // Reports not yet acknowledged are resent until they are.
    let mut unsent = pb::ReportRequest {
        cluster: spec.name.clone(),
        tasks: Vec::new(),
        handed_back: Vec::new(),
    };
    let mut allocated_tasks: Vec<pb::Resources> = Vec::new();
    let mut seq_seen = 0;
    'connect: while !stop.is_cancelled() {
        let interval = register(&mut c, &spec, &stop).await;
        let mut stream = match c
            .assignments(pb::AssignmentsRequest {
                cluster: spec.name.clone(),
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut beat = tokio::time::interval(interval);
        loop {
            if !unsent.tasks.is_empty() || !unsent.handed_back.is_empty() {
                if c.report(unsent.clone()).await.is_ok() {
                    log.lock().unwrap().reports_acked += 1;
                    unsent.tasks.clear();
                    unsent.handed_back.clear();
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'connect;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = beat.tick() => {
                    let allocated = allocated_tasks.iter().fold(pb::Resources::default(), |mut a, r| {
                        a.cpu_millis += r.cpu_millis;
                        a.memory_bytes += r.memory_bytes;
                        a
                    });
                    match c.heartbeat(pb::HeartbeatRequest {
                        cluster: spec.name.clone(),
                        classes: vec![class(&spec)],
                        allocated: Some(allocated),
                        queued: None,
                        queue_len: 0,
                        seq_seen,
                        by_priority: Vec::new(),
                        // As an agent that does not report room: the
                        // scheduler splits by summed capacity.
                        room: None,
                    }).await {
                        Ok(r) if r.get_ref().register_again => continue 'connect,
                        Ok(_) => {}
                        Err(_) => continue 'connect,
                    }
                }
                batch = stream.next() => {
                    let Some(Ok(batch)) = batch else { continue 'connect };
                    seq_seen = seq_seen.max(batch.seq);
                    let mut log = log.lock().unwrap();
                    log.cancelled.extend(batch.cancelled_jobs);
                    for a in batch.assignments {
                        let mut back = Vec::new();
                        for i in a.indices {
                            let key = (a.job.clone(), i);
                            if let Some(machine) = log.placed.get(&key).cloned() {
                                // A resync: say where it is, as a real
                                // agent does (a new leader reads tasks on
                                // machines back as `assigned`).
                                log.repeated += 1;
                                unsent.tasks.push(placed_report(&a.job, i, machine));
                                continue;
                            }
                            if log.placed.len() >= spec.slots {
                                back.push(i);
                                log.handed_back.push(key);
                                continue;
                            }
                            let machine = format!("{}-m{}", spec.name, log.placed.len() as u32 % spec.machines.max(1));
                            log.placed.insert(key, machine.clone());
                            allocated_tasks.push(a.request.unwrap_or_default());
                            unsent.tasks.push(placed_report(&a.job, i, machine));
                        }
                        if !back.is_empty() {
                            unsent.handed_back.push(pb::HandBack {
                                job: a.job.clone(),
                                indices: back,
                                reason: format!("{} has no free slot", spec.name),
                            });
                        }
                    }
                }
            }
        }
    }
}

/// Peak and current resident memory of a process, in bytes, from
/// `/proc/<pid>/status` (`VmHWM`, `VmRSS`).
pub fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// CPU time a process has used so far (user + system, all its threads),
/// from `/proc/<pid>/stat`. Its fields 14 and 15 count clock ticks of
/// `USER_HZ`, which Linux fixes at 100 for what it shows userspace
/// (proc(5)); the fields are counted after the command name, which is in
/// parentheses and may hold spaces.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, so utime (14) is the 12th here.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// SIGKILL to a child, and waits until the program is gone. The watchdog
/// is reaped at once, but the program dies a moment later; until it has,
/// its listening socket still takes connections, which it then resets, so
/// a client started right after the kill could meet a broken connection
/// (UNKNOWN) instead of a refused one (UNAVAILABLE), as after a real crash.
fn kill9(child: &mut Option<Guarded>) {
    let Some(mut c) = child.take() else {
        return;
    };
    let pid = c.program_pid();
    c.kill();
    let Some(pid) = pid else {
        return;
    };
    // SIGKILL cannot be caught; 5 s is far more than any exit takes, and
    // bounds the wait should the pid have been reused meanwhile.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        // Gone, or a zombie (its files, sockets included, already closed).
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
                Some(state != 'Z')
            })
            .unwrap_or(false);
        if !alive {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGTERM to a child; whether it exited within `deadline` (else SIGKILL).
fn terminate(child: &mut Option<Guarded>, deadline: Duration) -> bool {
    let Some(mut c) = child.take() else {
        return true;
    };
    c.terminate();
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    c.kill();
    false
}

/// etcd's own count of what it has written since it started (its
/// `/metrics` at the client URL, plaintext only): keys put, keys deleted,
/// and write transactions (a commit of ours is one txn of many puts).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EtcdWrites {
    pub puts: f64,
    pub deletes: f64,
    pub txns: f64,
}

impl std::ops::Sub for EtcdWrites {
    type Output = EtcdWrites;
    fn sub(self, o: EtcdWrites) -> EtcdWrites {
        EtcdWrites {
            puts: self.puts - o.puts,
            deletes: self.deletes - o.deletes,
            txns: self.txns - o.txns,
        }
    }
}

/// [`EtcdWrites`] of the etcd at `url` (`http://127.0.0.1:PORT`), read from
/// `etcd_mvcc_put_total`, `etcd_mvcc_delete_total` and
/// `etcd_mvcc_txn_total`; None if it cannot be read.
pub async fn etcd_writes(url: &str) -> Option<EtcdWrites> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.strip_prefix("http://")?;
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw);
    let value = |name: &str| -> Option<f64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
    };
    Some(EtcdWrites {
        puts: value("etcd_mvcc_put_total")?,
        deletes: value("etcd_mvcc_delete_total")?,
        txns: value("etcd_mvcc_txn_total")?,
    })
}

/// Every job, paged through ListJobs (1000 a page): `list_all_jobs!(client)`
/// for any `SchedulerServiceClient`, as `Result<Response<ListJobsResponse>, Status>`
/// with all the jobs in one response (a macro, so that it takes clients over
/// any channel without naming tonic's bounds).
/// A fake cluster's report that task `index` of `job` is placed on `machine`.
fn placed_report(job: &str, index: u32, machine: String) -> pb::TaskReport {
    pb::TaskReport {
        job: job.to_string(),
        index,
        state: pb::TaskState::Placed as i32,
        machine,
        ..Default::default()
    }
}

#[macro_export]
macro_rules! list_all_jobs {
    ($client:expr) => {{
        let c = &mut $client;
        let mut jobs = Vec::new();
        let mut page_token = String::new();
        loop {
            let asked = ::sched_proto::pb::ListJobsRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            };
            match c.list_jobs(asked).await {
                Err(e) => break Err(e),
                Ok(r) => {
                    let r = r.into_inner();
                    jobs.extend(r.jobs);
                    if r.next_page_token.is_empty() {
                        break Ok(::tonic::Response::new(
                            ::sched_proto::pb::ListJobsResponse {
                                jobs,
                                next_page_token: String::new(),
                            },
                        ));
                    }
                    page_token = r.next_page_token;
                }
            }
        }
    }};
}

/// Keys under the global scheduler's `P/tasks/`, split: each task's own
/// key (its record, JSON) and the assignment records (`.../assigned-<n>`:
/// a cluster and the index ranges a pass handed it).
pub fn split_task_keys(
    items: Vec<sched_store::KeyValue>,
) -> (Vec<sched_store::KeyValue>, Vec<sched_store::KeyValue>) {
    items.into_iter().partition(|kv| {
        !kv.key
            .rsplit('/')
            .next()
            .is_some_and(|last| last.starts_with("assigned-"))
    })
}

/// The tasks assignment records name, as `(cluster, index)` (a record's
/// `tasks` are inclusive ranges).
pub fn assigned_by_records(records: &[sched_store::KeyValue]) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for kv in records {
        let v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
        let cluster = v["cluster"].as_str().unwrap().to_string();
        for r in v["tasks"].as_array().unwrap() {
            let (a, b) = (r[0].as_u64().unwrap() as u32, r[1].as_u64().unwrap() as u32);
            out.extend((a..=b).map(|i| (cluster.clone(), i)));
        }
    }
    out
}
