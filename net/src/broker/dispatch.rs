//! Routes a decoded request to its handler, and answers ApiVersions: every API the
//! decoder knows (`protocol::api::APIS`) is served, with exactly its version range.

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;

use super::{Context, admin, fetch, groups, metadata, produce, producer_ids, replicas};
use crate::protocol::api::{self, RequestBody, ResponseBody};
use crate::protocol::error_code;
use crate::protocol::frame::{self, FrameError, Request};
use crate::protocol::messages::ApiVersionsResponse;
use crate::protocol::messages::api_versions_response::ApiVersion;
use crate::server::Incoming;

fn api_versions(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse {
        error_code,
        api_keys: api::APIS
            .iter()
            .map(|range| ApiVersion {
                api_key: range.key,
                min_version: range.min,
                max_version: range.max,
            })
            .collect(),
        ..ApiVersionsResponse::default()
    }
}

/// The answer to an ApiVersions request newer than served: UNSUPPORTED_VERSION with the
/// served ranges, in version 0 so any client reads it.
fn api_versions_fallback(correlation_id: i32) -> Vec<Bytes> {
    let body = ResponseBody::ApiVersions(api_versions(error_code::UNSUPPORTED_VERSION));
    frame::encode_response(correlation_id, 0, &body)
}

/// Decodes one request frame (without its size prefix) and counts it. An error means the
/// frame is not a request this broker can answer: the connection closes.
pub fn decode(context: &Context, frame: Bytes) -> Result<Incoming<Request>, FrameError> {
    match frame::decode_request(frame) {
        Ok(request) => {
            *context
                .requests
                .borrow_mut()
                .entry(request.header.request_api_key)
                .or_default() += 1;
            Ok(Incoming::Request(request))
        }
        Err(FrameError::ApiVersionsTooNew { header }) => Ok(Incoming::Answered(
            api_versions_fallback(header.correlation_id),
        )),
        Err(error) => Err(error),
    }
}

/// Handles `request` and encodes its response frame; `None` when the protocol wants none.
pub async fn respond(
    context: &Rc<Context>,
    request: Request,
    peer: Option<SocketAddr>,
) -> Option<Vec<Bytes>> {
    let correlation_id = request.header.correlation_id;
    let version = request.header.request_api_version;
    let key = request.header.request_api_key;
    let started = std::time::Instant::now();
    let body = handle(context, request, peer).await;
    let response = body.map(|body| frame::encode_response(correlation_id, version, &body));
    let seconds = started.elapsed().as_secs_f64();
    context
        .latency
        .borrow_mut()
        .entry(key)
        .or_default()
        .observe(seconds);
    response
}

/// Handles one request from `peer`; `None` when the protocol wants no answer (Produce with
/// acks=0).
async fn handle(
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
        RequestBody::Produce(body) => {
            ResponseBody::Produce(produce::handle(context, body, request.frame).await?)
        }
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
        RequestBody::CreateTopics(body) => {
            ResponseBody::CreateTopics(admin::create_topics(context, body, version).await)
        }
        RequestBody::DeleteTopics(body) => {
            ResponseBody::DeleteTopics(admin::delete_topics(context, body, version).await)
        }
        RequestBody::CreatePartitions(body) => {
            ResponseBody::CreatePartitions(admin::create_partitions(context, body).await)
        }
        RequestBody::DescribeConfigs(body) => {
            ResponseBody::DescribeConfigs(admin::describe_configs(context, body, version).await)
        }
        RequestBody::AlterConfigs(body) => {
            ResponseBody::AlterConfigs(admin::alter_configs(context, body).await)
        }
        RequestBody::IncrementalAlterConfigs(body) => ResponseBody::IncrementalAlterConfigs(
            admin::incremental_alter_configs(context, body).await,
        ),
        RequestBody::DeleteRecords(body) => {
            ResponseBody::DeleteRecords(admin::delete_records(context, body).await)
        }
        RequestBody::DescribeCluster(body) => {
            ResponseBody::DescribeCluster(admin::describe_cluster(context, body))
        }
        RequestBody::OffsetForLeaderEpoch(body) => {
            ResponseBody::OffsetForLeaderEpoch(admin::offset_for_leader_epoch(context, body).await)
        }
        RequestBody::OffsetDelete(body) => {
            ResponseBody::OffsetDelete(groups::offset_delete(context, body).await)
        }
        RequestBody::ElectLeaders(body) => {
            ResponseBody::ElectLeaders(replicas::elect_leaders(context, body).await)
        }
        RequestBody::AlterPartitionReassignments(body) => {
            ResponseBody::AlterPartitionReassignments(
                replicas::alter_partition_reassignments(context, body).await,
            )
        }
        RequestBody::ListPartitionReassignments(body) => ResponseBody::ListPartitionReassignments(
            replicas::list_partition_reassignments(context, body),
        ),
        RequestBody::DescribeLogDirs(body) => {
            ResponseBody::DescribeLogDirs(replicas::describe_log_dirs(context, body).await)
        }
        RequestBody::InitProducerId(body) => {
            ResponseBody::InitProducerId(producer_ids::init_producer_id(context, body).await)
        }
    })
}
