//! `geo-store`: keeps location documents and answers geographic queries,
//! through the `runnel-geo` crate.
//!
//! Backends: `embedded` (the default: a redb file under the data directory,
//! `<data_dir>/geo-store/<store>`, where `store` defaults to the node id;
//! geo-store nodes naming the same `store` share one open store) or
//! `couchdb` (`url`, `db`, `username`, `password`, usually from `${ENV}`).
//!
//! Operations (`operation` in config, else `msg.operation`):
//! - `store`: upserts `msg.payload` (an object, or an array of objects)
//!   under the id at `id_path`, with its geometry at `geometry_path`
//!   (`{latitude, longitude}` or GeoJSON); `msg.payload` becomes the stored
//!   document(s) with `_id` and `_rev`;
//! - `get`: `msg.payload` becomes the document, or `null` with
//!   `msg.statusCode = 404`;
//! - `delete`: `msg.payload` becomes `{"_id": id, "deleted": bool}`;
//! - `query`: Cloudant Geo parameters (`bbox`, `lat`+`lon`+`radius`, `g` +
//!   `relation`, `nearest`, `limit`, `skip`) from the config's `query`,
//!   overridden by `msg.query` or else `msg.req.query` (an `http-in` query
//!   string); `msg.payload` becomes the array of matching documents,
//!   `[{"_id": …, "_rev": …, "d": {…}}]`.
//!
//! For `get` and `delete` the id is read from `id_property` when set, else
//! from `msg.payload` when it is a string or number, else from
//! `msg.req.params.id`, else from the payload's `id_path`.
//!
//! Failures go to `catch` with the message shaped for an HTTP answer, so
//! `catch → http-response` answers correctly: bad input (coordinates out of
//! range, a malformed query, an unknown parameter) sets `msg.statusCode =
//! 400` and `msg.payload = {"error": ..., "field": ...}` naming the field; a
//! backend failure sets `503` and a generic payload (the detail is in
//! `msg.error` and the log).

mod lease;
mod request;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, Map, Msg, NodeCtx, NodeError, NodeSpec, NodeStatus, NodeType, PropPath,
    TaskNode, Value,
};
use runnel_geo::{CouchBackend, CouchOptions, GeoBackend, GeoOptions, Query};
use serde::Deserialize;

use lease::{Lease, acquire};
use request::{Failure, input, query_pairs, read_id, read_query};

/// `geo-store`.
#[derive(Debug)]
pub struct GeoStore;

/// Which store holds the documents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// On disk under the data directory; no server needed.
    #[default]
    Embedded,
    /// CouchDB or Cloudant.
    Couchdb,
}

/// What to do with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Upsert `msg.payload`.
    Store,
    /// Read one document by id.
    Get,
    /// Delete one document by id.
    Delete,
    /// Geographic query.
    Query,
}

impl Operation {
    fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "store" => Some(Operation::Store),
            "get" => Some(Operation::Get),
            "delete" => Some(Operation::Delete),
            "query" => Some(Operation::Query),
            _ => None,
        }
    }
}

/// Config of `geo-store`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeoStoreConfig {
    /// `embedded` (default) or `couchdb`.
    #[serde(default)]
    pub backend: BackendKind,
    /// Embedded: the store's name under `<data_dir>/geo-store/` (default: the
    /// node id). Nodes naming the same store share it.
    #[serde(default)]
    pub store: Option<String>,
    /// CouchDB: server URL, e.g. `${COUCH_URL}`.
    #[serde(default)]
    pub url: Option<String>,
    /// CouchDB: database name (created when missing).
    #[serde(default)]
    pub db: Option<String>,
    /// CouchDB: user name.
    #[serde(default)]
    pub username: Option<String>,
    /// CouchDB: password, e.g. `${COUCH_PASSWORD}`. Never logged.
    #[serde(default)]
    pub password: Option<String>,
    /// `store`, `get`, `delete` or `query`; when unset, `msg.operation`.
    #[serde(default)]
    pub operation: Option<Operation>,
    /// Dotted path of the document id (default `_id`).
    #[serde(default = "default_id_path")]
    pub id_path: String,
    /// Dotted path of the geometry (default `d.location`, as in the seed's
    /// device documents).
    #[serde(default = "default_geometry_path")]
    pub geometry_path: String,
    /// For `get`/`delete`: the message property holding the id (see the
    /// node docs for the default search).
    #[serde(default)]
    pub id_property: Option<PropPath>,
    /// Default query parameters (`{radius: 500, limit: 100}`); the
    /// message's override them.
    #[serde(default)]
    pub query: Option<Value>,
    /// Messages handled at once (default 1024); with more than 1 they may
    /// leave out of order. Concurrent stores share one durable commit, so
    /// this bounds the embedded store's batch size and its store rate
    /// (about `concurrency` / two commit times).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

