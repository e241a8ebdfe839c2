//! The Python interpreter with the Kafka clients the end-to-end scripts use, and the
//! scripts' folder.
#![allow(dead_code)]

use std::path::PathBuf;

/// The virtual environment's interpreter that `tools/test-all.sh` creates
/// (`target/e2e-venv`, with confluent-kafka and kafka-python); `COREMQ_TEST_PYTHON` names
/// another interpreter that has them.
pub fn interpreter() -> PathBuf {
    if let Some(path) = std::env::var_os("COREMQ_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/e2e-venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run tools/test-all.sh (it installs confluent-kafka and kafka-python) \
         or set COREMQ_TEST_PYTHON",
        venv.display()
    );
    venv
}

/// The folder of the end-to-end scripts (`tests/python`).
pub fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python")
}
