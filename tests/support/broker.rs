//! Starts the real `coremq` binary for end-to-end tests: a free port, a temporary data
//! directory, and a wait until its admin listener says it is ready. Stopped with SIGTERM on drop.
//! Each test file uses a part of it.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    /// The HTTP admin listener's port.
    pub admin_port: u16,
    pub data_dir: PathBuf,
    log: PathBuf,
    /// The log's length before this start: what it wrote comes after.
    logged_before: usize,
    extra: Vec<String>,
    /// The address its listeners bind and clients reach: 127.0.0.1, or its address in its
    /// network namespace.
    host: String,
    /// The network namespace it runs in (`ip netns exec`), if not this process's.
    netns: Option<String>,
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    /// Starts on a free port with `extra` flags. A port `free_port` found can be taken by a
    /// test running beside this one before the broker binds it; the broker then exits, and
    /// this tries again on other ports.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Broker {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let listener = format!("127.0.0.1:{}", free_port());
            match Broker::try_start(data_dir, &listener, free_port(), extra) {
                Ok(broker) => return broker,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("the broker did not start: {failures:#?}");
    }

    pub fn start_on(data_dir: &Path, port: u16, extra: &[&str]) -> Broker {
        Broker::start_with_listener(data_dir, &format!("127.0.0.1:{port}"), extra)
    }

    /// Starts with `--kafka-listener listener` (`HOST:PORT` or `ADDRESS:PORT`).
    pub fn start_with_listener(data_dir: &Path, listener: &str, extra: &[&str]) -> Broker {
        Broker::try_start(data_dir, listener, free_port(), extra)
            .unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// Starts the broker and waits until it is ready.
    fn try_start(
        data_dir: &Path,
        listener: &str,
        admin_port: u16,
        extra: &[&str],
    ) -> Result<Broker, String> {
        let mut broker = Broker::spawn(data_dir, listener, admin_port, extra);
        broker.wait_ready(Duration::from_secs(20))?;
        Ok(broker)
    }

    /// Starts the broker without waiting for it: a broker of a cluster is ready only once
    /// a majority of the controller's voters runs. `--shards 2 --no-pin` unless `extra`
    /// names its own `--shards`.
    pub fn spawn(data_dir: &Path, listener: &str, admin_port: u16, extra: &[&str]) -> Broker {
        let port = listener
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .expect("a listener ends with its port");
        Broker::spawn_at(
            None,
            "127.0.0.1",
            data_dir,
            listener,
            port,
            admin_port,
            extra,
        )
    }

    /// Starts the broker in network namespace `netns`, its listeners on `host` (an address
    /// of that namespace), without waiting for it.
    pub fn spawn_in(
        netns: &str,
        host: &str,
        data_dir: &Path,
        port: u16,
        admin_port: u16,
        extra: &[&str],
    ) -> Broker {
        let listener = format!("{host}:{port}");
        Broker::spawn_at(
            Some(netns),
            host,
            data_dir,
            &listener,
            port,
            admin_port,
            extra,
        )
    }

    fn spawn_at(
        netns: Option<&str>,
        host: &str,
        data_dir: &Path,
        listener: &str,
        port: u16,
        admin_port: u16,
        extra: &[&str],
    ) -> Broker {
        let log = data_dir.with_extension("log");
        // A restart appends to the same log: only what this start writes counts.
        let logged_before = std::fs::metadata(&log).map_or(0, |meta| meta.len() as usize);
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let shards: &[&str] = if extra.contains(&"--shards") {
            &["--no-pin"]
        } else {
            &["--shards", "2", "--no-pin"]
        };
        // The MQTT listener on a port of its own choosing, unless the test names one.
        let mqtt_listener = format!("{host}:0");
        let mut mqtt: Vec<&str> = Vec::new();
        for flag in ["--mqtt-listener", "--mqtt-ws-listener"] {
            if !extra.contains(&flag) {
                mqtt.extend([flag, mqtt_listener.as_str()]);
            }
        }
        let binary = env!("CARGO_BIN_EXE_coremq");
        // `ip netns exec` execs the broker in place: the child's pid is the broker's.
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, binary]);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--kafka-listener")
            .arg(listener)
            .arg("--admin-listener")
            .arg(format!("{host}:{admin_port}"))
            .args(shards)
            .args(&mqtt)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(output)
            .spawn()
            .expect("the coremq binary starts");
        Broker {
            child: Some(child),
            port,
            admin_port,
            data_dir: data_dir.to_path_buf(),
            log,
            logged_before,
            extra: extra.iter().map(|arg| arg.to_string()).collect(),
            host: host.to_string(),
            netns: netns.map(str::to_string),
        }
    }

    /// Waits until the broker is ready: its admin listener says so, and its own log has its
    /// startup line (a ready answer could come from another process that took the admin
    /// port, while this one exits).
    pub fn wait_ready(&mut self, patience: Duration) -> Result<(), String> {
        let deadline = Instant::now() + patience;
        loop {
            let ready = self.try_http_get("/ready").map(|(status, _)| status) == Some(200)
                && self
                    .log()
                    .get(self.logged_before..)
                    .is_some_and(|new| new.contains("serving Kafka clients"));
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!("the broker exited ({status}): {}", self.log()));
            }
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("broker did not become ready: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port of the MQTT listener, as this start's startup line says.
    pub fn mqtt_port(&self) -> u16 {
        self.logged_port("MQTT clients on ")
    }

    /// The port of the MQTT over WebSockets listener, as this start's startup line says.
    pub fn mqtt_ws_port(&self) -> u16 {
        self.logged_port("over WebSockets on ")
    }

    /// The port of the address after `what` in this start's startup line.
    fn logged_port(&self, what: &str) -> u16 {
        let log = self.log();
        let line = log
            .get(self.logged_before..)
            .and_then(|new| new.split(what).nth(1))
            .unwrap_or_else(|| panic!("the startup line names {what:?}"));
        let address = line.split([',', ' ', '/']).next().unwrap_or_default();
        address
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or_else(|| panic!("no port after {what:?} in {line:?}"))
    }

    pub fn bootstrap(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// GETs `path` from the HTTP admin listener: the status code and the body.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        self.try_http_get(path)
            .unwrap_or_else(|| panic!("the admin listener answers {path}"))
    }

    /// As `http_get`, `None` when the listener cannot be reached.
    pub fn try_http_get(&self, path: &str) -> Option<(u16, String)> {
        self.try_http("GET", path)
    }

    /// Sends `method path` without a body to the HTTP admin listener: the status code and
    /// the body, `None` when the listener cannot be reached.
    pub fn try_http(&self, method: &str, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect((self.host.as_str(), self.admin_port)).ok()?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, body)| body.to_string());
        Some((status, body))
    }

    /// The broker process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.stop_with("-TERM")
    }

    /// Sends `signal` (as `kill` names it: `-INT`) and waits for the exit status.
    pub fn stop_with(&mut self, signal: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        child.wait().unwrap()
    }

    /// Stops and starts again on the same port and directory.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(
            status.success(),
            "clean exit on SIGTERM: {status}\n{}",
            self.log()
        );
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let again = Broker::start_on(&self.data_dir, self.port, &extra);
        *self = again;
    }

    /// Starts the stopped broker again on the same ports, directory and flags, without
    /// waiting for it.
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "the broker is stopped");
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let listener = self.bootstrap();
        *self = Broker::spawn_at(
            self.netns.as_deref(),
            &self.host,
            &self.data_dir,
            &listener,
            self.port,
            self.admin_port,
            &extra,
        );
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
