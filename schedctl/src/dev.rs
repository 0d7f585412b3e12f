//! `schedctl dev`: the whole stack on loopback, for trying it out.
//!
//! Starts the global scheduler (on `--listen`, by default where schedctl
//! looks for it), one local agent per cluster of the topology, and real
//! node agents: up to `--machines-per-class` per machine class (a laptop
//! cannot host hundreds), each declaring its class's capacity and labels.
//! Without `--etcd` every component keeps its state in memory. Logs and
//! task directories go under `--dir`. Ctrl-C stops everything.
//!
//! # Start-up
//!
//! schedctl binds every listening socket of the stack itself and hands
//! each to its process as standard input (`--listen stdin`), keeping a
//! copy until the stack stops. So a busy `--listen` port is an error
//! before anything starts; no other process can take a port between its
//! choice and its use, or after a crash; and every address a child is
//! given belongs to this stack: no agent of it can register with another
//! stack that happens to listen on 7070. Nothing else starts until the
//! global scheduler answers its gRPC health check as SERVING (it leads, its
//! state loaded), and node agents start once their local agent does.
//!
//! # Security
//!
//! By default the stack runs as a deployment should: a throwaway CA in
//! `DIR/pki` issues a certificate to every process (scheduler, each
//! cluster's agent, each node) and an `admin` user certificate with a
//! token; every hop is mutual TLS and the job API needs the token. dev
//! writes `DIR/schedctl.yaml`, a config file with that context, and prints
//! how to use it. `--insecure` runs it all in plaintext without tokens.
//!
//! `cargo run -p schedctl` builds schedctl alone; started that way, dev
//! first builds its two sibling binaries with the same cargo, profile and
//! target directory, so that one command is enough on a fresh clone and
//! the siblings are never older than the sources.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sched_core::resources::{format_bytes, format_cpu, format_gpu};
use sched_core::topology::Topology;
use sched_proto::pb::{machines_server, scheduler_service_server};
use sched_proto::process::{self, Signals};
use sched_security::{certs, Kind, Tls};

use crate::access::ContextEntry;
use crate::client::Target;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The topology to start: a local agent per cluster, node agents per
    /// machine class.
    #[arg(
        long,
        default_value = "config/examples/topology.yaml",
        value_name = "FILE"
    )]
    topology: PathBuf,
    /// etcd endpoints; without it, state is in memory.
    #[arg(long, value_name = "URL[,URL...]")]
    etcd: Option<String>,
    /// Where the global scheduler listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    listen: String,
    /// Where the global scheduler serves its status page (port 0: any free
    /// port; `none`: no page). Its URL is printed once the stack is up.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    http_listen: String,
    /// Real node agents per machine class.
    #[arg(long, default_value_t = 2, value_name = "N")]
    machines_per_class: u32,
    /// Logs and task directories.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Once the stack is up, submit this job file.
    #[arg(long, value_name = "FILE")]
    submit: Option<PathBuf>,
    /// With --submit: wait for the jobs to finish, print them, stop the
    /// stack and exit (1 if a job failed).
    #[arg(long, requires = "submit")]
    exit_when_done: bool,
    /// Plaintext and no tokens (by default every hop is mutual TLS and the
    /// job API needs a token).
    #[arg(long)]
    insecure: bool,
    /// Prometheus metrics: the global scheduler's at http://ADDR/metrics,
    /// then the local agents' and the node agents' on the ports after
    /// ADDR's, one each, in the order they start.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<SocketAddr>,
}

/// The `--metrics-listen` addresses of the stack's processes, one port
/// after another.
struct MetricsPorts {
    next: Option<SocketAddr>,
    first: Option<SocketAddr>,
}

impl MetricsPorts {
    fn new(first: Option<SocketAddr>) -> anyhow::Result<Self> {
        if first.is_some_and(|a| a.port() == 0) {
            anyhow::bail!("--metrics-listen: give a port (each process takes the next one), not 0");
        }
        Ok(MetricsPorts { next: first, first })
    }

