//! The seed demo with no external server: `runnel run
//! flows/car-tracker.yaml` (the real binary) runs its own MQTT broker, and
//! Debian's mosquitto_pub/mosquitto_sub talk to it. Timeouts are hang
//! guards only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::{GUARD, lines, terminate};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_car_tracker(port: u16) -> Child {
    let data = tempfile::tempdir().unwrap().keep();
    Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["run", "flows/car-tracker.yaml", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("MQTT_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUNNEL_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn mosquitto_pub(port: u16, topic: &str, payload: &str) -> bool {
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-m",
            payload,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mosquitto_pub is installed (apt-get install -y mosquitto-clients)")
        .success()
}

/// Publishes `payload` until a debug line from `node` shows it (the broker
/// starts, and the flow subscribes, while runnel starts up).
fn publish_until_shown(
    port: u16,
    topic: &str,
    payload: &str,
    node: &str,
    rx: &mpsc::Receiver<String>,
) -> serde_json::Value {
    let deadline = Instant::now() + GUARD;
    while Instant::now() < deadline {
        mosquitto_pub(port, topic, payload);
        let wait_until = Instant::now() + Duration::from_secs(1);
        while let Some(left) = wait_until.checked_duration_since(Instant::now()) {
            let Ok(line) = rx.recv_timeout(left) else {
                break;
            };
            let line: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
            if line["node"] == node {
                return line;
            }
        }
    }
    panic!("no debug line from {node} within {GUARD:?}");
}

#[test]
fn the_car_tracker_runs_its_own_broker_for_mosquitto_clients() {
    let port = free_port();
    let mut runnel = spawn_car_tracker(port);
    let rx = lines(&mut runnel);

    // The tour: a text message prints a debug line from the car branch…
    let line = publish_until_shown(port, "car-iotp", "hello from car tag", "car-tag", &rx);
    assert_eq!(line["msg"]["payload"], "hello from car tag");
    assert_eq!(line["msg"]["topic"], "car-iotp");
    // …and one on mobile-iotp from the mobile branch.
    let line = publish_until_shown(
        port,
        "mobile-iotp",
        "hello from mobile user",
        "mobile-user",
        &rx,
    );
    assert_eq!(line["msg"]["payload"], "hello from mobile user");

    // A device document's location reaches a mosquitto_sub on
    // car-iotp/location. mosquitto_sub cannot say when it has subscribed,
    // so the document is published until it prints one message (-C 1).
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "car-iotp/location",
            "-C",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub is installed (apt-get install -y mosquitto-clients)");
    let document = r#"{"_id":"x","d":{"name":"My Device","location":{"longitude":-87.62,"latitude":41.87,"velocity":4,"type":"GPS"}}}"#;
    let deadline = Instant::now() + GUARD;
    loop {
        assert!(mosquitto_pub(port, "car-iotp", document));
        std::thread::sleep(Duration::from_millis(300));
        if sub.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            sub.kill().unwrap();
            panic!("mosquitto_sub received no location within {GUARD:?}");
        }
    }
    let mut received = String::new();
    sub.stdout
        .take()
        .unwrap()
        .read_to_string(&mut received)
        .unwrap();
    let location: serde_json::Value = serde_json::from_str(received.trim()).unwrap();
    assert_eq!(
        location,
        serde_json::json!({"longitude": -87.62, "latitude": 41.87, "velocity": 4, "type": "GPS"})
    );

    assert_eq!(
        terminate(&mut runnel).code(),
        Some(0),
        "graceful exit on SIGTERM"
    );
    assert!(
        TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the broker's port is free after exit"
    );
}
