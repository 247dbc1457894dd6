//! The editor end to end: the real `runnel` binary running
//! `flows/payload-frequency.yaml` (real inject, change and debug nodes),
//! driven in real headless Chromium (Debian's `chromium` and
//! `chromium-driver`). The steps are shared with the web crate's browser
//! test (`web/tests/support/browser.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../web/tests/support/browser.rs"]
mod browser;

use std::io::Read as _;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use browser::{Browser, Scenario, artifacts_dir, editor_scenario};

/// The `runnel run` child; ended by its own id on drop.
struct Runnel {
    child: Child,
    port: u16,
}

impl Runnel {
    fn start(flow: &Path, data: &Path) -> Runnel {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let log = std::fs::File::create(artifacts_dir().join("editor-browser-runnel.log"))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_runnel"))
            .arg("run")
            .arg(flow)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data)
            .env("RUNNEL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("runnel starts");
        let runnel = Runnel { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !runnel.ready() {
            assert!(Instant::now() < deadline, "runnel did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        runnel
    }

    /// `GET /readyz` answers 200.
    fn ready(&self) -> bool {
        use std::io::Write as _;
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    }

    /// SIGTERM, then the exit status (graceful shutdown with the editor's
    /// WebSocket still open).
    fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "runnel did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Runnel {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_editor_runs_the_seed_flow_end_to_end() {
    std::fs::create_dir_all(artifacts_dir()).unwrap();
    // A copy, so deploys do not touch the repository's flow.
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("payload-frequency.yaml");
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/payload-frequency.yaml");
    std::fs::copy(&seed, &flow).unwrap();
    let runnel = Runnel::start(&flow, &dir.path().join("data"));
    let browser = Browser::start().await;

    let latency = editor_scenario(
        &browser,
        &Scenario {
            base: format!("http://127.0.0.1:{}", runnel.port),
            flow: "payload-frequency",
            file: flow.clone(),
            path: &["device-doc", "extract", "location"],
            before: "\"velocity\": 4",
            edit_from: "velocity: 4",
            edit_to: "velocity: 77",
            after: "\"velocity\": 77",
            broken_from: "type: change",
            broken_to: "type: chnage",
            shots: "editor",
            other: None,
        },
    )
    .await;
    eprintln!("the new payload reached the sidebar {latency:?} after the deploy answered");

    // The state the README shows: graph, YAML, live debug and a trace.
    let first = browser
        .run("document.querySelector('#debug-list .debug-entry').click(); return true;")
        .await;
    assert_eq!(first, serde_json::json!(true));
    browser
        .wait_for(
            "the trace of the newest message",
            "return document.querySelectorAll('#trace-result tr.hop').length === 3",
            Duration::from_secs(20),
        )
        .await;
    browser.screenshot("editor").await;

    let status = runnel.terminate();
    browser.close().await;
    assert!(
        status.success(),
        "runnel exits cleanly on SIGTERM: {status}"
    );
}