    /// The flag for the next process (none without --metrics-listen).
    fn flag(&mut self) -> anyhow::Result<Vec<String>> {
        let Some(addr) = self.next else {
            return Ok(Vec::new());
        };
        let port = addr.port().checked_add(1).ok_or_else(|| {
            anyhow::anyhow!("--metrics-listen: too few ports after {addr} for every process")
        })?;
        self.next = Some(SocketAddr::new(addr.ip(), port));
        Ok(vec!["--metrics-listen".to_string(), addr.to_string()])
    }
}

/// The throwaway CA of a stack, and its admin's certificate and token.
struct Pki {
    dir: PathBuf,
    admin: Tls,
    token: String,
}

impl Pki {
    /// A CA in `dir`, an admin user and token, and the scheduler's tokens
    /// file.
    fn new(dir: &Path) -> anyhow::Result<Pki> {
        certs::init_ca(dir)?;
        let files = issue(dir, Kind::User, "admin")?;
        let admin = Tls::load(Some(&files[0]), Some(&files[1]), Some(&files[2]))?
            .context("the admin certificate")?;
        let token = sched_security::tokens::generate().context("cannot read /dev/urandom")?;
        let tokens = format!(
            "# schedctl dev: the admin's token (its SHA-256; the token is in admin.token)\n\
             tokens:\n  - {{user: admin, tenant: default, role: admin, sha256: {}}}\n",
            sched_security::tokens::sha256_hex(&token)
        );
        std::fs::write(dir.join("tokens.yaml"), tokens)?;
        write_private(&dir.join("admin.token"), &token)?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            admin,
            token,
        })
    }

    /// `--tls-ca/--tls-cert/--tls-key` for a new certificate of `kind`/`name`.
    fn flags(&self, kind: Kind, name: &str) -> anyhow::Result<Vec<String>> {
        let [ca, crt, key] = issue(&self.dir, kind, name)?;
        Ok(sched_security::tls::flags(&ca, &crt, &key))
    }
}

/// Issues `kind`/`name` from the CA in `dir`: the CA's, the certificate's
/// and the key's paths.
fn issue(dir: &Path, kind: Kind, name: &str) -> anyhow::Result<[PathBuf; 3]> {
    let req = certs::Request {
        kind,
        name,
        sans: &[],
        days: 30,
    };
    let (crt, key) = certs::issue(dir, &req, dir)?;
    Ok([dir.join(certs::CA_CERT), crt, key])
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// How long a process of the stack may take to answer its health check.
/// The global scheduler answers once it leads; with etcd that includes an
/// election (a new replica's campaign takes about a second).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one health check may take: loopback answers in microseconds,
/// so a slow answer is a process still starting.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Binds `listen`. A port that is taken is one line naming it.
fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            let port = listen.rsplit(':').next().unwrap_or(listen);
            anyhow::anyhow!(
                "cannot listen on {listen}: port {port} is already in use (another stack?); \
                 stop it, or pass --listen 127.0.0.1:0 for any free port"
            )
        } else {
            anyhow::anyhow!("cannot listen on {listen}: {e}")
        }
    })
}

/// Whether this schedctl was started by `cargo run` of its own package
/// (cargo sets these variables for the program it runs), and not by
/// schedctl's tests, which set them too and name the binary they built.
fn started_by_cargo_run() -> Option<OsString> {
    let cargo = std::env::var_os("CARGO")?;
    let own = std::env::var("CARGO_PKG_NAME").as_deref() == Ok("schedctl");
    let test = std::env::var_os("CARGO_BIN_EXE_schedctl").is_some();
    (own && !test).then_some(cargo)
}

/// Builds the sibling binaries as `cargo run` built this one: same cargo,
/// workspace, profile (the name of the directory schedctl is in; `debug`
/// is the `dev` profile) and target directory (the one above it).
fn build_siblings(cargo: &OsString, exe: &Path) -> anyhow::Result<()> {
    let profile_dir = exe.parent().context("schedctl's path has no directory")?;
    let target_dir = profile_dir
        .parent()
        .context("schedctl is not in a cargo target directory")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(p) => p,
        None => bail!("cannot tell the cargo profile from {}", exe.display()),
    };
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(|d| PathBuf::from(d).join("Cargo.toml"))
        .context("CARGO_MANIFEST_DIR is not set")?;
    eprintln!("schedctl dev: started by cargo run: building global-scheduler and local-agent");
    let status = Command::new(cargo)
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--profile", profile])
        .args(["-p", "global-scheduler", "-p", "local-agent", "--bins"])
        .stdin(Stdio::null())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building global-scheduler and local-agent failed ({status})");
    }
    Ok(())
}

