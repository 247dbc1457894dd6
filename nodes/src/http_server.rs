//! The HTTP server side shared by every `http-in` node: the process-wide
//! route table, the axum fallback handler that serves it, and the reply
//! handle a request's message carries to `http-response`. Not a node type.
//!
//! ## Contract with the binary
//!
//! All `http-in` nodes share one HTTP server, the one that also serves the
//! editor (`runnel run --listen ADDR:PORT`, `127.0.0.1:1880` by default).
//! `http-in` binds no socket: while it runs it registers
//! `(method, path pattern)` in [`routes()`], and unregisters on stop (a
//! [`RouteGuard`] dropped), so routes come and go as flows deploy. The binary
//! mounts the table as the fallback of its main router, after the editor's
//! own routes:
//!
//! ```ignore
//! let app = web_router.fallback(runnel_nodes::http_server::fallback_handler);
//! axum::serve(listener, app).await?;
//! ```
//!
//! ## What the handler does per request
//!
//! 1. finds the most specific route (`/devices/near` beats `/devices/:id`);
//!    none: `404`, path known with another method: `405`;
//! 2. takes one of the route's concurrency permits, or answers `503`;
//! 3. reads the body up to the route's `max_body`, or answers `413`;
//! 4. parses it by content type (malformed JSON: `400`), builds `msg.req`
//!    and hands the request to the node;
//! 5. waits for the [`HttpReply`] that `http-response` sends through the
//!    [`ReplyHandle`] on the message. If the message finishes without one
//!    (dropped, or failed), or nothing answers within the route's `timeout`,
//!    the client gets a `500` with a generic body and the node reports the
//!    failure to `catch`.
//!
//! Every error answer is JSON `{"error": "...", "field": ...}`; a `500` never
//! carries internal detail (that goes to the log).
//!
//! Submodules: `reply` (the answer and the [`ReplyHandle`]), `config` (the
//! [`ByteSize`] and [`HttpMethod`] config values), re-exported here.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use runnel_engine::Value;
use tokio::sync::{Semaphore, mpsc, oneshot};

mod config;
mod reply;

pub use config::{ByteSize, HttpMethod};
pub use reply::{HttpReply, ReplyError, ReplyHandle};

/// The message handle key under which `http-in` puts the [`ReplyHandle`].
pub const REPLY_HANDLE: &str = "http.reply";

/// The process-wide route table served by [`fallback_handler`].
pub fn routes() -> &'static HttpRoutes {
    static ROUTES: OnceLock<HttpRoutes> = OnceLock::new();
    ROUTES.get_or_init(HttpRoutes::default)
}

/// The axum fallback that serves [`routes()`]: mount it with
/// `router.fallback(fallback_handler)`.
pub async fn fallback_handler(request: Request) -> Response {
    handle(routes(), request).await
}

/// A request handed to an `http-in` node: `msg.req`, `msg.payload` and the
/// sender its answer goes through.
#[derive(Debug)]
pub struct IncomingRequest {
    /// `{method, path, params, query, headers}`.
    pub req: Value,
    /// The parsed body (or, for GET, the query object).
    pub payload: Value,
    /// `METHOD /path`.
    pub label: String,
    /// Where the answer goes.
    pub reply: oneshot::Sender<HttpReply>,
}

/// Something the handler tells a node about after the fact, for `catch`.
#[derive(Debug)]
pub enum RouteEvent {
    /// No answer within the timeout; the client got a `500`.
    TimedOut {
        /// `METHOD /path`.
        label: String,
    },
    /// The message finished without an answer and without failing (a
    /// switch dropped it, say); the client got a `500`.
    Unanswered {
        /// `METHOD /path`.
        label: String,
    },
}

