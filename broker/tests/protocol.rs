//! MQTT 3.1.1 normative statements, checked with a raw client over TCP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{RawClient, config, connect_packet, start, will};
use runnel_broker::codec::{ConnAck, ConnectReturnCode, Packet, QoS, SubAck, SubAckCode};
use runnel_broker::{Access, AclRule, BrokerConfig, UserConfig};

#[tokio::test]
async fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    let (_broker, addr) = start(config()).await;
    let mut client = RawClient::open(addr).await;
    client.send(&Packet::PingReq).await;
    assert!(client.closed_by_broker().await);
}

#[tokio::test]
async fn mqtt_3_1_0_2_second_connect_closes() {
    let (_broker, addr) = start(config()).await;
    let mut client = RawClient::connect(addr, "twice").await;
    client
        .send(&Packet::Connect(connect_packet("twice", true)))
        .await;
    assert!(client.closed_by_broker().await);
}

#[tokio::test]
async fn mqtt_3_1_2_2_unsupported_level_gets_connack_1() {
    let (_broker, addr) = start(config()).await;
    let mut client = RawClient::open(addr).await;
    let mut connect = connect_packet("v5", true);
    connect.protocol_level = 5;
    client.send(&Packet::Connect(connect)).await;
    let expected = ConnAck {
        session_present: false,
        code: ConnectReturnCode::UnacceptableProtocolVersion,
    };
    assert_eq!(client.recv().await, Some(Packet::ConnAck(expected)));
    assert!(client.closed_by_broker().await);
}

#[tokio::test]
async fn mqtt_3_1_3_8_empty_id_with_persistent_session_refused() {
    let (_broker, addr) = start(config()).await;
    let mut client = RawClient::open(addr).await;
    client
        .send(&Packet::Connect(connect_packet("", false)))
        .await;
    let expected = ConnAck {
        session_present: false,
        code: ConnectReturnCode::IdentifierRejected,
    };
    assert_eq!(client.recv().await, Some(Packet::ConnAck(expected)));
    // [MQTT-3.1.3-6] an empty id with a clean session is given one.
    RawClient::connect(addr, "").await;
}

#[tokio::test]
async fn mqtt_3_3_1_4_publish_with_qos_3_closes() {
    let (_broker, addr) = start(config()).await;
    let mut client = RawClient::connect(addr, "q3").await;
    client
        .send_raw(&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01])
        .await;
    assert!(client.closed_by_broker().await);
}

#[tokio::test]
async fn oversized_packet_closes_and_broker_keeps_accepting() {
    let (broker, addr) = start(BrokerConfig {
        max_packet_size: 1024,
        ..config()
    })
    .await;
    let mut client = RawClient::connect(addr, "big").await;
    client
        .publish("t", &[7u8; 2000], QoS::AtMostOnce, false, 0)
        .await;
    assert!(client.closed_by_broker().await);
    assert!(broker.metrics().protocol_errors >= 1);
    RawClient::connect(addr, "after").await;
}

#[tokio::test]
async fn connect_timeout_closes_silent_connection() {
    let (_broker, addr) = start(BrokerConfig {
        connect_timeout: Duration::from_millis(200),
        ..config()
    })
    .await;
    let mut client = RawClient::open(addr).await;
    assert!(client.closed_by_broker().await);
}

