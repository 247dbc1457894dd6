//! At-least-once MQTT through the real `runnel` binary, against a real
//! Mosquitto (`apt-get install -y mosquitto mosquitto-clients`) that each
//! test starts on a free port:
//!
//! - runnel is killed with SIGKILL while a QoS 1 pipe (`mqtt-in` → a slow
//!   `delay` → `mqtt-out`) holds unfinished messages, then started again
//!   with the same flow: every published message comes out at least once;
//! - the broker loses runnel's session (it is killed and comes back without
//!   it) while `mqtt-out` has unacknowledged publishes: runnel publishes
//!   them again on the new session, so every message that had entered the
//!   flow comes out (docs/delivery.md, "rumqttc notes").
//!
//! Readers are `mosquitto_sub` with a persistent session, started before
//! anything is published. Timeouts are hang guards only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::{GUARD, lines, terminate};

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A private Mosquitto. `persistence` names the directory of its
/// persistence file (none: no persistence, sessions die with the process).
struct Mosquitto {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    fn start(port: u16, dir: &Path, persistence: Option<&Path>) -> Mosquitto {
        assert!(
            Command::new("mosquitto").arg("-h").output().is_ok(),
            "mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients"
        );
        // `user root`: started as root, Mosquitto would switch to the
        // mosquitto user and could not write into our temporary directory.
        let mut conf = format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n\
             log_dest file {}\nlog_type all\n",
            dir.join(format!("mosquitto-{port}.log")).display()
        );
        match persistence {
            Some(location) => conf.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                location.display()
            )),
            None => conf.push_str("persistence false\n"),
        }
        let file = dir.join(format!("mosquitto-{port}-{}.conf", persistence.is_some()));
        std::fs::write(&file, conf).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let broker = Mosquitto {
            port,
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        let deadline = Instant::now() + GUARD;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start:\n{}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("broker running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} mosquitto");
    }

    /// SIGTERM (it saves its persistence file) and wait.
    fn stop(&mut self) {
        self.signal("TERM");
        self.child.take().unwrap().wait().unwrap();
    }

    /// SIGKILL and wait: nothing is saved.
    fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("mosquitto-{}.log", self.port)))
            .unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `mosquitto_sub` at QoS 1 with a persistent session (`-c`) and a fixed
/// client id, printing one payload per line. The session and its
/// subscription are made first (`mosquitto_sub -E` returns once the broker
/// acknowledged the SUBSCRIBE), so nothing published after `start` returns
/// is missed, however late the long-running reader connects.
struct Reader {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Reader {
    fn start(port: u16, client_id: &str, topic: &str) -> Reader {
        subscribe_session(port, client_id, topic);
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-c", "-i", client_id, "-q", "1", "-t", topic])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub is installed (apt-get install -y mosquitto-clients)");
        let lines = lines(&mut child);
        Reader { child, lines }
    }

    /// Payloads that arrived since the last call (without waiting longer
    /// than `wait` for the first).
    fn payloads(&self, wait: Duration) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut next = self.lines.recv_timeout(wait).ok();
        while let Some(line) = next {
            if line.starts_with('{')
                && let Ok(value) = serde_json::from_str(&line)
            {
                out.push(value);
            }
            next = self.lines.try_recv().ok();
        }
        out
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a persistent session for `client_id` subscribed to `topic` at
/// QoS 1 in a fresh persistence directory, through a throw-away broker.
fn persisted_session(dir: &Path, client_id: &str, topic: &str) -> PathBuf {
    let location = dir.join("prepared-session");
    std::fs::create_dir_all(&location).unwrap();
    let mut broker = Mosquitto::start(free_port(), dir, Some(&location));
    subscribe_session(broker.port, client_id, topic);
    broker.stop();
    assert!(
        location.join("mosquitto.db").exists(),
        "mosquitto saved the session:\n{}",
        broker.log()
    );
    location
}

/// A persistent session for `client_id` subscribed to `topic` at QoS 1:
/// `mosquitto_sub -E` exits once the broker acknowledged the SUBSCRIBE.
fn subscribe_session(port: u16, client_id: &str, topic: &str) {
    let status = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", "-i", client_id, "-q", "1", "-t", topic, "-E"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mosquitto_sub is installed (apt-get install -y mosquitto-clients)");
    assert!(status.success(), "mosquitto_sub -E subscribed");
}

