//! Routes a decoded request to its handler, and answers ApiVersions.

use std::rc::Rc;

use bytes::Bytes;

use super::{Context, fetch, metadata, produce};
use crate::protocol::api::{self, RequestBody, ResponseBody};
use crate::protocol::codec::Message;
use crate::protocol::error_code;
use crate::protocol::frame::{self, Request};
use crate::protocol::messages::api_versions_response::ApiVersion;
use crate::protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, FetchRequest, ListOffsetsRequest, MetadataRequest,
    ProduceRequest,
};

/// The APIs this broker answers; ApiVersions lists exactly these.
const SERVED: &[i16] = &[
    ApiVersionsRequest::API_KEY,
    MetadataRequest::API_KEY,
    ProduceRequest::API_KEY,
    FetchRequest::API_KEY,
    ListOffsetsRequest::API_KEY,
];

pub fn is_served(key: i16) -> bool {
    SERVED.contains(&key)
}

fn api_versions(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse {
        error_code,
        api_keys: SERVED
            .iter()
            .map(|&key| {
                let range = api::api(key).expect("served APIs are in the table");
                ApiVersion {
                    api_key: key,
                    min_version: range.min,
                    max_version: range.max,
                }
            })
            .collect(),
        ..ApiVersionsResponse::default()
    }
}

/// The answer to an ApiVersions request newer than served: UNSUPPORTED_VERSION with the
/// served ranges, in version 0 so any client reads it.
pub fn api_versions_fallback(correlation_id: i32) -> Vec<Bytes> {
    let body = ResponseBody::ApiVersions(api_versions(error_code::UNSUPPORTED_VERSION));
    frame::encode_response(correlation_id, 0, &body)
}

/// Handles one request; `None` when the protocol wants no answer (Produce with acks=0).
pub async fn handle(context: &Rc<Context>, request: Request) -> Option<ResponseBody> {
    let version = request.header.request_api_version;
    Some(match request.body {
        RequestBody::ApiVersions(_) => ResponseBody::ApiVersions(api_versions(error_code::NONE)),
        RequestBody::Metadata(body) => {
            ResponseBody::Metadata(metadata::handle(context, body, version).await)
        }
        RequestBody::Produce(body) => ResponseBody::Produce(produce::handle(context, body).await?),
        RequestBody::Fetch(body) => {
            ResponseBody::Fetch(fetch::handle(context, body, version).await)
        }
        RequestBody::ListOffsets(body) => {
            ResponseBody::ListOffsets(fetch::list_offsets(context, body).await)
        }
        other => unreachable!("API key {} is not served", other.api_key()),
    })
}
