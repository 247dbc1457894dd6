//! The answer to a request that entered at `http-in`, and the handle its
//! message carries to `http-response`.

use std::fmt;
use std::sync::{Mutex, PoisonError};

use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, HeaderValue};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::oneshot;

/// What `http-response` sends back to the waiting client.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body.
    pub body: Bytes,
}

impl HttpReply {
    /// A JSON error answer `{"error": message, "field": field}`.
    pub fn error(status: StatusCode, message: &str, field: Option<&str>) -> Self {
        let body = serde_json::json!({ "error": message, "field": field });
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        HttpReply {
            status,
            headers,
            body: Bytes::from(body.to_string()),
        }
    }

    /// The generic `500` answer: no internal detail reaches the client.
    pub fn internal_error() -> Self {
        HttpReply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal server error",
            None,
        )
    }
}

impl IntoResponse for HttpReply {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

/// Why a reply could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// The request was answered already, by another `http-response` or by
    /// the timeout.
    #[error("the request {0} was already answered (or timed out)")]
    AlreadyAnswered(String),
    /// The client went away or the request timed out before the answer.
    #[error("the client of {0} is gone (disconnected or timed out)")]
    ClientGone(String),
}

/// The open request a message carries from `http-in` to `http-response`
/// (handle key [`REPLY_HANDLE`]). Answering takes the inner sender, so a
/// request is answered at most once; dropping the handle unanswered makes
/// the client get a `500`.
pub struct ReplyHandle {
    sender: Mutex<Option<oneshot::Sender<HttpReply>>>,
    label: String,
}

impl fmt::Debug for ReplyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyHandle")
            .field("request", &self.label)
            .field("pending", &self.is_pending())
            .finish()
    }
}

impl ReplyHandle {
    /// A handle answering through `sender`; `label` (`GET /path`) names the
    /// request in errors and logs.
    pub fn new(sender: oneshot::Sender<HttpReply>, label: String) -> Self {
        ReplyHandle {
            sender: Mutex::new(Some(sender)),
            label,
        }
    }

    /// `METHOD /path` of the request.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Sends the answer.
    pub fn send(&self, reply: HttpReply) -> Result<(), ReplyError> {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(sender) = sender else {
            return Err(ReplyError::AlreadyAnswered(self.label.clone()));
        };
        sender
            .send(reply)
            .map_err(|_| ReplyError::ClientGone(self.label.clone()))
    }

    /// Whether the request still waits for an answer (not answered, client
    /// still there).
    pub fn is_pending(&self) -> bool {
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|sender| !sender.is_closed())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn reply_handles_answer_once() {
        let (tx, mut rx) = oneshot::channel();
        let handle = ReplyHandle::new(tx, "GET /x".into());
        assert!(handle.is_pending());
        handle.send(HttpReply::internal_error()).unwrap();
        assert!(!handle.is_pending());
        assert!(matches!(
            handle.send(HttpReply::internal_error()),
            Err(ReplyError::AlreadyAnswered(_))
        ));
        assert_eq!(
            rx.try_recv().unwrap().status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
