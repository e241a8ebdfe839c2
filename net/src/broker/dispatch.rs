//! Routes a decoded request to its handler, and answers ApiVersions.

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;

use super::{Context, fetch, groups, metadata, produce};
use crate::protocol::api::{self, RequestBody, ResponseBody};
use crate::protocol::codec::Message;
use crate::protocol::error_code;
use crate::protocol::frame::{self, Request};
use crate::protocol::messages::api_versions_response::ApiVersion;
use crate::protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, DeleteGroupsRequest, DescribeGroupsRequest,
    FetchRequest, FindCoordinatorRequest, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetFetchRequest, ProduceRequest, SyncGroupRequest,
};

/// The APIs this broker answers; ApiVersions lists exactly these.
const SERVED: &[i16] = &[
    ApiVersionsRequest::API_KEY,
    MetadataRequest::API_KEY,
    ProduceRequest::API_KEY,
    FetchRequest::API_KEY,
    ListOffsetsRequest::API_KEY,
    FindCoordinatorRequest::API_KEY,
    JoinGroupRequest::API_KEY,
    SyncGroupRequest::API_KEY,
    HeartbeatRequest::API_KEY,
    LeaveGroupRequest::API_KEY,
    OffsetCommitRequest::API_KEY,
    OffsetFetchRequest::API_KEY,
    ListGroupsRequest::API_KEY,
    DescribeGroupsRequest::API_KEY,
    DeleteGroupsRequest::API_KEY,
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

/// Handles one request from `peer`; `None` when the protocol wants no answer (Produce with
/// acks=0).
pub async fn handle(
    context: &Rc<Context>,
    request: Request,
    peer: Option<SocketAddr>,
) -> Option<ResponseBody> {
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
        RequestBody::FindCoordinator(body) => {
            ResponseBody::FindCoordinator(groups::find_coordinator(context, body, version))
        }
        RequestBody::JoinGroup(body) => {
            let client_id = request.header.client_id.unwrap_or_default();
            // Kafka shows the client's address as `/ip`.
            let client_host = peer.map_or_else(String::new, |peer| format!("/{}", peer.ip()));
            ResponseBody::JoinGroup(
                groups::join_group(context, body, version, client_id, client_host).await,
            )
        }
        RequestBody::SyncGroup(body) => {
            ResponseBody::SyncGroup(groups::sync_group(context, body).await)
        }
        RequestBody::Heartbeat(body) => {
            ResponseBody::Heartbeat(groups::heartbeat(context, body).await)
        }
        RequestBody::LeaveGroup(body) => {
            ResponseBody::LeaveGroup(groups::leave_group(context, body, version).await)
        }
        RequestBody::OffsetCommit(body) => {
            ResponseBody::OffsetCommit(groups::offset_commit(context, body, version).await)
        }
        RequestBody::OffsetFetch(body) => {
            ResponseBody::OffsetFetch(groups::offset_fetch(context, body, version).await)
        }
        RequestBody::ListGroups(body) => {
            ResponseBody::ListGroups(groups::list_groups(context, body).await)
        }
        RequestBody::DescribeGroups(body) => {
            ResponseBody::DescribeGroups(groups::describe_groups(context, body).await)
        }
        RequestBody::DeleteGroups(body) => {
            ResponseBody::DeleteGroups(groups::delete_groups(context, body).await)
        }
        other => unreachable!("API key {} is not served", other.api_key()),
    })
}
