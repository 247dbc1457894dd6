//! The in-process API used by runnel flows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::pin::pin;

use common::{RawClient, WAIT, config, start};
use runnel_broker::codec::QoS;
use runnel_broker::{Broker, BrokerConfig, Publish};

#[tokio::test]
async fn in_process_and_tcp_exchange_messages() {
    let (broker, addr) = start(config()).await;
    let mut local = broker.subscribe("car-iotp", QoS::AtLeastOnce).unwrap();
    let mut tcp = RawClient::connect(addr, "device").await;
    tcp.subscribe("car-iotp/location", QoS::AtLeastOnce).await;

    tcp.publish("car-iotp", b"{\"d\":{}}", QoS::AtLeastOnce, false, 1)
        .await;
    let delivery = tokio::time::timeout(WAIT, local.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (&*delivery.topic, delivery.qos),
        ("car-iotp", QoS::AtLeastOnce)
    );

    broker
        .publish(Publish::new("car-iotp/location", "{}").with_qos(QoS::AtLeastOnce))
        .await
        .unwrap();
    let publish = tcp.next_publish().await;
    assert_eq!(publish.topic, "car-iotp/location");
}

#[tokio::test]
async fn local_qos1_is_back_pressured_and_qos0_overflow_counted() {
    let broker = Broker::new(BrokerConfig {
        max_queued_per_client: 2,
        ..config()
    })
    .unwrap();
    let mut reliable = broker.subscribe("r", QoS::AtLeastOnce).unwrap();
    for _ in 0..2 {
        broker
            .publish(Publish::new("r", "x").with_qos(QoS::AtLeastOnce))
            .await
            .unwrap();
    }
    let mut third = pin!(broker.publish(Publish::new("r", "3").with_qos(QoS::AtLeastOnce)));
    assert!(
        futures::poll!(third.as_mut()).is_pending(),
        "full queue must back-pressure"
    );
    reliable.recv().await.unwrap();
    third.await.unwrap();

    let _lossy = broker.subscribe("z", QoS::AtMostOnce).unwrap();
    for _ in 0..5 {
        broker.publish(Publish::new("z", "x")).await.unwrap();
    }
    assert_eq!(broker.metrics().dropped_qos0_overflow, 3);
}

#[tokio::test]
async fn retained_first_properties_kept_and_shutdown_ends_subscriptions() {
    let broker = Broker::new(config()).unwrap();
    broker
        .publish(Publish::new("cfg", "v1").with_retain(true))
        .await
        .unwrap();
    let mut sub = broker.subscribe("#", QoS::AtMostOnce).unwrap();
    let first = sub.recv().await.unwrap();
    assert!(first.retain);
    let mut message = Publish::new("req", "ping");
    message.properties.response_topic = Some("reply".into());
    message
        .properties
        .user_properties
        .push(("k".into(), "v".into()));
    broker.publish(message).await.unwrap();
    let delivery = sub.recv().await.unwrap();
    assert_eq!(
        delivery.properties.unwrap().response_topic.as_deref(),
        Some("reply")
    );
    assert!(broker.publish(Publish::new("a/+", "bad")).await.is_err());
    broker.shutdown().await.unwrap();
    assert_eq!(sub.recv().await, None);
    assert!(broker.publish(Publish::new("a", "late")).await.is_err());
}
