//! `http-request`: calls an HTTP endpoint for each message.
//!
//! - method: the config's `method`, else `msg.method`, else GET;
//! - URL: the config's `url` template, else `msg.url`. `{{payload.id}}`
//!   (also `{{msg.payload.id}}`) inserts a message property percent-encoded,
//!   so a value cannot add path segments or query parameters;
//!   `{{{payload.base}}}` inserts it as is. A missing property is an error;
//! - headers: the config's `headers`, then `msg.headers` over them;
//! - body (not for GET/HEAD): `msg.payload`, objects and arrays as JSON,
//!   strings as text, bytes as they are, `null` as none;
//! - TLS through rustls with the platform's roots, plus the CA certificates
//!   of the `ca` PEM file when set (a private CA); a
//!   per-attempt `timeout`, and `retries` with doubling backoff on connection
//!   errors and 5xx answers (not on certificate errors: they do not heal).
//!
//! The answer replaces `msg.payload` (parsed JSON when the content type is
//! JSON, text when it is text or valid UTF-8, else bytes), and sets
//! `msg.statusCode`, `msg.headers` and `msg.responseUrl`. Any answer, 4xx and
//! 5xx included, goes out on the output (switch on `statusCode`); a request
//! that gets no answer (connection refused, timeout, body over
//! `max_response`) goes to `catch`. Up to `concurrency` requests run at
//! once; messages may then leave in another order than they came.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, Duration, Msg, NodeCtx, NodeError, NodeSpec, NodeStatus, NodeType,
    PropPath, TaskNode, Value,
};
use serde::Deserialize;

use crate::http_response::header_pair;
use crate::http_server::{ByteSize, HttpMethod, headers_to_value};

/// `http-request`.
#[derive(Debug)]
pub struct HttpRequest;

/// How the response body becomes `msg.payload`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResponseAs {
    /// JSON when the content type says so, text when it is text or valid
    /// UTF-8, else bytes.
    #[default]
    Auto,
    /// Always text (invalid UTF-8 replaced).
    Text,
    /// Always bytes.
    Bytes,
    /// Always JSON; a body that is not JSON is an error.
    Json,
}

/// Config of `http-request`. Its `Debug` output leaves out header values
/// (they often carry tokens).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpRequestConfig {
    /// Method; when unset, `msg.method`, else GET.
    #[serde(default)]
    pub method: Option<HttpMethod>,
    /// URL template: `http://host/devices/{{payload.id}}` (percent-encoded)
    /// or `{{{payload.base}}}/x` (as is). When unset, `msg.url`.
    #[serde(default)]
    pub url: Option<String>,
    /// Request headers; `msg.headers` entries override these.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Time allowed for one attempt, answer body included (default `30s`).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Retries after a connection error or a 5xx answer (default 2).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Wait before the first retry, doubled for each next one (default
    /// `200ms`).
    #[serde(default = "default_backoff")]
    pub retry_backoff: Duration,
    /// Largest answer body accepted (default `10MiB`).
    #[serde(default = "default_max_response")]
    pub max_response: ByteSize,
    /// Requests in flight at once (default 8).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How the answer body becomes `msg.payload` (default `auto`).
    #[serde(default)]
    pub response: ResponseAs,
    /// PEM file of CA certificates to trust for `https` URLs, in addition to
    /// the platform's roots: for servers whose certificate comes from a
    /// private CA. A path such as `${API_CA_FILE}` or
    /// `/etc/runnel/ca.pem`; read when the node starts. A file that cannot
    /// be read or holds no certificate fails every message (to `catch`).
    #[serde(default)]
    pub ca: Option<String>,
}

impl std::fmt::Debug for HttpRequestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: BTreeMap<&str, &str> = self
            .headers
            .keys()
            .map(|name| (name.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("HttpRequestConfig")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &headers)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("max_response", &self.max_response)
            .field("concurrency", &self.concurrency)
            .field("response", &self.response)
            .field("ca", &self.ca)
            .finish()
    }
}

fn default_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}

fn default_retries() -> u32 {
    2
}

fn default_backoff() -> Duration {
    Duration(std::time::Duration::from_millis(200))
}

