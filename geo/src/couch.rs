//! CouchDB backend through `couch_rs`.
//!
//! Each stored document gets a reserved field `runnel_geo` (CouchDB refuses top-level
//! fields starting with `_`) holding its envelope and a size tier:
//! `{"minLat", "minLon", "maxLat", "maxLon", "tier"}`. A Mango JSON index on
//! `[runnel_geo.tier, runnel_geo.minLat]` lets a query scan, per tier, only the latitude
//! band that can overlap the query box: tier 0 holds envelopes at most 0.01° tall (points
//! and small shapes), tier 1 at most 1°, tier 2 the rest. The database does that coarse
//! bounding-box filter; the exact relation and distance tests run here. The field is
//! removed from every document returned.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use couch_rs::Client;
use couch_rs::database::Database;
use couch_rs::error::{CouchError, CouchResult, CouchResultExt};
use couch_rs::types::find::{FindQuery, SortSpec};
use couch_rs::types::index::IndexFields;
use geo::{BoundingRect, Geometry, Rect};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::backend::{
    GeoBackend, GeoOptions, StoredDoc, check, nearest_by_growing_radius, prepare, select,
};
use crate::doc::{ID_FIELD, REV_FIELD};
use crate::error::{GeoError, GeoResult};
use crate::geometry::extract_geometry;
use crate::query::{Filter, Query};

/// The reserved field holding a document's envelope.
pub const GEO_FIELD: &str = "runnel_geo";
const DESIGN_DOC: &str = "runnel-geo";
const INDEX_NAME: &str = "runnel-geo-tier-minlat";
/// Tallest envelope (degrees of latitude) per tier; the last tier is unbounded.
const TIER_SPANS: [f64; 3] = [0.01, 1.0, 180.0];
/// Rows asked for per `_find` page.
const PAGE_SIZE: u64 = 2000;
/// Candidates one query may pull from the database before it is refused as too broad.
pub const MAX_CANDIDATES: usize = 50_000;
/// Attempts at an update that keeps losing `_rev` races.
const CONFLICT_ATTEMPTS: u32 = 5;

/// How to reach CouchDB, and where documents keep their id and geometry.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CouchOptions {
    /// Server URL, e.g. `http://127.0.0.1:5984`.
    pub url: String,
    /// Database name; created when missing.
    pub db: String,
    /// Basic-auth user; no authentication when `None`.
    pub username: Option<String>,
    /// Basic-auth password. Never logged nor shown by `Debug`.
    pub password: Option<String>,
    /// See [`GeoOptions::id_path`].
    pub id_path: String,
    /// See [`GeoOptions::geometry_path`].
    pub geometry_path: String,
    /// Attempts per request while the server is down or answers 5xx (default 5).
    pub max_attempts: u32,
    /// Delay before the first retry in milliseconds, doubled each time up to 2 s
    /// (default 100).
    pub initial_backoff_ms: u64,
    /// Per-request timeout in seconds (default 10).
    pub timeout_secs: u64,
}

impl Default for CouchOptions {
    fn default() -> Self {
        let geo = GeoOptions::default();
        Self {
            url: "http://127.0.0.1:5984".to_owned(),
            db: "runnel-geo".to_owned(),
            username: None,
            password: None,
            id_path: geo.id_path,
            geometry_path: geo.geometry_path,
            max_attempts: 5,
            initial_backoff_ms: 100,
            timeout_secs: 10,
        }
    }
}

