//! What brokers' metadata nodes send each other: quorum messages between the controller
//! voters, requests forwarded to the active controller with their answers, and the
//! committed records (or a snapshot of the image, where a voter's log no longer holds them)
//! observers fetch from the voters. The transport
//! (TCP between brokers, in `net/`; a simulated network in tests) moves opaque frames and
//! may lose, repeat or reorder them: Raft tolerates that, and a forwarded request whose
//! answer is lost times out as [`crate::Error::NotController`], as one to a controller that
//! moved on does.
//!
//! A frame is postcard: the sender's broker id, then the [`Frame`]. Decoding is bounded by
//! the bytes present ([`decode`]); a quorum message inside is decoded by
//! [`quorum::decode_message`], never by raft-rs's protobuf decoder.

use raft::eraftpb::Message;
use serde::{Deserialize, Serialize};

use crate::controller::{ControllerError, Reply, Request};
use crate::leader::BrokerId;
use crate::metadata::Record;
use crate::quorum;

/// Where a broker's controller listener is reached: host and port.
pub type Address = (String, u16);

/// The links to the other brokers a metadata node talks to.
pub struct Transport {
    /// Encoded frames to send, each to a broker; the transport may drop any.
    pub outgoing: flume::Sender<(BrokerId, Vec<u8>)>,
    /// Where brokers outside the voters (observers) listen, as they say: the voters are
    /// reached at their configured addresses, observers here.
    pub routes: flume::Sender<(BrokerId, Address)>,
    /// Encoded frames other brokers sent.
    pub incoming: flume::Receiver<Vec<u8>>,
    /// Brokers whose controller port refused a connection (no process listens there).
    pub refused: flume::Receiver<BrokerId>,
}

/// One message between metadata nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A quorum (Raft) message.
    Quorum(Message),
    /// A request for the active controller; `id` matches the answer to it.
    Ask { id: u64, request: Request },
    /// The controller's answer to the sender's request `id`: on success with the metadata
    /// log index the asker must have applied before it answers (so what it asked for is in
    /// its own image by then).
    Answer {
        id: u64,
        outcome: Result<(Reply, u64), Refusal>,
    },
    /// An observer (a broker outside the quorum) asks a voter for the committed records from
    /// index `from`; the voter answers at `reply_to`, the observer's controller listener.
    Fetch { from: u64, reply_to: Address },
    /// A voter's answer to [`Frame::Fetch`]: the committed `records` (with their indexes)
    /// up to index `through`, the voter's commit index, and the quorum leader it knows.
    Records {
        records: Vec<(u64, Record)>,
        through: u64,
        committed: u64,
        leader: Option<BrokerId>,
    },
    /// A voter's answer to a [`Frame::Fetch`] from an index its log no longer holds: the
    /// image (`MetadataImage::encode`) as of index `index`, which replaces the observer's.
    Snapshot {
        index: u64,
        image: Vec<u8>,
        committed: u64,
        leader: Option<BrokerId>,
    },
}

/// Why a forwarded request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The broker asked is not (or no longer) the active controller.
    NotController,
    /// The controller refused it.
    Controller(ControllerError),
}

/// [`Frame`] as it travels (the quorum message in its own encoding).
#[derive(Serialize, Deserialize)]
enum Wire {
    Quorum(Vec<u8>),
    Ask {
        id: u64,
        request: Request,
    },
    Answer {
        id: u64,
        outcome: Result<(Reply, u64), Refusal>,
    },
    Fetch {
        from: u64,
        reply_to: Address,
    },
    Records {
        records: Vec<(u64, Record)>,
        through: u64,
        committed: u64,
        leader: Option<BrokerId>,
    },
    /// A voter's answer to a [`Frame::Fetch`] from an index its log no longer holds: the
    /// image (`MetadataImage::encode`) as of index `index`, which replaces the observer's.
    Snapshot {
        index: u64,
        image: Vec<u8>,
        committed: u64,
        leader: Option<BrokerId>,
    },
}

