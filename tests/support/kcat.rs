//! Runs Debian's `kcat` against a broker: arguments, standard input, and what it printed.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `kcat -b bootstrap args...` with `input` on its standard input: its standard output
/// when it succeeds, its standard error when it fails.
pub fn run(bootstrap: &str, args: &[&str], input: &str) -> Result<String, String> {
    let mut child = Command::new("kcat")
        .args(["-b", bootstrap])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is installed (tools/test-all.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}
