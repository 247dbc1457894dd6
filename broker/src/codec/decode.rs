//! Decoding: bytes in, at most one packet out.

use bytes::{Buf, Bytes, BytesMut};

use super::CodecError;
use super::packet::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, Publish, QoS, SubAck, SubAckCode,
    Subscribe, Unsubscribe,
};

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` and leaves `buf` untouched when the packet is not
/// complete yet. A packet whose declared size exceeds `max_packet_size` is
/// refused as soon as its fixed header is readable, before it is buffered.
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Packet>, CodecError> {
    let Some((header_len, remaining_len)) = read_fixed_header(buf)? else {
        return Ok(None);
    };
    let total = header_len + remaining_len;
    if total > max_packet_size {
        return Err(CodecError::PacketTooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let first = buf[0];
    // The body is copied out of the read buffer: a payload that waits in a
    // subscriber queue then pins only its own packet, not the connection's
    // whole read buffer, and the read buffer stays reusable.
    let body = Bytes::copy_from_slice(&buf[header_len..total]);
    buf.advance(total);
    decode_body(first >> 4, first & 0x0f, body).map(Some)
}

/// Reads the fixed header: `(header length, remaining length)`.
fn read_fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, CodecError> {
    let mut remaining: usize = 0;
    for index in 0..4 {
        let Some(&byte) = buf.get(1 + index) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((2 + index, remaining)));
        }
    }
    // [MQTT-2.2.3] the remaining length uses at most four bytes.
    Err(CodecError::MalformedLength)
}

fn decode_body(packet_type: u8, flags: u8, mut body: Bytes) -> Result<Packet, CodecError> {
    // [MQTT-2.2.2-1] [MQTT-2.2.2-2] reserved flags must hold their fixed value.
    let expected_flags = match packet_type {
        3 => None,
        6 | 8 | 10 => Some(0b0010), // [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1]
        1..=14 => Some(0),
        _ => return Err(CodecError::UnknownPacketType(packet_type)),
    };
    if let Some(expected) = expected_flags
        && flags != expected
    {
        return Err(CodecError::InvalidFlags { packet_type, flags });
    }
    let packet = match packet_type {
        1 => Packet::Connect(decode_connect(&mut body)?),
        2 => {
            let ack_flags = read_u8(&mut body)?;
            let code = read_u8(&mut body)?;
            if ack_flags & 0xfe != 0 {
                return Err(CodecError::InvalidFlags {
                    packet_type,
                    flags: ack_flags,
                });
            }
            let code = ConnectReturnCode::from_u8(code).ok_or(CodecError::Truncated)?;
            Packet::ConnAck(ConnAck {
                session_present: ack_flags & 1 == 1,
                code,
            })
        }
        3 => Packet::Publish(decode_publish(flags, &mut body)?),
        4 => Packet::PubAck(read_packet_id(&mut body)?),
        5 => Packet::PubRec(read_packet_id(&mut body)?),
        6 => Packet::PubRel(read_packet_id(&mut body)?),
        7 => Packet::PubComp(read_packet_id(&mut body)?),
        8 => Packet::Subscribe(decode_subscribe(&mut body)?),
        9 => {
            let packet_id = read_packet_id(&mut body)?;
            let mut codes = Vec::with_capacity(body.len());
            while body.has_remaining() {
                codes.push(match body.get_u8() {
                    0x80 => SubAckCode::Failure,
                    value => SubAckCode::Granted(
                        QoS::from_u8(value).ok_or(CodecError::InvalidQoS(value))?,
                    ),
                });
            }
            Packet::SubAck(SubAck { packet_id, codes })
        }
        10 => {
            let packet_id = read_packet_id(&mut body)?;
            let mut filters = Vec::new();
            while body.has_remaining() {
                filters.push(read_string(&mut body)?);
            }
            if filters.is_empty() {
                // [MQTT-3.10.3-2]
                return Err(CodecError::EmptySubscription);
            }
            Packet::Unsubscribe(Unsubscribe { packet_id, filters })
        }
        11 => Packet::UnsubAck(read_packet_id(&mut body)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect,
        other => return Err(CodecError::UnknownPacketType(other)),
    };
    if body.has_remaining() {
        return Err(CodecError::TrailingBytes(body.remaining()));
    }
    Ok(packet)
}

fn decode_connect(body: &mut Bytes) -> Result<Connect, CodecError> {
    let protocol_name = read_string(body)?;
    let protocol_level = read_u8(body)?;
    match (protocol_name.as_str(), protocol_level) {
        ("MQTT", 4) | ("MQIsdp", 3) => {}
        // [MQTT-3.1.2-2] the server answers an unsupported level with
        // CONNACK 0x01, so this error is distinct from a bad name.
        ("MQTT", level) | ("MQIsdp", level) => {
            return Err(CodecError::UnsupportedProtocolLevel(level));
        }
        // [MQTT-3.1.2-1] any other protocol name: close without CONNACK.
        _ => return Err(CodecError::InvalidProtocolName),
    }
    let connect_flags = read_u8(body)?;
    let keep_alive_secs = read_u16(body)?;
    // [MQTT-3.1.2-3] the reserved flag must be zero.
    if connect_flags & 0x01 != 0 {
        return Err(CodecError::InvalidConnectFlags(connect_flags));
    }
    let clean_session = connect_flags & 0x02 != 0;
    let will_flag = connect_flags & 0x04 != 0;
    let will_qos = (connect_flags >> 3) & 0x03;
    let will_retain = connect_flags & 0x20 != 0;
    let password_flag = connect_flags & 0x40 != 0;
    let username_flag = connect_flags & 0x80 != 0;
    // [MQTT-3.1.2-13] [MQTT-3.1.2-15] without a will, its qos and retain are 0.
    // [MQTT-3.1.2-14] a will qos of 3 is malformed.
    // [MQTT-3.1.2-22] a password requires a username.
    if (!will_flag && (will_qos != 0 || will_retain))
        || will_qos == 3
        || (password_flag && !username_flag)
    {
        return Err(CodecError::InvalidConnectFlags(connect_flags));
    }
    let client_id = read_string(body)?;
    let will = if will_flag {
        let topic = read_string(body)?;
        validate_topic_name(&topic)?;
        let payload = read_binary(body)?;
        let qos = QoS::from_u8(will_qos).ok_or(CodecError::InvalidQoS(will_qos))?;
        Some(LastWill {
            topic,
            payload,
            qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(read_string(body)?)
    } else {
        None
    };
    let password = if password_flag {
        Some(read_binary(body)?)
    } else {
        None
    };
    Ok(Connect {
        protocol_level,
        clean_session,
        keep_alive_secs,
        client_id,
        will,
        username,
        password,
    })
}

fn decode_publish(flags: u8, body: &mut Bytes) -> Result<Publish, CodecError> {
    let dup = flags & 0b1000 != 0;
    let qos_bits = (flags >> 1) & 0b11;
    // [MQTT-3.3.1-4] qos 3 is malformed.
    let qos = QoS::from_u8(qos_bits).ok_or(CodecError::InvalidQoS(qos_bits))?;
    // [MQTT-3.3.1-2] DUP must be 0 for qos 0.
    if dup && qos == QoS::AtMostOnce {
        return Err(CodecError::InvalidFlags {
            packet_type: 3,
            flags,
        });
    }
    let retain = flags & 0b0001 != 0;
    let topic = read_string(body)?;
    validate_topic_name(&topic)?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(read_packet_id(body)?)
    };
    let payload = std::mem::take(body);
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload,
    })
}

fn decode_subscribe(body: &mut Bytes) -> Result<Subscribe, CodecError> {
    let packet_id = read_packet_id(body)?;
    let mut filters = Vec::new();
    while body.has_remaining() {
        let filter = read_string(body)?;
        let requested = read_u8(body)?;
        // [MQTT-3.8.3-4] reserved bits of the requested qos must be 0.
        let qos = QoS::from_u8(requested).ok_or(CodecError::InvalidQoS(requested))?;
        filters.push((filter, qos));
    }
    if filters.is_empty() {
        // [MQTT-3.8.3-3]
        return Err(CodecError::EmptySubscription);
    }
    Ok(Subscribe { packet_id, filters })
}

/// [MQTT-3.3.2-2] a topic name has no wildcards; [MQTT-4.7.3-1] it is not empty.
fn validate_topic_name(topic: &str) -> Result<(), CodecError> {
    if topic.is_empty() || topic.contains(['+', '#']) {
        return Err(CodecError::InvalidTopic);
    }
    Ok(())
}

fn read_u8(body: &mut Bytes) -> Result<u8, CodecError> {
    if body.remaining() < 1 {
        return Err(CodecError::Truncated);
    }
    Ok(body.get_u8())
}

fn read_u16(body: &mut Bytes) -> Result<u16, CodecError> {
    if body.remaining() < 2 {
        return Err(CodecError::Truncated);
    }
    Ok(body.get_u16())
}

/// [MQTT-2.3.1-1] packet identifiers are non-zero.
fn read_packet_id(body: &mut Bytes) -> Result<u16, CodecError> {
    match read_u16(body)? {
        0 => Err(CodecError::ZeroPacketId),
        id => Ok(id),
    }
}

fn read_binary(body: &mut Bytes) -> Result<Bytes, CodecError> {
    let len = usize::from(read_u16(body)?);
    if body.remaining() < len {
        return Err(CodecError::Truncated);
    }
    Ok(body.split_to(len))
}

/// [MQTT-1.5.3-1] well-formed UTF-8; [MQTT-1.5.3-2] no U+0000.
fn read_string(body: &mut Bytes) -> Result<String, CodecError> {
    let raw = read_binary(body)?;
    let text = std::str::from_utf8(&raw).map_err(|_| CodecError::InvalidString)?;
    if text.contains('\0') {
        return Err(CodecError::InvalidString);
    }
    Ok(text.to_owned())
}