impl fmt::Debug for GeoStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoStoreConfig")
            .field("backend", &self.backend)
            .field("store", &self.store)
            .field("url", &self.url)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("operation", &self.operation)
            .field("id_path", &self.id_path)
            .field("geometry_path", &self.geometry_path)
            .finish_non_exhaustive()
    }
}

fn default_id_path() -> String {
    "_id".to_string()
}

fn default_geometry_path() -> String {
    "d.location".to_string()
}

fn default_concurrency() -> usize {
    1024
}

impl NodeType for GeoStore {
    const TYPE: &'static str = "geo-store";
    const SUMMARY: &'static str =
        "Stores location documents and answers Cloudant-Geo-style queries (embedded or CouchDB).";
    type Config = GeoStoreConfig;

    fn build(config: GeoStoreConfig, ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        if config.concurrency == 0 {
            return Err(BuildError::field("concurrency", "must be at least 1"));
        }
        let defaults = match &config.query {
            None | Some(Value::Null) => Vec::new(),
            Some(value) => {
                let pairs = query_pairs(value).map_err(|e| BuildError::field("query", e))?;
                // Validate now, so a bad default fails at load time. The
                // spatial filter usually comes with each message: stand one
                // in when the defaults have none.
                let mut check = pairs.clone();
                if !pairs
                    .iter()
                    .any(|(name, _)| matches!(name.as_str(), "bbox" | "lat" | "lon" | "g"))
                {
                    check.push(("bbox".to_string(), "0,0,1,1".to_string()));
                }
                Query::from_params(&check).map_err(|e| BuildError::field("query", e))?;
                pairs
            }
        };
        let geo = GeoOptions {
            id_path: config.id_path.clone(),
            geometry_path: config.geometry_path.clone(),
            ..GeoOptions::default()
        };
        let open = match config.backend {
            BackendKind::Embedded => {
                if config.url.is_some() || config.db.is_some() || config.username.is_some() {
                    return Err(BuildError::field(
                        "backend",
                        "url, db and username apply to backend: couchdb only",
                    ));
                }
                let store = config
                    .store
                    .clone()
                    .unwrap_or_else(|| ctx.node_id().as_str().to_string());
                if store.is_empty()
                    || !store
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                    || store.starts_with('.')
                {
                    return Err(BuildError::field(
                        "store",
                        format!(
                            "invalid store name {store:?}, expected letters, digits, -, _ or ."
                        ),
                    ));
                }
                Open::Embedded {
                    dir: ctx.data_dir().join("geo-store").join(store),
                    options: geo,
                }
            }
            BackendKind::Couchdb => {
                let Some(url) = config.url.clone() else {
                    return Err(BuildError::field("url", "backend: couchdb needs a url"));
                };
                let defaults = CouchOptions::default();
                Open::Couch(CouchOptions {
                    url,
                    db: config.db.clone().unwrap_or(defaults.db),
                    username: config.username.clone(),
                    password: config.password.clone(),
                    id_path: geo.id_path,
                    geometry_path: geo.geometry_path,
                    ..defaults
                })
            }
        };
        Ok(NodeSpec::task(
            true,
            1,
            GeoStoreNode {
                open,
                settings: Arc::new(Settings {
                    operation: config.operation,
                    id_path: config.id_path,
                    id_property: config.id_property,
                    defaults,
                }),
                concurrency: config.concurrency,
            },
        ))
    }
}

