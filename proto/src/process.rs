//! How our processes start, become ready and stop.
//!
//! - [`main`]: the body of a service binary's `main`: tracing to stderr,
//!   the runtime, and a [`CancellationToken`] that SIGTERM or SIGINT
//!   cancels, then one `error: ...` line and exit code 1 on failure.
//!   `global-scheduler` and `local-agent` use it.
//! - [`Signals`]: SIGTERM and SIGINT as one stream, for loops that wait.
//! - [`listen`]: `--listen ADDR`, or `--listen stdin`: the listening socket
//!   a parent bound and handed over as standard input (inetd's "wait"
//!   style), which is how `schedctl dev` keeps its children on its own
//!   ports.
//! - [`incoming`]: a listener's connections for a tonic server, with
//!   TCP_NODELAY set on each.
//! - [`serving`]: a server's answer to the standard gRPC health check.
//! - [`terminate`]: SIGTERM to a child process, through `nix`.

use std::fmt::Display;
use std::future::Future;
use std::io::{self, IsTerminal};
use std::os::fd::AsFd;
use std::process::{Child, ExitCode};
use std::time::Duration;

use nix::sys::signal::kill;
pub use nix::sys::signal::Signal;
use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The `--listen` value that means "the listening socket is standard input".
pub const STDIN: &str = "stdin";

/// glibc's malloc serves a request above its mmap threshold (128 KiB at
/// first) with a mapping of its own, unmapped when freed; but each time
/// such a block is freed it raises the threshold to that block's size (up
/// to 32 MiB), after which a service's large buffers (a batch of 10,000
/// assignments, a page of reports) come from the heap and fragment it. Over
/// a million-task soak a local agent's RSS grew 1.4x while every per-task
/// map emptied; with the threshold pinned it stays flat. Setting it turns
/// the raising off (mallopt(3), M_MMAP_THRESHOLD).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn pin_mmap_threshold() {
    // SAFETY: mallopt only changes a tuning parameter of the allocator; it
    // is called before the runtime starts, while this is the only thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn pin_mmap_threshold() {}

/// How often free heap memory is handed back to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// glibc keeps what a process frees for its next allocations; it gives
/// back only the free memory at the very top of each heap, so the pages of
/// a burst (a pass over 10,000 tasks, a page of reports) stay resident
/// once anything lives above them. Over a million-task soak the global
/// scheduler's live heap stayed flat (heaptrack: 0.3 MiB more at the end
/// than after the first 100,000 tasks) while its RSS grew from 42 to 58
/// MiB. `malloc_trim(0)` hands back every free page of every arena
/// (malloc_trim(3)); a thread of its own does so every [`TRIM_EVERY`],
/// which takes about a millisecond.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn start_trimming() {
    #[allow(unsafe_code)]
    fn trim() {
        // SAFETY: malloc_trim only releases free memory the allocator
        // holds; it takes the arenas' locks itself and is safe to call
        // from any thread at any time.
        unsafe {
            libc::malloc_trim(0);
        }
    }
    let started = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| loop {
            std::thread::sleep(TRIM_EVERY);
            trim();
        });
    if let Err(e) = started {
        tracing::warn!(cause = %e, "cannot start the thread that returns free memory; RSS keeps its peaks");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn start_trimming() {}

/// Runs `work` on a multi-threaded runtime with tracing to stderr (level
/// from `RUST_LOG`, default `info`). The token passed to `work` is
/// cancelled on the first SIGTERM or SIGINT; `work` is expected to shut
/// down then and return. An error is printed as one `error: ...` line
/// (`{:#}`, so an `anyhow` chain stays on that line) and exits with 1.
pub fn main<F, Fut, E>(work: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    pin_mmap_threshold();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal, none in a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    start_trimming();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(until_signal(work)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `work` with a token that the first signal cancels. The handlers are
/// installed before `work` starts, so an early SIGTERM (a parent stopping
/// a child it just started) is a clean shutdown, not the default death.
async fn until_signal<F, Fut, E>(work: F) -> Result<(), E>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut signals = match Signals::new() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(cause = %e, "cannot catch SIGTERM/SIGINT: they will kill the process");
            None
        }
    };
    let shutdown = CancellationToken::new();
    let work = work(shutdown.clone());
    tokio::pin!(work);
    if let Some(signals) = &mut signals {
        tokio::select! {
            result = &mut work => return result,
            () = signals.recv() => {}
        }
        tracing::info!("signal received: shutting down");
        shutdown.cancel();
    }
    work.await
}

/// SIGTERM and SIGINT. Once created, they no longer kill the process: they
/// are delivered to [`Signals::recv`].
pub struct Signals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must be called inside a tokio runtime.
    pub fn new() -> io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// The connections `listener` accepts, as a tonic server takes them, each
