//! Third-party clients against the embedded broker: mosquitto_pub and
//! mosquitto_sub (Debian's mosquitto-clients) and rumqttc.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{WAIT, config, start};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn mosquitto_available() -> bool {
    std::process::Command::new("mosquitto_pub")
        .arg("--help")
        .output()
        .is_ok()
}

async fn mosquitto_pub(port: u16, args: &[&str]) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .status()
        .await
        .unwrap();
    assert!(status.success(), "mosquitto_pub {args:?} failed");
}

#[tokio::test]
async fn mosquitto_clients_qos_0_1_2_and_retained() {
    assert!(
        mosquitto_available(),
        "install mosquitto-clients (scripts install it in CI)"
    );
    let (_broker, addr) = start(config()).await;
    let port = addr.port();
    // A retained message first: seeing it proves the subscription is active.
    mosquitto_pub(
        port,
        &["-t", "interop/ready", "-m", "ready", "-r", "-q", "1"],
    )
    .await;
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "interop/#",
            "-q",
            "2",
            "-v",
            "-C",
            "4",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    assert_eq!(next(&mut lines).await, "interop/ready ready");
    for qos in ["0", "1", "2"] {
        mosquitto_pub(
            port,
            &[
                "-t",
                &format!("interop/q{qos}"),
                "-m",
                &format!("m{qos}"),
                "-q",
                qos,
            ],
        )
        .await;
        assert_eq!(next(&mut lines).await, format!("interop/q{qos} m{qos}"));
    }
    let status = tokio::time::timeout(WAIT, sub.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

async fn next(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

fn options(id: &str, port: u16) -> MqttOptions {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// Polls the event loop until an incoming PUBLISH arrives.
async fn next_publish(eventloop: &mut EventLoop) -> rumqttc::Publish {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::Publish(publish)) = eventloop.poll().await.unwrap() {
                return publish;
            }
        }
    })
    .await
    .unwrap()
}

/// Polls until the event satisfying `done` is seen.
async fn poll_until(eventloop: &mut EventLoop, done: impl Fn(&Event) -> bool) {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = eventloop.poll().await.unwrap();
            if done(&event) {
                return;
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn rumqttc_qos_levels_both_directions() {
    let (_broker, addr) = start(config()).await;
    let (sub, mut sub_loop) = AsyncClient::new(options("rumq-sub", addr.port()), 10);
    sub.subscribe("rumq/#", QoS::ExactlyOnce).await.unwrap();
    poll_until(&mut sub_loop, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;

    let (publisher, mut pub_loop) = AsyncClient::new(options("rumq-pub", addr.port()), 10);
    let driver = tokio::spawn(async move {
        loop {
            if pub_loop.poll().await.is_err() {
                return;
            }
        }
    });
    for (index, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publisher
            .publish(format!("rumq/{index}"), qos, false, vec![index as u8])
            .await
            .unwrap();
        let publish = next_publish(&mut sub_loop).await;
        assert_eq!(
            (publish.topic.as_str(), publish.qos),
            (format!("rumq/{index}").as_str(), qos)
        );
    }
    driver.abort();
}

#[tokio::test]
async fn rumqttc_will_on_abnormal_disconnect() {
    let (_broker, addr) = start(config()).await;
    let (watcher, mut watch_loop) = AsyncClient::new(options("watcher", addr.port()), 10);
    watcher
        .subscribe("status/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    poll_until(&mut watch_loop, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;

    let mut opts = options("device-7", addr.port());
    opts.set_last_will(LastWill::new(
        "status/device-7",
        "offline",
        QoS::AtLeastOnce,
        false,
    ));
    let (_device, mut device_loop) = AsyncClient::new(opts, 10);
    poll_until(&mut device_loop, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await;
    // Dropping the event loop drops the socket without DISCONNECT.
    drop(device_loop);
    let publish = next_publish(&mut watch_loop).await;
    assert_eq!(publish.topic, "status/device-7");
    assert_eq!(&publish.payload[..], b"offline");
}