#[derive(Debug)]
enum Open {
    Embedded { dir: PathBuf, options: GeoOptions },
    Couch(CouchOptions),
}

struct Settings {
    operation: Option<Operation>,
    id_path: String,
    id_property: Option<PropPath>,
    defaults: Vec<(String, String)>,
}

struct GeoStoreNode {
    open: Open,
    settings: Arc<Settings>,
    concurrency: usize,
}

#[runnel_engine::async_trait]
impl TaskNode for GeoStoreNode {
    async fn run(self: Box<Self>, ctx: &mut NodeCtx) -> Result<(), NodeError> {
        ctx.set_status(NodeStatus::pending("opening"));
        let lease = match &self.open {
            Open::Embedded { dir, options } => acquire(dir.clone(), options.clone()).await,
            Open::Couch(options) => CouchBackend::connect(options.clone())
                .await
                .map(|backend| Lease::owned(Arc::new(backend))),
        };
        let lease = match lease {
            Ok(lease) => lease,
            Err(error) => {
                ctx.set_status(NodeStatus::error("cannot open the store"));
                return Err(NodeError::new(format!(
                    "cannot open the geo store: {error}"
                )));
            }
        };
        let Some(backend) = lease.backend() else {
            return Err(NodeError::new("the geo store was released before use"));
        };
        ctx.set_status(NodeStatus::ok("ready"));
        let mut in_flight = FuturesUnordered::new();
        loop {
            tokio::select! {
                msg = ctx.recv(), if in_flight.len() < self.concurrency => {
                    let Some(msg) = msg else { break };
                    in_flight.push(handle(backend.clone(), self.settings.clone(), msg));
                }
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    finish(ctx, done).await;
                }
            }
        }
        while let Some(done) = in_flight.next().await {
            finish(ctx, done).await;
        }
        drop(backend);
        lease.release().await;
        Ok(())
    }
}

async fn finish(ctx: &mut NodeCtx, done: Result<Msg, NodeError>) {
    match done {
        Ok(msg) => ctx.send(0, msg).await,
        Err(error) => ctx.report_error(error),
    }
}

async fn handle(
    backend: Arc<dyn GeoBackend>,
    settings: Arc<Settings>,
    mut msg: Msg,
) -> Result<Msg, NodeError> {
    match apply(&*backend, &settings, &mut msg).await {
        Ok(()) => Ok(msg),
        Err(Failure::Input { message, field }) => {
            let mut body = Map::default();
            body.insert("error".into(), Value::from(message.as_str()));
            body.insert("field".into(), Value::from(field));
            let props = msg.props_mut();
            props.insert("statusCode".into(), Value::from(400_i64));
            props.insert("payload".into(), Value::from(body));
            Err(NodeError::new(message).with_msg(msg))
        }
        Err(Failure::Backend(error)) => {
            let mut body = Map::default();
            body.insert("error".into(), Value::from("geo store unavailable"));
            body.insert("field".into(), Value::Null);
            let props = msg.props_mut();
            props.insert("statusCode".into(), Value::from(503_i64));
            props.insert("payload".into(), Value::from(body));
            Err(NodeError::new(format!("geo store: {error}")).with_msg(msg))
        }
    }
}