fn default_max_response() -> ByteSize {
    ByteSize(10 << 20)
}

fn default_concurrency() -> usize {
    8
}

impl NodeType for HttpRequest {
    const TYPE: &'static str = "http-request";
    const SUMMARY: &'static str =
        "Calls an HTTP endpoint (templated URL, retries, TLS); the answer goes to payload.";
    type Config = HttpRequestConfig;

    fn build(config: HttpRequestConfig, _ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        let url = config
            .url
            .as_deref()
            .map(Template::parse)
            .transpose()
            .map_err(|e| BuildError::field("url", e))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let (name, mut value) =
                header_pair(name, value).map_err(|e| BuildError::field("headers", e))?;
            // Kept out of `Debug` output (and of HTTP/2 header compression).
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        if config.concurrency == 0 {
            return Err(BuildError::field("concurrency", "must be at least 1"));
        }
        if config.timeout.get().is_zero() {
            return Err(BuildError::field("timeout", "must be longer than 0s"));
        }
        if config.ca.as_deref().is_some_and(|ca| ca.trim().is_empty()) {
            return Err(BuildError::field(
                "ca",
                "must be the path of a PEM file when set",
            ));
        }
        Ok(NodeSpec::task(
            true,
            1,
            HttpRequestNode {
                settings: Arc::new(Settings {
                    method: config.method.map(HttpMethod::to_method),
                    url,
                    headers,
                    timeout: config.timeout.get(),
                    retries: config.retries,
                    backoff: config.retry_backoff.get(),
                    max_response: config.max_response.get(),
                    response: config.response,
                }),
                ca: config.ca,
                concurrency: config.concurrency,
            },
        ))
    }
}

struct HttpRequestNode {
    settings: Arc<Settings>,
    ca: Option<String>,
    concurrency: usize,
}

#[derive(Debug)]
struct Settings {
    method: Option<Method>,
    url: Option<Template>,
    headers: HeaderMap,
    timeout: std::time::Duration,
    retries: u32,
    backoff: std::time::Duration,
    max_response: usize,
    response: ResponseAs,
}

#[runnel_engine::async_trait]
impl TaskNode for HttpRequestNode {
    async fn run(self: Box<Self>, ctx: &mut NodeCtx) -> Result<(), NodeError> {
        // A client that cannot be made (an unreadable CA file) fails each
        // message, so requests waiting on this node get an answer through
        // `catch` instead of queueing behind a node that keeps restarting.
        let client = match make_client(&self.settings, self.ca.as_deref()).await {
            Ok(client) => {
                ctx.set_status(NodeStatus::ok("ready"));
                Ok(client)
            }
            Err(error) => {
                tracing::error!(node = %ctx.node_id(), %error, "http-request cannot make its client");
                ctx.set_status(NodeStatus::error(error.clone()));
                Err(error)
            }
        };
        let mut in_flight = FuturesUnordered::new();
        loop {
            tokio::select! {
                msg = ctx.recv(), if in_flight.len() < self.concurrency => {
                    let Some(msg) = msg else { break };
                    match &client {
                        Ok(client) => in_flight.push(call(self.settings.clone(), client.clone(), msg)),
                        Err(error) => ctx.report_error(NodeError::new(error.clone()).with_msg(msg)),
                    }
                }
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    finish(ctx, done).await;
                }
            }
        }
        while let Some(done) = in_flight.next().await {
            finish(ctx, done).await;
        }
        Ok(())
    }
}

/// The node's client: timeouts, and the `ca` file's certificates trusted
/// next to the platform's roots.
async fn make_client(settings: &Settings, ca: Option<&str>) -> Result<reqwest::Client, String> {
    // rustls explicitly: another crate in the build (couch_rs) enables
    // reqwest's native-tls, which would otherwise be the default backend.
    let mut builder = reqwest::Client::builder()
        .tls_backend_rustls()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(std::time::Duration::from_secs(10)));
    if let Some(path) = ca {
        let pem = tokio::fs::read(path)
            .await
            .map_err(|e| format!("cannot read the CA file {path:?}: {e}"))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("invalid CA file {path:?}: {}", error_chain(&e)))?;
        if certs.is_empty() {
            return Err(format!(
                "invalid CA file {path:?}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"
            ));
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| format!("cannot create the HTTP client: {}", error_chain(&e)))
}

