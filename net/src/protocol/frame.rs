//! Request frames in, response frames out: the request header (v1, or v2 for flexible
//! versions), the body, and the response header (v0, or v1 for flexible versions, except
//! ApiVersions, whose response header is always v0 so any client can read it).
//!
//! A frame here is what follows the 4-byte size prefix; the connection reads the prefix and
//! bounds it.

use bytes::Bytes;

use super::api::{self, ApiRange, RequestBody, ResponseBody};
use super::codec::{DecodeError, Decoder, Encoder, Message};
use super::messages::{ApiVersionsRequest, RequestHeader, ResponseHeader};

/// A decoded request.
#[derive(Debug, Clone)]
pub struct Request {
    pub header: RequestHeader,
    pub body: RequestBody,
    /// The frame it was decoded from; `bytes` and `records` fields of the body are views
    /// of it. Produce splits its record batches out of it without copying them.
    pub frame: Bytes,
}

/// Why a frame yields no request to serve.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameError {
    /// Not a Kafka request (too short, bad header): close the connection.
    Malformed(DecodeError),
    /// A well-formed header for an API key this broker does not serve: close the connection
    /// (no response can be encoded for an unknown API).
    UnknownApi { header: RequestHeader },
    /// An ApiVersions request in a version newer than served: answer with
    /// UNSUPPORTED_VERSION and the served ranges in a v0 response, as Kafka does, so the
    /// client can retry with a version both sides know.
    ApiVersionsTooNew { header: RequestHeader },
    /// A served API in a version that is not: close the connection (clients negotiate
    /// versions first; Kafka does the same).
    UnsupportedVersion { header: RequestHeader },
    /// A served API and version whose body does not decode: close the connection.
    MalformedBody {
        header: RequestHeader,
        error: DecodeError,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Malformed(error) => write!(f, "{error}"),
            FrameError::UnknownApi { header } => {
                write!(f, "unknown API key {}", header.request_api_key)
            }
            FrameError::ApiVersionsTooNew { header } => write!(
                f,
                "ApiVersions version {} is newer than served",
                header.request_api_version
            ),
            FrameError::UnsupportedVersion { header } => write!(
                f,
                "API key {} version {} is not served",
                header.request_api_key, header.request_api_version
            ),
            FrameError::MalformedBody { header, error } => write!(
                f,
                "API key {} version {}: {error}",
                header.request_api_key, header.request_api_version
            ),
        }
    }
}

/// Decodes one request frame. The body's `bytes` and `records` fields share `frame`'s
/// memory.
pub fn decode_request(frame: Bytes) -> Result<Request, FrameError> {
    let mut decoder = Decoder::new(frame.clone());
    // The v1 part of the header (key, version, correlation id, client id) reads the same
    // for every API; whether tagged fields follow depends on the API and version.
    let mut header = RequestHeader::decode(&mut decoder, 1).map_err(FrameError::Malformed)?;
    let key = header.request_api_key;
    let version = header.request_api_version;
    let Some(range) = api::api(key) else {
        return Err(FrameError::UnknownApi { header });
    };
    if !range.supports(version) {
        if key == ApiVersionsRequest::API_KEY && version > range.max {
            return Err(FrameError::ApiVersionsTooNew { header });
        }
        return Err(FrameError::UnsupportedVersion { header });
    }
    if range.is_flexible(version)
        && let Err(error) = decoder.tagged_fields(|_, _| Ok(()))
    {
        return Err(FrameError::MalformedBody { header, error });
    }
    match RequestBody::decode(key, version, &mut decoder) {
        Ok(body) => {
            header.request_api_version = version;
            Ok(Request {
                header,
                body,
                frame,
            })
        }
        Err(error) => Err(FrameError::MalformedBody { header, error }),
    }
}

/// The response header version for API `range` at `version`.
fn response_header_version(range: &ApiRange, version: i16) -> i16 {
    if range.key == ApiVersionsRequest::API_KEY {
        0
    } else if range.is_flexible(version) {
        1
    } else {
        0
    }
}

/// Encodes a request frame without its size prefix (what [`decode_request`] reads), with
/// the header version `header`'s API and version call for.
pub fn encode_request(header: &RequestHeader, body: &RequestBody) -> Bytes {
    request_encoder(header, body).finish_bytes()
}

/// Encodes a request frame, size prefix included, as chunks to write in order (record
/// batches are chunks of their own, never copied): what a client sends.
pub fn encode_request_frame(header: &RequestHeader, body: &RequestBody) -> Vec<Bytes> {
    with_size_prefix(request_encoder(header, body))
}

fn request_encoder(header: &RequestHeader, body: &RequestBody) -> Encoder {
    let range = api::api(header.request_api_key).expect("requests are built for known APIs");
    let mut encoder = Encoder::new();
    let header_version = if range.is_flexible(header.request_api_version) {
        2
    } else {
        1
    };
    header.encode(&mut encoder, header_version);
    body.encode(&mut encoder, header.request_api_version);
    encoder
}

fn with_size_prefix(encoder: Encoder) -> Vec<Bytes> {
    let size = encoder.len() as i32;
    let mut chunks = vec![Bytes::copy_from_slice(&size.to_be_bytes())];
    chunks.extend(encoder.finish());
    chunks
}

