//! `GET /api/debug`: the live debug sidebar over a WebSocket.
//!
//! A fast flow must not flood the browser (Node-RED's debug does). So the
//! server batches: every `interval` (default 100 ms) it sends one frame
//! with at most `max_per_batch` debug messages (default 50); messages beyond the
//! cap in that interval, and messages lost because this reader fell behind
//! the engine's lossy debug bus, are counted and sent as `skipped`. Status
//! changes ride in the same frames, only the latest per node. The browser
//! therefore sees at most `max_per_batch / interval` messages per second
//! whatever the flow's rate, and the server holds at most one batch per
//! connection.
//!
//! Frames, server to client (JSON text):
//! - `{"type":"hello","interval_ms":100,"max_per_batch":50}` once;
//! - `{"type":"batch","debug":[{"time","node","flow","msgid","msg"}...],
//!   "skipped":N,"status":[{"flow","node","status"}...]}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use runnel_engine::DebugEvent;
use runnel_engine::monitor::StatusEvent;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::sync::broadcast::error::RecvError;

use crate::WebState;

/// A debug message whose JSON is longer than this is cut to a preview.
const MAX_MSG_BYTES: usize = 32 * 1024;
const PREVIEW_CHARS: usize = 1000;

/// Batching settings of the debug WebSocket.
#[derive(Clone, Copy, Debug)]
pub struct DebugBatching {
    /// How often a batch is sent.
    pub interval: Duration,
    /// The most debug messages in one batch.
    pub max_per_batch: usize,
}

impl Default for DebugBatching {
    fn default() -> Self {
        DebugBatching {
            interval: Duration::from_millis(100),
            max_per_batch: 50,
        }
    }
}

/// Query parameters of `/api/debug`.
#[derive(Debug, Deserialize)]
pub struct DebugQuery {
    /// Only this flow's debug messages and status.
    flow: Option<String>,
}

/// The upgrade handler.
pub async fn debug_ws(
    State(state): State<WebState>,
    Query(query): Query<DebugQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| run(socket, state, query.flow))
}

fn event_json(event: &DebugEvent) -> Json {
    let mut value = serde_json::to_value(event).unwrap_or(Json::Null);
    let size = serde_json::to_string(&event.msg).map_or(0, |s| s.len());
    if size > MAX_MSG_BYTES {
        let preview: String = event.msg.to_string().chars().take(PREVIEW_CHARS).collect();
        value["msg"] = json!({"_truncated": size, "preview": preview});
    }
    value
}

struct Batch {
    debug: Vec<Json>,
    skipped: u64,
    status: HashMap<(String, String), Arc<StatusEvent>>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.debug.is_empty() && self.skipped == 0 && self.status.is_empty()
    }

    fn take_frame(&mut self) -> String {
        let status: Vec<Json> = self
            .status
            .drain()
            .map(|(_, s)| serde_json::to_value(&*s).unwrap_or(Json::Null))
            .collect();
        let frame = json!({
            "type": "batch",
            "debug": std::mem::take(&mut self.debug),
            "skipped": self.skipped,
            "status": status,
        });
        self.skipped = 0;
        frame.to_string()
    }
}

async fn run(mut socket: WebSocket, state: WebState, flow: Option<String>) {
    let shared = state.engine().shared().clone();
    // While the editor is open, every hop is traced, so that any message it
    // shows can be followed through the flow.
    let _tracing = shared.trace.watch();
    let mut debug = shared.debug.subscribe();
    let mut status = shared.status.subscribe();
    let mut closing = state.closing();
    let settings = state.debug_batching();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let wanted = |f: &str| flow.as_deref().is_none_or(|want| want == f);

    let hello = json!({
        "type": "hello",
        "interval_ms": settings.interval.as_millis(),
        "max_per_batch": settings.max_per_batch,
    });
    if socket
        .send(Message::Text(Utf8Bytes::from(hello.to_string())))
        .await
        .is_err()
    {
        return;
    }
    tracing::debug!(flow = ?flow, "debug socket opened");
    let mut batch = Batch {
        debug: Vec::new(),
        skipped: 0,
        status: HashMap::new(),
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if batch.is_empty() {
                    continue;
                }
                let frame = batch.take_frame();
                if socket.send(Message::Text(Utf8Bytes::from(frame))).await.is_err() {
                    break;
                }
            }
            received = debug.recv() => match received {
                Ok(event) => {
                    if !wanted(event.flow.as_str()) {
                        continue;
                    }
                    if batch.debug.len() < settings.max_per_batch {
                        batch.debug.push(event_json(&event));
                    } else {
                        batch.skipped += 1;
                    }
                }
                Err(RecvError::Lagged(lost)) => batch.skipped += lost,
                Err(RecvError::Closed) => break,
            },
            received = status.recv() => match received {
                Ok(event) => {
                    if wanted(event.flow.as_str()) {
                        let key = (event.flow.to_string(), event.node.to_string());
                        batch.status.insert(key, Arc::new(event));
                    }
                }
                // Lost status changes are refreshed by the page's polling.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            },
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            },
            _ = closing.changed() => break,
        }
    }
    tracing::debug!(flow = ?flow, "debug socket closed");
}