/// Publishes one QoS 1 message per line with one `mosquitto_pub -l`;
/// returns once the broker acknowledged them all.
fn publish_lines(port: u16, topic: &str, lines: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-q", "1", "-t", topic, "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "mosquitto_pub -l");
}

fn publish_one(port: u16, topic: &str, payload: &str) {
    let _ = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-q", "1", "-t", topic, "-m", payload])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A child process killed when dropped (a failing test leaves nothing
/// running).
struct Killed(Child);

impl std::ops::Deref for Killed {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Killed {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `runnel run flow` with `MQTT_PORT=port`; stdout is piped
/// (debug lines), stderr (logs) appended to `log`.
fn start_runnel(flow: &Path, port: u16, data: &Path, log: &Path) -> Killed {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["run", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .arg(flow)
        .env("RUNNEL_LOG", "info")
        .env("MQTT_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map(Killed)
        .unwrap()
}

/// Publishes probes until one comes out of the pipe, so runnel has
/// subscribed (a probe is `{"probe": true}`).
fn wait_for_pipe(port: u16, reader: &Reader, runnel: &mut Killed) {
    let deadline = Instant::now() + GUARD;
    loop {
        assert!(Instant::now() < deadline, "the pipe never came up");
        assert!(
            runnel.try_wait().unwrap().is_none(),
            "runnel exited during start-up"
        );
        publish_one(port, "pipe/in", r#"{"probe": true}"#);
        let got = reader.payloads(Duration::from_millis(300));
        if got.iter().any(|p| p["probe"] == true) {
            return;
        }
    }
}

fn numbers(payloads: &[serde_json::Value]) -> impl Iterator<Item = i64> + '_ {
    payloads.iter().filter_map(|p| p["n"].as_i64())
}

fn documents(n: i64) -> Vec<String> {
    (0..n).map(|i| format!(r#"{{"n": {i}}}"#)).collect()
}

#[test]
fn sigkill_mid_stream_then_restart_delivers_every_message() {
    const N: i64 = 120;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("broker-data");
    std::fs::create_dir_all(&store).unwrap();
    let broker = Mosquitto::start(free_port(), dir.path(), Some(&store));
    let port = broker.port;
    let reader = Reader::start(port, &format!("reader-{port}"), "pipe/out");

    // The delay lets 40 messages a second through, so N take 3 s at least
    // and a kill after the first few lands mid-stream however fast the
    // machine is.
    let flow = dir.path().join("pipe.yaml");
    std::fs::write(
        &flow,
        r#"
config:
  - {id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${MQTT_PORT}", reconnect_min: 50ms, reconnect_max: 500ms}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: pipe/in, qos: 1, wires: [[slow]]}
  - {id: slow, type: delay, mode: rate, rate: {count: 40, per: 1s}, wires: [[out]]}
  - {id: out, type: mqtt-out, broker: broker, topic: pipe/out, qos: 1}
"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("runnel.log");

    let mut first = start_runnel(&flow, port, &data, &log);
    wait_for_pipe(port, &reader, &mut first);
    publish_lines(port, "pipe/in", &documents(N));

    let mut got = BTreeSet::new();
    let deadline = Instant::now() + GUARD;
    while got.len() < 5 {
        assert!(Instant::now() < deadline, "the first outputs never came");
        got.extend(numbers(&reader.payloads(Duration::from_millis(200))));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    got.extend(numbers(&reader.payloads(Duration::from_millis(0))));
    let before_kill = got.len();
    assert!(
        before_kill < N as usize,
        "the kill must land while messages are unfinished"
    );

    let mut second = start_runnel(&flow, port, &data, &log);
    let all: BTreeSet<i64> = (0..N).collect();
    let deadline = Instant::now() + GUARD;
    while !all.is_subset(&got) {
        if Instant::now() > deadline {
            let missing: Vec<_> = all.difference(&got).collect();
            panic!(
                "after SIGKILL and restart, {} messages never came out: {missing:?}\nrunnel log:\n{}\nbroker log (tail):\n{}",
                missing.len(),
                std::fs::read_to_string(&log).unwrap_or_default(),
                tail(&broker.log(), 40)
            );
        }
        assert!(
            second.try_wait().unwrap().is_none(),
            "the restarted runnel exited"
        );
        got.extend(numbers(&reader.payloads(Duration::from_millis(200))));
    }
    eprintln!(
        "{before_kill} of {N} messages were out before the SIGKILL; all {N} after the restart"
    );
    assert_eq!(terminate(&mut second).code(), Some(0));
}

#[test]
fn lost_broker_session_resends_unacknowledged_publishes() {
    const N: i64 = 60;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let reader_id = format!("reader-{port}");
    // The broker that comes back knows the reader's session (so it queues
    // what runnel publishes before mosquitto_sub has reconnected) but not
    // runnel's: runnel gets CONNACK with session_present = false.
    let prepared = persisted_session(dir.path(), &reader_id, "pipe/out");
    let mut broker = Mosquitto::start(port, dir.path(), None);
    let reader = Reader::start(port, &reader_id, "pipe/out");

    // `seen` prints every message that entered the flow, `released` every
    // message the delay hands to mqtt-out.
    let flow = dir.path().join("pipe.yaml");
    std::fs::write(
        &flow,
        r#"
config:
  - {id: broker, type: mqtt-broker, host: 127.0.0.1, port: "${MQTT_PORT}", reconnect_min: 50ms, reconnect_max: 500ms}
nodes:
  - {id: in, type: mqtt-in, broker: broker, topic: pipe/in, qos: 1, wires: [[slow, seen]]}
  - {id: seen, type: debug, complete: false}
  - {id: slow, type: delay, mode: rate, rate: {count: 40, per: 1s}, wires: [[out, released]]}
  - {id: released, type: debug, complete: false}
  - {id: out, type: mqtt-out, broker: broker, topic: pipe/out, qos: 1}
"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("runnel.log");
    let mut runnel = start_runnel(&flow, port, &data, &log);
    let stdout = lines(&mut runnel);
    wait_for_pipe(port, &reader, &mut runnel);
    publish_lines(port, "pipe/in", &documents(N));

    let mut got = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let read_stdout = |seen: &mut BTreeSet<i64>, released: &mut usize| {
        while let Ok(line) = stdout.try_recv() {
            let Ok(line) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let Some(n) = line["msg"]["payload"]["n"].as_i64() else {
                continue;
            };
            match line["node"].as_str() {
                Some("seen") => {
                    seen.insert(n);
                }
                Some("released") => *released += 1,
                _ => {}
            }
        }
    };
    let mut released = 0;
    let deadline = Instant::now() + GUARD;
    while got.len() < 5 {
        assert!(Instant::now() < deadline, "the first outputs never came");
        got.extend(numbers(&reader.payloads(Duration::from_millis(200))));
    }

    // The broker stops answering: what mqtt-out publishes now stays
    // unacknowledged in runnel.
    broker.signal("STOP");
    read_stdout(&mut seen, &mut released);
    let released_at_stop = released;
    let deadline = Instant::now() + GUARD;
    while released < released_at_stop + 3 {
        assert!(
            Instant::now() < deadline,
            "the delay released nothing while the broker was stopped"
        );
        std::thread::sleep(Duration::from_millis(50));
        read_stdout(&mut seen, &mut released);
    }
    // Killed without saving, and back with only the reader's session.
    broker.kill();
    let _broker = Mosquitto::start(port, dir.path(), Some(&prepared));

    let deadline = Instant::now() + GUARD;
    loop {
        read_stdout(&mut seen, &mut released);
        got.extend(numbers(&reader.payloads(Duration::from_millis(200))));
        if !seen.is_empty() && seen.is_subset(&got) {
            break;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = seen.difference(&got).collect();
            panic!(
                "messages that entered the flow never came out after the session was lost: {missing:?}\nrunnel log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(runnel.try_wait().unwrap().is_none(), "runnel exited");
    }
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.contains("no session on the broker; resending unacknowledged publishes"),
        "the resend path ran (runnel had unacknowledged publishes when the broker died):\n{log_text}"
    );
    eprintln!(
        "{} messages entered the flow, all came out; {} of {N} were lost with the broker's queue",
        seen.len(),
        N as usize - seen.len()
    );
    assert_eq!(terminate(&mut runnel).code(), Some(0));
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
