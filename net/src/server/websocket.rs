//! A protocol over WebSockets (RFC 6455), as MQTT runs in browsers: the HTTP upgrade on the
//! listener's path with the protocol's subprotocol, then the binary messages' payloads as one
//! byte stream each way, so the protocol's framing and the server's bounds apply unchanged.
//! Frames are parsed and the accept key derived by `tungstenite`; the payload is streamed
//! through, never gathered, so a frame's declared length allocates nothing.
//!
//! Server frames are single unmasked binary frames. A ping is answered with a pong of its
//! payload (RFC 6455 section 5.5.2), written between two binary frames, never inside one; a
//! close frame ends the stream; a text frame is an error (MQTT-6.0.0-1).

use std::io::{self, Cursor};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::Link;

/// The largest upgrade request read.
const REQUEST_BYTES_MAX: usize = 8 << 10;

/// The largest payload of a control frame (RFC 6455 section 5.5).
const CONTROL_PAYLOAD_MAX: u64 = 125;

/// What a WebSocket listener serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocket {
    /// The request path (`/mqtt`).
    pub path: String,
    /// The subprotocol the server selects (`mqtt`, MQTT-6.0.0-4).
    pub subprotocol: String,
}

/// Reads the HTTP upgrade request and answers it: `101 Switching Protocols`, or an error
/// status and the reason. Bytes the client sent after the request are returned, to be read
/// before the socket's.
pub(super) async fn accept(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    websocket: &WebSocket,
) -> Result<Vec<u8>, String> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|error| format!("reading the upgrade request: {error}"))?;
        if read == 0 {
            return Err("the connection ended in the upgrade request".into());
        }
        request.extend_from_slice(&chunk[..read]);
        let start = &request[..request.len().min(4)];
        if !b"GET ".starts_with(start) {
            // Not HTTP at all (a plain MQTT CONNECT, say): refused at once.
            return Err(refuse(stream, 400, "not a WebSocket upgrade").await);
        }
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if request.len() > REQUEST_BYTES_MAX {
            return Err(refuse(stream, 431, "an upgrade request over 8 KiB").await);
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    if !matches!(
        parsed.parse(&request[..end]),
        Ok(httparse::Status::Complete(_))
    ) {
        return Err(refuse(stream, 400, "a malformed upgrade request").await);
    }
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .and_then(|header| std::str::from_utf8(header.value).ok())
    };
    let has = |name: &str, token: &str| {
        header(name).is_some_and(|value| {
            value
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    };
    if parsed.method != Some("GET") || !has("upgrade", "websocket") || !has("connection", "upgrade")
    {
        return Err(refuse(stream, 400, "not a WebSocket upgrade").await);
    }
    let path = parsed.path.unwrap_or_default();
    if path.split('?').next() != Some(websocket.path.as_str()) {
        return Err(refuse(stream, 404, &format!("no WebSocket endpoint at {path}")).await);
    }
    if header("sec-websocket-version") != Some("13") {
        return Err(refuse(stream, 426, "WebSocket version 13 is required").await);
    }
    let Some(key) = header("sec-websocket-key") else {
        return Err(refuse(stream, 400, "no Sec-WebSocket-Key").await);
    };
    // MQTT-6.0.0-3/4: the client offers `mqtt`, the server selects it; a client offering
    // others but not it is refused, one offering none is served.
    let offered = header("sec-websocket-protocol");
    if offered.is_some() && !has("sec-websocket-protocol", &websocket.subprotocol) {
        let reason = format!("the {} subprotocol is required", websocket.subprotocol);
        return Err(refuse(stream, 400, &reason).await);
    }
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        tungstenite::handshake::derive_accept_key(key.trim().as_bytes())
    );
    if offered.is_some() {
        answer.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            websocket.subprotocol
        ));
    }
    answer.push_str("\r\n");
    stream
        .write_all(answer.as_bytes())
        .await
        .map_err(|error| format!("answering the upgrade: {error}"))?;
    Ok(request.split_off(end))
}

