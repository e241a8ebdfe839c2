//! What `deploy/` ships, run for real: the broker under the seccomp profile the operator's
//! pods use (`deploy/seccomp/coremq.json`, applied with libseccomp as runc and crun apply
//! it), which must let it serve, where the container runtimes' default profile it is made
//! from must not; and the pods of the operator's StatefulSet, run as local processes in
//! network namespaces exactly as their template says (command, environment, config file,
//! volumes, and the security context: user, groups, a read-only root, no capabilities, the
//! seccomp profile),
//! forming a cluster and rolled one by one in the operator's order under an idempotent
//! acks=all producer.

#[path = "support/broker.rs"]
mod broker;
#[path = "support/kcat.rs"]
mod kcat;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/python.rs"]
mod python;

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

const NAMESPACE: &str = "streaming";
const PODS: usize = 3;

/// The cluster whose pods run here: three voters, one shard each.
fn cluster(config: serde_json::Value) -> coremq_operator::crd::CoremqCluster {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "coremq.io/v1alpha1",
        "kind": "CoremqCluster",
        "metadata": {"name": "prod", "namespace": NAMESPACE, "uid": "3c1e"},
        "spec": {
            "brokers": PODS,
            "clusterId": "pods",
            "image": "coremq:test",
            "storage": {"size": "1Gi"},
            "shards": 1,
            "terminationGracePeriodSeconds": 30,
            "config": config,
        },
    }))
    .unwrap()
}

/// What the kubelet would give pod `ordinal`'s container from the template: its command
/// line, environment (`valueFrom` resolved, `$(VAR)` expanded as the kubelet does) and
/// the volumes it mounts (mount path to the pod's own directory or the ConfigMap's files).
struct Container {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    /// Mount path, the pod's directory mounted there, and whether read-only.
    mounts: Vec<(String, PathBuf, bool)>,
    ready_path: String,
    ready_port: u16,
    grace: Duration,
    /// The security context: user and group ids, the volumes' group (fsGroup), a read-only
    /// root filesystem, every capability dropped, no privilege escalation.
    user: (i64, i64),
    fs_group: i64,
    read_only_root: bool,
    drop_all: bool,
    no_new_privileges: bool,
    /// The Localhost seccomp profile's path under the kubelet's seccomp directory.
    seccomp: Option<String>,
}

fn container(
    rendered: &coremq_operator::render::Children,
    ordinal: usize,
    pod_dir: &Path,
) -> Container {
    let set = rendered.stateful_set.spec.as_ref().unwrap();
    let template = &set.template;
    let pod = template.spec.as_ref().unwrap();
    let main = &pod.containers[0];
    let pod_name = format!("prod-{ordinal}");
    let mut labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
    labels.insert("apps.kubernetes.io/pod-index".into(), ordinal.to_string());
    let mut env: Vec<(String, String)> = Vec::new();
    for var in main.env.as_ref().unwrap() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => {
                // $(NAME) of a variable defined before it, as the kubelet expands.
                let mut expanded = value.clone();
                for (name, earlier) in &env {
                    expanded = expanded.replace(&format!("$({name})"), earlier);
                }
                expanded
            }
            (None, Some(from)) => {
                let path = &from.field_ref.as_ref().expect("a fieldRef").field_path;
                match path.as_str() {
                    "metadata.name" => pod_name.clone(),
                    "metadata.namespace" => NAMESPACE.into(),
                    _ => {
                        let label = path
                            .strip_prefix("metadata.labels['")
                            .and_then(|rest| rest.strip_suffix("']"))
                            .unwrap_or_else(|| panic!("a fieldPath the kubelet resolves: {path}"));
                        labels[label].clone()
                    }
                }
            }
            (None, None) => String::new(),
        };
        env.push((var.name.clone(), value));
    }
    let mut argv = main.command.clone().unwrap();
    argv.extend(main.args.clone().unwrap_or_default());
    let mut mounts = Vec::new();
    for mount in main.volume_mounts.as_ref().unwrap() {
        let dir = pod_dir.join(&mount.name);
        std::fs::create_dir_all(&dir).unwrap();
        let config_map = pod
            .volumes
            .as_ref()
            .and_then(|volumes| volumes.iter().find(|volume| volume.name == mount.name))
            .and_then(|volume| volume.config_map.as_ref());
        if let Some(source) = config_map {
            assert_eq!(
                source.name,
                rendered.config_map.metadata.name.clone().unwrap()
            );
            for (file, text) in rendered.config_map.data.as_ref().unwrap() {
                std::fs::write(dir.join(file), text).unwrap();
            }
        } else {
            let claims = set.volume_claim_templates.as_ref().unwrap();
            assert!(
                claims
                    .iter()
                    .any(|claim| claim.metadata.name.as_deref() == Some(&mount.name))
            );
        }
        mounts.push((mount.mount_path.clone(), dir, mount.read_only == Some(true)));
    }
    let probe = main
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    let port = match serde_json::to_value(&probe.port).unwrap() {
        serde_json::Value::String(name) => {
            main.ports
                .as_ref()
                .unwrap()
                .iter()
                .find(|port| port.name.as_deref() == Some(name.as_str()))
                .unwrap()
                .container_port
        }
        number => number.as_i64().unwrap() as i32,
    };
    let pod_security = pod.security_context.as_ref().unwrap();
    let security = main.security_context.as_ref().unwrap();
    let dropped = security.capabilities.as_ref().and_then(|c| c.drop.clone());
    Container {
        argv,
        env,
        mounts,
        ready_path: probe.path.clone().unwrap(),
        ready_port: port as u16,
        grace: Duration::from_secs(pod.termination_grace_period_seconds.unwrap() as u64),
        user: (
            pod_security.run_as_user.unwrap(),
            pod_security.run_as_group.unwrap(),
        ),
        fs_group: pod_security.fs_group.unwrap(),
        read_only_root: security.read_only_root_filesystem == Some(true),
        drop_all: dropped.is_some_and(|drop| drop.iter().any(|c| c == "ALL")),
        no_new_privileges: security.allow_privilege_escalation == Some(false),
        seccomp: pod_security
            .seccomp_profile
            .as_ref()
            .filter(|profile| profile.type_ == "Localhost")
            .and_then(|profile| profile.localhost_profile.clone()),
    }
}

