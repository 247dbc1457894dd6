//! Encoding: packets to bytes.

use bytes::{BufMut, BytesMut};

use super::packet::{Connect, Packet, Publish, QoS, SubAckCode};

/// Appends the wire form of `packet` to `out`.
///
/// Strings longer than 65,535 bytes cannot be represented; callers only
/// encode strings that were decoded or validated, so they are truncated
/// rather than panicking (debug builds assert).
pub fn encode(packet: &Packet, out: &mut BytesMut) {
    match packet {
        Packet::Connect(connect) => encode_connect(connect, out),
        Packet::ConnAck(ack) => {
            out.put_slice(&[0x20, 2, u8::from(ack.session_present), ack.code as u8]);
        }
        Packet::Publish(publish) => encode_publish(publish, out),
        Packet::PubAck(id) => encode_ack(0x40, *id, out),
        Packet::PubRec(id) => encode_ack(0x50, *id, out),
        Packet::PubRel(id) => encode_ack(0x62, *id, out),
        Packet::PubComp(id) => encode_ack(0x70, *id, out),
        Packet::Subscribe(subscribe) => {
            let len = 2 + subscribe
                .filters
                .iter()
                .map(|(f, _)| 3 + f.len())
                .sum::<usize>();
            out.put_u8(0x82);
            put_remaining_length(len, out);
            out.put_u16(subscribe.packet_id);
            for (filter, qos) in &subscribe.filters {
                put_string(filter, out);
                out.put_u8(*qos as u8);
            }
        }
        Packet::SubAck(ack) => {
            out.put_u8(0x90);
            put_remaining_length(2 + ack.codes.len(), out);
            out.put_u16(ack.packet_id);
            for code in &ack.codes {
                out.put_u8(match code {
                    SubAckCode::Granted(qos) => *qos as u8,
                    SubAckCode::Failure => 0x80,
                });
            }
        }
        Packet::Unsubscribe(unsubscribe) => {
            let len = 2 + unsubscribe
                .filters
                .iter()
                .map(|f| 2 + f.len())
                .sum::<usize>();
            out.put_u8(0xa2);
            put_remaining_length(len, out);
            out.put_u16(unsubscribe.packet_id);
            for filter in &unsubscribe.filters {
                put_string(filter, out);
            }
        }
        Packet::UnsubAck(id) => encode_ack(0xb0, *id, out),
        Packet::PingReq => out.put_slice(&[0xc0, 0]),
        Packet::PingResp => out.put_slice(&[0xd0, 0]),
        Packet::Disconnect => out.put_slice(&[0xe0, 0]),
    }
}

/// Encodes a PUBLISH from its parts, so deliveries need not build a packet.
pub(crate) fn encode_publish_parts(
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    dup: bool,
    packet_id: Option<u16>,
    out: &mut BytesMut,
) {
    let topic = clamp(topic);
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let len = 2 + topic.len() + id_len + payload.len();
    out.reserve(len + 5);
    out.put_u8(0x30 | (u8::from(dup) << 3) | ((qos as u8) << 1) | u8::from(retain));
    put_remaining_length(len, out);
    out.put_u16(topic.len() as u16);
    out.put_slice(topic.as_bytes());
    if qos != QoS::AtMostOnce {
        out.put_u16(packet_id.unwrap_or(1));
    }
    out.put_slice(payload);
}

fn encode_publish(publish: &Publish, out: &mut BytesMut) {
    encode_publish_parts(
        &publish.topic,
        &publish.payload,
        publish.qos,
        publish.retain,
        publish.dup,
        publish.packet_id,
        out,
    );
}

fn encode_connect(connect: &Connect, out: &mut BytesMut) {
    let protocol_name = if connect.protocol_level == 3 {
        "MQIsdp"
    } else {
        "MQTT"
    };
    let mut flags = 0u8;
    let mut len = 2 + protocol_name.len() + 1 + 1 + 2 + 2 + connect.client_id.len();
    if connect.clean_session {
        flags |= 0x02;
    }
    if let Some(will) = &connect.will {
        flags |= 0x04 | ((will.qos as u8) << 3) | if will.retain { 0x20 } else { 0 };
        len += 4 + will.topic.len() + will.payload.len();
    }
    if let Some(username) = &connect.username {
        flags |= 0x80;
        len += 2 + username.len();
    }
    if let Some(password) = &connect.password {
        flags |= 0x40;
        len += 2 + password.len();
    }
    out.put_u8(0x10);
    put_remaining_length(len, out);
    put_string(protocol_name, out);
    out.put_u8(connect.protocol_level);
    out.put_u8(flags);
    out.put_u16(connect.keep_alive_secs);
    put_string(&connect.client_id, out);
    if let Some(will) = &connect.will {
        put_string(&will.topic, out);
        put_binary(&will.payload, out);
    }
    if let Some(username) = &connect.username {
        put_string(username, out);
    }
    if let Some(password) = &connect.password {
        put_binary(password, out);
    }
}

fn encode_ack(first: u8, packet_id: u16, out: &mut BytesMut) {
    out.put_u8(first);
    out.put_u8(2);
    out.put_u16(packet_id);
}

fn put_remaining_length(mut len: usize, out: &mut BytesMut) {
    debug_assert!(len < 268_435_456, "remaining length {len} is not encodable");
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

fn clamp(text: &str) -> &str {
    debug_assert!(
        text.len() <= usize::from(u16::MAX),
        "string too long to encode"
    );
    if text.len() <= usize::from(u16::MAX) {
        return text;
    }
    let mut end = usize::from(u16::MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn put_string(text: &str, out: &mut BytesMut) {
    let text = clamp(text);
    out.put_u16(text.len() as u16);
    out.put_slice(text.as_bytes());
}

fn put_binary(data: &[u8], out: &mut BytesMut) {
    let data = &data[..data.len().min(usize::from(u16::MAX))];
    out.put_u16(data.len() as u16);
    out.put_slice(data);
}