/// Answers `status` and returns the reason.
async fn refuse(stream: &mut (impl AsyncWrite + Unpin), status: u16, reason: &str) -> String {
    let answer =
        format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(answer.as_bytes()).await;
    format!("WebSocket upgrade refused ({status}): {reason}")
}

/// The payload bytes of the binary messages on `inner`, each way.
pub(super) struct Stream<S> {
    inner: S,
    /// Bytes read from `inner` and not yet used (the upgrade's leftover, a header's parts).
    buffered: Vec<u8>,
    /// The data frame being read: payload bytes left, its mask, and the mask's place.
    payload: Option<(u64, Option<[u8; 4]>, usize)>,
    /// A ping or pong being read.
    control: Option<ControlFrame>,
    closed: bool,
    /// An encoded binary frame being written: the bytes and how many are written.
    writing: Option<(Vec<u8>, usize)>,
    /// The pong answering the last ping, to write before the next binary frame: the bytes
    /// and how many are written.
    pong: Option<(Vec<u8>, usize)>,
    /// Wakes the connection's writer to write a pong (none when replaying).
    link: Option<Link>,
}

/// A ping or pong frame being read: whether a ping, payload bytes left, its mask, and the
/// payload so far (at most [`CONTROL_PAYLOAD_MAX`] bytes).
struct ControlFrame {
    ping: bool,
    left: u64,
    mask: Option<[u8; 4]>,
    payload: Vec<u8>,
}

impl<S> Stream<S> {
    /// The stream after the upgrade; `link` wakes the connection's writer for pongs.
    pub(super) fn new(inner: S, leftover: Vec<u8>, link: Option<Link>) -> Stream<S> {
        Stream {
            inner,
            buffered: leftover,
            payload: None,
            control: None,
            closed: false,
            writing: None,
            pong: None,
            link,
        }
    }

    /// A ping's payload was read: its pong is written before the next binary frame, or at
    /// the writer's next flush, which an empty push brings about.
    fn answer_ping(&mut self, mut control: ControlFrame) {
        if let Some(mask) = control.mask {
            for (index, byte) in control.payload.iter_mut().enumerate() {
                *byte ^= mask[index % 4];
            }
        }
        if self.pong.as_ref().is_some_and(|(_, written)| *written > 0) {
            // One pong is on its way: RFC 6455 lets the last ping go unanswered then.
            return;
        }
        let header = FrameHeader {
            opcode: OpCode::Control(Control::Pong),
            ..FrameHeader::default()
        };
        let length = control.payload.len() as u64;
        let mut frame = Vec::with_capacity(header.len(length) + control.payload.len());
        if header.format(length, &mut frame).is_err() {
            return;
        }
        frame.extend_from_slice(&control.payload);
        self.pong = Some((frame, 0));
        if let Some(link) = &self.link {
            link.push(Vec::new());
        }
    }
}

fn invalid(reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.to_string())
}