/// The pods' network: a namespace each (and one for the clients), each with a hosts file
/// naming every pod as the headless Service's DNS would; `ip netns exec` mounts
/// `/etc/netns/NAME/hosts` over `/etc/hosts`.
struct Pods {
    network: netns::Network,
    dir: PathBuf,
    bin: PathBuf,
    children: Vec<Option<Child>>,
}

impl Pods {
    fn host(ordinal: usize) -> String {
        format!("prod-{ordinal}.prod-brokers.{NAMESPACE}.svc.cluster.local")
    }

    fn new(dir: &Path) -> Pods {
        let network = netns::Network::create(PODS + 1).expect("network namespaces");
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for ordinal in 0..PODS {
            let address = network.address(ordinal);
            hosts.push_str(&format!(
                "{address} {} prod-{ordinal}\n",
                Pods::host(ordinal)
            ));
        }
        for member in 0..=PODS {
            let etc = Path::new("/etc/netns").join(network.netns(member));
            std::fs::create_dir_all(&etc).unwrap();
            std::fs::write(etc.join("hosts"), &hosts).unwrap();
        }
        // The image has `coremq` on its PATH; here it is the binary under test, which the
        // pods' unprivileged user must reach.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_coremq"), bin.join("coremq")).unwrap();
        Pods {
            network,
            dir: dir.to_path_buf(),
            bin,
            children: (0..PODS).map(|_| None).collect(),
        }
    }

