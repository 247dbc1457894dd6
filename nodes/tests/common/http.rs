//! Helpers for the HTTP tests of `runnel-nodes` (`http.rs`, `http_tls.rs`):
//! a loopback server mounting the flow routes, an engine with the test
//! sinks, flow deployment that waits for routes, a client, and a
//! pouchdb-server for the CouchDB backend.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use runnel_engine::testing::Collect;
use runnel_engine::{Engine, EngineSettings, EngineShared};
use runnel_nodes::http_server::{fallback_handler, routes};
use serde_json::json;

// The shared helpers the HTTP tests use too (not every test file uses each).
#[allow(unused_imports)]
pub use super::{GUARD, Hold, hold, next};

pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

pub async fn flow_server() -> SocketAddr {
    serve(axum::Router::new().fallback(fallback_handler)).await
}

pub fn engine(data_dir: &Path) -> Arc<Engine> {
    let mut registry = runnel_nodes::registry();
    registry.register::<Collect>().register::<Hold>();
    Engine::new(
        registry.into_shared(),
        EngineShared::new(EngineSettings {
            data_dir: data_dir.to_path_buf(),
            ..EngineSettings::default()
        }),
    )
}

/// Deploys `yaml` and waits until its `routes` are served.
pub async fn deploy(engine: &Engine, name: &str, yaml: &str, expect_routes: &[&str]) {
    let flow = engine
        .loader()
        .load_str(Path::new(&format!("{name}.yaml")), yaml)
        .unwrap_or_else(|e| panic!("flow {name} does not load: {e:?}"));
    engine.deploy(flow).await;
    wait_for_routes(expect_routes).await;
}

pub async fn wait_for_routes(expect: &[&str]) {
    tokio::time::timeout(GUARD, async {
        loop {
            let list = routes().list();
            if expect.iter().all(|r| list.iter().any(|l| l == r)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("routes {expect:?} never registered: {:?}", routes().list()));
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(GUARD).build().unwrap()
}

pub async fn json_of(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| json!(text));
    (status, body)
}

pub fn flows_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../flows")
}

/// A pouchdb-server (in memory), shared with the geo-store's own tests.
#[path = "../../../geo/tests/support/couch_server.rs"]
mod couch_server;

#[allow(unused_imports)] // not every test binary that has `common` uses it
pub use couch_server::CouchServer as Couch;
