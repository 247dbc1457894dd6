//! Subscribe-deny ACL rules against wildcard filters, as the Eclipse Paho
//! interoperability suite configures them (`test/nosubscribe` denied):
//! a filter the rule covers is refused, a filter it only overlaps is
//! granted and never delivers the denied topics, retained or live.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{RawClient, config, connect_packet, start};
use runnel_broker::codec::{Packet, Publish, QoS, SubAck, SubAckCode, Subscribe};
use runnel_broker::{Access, AclRule, BrokerConfig};

const DENIED: &str = "test/nosubscribe";

fn deny_nosubscribe() -> BrokerConfig {
    BrokerConfig {
        acl: vec![AclRule {
            username: None,
            topic: DENIED.into(),
            access: Access::Subscribe,
            deny: true,
        }],
        ..config()
    }
}

/// Publishes up to and including the one on `marker`; the publisher sends
/// the marker last, so everything it sent before has been routed by then.
async fn publishes_until(client: &mut RawClient, marker: &str) -> Vec<Publish> {
    let mut seen = Vec::new();
    loop {
        let publish = client.next_publish().await;
        if let Some(id) = publish.packet_id {
            client.send(&Packet::PubAck(id)).await;
        }
        let done = publish.topic == marker;
        seen.push(publish);
        if done {
            return seen;
        }
    }
}

fn topics(publishes: &[Publish]) -> Vec<(&str, bool)> {
    publishes
        .iter()
        .map(|p| (p.topic.as_str(), p.retain))
        .collect()
}

#[tokio::test]
async fn mqtt_3_8_4_5_denied_filter_fails_overlapping_filters_are_granted_without_it() {
    let (_broker, addr) = start(deny_nosubscribe()).await;
    let mut publisher = RawClient::connect(addr, "publisher").await;
    publisher
        .publish(DENIED, b"secret", QoS::AtMostOnce, true, 0)
        .await;
    publisher
        .publish("TopicA/B", b"open", QoS::AtMostOnce, true, 0)
        .await;
    publisher.sync().await;

    let mut client = RawClient::connect(addr, "subscriber").await;
    // [MQTT-3.8.4-4] several filters in one SUBSCRIBE, one SUBACK with
    // [MQTT-3.8.4-5] one code per filter, in order.
    client
        .send(&Packet::Subscribe(Subscribe {
            packet_id: 7,
            filters: vec![
                (DENIED.into(), QoS::ExactlyOnce),
                ("+/+".into(), QoS::ExactlyOnce),
                ("#".into(), QoS::AtLeastOnce),
            ],
        }))
        .await;
    assert_eq!(
        client.recv().await,
        Some(Packet::SubAck(SubAck {
            packet_id: 7,
            codes: vec![
                SubAckCode::Failure,
                SubAckCode::Granted(QoS::ExactlyOnce),
                SubAckCode::Granted(QoS::AtLeastOnce),
            ],
        }))
    );

    // Retained: one copy of TopicA/B per matching filter, none of the
    // denied topic. Live: the denied topic is not delivered either.
    publisher
        .publish(DENIED, b"secret 2", QoS::AtLeastOnce, false, 1)
        .await;
    publisher
        .publish("TopicA/C", b"live", QoS::AtMostOnce, false, 0)
        .await;
    publisher
        .publish("end/marker", b"", QoS::AtMostOnce, false, 0)
        .await;
    let seen = publishes_until(&mut client, "end/marker").await;
    assert_eq!(
        topics(&seen),
        vec![
            ("TopicA/B", true),
            ("TopicA/B", true),
            ("TopicA/C", false),
            ("end/marker", false)
        ]
    );
}

#[tokio::test]
async fn mqtt_3_1_2_4_restored_session_keeps_its_acl_exclusions() {
    let dir = tempfile::tempdir().unwrap();
    let with_dir = || BrokerConfig {
        data_dir: Some(dir.path().to_owned()),
        ..deny_nosubscribe()
    };
    let (broker, addr) = start(with_dir()).await;
    let (mut client, _) = RawClient::connect_with(addr, connect_packet("keeper", false)).await;
    let granted = client.subscribe("#", QoS::AtLeastOnce).await;
    assert_eq!(
        granted,
        Packet::SubAck(SubAck {
            packet_id: 1,
            codes: vec![SubAckCode::Granted(QoS::AtLeastOnce)],
        })
    );
    client.send(&Packet::Disconnect).await;
    assert!(client.closed_by_broker().await);
    broker.shutdown().await.unwrap();

    let (broker, addr) = start(with_dir()).await;
    let (mut client, present) =
        RawClient::connect_with(addr, connect_packet("keeper", false)).await;
    assert!(present, "session not restored");
    let mut publisher = RawClient::connect(addr, "publisher").await;
    publisher
        .publish(DENIED, b"secret", QoS::AtLeastOnce, false, 1)
        .await;
    publisher
        .publish("end/marker", b"", QoS::AtLeastOnce, false, 2)
        .await;
    let seen = publishes_until(&mut client, "end/marker").await;
    assert_eq!(topics(&seen), vec![("end/marker", false)]);
    broker.shutdown().await.unwrap();
}
