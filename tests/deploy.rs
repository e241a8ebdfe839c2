//! What `deploy/` ships, run for real: the broker under the seccomp profile the operator's
//! pods use (`deploy/seccomp/coremq.json`, applied with libseccomp as runc and crun apply
//! it), which must let it serve, where the container runtimes' default profile it is made
//! from must not.

#[path = "support/broker.rs"]
mod broker;
#[path = "support/kcat.rs"]
mod kcat;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::free_port;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Starts the broker under `profile` through `deploy/tests/seccomp-exec.py` (Debian's
/// python3 with python3-seccomp, installed by tools/test-all.sh).
fn under_profile(profile: &Path, data: &Path, kafka: u16, admin: u16) -> Child {
    Command::new("/usr/bin/python3")
        .arg(deploy().join("tests/seccomp-exec.py"))
        .arg(profile)
        .arg(env!("CARGO_BIN_EXE_coremq"))
        .args(["--data-dir", data.to_str().unwrap()])
        .args(["--kafka-listener", &format!("127.0.0.1:{kafka}")])
        .args(["--admin-listener", &format!("127.0.0.1:{admin}")])
        .args(["--mqtt-listener", "none", "--mqtt-ws-listener", "none"])
        .args(["--shards", "1", "--no-pin"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn ready(admin: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", admin)) else {
        return false;
    };
    let _ = stream.write_all(b"GET /ready HTTP/1.0\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

#[test]
fn the_shipped_seccomp_profile_lets_the_broker_serve_and_the_runtime_default_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let profile = deploy().join("seccomp/coremq.json");
    let (kafka, admin) = (free_port(), free_port());
    let mut child = under_profile(&profile, &dir.path().join("allowed"), kafka, admin);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(admin) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            panic!("the broker exited under the profile ({status}): {stderr}");
        }
        assert!(Instant::now() < deadline, "not ready under the profile");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Records go through io_uring to the segment files and back.
    let bootstrap = format!("127.0.0.1:{kafka}");
    kcat::run(
        &bootstrap,
        &["-P", "-t", "sealed", "-K:"],
        "k:under seccomp\n",
    )
    .unwrap();
    let consumed = kcat::run(&bootstrap, &["-C", "-t", "sealed", "-e", "-f", "%s\n"], "").unwrap();
    assert_eq!(consumed, "under seccomp\n");
    child.kill().unwrap();
    child.wait().unwrap();

    // The same profile without its io_uring rule: the runtimes' default.
    let mut default: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&profile).unwrap()).unwrap();
    let rules = default["syscalls"].as_array_mut().unwrap();
    let before = rules.len();
    rules.retain(|rule| !rule["names"].to_string().contains("io_uring_setup"));
    assert_eq!(rules.len(), before - 1, "one rule allows io_uring");
    let default_path = dir.path().join("default.json");
    std::fs::write(&default_path, default.to_string()).unwrap();
    let child = under_profile(
        &default_path,
        &dir.path().join("refused"),
        free_port(),
        free_port(),
    );
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("io_uring is unavailable"), "{stderr}");
    assert!(stderr.contains("deploy/seccomp/coremq.json"), "{stderr}");
}
