//! Arbitrary bytes as a Kafka request frame: header, version checks, every served API's
//! body decoder. Errors are fine; panics, hangs and allocations beyond the frame's size are
//! not. A request that decodes must survive a round trip: encoding it in its version and
//! decoding that gives the same request.
#![no_main]

use bytes::Bytes;
use coremq_net::protocol::codec::{Decoder, Encoder};
use coremq_net::protocol::frame::decode_request;
use coremq_net::protocol::api::RequestBody;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = decode_request(Bytes::copy_from_slice(data)) else {
        return;
    };
    let version = request.header.request_api_version;
    let mut encoder = Encoder::new();
    request.body.encode(&mut encoder, version);
    let mut decoder = Decoder::new(encoder.finish_bytes());
    let again = RequestBody::decode(request.body.api_key(), version, &mut decoder)
        .expect("an encoded request decodes");
    assert_eq!(again, request.body);
});