async fn finish(ctx: &mut NodeCtx, done: Result<Msg, NodeError>) {
    match done {
        Ok(msg) => ctx.send(0, msg).await,
        Err(error) => ctx.report_error(error),
    }
}

/// One message: build the request, send it with retries, read the answer.
async fn call(
    settings: Arc<Settings>,
    client: reqwest::Client,
    mut msg: Msg,
) -> Result<Msg, NodeError> {
    let request = match build_request(&settings, &client, &msg) {
        Ok(request) => request,
        Err(error) => return Err(NodeError::new(error).with_msg(msg)),
    };
    let shown = redacted(request.url());
    let label = format!("{} {shown}", request.method());
    let response = match send_with_retries(&settings, &client, request).await {
        Ok(response) => response,
        Err(error) => return Err(NodeError::new(format!("{label}: {error}")).with_msg(msg)),
    };
    let status = response.status();
    let headers = headers_to_value(response.headers());
    let response_url = redacted(response.url());
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let body = match read_limited(response, settings.max_response).await {
        Ok(body) => body,
        Err(error) => return Err(NodeError::new(format!("{label}: {error}")).with_msg(msg)),
    };
    let payload = match decode_body(settings.response, &content_type, body) {
        Ok(payload) => payload,
        Err(error) => return Err(NodeError::new(format!("{label}: {error}")).with_msg(msg)),
    };
    let props = msg.props_mut();
    props.insert("payload".into(), payload);
    props.insert("statusCode".into(), Value::from(u64::from(status.as_u16())));
    props.insert("headers".into(), headers);
    props.insert("responseUrl".into(), Value::from(response_url));
    Ok(msg)
}

fn build_request(
    settings: &Settings,
    client: &reqwest::Client,
    msg: &Msg,
) -> Result<reqwest::Request, String> {
    let method = match (&settings.method, msg.props().get("method")) {
        (Some(method), _) => method.clone(),
        (None, Some(Value::String(text))) => {
            Method::from_bytes(text.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("msg.method {text:?} is not an HTTP method"))?
        }
        (None, Some(Value::Null) | None) => Method::GET,
        (None, Some(other)) => {
            return Err(format!(
                "msg.method must be a string, got {}",
                other.type_name()
            ));
        }
    };
    let url_text = match &settings.url {
        Some(template) => template.render(msg)?,
        None => match msg.props().get("url") {
            Some(Value::String(url)) => url.to_string(),
            _ => return Err("no URL: set `url` in the node or msg.url".to_string()),
        },
    };
    let url = Url::parse(&url_text).map_err(|e| format!("invalid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "unsupported URL scheme {:?}, expected http or https",
            url.scheme()
        ));
    }
    let mut headers = settings.headers.clone();
    for (name, text) in crate::http_response::message_headers(msg)? {
        let (name, value) = header_pair(&name, &text)?;
        headers.insert(name, value);
    }
    let mut builder = client.request(method.clone(), url);
    if method != Method::GET && method != Method::HEAD {
        let (body, content_type) = crate::http_response::body_of(msg.payload());
        if let Some(content_type) = content_type {
            headers
                .entry(CONTENT_TYPE)
                .or_insert(HeaderValue::from_static(content_type));
        }
        builder = builder.body(body);
    }
    builder
        .headers(headers)
        .build()
        .map_err(|e| format!("cannot build the request: {}", e.without_url()))
}

