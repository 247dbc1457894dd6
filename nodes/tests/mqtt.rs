//! MQTT nodes against a real Mosquitto (`apt-get install -y mosquitto
//! mosquitto-clients`). Each test starts its own broker on a free port and
//! kills it when done. No timing assertions: timeouts are hang guards only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use runnel_engine::Msg;
use runnel_engine::testing::collect;
use tokio::sync::mpsc::UnboundedReceiver;

mod common;

use common::{
    BrokerOpts, GUARD, Mosquitto, deploy, engine, free_port, hold, n_of, next, receive_all,
};

/// Publishes with mosquitto_pub; true when the broker accepted it (for QoS
/// 1/2: acknowledged).
fn mosquitto_pub(port: u16, topic: &str, payload: &[u8], qos: u8, retain: bool) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload");
    std::fs::write(&file, payload).unwrap();
    let mut command = Command::new("mosquitto_pub");
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
        .args(["-q", &qos.to_string()])
        .arg("-f")
        .arg(&file);
    if retain {
        command.arg("-r");
    }
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A plain subscriber (rumqttc, automatic acks): (topic, payload, retain).
fn subscriber(
    port: u16,
    filter: &str,
    qos: rumqttc::QoS,
) -> UnboundedReceiver<(String, Vec<u8>, bool)> {
    subscriber_with(
        port,
        filter,
        qos,
        &format!("test-sub-{}", free_port()),
        true,
    )
}

/// A subscriber with a fixed client id; `clean: false` keeps its session
/// (and queued messages) across broker restarts.
fn subscriber_with(
    port: u16,
    filter: &str,
    qos: rumqttc::QoS,
    client_id: &str,
    clean: bool,
) -> UnboundedReceiver<(String, Vec<u8>, bool)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_clean_session(clean);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
    let filter = filter.to_string();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    client.subscribe(filter.clone(), qos).await.unwrap();
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    if tx
                        .send((p.topic.clone(), p.payload.to_vec(), p.retain))
                        .is_err()
                    {
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

/// Waits until `filter` has a subscriber on the broker by publishing probes
/// until `rx` sees one (probes carry `"probe"`).
async fn wait_subscribed(port: u16, topic: &str, rx: &mut UnboundedReceiver<Msg>) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "flow never subscribed"
        );
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || mosquitto_pub(port, &topic, b"\"probe\"", 0, false))
            .await
            .unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            // Drain any further probes.
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            {}
            return;
        }
    }
}

// ---------------------------------------------------------------- engine

// ---------------------------------------------------------------- tests