impl<S: AsyncRead + Unpin> Stream<S> {
    /// Fills `buffered` with more of `inner`; false at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut chunk = [0u8; 4096];
        let read = ready!(Pin::new(&mut self.inner).poll_read(cx, &mut chunk))?;
        self.buffered.extend_from_slice(&chunk[..read]);
        Poll::Ready(Ok(read > 0))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            if this.closed || out.is_empty() {
                return Poll::Ready(Ok(0));
            }
            if let Some(control) = &this.control {
                if control.left > 0 && this.buffered.is_empty() {
                    if !ready!(this.poll_fill(cx))? {
                        return Poll::Ready(Ok(0));
                    }
                    continue;
                }
                let mut control = this.control.take().expect("checked above");
                let count = (control.left as usize).min(this.buffered.len());
                control.payload.extend(this.buffered.drain(..count));
                control.left -= count as u64;
                if control.left > 0 {
                    this.control = Some(control);
                } else if control.ping {
                    this.answer_ping(control);
                }
                continue;
            }
            if let Some((left, mask, at)) = this.payload {
                if left == 0 {
                    this.payload = None;
                    continue;
                }
                let count = if this.buffered.is_empty() {
                    let want = (left as usize).min(out.len());
                    let read = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut out[..want]))?;
                    if read == 0 {
                        return Poll::Ready(Ok(0));
                    }
                    read
                } else {
                    let count = (left as usize).min(out.len()).min(this.buffered.len());
                    out[..count].copy_from_slice(&this.buffered[..count]);
                    this.buffered.drain(..count);
                    count
                };
                if let Some(mask) = mask {
                    for (index, byte) in out[..count].iter_mut().enumerate() {
                        *byte ^= mask[(at + index) % 4];
                    }
                }
                this.payload = Some((left - count as u64, mask, at + count));
                return Poll::Ready(Ok(count));
            }
            let mut cursor = Cursor::new(&this.buffered);
            let parsed = FrameHeader::parse(&mut cursor)
                .map_err(|error| invalid(&format!("a bad WebSocket frame: {error}")))?;
            let Some((header, length)) = parsed else {
                if !ready!(this.poll_fill(cx))? {
                    return Poll::Ready(Ok(0));
                }
                continue;
            };
            let used = cursor.position() as usize;
            this.buffered.drain(..used);
            if header.mask.is_none() {
                // RFC 6455 section 5.1: a client masks every frame.
                return Poll::Ready(Err(invalid("an unmasked frame from the client")));
            }
            match header.opcode {
                OpCode::Data(Data::Binary | Data::Continue) => {
                    this.payload = Some((length, header.mask, 0));
                }
                OpCode::Control(Control::Close) => this.closed = true,
                OpCode::Control(control) => {
                    if length > CONTROL_PAYLOAD_MAX {
                        // RFC 6455 section 5.5.
                        return Poll::Ready(Err(invalid("a control frame over 125 bytes")));
                    }
                    this.control = Some(ControlFrame {
                        ping: control == Control::Ping,
                        left: length,
                        mask: header.mask,
                        payload: Vec::with_capacity(length as usize),
                    });
                }
                OpCode::Data(_) => {
                    return Poll::Ready(Err(invalid("a text frame (MQTT-6.0.0-1)")));
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.writing.is_none() {
            ready!(this.poll_pong(cx))?;
            let header = FrameHeader {
                opcode: OpCode::Data(Data::Binary),
                ..FrameHeader::default()
            };
            let mut frame = Vec::with_capacity(header.len(buf.len() as u64) + buf.len());
            header
                .format(buf.len() as u64, &mut frame)
                .map_err(|error| invalid(&error.to_string()))?;
            frame.extend_from_slice(buf);
            this.writing = Some((frame, 0));
        }
        let (frame, written) = this.writing.as_mut().expect("set above");
        while *written < frame.len() {
            let count = ready!(Pin::new(&mut this.inner).poll_write(cx, &frame[*written..]))?;
            if count == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += count;
        }
        this.writing = None;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.writing.is_none() {
            ready!(self.poll_pong(cx))?;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl<S: AsyncWrite + Unpin> Stream<S> {
    /// Writes the pending pong, if any (call between binary frames).
    fn poll_pong(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((frame, written)) = self.pong.as_mut() {
            while *written < frame.len() {
                let count = ready!(Pin::new(&mut self.inner).poll_write(cx, &frame[*written..]))?;
                if count == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += count;
            }
            self.pong = None;
        }
        Poll::Ready(Ok(()))
    }
}

/// Bytes one way and a sink the other, for feeding a recorded connection through.
struct Replay<'a> {
    input: &'a [u8],
    output: Vec<u8>,
}

impl AsyncRead for Replay<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let count = out.len().min(self.input.len());
        out[..count].copy_from_slice(&self.input[..count]);
        self.input = &self.input[count..];
        Poll::Ready(Ok(count))
    }
}

