//! `http-response`: answers the request that entered at `http-in`.
//!
//! The request rides on the message as the `http.reply` handle. The answer:
//!
//! - status: `msg.statusCode` when set, else the config's `status`, else 200;
//! - headers: the config's `headers`, then `msg.headers` over them;
//! - body from `msg.payload`: objects, arrays, numbers and booleans as JSON,
//!   strings as `text/plain`, bytes as `application/octet-stream`, `null` as
//!   an empty body. A `content-type` header set in config or message wins.
//!
//! Config values are defaults the message can override, so one
//! `http-response` can answer both the normal path and a `catch` path that
//! sets `msg.statusCode = 400`.

use std::collections::BTreeMap;

use axum::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, Msg, NodeError, NodeSpec, NodeType, Out, SyncNode, Value,
};
use serde::Deserialize;

use crate::http_server::{HttpReply, REPLY_HANDLE, ReplyHandle};

/// `http-response`.
#[derive(Debug)]
pub struct HttpResponse;

/// Config of `http-response`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpResponseConfig {
    /// Status code when the message has no `statusCode` (default 200).
    #[serde(default)]
    pub status: Option<u16>,
    /// Headers to send; `msg.headers` entries override these.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl NodeType for HttpResponse {
    const TYPE: &'static str = "http-response";
    const SUMMARY: &'static str =
        "Answers the request that entered at http-in: status, headers, body from payload.";
    type Config = HttpResponseConfig;

    fn build(config: HttpResponseConfig, _ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        let status = match config.status {
            Some(code) => valid_status(code).map_err(|e| BuildError::field("status", e))?,
            None => StatusCode::OK,
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let (name, value) =
                header_pair(name, value).map_err(|e| BuildError::field("headers", e))?;
            headers.insert(name, value);
        }
        Ok(NodeSpec::sync(0, HttpResponseNode { status, headers }))
    }
}

struct HttpResponseNode {
    status: StatusCode,
    headers: HeaderMap,
}

impl SyncNode for HttpResponseNode {
    fn on_msg(&mut self, msg: Msg, _out: &mut Out) -> Result<(), NodeError> {
        let Some(handle) = msg.handle::<ReplyHandle>(REPLY_HANDLE) else {
            return Err(NodeError::new(
                "no request to answer: the message did not come from an http-in node",
            )
            .with_msg(msg));
        };
        let reply = match self.reply(&msg) {
            Ok(reply) => reply,
            Err(error) => return Err(NodeError::new(error).with_msg(msg)),
        };
        handle
            .send(reply)
            .map_err(|e| NodeError::new(e).with_msg(msg))
    }
}

impl HttpResponseNode {
    fn reply(&self, msg: &Msg) -> Result<HttpReply, String> {
        let status = match msg.props().get("statusCode") {
            None | Some(Value::Null) => self.status,
            Some(value) => {
                let code = value
                    .as_i64()
                    .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| {
                        format!(
                            "msg.statusCode must be a number from 100 to 999, got {}",
                            value.to_text()
                        )
                    })?;
                valid_status(code).map_err(|e| format!("msg.statusCode: {e}"))?
            }
        };
        let mut headers = self.headers.clone();
        for (name, text) in message_headers(msg)? {
            if is_framing_header(&name) {
                // msg.headers may hold the answer of an earlier
                // http-request: its framing does not fit this body.
                continue;
            }
            let (name, value) =
                header_pair(&name, &text).map_err(|e| format!("msg.headers: {e}"))?;
            headers.insert(name, value);
        }
        let (body, content_type) = body_of(msg.payload());
        if let Some(content_type) = content_type {
            headers
                .entry(CONTENT_TYPE)
                .or_insert(HeaderValue::from_static(content_type));
        }
        Ok(HttpReply {
            status,
            headers,
            body,
        })
    }
}

/// The body and its default content type.
pub(crate) fn body_of(payload: &Value) -> (Bytes, Option<&'static str>) {
    match payload {
        Value::Null => (Bytes::new(), None),
        Value::String(text) => (
            Bytes::copy_from_slice(text.as_bytes()),
            Some("text/plain; charset=utf-8"),
        ),
        Value::Bytes(bytes) => (bytes.clone(), Some("application/octet-stream")),
        other => (
            Bytes::from(other.to_json_string()),
            Some("application/json"),
        ),
    }
}

