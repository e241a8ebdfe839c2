//! `mqtt-idle`: connects many MQTT clients that then say nothing (clean session, no keep
//! alive), holds them, and reports the broker's resident memory per connection when given
//! the broker's process id. Connections are plain blocking sockets, a few threads opening
//! them one after another: an idle client needs no event loop, and 100,000 of them take
//! seconds to open.
//!
//! One source address has about 28,000 ephemeral ports towards one listener, so clients
//! beyond the first 20,000 bind to further loopback addresses, 20,000 each.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use coremq_net::mqtt::codec::{self, Connect, Level, Packet, Properties};
use serde_json::{Value, json};
use socket2::{Domain, Socket, Type};

use crate::args::MqttIdle;
use crate::mqtt::resolve;

/// Clients connecting from one source address.
const PER_SOURCE: usize = 20_000;
/// How long one client may take to connect and get its CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// File descriptors the process keeps beside its connections.
const SPARE_FILES: u64 = 64;

pub fn run(idle: MqttIdle) -> Result<Value, String> {
    check_file_limit(idle.connections as u64 + SPARE_FILES)?;
    let address = resolve(&idle.broker)?;
    let before = idle.broker_pid.map(resident_bytes).transpose()?;
    let started = Instant::now();
    let threads = idle.threads.clamp(1, idle.connections.max(1));
    let opened: Vec<(Vec<TcpStream>, Vec<String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let idle = &idle;
                scope.spawn(move || {
                    let mut streams = Vec::new();
                    let mut errors = Vec::new();
                    for index in (thread..idle.connections).step_by(threads) {
                        match connect(address, index, idle.mqtt_version) {
                            Ok(stream) => streams.push(stream),
                            Err(error) => errors.push(format!("client {index}: {error}")),
                        }
                    }
                    (streams, errors)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a connecting thread"))
            .collect()
    });
    let connect_seconds = started.elapsed().as_secs_f64();
    let (streams, errors): (Vec<_>, Vec<_>) = opened.into_iter().unzip();
    let mut streams: Vec<TcpStream> = streams.into_iter().flatten().collect();
    let errors: Vec<String> = errors.into_iter().flatten().collect();
    eprintln!(
        "connected {} clients in {connect_seconds:.1} s ({} failed); holding them {:.0} s",
        streams.len(),
        errors.len(),
        idle.hold.as_secs_f64()
    );
    std::thread::sleep(idle.hold);
    let after = idle.broker_pid.map(resident_bytes).transpose()?;
    // Every client still connected reads nothing from the broker: a closed one reads 0.
    let still_open = streams.iter().filter(|stream| is_open(stream)).count();
    let disconnect = encoded(
        &Packet::Disconnect(codec::Disconnect::default()),
        idle.mqtt_version,
    )?;
    for stream in &mut streams {
        let _ = stream.write_all(&disconnect);
    }
    let per_connection = match (before, after) {
        (Some(before), Some(after)) if still_open > 0 => {
            Some(after.saturating_sub(before) as f64 / still_open as f64)
        }
        _ => None,
    };
    let summary = json!({
        "mode": "mqtt-idle",
        "connections": streams.len(),
        "still_open": still_open,
        "failed": errors.len(),
        "first_errors": errors.iter().take(5).collect::<Vec<_>>(),
        "connect_seconds": connect_seconds,
        "broker_rss_before_bytes": before,
        "broker_rss_after_bytes": after,
        "broker_bytes_per_connection": per_connection,
        "config": {
            "broker": idle.broker,
            "clients": idle.connections,
            "hold_s": idle.hold.as_secs_f64(),
            "threads": threads,
        },
    });
    println!(
        "mqtt-idle: {} of {} clients connected in {connect_seconds:.1} s, {still_open} still \
         open after {:.0} s",
        streams.len(),
        idle.connections,
        idle.hold.as_secs_f64()
    );
    if let Some(bytes) = per_connection {
        println!(
            "  broker memory: {:.1} MiB before, {:.1} MiB after, {:.0} bytes per connection",
            before.unwrap_or(0) as f64 / 1048576.0,
            after.unwrap_or(0) as f64 / 1048576.0,
            bytes
        );
    }
    Ok(summary)
}

/// Why a summary's run failed, if it did: a client that did not connect or was closed.
pub fn failed(summary: &Value) -> Option<String> {
    let connections = summary["connections"].as_u64()?;
    let clients = summary["config"]["clients"].as_u64()?;
    let open = summary["still_open"].as_u64()?;
    (connections < clients || open < connections).then(|| {
        format!(
            "{connections} of {clients} clients connected, {open} stayed open: {}",
            summary["first_errors"]
        )
    })
}

fn connect(address: SocketAddr, index: usize, level: Level) -> Result<TcpStream, String> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)
        .map_err(|error| format!("a socket: {error}"))?;
    let source = index / PER_SOURCE;
    if source > 0 && address.ip().is_loopback() {
        let ip = Ipv4Addr::new(127, 1, (source >> 8) as u8, source as u8);
        socket
            .bind(&SocketAddr::new(IpAddr::V4(ip), 0).into())
            .map_err(|error| format!("binding to {ip}: {error}"))?;
    }
    socket
        .connect_timeout(&address.into(), CONNECT_TIMEOUT)
        .map_err(|error| format!("connecting to {address}: {error}"))?;
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|error| error.to_string())?;
    let connect = Packet::Connect(Box::new(Connect {
        level,
        clean_start: true,
        keep_alive: 0,
        client_id: format!("coremq-perf-idle-{index}"),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }));
    stream
        .write_all(&encoded(&connect, level)?)
        .map_err(|error| format!("writing CONNECT: {error}"))?;
    // The fixed header, a byte at a time until its remaining length is complete.
    let mut header = Vec::with_capacity(5);
    let length = loop {
        let mut byte = [0u8];
        stream
            .read_exact(&mut byte)
            .map_err(|error| format!("reading CONNACK: {error}"))?;
        header.push(byte[0]);
        if header.len() == 1 {
            continue;
        }
        if let Some(length) = codec::remaining_length(&header).map_err(|e| e.to_string())? {
            break length;
        }
    };
    if length > 64 * 1024 {
        return Err(format!("a CONNACK of {length} bytes"));
    }
    let mut body = vec![0u8; length];
    stream
        .read_exact(&mut body)
        .map_err(|error| format!("reading CONNACK: {error}"))?;
    match codec::decode(header[0], body.into(), level) {
        Ok(Packet::ConnAck(ack)) if ack.code == 0 => Ok(stream),
        Ok(Packet::ConnAck(ack)) => Err(format!("CONNECT refused: code {:#04x}", ack.code)),
        Ok(other) => Err(format!("expected CONNACK, got {}", other.name())),
        Err(error) => Err(format!("a malformed CONNACK: {error}")),
    }
}