async fn send_with_retries(
    settings: &Settings,
    client: &reqwest::Client,
    request: reqwest::Request,
) -> Result<reqwest::Response, String> {
    let mut delay = settings.backoff;
    let mut attempt = 0u32;
    loop {
        let Some(this_try) = request.try_clone() else {
            return Err("the request body cannot be retried".to_string());
        };
        let retry_left = attempt < settings.retries;
        match client.execute(this_try).await {
            Ok(response) if response.status().is_server_error() && retry_left => {
                tracing::debug!(
                    status = response.status().as_u16(),
                    attempt,
                    "server error; retrying"
                );
            }
            Ok(response) => return Ok(response),
            Err(error) if error.is_connect() && retry_left && !is_certificate_error(&error) => {
                tracing::debug!(error = %error_chain(&error.without_url()), attempt, "connection failed; retrying");
            }
            Err(error) => {
                let attempts = attempt + 1;
                let error = error.without_url();
                let cause = error_chain(&error);
                let what = if error.is_timeout() {
                    "timed out".to_string()
                } else if is_certificate_error(&error) {
                    format!(
                        "TLS: the server's certificate is not trusted ({cause}); set `ca` to trust a private CA"
                    )
                } else if error.is_connect() {
                    format!("cannot connect: {cause}")
                } else {
                    cause
                };
                return Err(format!("{what} (after {attempts} attempt(s))"));
            }
        }
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2);
        attempt += 1;
    }
}

async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, String> {
    if response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
    {
        return Err(format!(
            "answer body larger than max_response ({limit} bytes)"
        ));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("cannot read the answer: {}", error_chain(&e.without_url())))?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!(
                "answer body larger than max_response ({limit} bytes)"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn decode_body(how: ResponseAs, content_type: &str, body: bytes::Bytes) -> Result<Value, String> {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    let is_json = mime == "application/json" || mime.ends_with("+json");
    match how {
        ResponseAs::Bytes => Ok(Value::Bytes(body)),
        ResponseAs::Text => Ok(Value::from(String::from_utf8_lossy(&body).into_owned())),
        ResponseAs::Json => {
            Value::from_json_slice(&body).map_err(|e| format!("the answer is not JSON: {e}"))
        }
        ResponseAs::Auto => {
            if is_json && !body.is_empty() {
                if let Ok(value) = Value::from_json_slice(&body) {
                    return Ok(value);
                }
                tracing::debug!("answer labelled JSON is not JSON; kept as text");
            }
            let binary = mime.starts_with("image/")
                || mime.starts_with("audio/")
                || mime.starts_with("video/")
                || mime == "application/octet-stream";
            if !binary && let Ok(text) = std::str::from_utf8(&body) {
                return Ok(Value::from(text));
            }
            Ok(Value::Bytes(body))
        }
    }
}

/// An error and its causes, `outer: inner: innermost`: reqwest's own text
/// ("error sending request") says nothing of why. A cause whose text its
/// parent already shows is left out.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Whether the TLS handshake failed on the server's certificate (rustls:
/// "invalid peer certificate: UnknownIssuer"); retrying cannot help.
fn is_certificate_error(error: &reqwest::Error) -> bool {
    error_chain(error).contains("invalid peer certificate")
}

/// The URL without credentials, for errors and `msg.responseUrl`.
fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    if !shown.username().is_empty() || shown.password().is_some() {
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
    }
    shown.to_string()
}

/// A URL with `{{path}}` (encoded) and `{{{path}}}` (raw) placeholders.
#[derive(Debug, Clone)]
struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Encoded(PropPath),
    Raw(PropPath),
}