fn is_framing_header(name: &str) -> bool {
    const FRAMING: [&str; 6] = [
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "content-encoding",
    ];
    FRAMING.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn valid_status(code: u16) -> Result<StatusCode, String> {
    StatusCode::from_u16(code)
        .map_err(|_| format!("invalid status code {code}, expected a number from 100 to 999"))
}

/// `msg.headers` as (name, text) pairs: an object whose values are strings,
/// numbers or booleans. Shared with `http-request`.
pub(crate) fn message_headers(msg: &Msg) -> Result<Vec<(String, String)>, String> {
    match msg.props().get("headers") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(name, value)| match value {
                Value::String(s) => Ok((name.clone(), s.to_string())),
                Value::Number(_) | Value::Bool(_) => Ok((name.clone(), value.to_text())),
                other => Err(format!(
                    "msg.headers.{name} must be a string or number, got {}",
                    other.type_name()
                )),
            })
            .collect(),
        Some(other) => Err(format!(
            "msg.headers must be an object, got {}",
            other.type_name()
        )),
    }
}

/// A checked header name and value. Shared with `http-request`.
pub(crate) fn header_pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name {name:?}"))?;
    let value =
        HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name:?}"))?;
    Ok((header, value))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::Arc;

    use super::*;
    use runnel_engine::testing::run_sync;
    use tokio::sync::oneshot;

    fn request_msg(payload: serde_json::Value) -> (Msg, oneshot::Receiver<HttpReply>) {
        let (tx, rx) = oneshot::channel();
        let mut msg = Msg::new(Value::from(payload));
        msg.set_handle(
            REPLY_HANDLE,
            Arc::new(ReplyHandle::new(tx, "GET /t".into())),
        );
        (msg, rx)
    }

    #[test]
    fn answers_json_with_merged_headers_and_message_status() {
        let (mut msg, mut rx) = request_msg(serde_json::json!({"ok": true}));
        msg.props_mut()
            .insert("statusCode".into(), Value::from(201_i64));
        msg.props_mut().insert(
            "headers".into(),
            Value::from(serde_json::json!({"x-b": "msg", "x-n": 3, "Content-Length": "999"})),
        );
        let out = run_sync::<HttpResponse>(
            "{status: 202, headers: {x-a: config, x-b: config}}",
            vec![msg],
        )
        .unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let reply = rx.try_recv().unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.headers["x-a"], "config");
        assert_eq!(reply.headers["x-b"], "msg");
        assert_eq!(reply.headers["x-n"], "3");
        assert!(reply.headers.get("content-length").is_none());
        assert_eq!(reply.headers[CONTENT_TYPE], "application/json");
        assert_eq!(&reply.body[..], br#"{"ok":true}"#);
    }

    #[test]
    fn strings_are_text_and_bytes_are_octets() {
        assert_eq!(
            body_of(&Value::from("hi")),
            (Bytes::from_static(b"hi"), Some("text/plain; charset=utf-8"))
        );
        assert_eq!(
            body_of(&Value::Bytes(Bytes::from_static(b"\x01"))).1,
            Some("application/octet-stream")
        );
        assert_eq!(body_of(&Value::Null), (Bytes::new(), None));
    }

    #[test]
    fn refuses_messages_without_a_request_and_bad_status() {
        let out = run_sync::<HttpResponse>("{}", vec![Msg::new(Value::Null)]).unwrap();
        assert_eq!(out.errors.len(), 1);
        assert!(out.errors[0].contains("http-in"), "{:?}", out.errors);

        let (mut msg, _rx) = request_msg(serde_json::json!(null));
        msg.props_mut()
            .insert("statusCode".into(), Value::from("abc"));
        let out = run_sync::<HttpResponse>("{}", vec![msg]).unwrap();
        assert!(out.errors[0].contains("statusCode"), "{:?}", out.errors);

        assert!(runnel_engine::testing::build::<HttpResponse>("{status: 42}").is_err());
    }

    #[test]
    fn a_request_is_answered_once() {
        let (msg, _rx) = request_msg(serde_json::json!(1));
        let out = run_sync::<HttpResponse>("{}", vec![msg.clone(), msg]).unwrap();
        assert_eq!(out.errors.len(), 1);
        assert!(
            out.errors[0].contains("already answered"),
            "{:?}",
            out.errors
        );
    }
}