async fn roundtrip(qos: u8) {
    let broker = Mosquitto::start(BrokerOpts::default());
    let port = broker.port;
    let channel = format!("roundtrip-{qos}");
    let mut seen = collect(&channel);
    let mut outside = subscriber(port, "out/#", rumqttc::QoS::ExactlyOnce);
    let engine = engine();
    let flow = format!(
        r#"
config:
  - {{id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${{PORT}}"}}
nodes:
  - id: in
    type: mqtt-in
    broker: broker
    topic: "in/+/b"
    qos: {qos}
    wires: [[seen, out]]
  - {{id: seen, type: test-collect, channel: {channel}}}
  - {{id: out, type: mqtt-out, broker: broker, topic: out/x, qos: {qos}}}
"#
    );
    deploy(&engine, &channel, &flow, &[("PORT", &port.to_string())]).await;
    wait_subscribed(port, "in/probe/b", &mut seen).await;
    // Drain probes that reached the outside subscriber.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), outside.recv()).await {
    }

    let count = 30;
    tokio::task::spawn_blocking(move || {
        for n in 0..count {
            let payload = format!(r#"{{"n": {n}}}"#);
            assert!(mosquitto_pub(port, "in/a/c", b"not matched", qos, false));
            assert!(mosquitto_pub(
                port,
                "in/a/b",
                payload.as_bytes(),
                qos,
                false
            ));
        }
    })
    .await
    .unwrap();

    let mut got = BTreeSet::new();
    while got.len() < count {
        let msg = next(&mut seen).await;
        assert_eq!(msg.topic(), Some("in/a/b"));
        assert_eq!(
            msg.props().get("qos").and_then(|v| v.as_i64()),
            Some(i64::from(qos))
        );
        assert_eq!(
            msg.props().get("retain").and_then(|v| v.as_bool()),
            Some(false)
        );
        got.insert(n_of(&msg));
    }
    assert_eq!(got, (0..count as i64).collect());

    let mut out = BTreeSet::new();
    while out.len() < count {
        let (topic, payload, _) = next(&mut outside).await;
        assert_eq!(topic, "out/x");
        let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        out.insert(value["n"].as_i64().unwrap());
    }
    assert_eq!(out, (0..count as i64).collect());
    engine.shutdown().await;
}

#[tokio::test]
async fn qos0_in_and_out_with_wildcards() {
    roundtrip(0).await;
}

#[tokio::test]
async fn qos1_in_and_out_with_wildcards() {
    roundtrip(1).await;
}

#[tokio::test]
async fn qos2_in_and_out_with_wildcards() {
    roundtrip(2).await;
}

#[tokio::test]
async fn retained_messages_both_ways() {
    let broker = Mosquitto::start(BrokerOpts::default());
    let port = broker.port;
    assert!(mosquitto_pub(port, "state/lamp", b"on", 1, true));
    let mut seen = collect("retained");
    let engine = engine();
    let flow = r#"
config:
  - {id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${PORT}"}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: "state/#", qos: 1, wires: [[seen, out]]}
  - {id: seen, type: test-collect, channel: retained}
  - {id: out, type: mqtt-out, broker: broker, topic: copy/lamp, qos: 1, retain: true}
"#;
    deploy(&engine, "retained", flow, &[("PORT", &port.to_string())]).await;
    let msg = next(&mut seen).await;
    assert_eq!(msg.payload().as_str(), Some("on"));
    assert_eq!(
        msg.props().get("retain").and_then(|v| v.as_bool()),
        Some(true)
    );
    drop(msg);
    // The copy was published retained: a new subscriber gets it at once.
    let mut late = subscriber(port, "copy/lamp", rumqttc::QoS::AtLeastOnce);
    let (topic, payload, retain) = next(&mut late).await;
    assert_eq!(
        (topic.as_str(), payload.as_slice(), retain),
        ("copy/lamp", &b"on"[..], true)
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn shared_subscription_splits_between_two_subscribers() {
    let broker = Mosquitto::start(BrokerOpts::default());
    let port = broker.port.to_string();
    let mut a = collect("shared-a");
    let mut b = collect("shared-b");
    let engine = engine();
    for side in ["a", "b"] {
        let flow = format!(
            r#"
config:
  - {{id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${{PORT}}"}}
nodes:
  - {{id: in, type: mqtt-in, broker: broker, topic: "$share/workers/jobs", qos: 1, wires: [[seen]]}}
  - {{id: seen, type: test-collect, channel: shared-{side}}}
"#
        );
        // Two flows: two client ids (runnel-shared-a-broker, runnel-shared-b-broker).
        deploy(
            &engine,
            &format!("shared-{side}"),
            &flow,
            &[("PORT", &port)],
        )
        .await;
    }
    let port = broker.port;
    // Both subscribed: probe until each side has seen one.
    let deadline = tokio::time::Instant::now() + GUARD;
    let (mut a_ready, mut b_ready) = (false, false);
    while !(a_ready && b_ready) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both sides never subscribed"
        );
        tokio::task::spawn_blocking(move || mosquitto_pub(port, "jobs", b"\"probe\"", 1, false))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(m) = a.try_recv() {
            drop(m);
            a_ready = true;
        }
        while let Ok(m) = b.try_recv() {
            drop(m);
            b_ready = true;
        }
    }
    let count = 60;
    tokio::task::spawn_blocking(move || {
        for n in 0..count {
            assert!(mosquitto_pub(
                port,
                "jobs",
                format!(r#"{{"n": {n}}}"#).as_bytes(),
                1,
                false
            ));
        }
    })
    .await
    .unwrap();
    let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + GUARD;
    while from_a.len() + from_b.len() < count as usize {
        assert!(tokio::time::Instant::now() < deadline, "messages missing");
        tokio::select! {
            Some(m) = a.recv() => { let n = n_of(&m); if n >= 0 { from_a.push(n) } }
            Some(m) = b.recv() => { let n = n_of(&m); if n >= 0 { from_b.push(n) } }
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    assert!(
        !from_a.is_empty() && !from_b.is_empty(),
        "a: {from_a:?}, b: {from_b:?}"
    );
    let mut all: Vec<i64> = from_a.iter().chain(&from_b).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..count).collect::<Vec<i64>>(),
        "each message exactly once across both"
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn wrong_credentials_give_a_clear_status_and_right_ones_connect() {
    let broker = Mosquitto::start(BrokerOpts {
        password: Some(("runnel", "s3cret")),
        ..BrokerOpts::default()
    });
    let port = broker.port.to_string();
    let mut seen = collect("creds");
    let engine = engine();
    let flow = r#"
config:
  - {id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${PORT}", username: runnel, password: "${MQTT_PASSWORD}", reconnect_min: 50ms, reconnect_max: 200ms}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: "t", qos: 1, wires: [[seen]]}
  - {id: seen, type: test-collect, channel: creds}
"#;
    deploy(
        &engine,
        "creds",
        flow,
        &[("PORT", &port), ("MQTT_PASSWORD", "wrong")],
    )
    .await;
    let deadline = tokio::time::Instant::now() + GUARD;
    let status = loop {
        let info = engine.flow("creds").await.unwrap();
        let node = info.nodes.iter().find(|n| n.id == "in").unwrap();
        if node.status.text.contains("refused") {
            break node.status.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusal status: {:?}",
            node.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.fill, Some("red"));
    assert!(
        status.text.contains("not authorized") || status.text.contains("bad user name or password"),
        "{}",
        status.text
    );
    assert!(!status.text.contains("wrong"), "the password must not show");

    // The right password (a redeploy) connects.
    deploy(
        &engine,
        "creds",
        flow,
        &[("PORT", &port), ("MQTT_PASSWORD", "s3cret")],
    )
    .await;
    let port = broker.port;
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never received with the right password"
        );
        let published = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "t",
                "-m",
                "hi",
            ])
            .args(["-u", "runnel", "-P", "s3cret", "-q", "1"])
            .status()
            .unwrap();
        assert!(published.success());
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), seen.recv()).await {
            assert_eq!(msg.payload().as_str(), Some("hi"));
            break;
        }
    }
    let info = engine.flow("creds").await.unwrap();
    let node = info.nodes.iter().find(|n| n.id == "in").unwrap();
    assert_eq!(node.status.text, "connected");
    engine.shutdown().await;
}

#[tokio::test]
async fn malformed_and_oversized_payloads_reach_catch_and_the_node_keeps_going() {
    let broker = Mosquitto::start(BrokerOpts::default());
    let port = broker.port;
    let mut ok = collect("malformed-ok");
    let mut caught = collect("malformed-caught");
    let engine = engine();
    let flow = r#"
config:
  - {id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${PORT}"}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: "data", qos: 1, datatype: json, max_payload: 64, wires: [[ok]]}
  - {id: ok, type: test-collect, channel: malformed-ok}
  - {id: catch, type: catch, wires: [[caught]]}
  - {id: caught, type: test-collect, channel: malformed-caught}
"#;
    deploy(&engine, "malformed", flow, &[("PORT", &port.to_string())]).await;
    wait_subscribed(port, "data", &mut ok).await;
    let big = vec![b'x'; 100];
    tokio::task::spawn_blocking(move || {
        assert!(mosquitto_pub(port, "data", b"{not json", 1, false));
        assert!(mosquitto_pub(port, "data", &big, 1, false));
        assert!(mosquitto_pub(port, "data", br#"{"n": 7}"#, 1, false));
    })
    .await
    .unwrap();
    let good = next(&mut ok).await;
    assert_eq!(n_of(&good), 7);

    let first = next(&mut caught).await.to_json();
    let second = next(&mut caught).await.to_json();
    let (bad, large) = if first["payload"] == "{not json" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(bad["payload"], "{not json");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{bad}"
    );
    assert_eq!(bad["error"]["source"]["id"], "in");
    assert_eq!(bad["topic"], "data");
    assert_eq!(large["size"], 100);
    assert!(
        large["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_payload"),
        "{large}"
    );
    engine.shutdown().await;
}

/// Mosquitto is stopped and started again while QoS 1 messages flow: every
/// message the broker acknowledged to its publisher reaches the flow.
#[tokio::test]
async fn broker_restart_loses_no_accepted_qos1_message() {
    let mut broker = Mosquitto::start(BrokerOpts {
        persistence: true,
        ..BrokerOpts::default()
    });
    let port = broker.port;
    let mut seen = collect("restart");
    let engine = engine();
    let flow = r#"
config:
  - {id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${PORT}", reconnect_min: 50ms, reconnect_max: 500ms}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: "fault/#", qos: 1, wires: [[seen]]}
  - {id: seen, type: test-collect, channel: restart}
"#;
    deploy(&engine, "restart", flow, &[("PORT", &port.to_string())]).await;
    wait_subscribed(port, "fault/probe", &mut seen).await;

    let (accepted_tx, accepted_rx) = std::sync::mpsc::channel::<i64>();
    let publisher = std::thread::spawn(move || {
        for n in 0..150_i64 {
            let payload = format!(r#"{{"n": {n}}}"#);
            // Retry while the broker is down (bounded), so the run spans the
            // restart however slow the machine is.
            let give_up = std::time::Instant::now() + GUARD;
            loop {
                if mosquitto_pub(port, "fault/data", payload.as_bytes(), 1, false) {
                    accepted_tx.send(n).unwrap();
                    break;
                }
                if std::time::Instant::now() > give_up {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    // Let some traffic through, then restart the broker under load.
    let mut got = BTreeSet::new();
    while got.len() < 40 {
        got.insert(n_of(&next(&mut seen).await));
    }
    broker.stop();
    std::thread::sleep(Duration::from_millis(500));
    broker.spawn();
    tokio::task::spawn_blocking(move || publisher.join().unwrap())
        .await
        .unwrap();
    let accepted: BTreeSet<i64> = accepted_rx.try_iter().collect();
    assert!(
        accepted.len() > 40,
        "the publisher got too few messages through"
    );
    receive_all(&mut seen, &mut got, &accepted, &broker).await;
    engine.shutdown().await;
}

/// runnel dies (its runtime is torn down, no DISCONNECT, no acks) while it
/// holds unfinished QoS 1 messages: the next start receives them again.
#[test]
fn unfinished_messages_are_redelivered_after_a_crash() {
    let broker = Mosquitto::start(BrokerOpts::default());
    let port = broker.port;
    let flow = r#"
config:
  - {id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${PORT}"}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: "crash/#", qos: 1, wires: [[seen]]}
  - {id: seen, type: t-hold, channel: CHANNEL}
"#;
    let env = [("PORT", port.to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // First life: receive 10, finish the first 4 (acked), hold the rest.
    let first = tokio::runtime::Runtime::new().unwrap();
    let held: Vec<Msg> = first.block_on(async {
        let mut seen = hold("crash-1");
        let engine = engine();
        deploy(&engine, "crash", &flow.replace("CHANNEL", "crash-1"), &env).await;
        wait_subscribed(port, "crash/probe", &mut seen).await;
        tokio::task::spawn_blocking(move || {
            for n in 0..10 {
                assert!(mosquitto_pub(
                    port,
                    "crash/data",
                    format!(r#"{{"n": {n}}}"#).as_bytes(),
                    1,
                    false
                ));
            }
        })
        .await
        .unwrap();
        let mut held = Vec::new();
        while held.len() < 10 {
            held.push(next(&mut seen).await);
        }
        held.sort_by_key(n_of);
        let rest = held.split_off(4);
        drop(held);
        broker
            .wait_logged("Received PUBACK from runnel-crash-broker", 4)
            .await;
        std::mem::forget(engine);
        rest
    });
    first.shutdown_background();
    drop(held);

    // Second life: the same flow (same client id, persistent session).
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let mut seen = hold("crash-2");
        let engine = engine();
        deploy(&engine, "crash", &flow.replace("CHANNEL", "crash-2"), &env).await;
        let mut got = BTreeSet::new();
        receive_all(&mut seen, &mut got, &(4..10).collect(), &broker).await;
        assert!(
            got.iter().all(|n| *n >= 4 || *n < 0),
            "acked messages came back: {got:?}"
        );
        engine.shutdown().await;
    });
}

/// Redeploys under QoS 1 load lose nothing and never open a second
/// connection with the flow's client id: a redeploy that changes a node
/// downstream of `mqtt-in` (the connection stays, `mqtt-in` keeps running),
/// one that changes `mqtt-in` itself (replaced on the same connection), and
/// one that changes the broker node (connection closed, then reopened).
#[tokio::test]
async fn redeploy_under_load_keeps_one_connection_and_loses_nothing() {
    let broker = Mosquitto::start(BrokerOpts::default());
    let port = broker.port;
    let mut seen = collect("redeploy");
    let engine = engine();
    // `hold` has a queue of its own; `seen` runs fused into its task.
    let flow = |broker_extra: &str, in_name: &str, seen_name: &str| {
        format!(
            r#"
config:
  - {{id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${{PORT}}"{broker_extra}}}
nodes:
  - {{id: in, type: mqtt-in, name: {in_name}, broker: broker, topic: "re/#", qos: 1, wires: [[hold]]}}
  - {{id: hold, type: delay, delay: 1ms, wires: [[seen]]}}
  - {{id: seen, type: test-collect, name: {seen_name}, channel: redeploy}}
"#
        )
    };
    let flows = [
        (flow("", "a", "a"), [].as_slice(), [].as_slice()),
        // Downstream changed: mqtt-in keeps running.
        (
            flow("", "a", "b"),
            ["hold", "seen"].as_slice(),
            ["in"].as_slice(),
        ),
        // mqtt-in changed: replaced on the same connection.
        (
            flow("", "b", "b"),
            ["in"].as_slice(),
            ["hold", "seen"].as_slice(),
        ),
        // The broker node changed: every node using it restarts.
        (
            flow(", keepalive: 20s", "b", "b"),
            ["in"].as_slice(),
            ["hold", "seen"].as_slice(),
        ),
    ];
    let env = [("PORT", port.to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    deploy(&engine, "redeploy", &flows[0].0, &env).await;
    wait_subscribed(port, "re/probe", &mut seen).await;
    let publisher = std::thread::spawn(move || {
        let mut accepted = Vec::new();
        for n in 0..120_i64 {
            if mosquitto_pub(
                port,
                "re/data",
                format!(r#"{{"n": {n}}}"#).as_bytes(),
                1,
                false,
            ) {
                accepted.push(n);
            }
        }
        accepted
    });
    // Consume concurrently, so that redeploys drain quickly.
    let got = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let consumer = tokio::spawn({
        let got = got.clone();
        async move {
            while let Some(msg) = seen.recv().await {
                got.lock().unwrap().insert(n_of(&msg));
            }
        }
    });
    for (round, (flow, started, kept)) in flows.iter().enumerate().skip(1) {
        let deadline = tokio::time::Instant::now() + GUARD;
        while got.lock().unwrap().len() < 20 * round {
            assert!(tokio::time::Instant::now() < deadline, "traffic stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = deploy(&engine, "redeploy", flow, &env).await;
        assert_eq!(report.started, *started, "round {round}: {report:?}");
        assert_eq!(report.kept, *kept, "round {round}: {report:?}");
    }
    let accepted: BTreeSet<i64> = tokio::task::spawn_blocking(move || publisher.join().unwrap())
        .await
        .unwrap()
        .into_iter()
        .collect();
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let missing: Vec<i64> = accepted.difference(&got.lock().unwrap()).copied().collect();
        if missing.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "lost: {missing:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.abort();
    engine.shutdown().await;
    let log = broker.log();
    assert!(
        !log.contains("already connected"),
        "a second connection with the same client id took over:\n{log}"
    );
}

/// A QoS 1 pipe (mqtt-in -> mqtt-out on one shared connection) while the
/// broker restarts: every message the broker accepted on the input topic
/// comes out on the output topic at least once. Exercises holding outgoing
/// messages until PUBACK and resending them after the reconnect.
#[tokio::test]
async fn qos1_pipe_survives_a_broker_restart() {
    let mut broker = Mosquitto::start(BrokerOpts {
        persistence: true,
        ..BrokerOpts::default()
    });
    let port = broker.port;
    let mut outside = subscriber_with(
        port,
        "pipe/out",
        rumqttc::QoS::AtLeastOnce,
        "pipe-reader",
        false,
    );
    let engine = engine();
    let flow = r#"
config:
  - {id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${PORT}", reconnect_min: 50ms, reconnect_max: 500ms, max_inflight: 8}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: "pipe/in", qos: 1, wires: [[out]]}
  - {id: out, type: mqtt-out, broker: broker, topic: pipe/out, qos: 1}
"#;
    deploy(&engine, "pipe", flow, &[("PORT", &port.to_string())]).await;
    // Subscribed once a probe comes through the whole pipe.
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "pipe never came up");
        tokio::task::spawn_blocking(move || mosquitto_pub(port, "pipe/in", b"{}", 1, false))
            .await
            .unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), outside.recv()).await
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
                if mosquitto_pub(port, "pipe/in", payload.as_bytes(), 1, false) {
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
    let take = |got: &mut BTreeSet<i64>, payload: &[u8]| {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload)
            && let Some(n) = value["n"].as_i64()
        {
            got.insert(n);
        }
    };
    while got.len() < 50 {
        let (_, payload, _) = next(&mut outside).await;
        take(&mut got, &payload);
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
            "accepted messages never came out: {missing:?}"
        );
        if let Ok(Some((_, payload, _))) =
            tokio::time::timeout(Duration::from_millis(500), outside.recv()).await
        {
            take(&mut got, &payload);
        }
    }
    engine.shutdown().await;
}

/// `flows/bench-pipe.yaml` runs against a broker given by the environment
/// and republishes `d.location` of each device document.
#[tokio::test]
async fn bench_pipe_flow_extracts_the_location() {
    let broker = Mosquitto::start(BrokerOpts::default());
    let port = broker.port;
    let mut outside = subscriber(port, "car-iotp/location", rumqttc::QoS::AtLeastOnce);
    let engine = engine();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../flows/bench-pipe.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    for qos in ["0", "1"] {
        let env: HashMap<String, String> = [
            ("MQTT_PORT".to_string(), port.to_string()),
            ("MQTT_QOS".to_string(), qos.to_string()),
        ]
        .into();
        let flow = engine
            .loader()
            .load_with_env(&path, &text, &env)
            .unwrap_or_else(|d| panic!("bench-pipe.yaml should load:\n{d}"));
        engine.deploy(flow).await;
        let document = r#"{"_id":"dev-0","_rev":"1-a","d":{"name":"My Device","location":{"longitude":-87.62,"latitude":41.87,"velocity":4,"type":"GPS","t":1,"s":2,"p":0,"r":9}}}"#;
        let deadline = tokio::time::Instant::now() + GUARD;
        let location = loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing came out at qos {qos}"
            );
            tokio::task::spawn_blocking(move || {
                mosquitto_pub(port, "car-iotp", document.as_bytes(), 1, false)
            })
            .await
            .unwrap();
            if let Ok(Some((_, payload, _))) =
                tokio::time::timeout(Duration::from_millis(300), outside.recv()).await
            {
                break serde_json::from_slice::<serde_json::Value>(&payload).unwrap();
            }
        };
        assert_eq!(location["latitude"], 41.87);
        assert_eq!(location["r"], 9);
        assert!(location.get("name").is_none());
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(200), outside.recv()).await
        {}
    }
    engine.shutdown().await;
}

/// TLS against a CA generated at test time, with a client certificate
/// (Mosquitto requires one).
#[tokio::test]
async fn tls_with_a_test_ca_and_a_client_certificate() {
    let broker = Mosquitto::start(BrokerOpts {
        tls: true,
        ..BrokerOpts::default()
    });
    let port = broker.port;
    let pki = broker.dir.path().to_path_buf();
    let mut seen = collect("tls");
    let engine = engine();
    let flow = r#"
config:
  - id: broker
    type: mqtt-broker
    host: 127.0.0.1
    port: "${PORT}"
    tls: {ca_file: "${PKI}/ca.crt", cert_file: "${PKI}/client.crt", key_file: "${PKI}/client.key"}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: "secure/#", qos: 1, wires: [[seen]]}
  - {id: seen, type: test-collect, channel: tls}
"#;
    let pki_text = pki.display().to_string();
    deploy(
        &engine,
        "tls",
        flow,
        &[("PORT", &port.to_string()), ("PKI", &pki_text)],
    )
    .await;
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing over TLS; status {:?}\n{}",
            engine.flow("tls").await.map(|f| f.nodes[0].status.clone()),
            broker.log()
        );
        let pki = pki.clone();
        let published = tokio::task::spawn_blocking(move || {
            Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-t",
                    "secure/x",
                    "-m",
                    "sealed",
                    "-q",
                    "1",
                ])
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
            break;
        }
    }
    engine.shutdown().await;
}

/// `mqtt-out` without topic/qos/retain in its config takes them from the
/// message; a message without a topic goes to `catch`.
#[tokio::test]
async fn mqtt_out_takes_topic_qos_and_retain_from_the_message() {
    let broker = Mosquitto::start(BrokerOpts::default());
    let port = broker.port;
    let mut caught = collect("from-msg-caught");
    let engine = engine();
    let flow = r#"
config:
  - {id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${PORT}"}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: "src/#", qos: 1, wires: [[route]]}
  - id: route
    type: change
    rules:
      - {set: topic, from: payload.to}
      - {set: retain, to: true}
      - {set: qos, to: 1}
      - {set: payload, from: payload.body}
    wires: [[out]]
  - {id: out, type: mqtt-out, broker: broker}
  - {id: catch, type: catch, wires: [[caught]]}
  - {id: caught, type: test-collect, channel: from-msg-caught}
"#;
    deploy(&engine, "from-msg", flow, &[("PORT", &port.to_string())]).await;
    // Publish until the retained copy shows up for a late subscriber.
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing published from msg.topic"
        );
        tokio::task::spawn_blocking(move || {
            mosquitto_pub(
                port,
                "src/a",
                br#"{"to": "dst/lamp", "body": {"on": true}}"#,
                1,
                false,
            )
        })
        .await
        .unwrap();
        let mut watcher = subscriber(port, "dst/lamp", rumqttc::QoS::AtLeastOnce);
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), watcher.recv()).await
        {
            break;
        }
    }
    // Published with retain: a subscriber arriving now gets it retained.
    let mut late = subscriber(port, "dst/lamp", rumqttc::QoS::AtLeastOnce);
    let (topic, payload, retain) = next(&mut late).await;
    assert_eq!(topic, "dst/lamp");
    assert!(retain, "published with retain from msg.retain");
    assert_eq!(payload, br#"{"on":true}"#);
    // No `to`: the change node deletes msg.topic, and mqtt-out reports it.
    tokio::task::spawn_blocking(move || mosquitto_pub(port, "src/b", br#"{"body": 1}"#, 1, false))
        .await
        .unwrap();
    let error = next(&mut caught).await.to_json();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no topic"),
        "{error}"
    );
    assert_eq!(error["error"]["source"]["id"], "out");
    engine.shutdown().await;
}
