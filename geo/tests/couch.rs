//! CouchBackend against a real CouchDB-compatible server.
//!
//! Uses `RUNNEL_TEST_COUCH_URL` when set; otherwise starts pouchdb-server (in memory) with
//! `scripts/start-couch` on a free port. The outage test always starts its own server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::sync::Arc;

use runnel_geo::{CouchBackend, CouchOptions, GeoBackend, GeoError, Query};
use serde_json::{Value, json};

#[path = "support/couch_server.rs"]
mod couch_server;

use couch_server::CouchServer as Server;

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server URL, and the server when this test started it.
fn server() -> (String, Option<Server>) {
    match std::env::var("RUNNEL_TEST_COUCH_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let server = Server::start_on(free_port());
            (server.url(), Some(server))
        }
    }
}

fn options(url: &str, db: &str) -> CouchOptions {
    CouchOptions {
        url: url.to_owned(),
        db: format!("{db}-{:08x}", rand_suffix()),
        geometry_path: "d.location".into(),
        max_attempts: 3,
        initial_backoff_ms: 20,
        timeout_secs: 5,
        ..CouchOptions::default()
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

fn device(id: &str, lon: f64, lat: f64) -> Value {
    json!({"_id": id, "d": {"name": id, "location": {"longitude": lon, "latitude": lat, "velocity": 4, "type": "GPS"}}})
}

fn query(list: &[(&str, &str)]) -> Query {
    let pairs: Vec<(String, String)> = list
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    Query::from_params(&pairs).unwrap()
}

fn ids(docs: &[Value]) -> Vec<&str> {
    docs.iter()
        .map(|doc| doc["_id"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn couch_backend_end_to_end() {
    let (url, _server) = server();
    let store = Arc::new(
        CouchBackend::connect(options(&url, "geo-e2e"))
            .await
            .unwrap(),
    );

    // Store, update (rev 2 without sending _rev), get.
    let first = store
        .store(device("loop", -87.6298, 41.8781))
        .await
        .unwrap();
    assert!(first.rev.starts_with("1-"), "{first:?}");
    let second = store
        .store(device("loop", -87.6298, 41.8781))
        .await
        .unwrap();
    assert!(second.rev.starts_with("2-"), "{second:?}");
    let doc = store.get("loop").await.unwrap().unwrap();
    assert_eq!(doc["_rev"], json!(second.rev));
    assert!(doc.get(runnel_geo::GEO_FIELD).is_none());
    assert_eq!(store.get("nope").await.unwrap(), None);

    // Concurrent updates of one id: every store wins eventually through rev refetching.
    let mut tasks = Vec::new();
    for n in 0..4 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store.store(device("contended", f64::from(n), 0.0)).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let contended = store.get("contended").await.unwrap().unwrap();
    assert!(
        contended["_rev"].as_str().unwrap().starts_with("4-"),
        "{contended}"
    );

    // Queries: coarse Mango filter in the database, exact test here.
    for doc in [
        device("ohare", -87.9073, 41.9742),
        device("midway", -87.7522, 41.7868),
        device("nyc", -74.006, 40.7128),
        json!({"_id": "park", "d": {"location": {"type": "Polygon", "coordinates": [[[-87.64, 41.86], [-87.60, 41.86], [-87.60, 41.90], [-87.64, 41.90], [-87.64, 41.86]]]}}}),
        json!({"_id": "state", "d": {"location": {"type": "Polygon", "coordinates": [[[-91.5, 37.0], [-87.5, 37.0], [-87.5, 42.5], [-91.5, 42.5], [-91.5, 37.0]]]}}}),
    ] {
        store.store(doc).await.unwrap();
    }
    let found = store
        .query(&query(&[("bbox", "-88,41.5,-87.5,42.1")]))
        .await
        .unwrap();
    assert_eq!(ids(&found), ["loop", "midway", "ohare", "park", "state"]);
    let found = store
        .query(&query(&[
            ("lat", "41.8781"),
            ("lon", "-87.6298"),
            ("radius", "3000"),
            ("nearest", "true"),
        ]))
        .await
        .unwrap();
    assert_eq!(ids(&found), ["loop", "park", "state"]);
    let square = "POLYGON((-87.65 41.85, -87.59 41.85, -87.59 41.91, -87.65 41.91, -87.65 41.85))";
    let found = store
        .query(&query(&[("g", square), ("relation", "contains")]))
        .await
        .unwrap();
    assert_eq!(ids(&found), ["loop", "park"]);
    let found = store
        .query(&query(&[("g", "POINT(-89 40)"), ("relation", "within")]))
        .await
        .unwrap();
    assert_eq!(ids(&found), ["state"]);
    let found = store
        .query(&query(&[
            ("lat", "40.7"),
            ("lon", "-74.0"),
            ("nearest", "true"),
            ("limit", "2"),
        ]))
        .await
        .unwrap();
    assert_eq!(ids(&found), ["nyc", "state"]);

    // Delete.
    assert!(store.delete("nyc").await.unwrap());
    assert!(!store.delete("nyc").await.unwrap());
    assert_eq!(store.get("nyc").await.unwrap(), None);

    // A bad document never reaches the server.
    let error = store.store(device("bad", 0.0, 91.0)).await.unwrap_err();
    assert!(matches!(error, GeoError::InvalidGeometry { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn couch_outage_fails_then_recovers() {
    let port = free_port();
    let mut server = Server::start_on(port);
    let store = CouchBackend::connect(options(&server.url(), "geo-outage"))
        .await
        .unwrap();
    store.store(device("a", 1.0, 1.0)).await.unwrap();

    server.stop();
    let error = store.store(device("b", 1.0, 1.0)).await.unwrap_err();
    assert!(
        matches!(error, GeoError::Unavailable { attempts: 3, .. }),
        "{error}"
    );
    assert!(matches!(
        store.get("a").await,
        Err(GeoError::Unavailable { .. })
    ));
    assert!(matches!(
        store.query(&query(&[("bbox", "0,0,2,2")])).await,
        Err(GeoError::Unavailable { .. })
    ));

    // The server comes back (empty: it is in memory); the backend recreates its database,
    // on a query as on a store.
    let _restarted = Server::start_on(port);
    let found = store.query(&query(&[("bbox", "0,0,2,2")])).await.unwrap();
    assert_eq!(ids(&found), Vec::<&str>::new());
    assert_eq!(store.get("a").await.unwrap(), None);
    let stored = store.store(device("b", 1.0, 1.0)).await.unwrap();
    assert!(stored.rev.starts_with("1-"));
    let found = store.query(&query(&[("bbox", "0,0,2,2")])).await.unwrap();
    assert_eq!(ids(&found), ["b"]);
    assert!(
        CouchBackend::connect(CouchOptions {
            max_attempts: 2,
            initial_backoff_ms: 10,
            ..options("http://127.0.0.1:1", "x")
        })
        .await
        .is_err_and(|error| matches!(error, GeoError::Unavailable { attempts: 2, .. }))
    );
}
