//! The APIs this broker serves, each with exactly the version range implemented and tested;
//! the decoded request and response bodies as enums over them.

use super::codec::{Decoder, Encoder, Message, Result};
use super::messages;

/// One API and the versions served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRange {
    pub key: i16,
    pub name: &'static str,
    pub min: i16,
    pub max: i16,
    /// The first flexible version of the request (header v2 from there on).
    pub flexible_min: Option<i16>,
}

impl ApiRange {
    pub fn supports(&self, version: i16) -> bool {
        (self.min..=self.max).contains(&version)
    }

    pub fn is_flexible(&self, version: i16) -> bool {
        self.flexible_min.is_some_and(|first| version >= first)
    }
}

macro_rules! apis {
    ($($variant:ident: $request:ident, $response:ident, $min:literal..=$max:literal;)*) => {
        /// A decoded request body.
        #[derive(Debug, Clone, PartialEq)]
        pub enum RequestBody {
            $($variant(messages::$request),)*
        }

        /// A response body, encoded in the request's version.
        #[derive(Debug, Clone, PartialEq)]
        pub enum ResponseBody {
            $($variant(messages::$response),)*
        }

        /// Every API served, by key.
        pub const APIS: &[ApiRange] = &[
            $(ApiRange {
                key: messages::$request::API_KEY,
                name: messages::$request::NAME,
                min: $min,
                max: $max,
                flexible_min: messages::$request::FLEXIBLE_MIN,
            },)*
        ];

        // The served ranges must lie within what the schemas define.
        const _: () = {
            $(
                assert!($min >= messages::$request::VERSION_MIN);
                assert!($max <= messages::$request::VERSION_MAX);
                assert!($max <= messages::$response::VERSION_MAX);
            )*
        };

        impl RequestBody {
            /// Decodes the body of API `key` at `version`; the caller has checked that the
            /// version is served.
            pub fn decode(key: i16, version: i16, decoder: &mut Decoder) -> Result<RequestBody> {
                $(
                    if key == messages::$request::API_KEY {
                        return Ok(RequestBody::$variant(messages::$request::decode(
                            decoder, version,
                        )?));
                    }
                )*
                Err(super::codec::DecodeError::new(format!("unknown API key {key}")))
            }

            pub fn encode(&self, encoder: &mut Encoder, version: i16) {
                match self {
                    $(RequestBody::$variant(body) => body.encode(encoder, version),)*
                }
            }

            pub fn api_key(&self) -> i16 {
                match self {
                    $(RequestBody::$variant(_) => messages::$request::API_KEY,)*
                }
            }
        }

        impl ResponseBody {
            /// Decodes the response body of API `key` at `version` (what a client reads).
            pub fn decode(key: i16, version: i16, decoder: &mut Decoder) -> Result<ResponseBody> {
                $(
                    if key == messages::$request::API_KEY {
                        return Ok(ResponseBody::$variant(messages::$response::decode(
                            decoder, version,
                        )?));
                    }
                )*
                Err(super::codec::DecodeError::new(format!("unknown API key {key}")))
            }

            pub fn encode(&self, encoder: &mut Encoder, version: i16) {
                match self {
                    $(ResponseBody::$variant(body) => body.encode(encoder, version),)*
                }
            }

            pub fn api_key(&self) -> i16 {
                match self {
                    $(ResponseBody::$variant(_) => messages::$request::API_KEY,)*
                }
            }
        }
    };
}

apis! {
    Produce: ProduceRequest, ProduceResponse, 3..=11;
    Fetch: FetchRequest, FetchResponse, 4..=17;
    ListOffsets: ListOffsetsRequest, ListOffsetsResponse, 1..=10;
    Metadata: MetadataRequest, MetadataResponse, 0..=12;
    OffsetCommit: OffsetCommitRequest, OffsetCommitResponse, 2..=9;
    OffsetFetch: OffsetFetchRequest, OffsetFetchResponse, 1..=9;
    FindCoordinator: FindCoordinatorRequest, FindCoordinatorResponse, 0..=6;
    JoinGroup: JoinGroupRequest, JoinGroupResponse, 0..=9;
    Heartbeat: HeartbeatRequest, HeartbeatResponse, 0..=4;
    LeaveGroup: LeaveGroupRequest, LeaveGroupResponse, 0..=5;
    SyncGroup: SyncGroupRequest, SyncGroupResponse, 0..=5;
    DescribeGroups: DescribeGroupsRequest, DescribeGroupsResponse, 0..=5;
    ListGroups: ListGroupsRequest, ListGroupsResponse, 0..=5;
    ApiVersions: ApiVersionsRequest, ApiVersionsResponse, 0..=4;
    CreateTopics: CreateTopicsRequest, CreateTopicsResponse, 2..=7;
    DeleteTopics: DeleteTopicsRequest, DeleteTopicsResponse, 1..=6;
    DeleteRecords: DeleteRecordsRequest, DeleteRecordsResponse, 0..=2;
    InitProducerId: InitProducerIdRequest, InitProducerIdResponse, 0..=5;
    OffsetForLeaderEpoch: OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, 2..=4;
    DescribeConfigs: DescribeConfigsRequest, DescribeConfigsResponse, 1..=4;
    AlterConfigs: AlterConfigsRequest, AlterConfigsResponse, 0..=2;
    CreatePartitions: CreatePartitionsRequest, CreatePartitionsResponse, 0..=3;
    DeleteGroups: DeleteGroupsRequest, DeleteGroupsResponse, 0..=2;
    IncrementalAlterConfigs: IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
        0..=1;
    DescribeCluster: DescribeClusterRequest, DescribeClusterResponse, 0..=1;
    DescribeLogDirs: DescribeLogDirsRequest, DescribeLogDirsResponse, 1..=4;
    ElectLeaders: ElectLeadersRequest, ElectLeadersResponse, 0..=2;
    AlterPartitionReassignments: AlterPartitionReassignmentsRequest,
        AlterPartitionReassignmentsResponse, 0..=0;
    ListPartitionReassignments: ListPartitionReassignmentsRequest,
        ListPartitionReassignmentsResponse, 0..=0;
    OffsetDelete: OffsetDeleteRequest, OffsetDeleteResponse, 0..=0;
}

/// The served range of API `key`, if served.
pub fn api(key: i16) -> Option<&'static ApiRange> {
    APIS.iter().find(|api| api.key == key)
}
