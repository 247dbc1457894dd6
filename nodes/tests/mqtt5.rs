//! MQTT 5 (`protocol: "5"`) on the MQTT nodes, against a real Mosquitto 2
//! (`apt-get install -y mosquitto`). Each test starts its own broker on a
//! free port. The outside side is a raw rumqttc v5 client, so properties
//! are checked as they travel on the wire. No timing assertions: timeouts
//! are hang guards only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use runnel_engine::testing::collect;
use runnel_engine::{Engine, Msg, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;

mod common;

use common::{
    BrokerOpts, GUARD, Mosquitto, deploy, engine, free_port, hold, n_of, next, receive_all,
};

// ---------------------------------------------------------- outside client

/// A raw MQTT 5 client (automatic acks; subscribes at QoS 2): incoming
/// publishes go to `rx`, the broker's PUBACKs and PUBCOMPs are counted in
/// `acked`, `subscribed` turns true at the first SUBACK.
struct Outside {
    client: AsyncClient,
    rx: UnboundedReceiver<Publish>,
    acked: Arc<AtomicUsize>,
    subscribed: watch::Receiver<bool>,
}

fn outside(port: u16, subscribe: Option<&str>) -> Outside {
    outside_with(port, subscribe, &format!("outside-{}", free_port()), false)
}

/// An outside client with a fixed client id; `persistent` keeps its session
/// (and the messages queued for it) for an hour after a disconnect.
fn outside_with(port: u16, subscribe: Option<&str>, client_id: &str, persistent: bool) -> Outside {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = watch::channel(false);
    let acked = Arc::new(AtomicUsize::new(0));
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_max_packet_size(Some(1 << 20));
    if persistent {
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(3600));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let filter = subscribe.map(str::to_string);
    let subscriber = client.clone();
    let counter = acked.clone();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(filter) = &filter {
                        subscriber
                            .subscribe(filter.clone(), QoS::ExactlyOnce)
                            .await
                            .unwrap();
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subscribed_tx.send_replace(true);
                }
                Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                    counter.fetch_add(1, Ordering::AcqRel);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if tx.send(publish).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    Outside {
        client,
        rx,
        acked,
        subscribed,
    }
}

impl Outside {
    async fn wait_subscribed(&mut self) {
        tokio::time::timeout(GUARD, self.subscribed.wait_for(|s| *s))
            .await
            .expect("outside client subscribed within the hang guard")
            .unwrap();
    }

    /// Waits until the broker has acknowledged `count` QoS 1/2 publishes.
    async fn wait_acked(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + GUARD;
        while self.acked.load(Ordering::Acquire) < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "broker acknowledged {} of {count}",
                self.acked.load(Ordering::Acquire)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn next(&mut self) -> Publish {
        tokio::time::timeout(GUARD, self.rx.recv())
            .await
            .expect("a message within the hang guard")
            .expect("channel open")
    }
}

fn topic_of(publish: &Publish) -> &str {
    std::str::from_utf8(&publish.topic).unwrap()
}

/// Publishes probes on `topic` until `seen` gets one (the flow has
/// subscribed), then drains further probes.
async fn wait_flow_subscribed(publisher: &Outside, topic: &str, seen: &mut UnboundedReceiver<Msg>) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "flow never subscribed"
        );
        publisher
            .client
            .publish(topic, QoS::AtMostOnce, false, "\"probe\"")
            .await
            .unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), seen.recv()).await {
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(200), seen.recv()).await
            {}
            return;
        }
    }
}

// ---------------------------------------------------------------- engine

async fn deploy_on(engine: &Engine, name: &str, yaml: &str, port: u16) {
    deploy(engine, name, yaml, &[("PORT", &port.to_string())]).await;
}

/// The next message with a numbered payload (`{"n": ...}`), skipping
/// late probes.
async fn next_data(rx: &mut UnboundedReceiver<Msg>) -> Msg {
    loop {
        let msg = next(rx).await;
        if n_of(&msg) >= 0 {
            return msg;
        }
    }
}