#[tokio::test]
async fn mqtt_3_1_2_24_keep_alive_expiry_closes_and_sends_will() {
    let (_broker, addr) = start(config()).await;
    let mut watcher = RawClient::connect(addr, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut connect = connect_packet("sleepy", true);
    connect.keep_alive_secs = 1;
    connect.will = Some(will("wills/sleepy", b"gone", QoS::AtLeastOnce));
    let (mut sleepy, _) = RawClient::connect_with(addr, connect).await;
    assert!(sleepy.closed_by_broker().await);
    let publish = watcher.next_publish().await;
    assert_eq!(publish.topic, "wills/sleepy");
}

#[tokio::test]
async fn max_connections_refuses_extra_then_recovers() {
    let (broker, addr) = start(BrokerConfig {
        max_connections: 2,
        ..config()
    })
    .await;
    let first = RawClient::connect(addr, "one").await;
    let _second = RawClient::connect(addr, "two").await;
    let mut third = RawClient::open(addr).await;
    third
        .send_raw(&{
            let mut out = bytes::BytesMut::new();
            runnel_broker::codec::encode(&Packet::Connect(connect_packet("three", true)), &mut out);
            out
        })
        .await;
    assert!(third.closed_by_broker().await);
    assert!(broker.metrics().connections_refused >= 1);
    drop(first);
    // The slot is released once the broker sees the close: retry until then.
    let mut accepted = false;
    for _ in 0..100 {
        let mut retry = RawClient::open(addr).await;
        retry
            .send(&Packet::Connect(connect_packet("four", true)))
            .await;
        if let Some(Packet::ConnAck(_)) = retry.recv().await {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(accepted);
}

#[tokio::test]
async fn qos_0_1_2_flow_in_both_directions() {
    let (_broker, addr) = start(config()).await;
    let mut subscriber = RawClient::connect(addr, "sub").await;
    let suback = subscriber.subscribe("q/+", QoS::ExactlyOnce).await;
    // [MQTT-3.8.4-1] [MQTT-3.9.3-1]
    assert_eq!(
        suback,
        Packet::SubAck(SubAck {
            packet_id: 1,
            codes: vec![SubAckCode::Granted(QoS::ExactlyOnce)]
        })
    );
    let mut publisher = RawClient::connect(addr, "pub").await;

    publisher
        .publish("q/0", b"zero", QoS::AtMostOnce, false, 0)
        .await;
    let p = subscriber.next_publish().await;
    assert_eq!(
        (p.qos, p.packet_id, &p.payload[..]),
        (QoS::AtMostOnce, None, &b"zero"[..])
    );

    // [MQTT-4.3.2-2] PUBACK for QoS 1.
    publisher
        .publish("q/1", b"one", QoS::AtLeastOnce, false, 11)
        .await;
    assert_eq!(publisher.recv().await, Some(Packet::PubAck(11)));
    let p = subscriber.next_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    let id = p.packet_id.unwrap();
    subscriber.send(&Packet::PubAck(id)).await;

    // [MQTT-4.3.3-2] PUBREC, then PUBCOMP after PUBREL.
    publisher
        .publish("q/2", b"two", QoS::ExactlyOnce, false, 12)
        .await;
    assert_eq!(publisher.recv().await, Some(Packet::PubRec(12)));
    publisher.send(&Packet::PubRel(12)).await;
    assert_eq!(publisher.recv().await, Some(Packet::PubComp(12)));
    let p = subscriber.next_publish().await;
    assert_eq!((p.qos, &p.payload[..]), (QoS::ExactlyOnce, &b"two"[..]));
    let id = p.packet_id.unwrap();
    // [MQTT-4.3.3-1] the broker answers PUBREC with PUBREL.
    subscriber.send(&Packet::PubRec(id)).await;
    assert_eq!(subscriber.recv().await, Some(Packet::PubRel(id)));
    subscriber.send(&Packet::PubComp(id)).await;
    assert!(subscriber.sync().await.is_empty());
}

#[tokio::test]
async fn mqtt_4_3_3_2_duplicate_qos2_publish_is_delivered_once() {
    let (_broker, addr) = start(config()).await;
    let mut subscriber = RawClient::connect(addr, "sub").await;
    subscriber.subscribe("d", QoS::AtMostOnce).await;
    let mut publisher = RawClient::connect(addr, "pub").await;
    publisher
        .publish("d", b"x", QoS::ExactlyOnce, false, 5)
        .await;
    publisher
        .publish("d", b"x", QoS::ExactlyOnce, false, 5)
        .await;
    assert_eq!(publisher.recv().await, Some(Packet::PubRec(5)));
    assert_eq!(publisher.recv().await, Some(Packet::PubRec(5)));
    publisher.sync().await;
    subscriber.next_publish().await;
    let extra = subscriber.sync().await;
    assert!(extra.is_empty(), "duplicate delivered: {extra:?}");
}

#[tokio::test]
async fn subscription_qos_caps_delivery_qos() {
    // [MQTT-3.8.4-6] delivered at the lower of publish and granted QoS.
    let (_broker, addr) = start(config()).await;
    let mut subscriber = RawClient::connect(addr, "sub").await;
    subscriber.subscribe("cap", QoS::AtMostOnce).await;
    let mut publisher = RawClient::connect(addr, "pub").await;
    publisher
        .publish("cap", b"x", QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(subscriber.next_publish().await.qos, QoS::AtMostOnce);
}

#[tokio::test]
async fn retained_set_replace_clear_and_delivery_flags() {
    let (broker, addr) = start(config()).await;
    let mut publisher = RawClient::connect(addr, "pub").await;
    publisher
        .publish("r/t", b"first", QoS::AtLeastOnce, true, 1)
        .await;
    publisher
        .publish("r/t", b"second", QoS::AtLeastOnce, true, 2)
        .await;
    publisher.sync().await;

    // [MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-8] only the latest, retain 1.
    let mut late = RawClient::connect(addr, "late").await;
    late.subscribe("r/#", QoS::AtLeastOnce).await;
    let p = late.next_publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"second"[..], true));
    late.send(&Packet::PubAck(p.packet_id.unwrap())).await;

    // [MQTT-3.3.1-9] forwarded to existing subscribers with retain 0.
    publisher
        .publish("r/t", b"third", QoS::AtMostOnce, true, 0)
        .await;
    let p = late.next_publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"third"[..], false));

    // [MQTT-3.3.1-10] [MQTT-3.3.1-11] an empty retained payload clears it.
    publisher
        .publish("r/t", b"", QoS::AtMostOnce, true, 0)
        .await;
    publisher.sync().await;
    assert_eq!(broker.metrics().retained_messages, 0);
    let mut later = RawClient::connect(addr, "later").await;
    later.subscribe("r/#", QoS::AtLeastOnce).await;
    assert!(later.sync().await.is_empty());
}

