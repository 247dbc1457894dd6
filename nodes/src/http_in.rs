//! `http-in`: a flow's HTTP endpoint.
//!
//! The node serves `method path` on the shared HTTP server (see
//! [`crate::http_server`]): it registers its route when it starts and drops
//! it when it stops. Each request becomes a message:
//!
//! - `msg.req = {method, path, url, params, query, headers}`;
//! - `msg.payload`: for GET, the query object (as in Node-RED); otherwise the
//!   body parsed by its content type: JSON (`application/json`, `*+json`),
//!   text (`text/*`), a form (`application/x-www-form-urlencoded`, as an
//!   object) or raw bytes; an empty body is `{}`;
//! - the open request, as the `http.reply` handle, answered by
//!   `http-response`.
//!
//! Past the limits the client gets a JSON error and no message is sent:
//! `413` for a body over `max_body`, `503` beyond `max_concurrent` requests,
//! `400` for malformed JSON/form/UTF-8 (`{"error": ..., "field": "body"}`).
//! A message that finishes without an answer, or is not answered within
//! `timeout`, gets the client a `500`, and the node reports it to `catch`.

use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use bytes::Bytes;
use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, Duration, Msg, NodeCtx, NodeError, NodeSpec, NodeStatus, NodeType,
    TaskNode, Value,
};
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc};

use crate::http_server::{
    ByteSize, Endpoint, HttpMethod, HttpReply, IncomingRequest, PathPattern, REPLY_HANDLE,
    ReplyHandle, RouteEvent, headers_to_value, routes,
};

/// `http-in`.
#[derive(Debug)]
pub struct HttpIn;

/// Config of `http-in`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpInConfig {
    /// HTTP method served: GET (default), POST, PUT, DELETE, PATCH, HEAD or
    /// OPTIONS.
    #[serde(default)]
    pub method: HttpMethod,
    /// Path served, with `:name` parameters: `/devices/:id`. Literal
    /// segments win over parameters (`/devices/near` before `/devices/:id`).
    pub path: String,
    /// Largest request body accepted (default `1MiB`); larger gets a `413`.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// Requests handled at once (default 256); more get a `503`.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// How long a request waits for `http-response` (default `30s`); then
    /// the client gets a `500` and the node reports an error to `catch`.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
}

fn default_max_body() -> ByteSize {
    ByteSize(1 << 20)
}

fn default_max_concurrent() -> usize {
    256
}

fn default_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}

impl NodeType for HttpIn {
    const TYPE: &'static str = "http-in";
    const SUMMARY: &'static str =
        "HTTP endpoint on the shared server: each request becomes a message for http-response.";
    type Config = HttpInConfig;

    fn build(config: HttpInConfig, _ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        let pattern = PathPattern::parse(&config.path).map_err(|e| BuildError::field("path", e))?;
        if config.max_concurrent == 0 {
            return Err(BuildError::field("max_concurrent", "must be at least 1"));
        }
        if config.timeout.get().is_zero() {
            return Err(BuildError::field("timeout", "must be longer than 0s"));
        }
        Ok(NodeSpec::task(
            false,
            1,
            HttpInNode {
                method: config.method,
                pattern,
                max_body: config.max_body.get(),
                max_concurrent: config.max_concurrent,
                timeout: config.timeout.get(),
            },
        ))
    }
}

struct HttpInNode {
    method: HttpMethod,
    pattern: PathPattern,
    max_body: usize,
    max_concurrent: usize,
    timeout: std::time::Duration,
}

