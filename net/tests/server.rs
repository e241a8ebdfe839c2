//! The protocol-generic server with a protocol that is not Kafka: MQTT-style framing (a type
//! byte, then the body size in 1 to 4 bytes of 7 bits each), pipelined requests answered in
//! order however long each takes, frames the protocol pushes between answers, a close the
//! protocol asks for, handoff to the least loaded shard, and the bounds: a frame over the
//! size limit or a prefix that never ends closes that connection, not the others.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use coremq_engine::{Engine, EngineConfig};
use coremq_net::server::{
    self, AcceptMode, CloseReason, FrameSize, Incoming, Limits, Link, Protocol, Server, Shared,
};

/// Answers a frame `[delay ms][payload]` with `[0x30][size][payload]` after the delay; a
/// frame of type 0x31 first pushes `push:` and the payload at once; one of type 0xE0 answers
/// `bye` and closes the connection.
struct Echo;

impl Protocol for Echo {
    type Request = (u8, Bytes);
    type Connection = Link;

    const CLIENTS: &'static str = "echo clients";

    fn frame_size(prefix: &[u8]) -> Result<FrameSize, String> {
        let sizes = &prefix[1..];
        match sizes.last() {
            None => Ok(FrameSize::Need(1)),
            Some(byte) if byte & 0x80 != 0 && sizes.len() < 4 => Ok(FrameSize::Need(1)),
            Some(byte) if byte & 0x80 != 0 => Err("a size of more than 4 bytes".into()),
            Some(_) => {
                Ok(FrameSize::Body(sizes.iter().rev().fold(0, |size, byte| {
                    (size << 7) | usize::from(byte & 0x7f)
                })))
            }
        }
    }

    fn open(&self, _peer: Option<SocketAddr>, link: Link) -> Rc<Link> {
        Rc::new(link)
    }

    fn decode(
        &self,
        link: &Rc<Link>,
        prefix: &[u8],
        body: Bytes,
    ) -> Result<Incoming<Self::Request>, String> {
        match (prefix[0], body.first()) {
            (0x30, Some(&delay)) => Ok(Incoming::Request((delay, body.slice(1..)))),
            (0x31, Some(&delay)) => {
                let pushed = [&b"push:"[..], &body[1..]].concat();
                link.push(vec![Bytes::from(frame(&[], &pushed))]);
                Ok(Incoming::Request((delay, body.slice(1..))))
            }
            (0xE0, _) => {
                link.close(CloseReason::ProtocolError, "asked to".into());
                Ok(Incoming::Answered(vec![Bytes::from(frame(&[], b"bye"))]))
            }
            (0x30, None) => Ok(Incoming::Answered(vec![Bytes::from_static(&[0x30, 0])])),
            (kind, _) => Err(format!("unknown frame type {kind:#x}")),
        }
    }

    async fn respond(
        self: Rc<Self>,
        _link: Rc<Link>,
        (delay, payload): Self::Request,
        _peer: Option<SocketAddr>,
    ) -> Option<Vec<Bytes>> {
        coremq_runtime::sleep(Duration::from_millis(u64::from(delay))).await;
        Some(vec![Bytes::from(frame(&[], &payload))])
    }

    fn too_large(&self, _link: &Rc<Link>) -> Option<Vec<Bytes>> {
        None
    }

    fn closed(&self, _link: &Rc<Link>) {}
}

/// `[0x30][size][delay][payload]` with `delay` omitted when empty.
fn frame(delay: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut size = delay.len() + payload.len();
    let mut out = vec![0x30];
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(delay);
    out.extend_from_slice(payload);
    out
}

fn request(delay: u8, payload: &[u8]) -> Vec<u8> {
    frame(&[delay], payload)
}

fn read_response(stream: &mut TcpStream) -> Vec<u8> {
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).unwrap();
    assert_eq!(prefix[0], 0x30);
    let mut size = usize::from(prefix[1] & 0x7f);
    let mut shift = 7;
    let mut last = prefix[1];
    while last & 0x80 != 0 {
        let mut byte = [0u8];
        stream.read_exact(&mut byte).unwrap();
        size |= usize::from(byte[0] & 0x7f) << shift;
        shift += 7;
        last = byte[0];
    }
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body).unwrap();
    body
}

