//! The workspace's crates depend on each other in one direction only:
//! runtime <- engine <- replication <- net <- the `coremq` binary and the tools; the Kubernetes
//! operator stands apart (it uses none of them; the binary's tests check it against the
//! broker's settings). A crate may use any
//! crate below it, never one beside or above it. Read from `cargo metadata`, so a new
//! dependency in any Cargo.toml that points the wrong way fails here. The executor (glommio)
//! is named only by the runtime, the engine (its file I/O) and the tools (raw-disk baselines,
//! client threads): the replication and network layers take tasks, timers and sockets from
//! the runtime.

use std::process::Command;

/// Each workspace crate and its layer, lowest first.
const LAYERS: &[(&str, u32)] = &[
    ("coremq-operator", 0),
    ("coremq-runtime", 0),
    ("coremq-engine", 1),
    ("coremq-replication", 2),
    ("coremq-net", 3),
    ("coremq", 4),
    ("coremq-tools", 4),
];

/// The crates that may depend on the executor directly.
const EXECUTOR_USERS: &[&str] = &["coremq-runtime", "coremq-engine", "coremq-tools"];

fn layer(name: &str) -> Option<u32> {
    LAYERS
        .iter()
        .find(|(crate_name, _)| *crate_name == name)
        .map(|(_, layer)| *layer)
}

#[test]
fn dependencies_point_down_the_layers() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let mut seen = Vec::new();
    let mut wrong = Vec::new();
    for package in packages {
        let name = package["name"].as_str().unwrap();
        let layer_of_package =
            layer(name).unwrap_or_else(|| panic!("workspace crate {name} has no layer in LAYERS"));
        seen.push(name.to_string());
        for dependency in package["dependencies"].as_array().unwrap() {
            let dependency = dependency["name"].as_str().unwrap();
            if dependency == "glommio-ng" && !EXECUTOR_USERS.contains(&name) {
                wrong.push(format!(
                    "{name} -> {dependency} (take it from coremq-runtime)"
                ));
            }
            if let Some(below) = layer(dependency)
                && below >= layer_of_package
            {
                wrong.push(format!("{name} -> {dependency}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies that point up or sideways: {wrong:?}"
    );
    for (name, _) in LAYERS {
        assert!(
            seen.iter().any(|seen| seen == name),
            "{name} is not in the workspace"
        );
    }
}
