//! `runnel run` on the seed flows, through the real binary: the debug lines
//! it prints, `--trace`, and a graceful exit 0 on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;

use common::{lines, terminate};

fn spawn(args: &[&str]) -> Child {
    let data = tempfile::tempdir().unwrap().keep();
    Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUNNEL_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn next_json(rx: &mpsc::Receiver<String>) -> serde_json::Value {
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a line within 20s (hang guard)");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"))
}

#[test]
fn payload_frequency_prints_the_location_every_second_and_exits_0_on_sigterm() {
    let mut child = spawn(&["run", "flows/payload-frequency.yaml"]);
    let rx = lines(&mut child);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let line = next_json(&rx);
        assert_eq!(line["node"], "location");
        assert_eq!(
            line["msg"]["payload"],
            serde_json::json!({"longitude": -87.62, "latitude": 41.87, "velocity": 4, "type": "GPS"})
        );
        let time = line["time"].as_str().unwrap();
        assert!(
            time.ends_with('Z') && time.len() == 24,
            "ISO time with milliseconds: {time}"
        );
        ids.push(line["msg"]["_msgid"].as_str().unwrap().to_string());
    }
    assert_ne!(ids[0], ids[1], "every message has its own _msgid");
    let status = terminate(&mut child);
    assert_eq!(status.code(), Some(0), "graceful exit on SIGTERM");
}

#[test]
fn base64_flow_decodes_the_seed_name() {
    let mut child = spawn(&["run", "flows/base64-decode.yaml"]);
    let rx = lines(&mut child);
    let line = next_json(&rx);
    assert_eq!(line["node"], "decoded");
    assert_eq!(line["msg"]["payload"], "hello from mobile user");
    assert_eq!(terminate(&mut child).code(), Some(0));
}

#[test]
fn trace_prints_every_hop_of_a_message() {
    let mut child = spawn(&["run", "--trace", "flows/base64-decode.yaml"]);
    let rx = lines(&mut child);
    let mut events = Vec::new();
    let mut msgid = None;
    while msgid.is_none()
        || !events
            .iter()
            .any(|e: &serde_json::Value| e["event"] == "finished")
    {
        let line = next_json(&rx);
        if line.get("event").is_some() {
            events.push(line);
        } else {
            msgid = line["msg"]["_msgid"].as_str().map(str::to_string);
        }
    }
    let msgid = msgid.unwrap();
    let hops: Vec<String> = events
        .iter()
        .filter(|e| e["msgid"] == msgid.as_str())
        .map(|e| {
            format!(
                "{}:{}",
                e["node"].as_str().unwrap_or("-"),
                e["event"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        hops,
        [
            "params:sent",
            "decode:received",
            "decode:sent",
            "decoded:received",
            "-:finished"
        ],
        "{events:#?}"
    );
    assert_eq!(terminate(&mut child).code(), Some(0));
}

#[test]
fn invalid_flows_do_not_start() {
    let file = Path::new("tests/malformed/unknown-type.yaml");
    let output = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["run", "--listen", "127.0.0.1:0"])
        .arg(file)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown-type.yaml:4:11: node \"extract\": unknown node type \"chnage\""),
        "{stderr}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args([
            "--log-format",
            "json",
            "run",
            "flows/base64-decode.yaml",
            "--listen",
            "127.0.0.1:0",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUNNEL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let log: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(
        log["level"].is_string() && log["timestamp"].is_string(),
        "{log}"
    );
    assert_eq!(terminate(&mut child).code(), Some(0));
}