impl AsyncWrite for Replay<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.output.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Reads `input` as a client's side of a WebSocket connection: the upgrade, then the payload
/// bytes of its messages until it ends or fails. What the server wrote (its answer to the
/// upgrade, then the pong of the last ping), and the payload bytes or why they stop. For
/// fuzzing the upgrade and the frame reader.
pub fn replay(input: &[u8], websocket: &WebSocket) -> (Vec<u8>, Result<Vec<u8>, String>) {
    futures_lite::future::block_on(async {
        let mut replay = Replay {
            input,
            output: Vec::new(),
        };
        let leftover = match accept(&mut replay, websocket).await {
            Ok(leftover) => leftover,
            Err(reason) => return (replay.output, Err(reason)),
        };
        let mut stream = Stream::new(replay, leftover, None);
        let mut payload = Vec::new();
        let read = stream.read_to_end(&mut payload).await;
        // The pong of the last ping.
        let _ = stream.flush().await;
        (
            stream.inner.output,
            read.map(|_| payload).map_err(|error| error.to_string()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /mqtt HTTP/1.1\r\nHost: broker\r\nUpgrade: websocket\r\n\
Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqttv3.1, mqtt\r\n\r\n";

    fn websocket() -> WebSocket {
        WebSocket {
            path: "/mqtt".into(),
            subprotocol: "mqtt".into(),
        }
    }

    /// A masked client frame.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn the_upgrade_selects_mqtt_and_binary_frames_become_one_stream() {
        let mut input = UPGRADE.to_vec();
        input.extend(frame(0x2, b"hel"));
        input.extend(frame(0x9, b"ping"));
        input.extend(frame(0x0, b"lo"));
        input.extend(frame(0x8, b""));
        input.extend(frame(0x2, b"after the close"));
        let (answer, payload) = replay(&input, &websocket());
        // RFC 6455 section 5.5.2: the ping is answered with a pong of its payload.
        assert!(answer.ends_with(b"\r\n\r\n\x8a\x04ping"), "{answer:?}");
        let answer = String::from_utf8_lossy(&answer);
        // RFC 6455's example key and its accept value.
        assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(answer.contains("Sec-WebSocket-Protocol: mqtt\r\n"));
        assert_eq!(payload.unwrap(), b"hello");
    }

    #[test]
    fn control_frames_over_125_bytes_end_the_stream() {
        let mut input = UPGRADE.to_vec();
        let mask = [1, 2, 3, 4];
        input.extend([0x89, 0x80 | 126, 0, 126]);
        input.extend(mask);
        input.extend([0u8; 126]);
        assert!(replay(&input, &websocket()).1.is_err());
    }

    #[test]
    fn mqtt_6_0_0_1_text_and_unmasked_frames_end_the_stream() {
        let mut input = UPGRADE.to_vec();
        input.extend(frame(0x1, b"text"));
        assert!(replay(&input, &websocket()).1.is_err());
        let mut input = UPGRADE.to_vec();
        input.extend([0x82, 0x01, b'x']);
        assert!(replay(&input, &websocket()).1.is_err());
    }

    #[test]
    fn upgrades_elsewhere_or_for_other_subprotocols_are_refused() {
        let other_path = String::from_utf8_lossy(UPGRADE).replace("/mqtt", "/other");
        let (answer, result) = replay(other_path.as_bytes(), &websocket());
        assert!(answer.starts_with(b"HTTP/1.1 404"));
        assert!(result.is_err());
        let other_protocol =
            String::from_utf8_lossy(UPGRADE).replace("mqttv3.1, mqtt", "graphql-ws");
        let (answer, _) = replay(other_protocol.as_bytes(), &websocket());
        assert!(answer.starts_with(b"HTTP/1.1 400"));
        let (answer, _) = replay(&[0x10, 0x0c, 0, 4, b'M'], &websocket());
        assert!(answer.starts_with(b"HTTP/1.1 400"), "a plain MQTT CONNECT");
    }
}
