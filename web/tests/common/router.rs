//! Calling the router in-process, for the API tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use runnel_web::WebState;
use serde_json::Value as Json;
use tower::ServiceExt as _;

use super::{engine_with_flows, flows_dir, tick_flow};

pub const HANG_GUARD: Duration = Duration::from_secs(15);

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn call(
    app: &axum::Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

pub async fn get(app: &axum::Router, uri: &str) -> Answer {
    call(app, Method::GET, uri, &[], Body::empty()).await
}

/// A router over a directory with one flow, `ticker`.
pub async fn setup(payload: &str) -> (tempfile::TempDir, WebState, axum::Router) {
    let dir = flows_dir(&[("ticker", &tick_flow(payload, 10))]);
    let engine = engine_with_flows(dir.path()).await;
    let state = WebState::new(engine, dir.path());
    let app = runnel_web::router(state.clone());
    (dir, state, app)
}

/// Waits for a debug event whose payload is `payload`.
pub async fn debug_payload(state: &WebState, payload: &Json) -> runnel_engine::DebugEvent {
    let mut bus = state.engine().shared().debug.subscribe();
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Ok(event) = bus.recv().await
                && &event.msg["payload"] == payload
            {
                return (*event).clone();
            }
        }
    })
    .await
    .expect("the debug message arrives")
}
