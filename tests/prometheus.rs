//! A real Prometheus (Debian's `prometheus`, installed by tools/test-all.sh) scrapes a
//! running broker under Kafka and MQTT traffic, with the alert rules of
//! `deploy/prometheus/` loaded; every query of the Grafana dashboard
//! (`deploy/grafana/coremq.json`) then returns data, every metric the alert rules read is
//! exported, and the rules are valid, load healthy and pass their unit tests.

#[path = "support/broker.rs"]
mod broker;
#[path = "support/kcat.rs"]
mod kcat;
#[path = "support/mosquitto.rs"]
mod mosquitto;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::{Broker, free_port};
use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// GETs `path` (already URL-encoded) from Prometheus: its JSON answer.
fn api(port: u16, path: &str) -> Option<Value> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    serde_json::from_str(answer.split_once("\r\n\r\n")?.1).ok()
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Prometheus' answer to an instant query.
fn query(port: u16, expr: &str) -> Value {
    api(port, &format!("/api/v1/query?query={}", encode(expr)))
        .unwrap_or_else(|| panic!("Prometheus answers {expr}"))
}

/// The dashboard's queries, with Grafana's variables as a user looking at every broker
/// would have them.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy().join("grafana/coremq.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            queries.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    queries
}

/// The metric names (`coremq_...`) an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("coremq_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_scrapes_the_broker_and_every_dashboard_and_alert_query_has_data() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        &dir.path().join("data"),
        &["--group-initial-rebalance-delay-ms", "0"],
    );

    // The rules are valid and their unit tests pass.
    let rules = deploy().join("prometheus/coremq-alerts.yaml");
    let checked = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output();
    let checked = checked.expect("promtool (Debian's prometheus package) runs");
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let tested = Command::new("promtool")
        .args(["test", "rules", "coremq-alerts-test.yaml"])
        .current_dir(deploy().join("prometheus"))
        .output()
        .unwrap();
    assert!(
        tested.status.success(),
        "{}{}",
        String::from_utf8_lossy(&tested.stdout),
        String::from_utf8_lossy(&tested.stderr)
    );

    let port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: coremq\n    static_configs:\n      \
             - targets: ['127.0.0.1:{}']\n",
            rules.display(),
            broker.admin_port
        ),
    )
    .unwrap();
    let _prometheus = Running(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs"),
    );

    // Traffic for every panel: acks=all produce (fsync), a consumer group committing,
    // MQTT in and out, and a connection the broker closes for its bad frame.
    let bootstrap = broker.bootstrap();
    kcat::run(&bootstrap, &["-P", "-t", "orders", "-K:"], "k:first\n").unwrap();
    let _consumer = Running(
        Command::new("kcat")
            .args(["-b", &bootstrap, "-G", "dashboards", "orders"])
            .args(["-X", "auto.commit.interval.ms=200", "-o", "beginning", "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let subscriber = mosquitto::Subscriber::start(&broker, &["-t", "sensors/#"]);
    let mut garbage = TcpStream::connect(("127.0.0.1", broker.port)).unwrap();
    garbage.write_all(&[0xff; 16]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut sent = 0;
    while Instant::now() < deadline {
        kcat::run(
            &bootstrap,
            &["-P", "-t", "orders", "-K:"],
            &format!("k{sent}:v{sent}\n"),
        )
        .unwrap();
        mosquitto::publish(
            &broker,
            &["-t", "sensors/1", "-m", &sent.to_string(), "-q", "1"],
        );
        sent += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(subscriber.messages(1).len() == 1);

    // Prometheus has the broker up and the rules loaded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = api(
            port,
            &format!("/api/v1/query?query={}", encode("up{job=\"coremq\"}")),
        );
        let scraped = up
            .as_ref()
            .is_some_and(|up| up["data"]["result"][0]["value"][1] == "1");
        if scraped {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus does not scrape the broker: {up:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let loaded = api(port, "/api/v1/rules").unwrap();
    let groups = loaded["data"]["groups"].as_array().unwrap();
    let alert_rules: Vec<&Value> = groups
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .collect();
    assert_eq!(alert_rules.len(), 8, "{loaded}");
    for rule in &alert_rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    let mut empty = Vec::new();
    for (panel, expr) in dashboard_queries() {
        let answer = query(port, &expr);
        assert_eq!(answer["status"], "success", "{panel}: {expr}: {answer}");
        if answer["data"]["result"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            empty.push(format!("{panel}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data: {empty:#?}"
    );
    let produce_p99 = query(
        port,
        "histogram_quantile(0.99, sum by (le) (rate(coremq_request_latency_seconds_bucket{api=\"Produce\"}[1m])))",
    );
    let seconds: f64 = produce_p99["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(seconds > 0.0 && seconds < 30.0, "Produce p99 {seconds}");

    for rule in &alert_rules {
        for name in metric_names(rule["query"].as_str().unwrap()) {
            let answer = query(port, &format!("count({{__name__=\"{name}\"}})"));
            assert!(
                answer["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty()),
                "alert {} reads {name}, which the broker does not export",
                rule["name"]
            );
        }
    }
}
