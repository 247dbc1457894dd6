//! The admin API's JSON and YAML endpoints: flows, nodes, traces, health.
//! The debug WebSocket is in [`crate::debug_ws`], metrics in
//! [`crate::metrics`].

use std::path::{Path, PathBuf};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::header::{CONTENT_TYPE, ETAG, IF_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use runnel_engine::{Diagnostic, FlowInfo, MsgId};
use serde_json::{Value as Json_, json};

use crate::WebState;
use crate::error::ApiError;
use crate::files::{check_name, revision, write_atomic};
use crate::trace_view::trace_json;

/// The revision header (also sent as a quoted `ETag`).
pub const REVISION_HEADER: &str = "x-runnel-revision";

/// Diagnostics as the API shows them: the file by its name only, so server
/// paths stay on the server.
fn public_diagnostics(list: Vec<Diagnostic>) -> Vec<Diagnostic> {
    list.into_iter()
        .map(|mut d| {
            if let Some(name) = d.file.file_name() {
                d.file = PathBuf::from(name);
            }
            d
        })
        .collect()
}

fn flow_summary(flow: &FlowInfo) -> Json_ {
    let total = |f: fn(&runnel_engine::monitor::NodeCounters) -> u64| -> u64 {
        flow.nodes.iter().map(|n| f(&n.counters)).sum()
    };
    json!({
        "name": flow.id,
        "description": flow.description,
        "running": true,
        "nodes": flow.nodes.len(),
        "in_flight": flow.in_flight,
        "received": total(|c| c.received),
        "sent": total(|c| c.sent),
        "errors": total(|c| c.errors),
        "dropped": total(|c| c.dropped),
    })
}

/// `GET /api/flows`: every running flow, then flow files that are not
/// running.
pub async fn list_flows(State(state): State<WebState>) -> Json<Json_> {
    let running = state.engine().flows().await;
    let mut list: Vec<Json_> = running.iter().map(flow_summary).collect();
    for name in state.files().names() {
        if !running.iter().any(|f| f.id.as_str() == name) {
            list.push(json!({"name": name, "running": false}));
        }
    }
    Json(json!({ "flows": list }))
}

/// The file of flow `name`: the running flow's file, else a file on disk.
async fn flow_path(state: &WebState, name: &str) -> Option<PathBuf> {
    if let Some((path, _)) = state.engine().flow_source(name).await {
        return Some(path);
    }
    state.files().existing(name)
}

/// The current text of flow `name` and its file: from disk, or the running
/// flow's source if the file cannot be read.
async fn current_text(state: &WebState, name: &str) -> Option<(PathBuf, String)> {
    let running = state.engine().flow_source(name).await;
    let path = match &running {
        Some((path, _)) => path.clone(),
        None => state.files().existing(name)?,
    };
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => Some((path, text)),
        Err(error) => {
            tracing::warn!(flow = name, error = %error, "cannot read flow file; serving the running text");
            running.map(|(path, text)| (path, text.to_string()))
        }
    }
}

fn revision_headers(response: &mut Response, rev: &str) {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("\"{rev}\"")) {
        headers.insert(ETAG, value);
    }
    if let Ok(value) = HeaderValue::from_str(rev) {
        headers.insert(REVISION_HEADER, value);
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("no flow named {name:?}"))
}

/// `GET /api/flows/{name}`: the YAML text as written, with its revision.
pub async fn get_flow(
    State(state): State<WebState>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let (_, text) = current_text(&state, &name)
        .await
        .ok_or_else(|| not_found(&name))?;
    let rev = revision(&text);
    let mut response = (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("application/yaml; charset=utf-8"),
        )],
        text,
    )
        .into_response();
    revision_headers(&mut response, &rev);
    Ok(response)
}