/// What a URL component may hold unescaped: RFC 3986 unreserved characters.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl Template {
    fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let raw = rest[start..].starts_with("{{{");
            let (open, close) = if raw { (3, "}}}") } else { (2, "}}") };
            let after = &rest[start + open..];
            let Some(end) = after.find(close) else {
                return Err(format!("unclosed placeholder in {text:?}"));
            };
            let name = after[..end].trim();
            let name = name.strip_prefix("msg.").unwrap_or(name);
            let path = PropPath::parse(name).map_err(|e| e.to_string())?;
            parts.push(if raw {
                Part::Raw(path)
            } else {
                Part::Encoded(path)
            });
            rest = &after[end + close.len()..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    fn render(&self, msg: &Msg) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            let (path, encode) = match part {
                Part::Text(text) => {
                    out.push_str(text);
                    continue;
                }
                Part::Encoded(path) => (path, true),
                Part::Raw(path) => (path, false),
            };
            let value = match msg.get(path) {
                None | Some(Value::Null) => {
                    return Err(format!("url: msg.{path} is missing"));
                }
                Some(value) => value.to_text(),
            };
            if encode {
                out.extend(percent_encoding::utf8_percent_encode(&value, COMPONENT));
            } else {
                out.push_str(&value);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use runnel_engine::testing::msg_from_json as msg;

    #[test]
    fn templates_encode_by_default_and_refuse_missing_values() {
        let t = Template::parse("{{{base}}}/devices/{{msg.payload.id}}?t={{ topic }}").unwrap();
        let m = msg(serde_json::json!({
            "base": "http://h:1/api",
            "payload": {"id": "a/b c"},
            "topic": 7
        }));
        assert_eq!(
            t.render(&m).unwrap(),
            "http://h:1/api/devices/a%2Fb%20c?t=7"
        );
        let error = t
            .render(&msg(serde_json::json!({"base": "x"})))
            .unwrap_err();
        assert!(error.contains("payload.id"), "{error}");
        assert!(Template::parse("http://x/{{payload").is_err());
        assert!(Template::parse("http://x/{{pay..load}}").is_err());
    }

    #[test]
    fn bodies_decode_by_content_type() {
        let b = |s: &'static [u8]| bytes::Bytes::from_static(s);
        assert_eq!(
            decode_body(
                ResponseAs::Auto,
                "application/json; charset=utf-8",
                b(b"{\"a\":1}")
            )
            .unwrap()
            .to_json(),
            serde_json::json!({"a": 1})
        );
        assert_eq!(
            decode_body(ResponseAs::Auto, "text/plain", b(b"hi")).unwrap(),
            Value::from("hi")
        );
        assert_eq!(
            decode_body(ResponseAs::Auto, "", b(b"\xff\x00")).unwrap(),
            Value::Bytes(b(b"\xff\x00"))
        );
        assert_eq!(
            decode_body(ResponseAs::Auto, "application/octet-stream", b(b"ok")).unwrap(),
            Value::Bytes(b(b"ok"))
        );
        assert!(decode_body(ResponseAs::Json, "", b(b"nope")).is_err());
    }

    #[tokio::test]
    async fn ca_files_must_hold_certificates() {
        let settings = Settings {
            method: None,
            url: None,
            headers: HeaderMap::new(),
            timeout: std::time::Duration::from_secs(1),
            retries: 0,
            backoff: std::time::Duration::from_millis(1),
            max_response: 1,
            response: ResponseAs::Auto,
        };
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = make_client(&settings, empty.to_str()).await.unwrap_err();
        assert!(error.contains("no PEM certificate"), "{error}");
        let missing = dir.path().join("missing.pem");
        let error = make_client(&settings, missing.to_str()).await.unwrap_err();
        assert!(error.contains("cannot read the CA file"), "{error}");
        assert!(make_client(&settings, None).await.is_ok());
    }

    #[test]
    fn error_chains_name_every_cause_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let error = Outer(std::io::Error::other("connection refused"));
        assert_eq!(
            error_chain(&error),
            "error sending request: connection refused"
        );
    }

    #[test]
    fn credentials_never_show() {
        let url = Url::parse("https://user:secret@example.invalid/x?y=1").unwrap();
        assert_eq!(redacted(&url), "https://example.invalid/x?y=1");
        let config: HttpRequestConfig = serde_json::from_value(
            serde_json::json!({"headers": {"authorization": "Bearer t0ken"}}),
        )
        .unwrap();
        let shown = format!("{config:?}");
        assert!(
            shown.contains("authorization") && !shown.contains("t0ken"),
            "{shown}"
        );
    }

    #[test]
    fn config_is_validated() {
        use runnel_engine::testing::build;
        assert!(build::<HttpRequest>("{url: 'http://x/{{payload'}").is_err());
        assert!(build::<HttpRequest>("{concurrency: 0}").is_err());
        assert!(build::<HttpRequest>("{headers: {'bad name': x}}").is_err());
        assert!(build::<HttpRequest>("{ca: ' '}").is_err());
        // The CA file is read when the node starts, not when it is built.
        assert!(build::<HttpRequest>("{ca: /nonexistent/ca.pem}").is_ok());
        assert!(
            build::<HttpRequest>(
                "{method: post, url: 'http://127.0.0.1:1/{{payload.id}}', retries: 0, timeout: 2s}"
            )
            .is_ok()
        );
    }
}