async fn apply(
    backend: &dyn GeoBackend,
    settings: &Settings,
    msg: &mut Msg,
) -> Result<(), Failure> {
    let operation = match settings.operation {
        Some(operation) => operation,
        None => match msg.props().get("operation") {
            Some(Value::String(text)) => Operation::parse(text).ok_or_else(|| {
                input(
                    "operation",
                    format!("unknown operation {text:?}, expected store, get, delete or query"),
                )
            })?,
            _ => {
                return Err(input(
                    "operation",
                    "no operation: set `operation` in the node or msg.operation",
                ));
            }
        },
    };
    let payload = match operation {
        Operation::Store => match msg.payload() {
            Value::Array(docs) => {
                // A batch: checked whole first, so that a bad document
                // stores none of it; then stored concurrently (one group
                // commit), answered in order.
                let mut checked = Vec::with_capacity(docs.len());
                for (index, doc) in docs.iter().enumerate() {
                    let json = document(doc).and_then(|json| {
                        backend.check(&json)?;
                        Ok(json)
                    });
                    checked.push(json.map_err(|failure| at_index(failure, index))?);
                }
                let stores = docs
                    .iter()
                    .zip(checked)
                    .map(|(doc, json)| store_one(backend, doc, json));
                Value::from(futures::future::try_join_all(stores).await?)
            }
            doc => store_one(backend, doc, document(doc)?).await?,
        },
        Operation::Get => {
            let id = read_id(settings, msg)?;
            match backend.get(&id).await? {
                Some(doc) => Value::from(doc),
                None => {
                    msg.props_mut()
                        .insert("statusCode".into(), Value::from(404_i64));
                    Value::Null
                }
            }
        }
        Operation::Delete => {
            let id = read_id(settings, msg)?;
            let deleted = backend.delete(&id).await?;
            let mut out = Map::default();
            out.insert("_id".into(), Value::from(id));
            out.insert("deleted".into(), Value::from(deleted));
            Value::from(out)
        }
        Operation::Query => {
            let query = read_query(settings, msg)?;
            let docs = backend.query(&query).await?;
            Value::from(docs.into_iter().map(Value::from).collect::<Vec<_>>())
        }
    };
    msg.set_payload(payload);
    Ok(())
}

/// `doc` as the JSON document the backend stores, if it is an object.
fn document(doc: &Value) -> Result<serde_json::Value, Failure> {
    if doc.as_object().is_none() {
        return Err(input(
            "payload",
            format!(
                "store needs an object (or an array of objects) as payload, got {}",
                doc.type_name()
            ),
        ));
    }
    Ok(doc.to_json())
}

/// Names the batch entry a failure is about: `payload[3]: ...`.
fn at_index(failure: Failure, index: usize) -> Failure {
    match failure {
        Failure::Input { message, field } => Failure::Input {
            message: format!("payload[{index}]: {message}"),
            field,
        },
        other => other,
    }
}