/// Encodes a response frame, size prefix included, as chunks to write in order (stored
/// record batches are chunks of their own, never copied).
pub fn encode_response(correlation_id: i32, version: i16, body: &ResponseBody) -> Vec<Bytes> {
    let range = api::api(body.api_key()).expect("responses are built for served APIs");
    let mut encoder = Encoder::new();
    let header = ResponseHeader { correlation_id };
    header.encode(&mut encoder, response_header_version(range, version));
    body.encode(&mut encoder, version);
    with_size_prefix(encoder)
}

/// Decodes a response frame, without its size prefix, to a request of API `key` at
/// `version`: the correlation id and the body. Bytes left after the body are an error.
pub fn decode_response(
    key: i16,
    version: i16,
    frame: Bytes,
) -> Result<(i32, ResponseBody), DecodeError> {
    let range = api::api(key)
        .ok_or_else(|| DecodeError::new(format!("API key {key} is not known here")))?;
    let mut decoder = Decoder::new(frame);
    let header = ResponseHeader::decode(&mut decoder, response_header_version(range, version))?;
    let body = ResponseBody::decode(key, version, &mut decoder)?;
    if decoder.remaining() > 0 {
        return Err(DecodeError::new(format!(
            "{} bytes left after the response body",
            decoder.remaining()
        )));
    }
    Ok((header.correlation_id, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::{ApiVersionsResponse, api_versions_response::ApiVersion};

    /// kcat 1.7.1 (librdkafka 2.0.2)'s first request, captured from the wire, without its
    /// size prefix.
    const KCAT_API_VERSIONS: &str = "0012000300000001000772646b61666b6100\
        0b6c696272646b61666b6106322e302e3200";

    fn hex(text: &str) -> Bytes {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }

    #[test]
    fn decodes_the_api_versions_request_kcat_sends() {
        let request = decode_request(hex(KCAT_API_VERSIONS)).unwrap();
        assert_eq!(request.header.request_api_key, 18);
        assert_eq!(request.header.request_api_version, 3);
        assert_eq!(request.header.correlation_id, 1);
        assert_eq!(request.header.client_id.as_deref(), Some("rdkafka"));
        let RequestBody::ApiVersions(body) = request.body else {
            panic!("not ApiVersions: {:?}", request.body);
        };
        assert_eq!(body.client_software_name, "librdkafka");
        assert_eq!(body.client_software_version, "2.0.2");
    }

    /// An ApiVersions response serving Produce 3-11.
    fn produce_versions() -> ResponseBody {
        ResponseBody::ApiVersions(ApiVersionsResponse {
            api_keys: vec![ApiVersion {
                api_key: 0,
                min_version: 3,
                max_version: 11,
            }],
            ..ApiVersionsResponse::default()
        })
    }

    #[test]
    fn api_versions_response_header_stays_v0_and_default_tags_are_left_out() {
        let body = produce_versions();
        let frame = encode_response(7, 3, &body);
        let bytes = crate::protocol::codec::Records::new(frame).to_bytes();
        // size, correlation id (no header tags), error code, compact array of one
        // (key, min, max, no tags), throttle time, no tagged fields.
        let expected = hex("00000013 00000007 0000 02 0000 0003 000b 00 00000000 00");
        assert_eq!(bytes, expected);
    }

    #[test]
    fn responses_decode_as_encoded_and_trailing_bytes_are_refused() {
        let body = produce_versions();
        let frame = crate::protocol::codec::Records::new(encode_response(7, 3, &body)).to_bytes();
        let (correlation_id, decoded) = decode_response(18, 3, frame.slice(4..)).unwrap();
        assert_eq!((correlation_id, decoded), (7, body));
        let mut longer = frame.slice(4..).to_vec();
        longer.push(0);
        assert!(decode_response(18, 3, longer.into()).is_err());
        assert!(decode_response(999, 0, frame.slice(4..)).is_err());
    }

    #[test]
    fn unsupported_versions_and_unknown_keys_are_told_apart() {
        // ApiVersions v9: answered with the served versions.
        let too_new = hex("0012 0009 00000005 0000");
        assert!(matches!(
            decode_request(too_new),
            Err(FrameError::ApiVersionsTooNew { .. })
        ));
        // Produce v1: closed.
        let old = hex("0000 0001 00000005 0000");
        assert!(matches!(
            decode_request(old),
            Err(FrameError::UnsupportedVersion { .. })
        ));
        let unknown = hex("7fff 0000 00000005 0000");
        assert!(matches!(
            decode_request(unknown),
            Err(FrameError::UnknownApi { .. })
        ));
        assert!(matches!(
            decode_request(hex("0012")),
            Err(FrameError::Malformed(_))
        ));
    }

    /// The `kafka-protocol` 0.18 crash (base64 `ACEAAAD6AEEAAHEAAAg=`): AlterConfigs v0 whose
    /// array count claims far more elements than the frame holds. Refused, nothing allocated.
    #[test]
    fn the_fourteen_byte_alter_configs_request_is_refused() {
        let error = decode_request(hex("0021 0000 00fa 0041 0000 7100 0008")).unwrap_err();
        assert!(
            matches!(error, FrameError::MalformedBody { .. }),
            "{error:?}"
        );
    }
}