/// What a route leads to: the node's queue and its limits.
#[derive(Debug)]
pub struct Endpoint {
    /// Requests into the node.
    pub requests: mpsc::Sender<IncomingRequest>,
    /// Events into the node.
    pub events: mpsc::Sender<RouteEvent>,
    /// Largest accepted body.
    pub max_body: usize,
    /// Concurrent requests allowed.
    pub permits: Arc<Semaphore>,
    /// How long a request may wait for its answer.
    pub timeout: std::time::Duration,
    /// For GET/HEAD/DELETE, whether `msg.payload` is the query object.
    pub payload_is_query: bool,
}

/// A path pattern: `/devices/:id` (also `/devices/{id}`). Literal segments
/// match exactly, parameter segments match any one non-empty segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

impl PathPattern {
    /// Parses a pattern; it must start with `/`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("path {text:?} must start with \"/\""));
        }
        if text.contains(['?', '#']) {
            return Err(format!(
                "path {text:?} must not contain a query string or fragment"
            ));
        }
        let mut segments = Vec::new();
        let mut seen = Vec::new();
        for part in split_path(text) {
            let name = part
                .strip_prefix(':')
                .or_else(|| part.strip_prefix('{').and_then(|p| p.strip_suffix('}')));
            match name {
                Some(name) => {
                    if name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        return Err(format!(
                            "invalid parameter {part:?} in path {text:?}, expected :name with letters, digits, _ or -"
                        ));
                    }
                    if seen.contains(&name) {
                        return Err(format!("parameter :{name} appears twice in {text:?}"));
                    }
                    seen.push(name);
                    segments.push(Segment::Param(name.to_string()));
                }
                None => segments.push(Segment::Literal(part.to_string())),
            }
        }
        Ok(PathPattern {
            text: text.to_string(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parameters when `path` matches.
    fn matches(&self, parts: &[&str]) -> Option<Vec<(String, String)>> {
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), percent_decode(part))),
            }
        }
        Some(params)
    }

    /// Same shape: the two patterns match exactly the same paths.
    fn same_shape(&self, other: &PathPattern) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    (Segment::Param(_), Segment::Param(_)) => true,
                    _ => false,
                })
    }

    /// Sort key: literal segments first, left to right, win.
    fn specificity(&self) -> Vec<bool> {
        self.segments
            .iter()
            .map(|s| matches!(s, Segment::Literal(_)))
            .collect()
    }
}

fn split_path(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|part| !part.is_empty())
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Why a route could not be registered.
#[derive(Debug, thiserror::Error)]
#[error("route {method} {path} is already served by node \"{owner}\"")]
pub struct DuplicateRoute {
    method: Method,
    path: String,
    owner: String,
}

struct Route {
    id: u64,
    method: Method,
    pattern: PathPattern,
    owner: String,
    endpoint: Arc<Endpoint>,
}

/// The table of routes `http-in` nodes serve.
#[derive(Default)]
pub struct HttpRoutes {
    routes: RwLock<Vec<Route>>,
    next_id: Mutex<u64>,
}

impl fmt::Debug for HttpRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_list()
            .entries(
                routes
                    .iter()
                    .map(|r| format!("{} {} -> {}", r.method, r.pattern.as_str(), r.owner)),
            )
            .finish()
    }
}

/// Keeps a route registered; dropping it removes the route.
#[derive(Debug)]
pub struct RouteGuard {
    table: &'static HttpRoutes,
    id: u64,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let mut routes = self
            .table
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        routes.retain(|route| route.id != self.id);
    }
}

impl HttpRoutes {
    /// Registers `method pattern` for `owner` (a node id, named in errors).
    /// A route with the same method and shape already registered is an
    /// error.
    pub fn register(
        &'static self,
        method: Method,
        pattern: PathPattern,
        owner: &str,
        endpoint: Endpoint,
    ) -> Result<RouteGuard, DuplicateRoute> {
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = routes
            .iter()
            .find(|r| r.method == method && r.pattern.same_shape(&pattern))
        {
            return Err(DuplicateRoute {
                method,
                path: pattern.as_str().to_string(),
                owner: existing.owner.clone(),
            });
        }
        let id = {
            let mut next = self.next_id.lock().unwrap_or_else(PoisonError::into_inner);
            *next += 1;
            *next
        };
        routes.push(Route {
            id,
            method,
            pattern,
            owner: owner.to_string(),
            endpoint: Arc::new(endpoint),
        });
        // Most specific first, so the first match wins.
        routes.sort_by_key(|route| std::cmp::Reverse(route.pattern.specificity()));
        Ok(RouteGuard { table: self, id })
    }

