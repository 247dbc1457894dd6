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
        // Pure back-pressure here; eviction is tested in protocol.rs.
        slow_consumer_timeout: None,
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

/// A client subscribed to its own QoS 1 publishes: its read loop waits for
/// room in its own queue, so it stops reading its PUBACKs and its inflight
/// window never frees. Without `slow_consumer_timeout` this deadlocks; with
/// it the client is disconnected as a slow consumer and the broker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_subscribed_qos1_loop_is_broken_by_slow_consumer_timeout() {
    let (broker, addr) = start(BrokerConfig {
        max_queued_per_client: 10,
        max_inflight: 2,
        slow_consumer_timeout: Some(std::time::Duration::from_millis(200)),
        ..config()
    })
    .await;
    let mut client = RawClient::connect(addr, "echo").await;
    client.subscribe("echo", QoS::AtLeastOnce).await;
    let (mut read_half, write_half) = client.stream.into_split();
    // One lock around the write half keeps publishes and acks whole frames.
    let write_half = std::sync::Arc::new(tokio::sync::Mutex::new(write_half));
    let ack_half = write_half.clone();
    let writer = tokio::spawn(async move {
        for i in 1..=200u16 {
            let mut out = BytesMut::new();
            codec::encode(
                &Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: "echo".into(),
                    packet_id: Some(i),
                    payload: Bytes::from_static(b"x"),
                }),
                &mut out,
            );
            if write_half.lock().await.write_all(&out).await.is_err() {
                break;
            }
        }
    });
    // Read everything, acknowledge every delivery, until the broker closes.
    let ended = tokio::time::timeout(common::WAIT, async move {
        let mut buf = BytesMut::new();
        loop {
            while let Some(packet) = codec::decode(&mut buf, 1 << 20).unwrap() {
                if let Packet::Publish(Publish {
                    packet_id: Some(id),
                    ..
                }) = packet
                {
                    let mut out = BytesMut::new();
                    codec::encode(&Packet::PubAck(id), &mut out);
                    let _ = ack_half.lock().await.write_all(&out).await;
                }
            }
            match read_half.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "client neither finished nor was disconnected"
    );
    let _ = writer.await;
    assert!(broker.metrics().slow_consumers_disconnected >= 1);
    RawClient::connect(addr, "after").await.sync().await;
}
