//! The admin token: when set, every admin route and the debug WebSocket
//! require `Authorization: Bearer <token>` (the WebSocket may send
//! `?token=<token>` instead, since browsers cannot set headers on it). The
//! comparison runs in constant time, and the token never appears in `Debug`
//! output or logs.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::WebState;
use crate::error::ApiError;

/// A secret admin token.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    /// Wraps a token. An empty token would accept an empty header, so it is
    /// refused here (`None`).
    pub fn new(token: impl Into<String>) -> Option<Self> {
        let token = token.into();
        (!token.is_empty()).then_some(AdminToken(token))
    }

    /// Whether `candidate` is the token, in time independent of where they
    /// differ (the length is not secret).
    pub fn matches(&self, candidate: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(candidate.as_bytes()))
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// The bearer token of a request: the `Authorization` header, or for the
/// WebSocket upgrade only, the `token` query parameter.
fn presented_token(request: &Request) -> Option<String> {
    if let Some(value) = request.headers().get(AUTHORIZATION) {
        let text = value.to_str().ok()?;
        let (scheme, token) = text.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    if request.uri().path() != "/api/debug" {
        return None;
    }
    request.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == "token").then(|| percent_decode(value))
    })
}

/// Decodes `%XX` escapes and `+` (a token typed into the editor goes through
/// `encodeURIComponent`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Middleware: lets the request through when no token is configured or the
/// right one is presented; otherwise 401 with a JSON error.
pub async fn require_token(
    State(state): State<WebState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = state.admin_token() else {
        return next.run(request).await;
    };
    match presented_token(&request) {
        Some(token) if expected.matches(&token) => next.run(request).await,
        _ => {
            tracing::debug!(
                path = request.uri().path(),
                "admin request refused: bad token"
            );
            ApiError::Unauthorized.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_and_redaction() {
        let token = AdminToken::new("s3cret").unwrap_or_else(|| unreachable!());
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cres"));
        assert!(!token.matches("s3cret2"));
        assert!(!format!("{token:?}").contains("s3cret"));
        assert!(AdminToken::new("").is_none());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%3d+c"), "a/b= c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    proptest::proptest! {
        /// Decoding never panics, and undoes `encodeURIComponent`-style
        /// encoding of any text.
        #[test]
        fn percent_decoding_round_trips(text in "\\PC*") {
            let encoded: String = text
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
                .collect();
            proptest::prop_assert_eq!(percent_decode(&encoded), text.clone());
            let _ = percent_decode(&text);
        }
    }
}