#[runnel_engine::async_trait]
impl TaskNode for HttpInNode {
    async fn run(self: Box<Self>, ctx: &mut NodeCtx) -> Result<(), NodeError> {
        let method = self.method.to_method();
        let (requests, mut incoming) = mpsc::channel(self.max_concurrent);
        let (events, mut event_rx) = mpsc::channel(64);
        let endpoint = Endpoint {
            requests,
            events: events.clone(),
            max_body: self.max_body,
            permits: Arc::new(Semaphore::new(self.max_concurrent)),
            timeout: self.timeout,
            payload_is_query: method == axum::http::Method::GET,
        };
        let label = format!("{method} {}", self.pattern.as_str());
        let owner = format!("{}/{}", ctx.flow(), ctx.node_id());
        let _route = match routes().register(method, self.pattern.clone(), &owner, endpoint) {
            Ok(guard) => guard,
            Err(error) => {
                ctx.set_status(NodeStatus::error("route taken"));
                // Returning the error makes the engine retry with backoff, so
                // the route is taken over once its current owner stops.
                return Err(NodeError::new(error));
            }
        };
        tracing::info!(node = %ctx.node_id(), route = %label, "http route registered");
        ctx.set_status(NodeStatus::ok(label.clone()));
        loop {
            tokio::select! {
                () = ctx.stopping().cancelled() => break,
                request = incoming.recv() => {
                    let Some(request) = request else { break };
                    let msg = request_msg(ctx, request, &events);
                    ctx.send(0, msg).await;
                }
                event = event_rx.recv() => {
                    let Some(event) = event else { break };
                    ctx.report_error(event_error(event, self.timeout));
                }
            }
        }
        tracing::info!(node = %ctx.node_id(), route = %label, "http route removed");
        Ok(())
    }
}

fn event_error(event: RouteEvent, timeout: std::time::Duration) -> NodeError {
    match event {
        RouteEvent::TimedOut { label } => NodeError::new(format!(
            "no http-response for {label} within {}; the client got a 500",
            runnel_engine::Duration(timeout)
        )),
        RouteEvent::Unanswered { label } => NodeError::new(format!(
            "the message for {label} finished without reaching an http-response; the client got a 500"
        )),
    }
}

/// The message for one request, tracked so that finishing it unanswered
/// answers `500` at once.
fn request_msg(ctx: &NodeCtx, request: IncomingRequest, events: &mpsc::Sender<RouteEvent>) -> Msg {
    let IncomingRequest {
        req,
        payload,
        label,
        reply,
    } = request;
    let handle = Arc::new(ReplyHandle::new(reply, label.clone()));
    let watch = handle.clone();
    let events = events.clone();
    let mut msg = ctx.new_tracked_msg(payload, move |outcome| {
        if !watch.is_pending() {
            return;
        }
        let _ = watch.send(HttpReply::internal_error());
        if outcome.errored {
            // The failure already went to the log and to catch.
            return;
        }
        let _ = events.try_send(RouteEvent::Unanswered {
            label: watch.label().to_string(),
        });
    });
    msg.props_mut().insert("req".to_string(), req);
    msg.set_handle(REPLY_HANDLE, handle);
    msg
}

/// Why a request was refused with a `400`.
#[derive(Debug)]
pub(crate) struct BadRequest {
    pub(crate) message: String,
    pub(crate) field: String,
}

impl BadRequest {
    fn new(field: &str, message: impl Into<String>) -> Self {
        BadRequest {
            message: message.into(),
            field: field.to_string(),
        }
    }
}

/// Builds `msg.req` and `msg.payload` from a request.
pub(crate) fn parse_request(
    parts: &Parts,
    params: Vec<(String, String)>,
    body: Bytes,
    payload_is_query: bool,
) -> Result<(Value, Value), BadRequest> {
    let raw_query = parts.uri.query().unwrap_or("");
    let query = parse_pairs(raw_query)
        .map_err(|e| BadRequest::new("query", format!("malformed query string: {e}")))?;
    let mut param_map = runnel_engine::Map::with_capacity(params.len());
    for (name, value) in params {
        param_map.insert(name, Value::from(value));
    }
    let payload = if payload_is_query {
        query.clone()
    } else {
        parse_body(parts, body)?
    };
    let mut req = runnel_engine::Map::with_capacity(6);
    req.insert("method".into(), Value::from(parts.method.as_str()));
    req.insert("path".into(), Value::from(parts.uri.path()));
    let url = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
    req.insert("url".into(), Value::from(url));
    req.insert("params".into(), Value::from(param_map));
    req.insert("query".into(), query);
    req.insert("headers".into(), headers_to_value(&parts.headers));
    Ok((Value::from(req), payload))
}

