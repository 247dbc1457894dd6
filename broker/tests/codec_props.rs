//! Property tests of the codec: arbitrary bytes never panic, and every
//! generated packet round-trips through encode and decode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use runnel_broker::codec::{
    self, ConnAck, Connect, ConnectReturnCode, LastWill, Packet, Publish, QoS, SubAck, SubAckCode,
    Subscribe, Unsubscribe,
};

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9/ é€_-]{0,40}"
}

fn topic() -> impl Strategy<Value = String> {
    "[a-z0-9/$]{1,40}"
}

fn payload() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn packet() -> impl Strategy<Value = Packet> {
    let id = 1..=u16::MAX;
    prop_oneof![
        (
            any::<bool>(),
            any::<u16>(),
            text(),
            proptest::option::of((topic(), payload(), qos(), any::<bool>())),
            proptest::option::of((text(), proptest::option::of(payload())))
        )
            .prop_map(|(clean, keep_alive_secs, client_id, will, login)| {
                let (username, password) = match login {
                    Some((user, password)) => (Some(user), password),
                    None => (None, None),
                };
                Packet::Connect(Connect {
                    protocol_level: 4,
                    clean_session: clean,
                    keep_alive_secs,
                    client_id,
                    will: will.map(|(topic, payload, qos, retain)| LastWill {
                        topic,
                        payload,
                        qos,
                        retain,
                    }),
                    username,
                    password,
                })
            }),
        (any::<bool>(), 0u8..6).prop_map(|(session_present, code)| Packet::ConnAck(ConnAck {
            session_present,
            code: ConnectReturnCode::from_u8(code).unwrap(),
        })),
        (
            qos(),
            any::<bool>(),
            any::<bool>(),
            topic(),
            id.clone(),
            payload()
        )
            .prop_map(
                |(qos, dup, retain, topic, id, payload)| Packet::Publish(Publish {
                    dup: dup && qos != QoS::AtMostOnce,
                    qos,
                    retain,
                    topic,
                    packet_id: (qos != QoS::AtMostOnce).then_some(id),
                    payload,
                })
            ),
        id.clone().prop_map(Packet::PubAck),
        id.clone().prop_map(Packet::PubRec),
        id.clone().prop_map(Packet::PubRel),
        id.clone().prop_map(Packet::PubComp),
        (id.clone(), proptest::collection::vec((text(), qos()), 1..5))
            .prop_map(|(packet_id, filters)| Packet::Subscribe(Subscribe { packet_id, filters })),
        (
            id.clone(),
            proptest::collection::vec(
                prop_oneof![
                    qos().prop_map(SubAckCode::Granted),
                    Just(SubAckCode::Failure)
                ],
                0..5
            )
        )
            .prop_map(|(packet_id, codes)| Packet::SubAck(SubAck { packet_id, codes })),
        (id.clone(), proptest::collection::vec(text(), 1..5)).prop_map(|(packet_id, filters)| {
            Packet::Unsubscribe(Unsubscribe { packet_id, filters })
        }),
        id.prop_map(Packet::UnsubAck),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        Just(Packet::Disconnect),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 2usize..1024) {
        let mut buf = BytesMut::from(&bytes[..]);
        // Decode until error or need-more; every step must consume or stop.
        while let Ok(Some(_)) = codec::decode(&mut buf, max) {}
    }

    #[test]
    fn encode_then_decode_round_trips(packets in proptest::collection::vec(packet(), 1..8)) {
        let mut buf = BytesMut::new();
        for packet in &packets {
            codec::encode(packet, &mut buf);
        }
        // Feed the stream in two pieces to exercise partial reads.
        let split = buf.len() / 2;
        let mut input = BytesMut::from(&buf[..split]);
        let mut decoded = Vec::new();
        while let Some(packet) = codec::decode(&mut input, 1 << 20).unwrap() {
            decoded.push(packet);
        }
        input.extend_from_slice(&buf[split..]);
        while let Some(packet) = codec::decode(&mut input, 1 << 20).unwrap() {
            decoded.push(packet);
        }
        prop_assert!(input.is_empty());
        prop_assert_eq!(decoded, packets);
    }

    #[test]
    fn truncated_packets_ask_for_more(packet in packet(), cut in 0usize..1000) {
        let mut buf = BytesMut::new();
        codec::encode(&packet, &mut buf);
        let cut = cut % buf.len();
        let mut partial = BytesMut::from(&buf[..cut]);
        prop_assert_eq!(codec::decode(&mut partial, 1 << 20), Ok(None));
    }
}