/// Whether the server closed `stream` (end of stream or a reset) within a few seconds.
fn closed(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => !matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn start(accept: AcceptMode) -> (Engine, Shared, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(EngineConfig {
        shards: 2,
        pin_shards: false,
        ..EngineConfig::new(dir.path().to_path_buf())
    })
    .unwrap();
    let handle = engine.handle();
    let limits = Limits {
        accept,
        frame_bytes_max: 1000,
        shard_frame_bytes_max: 1 << 20,
        requests_in_flight_max: 16,
        idle: Duration::from_secs(30),
        read_timeout: Duration::from_secs(30),
        connections_max: 100,
        connections_per_ip_max: 100,
        keepalive: None,
        websocket: None,
    };
    let shared = Shared::new(limits, handle.clone());
    let address = server::bind::<Echo>(&shared, "127.0.0.1:0".parse().unwrap()).unwrap();
    for shard in 0..2 {
        let shared = shared.clone();
        futures_lite::future::block_on(handle.on_shard(shard, move |_| async move {
            Server::start(Rc::new(Echo), shared, shard);
            Ok(())
        }))
        .unwrap();
    }
    server::check_listeners::<Echo>(&shared, address).unwrap();
    (engine, shared, address, dir)
}

#[test]
fn pipelined_requests_are_answered_in_order_under_another_framing() {
    for accept in [AcceptMode::ReusePort, AcceptMode::Handoff] {
        let (engine, _shared, address, _dir) = start(accept);
        let mut streams: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(address).unwrap())
            .collect();
        for stream in &mut streams {
            // The slow one first, a 200-byte one (two size bytes) next, an empty one last.
            let big = vec![7u8; 200];
            let mut bytes = request(150, b"slow");
            bytes.extend(request(0, &big));
            bytes.extend(frame(&[], &[]));
            bytes.extend(request(0, b"fast"));
            stream.write_all(&bytes).unwrap();
        }
        for stream in &mut streams {
            assert_eq!(read_response(stream), b"slow");
            assert_eq!(read_response(stream), vec![7u8; 200]);
            assert_eq!(read_response(stream), b"");
            assert_eq!(read_response(stream), b"fast");
        }
        drop(streams);
        engine.shutdown().unwrap();
    }
}

#[test]
fn a_frame_over_the_bounds_closes_its_connection_only() {
    let (engine, _shared, address, _dir) = start(AcceptMode::ReusePort);
    let mut good = TcpStream::connect(address).unwrap();
    let mut too_big = TcpStream::connect(address).unwrap();
    // 1001 bytes of body against a limit of 1000: refused before any is read.
    too_big.write_all(&[0x30, 0xe9, 0x07]).unwrap();
    assert!(closed(&mut too_big));
    let mut endless = TcpStream::connect(address).unwrap();
    endless.write_all(&[0x30, 0x80, 0x80, 0x80, 0x80]).unwrap();
    assert!(closed(&mut endless));
    let mut unknown = TcpStream::connect(address).unwrap();
    unknown.write_all(&[0x10, 0x01, 0x00]).unwrap();
    assert!(closed(&mut unknown));
    good.write_all(&request(0, b"still here")).unwrap();
    assert_eq!(read_response(&mut good), b"still here");
    drop(good);
    engine.shutdown().unwrap();
}

#[test]
fn pushed_frames_pass_slow_answers_and_a_protocol_close_writes_what_came_before() {
    let (engine, _shared, address, _dir) = start(AcceptMode::ReusePort);
    let mut stream = TcpStream::connect(address).unwrap();
    let mut bytes = request(200, b"a");
    bytes[0] = 0x31;
    stream.write_all(&bytes).unwrap();
    // The push is written while the answer waits its 200 ms.
    assert_eq!(read_response(&mut stream), b"push:a");
    assert_eq!(read_response(&mut stream), b"a");
    let mut bytes = request(100, b"before");
    bytes.extend([0xE0, 0x00]);
    bytes.extend(request(0, b"after"));
    stream.write_all(&bytes).unwrap();
    assert_eq!(read_response(&mut stream), b"before");
    assert_eq!(read_response(&mut stream), b"bye");
    assert!(closed(&mut stream));
    let mut other = TcpStream::connect(address).unwrap();
    other.write_all(&request(0, b"still here")).unwrap();
    assert_eq!(read_response(&mut other), b"still here");
    engine.shutdown().unwrap();
}

#[test]
fn at_most_requests_in_flight_max_requests_are_read_ahead_of_their_answers() {
    let (engine, _shared, address, _dir) = start(AcceptMode::ReusePort);
    let mut stream = TcpStream::connect(address).unwrap();
    // Each frame pushes at once when read and is answered 200 ms later; the server reads 16
    // (`requests_in_flight_max`) and no more until the first answer is written.
    let mut bytes = Vec::new();
    for index in 0..20 {
        let mut one = request(200, format!("r{index}").as_bytes());
        one[0] = 0x31;
        bytes.extend(one);
    }
    stream.write_all(&bytes).unwrap();
    for index in 0..16 {
        assert_eq!(
            read_response(&mut stream),
            format!("push:r{index}").as_bytes()
        );
    }
    assert_eq!(read_response(&mut stream), b"r0");
    let mut rest = Vec::new();
    for _ in 0..23 {
        rest.push(String::from_utf8(read_response(&mut stream)).unwrap());
    }
    let answers: Vec<&String> = rest.iter().filter(|r| !r.starts_with("push:")).collect();
    let expected: Vec<String> = (1..20).map(|index| format!("r{index}")).collect();
    assert_eq!(
        answers,
        expected.iter().collect::<Vec<_>>(),
        "in order: {rest:?}"
    );
    drop(stream);
    engine.shutdown().unwrap();
}
