//! A deliberately slow subscriber under a flood: memory stays bounded,
//! QoS 0 overflow is dropped and counted, QoS 1 is back-pressured and never
//! lost, and the broker keeps accepting connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::{RawClient, config, start};
use runnel_broker::BrokerConfig;
use runnel_broker::codec::{self, Packet, Publish, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_QUEUED: usize = 100;
const MAX_INFLIGHT: u16 = 16;
const PAYLOAD: usize = 10 * 1024;
const QOS1_MESSAGES: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_flood_is_bounded_and_loses_no_qos1() {
    let (broker, addr) = start(BrokerConfig {
        max_queued_per_client: MAX_QUEUED,
        max_inflight: MAX_INFLIGHT,
        ..config()
    })
    .await;
    let bound = (MAX_QUEUED + usize::from(MAX_INFLIGHT)) as u64;

    let mut slow = RawClient::connect(addr, "slow").await;
    slow.subscribe("flood", QoS::AtLeastOnce).await;

    // QoS 0 flood: never blocks the publisher, overflow is dropped and counted.
    let mut qos0 = RawClient::connect(addr, "qos0").await;
    for _ in 0..3000 {
        qos0.publish("flood", &[0u8; PAYLOAD], QoS::AtMostOnce, false, 0)
            .await;
    }
    qos0.sync().await;
    let after_qos0 = broker.metrics();
    assert!(after_qos0.dropped_qos0_overflow > 0);
    assert!(after_qos0.queued_messages <= bound, "{after_qos0:?}");

    // The broker still accepts and serves new clients.
    RawClient::connect(addr, "fresh").await.sync().await;

    // QoS 1 flood from a publisher that reads its PUBACKs concurrently.
    let publisher = RawClient::connect(addr, "qos1").await;
    let (mut read_half, mut write_half) = publisher.stream.into_split();
    let writer = tokio::spawn(async move {
        for i in 0..QOS1_MESSAGES {
            let mut out = BytesMut::new();
            codec::encode(
                &Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: "flood".into(),
                    packet_id: Some(u16::try_from(i + 1).unwrap()),
                    payload: Bytes::from(vec![1u8; PAYLOAD]),
                }),
                &mut out,
            );
            write_half.write_all(&out).await.unwrap();
        }
        write_half
    });
    let acks = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut acked = 0;
        while acked < QOS1_MESSAGES {
            while let Some(packet) = codec::decode(&mut buf, 1 << 20).unwrap() {
                if matches!(packet, Packet::PubAck(_)) {
                    acked += 1;
                }
            }
            if acked == QOS1_MESSAGES || read_half.read_buf(&mut buf).await.unwrap() == 0 {
                break;
            }
        }
        acked
    });
    // While the subscriber does not read, the queue never passes its bound.
    for _ in 0..20 {
        let queued = broker.metrics().queued_messages;
        assert!(queued <= bound, "queued {queued} > {bound}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        RawClient::connect(addr, "probe").await;
    }

    // Now the subscriber reads and acknowledges: every QoS 1 message arrives.
    let mut qos1_received = 0;
    while qos1_received < QOS1_MESSAGES {
        let publish = slow.next_publish().await;
        if publish.qos == QoS::AtLeastOnce {
            assert_eq!(publish.payload[0], 1);
            qos1_received += 1;
            slow.send(&Packet::PubAck(publish.packet_id.unwrap())).await;
        }
    }
    let _write_half = writer.await.unwrap();
    assert_eq!(acks.await.unwrap(), QOS1_MESSAGES);
    assert_eq!(broker.metrics().dropped_offline_overflow, 0);
}
