//! `mqtt-broker` with `embedded:`: runnel-broker inside the engine, reached
//! by real outside clients (mosquitto_pub from Debian, a rumqttc
//! subscriber) while the flow's `mqtt-in`/`mqtt-out` use it in process.
//! Each test picks its own free port. No timing assertions: timeouts are
//! hang guards only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use runnel_engine::testing::{Collect, collect};
use runnel_engine::{Engine, EngineSettings, EngineShared, FlowId, Msg, Registry};
use tokio::sync::mpsc::UnboundedReceiver;

const GUARD: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn engine() -> Arc<Engine> {
    let mut registry = Registry::new();
    runnel_nodes::register_all(&mut registry);
    registry.register::<Collect>();
    let settings = EngineSettings {
        drain_timeout: Duration::from_secs(5),
        ..EngineSettings::default()
    };
    Engine::new(registry.into_shared(), EngineShared::new(settings))
}

fn load(engine: &Engine, name: &str, yaml: &str, port: u16) -> runnel_engine::Flow {
    let env: HashMap<String, String> = [("MQTT_LISTEN".to_string(), format!("127.0.0.1:{port}"))]
        .into_iter()
        .collect();
    engine
        .loader()
        .load_with_env(Path::new(&format!("{name}.yaml")), yaml, &env)
        .unwrap_or_else(|d| panic!("flow should load:\n{d}"))
}

/// Publishes with mosquitto_pub; true when the broker accepted it (QoS 1:
/// acknowledged).
fn mosquitto_pub(port: u16, topic: &str, payload: &str, qos: u8) -> bool {
    assert!(
        Command::new("mosquitto_pub").arg("--help").output().is_ok(),
        "mosquitto_pub is not installed: apt-get install -y mosquitto-clients"
    );
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
        .args(["-q", &qos.to_string(), "-m", payload])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn publish(port: u16, topic: &str, payload: &str, qos: u8) -> bool {
    let (topic, payload) = (topic.to_string(), payload.to_string());
    tokio::task::spawn_blocking(move || mosquitto_pub(port, &topic, &payload, qos))
        .await
        .unwrap()
}

/// An outside subscriber (rumqttc): (topic, payload). The first item is
/// sent once the broker has granted the subscription.
fn subscriber(port: u16, filter: &str) -> UnboundedReceiver<(String, Vec<u8>)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let options = rumqttc::MqttOptions::new(format!("test-sub-{port}"), "127.0.0.1", port);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
    let filter = filter.to_string();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    client
                        .subscribe(filter.clone(), rumqttc::QoS::AtLeastOnce)
                        .await
                        .unwrap();
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    let _ = tx.send(("$suback".to_string(), Vec::new()));
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    rx
}

async fn next<T>(rx: &mut UnboundedReceiver<T>) -> T {
    tokio::time::timeout(GUARD, rx.recv())
        .await
        .expect("a message within the hang guard")
        .expect("channel open")
}

/// Publishes probes on `topic` until the flow's in-process subscription
/// delivers one (the broker starts when the flow runs), then drains probes.
async fn wait_subscribed(port: u16, topic: &str, rx: &mut UnboundedReceiver<Msg>) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the embedded broker never delivered to the flow"
        );
        publish(port, topic, "probe", 0).await;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            {}
            return;
        }
    }
}

const PIPE: &str = r#"
config:
  - id: broker
    type: mqtt-broker
    embedded:
      listen: "${MQTT_LISTEN}"
nodes:
  - id: in
    type: mqtt-in
    broker: broker
    topic: "in/+"
    qos: 1
    wires: [[seen, extract]]
  - {id: seen, type: test-collect, channel: CHANNEL}
  - id: extract
    type: change
    rules:
      - {set: payload, from: "payload.d.location"}
    wires: [[out]]
  - {id: out, type: mqtt-out, broker: broker, topic: out/location, qos: 1}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_clients_and_the_flow_meet_in_the_embedded_broker() {
    let port = free_port();
    let mut seen = collect("embedded-pipe");
    let engine = engine();
    let flow = load(
        &engine,
        "pipe",
        &PIPE.replace("CHANNEL", "embedded-pipe"),
        port,
    );
    // Loading (what `runnel check` does) binds nothing.
    assert!(port_is_free(port), "building the flow must not bind");
    engine.deploy(flow).await;
    wait_subscribed(port, "in/probe", &mut seen).await;

    let mut outside = subscriber(port, "out/#");
    assert_eq!(next(&mut outside).await.0, "$suback");

    let document = r#"{"_id":"x","d":{"name":"My Device","location":{"longitude":-87.62,"latitude":41.87,"velocity":4,"type":"GPS"}}}"#;
    assert!(publish(port, "in/car", document, 1).await);
    let msg = next(&mut seen).await;
    assert_eq!(msg.topic(), Some("in/car"));
    assert_eq!(msg.props().get("qos").and_then(|v| v.as_i64()), Some(1));
    assert_eq!(
        msg.props().get("retain").and_then(|v| v.as_bool()),
        Some(false)
    );
    assert_eq!(
        msg.payload().to_json()["d"]["name"],
        serde_json::json!("My Device"),
        "payload auto-decoded as JSON, as on the socket path"
    );

    let (topic, payload) = next(&mut outside).await;
    assert_eq!(topic, "out/location");
    let location: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        location,
        serde_json::json!({"longitude": -87.62, "latitude": 41.87, "velocity": 4, "type": "GPS"})
    );

    // Text stays text.
    assert!(publish(port, "in/text", "hello from car tag", 0).await);
    let msg = next(&mut seen).await;
    assert_eq!(msg.payload().as_str(), Some("hello from car tag"));
    assert_eq!(msg.props().get("qos").and_then(|v| v.as_i64()), Some(0));

    engine.shutdown().await;
    assert!(port_is_free(port), "shutdown releases the port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploy_and_removal_release_the_port() {
    let port = free_port();
    let mut seen = collect("embedded-redeploy");
    let engine = engine();
    let yaml = PIPE.replace("CHANNEL", "embedded-redeploy");

    engine.deploy(load(&engine, "redeploy", &yaml, port)).await;
    wait_subscribed(port, "in/probe", &mut seen).await;

    // The same flow again: the old broker must stop (and free the port)
    // before the new one binds it, or the new one could not start.
    for round in 0..2 {
        engine.deploy(load(&engine, "redeploy", &yaml, port)).await;
        wait_subscribed(port, "in/probe", &mut seen).await;
        assert!(!port_is_free(port), "round {round}: the broker listens");
        assert!(publish(port, "in/x", "after redeploy", 1).await);
        let msg = next(&mut seen).await;
        assert_eq!(msg.payload().as_str(), Some("after redeploy"));
    }

    assert!(engine.remove(&FlowId::new("redeploy")).await);
    assert!(port_is_free(port), "removing the flow releases the port");
    // And it can be bound again by a new deployment.
    engine.deploy(load(&engine, "redeploy", &yaml, port)).await;
    wait_subscribed(port, "in/probe", &mut seen).await;
    engine.shutdown().await;
    assert!(port_is_free(port), "shutdown releases the port");
}