#[tokio::test]
async fn mqtt_3_1_2_8_will_sent_on_abnormal_close_not_on_disconnect() {
    let (_broker, addr) = start(config()).await;
    let mut watcher = RawClient::connect(addr, "watcher").await;
    watcher.subscribe("will/#", QoS::AtMostOnce).await;

    // [MQTT-3.1.2-10] DISCONNECT discards the will.
    let mut polite = connect_packet("polite", true);
    polite.will = Some(will("will/polite", b"bye", QoS::AtMostOnce));
    let (mut polite, _) = RawClient::connect_with(addr, polite).await;
    polite.send(&Packet::Disconnect).await;
    assert!(polite.closed_by_broker().await);

    let mut rude = connect_packet("rude", true);
    rude.will = Some(will("will/rude", b"crash", QoS::AtMostOnce));
    let (rude, _) = RawClient::connect_with(addr, rude).await;
    drop(rude);

    let p = watcher.next_publish().await;
    assert_eq!(p.topic, "will/rude");
}

#[tokio::test]
async fn persistent_session_queues_qos1_while_offline() {
    let (_broker, addr) = start(config()).await;
    let (mut client, present) =
        RawClient::connect_with(addr, connect_packet("keeper", false)).await;
    // [MQTT-3.2.2-3] no session yet.
    assert!(!present);
    client.subscribe("jobs", QoS::AtLeastOnce).await;
    client.send(&Packet::Disconnect).await;
    assert!(client.closed_by_broker().await);

    let mut publisher = RawClient::connect(addr, "pub").await;
    publisher
        .publish("jobs", b"while-away", QoS::AtLeastOnce, false, 1)
        .await;
    publisher
        .publish("jobs", b"qos0-not-queued", QoS::AtMostOnce, false, 0)
        .await;
    publisher.sync().await;

    // [MQTT-3.1.2-4] [MQTT-3.2.2-2] the session is resumed with its messages.
    let (mut client, present) =
        RawClient::connect_with(addr, connect_packet("keeper", false)).await;
    assert!(present);
    let p = client.next_publish().await;
    assert_eq!(&p.payload[..], b"while-away");
    client.send(&Packet::PubAck(p.packet_id.unwrap())).await;
    assert!(client.sync().await.is_empty());

    // [MQTT-3.1.2-6] a clean session discards it.
    drop(client);
    let (_client, present) = RawClient::connect_with(addr, connect_packet("keeper", true)).await;
    assert!(!present);
}