/// Stores `json` (`doc` converted by [`document`]); answers with `doc`.
async fn store_one(
    backend: &dyn GeoBackend,
    doc: &Value,
    json: serde_json::Value,
) -> Result<Value, Failure> {
    let stored = backend.store(json).await?;
    // The answer is the message's document plus `_id` and `_rev`: an O(1)
    // clone and a copy of its top-level map, not a second conversion.
    let mut out = doc.clone();
    if let Some(object) = out.as_object_mut() {
        object.insert("_id".into(), Value::from(stored.id));
        object.insert("_rev".into(), Value::from(stored.rev));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use runnel_engine::testing::msg_from_json as msg;

    fn settings() -> Settings {
        Settings {
            operation: None,
            id_path: "_id".into(),
            id_property: None,
            defaults: vec![("limit".into(), "10".into())],
        }
    }

    #[tokio::test]
    async fn a_batch_with_one_bad_document_stores_none_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let options = GeoOptions {
            geometry_path: "d.location".into(),
            ..GeoOptions::default()
        };
        let backend = runnel_geo::EmbeddedBackend::open(dir.path(), options)
            .await
            .unwrap();
        let s = Settings {
            operation: Some(Operation::Store),
            ..settings()
        };
        let device = |id: &str, lat: f64| serde_json::json!({"_id": id, "d": {"location": {"latitude": lat, "longitude": -87.62}}});
        let mut batch = msg(serde_json::json!({
            "payload": [device("a", 41.87), device("b", 91.0), device("c", 41.88)]
        }));
        match apply(&backend, &s, &mut batch).await {
            Err(Failure::Input { message, field }) => {
                assert!(message.starts_with("payload[1]: "), "{message}");
                assert!(message.contains("latitude"), "{message}");
                assert!(field.starts_with("d.location"), "{field}");
            }
            Err(Failure::Backend(error)) => panic!("backend error {error}"),
            Ok(()) => panic!("stored a batch with latitude 91"),
        }
        for id in ["a", "b", "c"] {
            assert_eq!(backend.get(id).await.unwrap(), None, "{id} was stored");
        }
        let mut good =
            msg(serde_json::json!({"payload": [device("a", 41.87), device("c", 41.88)]}));
        assert!(apply(&backend, &s, &mut good).await.is_ok());
        assert_eq!(good.payload().as_array().map(|docs| docs.len()), Some(2));
        assert!(backend.get("c").await.unwrap().is_some());
        backend.close().await.unwrap();
    }

    #[test]
    fn ids_come_from_payload_params_or_id_path() {
        let s = settings();
        let id = |m: &Msg| match read_id(&s, m) {
            Ok(id) => id,
            Err(Failure::Input { message, .. }) => format!("error: {message}"),
            Err(Failure::Backend(e)) => format!("backend: {e}"),
        };
        assert_eq!(id(&msg(serde_json::json!({"payload": "d1"}))), "d1");
        assert_eq!(
            id(&msg(
                serde_json::json!({"payload": {}, "req": {"params": {"id": "d2"}}})
            )),
            "d2"
        );
        assert_eq!(id(&msg(serde_json::json!({"payload": {"_id": 3}}))), "3");
        assert!(id(&msg(serde_json::json!({"payload": {}}))).starts_with("error"));
    }

    #[test]
    fn queries_merge_defaults_with_the_message() {
        let s = settings();
        let m = msg(serde_json::json!({
            "req": {"query": {"lat": "41.87", "lon": "-87.62", "radius": "500"}}
        }));
        let q = read_query(&s, &m).ok().unwrap();
        assert_eq!(q.limit(), 10);
        let m = msg(serde_json::json!({"query": {"bbox": [-88, 41, -87, 42], "limit": 5}}));
        assert_eq!(read_query(&s, &m).ok().unwrap().limit(), 5);
        let m = msg(serde_json::json!({"query": "lat=91&lon=0&radius=10"}));
        match read_query(&s, &m) {
            Err(Failure::Input { field, .. }) => assert_eq!(field, "lat"),
            _ => panic!("latitude 91 must be refused"),
        }
        let m = msg(serde_json::json!({"query": {"colour": "red"}}));
        match read_query(&s, &m) {
            Err(Failure::Input { field, .. }) => assert_eq!(field, "colour"),
            _ => panic!("unknown parameters must be refused"),
        }
    }

    #[test]
    fn config_is_validated() {
        use runnel_engine::testing::build;
        assert!(
            build::<GeoStore>("{backend: couchdb}")
                .unwrap_err()
                .contains("url")
        );
        assert!(
            build::<GeoStore>("{store: ../x}")
                .unwrap_err()
                .contains("store")
        );
        assert!(
            build::<GeoStore>("{query: {lat: 100, lon: 0, radius: 5}}")
                .unwrap_err()
                .contains("lat")
        );
        assert!(
            build::<GeoStore>("{operation: query, query: {radius: 500, lat: 1, lon: 2}}").is_ok()
        );
        assert!(build::<GeoStore>("{operation: query, query: {limit: 100}}").is_ok());
        assert!(
            build::<GeoStore>("{query: {limit: many}}")
                .unwrap_err()
                .contains("limit")
        );
        let debug = format!(
            "{:?}",
            serde_json::from_value::<GeoStoreConfig>(serde_json::json!({
                "backend": "couchdb", "url": "http://x", "password": "hunter2"
            }))
            .unwrap()
        );
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
