//! Persistent sessions and retained messages survive a broker restart
//! when `data_dir` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{RawClient, config, connect_packet, start};
use runnel_broker::BrokerConfig;
use runnel_broker::codec::{Packet, QoS};

#[tokio::test]
async fn queued_qos1_and_retained_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let with_dir = || BrokerConfig {
        data_dir: Some(dir.path().to_owned()),
        ..config()
    };

    let (broker, addr) = start(with_dir()).await;
    let (mut client, _) = RawClient::connect_with(addr, connect_packet("tracker", false)).await;
    client.subscribe("cars/+/location", QoS::AtLeastOnce).await;
    client.send(&Packet::Disconnect).await;
    assert!(client.closed_by_broker().await);
    let mut publisher = RawClient::connect(addr, "pub").await;
    publisher
        .publish("cars/1/location", b"queued", QoS::AtLeastOnce, false, 1)
        .await;
    publisher
        .publish("status", b"retained", QoS::AtMostOnce, true, 0)
        .await;
    publisher.sync().await;
    broker.shutdown().await.unwrap();

    let (broker, addr) = start(with_dir()).await;
    let (mut client, present) =
        RawClient::connect_with(addr, connect_packet("tracker", false)).await;
    assert!(present, "session not restored");
    let publish = client.next_publish().await;
    assert_eq!(
        (&publish.payload[..], publish.topic.as_str()),
        (&b"queued"[..], "cars/1/location")
    );
    client
        .send(&Packet::PubAck(publish.packet_id.unwrap()))
        .await;
    // The subscription was restored too.
    let mut publisher = RawClient::connect(addr, "pub").await;
    publisher
        .publish("cars/2/location", b"live", QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(&client.next_publish().await.payload[..], b"live");

    let mut late = RawClient::connect(addr, "late").await;
    late.subscribe("status", QoS::AtMostOnce).await;
    let retained = late.next_publish().await;
    assert_eq!(
        (&retained.payload[..], retained.retain),
        (&b"retained"[..], true)
    );
    broker.shutdown().await.unwrap();
}

#[tokio::test]
async fn periodic_snapshot_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let with_dir = || BrokerConfig {
        data_dir: Some(dir.path().to_owned()),
        persist_interval: Some(std::time::Duration::from_millis(50)),
        ..config()
    };
    let (crashed, _) = start(with_dir()).await;
    crashed
        .publish(runnel_broker::Publish::new("last/known", "position").with_retain(true))
        .await
        .unwrap();
    // No shutdown: the first broker is simply abandoned, as in a crash.
    let file = dir.path().join("broker-state.json");
    let mut restored = false;
    for _ in 0..200 {
        if std::fs::read_to_string(&file).is_ok_and(|text| text.contains("last/known")) {
            restored = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(restored, "no snapshot written");
    let (broker, _) = start(with_dir()).await;
    let mut sub = broker.subscribe("last/#", QoS::AtMostOnce).unwrap();
    assert_eq!(&sub.recv().await.unwrap().payload[..], b"position");
    drop(crashed);
}
