//! The editor's pages (tera templates compiled into the binary) and its
//! static files (plain JavaScript and CSS, no build step).
//!
//! Pages carry no flow data and no secrets: they are shells whose scripts
//! fetch everything from the admin API, so with an admin token set nothing
//! is shown before the token is given.

use axum::extract::{Path as UrlPath, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use tera::{Context, Tera};

use crate::WebState;
use crate::files::valid_name;

const TEMPLATES: [(&str, &str); 3] = [
    ("base.html", include_str!("../templates/base.html")),
    ("flows.html", include_str!("../templates/flows.html")),
    ("flow.html", include_str!("../templates/flow.html")),
];

const STATIC_FILES: [(&str, &str, &str); 4] = [
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../static/style.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("../static/common.js"),
    ),
    (
        "flows.js",
        "text/javascript; charset=utf-8",
        include_str!("../static/flows.js"),
    ),
    (
        "editor.js",
        "text/javascript; charset=utf-8",
        include_str!("../static/editor.js"),
    ),
];

/// Scripts and styles only from this server, no inline code, no framing:
/// a flow's data can never run as script in the editor.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn harden(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// Compiles the embedded templates.
pub fn templates() -> Result<Tera, tera::Error> {
    let mut tera = Tera::default();
    tera.add_raw_templates(TEMPLATES)?;
    tera.autoescape_on(vec![".html"]);
    Ok(tera)
}

fn render(state: &WebState, name: &str, context: &Context) -> Response {
    let result = state
        .templates()
        .ok_or_else(|| "templates failed to compile".to_string())
        .and_then(|tera| tera.render(name, context).map_err(|e| format!("{e:?}")));
    match result {
        Ok(html) => harden(Html(html).into_response()),
        Err(error) => {
            tracing::error!(template = name, error = %error, "cannot render page");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// `GET /`: the flows list.
pub async fn flows_page(State(state): State<WebState>) -> Response {
    let mut context = Context::new();
    context.insert("title", "flows");
    render(&state, "flows.html", &context)
}

/// `GET /flows/{name}`: graph, YAML editor, debug sidebar and traces.
pub async fn flow_page(State(state): State<WebState>, UrlPath(name): UrlPath<String>) -> Response {
    if !valid_name(&name) {
        return (StatusCode::NOT_FOUND, "no such flow").into_response();
    }
    let mut context = Context::new();
    context.insert("title", &name);
    context.insert("flow", &name);
    render(&state, "flow.html", &context)
}

/// `GET /static/{file}`.
pub async fn static_file(UrlPath(file): UrlPath<String>) -> Response {
    match STATIC_FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => harden(
            (
                [
                    (CONTENT_TYPE, HeaderValue::from_static(content_type)),
                    (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                ],
                *body,
            )
                .into_response(),
        ),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
