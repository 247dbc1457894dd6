//! # runnel-web
//!
//! The browser editor, the admin API, the debug WebSocket and `/metrics`,
//! served by `runnel run` (axum). The binary builds a [`WebState`], calls
//! [`router`], adds its `http-in` routes as the fallback and runs it with
//! [`serve`].
//!
//! ## Layout
//! - [`api`]: flows (YAML in and out with revisions, validate, deploy),
//!   node types, traces, health.
//! - [`debug_ws`]: the batched debug/status WebSocket.
//! - [`metrics`]: Prometheus text.
//! - [`layout`]: the layered graph drawing, computed from petgraph.
//! - [`trace_view`]: a message's hops through a flow.
//! - [`pages`]: tera pages and the static JS/CSS of the editor.
//! - [`auth`]: the admin token middleware; [`files`]: flow files on disk.
//!
//! ## Dependencies
//! May depend on `runnel-engine` and general-purpose crates; never on
//! `runnel-nodes` (the binary wires node types into the engine).

pub mod api;
pub mod auth;
pub mod debug_ws;
pub mod error;
pub mod files;
pub mod layout;
pub mod metrics;
pub mod pages;
pub mod trace_view;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use runnel_engine::Engine;
use tokio::sync::{Mutex, watch};

pub use auth::AdminToken;
pub use debug_ws::DebugBatching;
pub use error::ApiError;
pub use files::FlowFiles;

/// The largest request body the admin API accepts (1 MiB).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// What the web server shares between requests. Cheap to clone.
#[derive(Clone)]
pub struct WebState {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<Engine>,
    files: FlowFiles,
    token: Option<AdminToken>,
    ready: AtomicBool,
    closing: watch::Sender<bool>,
    deploy_lock: Mutex<()>,
    templates: Option<tera::Tera>,
    debug: DebugBatching,
}

impl std::fmt::Debug for WebState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebState")
            .field("flows", &self.inner.files.paths())
            .field("token", &self.inner.token)
            .finish_non_exhaustive()
    }
}

/// Builds a [`WebState`].
#[derive(Debug)]
pub struct WebStateBuilder {
    engine: Arc<Engine>,
    flows: Vec<PathBuf>,
    token: Option<AdminToken>,
    debug: DebugBatching,
    ready: bool,
}

impl WebStateBuilder {
    /// Whether `/readyz` answers 200 from the start (default true). A
    /// server that starts before its flows are deployed passes `false` and
    /// calls [`WebState::set_ready`] once they run.
    pub fn ready(mut self, ready: bool) -> Self {
        self.ready = ready;
        self
    }

    /// Requires `Authorization: Bearer <token>` on every admin route. An
    /// empty token is ignored.
    pub fn admin_token(mut self, token: Option<String>) -> Self {
        self.token = token.and_then(AdminToken::new);
        self
    }

    /// The debug WebSocket's batching.
    pub fn debug_batching(mut self, batching: DebugBatching) -> Self {
        self.debug = batching;
        self
    }

    /// The state.
    pub fn build(self) -> WebState {
        let templates = match pages::templates() {
            Ok(tera) => Some(tera),
            Err(error) => {
                tracing::error!(error = ?error, "editor templates do not compile");
                None
            }
        };
        let (closing, _) = watch::channel(false);
        WebState {
            inner: Arc::new(Inner {
                engine: self.engine,
                files: FlowFiles::new(self.flows),
                token: self.token,
                ready: AtomicBool::new(self.ready),
                closing,
                deploy_lock: Mutex::new(()),
                templates,
                debug: self.debug,
            }),
        }
    }
}

impl WebState {
    /// A state for `engine`, whose flows are the files and directories
    /// `flows` (what `runnel run` was given). New flows created through the
    /// API go to the first directory.
    pub fn builder(engine: Arc<Engine>, flows: Vec<PathBuf>) -> WebStateBuilder {
        WebStateBuilder {
            engine,
            flows,
            token: None,
            debug: DebugBatching::default(),
            ready: true,
        }
    }

    /// A state for flows at one file or directory, without admin token and
    /// with default settings.
    pub fn new(engine: Arc<Engine>, flows: impl Into<PathBuf>) -> Self {
        WebState::builder(engine, vec![flows.into()]).build()
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.inner.engine
    }

    /// The flow files.
    pub fn files(&self) -> &FlowFiles {
        &self.inner.files
    }

    /// The admin token, if one is required.
    pub fn admin_token(&self) -> Option<&AdminToken> {
        self.inner.token.as_ref()
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// Sets what `/readyz` answers.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// Starts shutting down: `/readyz` answers 503 and debug WebSockets
    /// close, so graceful shutdown does not wait on open editors. Call it
    /// when the shutdown signal arrives, in the future given to [`serve`].
    pub fn begin_shutdown(&self) {
        self.set_ready(false);
        self.inner.closing.send_replace(true);
    }

    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    pub(crate) fn deploy_lock(&self) -> &Mutex<()> {
        &self.inner.deploy_lock
    }

    pub(crate) fn templates(&self) -> Option<&tera::Tera> {
        self.inner.templates.as_ref()
    }

    pub(crate) fn debug_batching(&self) -> DebugBatching {
        self.inner.debug
    }
}

/// The editor, admin API, health and metrics routes.
///
/// - public: `/`, `/flows/{name}` (pages without data), `/static/*`,
///   `/healthz`, `/readyz`, `/api/openapi.json`;
/// - admin (token required when one is set): the `/api/*` routes above,
///   the `/api/debug` WebSocket and `/metrics`.
///
/// Other paths, `/api/...` included, fall through to whatever fallback the
/// binary sets in place of this router's JSON 404: the flows' `http-in`
/// routes (the seed's OpenWhisk-style `POST /api/v1/namespaces/...` is a
/// flow route), which answer a JSON 404 for unknown paths too.
///
/// Request bodies are limited to [`BODY_LIMIT`].
pub fn router(state: WebState) -> Router {
    let admin = Router::new()
        .route("/api/flows", get(api::list_flows))
        .route("/api/flows/{name}", get(api::get_flow).put(api::put_flow))
        .route("/api/flows/{name}/info", get(api::flow_info))
        .route("/api/flows/{name}/validate", post(api::validate_flow))
        .route("/api/nodes", get(api::list_nodes))
        .route("/api/schema", get(api::flow_schema))
        .route("/api/traces/{msgid}", get(api::get_trace))
        .route("/api/debug", get(debug_ws::debug_ws))
        .route("/metrics", get(metrics::metrics))
        .route_layer(from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .route("/", get(pages::flows_page))
        .route("/flows/{name}", get(pages::flow_page))
        .route("/static/{file}", get(pages::static_file))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/api/openapi.json", get(api::openapi))
        .merge(admin)
        .fallback(api::no_route)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting and waits for open requests to finish (graceful shutdown).
/// Tests bind port 0 and pass the listener in.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "web server listening");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
