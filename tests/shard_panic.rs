//! What a panic on a shard does: the process logs it and aborts (docs/design.md, "A panic
//! stops the process"), so a supervisor restarts it, instead of running on with a shard whose
//! partitions nobody serves. The `coremq` binary installs this with
//! `coremq_engine::abort_on_panic`; here a child process of this test installs the same hook,
//! starts an engine and panics inside a call on a shard, and the parent checks that the child
//! died of SIGABRT with the panic in its log, and did not run on.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use coremq_engine::{Engine, EngineConfig};
use futures_lite::future::block_on;

const CHILD: &str = "COREMQ_SHARD_PANIC_CHILD";

#[test]
fn a_panic_on_a_shard_aborts_the_process() {
    if let Some(dir) = std::env::var_os(CHILD) {
        panic_on_a_shard(dir.into());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_panic_on_a_shard_aborts_the_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, dir.path())
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGABRT),
        "the child should abort: {:?}\n{stderr}",
        output.status
    );
    assert!(
        stderr.contains("thread coremq-shard-1")
            && stderr.contains("injected shard failure")
            && stderr.contains("aborting the process"),
        "{stderr}"
    );
    assert!(!stderr.contains("still running"), "{stderr}");
}

fn panic_on_a_shard(dir: std::path::PathBuf) {
    let _ = env_logger::builder().is_test(false).try_init();
    coremq_engine::abort_on_panic();
    let engine = Engine::start(EngineConfig {
        shards: 2,
        pin_shards: false,
        ..EngineConfig::new(dir)
    })
    .unwrap();
    let handle = engine.handle();
    let _ = block_on(handle.on_shard(1, |_| async {
        if std::env::var_os(CHILD).is_some() {
            panic!("injected shard failure");
        }
        Ok(())
    }));
    std::thread::sleep(Duration::from_secs(10));
    eprintln!("still running after the panic");
}