/// with TCP_NODELAY set. tonic ignores its builder's `tcp_nodelay` for
/// `serve_with_incoming*`, and without it a response that does not fill
/// a segment (anything past ~250 bytes: headers, message, then trailers)
/// waits for the client's delayed ACK (Nagle's algorithm, RFC 896): about
/// 40 ms per call on a reused connection instead of well under one.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// A listener on `addr`, or with `addr` = [`STDIN`], the listening TCP
/// socket this process was given as standard input. Standard input is
/// then replaced by `/dev/null`, so that processes started later do not
/// inherit the socket.
pub async fn listen(addr: &str) -> io::Result<tokio::net::TcpListener> {
    if addr != STDIN {
        return tokio::net::TcpListener::bind(addr).await;
    }
    let fd = io::stdin().as_fd().try_clone_to_owned()?;
    let listening = getsockopt(&fd, sockopt::AcceptConn).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("standard input is not a socket ({e})"),
        )
    })?;
    if !listening {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "standard input is a socket, but not a listening one",
        ));
    }
    let listener = std::net::TcpListener::from(fd);
    // Fails for a socket that is not TCP over IP (a Unix socket, say).
    listener.local_addr().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("standard input is not a TCP socket ({e})"),
        )
    })?;
    nix::unistd::dup2_stdin(std::fs::File::open("/dev/null")?)?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Whether the server at `url` reports `service` (e.g.
/// `pb::scheduler_service_server::SERVICE_NAME`; `""` for the server as a whole)
/// as SERVING on the standard `grpc.health.v1.Health` service. An error
/// is a server that could not be asked (not reachable, no answer within
/// `timeout`, no such service).
pub async fn serving(url: &str, service: &str, timeout: Duration) -> Result<bool, tonic::Status> {
    serving_tls(url, service, timeout, None).await
}

/// As [`serving`], over mutual TLS when `tls` is given.
pub async fn serving_tls(
    url: &str,
    service: &str,
    timeout: Duration,
    tls: Option<&sched_security::Tls>,
) -> Result<bool, tonic::Status> {
    let endpoint = sched_security::tls::endpoint(url, tls)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let reply = HealthClient::new(endpoint.connect_lazy())
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await?;
    Ok(reply.into_inner().status == ServingStatus::Serving as i32)
}

/// Asks `child` to stop (SIGTERM). Call it only before the child has been
/// waited for: until then its process id stays reserved (at worst as a
/// zombie), so the signal cannot reach another process that reused it.
pub fn terminate(child: &Child) -> io::Result<()> {
    let pid = i32::try_from(child.id())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "process id out of range"))?;
    kill(Pid::from_raw(pid), Signal::SIGTERM).map_err(io::Error::from)
}

/// Sends `signal` to process `pid`, or to its whole process group when
/// `group` (the group a process leads has its pid as id). For processes this
/// one did not spawn (a task adopted after a restart, a test's watchdog);
/// the caller knows the pid is still the one it means.
pub fn signal_pid(pid: u32, signal: Signal, group: bool) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "process id out of range"))?;
    let pid = Pid::from_raw(pid);
    let r = if group {
        nix::sys::signal::killpg(pid, signal)
    } else {
        kill(pid, signal)
    };
    r.map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn terminate_stops_a_child() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        terminate(&child).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
    }

    #[tokio::test]
    async fn a_plain_address_is_bound() {
        let l = listen("127.0.0.1:0").await.unwrap();
        assert_ne!(l.local_addr().unwrap().port(), 0);
    }

    /// Set in the child that [`stdin_listener_serves`] starts.
    const CHILD: &str = "SCHED_PROCESS_TEST_CHILD";

    /// `--listen stdin` end to end: this test starts its own binary, running
    /// only itself, with a bound socket as standard input; the child serves
    /// one connection on it, which the parent makes to the address it bound.
    #[test]
    fn stdin_listener_serves() {
        if std::env::var_os(CHILD).is_some() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use tokio::io::AsyncWriteExt;
                let listener = listen(STDIN).await.unwrap();
                // Standard input is /dev/null now, not the socket.
                assert!(getsockopt(&io::stdin(), sockopt::AcceptConn).is_err());
                let (mut s, _) = listener.accept().await.unwrap();
                s.write_all(b"served").await.unwrap();
            });
            return;
        }
        let parent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = parent.local_addr().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "process::tests::stdin_listener_serves",
                "--exact",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(parent)))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "served");
        assert!(child.wait().unwrap().success());
    }

    #[tokio::test]
    async fn stdin_that_is_not_a_socket_is_refused() {
        // The test harness's stdin is a terminal, a pipe or /dev/null.
        let e = listen(STDIN).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }

    #[tokio::test]
    async fn nothing_listening_is_an_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        assert!(serving(&url, "", Duration::from_secs(1)).await.is_err());
    }
}