fn n_of_json(payload: &[u8]) -> i64 {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v["n"].as_i64())
        .unwrap_or(-1)
}

// ---------------------------------------------------------------- tests

async fn roundtrip_v5(level: u8, qos: QoS) {
    let broker = Mosquitto::start(BrokerOpts::default());
    let port = broker.port;
    let channel = format!("v5-qos{level}");
    let mut seen = collect(&channel);
    let mut sink = outside(port, Some("v5out/#"));
    let publisher = outside(port, None);
    let engine = engine();
    let flow = format!(
        r#"
config:
  - {{id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${{PORT}}", protocol: "5"}}
nodes:
  - {{id: in, type: mqtt-in, broker: broker, topic: "v5in/+", qos: {level}, wires: [[seen, out]]}}
  - {{id: seen, type: test-collect, channel: {channel}}}
  - {{id: out, type: mqtt-out, broker: broker, topic: v5out/x, qos: {level}}}
"#
    );
    deploy_on(&engine, &channel, &flow, port).await;
    sink.wait_subscribed().await;
    wait_flow_subscribed(&publisher, "v5in/probe", &mut seen).await;
    // Probes went out too: skip them on the outside.
    let count = 30;
    for n in 0..count {
        publisher
            .client
            .publish("v5in/a", qos, false, format!(r#"{{"n": {n}}}"#))
            .await
            .unwrap();
    }
    publisher.wait_acked(count as usize).await;

    let mut got = BTreeSet::new();
    while got.len() < count as usize {
        let msg = next_data(&mut seen).await;
        assert_eq!(msg.topic(), Some("v5in/a"));
        assert_eq!(
            msg.props().get("qos").and_then(Value::as_i64),
            Some(i64::from(level))
        );
        assert_eq!(
            msg.props().get("retain").and_then(Value::as_bool),
            Some(false)
        );
        got.insert(n_of(&msg));
    }
    assert_eq!(got, (0..count).collect());

    let mut out = BTreeSet::new();
    while out.len() < count as usize {
        let publish = sink.next().await;
        assert_eq!(topic_of(&publish), "v5out/x");
        let n = n_of_json(&publish.payload);
        if n >= 0 {
            assert_eq!(publish.qos, qos);
            out.insert(n);
        }
    }
    assert_eq!(out, (0..count).collect());
    engine.shutdown().await;
}

#[tokio::test]
async fn qos1_in_and_out_over_mqtt5() {
    roundtrip_v5(1, QoS::AtLeastOnce).await;
}

#[tokio::test]
async fn qos2_in_and_out_over_mqtt5() {
    roundtrip_v5(2, QoS::ExactlyOnce).await;
}

#[tokio::test]
async fn mqtt5_properties_round_trip_through_in_and_out() {
    let broker = Mosquitto::start(BrokerOpts::default());
    let port = broker.port;
    let mut seen = collect("v5-props");
    let mut sink = outside(port, Some("props-out/#"));
    let publisher = outside(port, None);
    let engine = engine();
    let flow = r#"
config:
  - {id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${PORT}", protocol: "5.0"}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: "props-in", qos: 1, wires: [[seen, copy, config]]}
  - {id: seen, type: test-collect, channel: v5-props}
  - {id: copy, type: mqtt-out, broker: broker, topic: props-out/copy, qos: 1}
  - id: config
    type: mqtt-out
    broker: broker
    topic: props-out/config
    qos: 1
    content_type: text/plain
    user_properties: {source: runnel}
"#;
    deploy_on(&engine, "v5-props", flow, port).await;
    sink.wait_subscribed().await;
    wait_flow_subscribed(&publisher, "props-in", &mut seen).await;

    let correlation = Bytes::from_static(&[0, 1, 2, 0xff]);
    let properties = PublishProperties {
        user_properties: vec![
            ("device".to_string(), "car-7".to_string()),
            ("unit".to_string(), "m".to_string()),
        ],
        response_topic: Some("reply/car-7".to_string()),
        correlation_data: Some(correlation.clone()),
        content_type: Some("application/json".to_string()),
        message_expiry_interval: Some(3600),
        ..PublishProperties::default()
    };
    publisher
        .client
        .publish_with_properties(
            "props-in",
            QoS::AtLeastOnce,
            false,
            r#"{"n": 1}"#,
            properties,
        )
        .await
        .unwrap();

    // mqtt-in: the properties as Node-RED names them.
    let msg = next_data(&mut seen).await;
    assert_eq!(n_of(&msg), 1);
    let json = msg.to_json();
    assert_eq!(
        json["userProperties"],
        serde_json::json!({"device": "car-7", "unit": "m"})
    );
    assert_eq!(json["responseTopic"], "reply/car-7");
    assert_eq!(json["contentType"], "application/json");
    let expiry = json["messageExpiryInterval"].as_i64().unwrap();
    // The broker passes on what is left of the interval.
    assert!((1..=3600).contains(&expiry), "{expiry}");
    assert_eq!(
        msg.props().get("correlationData"),
        Some(&Value::Bytes(correlation.clone()))
    );
    drop(msg);

    // mqtt-out: sent on, from the message (copy) and from the config.
    let mut by_topic = HashMap::new();
    while by_topic.len() < 2 {
        let publish = sink.next().await;
        if n_of_json(&publish.payload) == 1 {
            by_topic.insert(topic_of(&publish).to_string(), publish);
        }
    }
    let copy = by_topic["props-out/copy"].properties.clone().unwrap();
    assert_eq!(
        copy.user_properties,
        vec![
            ("device".to_string(), "car-7".to_string()),
            ("unit".to_string(), "m".to_string()),
        ]
    );
    assert_eq!(copy.response_topic.as_deref(), Some("reply/car-7"));
    assert_eq!(copy.correlation_data, Some(correlation.clone()));
    assert_eq!(copy.content_type.as_deref(), Some("application/json"));
    assert!(
        copy.message_expiry_interval
            .is_some_and(|s| (1..=3600).contains(&s)),
        "{copy:?}"
    );

    let config = by_topic["props-out/config"].properties.clone().unwrap();
    assert_eq!(
        config.user_properties,
        vec![("source".to_string(), "runnel".to_string())]
    );
    assert_eq!(config.content_type.as_deref(), Some("text/plain"));
    assert_eq!(config.response_topic.as_deref(), Some("reply/car-7"));
    assert_eq!(config.correlation_data, Some(correlation));
    engine.shutdown().await;
}

/// runnel dies (its runtime is torn down: no DISCONNECT, no acks) while it
/// holds unfinished QoS 1 messages: the MQTT 5 session outlives the
/// connection (session expiry) and the next start receives them again.
/// The broker publishes runnel's last will (retained, so the second life
/// can check it).
#[test]
fn unfinished_messages_are_redelivered_after_a_crash_on_mqtt5() {
    let broker = Mosquitto::start(BrokerOpts::default());
    let port = broker.port;
    let flow = r#"
config:
  - id: broker
    type: mqtt-broker
    host: 127.0.0.1
    port: "${PORT}"
    protocol: "5"
    will: {topic: runnel5/status, payload: gone, qos: 1, retain: true}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: "crash5/#", qos: 1, wires: [[seen]]}
  - {id: seen, type: t-hold, channel: CHANNEL}
"#;

    // First life: receive 10, finish the first 4 (acked), hold the rest.
    let first = tokio::runtime::Runtime::new().unwrap();
    let held: Vec<Msg> = first.block_on(async {
        let mut seen = hold("crash5-1");
        let publisher = outside(port, None);
        let engine = engine();
        deploy_on(
            &engine,
            "crash5",
            &flow.replace("CHANNEL", "crash5-1"),
            port,
        )
        .await;
        wait_flow_subscribed(&publisher, "crash5/probe", &mut seen).await;
        for n in 0..10 {
            publisher
                .client
                .publish(
                    "crash5/data",
                    QoS::AtLeastOnce,
                    false,
                    format!(r#"{{"n": {n}}}"#),
                )
                .await
                .unwrap();
        }
        publisher.wait_acked(10).await;
        let mut held = Vec::new();
        while held.len() < 10 {
            held.push(next_data(&mut seen).await);
        }
        held.sort_by_key(n_of);
        let rest = held.split_off(4);
        drop(held);
        // The broker has the acks of 0..4 (its log says so).
        broker
            .wait_logged("Received PUBACK from runnel-crash5-broker", 4)
            .await;
        std::mem::forget(engine);
        rest
    });
    first.shutdown_background();
    drop(held);

    // Second life: the same flow (same client id, persistent session).
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let mut status = outside(port, Some("runnel5/status"));
        let will = status.next().await;
        assert_eq!(
            (topic_of(&will), &will.payload[..]),
            ("runnel5/status", &b"gone"[..])
        );
        let mut seen = hold("crash5-2");
        let engine = engine();
        deploy_on(
            &engine,
            "crash5",
            &flow.replace("CHANNEL", "crash5-2"),
            port,
        )
        .await;
        let mut got = BTreeSet::new();
        receive_all(&mut seen, &mut got, &(4..10).collect(), &broker).await;
        assert!(
            got.iter().all(|n| *n >= 4 || *n < 0),
            "acked messages came back: {got:?}"
        );
        engine.shutdown().await;
    });
}

#[tokio::test]
async fn tls_and_credentials_over_mqtt5() {
    let broker = Mosquitto::start(BrokerOpts {
        password: Some(("runnel", "s3cret")),
        tls: true,
        ..BrokerOpts::default()
    });
    let port = broker.port.to_string();
    let pki = broker.dir.path().to_path_buf();
    let pki_text = pki.display().to_string();
    let mut seen = collect("v5-tls");
    let engine = engine();
    let flow = r#"
config:
  - id: broker
    type: mqtt-broker
    host: 127.0.0.1
    port: "${PORT}"
    protocol: "5"
    username: runnel
    password: "${MQTT_PASSWORD}"
    reconnect_min: 50ms
    reconnect_max: 200ms
    tls: {ca_file: "${PKI}/ca.crt", cert_file: "${PKI}/client.crt", key_file: "${PKI}/client.key"}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: "secure/#", qos: 1, wires: [[seen]]}
  - {id: seen, type: test-collect, channel: v5-tls}
"#;
    let env = |password| {
        [
            ("PORT", port.as_str()),
            ("PKI", &pki_text),
            ("MQTT_PASSWORD", password),
        ]
    };
    deploy(&engine, "v5-tls", flow, &env("wrong")).await;
    let deadline = tokio::time::Instant::now() + GUARD;
    let status = loop {
        let info = engine.flow("v5-tls").await.unwrap();
        let node = info.nodes.iter().find(|n| n.id == "in").unwrap();
        if node.status.text.contains("refused") {
            break node.status.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusal status: {:?}\n{}",
            node.status,
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.text.contains("bad user name or password") || status.text.contains("not authorized"),
        "{}",
        status.text
    );
    assert!(!status.text.contains("wrong"), "the password must not show");

    // The right password (a redeploy) connects over TLS, as MQTT 5.
    deploy(&engine, "v5-tls", flow, &env("s3cret")).await;
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing over TLS; status {:?}\n{}",
            engine
                .flow("v5-tls")
                .await
                .map(|f| f.nodes[0].status.clone()),
            broker.log()
        );
        let (pki, port) = (pki.clone(), port.clone());
        let published = tokio::task::spawn_blocking(move || {
            Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-t",
                    "secure/x",
                    "-m",
                    "sealed",
                ])
                .args(["-q", "1", "-V", "mqttv5", "-u", "runnel", "-P", "s3cret"])
                .args(["-D", "publish", "user-property", "via", "tls"])
                .arg("--cafile")
                .arg(pki.join("ca.crt"))
                .arg("--cert")
                .arg(pki.join("client.crt"))
                .arg("--key")
                .arg(pki.join("client.key"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .await
        .unwrap();
        assert!(
            published,
            "mosquitto_pub over TLS failed:\n{}",
            broker.log()
        );
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), seen.recv()).await {
            assert_eq!(msg.payload().as_str(), Some("sealed"));
            assert_eq!(
                msg.to_json()["userProperties"],
                serde_json::json!({"via": "tls"})
            );
            break;
        }
    }
    let info = engine.flow("v5-tls").await.unwrap();
    let node = info.nodes.iter().find(|n| n.id == "in").unwrap();
    assert_eq!(node.status.text, "connected");
    engine.shutdown().await;
}

/// A message property of the wrong type sends the message to `catch`
/// instead of publishing it; the node goes on with the next message.
#[tokio::test]
async fn bad_mqtt5_properties_reach_catch_and_the_node_keeps_going() {
    let broker = Mosquitto::start(BrokerOpts::default());
    let port = broker.port;
    let mut seen = collect("v5-bad-seen");
    let mut errors = collect("v5-bad-errors");
    let mut sink = outside(port, Some("bad-out"));
    let publisher = outside(port, None);
    let engine = engine();
    let flow = r#"
config:
  - {id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${PORT}", protocol: "5"}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: "bad-in", qos: 1, wires: [[seen, props]]}
  - {id: seen, type: test-collect, channel: v5-bad-seen}
  - {id: props, type: change, rules: [{set: userProperties, from: payload}], wires: [[out]]}
  - {id: out, type: mqtt-out, broker: broker, topic: bad-out, qos: 1}
  - {id: errors, type: catch, wires: [[caught]]}
  - {id: caught, type: test-collect, channel: v5-bad-errors}
"#;
    deploy_on(&engine, "v5-bad", flow, port).await;
    sink.wait_subscribed().await;
    wait_flow_subscribed(&publisher, "bad-in", &mut seen).await;
    // The probes ("probe" as userProperties) failed too.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), errors.recv()).await {}

    for payload in ["oops", r#"{"k": "v"}"#] {
        publisher
            .client
            .publish("bad-in", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    let error = next(&mut errors).await;
    let text = error.to_json()["error"]["message"].to_string();
    assert!(text.contains("msg.userProperties is a string"), "{text}");
    let publish = sink.next().await;
    assert_eq!(publish.payload.as_ref(), br#"{"k":"v"}"#);
    assert_eq!(
        publish.properties.unwrap().user_properties,
        vec![("k".to_string(), "v".to_string())]
    );
    engine.shutdown().await;
}

/// MQTT 5 tells the broker runnel's `max_packet_size`: the broker drops a
/// larger message for runnel instead of sending it (which, on 3.1.1,
/// breaks the connection), and the next message arrives on the same
/// connection.
#[tokio::test]
async fn the_broker_keeps_oversized_messages_away_on_mqtt5() {
    let broker = Mosquitto::start(BrokerOpts::default());
    let port = broker.port;
    let mut seen = collect("v5-big");
    let publisher = outside(port, None);
    let engine = engine();
    let flow = r#"
config:
  - {id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${PORT}", protocol: "5", max_packet_size: 2048}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: "big", qos: 1, max_payload: 2000, wires: [[seen]]}
  - {id: seen, type: test-collect, channel: v5-big}
"#;
    deploy_on(&engine, "v5-big", flow, port).await;
    wait_flow_subscribed(&publisher, "big", &mut seen).await;
    let big = format!(r#"{{"n": 1, "pad": "{}"}}"#, "x".repeat(8000));
    publisher
        .client
        .publish("big", QoS::AtLeastOnce, false, big)
        .await
        .unwrap();
    publisher
        .client
        .publish("big", QoS::AtLeastOnce, false, r#"{"n": 2}"#)
        .await
        .unwrap();
    publisher.wait_acked(2).await;
    let msg = next_data(&mut seen).await;
    assert_eq!(n_of(&msg), 2, "only the small message arrives");
    let info = engine.flow("v5-big").await.unwrap();
    let node = info.nodes.iter().find(|n| n.id == "in").unwrap();
    assert_eq!(node.status.text, "connected");
    let log = broker.log();
    assert!(
        log.contains("Dropping too large outgoing PUBLISH for runnel-v5-big-broker"),
        "{log}"
    );
    assert_eq!(
        log.matches("as runnel-v5-big-broker (p5").count(),
        1,
        "one MQTT 5 connection, never broken:\n{log}"
    );
    engine.shutdown().await;
}

/// Publishes with mosquitto_pub as MQTT 5; true when the broker accepted it.
fn mosquitto_pub_v5(port: u16, topic: &str, payload: &str) -> bool {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
        .args(["-m", payload, "-q", "1", "-V", "mqttv5"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A QoS 1 pipe (mqtt-in -> mqtt-out on one shared MQTT 5 connection)
/// while the broker restarts: every message the broker accepted on the
/// input topic comes out at least once. Exercises the MQTT 5 reconnect,
/// resubscribe, and resending of unacknowledged publishes.
#[tokio::test]
async fn qos1_pipe_survives_a_broker_restart_on_mqtt5() {
    let mut broker = Mosquitto::start(BrokerOpts {
        persistence: true,
        ..BrokerOpts::default()
    });
    let port = broker.port;
    let mut reader = outside_with(port, Some("pipe5/out"), "pipe5-reader", true);
    let engine = engine();
    let flow = r#"
config:
  - {id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${PORT}", protocol: "5", reconnect_min: 50ms, reconnect_max: 500ms, max_inflight: 8}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: "pipe5/in", qos: 1, wires: [[out]]}
  - {id: out, type: mqtt-out, broker: broker, topic: pipe5/out, qos: 1}
"#;
    deploy_on(&engine, "pipe5", flow, port).await;
    reader.wait_subscribed().await;
    // Up once a probe comes through the whole pipe.
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "pipe never came up");
        tokio::task::spawn_blocking(move || mosquitto_pub_v5(port, "pipe5/in", "{}"))
            .await
            .unwrap();
        if let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(300), reader.rx.recv()).await
        {
            break;
        }
    }
    let (accepted_tx, accepted_rx) = std::sync::mpsc::channel::<i64>();
    let publisher = std::thread::spawn(move || {
        for n in 0..200_i64 {
            let payload = format!(r#"{{"n": {n}}}"#);
            // While the broker is down a publish fails; retry it (bounded)
            // so the run spans the restart however slow the machine is.
            let give_up = std::time::Instant::now() + GUARD;
            loop {
                if mosquitto_pub_v5(port, "pipe5/in", &payload) {
                    accepted_tx.send(n).unwrap();
                    break;
                }
                if std::time::Instant::now() > give_up {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });
    let mut got = BTreeSet::new();
    while got.len() < 50 {
        let n = n_of_json(&reader.next().await.payload);
        if n >= 0 {
            got.insert(n);
        }
    }
    broker.stop();
    std::thread::sleep(Duration::from_millis(300));
    broker.spawn();
    tokio::task::spawn_blocking(move || publisher.join().unwrap())
        .await
        .unwrap();
    let accepted: BTreeSet<i64> = accepted_rx.try_iter().collect();
    assert!(
        accepted.len() > 50,
        "the publisher got too few messages through"
    );
    let deadline = tokio::time::Instant::now() + GUARD;
    while !accepted.is_subset(&got) {
        let missing: Vec<_> = accepted.difference(&got).take(10).collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "accepted messages never came out: {missing:?}\n{}",
            broker
                .log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
        if let Ok(Some(publish)) =
            tokio::time::timeout(Duration::from_millis(500), reader.rx.recv()).await
        {
            let n = n_of_json(&publish.payload);
            if n >= 0 {
                got.insert(n);
            }
        }
    }
    engine.shutdown().await;
}
