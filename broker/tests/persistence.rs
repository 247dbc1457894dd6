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