    /// The registered routes as `METHOD pattern`, for diagnostics.
    pub fn list(&self) -> Vec<String> {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        routes
            .iter()
            .map(|r| format!("{} {}", r.method, r.pattern.as_str()))
            .collect()
    }

    fn find(&self, method: &Method, path: &str) -> Lookup {
        let parts: Vec<&str> = split_path(path).collect();
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        let mut path_known = false;
        for route in routes.iter() {
            let Some(params) = route.pattern.matches(&parts) else {
                continue;
            };
            if route.method == *method || (*method == Method::HEAD && route.method == Method::GET) {
                return Lookup::Found(route.endpoint.clone(), params);
            }
            path_known = true;
        }
        if path_known {
            Lookup::WrongMethod
        } else {
            Lookup::NotFound
        }
    }
}

enum Lookup {
    Found(Arc<Endpoint>, Vec<(String, String)>),
    WrongMethod,
    NotFound,
}

/// Serves one request from `routes` (see the module docs).
pub async fn handle(routes: &'static HttpRoutes, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let label = format!("{} {}", parts.method, path);
    let (endpoint, params) = match routes.find(&parts.method, &path) {
        Lookup::Found(endpoint, params) => (endpoint, params),
        Lookup::WrongMethod => {
            return HttpReply::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", None)
                .into_response();
        }
        Lookup::NotFound => {
            return HttpReply::error(StatusCode::NOT_FOUND, "not found", None).into_response();
        }
    };
    let Ok(_permit) = endpoint.permits.clone().try_acquire_owned() else {
        tracing::warn!(request = %label, "too many concurrent requests; answering 503");
        return HttpReply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many concurrent requests, retry later",
            None,
        )
        .into_response();
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > endpoint.max_body as u64) {
        return too_large(endpoint.max_body);
    }
    let body = match read_body(body, endpoint.max_body).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(endpoint.max_body),
        Err(BodyError::Read(error)) => {
            tracing::debug!(request = %label, %error, "cannot read the request body");
            return HttpReply::error(
                StatusCode::BAD_REQUEST,
                "cannot read the request body",
                None,
            )
            .into_response();
        }
    };
    let parsed = crate::http_in::parse_request(&parts, params, body, endpoint.payload_is_query);
    let (req, payload) = match parsed {
        Ok(parsed) => parsed,
        Err(bad) => {
            return HttpReply::error(StatusCode::BAD_REQUEST, &bad.message, Some(&bad.field))
                .into_response();
        }
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    let incoming = IncomingRequest {
        req,
        payload,
        label: label.clone(),
        reply: reply_tx,
    };
    if endpoint.requests.try_send(incoming).is_err() {
        tracing::warn!(request = %label, "http-in queue full or node stopped; answering 503");
        return HttpReply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the flow cannot take the request now, retry later",
            None,
        )
        .into_response();
    }
    match tokio::time::timeout(endpoint.timeout, reply_rx).await {
        Ok(Ok(reply)) => reply.into_response(),
        Ok(Err(_)) => {
            // The message finished without an answer; the node has reported
            // why (to the log and to catch).
            HttpReply::internal_error().into_response()
        }
        Err(_) => {
            tracing::warn!(request = %label, timeout = ?endpoint.timeout, "no http-response in time; answering 500");
            let _ = endpoint.events.try_send(RouteEvent::TimedOut { label });
            HttpReply::internal_error().into_response()
        }
    }
}

fn too_large(limit: usize) -> Response {
    HttpReply::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body larger than {limit} bytes"),
        Some("body"),
    )
    .into_response()
}

