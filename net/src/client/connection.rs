//! One connection to one broker: requests pipelined, responses matched to them in order
//! (Kafka answers a connection's requests in the order they came), versions negotiated
//! with ApiVersions when it opens.
//!
//! A writer task sends queued frames, gathering what is queued into one write; a reader
//! task decodes each response and hands it to the request waiting for it. When either side
//! fails, every waiting request gets the error and the connection is marked broken.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use coremq_runtime::net::TcpStream;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

use super::{Error, unexpected};
use crate::protocol::api::{self, RequestBody, ResponseBody};
use crate::protocol::frame::{decode_response, encode_request_frame};
use crate::protocol::messages::{ApiVersionsRequest, RequestHeader};

/// Largest response frame read; a broker claiming more is treated as broken.
const RESPONSE_MAX_BYTES: usize = 1 << 30;

/// A frame for the writer, and who to tell once it is written (a request without response).
struct Outgoing {
    chunks: Vec<Bytes>,
    written: Option<flume::Sender<()>>,
}

/// A request waiting for its response.
struct Waiting {
    key: i16,
    version: i16,
    correlation_id: i32,
    reply: flume::Sender<Result<ResponseBody, Error>>,
}

struct State {
    waiting: RefCell<VecDeque<Waiting>>,
    broken: RefCell<Option<Error>>,
}

impl State {
    /// Why the connection broke, for a request that lost its answer.
    fn error(&self, address: &SocketAddr) -> Error {
        self.broken
            .borrow()
            .clone()
            .unwrap_or_else(|| Error::Io(format!("{address}: connection closed")))
    }

    fn fail(&self, error: Error) {
        self.broken.borrow_mut().get_or_insert(error.clone());
        for waiting in self.waiting.borrow_mut().drain(..) {
            let _ = waiting.reply.send(Err(error.clone()));
        }
    }
}

/// A connection to one broker. Cheap to share within its executor (`Rc`).
pub struct Connection {
    address: SocketAddr,
    client_id: Rc<str>,
    /// Frames for the writer task; dropping the connection closes it, which ends the
    /// writer and shuts the socket.
    frames: flume::Sender<Outgoing>,
    state: Rc<State>,
    correlation_id: Cell<i32>,
    /// The version used for each API, indexed by key: the highest both sides serve.
    versions: RefCell<Vec<Option<i16>>>,
}

impl Connection {
    /// Connects, then negotiates versions: ApiVersions v3, or v0 when the broker refuses it.
    pub async fn open(
        address: SocketAddr,
        client_id: &str,
        timeout: Duration,
    ) -> Result<Rc<Connection>, Error> {
        let stream = TcpStream::connect_timeout(address, timeout)
            .await
            .map_err(|error| Error::Io(format!("connecting to {address}: {error}")))?;
        let _ = stream.set_nodelay(true);
        let (reader, writer) = futures_lite::io::split(stream);
        let (frames, queued) = flume::unbounded::<Outgoing>();
        let state = Rc::new(State {
            waiting: RefCell::default(),
            broken: RefCell::default(),
        });
        coremq_runtime::spawn_local(write_frames(writer, queued, state.clone())).detach();
        coremq_runtime::spawn_local(read_responses(reader, state.clone())).detach();
        let connection = Rc::new(Connection {
            address,
            client_id: client_id.into(),
            frames,
            state,
            correlation_id: Cell::new(0),
            versions: RefCell::default(),
        });
        connection.negotiate().await?;
        Ok(connection)
    }

    /// Whether the connection failed; a broken connection answers every call with its error.
    pub fn is_broken(&self) -> bool {
        self.state.broken.borrow().is_some()
    }

    async fn negotiate(&self) -> Result<(), Error> {
        let request = ApiVersionsRequest {
            client_software_name: "coremq".into(),
            client_software_version: env!("CARGO_PKG_VERSION").into(),
        };
        let mut response = None;
        for version in [3, 0] {
            match self
                .call_version(version, RequestBody::ApiVersions(request.clone()))
                .await?
            {
                ResponseBody::ApiVersions(answer) if answer.error_code == 0 => {
                    response = Some(answer);
                    break;
                }
                ResponseBody::ApiVersions(_) => continue,
                other => return Err(unexpected(&other)),
            }
        }
        let response = response
            .ok_or_else(|| Error::Protocol(format!("{}: ApiVersions refused", self.address)))?;
        let mut versions = self.versions.borrow_mut();
        for ours in api::APIS {
            let Some(theirs) = response.api_keys.iter().find(|k| k.api_key == ours.key) else {
                continue;
            };
            let version = ours.max.min(theirs.max_version);
            if version >= ours.min.max(theirs.min_version) {
                let slot = ours.key as usize;
                if versions.len() <= slot {
                    versions.resize(slot + 1, None);
                }
                versions[slot] = Some(version);
            }
        }
        Ok(())
    }

