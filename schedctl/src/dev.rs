//! `schedctl dev`: the whole stack on loopback, for trying it out.
//!
//! Starts the global scheduler (on `--listen`, by default where schedctl
//! looks for it), one local agent per cluster of the topology, and real
//! node agents: up to `--machines-per-class` per machine class (a laptop
//! cannot host hundreds), each declaring its class's capacity and labels.
//! Without `--etcd` every component keeps its state in memory. Logs and
//! task directories go under `--dir`. Ctrl-C stops everything.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sched_core::resources::{format_bytes, format_cpu, format_gpu};
use sched_core::topology::Topology;

#[derive(Debug, clap::Args)]
pub struct Args {
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
}

/// The sibling binary `name` (next to this schedctl).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find schedctl's own path")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found next to schedctl: build the workspace (`cargo build --release`)",
            path.display()
        );
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Stack {
    children: Vec<(String, Child)>,
}

impl Stack {
    fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        logs: &Path,
    ) -> anyhow::Result<()> {
        let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// SIGTERM to everything, newest first; SIGKILL after 10 s.
    fn stop(&mut self) {
        for (_, c) in self.children.iter().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
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
    }

    fn check(&mut self) -> anyhow::Result<()> {
        for (name, c) in &mut self.children {
            if let Some(status) = c.try_wait()? {
                bail!("{name} exited ({status}); see its log");
            }
        }
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until something accepts connections at `addr`.
fn wait_listening(addr: &str, stack: &mut Stack) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        stack.check()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr} after 30 s")
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let topology = Topology::from_yaml(&super::read(&args.topology)?)
        .with_context(|| format!("invalid topology {}", args.topology.display()))?;
    let global = sibling("global-scheduler")?;
    let agent_bin = sibling("local-agent")?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("sched-dev-{}", std::process::id())));
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut stack = Stack {
        children: Vec::new(),
    };
    let etcd: Vec<String> = args
        .etcd
        .iter()
        .flat_map(|e| ["--etcd".to_string(), e.clone()])
        .collect();

    let listen = match args.listen.strip_suffix(":0") {
        Some(host) => format!("{host}:{}", free_port()?),
        None => args.listen.clone(),
    };
    let mut g = vec![
        "--listen".to_string(),
        listen.clone(),
        "--topology".to_string(),
        args.topology.display().to_string(),
    ];
    g.extend(etcd.iter().cloned());
    stack.spawn("global-scheduler", &global, &g, &logs)?;
    wait_listening(&listen, &mut stack)?;
    let server = format!("http://{listen}");

    let mut machines = 0;
    for c in &topology.clusters {
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let mut a = vec![
            "serve".to_string(),
            "--cluster".to_string(),
            c.name.clone(),
            "--location".to_string(),
            topology.locality.name(c.location).to_string(),
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--global".to_string(),
            server.clone(),
        ];
        a.extend(etcd.iter().cloned());
        stack.spawn(&format!("agent-{}", c.name), &agent_bin, &a, &logs)?;
        wait_listening(&format!("127.0.0.1:{port}"), &mut stack)?;
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
                if r.gpu.0 > 0 {
                    n.extend(["--gpu".to_string(), format_gpu(r.gpu)]);
                }
                if !class.labels.is_empty() {
                    let l: Vec<String> = class
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    n.extend(["--labels".to_string(), l.join(",")]);
                }
                stack.spawn(&format!("node-{name}"), &agent_bin, &n, &logs)?;
                machines += 1;
            }
        }
    }
    eprintln!(
        "schedctl dev: global scheduler at {server}, {} cluster(s), {machines} node agent(s); logs in {}",
        topology.clusters.len(),
        logs.display()
    );
    eprintln!("schedctl dev: try `schedctl get clusters`, `schedctl submit -f config/examples/jobs.yaml --wait`; Ctrl-C stops the stack");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        wait_for_machines(&server, machines).await?;
        if let Some(file) = &args.submit {
            crate::jobs::submit_file(&server, file).await?;
            if args.exit_when_done {
                return crate::jobs::wait_done_and_print(&server, Duration::from_secs(600)).await;
            }
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = term.recv() => return Ok(()),
                _ = tick.tick() => stack.check()?,
            }
        }
    });
    // Close our own connections first: the scheduler waits for open
    // connections when it shuts down.
    drop(rt);
    eprintln!("schedctl dev: stopping");
    stack.stop();
    result
}

/// Waits until the global scheduler sees `n` machines up.
async fn wait_for_machines(server: &str, n: u32) -> anyhow::Result<()> {
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
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the machines did not all come up within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