/// `GET /api/flows/{name}/info`: the running flow's nodes with live counters
/// and status, and the server-side layout of its graph.
pub async fn flow_info(
    State(state): State<WebState>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Json_>, ApiError> {
    check_name(&name)?;
    let Some(info) = state.engine().flow(&name).await else {
        if flow_path(&state, &name).await.is_some() {
            return Ok(Json(
                json!({"name": name, "running": false, "nodes": [], "layout": null}),
            ));
        }
        return Err(not_found(&name));
    };
    let layout = crate::layout::layout(&info.nodes);
    let monitors = state.engine().monitors(&name).await;
    let nodes: Vec<Json_> = info
        .nodes
        .iter()
        .map(|node| {
            let mut value = serde_json::to_value(node).unwrap_or(Json_::Null);
            let queued = monitors
                .iter()
                .find(|m| m.node().as_str() == node.id)
                .and_then(|m| m.queue_depth());
            if let (Some(object), Some(queued)) = (value.as_object_mut(), queued) {
                object.insert("queued".into(), json!(queued));
            }
            value
        })
        .collect();
    Ok(Json(json!({
        "name": info.id,
        "running": true,
        "description": info.description,
        "in_flight": info.in_flight,
        "nodes": nodes,
        "layout": layout,
    })))
}

fn body_text(body: Result<Bytes, BytesRejection>) -> Result<String, ApiError> {
    let bytes = body?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::BadRequest("the flow text is not valid UTF-8".into()))
}

/// The revision an `If-Match` header names (quotes and `W/` stripped).
fn if_match(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("If-Match is not valid text".into()))?;
    let text = text.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    Ok(Some(text.trim_matches('"').to_string()))
}

async fn load(
    state: &WebState,
    path: &Path,
    text: String,
) -> Result<Result<runnel_engine::Flow, Vec<Diagnostic>>, ApiError> {
    let loader = state.engine().loader();
    let path = path.to_path_buf();
    // Loading parses and builds every node: CPU work, off the async threads.
    tokio::task::spawn_blocking(move || loader.load_str(&path, &text).map_err(|d| d.0))
        .await
        .map_err(ApiError::internal)
}

/// `PUT /api/flows/{name}`: validate, save atomically and redeploy. A flow
/// that does not validate changes nothing (400 with diagnostics); an edit
/// based on an old revision is refused (409).
pub async fn put_flow(
    State(state): State<WebState>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let text = body_text(body)?;
    let base = if_match(&headers)?;
    // One deploy at a time: the revision check, the write and the deploy
    // must not interleave with another editor's.
    let _guard = state.deploy_lock().lock().await;

    let current = current_text(&state, &name).await;
    let path = match &current {
        Some((path, _)) => path.clone(),
        None => state
            .files()
            .new_file(&name)
            .ok_or_else(|| not_found(&name))?,
    };
    let current_rev = current.as_ref().map(|(_, text)| revision(text));
    if let Some(base) = &base {
        match &current_rev {
            Some(rev) if base == rev || base == "*" => {}
            Some(rev) => {
                return Err(ApiError::Conflict(format!(
                    "flow {name:?} was changed by someone else since revision {base} (it is now at {rev}): reload it, reapply your edit and deploy again"
                )));
            }
            None => {
                return Err(ApiError::Conflict(format!(
                    "flow {name:?} does not exist any more: it cannot be at revision {base}"
                )));
            }
        }
    }

    let flow = match load(&state, &path, text.clone()).await? {
        Ok(flow) => flow,
        Err(diagnostics) => return Err(ApiError::Invalid(public_diagnostics(diagnostics))),
    };
    let warnings = public_diagnostics(flow.warnings.clone());
    let rev = revision(&text);
    let saved = current_rev.as_deref() != Some(rev.as_str());
    if saved {
        let write_path = path.clone();
        let write_text = text.clone();
        tokio::task::spawn_blocking(move || write_atomic(&write_path, &write_text))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::internal(format!("writing {}: {e}", path.display())))?;
    }
    // A text that means the same as the running flow (comments, blank lines,
    // quoting, flow or block style) is saved without restarting anything.
    let running = state.engine().flow_source(&name).await;
    let same_as_running = running
        .as_ref()
        .is_some_and(|(_, running_text)| same_structure(running_text, &text));
    let report = if same_as_running {
        None
    } else {
        Some(state.engine().deploy(flow).await)
    };
    tracing::info!(flow = %name, revision = %rev, saved, deployed = report.is_some(), "flow put");
    let mut response = (
        StatusCode::OK,
        Json(json!({
            "name": name,
            "revision": rev,
            "saved": saved,
            "deployed": report.is_some(),
            "restarted": report.as_ref().map_or(&[][..], |r| &r.started[..]),
            "kept": report.as_ref().map_or(&[][..], |r| &r.kept[..]),
            "removed": report.as_ref().map_or(&[][..], |r| &r.removed[..]),
            "warnings": warnings,
        })),
    )
        .into_response();
    revision_headers(&mut response, &rev);
    Ok(response)
}

