//! A pouchdb-server (in memory) started with `scripts/start-couch`, killed
//! on drop. Used by the geo-store's CouchDB tests here and, through a
//! `#[path]` module, by runnel-nodes' HTTP tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

/// A running pouchdb-server on 127.0.0.1.
pub struct CouchServer {
    pid: Option<u32>,
    pub port: u16,
}

impl CouchServer {
    /// Starts a server on a free port.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    /// Starts a server on `port` (again, after [`CouchServer::stop`]: in
    /// memory, it starts empty).
    pub fn start_on(port: u16) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/start-couch");
        let output = Command::new("bash")
            .arg(script)
            .arg(port.to_string())
            .output()
            .expect("run scripts/start-couch");
        assert!(
            output.status.success(),
            "start-couch failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let pid = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("pid");
        CouchServer {
            pid: Some(pid),
            port,
        }
    }

    /// The server's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server and waits (up to 20 s) until its port is free, so
    /// that a restart can bind it.
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            for _ in 0..400 {
                if TcpListener::bind(("127.0.0.1", self.port)).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for CouchServer {
    fn drop(&mut self) {
        self.stop();
    }
}
