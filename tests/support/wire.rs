//! A blocking Kafka wire client for tests and benches: frames over a `TcpStream`, one
//! request at a time, built and read with the generated codecs.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use coremq_net::protocol::api::{RequestBody, ResponseBody};
use coremq_net::protocol::frame::{decode_response, encode_request};
use coremq_net::protocol::messages::RequestHeader;

pub struct Wire {
    stream: TcpStream,
    correlation_id: i32,
}

impl Wire {
    pub fn connect(address: impl ToSocketAddrs) -> Wire {
        let stream = TcpStream::connect(address).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Wire {
            stream,
            correlation_id: 0,
        }
    }

    /// Writes `frame` (a request without its size prefix) with its size prefix.
    pub fn send(&mut self, frame: &[u8]) {
        let mut prefixed = Vec::with_capacity(4 + frame.len());
        prefixed.extend_from_slice(&(frame.len() as i32).to_be_bytes());
        prefixed.extend_from_slice(frame);
        self.stream.write_all(&prefixed).unwrap();
    }

    /// The next response frame, without its size prefix; `None` once the broker closed the
    /// connection.
    pub fn receive(&mut self) -> Option<Bytes> {
        let mut size = [0u8; 4];
        if self.stream.read_exact(&mut size).is_err() {
            return None;
        }
        let mut frame = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut frame).unwrap();
        Some(frame.into())
    }

    /// Sends `body` at `version` and decodes its response, checking the correlation id.
    pub fn call(&mut self, version: i16, body: RequestBody) -> ResponseBody {
        let key = body.api_key();
        self.request(version, body);
        self.response(key, version)
    }

    /// Sends `body` at `version` without waiting for its response.
    pub fn request(&mut self, version: i16, body: RequestBody) {
        self.correlation_id += 1;
        let header = RequestHeader {
            request_api_key: body.api_key(),
            request_api_version: version,
            correlation_id: self.correlation_id,
            client_id: Some("wire-test".into()),
        };
        self.send(&encode_request(&header, &body));
    }

    /// Reads and decodes the response to the last request, API `key` at `version`.
    pub fn response(&mut self, key: i16, version: i16) -> ResponseBody {
        let frame = self
            .receive()
            .unwrap_or_else(|| panic!("API {key} v{version}: the broker closed the connection"));
        let (correlation_id, response) = decode_response(key, version, frame)
            .unwrap_or_else(|error| panic!("API {key} v{version}: {error}"));
        assert_eq!(correlation_id, self.correlation_id);
        response
    }
}