/// `frame` from broker `from`, encoded.
pub fn encode(from: BrokerId, frame: &Frame) -> Vec<u8> {
    let wire = match frame {
        Frame::Quorum(message) => Wire::Quorum(quorum::encode_message(message)),
        Frame::Ask { id, request } => Wire::Ask {
            id: *id,
            request: request.clone(),
        },
        Frame::Answer { id, outcome } => Wire::Answer {
            id: *id,
            outcome: outcome.clone(),
        },
        Frame::Fetch { from, reply_to } => Wire::Fetch {
            from: *from,
            reply_to: reply_to.clone(),
        },
        Frame::Records {
            records,
            through,
            committed,
            leader,
        } => Wire::Records {
            records: records.clone(),
            through: *through,
            committed: *committed,
            leader: *leader,
        },
        Frame::Snapshot {
            index,
            image,
            committed,
            leader,
        } => Wire::Snapshot {
            index: *index,
            image: image.clone(),
            committed: *committed,
            leader: *leader,
        },
    };
    postcard::to_stdvec(&(from, wire)).expect("frames serialize")
}

/// The sender and frame in `bytes`, or why they are not a frame.
pub fn decode(bytes: &[u8]) -> Result<(BrokerId, Frame), String> {
    if bytes.len() > quorum::MESSAGE_BYTES_MAX {
        return Err(format!("a frame of {} bytes", bytes.len()));
    }
    let (from, wire) = match postcard::take_from_bytes::<(BrokerId, Wire)>(bytes) {
        Ok((decoded, [])) => decoded,
        Ok((_, rest)) => return Err(format!("{} bytes after the frame", rest.len())),
        Err(error) => return Err(format!("not a metadata frame: {error}")),
    };
    let frame = match wire {
        Wire::Quorum(message) => Frame::Quorum(quorum::decode_message(&message)?),
        Wire::Ask { id, request } => Frame::Ask { id, request },
        Wire::Answer { id, outcome } => Frame::Answer { id, outcome },
        Wire::Fetch { from, reply_to } => Frame::Fetch { from, reply_to },
        Wire::Records {
            records,
            through,
            committed,
            leader,
        } => Frame::Records {
            records,
            through,
            committed,
            leader,
        },
        Wire::Snapshot {
            index,
            image,
            committed,
            leader,
        } => Frame::Snapshot {
            index,
            image,
            committed,
            leader,
        },
    };
    Ok((from, frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::HeartbeatReply;
    use raft::eraftpb::{Entry, MessageType};

    #[test]
    fn frames_round_trip() {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.to = 2;
        message.from = 1;
        message.term = 7;
        message.entries.push(Entry {
            index: 3,
            term: 7,
            data: b"record".to_vec().into(),
            ..Entry::default()
        });
        let frames = [
            Frame::Quorum(message),
            Frame::Ask {
                id: 9,
                request: Request::Heartbeat {
                    id: 1,
                    shutting_down: false,
                },
            },
            Frame::Answer {
                id: 9,
                outcome: Ok((
                    Reply::Heartbeat(HeartbeatReply {
                        fenced: false,
                        shutdown_ready: false,
                    }),
                    41,
                )),
            },
            Frame::Answer {
                id: 10,
                outcome: Err(Refusal::Controller(ControllerError::TopicExists(
                    "t".into(),
                ))),
            },
            Frame::Fetch {
                from: 12,
                reply_to: ("broker-3.coremq".into(), 9093),
            },
            Frame::Records {
                records: vec![(
                    12,
                    Record::BrokerFence {
                        id: 3,
                        fenced: false,
                    },
                )],
                through: 13,
                committed: 20,
                leader: Some(1),
            },
            Frame::Snapshot {
                index: 40,
                image: crate::metadata::MetadataImage::default().encode(),
                committed: 45,
                leader: None,
            },
        ];
        for frame in frames {
            assert_eq!(decode(&encode(4, &frame)), Ok((4, frame)));
        }
    }

    #[test]
    fn truncated_or_padded_frames_are_refused() {
        let bytes = encode(
            1,
            &Frame::Ask {
                id: 1,
                request: Request::DeleteTopic { name: "t".into() },
            },
        );
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "{cut} bytes decoded");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(decode(&padded).unwrap_err().contains("after the frame"));
        // A length claiming far more elements than there are bytes allocates nothing.
        let huge = [0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode(&huge).is_err());
    }
}