/// Whether two flow texts have the same YAML structure (keys, values and
/// order; positions, comments and styles ignored).
fn same_structure(a: &str, b: &str) -> bool {
    match (runnel_engine::yaml::parse(a), runnel_engine::yaml::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `POST /api/flows/{name}/validate`: the loader's verdict on a text,
/// without saving or deploying anything.
pub async fn validate_flow(
    State(state): State<WebState>,
    UrlPath(name): UrlPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Json_>, ApiError> {
    check_name(&name)?;
    let text = body_text(body)?;
    let path = match flow_path(&state, &name).await {
        Some(path) => path,
        None => state
            .files()
            .new_file(&name)
            .unwrap_or_else(|| PathBuf::from(format!("{name}.yaml"))),
    };
    Ok(Json(match load(&state, &path, text).await? {
        Ok(flow) => json!({
            "valid": true,
            "errors": [],
            "warnings": public_diagnostics(flow.warnings),
        }),
        Err(errors) => json!({
            "valid": false,
            "errors": public_diagnostics(errors),
            "warnings": [],
        }),
    }))
}

/// `GET /api/nodes`: every node and config node type with its config
/// schema.
pub async fn list_nodes(State(state): State<WebState>) -> Json<Json_> {
    let registry = state.engine().registry();
    let describe = |info: &runnel_engine::registry::TypeInfo| {
        json!({
            "type": info.name,
            "summary": info.summary,
            "config_schema": info.config_schema(),
        })
    };
    Json(json!({
        "nodes": registry.node_types().map(describe).collect::<Vec<_>>(),
        "config_nodes": registry.config_types().map(describe).collect::<Vec<_>>(),
    }))
}

/// `GET /api/schema`: the JSON Schema of flow files.
pub async fn flow_schema(State(state): State<WebState>) -> Json<Json_> {
    Json(runnel_engine::schema::flow_schema(
        state.engine().registry(),
    ))
}

/// `GET /api/traces/{msgid}`: where a message went.
pub async fn get_trace(
    State(state): State<WebState>,
    UrlPath(msgid): UrlPath<String>,
) -> Result<Json<Json_>, ApiError> {
    let id = MsgId::parse(&msgid).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "invalid message id {msgid:?}: expected 16 hex digits"
        ))
    })?;
    let store = &state.engine().shared().trace;
    trace_json(store, id).map(Json).ok_or_else(|| {
        let why = if store.is_enabled() {
            "the trace store keeps only the most recent messages"
        } else {
            "tracing is off"
        };
        ApiError::NotFound(format!("no trace for message {id} ({why})"))
    })
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> Json<Json_> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 while serving, 503 once shutdown has begun.
pub async fn readyz(State(state): State<WebState>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting down"})),
        )
            .into_response()
    }
}

/// `GET /api/openapi.json`.
pub async fn openapi() -> Response {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// Any path no route serves (when the binary adds no fallback of its own).
pub async fn no_route() -> ApiError {
    ApiError::NotFound("no such route; the admin API is described at /api/openapi.json".into())
}
