//! An outside client: Python modules generated from the proto files with
//! stock tools, driving a real scheduler (tests/python/outside_client.py
//! says what it checks). Fails, never skips, when Python's gRPC packages
//! are missing (.ci/run installs them).
//!
//! The generator: `python3 -m grpc_tools.protoc` (Debian's
//! python3-grpc-tools). Debian 12's is 1.14, whose bundled protoc predates
//! proto3 `optional` fields, which our proto uses; when it refuses the
//! files, the test generates the same modules with Debian's protoc (3.21)
//! and gRPC's own Python plugin (`grpc_python_plugin`, from
//! protobuf-compiler-grpc), and says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use sched_tests::{repo, schedctl_command, start_etcd, Scheduler};

/// The Python to run: `$SCHED_TEST_PYTHON`, else the first of `python3` and
/// `/usr/bin/python3` that has grpc (a pyenv `python3` first on the PATH may
/// not see Debian's packages).
fn python() -> String {
    if let Ok(p) = std::env::var("SCHED_TEST_PYTHON") {
        return p;
    }
    for p in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(p)
            .args(["-c", "import grpc, grpc_tools"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return p.to_string();
        }
    }
    panic!(
        "no python3 with grpc and grpc_tools: apt-get install -y python3-grpcio python3-grpc-tools \
         (or set SCHED_TEST_PYTHON)"
    );
}

fn run(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    out
}

/// Generates the Python modules of the public proto into `dir`.
fn generate(python: &str, dir: &Path) {
    let protos = repo().join("proto/proto");
    let file = "clustersched/v1/scheduler.proto";
    let out = run(
        Command::new(python)
            .args(["-m", "grpc_tools.protoc", "-I"])
            .arg(&protos)
            .arg(format!("--python_out={}", dir.display()))
            .arg(format!("--grpc_python_out={}", dir.display()))
            .arg(file),
        "grpc_tools.protoc",
    );
    if out.status.success() {
        return;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'optional'"),
        "grpc_tools.protoc failed: {stderr}"
    );
    eprintln!(
        "grpc_tools' protoc is too old for proto3 optional; using protoc + grpc_python_plugin"
    );
    let plugin = which("grpc_python_plugin").expect(
        "grpc_python_plugin missing: apt-get install -y protobuf-compiler protobuf-compiler-grpc",
    );
    // Debian's protoc finds google/protobuf/*.proto (the API's Timestamp
    // and Duration) only with libprotobuf-dev; grpc_tools, which is here
    // (it ran above), bundles them.
    let bundled = run(
        Command::new(python).args([
            "-c",
            "import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), '_proto'))",
        ]),
        "locating grpc_tools' bundled protos",
    );
    let bundled = PathBuf::from(String::from_utf8_lossy(&bundled.stdout).trim());
    assert!(
        bundled.join("google/protobuf/timestamp.proto").is_file(),
        "grpc_tools bundles no google/protobuf/timestamp.proto under {}",
        bundled.display()
    );
    let out = run(
        Command::new("protoc")
            .arg("-I")
            .arg(&protos)
            .arg("-I")
            .arg(&bundled)
            .arg(format!(
                "--plugin=protoc-gen-grpc_python={}",
                plugin.display()
            ))
            .arg(format!("--python_out={}", dir.display()))
            .arg(format!("--grpc_python_out={}", dir.display()))
            .arg(file),
        "protoc",
    );
    assert!(
        out.status.success(),
        "protoc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Jobs the client submits and pages through: the 100,000 (a
/// 4 MiB ListJobs answer held about that many before paging).
const JOBS: u32 = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn a_generated_python_client_submits_watches_and_pages() {
    let python = python();
    let generated = tempfile::tempdir().unwrap();
    generate(&python, generated.path());
    // Python packages need no __init__.py (namespace packages), but a
    // directory named like a stdlib module would shadow it: there is none.
    assert!(generated
        .path()
        .join("clustersched/v1/scheduler_pb2.py")
        .exists());

    let etcd = start_etcd();
    let scheduler = Scheduler::start(&etcd.url(), &[]).await;
    let target = scheduler.url();
    let target = target
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let mut cmd = Command::new(&python);
    cmd.arg(repo().join("tests/python/outside_client.py"))
        .arg(generated.path())
        .arg(target)
        .arg(JOBS.to_string());
    // In the TLS mode, the harness's user certificate.
    for (k, v) in schedctl_command().get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let out = tokio::task::spawn_blocking(move || run(&mut cmd, "the Python client"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("outside client: ok"),
        "the Python client failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");
}