#[tokio::test]
async fn mqtt_4_4_0_1_unacknowledged_publish_resent_with_dup_on_reconnect() {
    let (_broker, addr) = start(config()).await;
    let (mut client, _) = RawClient::connect_with(addr, connect_packet("forgetful", false)).await;
    client.subscribe("r", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::connect(addr, "pub").await;
    publisher
        .publish("r", b"x", QoS::AtLeastOnce, false, 1)
        .await;
    let first = client.next_publish().await;
    assert!(!first.dup);
    drop(client);
    let mut resumed = None;
    for _ in 0..100 {
        let (mut client, present) =
            RawClient::connect_with(addr, connect_packet("forgetful", false)).await;
        if present {
            resumed = Some(client.next_publish().await);
            break;
        }
        client.send(&Packet::Disconnect).await;
    }
    let again = resumed.unwrap();
    assert!(again.dup);
    assert_eq!(again.packet_id, first.packet_id);
}

#[tokio::test]
async fn mqtt_3_1_4_2_same_client_id_takes_over() {
    let (_broker, addr) = start(config()).await;
    let mut first = RawClient::connect(addr, "dup-id").await;
    let _second = RawClient::connect(addr, "dup-id").await;
    assert!(first.closed_by_broker().await);
}

#[tokio::test]
async fn shared_subscription_splits_messages_between_members() {
    let (_broker, addr) = start(config()).await;
    let mut a = RawClient::connect(addr, "a").await;
    let mut b = RawClient::connect(addr, "b").await;
    a.subscribe("$share/workers/jobs/+", QoS::AtMostOnce).await;
    b.subscribe("$share/workers/jobs/+", QoS::AtMostOnce).await;
    let mut publisher = RawClient::connect(addr, "pub").await;
    for i in 0..10u8 {
        publisher
            .publish("jobs/x", &[i], QoS::AtMostOnce, false, 0)
            .await;
    }
    publisher.sync().await;
    let got_a = a.sync().await.len();
    let got_b = b.sync().await.len();
    assert_eq!((got_a, got_b), (5, 5));
}

#[tokio::test]
async fn wildcards_and_dollar_topics() {
    // [MQTT-4.7.2-1] '#' and '+' do not match topics starting with '$'.
    let (broker, addr) = start(config()).await;
    let mut all = RawClient::connect(addr, "all").await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let mut sys = RawClient::connect(addr, "sys").await;
    sys.subscribe("$SYS/#", QoS::AtMostOnce).await;
    let mut plus = RawClient::connect(addr, "plus").await;
    plus.subscribe("a/+/c", QoS::AtMostOnce).await;
    broker
        .publish(runnel_broker::Publish::new("$SYS/broker/test", "1"))
        .await
        .unwrap();
    broker
        .publish(runnel_broker::Publish::new("a/b/c", "2"))
        .await
        .unwrap();
    broker
        .publish(runnel_broker::Publish::new("a/b/c/d", "3"))
        .await
        .unwrap();
    let topics = |packets: Vec<Packet>| -> Vec<String> {
        packets
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.topic),
                _ => None,
            })
            .collect()
    };
    assert_eq!(topics(all.sync().await), vec!["a/b/c", "a/b/c/d"]);
    assert_eq!(topics(sys.sync().await), vec!["$SYS/broker/test"]);
    assert_eq!(topics(plus.sync().await), vec!["a/b/c"]);
}

fn secured() -> BrokerConfig {
    BrokerConfig {
        allow_anonymous: false,
        users: vec![UserConfig {
            username: "alice".into(),
            password: "secret".into(),
        }],
        acl: vec![
            AclRule {
                username: Some("alice".into()),
                topic: "cars/%u/#".into(),
                access: Access::Both,
                deny: false,
            },
            AclRule {
                username: None,
                topic: "public/#".into(),
                access: Access::Subscribe,
                deny: false,
            },
        ],
        ..config()
    }
}

#[tokio::test]
async fn mqtt_3_2_2_bad_credentials_get_connack_4_and_anonymous_5() {
    let (_broker, addr) = start(secured()).await;
    let mut bad = connect_packet("mallory", true);
    bad.username = Some("alice".into());
    bad.password = Some(Bytes::from_static(b"wrong"));
    let mut client = RawClient::open(addr).await;
    client.send(&Packet::Connect(bad)).await;
    let refused = ConnAck {
        session_present: false,
        code: ConnectReturnCode::BadUsernameOrPassword,
    };
    assert_eq!(client.recv().await, Some(Packet::ConnAck(refused)));
    assert!(client.closed_by_broker().await);

    let mut anonymous = RawClient::open(addr).await;
    anonymous
        .send(&Packet::Connect(connect_packet("anon", true)))
        .await;
    let refused = ConnAck {
        session_present: false,
        code: ConnectReturnCode::NotAuthorized,
    };
    assert_eq!(anonymous.recv().await, Some(Packet::ConnAck(refused)));
}