fn parse_body(parts: &Parts, body: Bytes) -> Result<Value, BadRequest> {
    if body.is_empty() {
        return Ok(Value::object());
    }
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if content_type == "application/json" || content_type.ends_with("+json") {
        return Value::from_json_slice(&body)
            .map_err(|e| BadRequest::new("body", format!("malformed JSON body: {e}")));
    }
    if content_type.starts_with("text/") {
        return String::from_utf8(body.to_vec())
            .map(Value::from)
            .map_err(|_| BadRequest::new("body", "the text body is not valid UTF-8"));
    }
    if content_type == "application/x-www-form-urlencoded" {
        let text = std::str::from_utf8(&body)
            .map_err(|_| BadRequest::new("body", "the form body is not valid UTF-8"))?;
        return parse_pairs(text)
            .map_err(|e| BadRequest::new("body", format!("malformed form body: {e}")));
    }
    Ok(Value::Bytes(body))
}

/// `a=1&b=2&a=3` as `{"a": ["1", "3"], "b": "2"}`: a repeated name becomes
/// an array, as in Express.
fn parse_pairs(text: &str) -> Result<Value, serde_urlencoded::de::Error> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(text)?;
    let mut map = runnel_engine::Map::with_capacity(pairs.len());
    for (name, value) in pairs {
        let value = Value::from(value);
        match map.get_mut(&name) {
            None => {
                map.insert(name, value);
            }
            Some(Value::Array(items)) => Arc::make_mut(items).push(value),
            Some(existing) => {
                let first = std::mem::take(existing);
                *existing = Value::from(vec![first, value]);
            }
        }
    }
    Ok(Value::from(map))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn parts(method: &str, uri: &str, content_type: Option<&str>) -> Parts {
        let mut builder = axum::http::Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            builder = builder.header(CONTENT_TYPE, ct);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn get_payload_is_the_query_and_req_has_everything() {
        let p = parts("GET", "/d/7?a=1&a=2&b=x%20y", None);
        let (req, payload) =
            parse_request(&p, vec![("id".into(), "7".into())], Bytes::new(), true).unwrap();
        assert_eq!(
            payload.to_json(),
            serde_json::json!({"a": ["1", "2"], "b": "x y"})
        );
        let req = req.to_json();
        assert_eq!(req["method"], "GET");
        assert_eq!(req["path"], "/d/7");
        assert_eq!(req["url"], "/d/7?a=1&a=2&b=x%20y");
        assert_eq!(req["params"]["id"], "7");
        assert_eq!(req["query"]["b"], "x y");
    }

    #[test]
    fn bodies_are_parsed_by_content_type() {
        let body = |ct: Option<&str>, bytes: &'static [u8]| {
            parse_body(&parts("POST", "/", ct), Bytes::from_static(bytes))
        };
        assert_eq!(
            body(Some("application/json; charset=utf-8"), br#"{"n":1}"#)
                .unwrap()
                .to_json(),
            serde_json::json!({"n": 1})
        );
        assert_eq!(body(Some("text/plain"), b"hi").unwrap(), Value::from("hi"));
        assert_eq!(
            body(Some("application/x-www-form-urlencoded"), b"a=1&b=two")
                .unwrap()
                .to_json(),
            serde_json::json!({"a": "1", "b": "two"})
        );
        assert_eq!(
            body(None, b"\x00\x01").unwrap(),
            Value::Bytes(Bytes::from_static(b"\x00\x01"))
        );
        assert_eq!(
            body(Some("application/json"), b"").unwrap(),
            Value::object()
        );
        let bad = body(Some("application/json"), b"{\"n\":").unwrap_err();
        assert_eq!(bad.field, "body");
        assert!(
            bad.message.starts_with("malformed JSON body"),
            "{}",
            bad.message
        );
        assert!(body(Some("text/plain"), b"\xff").is_err());
    }

    #[test]
    fn config_is_validated() {
        let error = runnel_engine::testing::build::<HttpIn>("{path: devices}").unwrap_err();
        assert!(error.contains("path"), "{error}");
        let error =
            runnel_engine::testing::build::<HttpIn>("{path: /x, max_body: 1XB}").unwrap_err();
        assert!(error.contains("size unit"), "{error}");
        assert!(
            runnel_engine::testing::build::<HttpIn>(
                "{method: post, path: /a/:b, max_body: 2KiB, timeout: 5s}"
            )
            .is_ok()
        );
    }
}
