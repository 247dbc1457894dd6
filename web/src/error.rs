//! [`ApiError`]: every failed API request becomes `{"error": "..."}` with a
//! 4xx or 5xx status. A 5xx sends a generic text to the client and logs the
//! detail, so internal paths and errors never reach the browser.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use runnel_engine::Diagnostic;
use serde_json::json;

/// An error answer of the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 400: the flow does not validate; carries every diagnostic.
    #[error("the flow does not validate ({} errors)", .0.len())]
    Invalid(Vec<Diagnostic>),
    /// 401: missing or wrong admin token.
    #[error("missing or wrong admin token: send `Authorization: Bearer <token>`")]
    Unauthorized,
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: the flow changed since the revision the client based its edit on.
    #[error("{0}")]
    Conflict(String),
    /// 413 and other statuses reported by axum's body extractors.
    #[error("{message}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The client-facing text.
        message: String,
    },
    /// 500: the detail is logged, the client gets a generic text.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// An internal error whose `detail` is logged only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        ApiError::Internal(detail.to_string())
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Status { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::BytesRejection) -> Self {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body too large (limit {} bytes)", crate::BODY_LIMIT)
        } else {
            "cannot read the request body".to_string()
        };
        ApiError::Status { status, message }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "admin api request failed");
                json!({"error": "internal error"})
            }
            ApiError::Invalid(diagnostics) => json!({
                "error": self.to_string(),
                "diagnostics": diagnostics,
            }),
            other => json!({"error": other.to_string()}),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
