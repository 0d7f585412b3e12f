//! A real etcd for tests and benchmarks: started on free loopback ports with
//! its own data directory, stopped (and the directory removed) on drop.
//!
//! Tests that need etcd are marked `#[ignore = "needs etcd"]`, so a plain
//! `cargo test` lists them as ignored instead of passing them unrun, and
//! start it with [`start_etcd`], which fails the test, saying how to
//! install etcd, when it is missing: `cargo test -- --include-ignored` (the
//! run CI needs) never passes such a test silently.
//!
//! The binary is `$SCHED_ETCD_BIN` if set, else `etcd` on the `PATH`.

use std::ffi::OsString;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// A running `etcd` child process.
pub struct EtcdServer {
    child: Guarded,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
}

/// Names the etcd binary to run instead of `etcd` on the `PATH`.
pub const ETCD_BIN_VAR: &str = "SCHED_ETCD_BIN";

/// How to get etcd, for the message of a test that cannot start it.
pub const INSTALL_ETCD: &str = "install it with `apt-get install -y etcd-server etcd-client` \
    (or set SCHED_ETCD_BIN to an etcd binary). Tests that need etcd are \
    #[ignore = \"needs etcd\"]: plain `cargo test` skips them and \
    `cargo test -- --include-ignored` runs them";

/// The etcd binary: `$SCHED_ETCD_BIN`, else `etcd` (looked up on the `PATH`).
pub fn etcd_bin() -> OsString {
    std::env::var_os(ETCD_BIN_VAR).unwrap_or_else(|| "etcd".into())
}

/// Whether the etcd binary runs.
pub fn etcd_available() -> bool {
    Command::new(etcd_bin())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A port the OS says is free right now.
pub fn free_port() -> u16 {
    // Binding port 0 and dropping the listener leaves a small race with
    // other processes; tests retry the start if the port is taken.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// Starts etcd for a test that needs it, or fails the test saying how to
/// install it ([`INSTALL_ETCD`]).
pub fn start_etcd() -> EtcdServer {
    match EtcdServer::start() {
        Ok(s) => s,
        Err(e) => panic!("cannot start etcd: {e}"),
    }
}

impl EtcdServer {
    /// Starts etcd and waits until it reports itself healthy. A missing
    /// binary is a `NotFound` error whose message says how to install it.
    pub fn start() -> std::io::Result<EtcdServer> {
        if !etcd_available() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "etcd is not installed ({:?} does not run): {INSTALL_ETCD}",
                    etcd_bin()
                ),
            ));
        }
        let dir = tempfile::Builder::new().prefix("sched-etcd").tempdir()?;
        let client_port = free_port();
        let peer_port = free_port();
        let mut child = spawn(dir.path(), client_port, peer_port)?;
        if let Err(e) = wait_ready(client_port, &mut child.child) {
            child.kill();
            return Err(e);
        }
        Ok(EtcdServer {
            child,
            client_port,
            peer_port,
            dir,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// etcd's own pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.program_pid()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills etcd (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        self.child = spawn(self.dir.path(), self.client_port, self.peer_port)?;
        wait_ready(self.client_port, &mut self.child.child)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(dir: &Path, client: u16, peer: u16) -> std::io::Result<Guarded> {
    let data: PathBuf = dir.join("data");
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = Command::new(etcd_bin());
    cmd.args(["--logger=zap", "--log-level=error", "--name=default"])
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=default={peer_url}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Guarded::spawn(cmd)
}

fn wait_ready(port: u16, child: &mut Child) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Err(std::io::Error::other(format!("etcd exited: {status}")));
        }
        if healthy(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(std::io::Error::other("etcd was not healthy within 20 s"))
}

/// etcd's `/health` endpoint answers `{"health":"true"}` once the member has
/// a leader and can serve requests.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let request =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if conn.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    conn.read_to_string(&mut body).ok();
    body.contains("\"health\":\"true\"")
}

/// A child process that cannot outlive the test that started it, even when
/// the test panics or is killed: it runs under a small `sh` watchdog in a
/// process group of its own, and the watchdog kills it once our process is
/// gone. `kill` sends SIGKILL to the whole group, as `kill -9` would.
pub struct Guarded {
    child: Child,
}

impl Guarded {
    /// Starts `cmd` (its program, arguments, environment, working directory
    /// and stdio are kept) under the watchdog.
    pub fn spawn(cmd: Command) -> std::io::Result<Guarded> {
        let name = Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Guarded::spawn_named(cmd, &name)
    }

    /// [`Guarded::spawn`], naming the program's log: with
    /// `SCHED_TEST_LOGS=DIR` its output is appended to `DIR/<name>.log`
    /// (restarts append to the same file); with `SCHED_TEST_VERBOSE` set it
    /// goes to the test's own output; otherwise nowhere.
    pub fn spawn_named(cmd: Command, name: &str) -> std::io::Result<Guarded> {
        let mut wrapper = Command::new("sh");
        wrapper
            .arg("-c")
            .arg(
                // exec the program in a subshell so its pid is $!; poll the
                // test process (and the program) every 200 ms.
                r#"parent=$1; shift; "$@" & pid=$!
                   trap 'kill -TERM $pid 2>/dev/null' TERM
                   while kill -0 "$parent" 2>/dev/null && kill -0 $pid 2>/dev/null; do sleep 0.2; done
                   kill -KILL $pid 2>/dev/null; wait $pid"#,
            )
            .arg("sh")
            .arg(std::process::id().to_string())
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .process_group(0);
        if let Some(dir) = cmd.get_current_dir() {
            wrapper.current_dir(dir);
        }
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapper.env(k, v),
                None => wrapper.env_remove(k),
            };
        }
        // Command keeps stdio private; callers of this helper want the
        // program's output in the test log, or nowhere.
        if let Some(dir) = std::env::var_os("SCHED_TEST_LOGS") {
            std::fs::create_dir_all(&dir)?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(Path::new(&dir).join(format!("{name}.log")))?;
            wrapper.stdout(log.try_clone()?).stderr(log);
        } else if std::env::var_os("SCHED_TEST_VERBOSE").is_none() {
            wrapper.stdout(Stdio::null()).stderr(Stdio::null());
        }
        Ok(Guarded {
            child: wrapper.spawn()?,
        })
    }

    /// The watchdog's pid, which is also the process group id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The program's own pid (the watchdog's child), once it has started.
    pub fn program_pid(&self) -> Option<u32> {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            // The watchdog also runs `sleep` between checks; the program is
            // the child that is not `sleep`.
            .find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() != "sleep")
            })
    }

    /// SIGKILL to the program and its watchdog; waits for the watchdog.
    pub fn kill(&mut self) {
        // The watchdog leads a process group of its own (its pid is the
        // group's id), and it has not been waited for, so the id is still
        // ours. Gone already is fine.
        let group = Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
        self.child.wait().ok();
    }

    /// SIGTERM to the program (through the watchdog), without waiting.
    pub fn terminate(&mut self) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
    }

    /// Whether the program has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits for the program to exit.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}