    /// The version this connection uses for API `key`, if both sides serve one.
    pub fn version(&self, key: i16) -> Option<i16> {
        let versions = self.versions.borrow();
        usize::try_from(key)
            .ok()
            .and_then(|slot| versions.get(slot).copied().flatten())
    }

    /// Sends `body` at the negotiated version and waits for its response.
    pub async fn call(&self, body: RequestBody) -> Result<(i16, ResponseBody), Error> {
        let version = self.negotiated(body.api_key())?;
        Ok((version, self.call_version(version, body).await?))
    }

    fn negotiated(&self, key: i16) -> Result<i16, Error> {
        self.version(key).ok_or_else(|| {
            Error::Unsupported(format!(
                "{} serves no version of API {key} this client speaks",
                self.address
            ))
        })
    }

    /// Sends `body`, which the broker does not answer (Produce with acks=0), at the
    /// negotiated version; completes once it is written to the socket.
    pub async fn send_only(&self, body: RequestBody) -> Result<(), Error> {
        let version = self.negotiated(body.api_key())?;
        let (written, done) = flume::bounded(1);
        self.send(version, &body, Some(written))?;
        done.recv_async()
            .await
            .map_err(|_| self.state.error(&self.address))
    }

    async fn call_version(&self, version: i16, body: RequestBody) -> Result<ResponseBody, Error> {
        let (reply, answer) = flume::bounded(1);
        let correlation_id = self.send(version, &body, None)?;
        self.state.waiting.borrow_mut().push_back(Waiting {
            key: body.api_key(),
            version,
            correlation_id,
            reply,
        });
        answer
            .recv_async()
            .await
            .map_err(|_| self.state.error(&self.address))?
    }

    fn send(
        &self,
        version: i16,
        body: &RequestBody,
        written: Option<flume::Sender<()>>,
    ) -> Result<i32, Error> {
        if let Some(error) = self.state.broken.borrow().clone() {
            return Err(error);
        }
        let correlation_id = self.correlation_id.get().wrapping_add(1);
        self.correlation_id.set(correlation_id);
        let header = RequestHeader {
            request_api_key: body.api_key(),
            request_api_version: version,
            correlation_id,
            client_id: Some(self.client_id.to_string()),
        };
        let chunks = encode_request_frame(&header, body);
        self.frames
            .try_send(Outgoing { chunks, written })
            .map_err(|_| self.state.error(&self.address))?;
        Ok(correlation_id)
    }
}

async fn write_frames(
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    queued: flume::Receiver<Outgoing>,
    state: Rc<State>,
) {
    let mut written = Vec::new();
    while let Ok(frame) = queued.recv_async().await {
        let mut result = write_chunks(&mut writer, &frame.chunks).await;
        written.extend(frame.written);
        // Gather what else is queued into this write.
        while result.is_ok()
            && let Ok(frame) = queued.try_recv()
        {
            result = write_chunks(&mut writer, &frame.chunks).await;
            written.extend(frame.written);
        }
        if let Err(error) = result.and(writer.flush().await) {
            state.fail(Error::Io(format!("write failed: {error}")));
            return;
        }
        for done in written.drain(..) {
            let _ = done.send(());
        }
    }
    let _ = writer.close().await;
}

async fn write_chunks(
    writer: &mut futures_lite::io::WriteHalf<TcpStream>,
    chunks: &[Bytes],
) -> std::io::Result<()> {
    for chunk in chunks {
        writer.write_all(chunk).await?;
    }
    Ok(())
}

async fn read_responses(mut reader: futures_lite::io::ReadHalf<TcpStream>, state: Rc<State>) {
    let error = loop {
        let mut size = [0u8; 4];
        if let Err(error) = reader.read_exact(&mut size).await {
            break Error::Io(format!("connection closed: {error}"));
        }
        let size = i32::from_be_bytes(size);
        if size < 0 || size as usize > RESPONSE_MAX_BYTES {
            break Error::Protocol(format!(
                "response size {size} is outside 0..={RESPONSE_MAX_BYTES}"
            ));
        }
        let mut frame = vec![0u8; size as usize];
        if let Err(error) = reader.read_exact(&mut frame).await {
            break Error::Io(format!("connection closed: {error}"));
        }
        let Some(waiting) = state.waiting.borrow_mut().pop_front() else {
            break Error::Protocol("a response to no request".into());
        };
        match decode_response(waiting.key, waiting.version, Bytes::from(frame)) {
            Ok((correlation_id, body)) if correlation_id == waiting.correlation_id => {
                let _ = waiting.reply.send(Ok(body));
            }
            Ok((correlation_id, _)) => {
                let error = Error::Protocol(format!(
                    "correlation id {correlation_id} where {} was expected",
                    waiting.correlation_id
                ));
                let _ = waiting.reply.send(Err(error.clone()));
                break error;
            }
            Err(error) => {
                let error = Error::Protocol(error.to_string());
                let _ = waiting.reply.send(Err(error.clone()));
                break error;
            }
        }
    };
    state.fail(error);
}