enum BodyError {
    TooLarge,
    Read(axum::Error),
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut stream = body.into_data_stream();
    // The common case is one chunk: keep it without copying.
    let mut first: Option<Bytes> = None;
    let mut buffer = BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        total = total.saturating_add(chunk.len());
        if total > limit {
            return Err(BodyError::TooLarge);
        }
        if first.is_none() && buffer.is_empty() {
            first = Some(chunk);
            continue;
        }
        if let Some(first) = first.take() {
            buffer.extend_from_slice(&first);
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(first.unwrap_or_else(|| buffer.freeze()))
}

/// A lookup of headers as a `msg.req.headers`/`msg.headers` object: names in
/// lower case, repeated headers joined with `, `.
pub fn headers_to_value(headers: &HeaderMap) -> Value {
    let mut map: HashMap<&str, String> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (name, value) in headers {
        let text = String::from_utf8_lossy(value.as_bytes());
        match map.get_mut(name.as_str()) {
            Some(existing) => {
                existing.push_str(", ");
                existing.push_str(&text);
            }
            None => {
                order.push(name.as_str());
                map.insert(name.as_str(), text.into_owned());
            }
        }
    }
    let mut out = runnel_engine::Map::with_capacity(order.len());
    for name in order {
        if let Some(value) = map.remove(name) {
            out.insert(name.to_string(), Value::from(value));
        }
    }
    Value::from(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn pattern(text: &str) -> PathPattern {
        PathPattern::parse(text).unwrap()
    }

    #[test]
    fn patterns_match_and_extract_params() {
        let p = pattern("/devices/:id/events/{kind}");
        let parts: Vec<&str> = split_path("/devices/a%20b/events/x").collect();
        assert_eq!(
            p.matches(&parts),
            Some(vec![
                ("id".to_string(), "a b".to_string()),
                ("kind".to_string(), "x".to_string())
            ])
        );
        assert_eq!(
            p.matches(&split_path("/devices/a").collect::<Vec<_>>()),
            None
        );
        assert!(PathPattern::parse("devices").is_err());
        assert!(PathPattern::parse("/a/:x/:x").is_err());
        assert!(PathPattern::parse("/a/:").is_err());
        assert!(PathPattern::parse("/a?b=1").is_err());
    }

    #[test]
    fn literal_routes_win_and_duplicates_are_refused() {
        let table: &'static HttpRoutes = Box::leak(Box::default());
        let endpoint = || {
            let (requests, _) = mpsc::channel(1);
            let (events, _) = mpsc::channel(1);
            Endpoint {
                requests,
                events,
                max_body: 10,
                permits: Arc::new(Semaphore::new(1)),
                timeout: std::time::Duration::from_secs(1),
                payload_is_query: true,
            }
        };
        let by_id = table
            .register(Method::GET, pattern("/d/:id"), "by-id", endpoint())
            .unwrap();
        let near = table
            .register(Method::GET, pattern("/d/near"), "near", endpoint())
            .unwrap();
        let error = table
            .register(Method::GET, pattern("/d/{other}"), "again", endpoint())
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "route GET /d/{other} is already served by node \"by-id\""
        );
        assert_eq!(table.list(), ["GET /d/near", "GET /d/:id"]);
        match table.find(&Method::GET, "/d/near") {
            Lookup::Found(_, params) => assert!(params.is_empty()),
            _ => panic!("expected a match"),
        }
        match table.find(&Method::GET, "/d/7") {
            Lookup::Found(_, params) => assert_eq!(params[0].1, "7"),
            _ => panic!("expected a match"),
        }
        assert!(matches!(
            table.find(&Method::POST, "/d/7"),
            Lookup::WrongMethod
        ));
        assert!(matches!(table.find(&Method::GET, "/x"), Lookup::NotFound));
        drop(by_id);
        assert!(matches!(table.find(&Method::GET, "/d/7"), Lookup::NotFound));
        drop(near);
        assert!(table.list().is_empty());
    }
}
