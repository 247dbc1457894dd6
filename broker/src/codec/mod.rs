//! MQTT 3.1.1 packet codec: pure functions over byte buffers, no I/O.
//!
//! `decode` takes bytes read from a socket and returns at most one complete
//! packet; `Ok(None)` means "need more bytes". Every protocol violation the
//! specification tells the server to answer by closing the connection is a
//! [`CodecError`], never a panic: the codec is fed directly by clients and is
//! covered by a property test (`tests/codec_props.rs`).

mod decode;
mod encode;
mod packet;

pub use decode::decode;
pub use encode::encode;
pub(crate) use encode::encode_publish_parts;
pub use packet::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, Publish, QoS, SubAck, SubAckCode,
    Subscribe, Unsubscribe,
};

/// Why a byte stream is not a valid MQTT 3.1.1 packet sequence.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge { size: usize, max: usize },
    #[error("malformed remaining length")]
    MalformedLength,
    #[error("unknown packet type {0}")]
    UnknownPacketType(u8),
    #[error("invalid fixed header flags {flags:#06b} for packet type {packet_type}")]
    InvalidFlags { packet_type: u8, flags: u8 },
    #[error("invalid qos {0}")]
    InvalidQoS(u8),
    #[error("packet is shorter than its fields")]
    Truncated,
    #[error("packet has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    #[error("string is not well-formed utf-8 or contains U+0000")]
    InvalidString,
    #[error("unsupported protocol name")]
    InvalidProtocolName,
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    #[error("invalid connect flags {0:#010b}")]
    InvalidConnectFlags(u8),
    #[error("packet identifier must be non-zero")]
    ZeroPacketId,
    #[error("topic name is invalid")]
    InvalidTopic,
    #[error("subscribe or unsubscribe without any topic filter")]
    EmptySubscription,
}