    /// Starts pod `ordinal` from `rendered`: its container's command in its namespace, its
    /// volumes bind-mounted at their paths in a mount namespace of its own.
    fn start(&mut self, rendered: &coremq_operator::render::Children, ordinal: usize) -> Container {
        let pod_dir = self.dir.join(format!("prod-{ordinal}"));
        let container = container(rendered, ordinal, &pod_dir);
        // As the kubelet and the runtime would: the volumes at their paths (read-only where
        // the mount says), owned by fsGroup; the root filesystem read-only; then the
        // container's process as its user, without capabilities or privilege escalation.
        let mut script = String::from("set -e; ");
        for (index, (path, dir, read_only)) in container.mounts.iter().enumerate() {
            std::fs::create_dir_all(path).unwrap();
            let group = container.fs_group.to_string();
            let owner = format!("{}:{group}", container.user.0);
            let owned = Command::new("chown").args(["-R", &owner]).arg(dir).status();
            assert!(owned.unwrap().success());
            script.push_str(&format!("mount --bind \"${}\" {path}; ", index + 1));
            if *read_only {
                script.push_str(&format!("mount -o remount,bind,ro {path}; "));
            }
        }
        if container.read_only_root {
            script.push_str("mount -o remount,bind,ro /; ");
        }
        let mut privileges = format!(
            "setpriv --reuid {} --regid {} --groups {} ",
            container.user.0, container.user.1, container.fs_group
        );
        if container.drop_all {
            privileges.push_str("--inh-caps -all --bounding-set -all ");
        }
        if container.no_new_privileges {
            privileges.push_str("--no-new-privs ");
        }
        if let Some(profile) = &container.seccomp {
            // What the chart's DaemonSet installs as the kubelet's `coremq/coremq.json`,
            // applied as the runtime would (tests/seccomp-exec.py).
            assert_eq!(profile, "coremq/coremq.json");
            privileges.push_str(&format!(
                "/usr/bin/python3 {} {} ",
                deploy().join("tests/seccomp-exec.py").display(),
                deploy().join("seccomp/coremq.json").display()
            ));
        }
        script.push_str(&format!(
            "shift {}; exec {privileges}\"$@\"",
            container.mounts.len()
        ));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("prod-{ordinal}.log")))
            .unwrap();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.network.netns(ordinal)])
            .args([
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
                "pod",
            ])
            .args(container.mounts.iter().map(|(_, dir, _)| dir.clone()))
            .args(&container.argv)
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.bin.display()),
            )
            .envs(container.env.iter().cloned())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.children[ordinal] = Some(command.spawn().unwrap());
        container
    }

    fn log(&self, ordinal: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("prod-{ordinal}.log"))).unwrap_or_default()
    }

    fn logs(&self) -> String {
        (0..PODS)
            .map(|o| format!("--- prod-{o}\n{}", self.log(o)))
            .collect()
    }

    /// GETs `path` from pod `ordinal` on `port`: the status and the body.
    fn get(&self, ordinal: usize, port: u16, path: &str) -> Option<(u16, String)> {
        let address = self.network.address(ordinal);
        let mut stream = TcpStream::connect((address.as_str(), port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let status = answer.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, answer.split_once("\r\n\r\n")?.1.to_string()))
    }

    /// Waits until pod `ordinal` answers its readiness probe.
    fn await_ready(&mut self, ordinal: usize, container: &Container) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let probe = self.get(ordinal, container.ready_port, &container.ready_path);
            if probe.map(|(status, _)| status) == Some(200) {
                return;
            }
            if let Some(status) = self.children[ordinal].as_mut().unwrap().try_wait().unwrap() {
                panic!("prod-{ordinal} exited ({status}):\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "prod-{ordinal} not ready\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `GET /v1/cluster` from pod `ordinal`.
    fn health(&self, ordinal: usize, admin: u16) -> Option<serde_json::Value> {
        let (status, body) = self.get(ordinal, admin, "/v1/cluster")?;
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// SIGTERM to pod `ordinal`, as the kubelet stops a deleted pod; its exit status,
    /// SIGKILL after the grace period.
    fn terminate(&mut self, ordinal: usize, grace: Duration) -> std::process::ExitStatus {
        let mut child = self.children[ordinal].take().unwrap();
        // The broker is the last process of the chain `ip` -> `unshare` -> `sh` exec'd into.
        let pid = child.id();
        let broker = find_descendant(pid).unwrap_or(pid);
        Command::new("kill")
            .args(["-TERM", &broker.to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                Command::new("kill")
                    .args(["-KILL", &broker.to_string()])
                    .status()
                    .unwrap();
                panic!(
                    "prod-{ordinal} did not stop within its grace\n{}",
                    self.log(ordinal)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A client command inside the clients' namespace (pod names resolve there).
    fn client(&self, program: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.network.netns(PODS)])
            .arg(program)
            .args(args);
        command
    }
}

/// The deepest process below `pid` (one child each step): the broker under its wrappers.
fn find_descendant(pid: u32) -> Option<u32> {
    let mut current = pid;
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{current}/task/{current}/children")).ok()?;
        match children.split_whitespace().next() {
            Some(child) => current = child.parse().ok()?,
            None => return Some(current),
        }
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            if let Some(broker) = find_descendant(child.id()) {
                let _ = Command::new("kill")
                    .args(["-KILL", &broker.to_string()])
                    .status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for member in 0..=PODS {
            let _ =
                std::fs::remove_dir_all(Path::new("/etc/netns").join(self.network.netns(member)));
        }
    }
}

#[test]
fn the_operators_pods_form_a_cluster_and_roll_in_its_order_without_losing_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut pods = Pods::new(dir.path());
    let before = coremq_operator::render::render(&cluster(serde_json::json!({})));
    let containers: Vec<Container> = (0..PODS)
        .map(|ordinal| pods.start(&before, ordinal))
        .collect();
    for (ordinal, container) in containers.iter().enumerate() {
        pods.await_ready(ordinal, container);
    }
    let admin = coremq_operator::render::ADMIN_PORT as u16;
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        let health = pods.health(0, admin);
        let formed = health.as_ref().is_some_and(|health| {
            health["controller_id"].is_i64()
                && health["brokers"].as_array().is_some_and(|brokers| {
                    brokers.len() == PODS && brokers.iter().all(|b| b["fenced"] == false)
                })
        });
        if formed {
            break health.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no cluster of three: {health:?}\n{}",
            pods.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    // The operator reads this answer (its `brokers::Health`): the broker's JSON is its contract.
    let read: coremq_operator::brokers::Health = serde_json::from_value(health.clone())
        .unwrap_or_else(|error| panic!("the operator cannot read /v1/cluster ({error}): {health}"));
    assert!(read.all_live(PODS as i32), "{read:?}");
    assert_eq!(
        read.controller_id,
        health["controller_id"].as_i64().map(|id| id as i32)
    );
    assert!(
        read.partitions > 0 && read.replication_factor_max >= 1,
        "{read:?}"
    );

    // Each broker runs as the template's security context says.
    for ordinal in 0..PODS {
        let pid = find_descendant(pods.children[ordinal].as_ref().unwrap().id()).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            let line = status.lines().find(|line| line.starts_with(name)).unwrap();
            line.split_whitespace().nth(1).unwrap().to_string()
        };
        assert_eq!(field("Uid:"), "10001", "prod-{ordinal}:\n{status}");
        assert_eq!(field("Gid:"), "10001", "prod-{ordinal}:\n{status}");
        assert_eq!(field("CapEff:"), "0000000000000000", "prod-{ordinal}");
        assert_eq!(field("NoNewPrivs:"), "1", "prod-{ordinal}");
        assert_eq!(field("Seccomp:"), "2", "prod-{ordinal}: no seccomp filter");
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let root = mounts
            .lines()
            .find(|line| line.split(' ').nth(4) == Some("/"))
            .unwrap();
        assert!(root.split(' ').nth(5).unwrap().starts_with("ro"), "{root}");
    }

    let bootstrap: String = (0..PODS)
        .map(|o| format!("{}:9092", Pods::host(o)))
        .collect::<Vec<_>>()
        .join(",");
    let script = python::scripts().join("replicated.py");
    let interpreter = python::interpreter();
    let run = |pods: &Pods, args: &[&str]| {
        let mut full = vec![script.to_str().unwrap()];
        full.extend(args);
        pods.client(&interpreter, &full)
            .current_dir(python::scripts())
            .output()
            .unwrap()
    };
    let created = run(&pods, &[&bootstrap, "create", "rolled", "3"]);
    assert!(
        created.status.success(),
        "{}{}",
        String::from_utf8_lossy(&created.stderr),
        pods.logs()
    );
    let acked = dir.path().join("acked.json");
    let stop = dir.path().join("stop");
    let until = format!("until:{}", stop.display());
    let full = [
        script.to_str().unwrap(),
        &bootstrap,
        "produce",
        "rolled",
        &until,
        acked.to_str().unwrap(),
    ];
    let producer = pods
        .client(&interpreter, &full)
        .current_dir(python::scripts())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));

    // The operator's order: highest ordinal first, the controller's leader last; each pod
    // stopped (SIGTERM, within its grace), started from the new template, and the next only
    // once it is ready and nothing is under-replicated.
    let leader = health["controller_id"].as_i64().unwrap() as usize;
    let mut order: Vec<usize> = (0..PODS).rev().filter(|&o| o != leader).collect();
    order.push(leader);
    let after = coremq_operator::render::render(&cluster(
        serde_json::json!({"connections_max_idle_ms": 300000}),
    ));
    let hash = |children: &coremq_operator::render::Children| {
        children
            .stateful_set
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[coremq_operator::render::CONFIG_HASH_ANNOTATION]
            .clone()
    };
    assert_ne!(hash(&before), hash(&after), "the new template differs");
    for &ordinal in &order {
        let status = pods.terminate(ordinal, containers[ordinal].grace);
        assert!(
            status.success(),
            "prod-{ordinal} stopped with {status}\n{}",
            pods.log(ordinal)
        );
        let container = pods.start(&after, ordinal);
        pods.await_ready(ordinal, &container);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let health = pods.health(ordinal, admin);
            let whole = health.as_ref().is_some_and(|h| {
                h["under_replicated_partitions"] == 0
                    && h["brokers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|b| b["fenced"] == false)
            });
            if whole {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prod-{ordinal} back, cluster not whole: {health:?}\n{}",
                pods.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let file =
            std::fs::read_to_string(pods.dir.join(format!("prod-{ordinal}/config/coremq.toml")))
                .unwrap();
        assert!(file.contains("connections_max_idle_ms = 300000"), "{file}");
    }
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&stop, "").unwrap();
    let produced = producer.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&produced.stdout).into_owned();
    assert!(
        produced.status.success(),
        "the producer failed: {printed}{}\n{}",
        String::from_utf8_lossy(&produced.stderr),
        pods.logs()
    );
    println!("{printed}");
    let verified = run(
        &pods,
        &[&bootstrap, "verify", "rolled", acked.to_str().unwrap()],
    );
    assert!(
        verified.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr),
        pods.logs()
    );
    println!("{}", String::from_utf8_lossy(&verified.stdout));
}
