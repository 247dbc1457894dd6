//! MQTT 5 (`protocol: "5"`) on the MQTT nodes, against a real Mosquitto 2
//! (`apt-get install -y mosquitto`). Each test starts its own broker on a
//! free port. The outside side is a raw rumqttc v5 client, so properties
//! are checked as they travel on the wire. No timing assertions: timeouts
//! are hang guards only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::testing::{Collect, collect};
use runnel_engine::{
    BuildCtx, BuildError, Engine, EngineSettings, EngineShared, Msg, NodeError, NodeSpec, NodeType,
    Out, Registry, SyncNode, Value,
};
use serde::Deserialize;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;

const GUARD: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- broker

struct Mosquitto {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl Mosquitto {
    fn start() -> Mosquitto {
        assert!(
            Command::new("mosquitto").arg("-h").output().is_ok(),
            "mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // `user root`: see nodes/tests/mqtt.rs (log file in our temp dir).
        let conf = format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nlog_dest file {}\nlog_type all\n",
            dir.path().join("mosquitto.log").display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let broker = Mosquitto { port, dir, child };
        let deadline = std::time::Instant::now() + GUARD;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not start:\n{}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------- outside client

/// A raw MQTT 5 client (automatic acks): incoming publishes go to `rx`,
/// the broker's PUBACKs are counted in `acked`, `subscribed` turns true at
/// the first SUBACK.
struct Outside {
    client: AsyncClient,
    rx: UnboundedReceiver<Publish>,
    acked: Arc<AtomicUsize>,
    subscribed: watch::Receiver<bool>,
}

fn outside(port: u16, subscribe: Option<&str>) -> Outside {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = watch::channel(false);
    let acked = Arc::new(AtomicUsize::new(0));
    let mut options = MqttOptions::new(format!("outside-{}", free_port()), "127.0.0.1", port);
    options.set_max_packet_size(Some(1 << 20));
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
                            .subscribe(filter.clone(), QoS::AtLeastOnce)
                            .await
                            .unwrap();
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subscribed_tx.send_replace(true);
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
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

    /// Waits until the broker has acknowledged `count` QoS 1 publishes.
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

/// A sink that hands messages to the test with their tracker: they stay
/// unfinished (unacknowledged) until the test drops them.
struct Hold;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HoldConfig {
    channel: String,
}

type HoldChannels = std::sync::Mutex<HashMap<String, tokio::sync::mpsc::UnboundedSender<Msg>>>;

fn hold_channels() -> &'static HoldChannels {
    static CHANNELS: std::sync::OnceLock<HoldChannels> = std::sync::OnceLock::new();
    CHANNELS.get_or_init(Default::default)
}

fn hold(channel: &str) -> UnboundedReceiver<Msg> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    hold_channels()
        .lock()
        .unwrap()
        .insert(channel.to_string(), tx);
    rx
}

struct HoldNode(Option<tokio::sync::mpsc::UnboundedSender<Msg>>);

impl SyncNode for HoldNode {
    fn on_msg(&mut self, msg: Msg, _: &mut Out) -> Result<(), NodeError> {
        if let Some(tx) = &self.0 {
            let _ = tx.send(msg);
        }
        Ok(())
    }
}

impl NodeType for Hold {
    const TYPE: &'static str = "t-hold";
    const SUMMARY: &'static str = "test sink keeping messages unfinished";
    type Config = HoldConfig;
    fn build(config: HoldConfig, _: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        let tx = hold_channels()
            .lock()
            .unwrap()
            .get(&config.channel)
            .cloned();
        Ok(NodeSpec::sync(0, HoldNode(tx)))
    }
}

fn registry() -> Arc<Registry> {
    let mut registry = Registry::new();
    runnel_nodes::register_all(&mut registry);
    registry.register::<Collect>().register::<Hold>();
    registry.into_shared()
}

fn engine() -> Arc<Engine> {
    let settings = EngineSettings {
        drain_timeout: Duration::from_secs(5),
        ..EngineSettings::default()
    };
    Engine::new(registry(), EngineShared::new(settings))
}

async fn deploy(engine: &Engine, name: &str, yaml: &str, port: u16) {
    let env: HashMap<String, String> = [("PORT".to_string(), port.to_string())].into();
    let flow = engine
        .loader()
        .load_with_env(Path::new(&format!("{name}.yaml")), yaml, &env)
        .unwrap_or_else(|d| panic!("flow should load:\n{d}"));
    engine.deploy(flow).await;
}

async fn next(rx: &mut UnboundedReceiver<Msg>) -> Msg {
    tokio::time::timeout(GUARD, rx.recv())
        .await
        .expect("a message within the hang guard")
        .expect("channel open")
}

fn n_of_json(payload: &[u8]) -> i64 {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v["n"].as_i64())
        .unwrap_or(-1)
}

fn n_of(msg: &Msg) -> i64 {
    msg.payload()
        .as_object()
        .and_then(|o| o.get("n"))
        .and_then(Value::as_i64)
        .unwrap_or(-1)
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn qos1_in_and_out_over_mqtt5() {
    let broker = Mosquitto::start();
    let port = broker.port;
    let mut seen = collect("v5-qos1");
    let mut sink = outside(port, Some("v5out/#"));
    let publisher = outside(port, None);
    let engine = engine();
    let flow = r#"
config:
  - {id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${PORT}", protocol: "5"}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: "v5in/+", qos: 1, wires: [[seen, out]]}
  - {id: seen, type: test-collect, channel: v5-qos1}
  - {id: out, type: mqtt-out, broker: broker, topic: v5out/x, qos: 1}
"#;
    deploy(&engine, "v5-qos1", flow, port).await;
    sink.wait_subscribed().await;
    wait_flow_subscribed(&publisher, "v5in/probe", &mut seen).await;
    // Probes went out too: skip them on the outside.
    let count = 30;
    for n in 0..count {
        publisher
            .client
            .publish(
                "v5in/a",
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"n": {n}}}"#),
            )
            .await
            .unwrap();
    }
    publisher.wait_acked(count as usize).await;

    let mut got = BTreeSet::new();
    while got.len() < count as usize {
        let msg = next(&mut seen).await;
        assert_eq!(msg.topic(), Some("v5in/a"));
        assert_eq!(msg.props().get("qos").and_then(Value::as_i64), Some(1));
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
            assert_eq!(publish.qos, QoS::AtLeastOnce);
            out.insert(n);
        }
    }
    assert_eq!(out, (0..count).collect());
    engine.shutdown().await;
}

#[tokio::test]
async fn mqtt5_properties_round_trip_through_in_and_out() {
    let broker = Mosquitto::start();
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
    deploy(&engine, "v5-props", flow, port).await;
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
    let msg = next(&mut seen).await;
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
#[test]
fn unfinished_messages_are_redelivered_after_a_crash_on_mqtt5() {
    let broker = Mosquitto::start();
    let port = broker.port;
    let flow = r#"
config:
  - {id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${PORT}", protocol: "5"}
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
        deploy(
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
            held.push(next(&mut seen).await);
        }
        held.sort_by_key(n_of);
        let rest = held.split_off(4);
        drop(held);
        // Give the acks of 0..4 time to reach the broker (not an assertion).
        tokio::time::sleep(Duration::from_millis(500)).await;
        std::mem::forget(engine);
        rest
    });
    first.shutdown_background();
    drop(held);

    // Second life: the same flow (same client id, persistent session).
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let mut seen = hold("crash5-2");
        let engine = engine();
        deploy(
            &engine,
            "crash5",
            &flow.replace("CHANNEL", "crash5-2"),
            port,
        )
        .await;
        let mut got = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + GUARD;
        while !(4..10).all(|n| got.contains(&n)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not redelivered; got {got:?}\n{}",
                broker.log()
            );
            if let Ok(Some(msg)) =
                tokio::time::timeout(Duration::from_millis(500), seen.recv()).await
            {
                got.insert(n_of(&msg));
            }
        }
        assert!(
            got.iter().all(|n| *n >= 4 || *n < 0),
            "acked messages came back: {got:?}"
        );
        engine.shutdown().await;
    });
}