#[tokio::test]
async fn acl_denies_subscribe_with_0x80_and_drops_denied_publish() {
    let (broker, addr) = start(secured()).await;
    let mut login = connect_packet("alice-1", true);
    login.username = Some("alice".into());
    login.password = Some(Bytes::from_static(b"secret"));
    let (mut alice, _) = RawClient::connect_with(addr, login).await;
    let denied = alice.subscribe("cars/bob/#", QoS::AtMostOnce).await;
    assert_eq!(
        denied,
        Packet::SubAck(SubAck {
            packet_id: 1,
            codes: vec![SubAckCode::Failure]
        })
    );
    alice.subscribe("cars/alice/#", QoS::AtMostOnce).await;
    alice
        .publish("cars/alice/gps", b"ok", QoS::AtMostOnce, false, 0)
        .await;
    assert_eq!(alice.next_publish().await.topic, "cars/alice/gps");
    let mut watcher = broker.subscribe("#", QoS::AtMostOnce).unwrap();
    alice
        .publish("cars/bob/gps", b"no", QoS::AtLeastOnce, false, 3)
        .await;
    // Acknowledged (3.1.1 cannot refuse) but not delivered.
    assert_eq!(alice.recv().await, Some(Packet::PubAck(3)));
    alice
        .publish("cars/alice/end", b"marker", QoS::AtMostOnce, false, 0)
        .await;
    let next = tokio::time::timeout(common::WAIT, watcher.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*next.topic, "cars/alice/end");
    assert_eq!(broker.metrics().publish_denied, 1);
}

#[tokio::test]
async fn garbage_from_many_clients_never_stops_the_broker() {
    let (broker, addr) = start(config()).await;
    // Deterministic pseudo-random bytes (xorshift), some after a valid CONNECT.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..200 {
        let mut client = if round % 2 == 0 {
            RawClient::open(addr).await
        } else {
            RawClient::connect(addr, &format!("noisy-{round}")).await
        };
        let garbage: Vec<u8> = (0..(next() % 300)).map(|_| next() as u8).collect();
        client.send_raw(&garbage).await;
    }
    let mut healthy = RawClient::connect(addr, "healthy").await;
    healthy.subscribe("still/+", QoS::AtMostOnce).await;
    healthy
        .publish("still/alive", b"yes", QoS::AtMostOnce, false, 0)
        .await;
    assert_eq!(healthy.next_publish().await.topic, "still/alive");
    assert!(broker.metrics().connections_total >= 100);
}

#[tokio::test]
async fn limits_on_subscriptions_retained_and_offline_sessions() {
    let (broker, addr) = start(BrokerConfig {
        max_subscriptions_per_client: 2,
        max_retained_messages: 1,
        session_expiry: Some(Duration::from_millis(100)),
        ..config()
    })
    .await;
    let mut client = RawClient::connect(addr, "greedy").await;
    client.subscribe("a", QoS::AtMostOnce).await;
    client.subscribe("b", QoS::AtMostOnce).await;
    // Re-subscribing to a held filter is a replacement, not a new one.
    let again = client.subscribe("a", QoS::AtLeastOnce).await;
    assert_eq!(
        again,
        Packet::SubAck(SubAck {
            packet_id: 1,
            codes: vec![SubAckCode::Granted(QoS::AtLeastOnce)]
        })
    );
    let refused = client.subscribe("c", QoS::AtMostOnce).await;
    assert_eq!(
        refused,
        Packet::SubAck(SubAck {
            packet_id: 1,
            codes: vec![SubAckCode::Failure]
        })
    );

    client
        .publish("r/1", b"kept", QoS::AtMostOnce, true, 0)
        .await;
    client
        .publish("r/2", b"refused", QoS::AtMostOnce, true, 0)
        .await;
    client
        .publish("r/1", b"replaced", QoS::AtMostOnce, true, 0)
        .await;
    client.sync().await;
    let metrics = broker.metrics();
    assert_eq!(
        (metrics.retained_messages, metrics.retained_refused),
        (1, 1)
    );

    let (mut persistent, _) = RawClient::connect_with(addr, connect_packet("away", false)).await;
    persistent.send(&Packet::Disconnect).await;
    assert!(persistent.closed_by_broker().await);
    let mut expired = false;
    for _ in 0..200 {
        if broker.metrics().sessions_expired == 1 {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(expired, "offline session never expired");
    let (_client, present) = RawClient::connect_with(addr, connect_packet("away", false)).await;
    assert!(!present);
}