impl fmt::Debug for CouchOptions {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("CouchOptions")
            .field("url", &self.url)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("id_path", &self.id_path)
            .field("geometry_path", &self.geometry_path)
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff_ms", &self.initial_backoff_ms)
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

/// Geo store on CouchDB. See the module docs for the index layout.
pub struct CouchBackend {
    client: Client,
    db: Database,
    options: CouchOptions,
    geo: GeoOptions,
}

impl fmt::Debug for CouchBackend {
    // The client's default headers hold the credentials, so it is left out.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("CouchBackend")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl CouchBackend {
    /// Connects, creates the database when missing and makes sure the Mango index exists.
    /// Retries while the server is unreachable, then fails with [`GeoError::Unavailable`].
    pub async fn connect(options: CouchOptions) -> GeoResult<Self> {
        if options.max_attempts == 0 {
            return Err(GeoError::InvalidOption {
                option: "max_attempts".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        let client = Client::new_with_timeout(
            &options.url,
            options.username.as_deref(),
            options.password.as_deref(),
            Some(options.timeout_secs.max(1)),
        )
        .map_err(|error| GeoError::InvalidOption {
            option: "url".to_owned(),
            reason: error.to_string(),
        })?;
        let geo = GeoOptions {
            id_path: options.id_path.clone(),
            geometry_path: options.geometry_path.clone(),
            ..GeoOptions::default()
        };
        let db = ensure_database(&client, &options).await?;
        tracing::info!(url = %options.url, db = %options.db, "connected to couchdb geo store");
        Ok(Self {
            client,
            db,
            options,
            geo,
        })
    }

    async fn current_rev(&self, id: &str) -> GeoResult<Option<String>> {
        let doc = retry(&self.options, "get", || async {
            self.db.get_raw(id).await.into_option()
        })
        .await?;
        Ok(doc.and_then(|doc| doc.get(REV_FIELD)?.as_str().map(str::to_owned)))
    }

    /// A 404 from a database call: the database vanished (deleted, or an
    /// in-memory server restarted). Creates it again with its index.
    async fn recreate_database(&self) -> GeoResult<()> {
        tracing::warn!(db = %self.options.db, "couchdb database missing; recreating it");
        ensure_database(&self.client, &self.options).await.map(drop)
    }

    /// Writes `body` (with `_id`), fetching the current `_rev` after each conflict.
    async fn put_with_current_rev(&self, id: &str, mut body: Value) -> GeoResult<StoredDoc> {
        for attempt in 1..=CONFLICT_ATTEMPTS {
            let saved = retry(&self.options, "save", || {
                let mut doc = body.clone();
                async move { self.db.save(&mut doc).await }
            })
            .await;
            match saved {
                Ok(details) => {
                    return Ok(StoredDoc {
                        id: details.id,
                        rev: details.rev,
                    });
                }
                Err(GeoError::Backend { status: 404, .. }) => self.recreate_database().await?,
                Err(GeoError::Backend { status: 409, .. }) => {
                    tracing::debug!(id, attempt, "couchdb conflict; fetching the current rev");
                    let current = self.current_rev(id).await?;
                    if let Some(object) = body.as_object_mut() {
                        match current {
                            Some(rev) => object.insert(REV_FIELD.to_owned(), Value::String(rev)),
                            None => object.remove(REV_FIELD),
                        };
                    }
                }
                Err(error) => return Err(error),
            }
        }
        Err(GeoError::Conflict {
            id: id.to_owned(),
            attempts: CONFLICT_ATTEMPTS,
        })
    }

    /// Coarse candidates for one box: one paged `_find` per size tier.
    async fn candidates(
        &self,
        rect: &Rect<f64>,
        param: &str,
        into: &mut BTreeMap<String, Value>,
    ) -> GeoResult<()> {
        for (tier, span) in TIER_SPANS.iter().enumerate() {
            let field = |name: &str| format!("{GEO_FIELD}.{name}");
            let selector = json!({
                field("tier"): tier,
                field("minLat"): {"$gte": rect.min().y - span, "$lte": rect.max().y},
                field("maxLat"): {"$gte": rect.min().y},
                field("minLon"): {"$lte": rect.max().x},
                field("maxLon"): {"$gte": rect.min().x},
            });
            let mut skip = 0;
            loop {
                let mut find = FindQuery::new(selector.clone());
                find.limit = Some(PAGE_SIZE);
                find.skip = Some(skip);
                let page = match retry(&self.options, "find", || self.db.find_raw(&find)).await {
                    Ok(page) => page,
                    Err(GeoError::Backend { status: 404, .. }) => {
                        // A new database holds nothing.
                        self.recreate_database().await?;
                        return Ok(());
                    }
                    Err(error) => return Err(error),
                };
                let rows = page.rows.len() as u64;
                for doc in page.rows {
                    if let Some(id) = doc.get(ID_FIELD).and_then(Value::as_str) {
                        into.insert(id.to_owned(), doc);
                    }
                }
                if into.len() > MAX_CANDIDATES {
                    return Err(GeoError::query(
                        param,
                        format!(
                            "the query area holds more than {MAX_CANDIDATES} documents; narrow it"
                        ),
                    ));
                }
                if rows < PAGE_SIZE {
                    break;
                }
                skip += rows;
            }
        }
        Ok(())
    }

    async fn query_bounded(&self, query: Query) -> GeoResult<Vec<Value>> {
        let param = match query.filter() {
            Filter::BBox(_) => "bbox",
            Filter::Radius { .. } | Filter::Nearest { .. } => "radius",
            Filter::Shape(_) => "g",
        };
        let mut found = BTreeMap::new();
        for rect in query.coarse_boxes().unwrap_or_default() {
            self.candidates(&rect, param, &mut found).await?;
        }
        let mut geometries = Vec::with_capacity(found.len());
        for (id, doc) in &found {
            match extract_geometry(doc, &self.geo.geometry_path) {
                Ok(geometry) => geometries.push((id.as_str(), geometry)),
                Err(error) => {
                    tracing::warn!(id = %id, %error, "couchdb document without a usable geometry")
                }
            }
        }
        let ids: Vec<String> = select(&query, geometries)
            .into_iter()
            .map(str::to_owned)
            .collect();
        Ok(ids
            .into_iter()
            .filter_map(|id| found.remove(&id))
            .map(strip_geo_field)
            .collect())
    }
}

#[async_trait]
impl GeoBackend for CouchBackend {
    fn check(&self, doc: &Value) -> GeoResult<()> {
        let geometry = check(doc, &self.geo)?;
        geo_field(&geometry).map(|_| ())
    }

    async fn store(&self, doc: Value) -> GeoResult<StoredDoc> {
        let prepared = prepare(doc, &self.geo)?;
        let mut body = prepared.body;
        let envelope = geo_field(&prepared.geometry)?;
        if let Some(object) = body.as_object_mut() {
            object.insert(GEO_FIELD.to_owned(), envelope);
        }
        self.put_with_current_rev(&prepared.id, body).await
    }

    async fn get(&self, id: &str) -> GeoResult<Option<Value>> {
        let doc = retry(&self.options, "get", || async {
            self.db.get_raw(id).await.into_option()
        })
        .await?;
        Ok(doc.map(strip_geo_field))
    }

    async fn delete(&self, id: &str) -> GeoResult<bool> {
        // A `_deleted: true` update is a deletion for CouchDB; it goes through the same
        // save path as stores, so errors are classified the same way (couch_rs' `remove`
        // reports a refused connection as a 400).
        for _ in 0..CONFLICT_ATTEMPTS {
            let Some(rev) = self.current_rev(id).await? else {
                return Ok(false);
            };
            let tombstone = json!({ID_FIELD: id, REV_FIELD: rev, "_deleted": true});
            let deleted = retry(&self.options, "delete", || {
                let mut doc = tombstone.clone();
                async move { self.db.save(&mut doc).await }
            })
            .await;
            match deleted {
                Ok(_) => return Ok(true),
                Err(GeoError::Backend { status: 409, .. }) => continue,
                Err(GeoError::Backend { status: 404, .. }) => return Ok(false),
                Err(error) => return Err(error),
            }
        }
        Err(GeoError::Conflict {
            id: id.to_owned(),
            attempts: CONFLICT_ATTEMPTS,
        })
    }

    async fn query(&self, query: &Query) -> GeoResult<Vec<Value>> {
        nearest_by_growing_radius(query, |bounded| self.query_bounded(bounded)).await
    }
}

/// Opens the database, creating it when missing, and makes sure the Mango index exists.
async fn ensure_database(client: &Client, options: &CouchOptions) -> GeoResult<Database> {
    let db = retry(options, "open database", || client.db(&options.db)).await?;
    let fields = IndexFields {
        fields: vec![
            SortSpec::Simple(format!("{GEO_FIELD}.tier")),
            SortSpec::Simple(format!("{GEO_FIELD}.minLat")),
        ],
    };
    retry(options, "create index", || {
        db.insert_index(
            INDEX_NAME,
            fields.clone(),
            None,
            Some(DESIGN_DOC.to_owned()),
        )
    })
    .await?;
    Ok(db)
}

fn geo_field(geometry: &Geometry<f64>) -> GeoResult<Value> {
    let rect = geometry
        .bounding_rect()
        .ok_or_else(|| GeoError::document("the geometry is empty"))?;
    let span = rect.max().y - rect.min().y;
    let tier = TIER_SPANS
        .iter()
        .position(|limit| span <= *limit)
        .unwrap_or(TIER_SPANS.len() - 1);
    Ok(json!({
        "minLat": rect.min().y,
        "minLon": rect.min().x,
        "maxLat": rect.max().y,
        "maxLon": rect.max().x,
        "tier": tier,
    }))
}

fn strip_geo_field(mut doc: Value) -> Value {
    if let Some(object) = doc.as_object_mut() {
        object.remove(GEO_FIELD);
    }
    doc
}

/// Whether retrying may help: server errors, timeouts, rate limits, and refused
/// connections (which couch_rs reports as 501).
fn is_transient(error: &CouchError) -> bool {
    error
        .status()
        .is_some_and(|status| status.is_server_error() || matches!(status.as_u16(), 408 | 429))
}

async fn retry<T, F, Fut>(
    options: &CouchOptions,
    action: &'static str,
    mut attempt_once: F,
) -> GeoResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = CouchResult<T>>,
{
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    let mut backoff = Duration::from_millis(options.initial_backoff_ms);
    let mut attempt = 1;
    loop {
        match attempt_once().await {
            Ok(value) => return Ok(value),
            Err(error) if is_transient(&error) && attempt < options.max_attempts => {
                tracing::warn!(action, attempt, backoff_ms = backoff.as_millis() as u64, %error, "couchdb request failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            Err(error) if is_transient(&error) => {
                tracing::error!(action, attempts = attempt, %error, "couchdb unavailable");
                return Err(GeoError::Unavailable {
                    attempts: attempt,
                    reason: error.to_string(),
                });
            }
            Err(error) => {
                return Err(GeoError::Backend {
                    status: error.status().map_or(0, |status| status.as_u16()),
                    reason: error.to_string(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use geo::Point;

    #[test]
    fn envelopes_get_a_tier() {
        let point = geo_field(&Geometry::Point(Point::new(1.0, 2.0))).unwrap();
        assert_eq!(point["tier"], json!(0));
        assert_eq!(point["minLat"], json!(2.0));
        let tall = Geometry::Rect(Rect::new((0.0, 0.0), (1.0, 5.0)));
        assert_eq!(geo_field(&tall).unwrap()["tier"], json!(2));
    }

    #[test]
    fn debug_hides_the_password() {
        let options = CouchOptions {
            password: Some("hunter2".into()),
            ..CouchOptions::default()
        };
        assert!(!format!("{options:?}").contains("hunter2"));
    }
}
