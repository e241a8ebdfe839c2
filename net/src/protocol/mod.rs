//! The Kafka wire protocol: primitives (`codec`), the messages generated from Kafka's
//! schemas (`messages`), and request framing (`frame`). Pure code: bytes in, values out.

pub mod api;
pub mod codec;
pub mod error_code;
pub mod frame;
pub mod messages;