fn encoded(packet: &Packet, level: Level) -> Result<Vec<u8>, String> {
    let mut bytes = BytesMut::new();
    codec::encode(packet, level, &mut bytes).map_err(|error| error.to_string())?;
    Ok(bytes.to_vec())
}

/// Whether the broker still holds the connection open: nothing to read, and no end of
/// stream, without waiting.
fn is_open(mut stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8];
    let open = matches!(stream.read(&mut byte), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock);
    let _ = stream.set_nonblocking(false);
    open
}

/// The resident memory of process `pid`, from `/proc/PID/status`.
fn resident_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|error| format!("{path}: {error}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("{path} has no VmRSS"))
}

/// Fails unless this process may open `needed` files (`/proc/self/limits`).
fn check_file_limit(needed: u64) -> Result<(), String> {
    let limits = std::fs::read_to_string("/proc/self/limits")
        .map_err(|error| format!("/proc/self/limits: {error}"))?;
    let soft = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|values| values.split_whitespace().next())
        .ok_or("/proc/self/limits has no open-file limit")?;
    match soft.parse::<u64>() {
        Ok(limit) if limit < needed => Err(format!(
            "{needed} open files are needed but the limit is {limit}: raise it (ulimit -n)"
        )),
        _ => Ok(()),
    }
}