/// The sibling binary `name` (next to this schedctl).
fn sibling(exe: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found next to schedctl: build the workspace (`cargo build --release`)",
            path.display()
        );
    }
    Ok(path)
}

/// The processes of the stack, and the listening sockets they were given.
#[derive(Default)]
struct Stack {
    children: Vec<(String, Child)>,
    /// Our copies of the children's listening sockets: while we hold them,
    /// no other process can take those ports, even if a child dies.
    sockets: Vec<OwnedFd>,
}

impl Stack {
    /// Starts `program` with its output in `logs/<name>.log` and, if given,
    /// `listener` as its standard input.
    fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        logs: &Path,
        listener: Option<TcpListener>,
    ) -> anyhow::Result<()> {
        let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
        let stdin = match listener {
            Some(l) => {
                self.sockets.push(OwnedFd::from(l.try_clone()?));
                Stdio::from(OwnedFd::from(l))
            }
            None => Stdio::null(),
        };
        let child = Command::new(program)
            .args(args)
            .stdin(stdin)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// SIGTERM to everything, newest first; SIGKILL after 10 s.
    fn stop(&mut self) {
        for (name, c) in self.children.iter_mut().rev() {
            // Only a child not yet reaped: its pid cannot have been reused.
            if let Ok(None) = c.try_wait() {
                if let Err(e) = process::terminate(c) {
                    eprintln!("schedctl dev: cannot stop {name}: {e}");
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (name, c) in self.children.iter_mut().rev() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = c.try_wait() {
                eprintln!("schedctl dev: {name} did not stop in time; killing it");
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.children.clear();
        self.sockets.clear();
    }

    fn check(&mut self) -> anyhow::Result<()> {
        for (name, c) in &mut self.children {
            if let Some(status) = c.try_wait()? {
                bail!("{name} exited ({status}); see its log");
            }
        }
        Ok(())
    }

    /// Waits until `name` at `url` reports `service` SERVING; fails at once
    /// if a process of the stack exits meanwhile.
    async fn wait_serving(
        &mut self,
        name: &str,
        url: &str,
        service: &str,
        tls: Option<&Tls>,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let last = match process::serving_tls(url, service, HEALTH_CHECK_TIMEOUT, tls).await {
                Ok(true) => return Ok(()),
                Ok(false) => "not serving yet".to_string(),
                Err(s) => s.message().to_string(),
            };
            self.check()?;
            if start.elapsed() > START_TIMEOUT {
                bail!(
                    "{name} did not answer its health check at {url} within {} s ({last}); see its log",
                    START_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let topology = Topology::from_yaml(&super::read(&args.topology)?)
        .with_context(|| format!("invalid topology {}", args.topology.display()))?;
    // First of all: a busy port stops here, before anything is built or
    // started.
    let listener = bind(&args.listen)?;
    let exe = std::env::current_exe().context("cannot find schedctl's own path")?;
    if let Some(cargo) = started_by_cargo_run() {
        build_siblings(&cargo, &exe)?;
    }
    let bin = Binaries {
        global: sibling(&exe, "global-scheduler")?,
        agent: sibling(&exe, "local-agent")?,
    };
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("sched-dev-{}", std::process::id())));
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let mut stack = Stack::default();
    let result = rt.block_on(async {
        let mut signals = Signals::new().context("cannot catch SIGTERM/SIGINT")?;
        tokio::select! {
            r = start_and_serve(&args, &topology, &bin, &dir, &logs, listener, &mut stack) => r,
            () = signals.recv() => Ok(()),
        }
    });
    // Close our own connections first: the scheduler waits for open
    // connections when it shuts down.
    drop(rt);
    eprintln!("schedctl dev: stopping");
    stack.stop();
    result
}

struct Binaries {
    global: PathBuf,
    agent: PathBuf,
}

/// Starts the stack in order, then submits, waits or idles as asked.
async fn start_and_serve(
    args: &Args,
    topology: &Topology,
    bin: &Binaries,
    dir: &Path,
    logs: &Path,
    listener: TcpListener,
    stack: &mut Stack,
) -> anyhow::Result<()> {
    let etcd: Vec<String> = args
        .etcd
        .iter()
        .flat_map(|e| ["--etcd".to_string(), e.clone()])
        .collect();

    let pki = if args.insecure {
        None
    } else {
        Some(Pki::new(&dir.join("pki"))?)
    };
    let tls_flags = |kind: Kind, name: &str| -> anyhow::Result<Vec<String>> {
        pki.as_ref().map_or(Ok(Vec::new()), |p| p.flags(kind, name))
    };
    let admin = pki.as_ref().map(|p| &p.admin);
    let scheme = if pki.is_some() { "https" } else { "http" };

    let mut metrics = MetricsPorts::new(args.metrics_listen)?;
    let global_addr = listener.local_addr()?;
    let server = format!("{scheme}://{global_addr}");
    let mut g = vec![
        "--listen".to_string(),
        process::STDIN.to_string(),
        "--topology".to_string(),
        args.topology.display().to_string(),
    ];
    g.extend(etcd.iter().cloned());
    g.extend(tls_flags(Kind::Scheduler, "scheduler")?);
    g.extend(metrics.flag()?);
    let http = status_page_addr(&args.http_listen)?;
    if let Some(addr) = http {
        g.extend(["--http-listen".to_string(), addr.to_string()]);
    }
    if let Some(p) = &pki {
        g.extend([
            "--tokens".to_string(),
            p.dir.join("tokens.yaml").display().to_string(),
        ]);
    }
    stack.spawn("global-scheduler", &bin.global, &g, logs, Some(listener))?;
    stack
        .wait_serving(
            "the global scheduler",
            &server,
            scheduler_service_server::SERVICE_NAME,
            admin,
        )
        .await?;

    let mut agents: Vec<(&sched_core::cluster::Cluster, SocketAddr)> = Vec::new();
    for c in &topology.clusters {
        let listener = bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let mut a = vec![
            "serve".to_string(),
            "--cluster".to_string(),
            c.name.clone(),
            "--location".to_string(),
            topology.locality.name(c.location).to_string(),
            "--listen".to_string(),
            process::STDIN.to_string(),
            "--global".to_string(),
            server.clone(),
        ];
        a.extend(etcd.iter().cloned());
        a.extend(tls_flags(Kind::Cluster, &c.name)?);
        a.extend(metrics.flag()?);
        let name = format!("agent-{}", c.name);
        stack.spawn(&name, &bin.agent, &a, logs, Some(listener))?;
        agents.push((c, addr));
    }
    let mut machines = 0;
    for (c, addr) in agents {
        let url = format!("{scheme}://{addr}");
        stack
            .wait_serving(
                &format!("the local agent of {}", c.name),
                &url,
                machines_server::SERVICE_NAME,
                admin,
            )
            .await?;
        for class in &c.classes {
            for i in 0..class.count.min(args.machines_per_class) {
                let name = format!("{}-{}-{i}", c.name, class.name);
                let r = class.capacity;
                let mut n = vec![
                    "node".to_string(),
                    "--agent".to_string(),
                    url.clone(),
                    "--name".to_string(),
                    name.clone(),
                    "--cpu".to_string(),
                    format_cpu(r.cpu),
                    "--memory".to_string(),
                    format_bytes(r.memory),
                    "--work-dir".to_string(),
                    dir.join("nodes").join(&name).display().to_string(),
                ];
                if r.disk.0 > 0 {
                    n.extend(["--disk".to_string(), format_bytes(r.disk)]);
                }
                let model = class.labels.get(sched_core::gpu::GPU_MODEL_LABEL);
                match model {
                    // Whole devices of a known model: the node exposes
                    // them to its tasks (CUDA_VISIBLE_DEVICES).
                    Some(m)
                        if r.gpu.0 > 0
                            && r.gpu.0.is_multiple_of(1000)
                            && r.gpu.0 / 1000 <= u64::from(sched_core::gpu::MAX_DEVICES) =>
                    {
                        n.extend([
                            "--gpus".to_string(),
                            (r.gpu.0 / 1000).to_string(),
                            "--gpu-model".to_string(),
                            m.clone(),
                        ]);
                    }
                    _ if r.gpu.0 > 0 => {
                        n.extend(["--gpu".to_string(), format_gpu(r.gpu)]);
                    }
                    _ => {}
                }
                if !class.labels.is_empty() {
                    let l: Vec<String> = class
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    n.extend(["--labels".to_string(), l.join(",")]);
                }
                n.extend(tls_flags(Kind::Node, &name)?);
                n.extend(metrics.flag()?);
                stack.spawn(&format!("node-{name}"), &bin.agent, &n, logs, None)?;
                machines += 1;
            }
        }
    }
    eprintln!(
        "schedctl dev: global scheduler at {server}, {} cluster(s), {machines} node agent(s); logs in {}",
        topology.clusters.len(),
        logs.display()
    );
    if let (Some(first), Some(end)) = (metrics.first, metrics.next) {
        eprintln!(
            "schedctl dev: metrics at http://{first}/metrics (global scheduler), then ports {} to {} (local agents, then node agents)",
            first.port() + 1,
            end.port() - 1
        );
    }
    let target = Target {
        server: server.clone(),
        tls: admin.cloned(),
        token: pki.as_ref().map(|p| p.token.clone()),
    };
    let how = match &pki {
        Some(p) => {
            let config = dir.join("schedctl.yaml");
            crate::access::write_config(
                &config,
                ContextEntry {
                    name: "dev".into(),
                    server: Some(server.clone()),
                    tls_ca: Some(p.dir.join(certs::CA_CERT)),
                    tls_cert: Some(p.dir.join("admin.crt")),
                    tls_key: Some(p.dir.join("admin.key")),
                    token: None,
                    token_file: Some(p.dir.join("admin.token")),
                },
            )?;
            eprintln!(
                "schedctl dev: mutual TLS on every hop and tokens on the job API (CA in {}; --insecure for plaintext)",
                p.dir.display()
            );
            format!("SCHEDCTL_CONFIG={} schedctl", config.display())
        }
        None if server == crate::access::DEFAULT_SERVER => "schedctl".to_string(),
        None => format!("schedctl --server {server}"),
    };
    if let Some(addr) = http {
        // A throwaway stack's admin token: the link signs the browser in
        // (an HttpOnly cookie) and drops the token from the address bar.
        let query = pki
            .as_ref()
            .map(|p| format!("?token={}", p.token))
            .unwrap_or_default();
        eprintln!("schedctl dev: status page at http://{addr}/{query}");
    }
    eprintln!(
        "schedctl dev: try `{how} get clusters`, `{how} submit -f config/examples/jobs.yaml --wait`; Ctrl-C stops the stack"
    );

    wait_for_machines(&target, machines, stack).await?;
    if let Some(file) = &args.submit {
        crate::jobs::submit_file(&target, file).await?;
        if args.exit_when_done {
            return crate::jobs::wait_done_and_print(&target, Duration::from_secs(600)).await;
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        stack.check()?;
    }
}

/// The status page's address: `none` for no page; port 0 picks a free port
/// now (so the URL can be printed before the scheduler is up).
fn status_page_addr(arg: &str) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if arg == "none" {
        return Ok(None);
    }
    let addr: std::net::SocketAddr = arg
        .parse()
        .with_context(|| format!("--http-listen {arg:?}: not an address (IP:PORT, or none)"))?;
    if addr.port() != 0 {
        return Ok(Some(addr));
    }
    let probe = std::net::TcpListener::bind(addr)
        .with_context(|| format!("--http-listen {arg}: cannot listen"))?;
    Ok(Some(probe.local_addr()?))
}

/// Waits until the global scheduler sees `n` machines up.
async fn wait_for_machines(server: &Target, n: u32, stack: &mut Stack) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut c = crate::client::connect(server)?;
    loop {
        if let Ok(r) = c
            .list_clusters(sched_proto::pb::ListClustersRequest {})
            .await
        {
            let up: u32 = r
                .into_inner()
                .clusters
                .iter()
                .filter(|c| c.up)
                .map(|c| c.machines)
                .sum();
            if up >= n {
                eprintln!("schedctl dev: {up} machine(s) up");
                return Ok(());
            }
        }
        stack.check()?;
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the machines did not all come up within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
