//! The backend trait the `geo-store` node talks to, and what the backends share.

use std::borrow::Borrow;
use std::fmt::Debug;
use std::future::Future;

use async_trait::async_trait;
use geo::Geometry;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::doc::{self, ID_FIELD, REV_FIELD};
use crate::error::{GeoError, GeoResult};
use crate::geometry::extract_geometry;
use crate::query::{MAX_RADIUS_METRES, Query, distance_metres};

/// Where a document keeps its id and its geometry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoOptions {
    /// Dotted path of the document id (default `_id`). A missing id is generated (32 hex
    /// digits) and written there. Stored documents always carry it in `_id` too.
    pub id_path: String,
    /// Dotted path of the geometry (default `geometry`): a `{latitude, longitude}` object
    /// or a GeoJSON geometry. Devices in the seed data use `d.location`.
    pub geometry_path: String,
    /// Embedded backend only: most writes committed in one transaction (default 4096).
    pub max_batch: usize,
}

impl Default for GeoOptions {
    fn default() -> Self {
        Self {
            id_path: ID_FIELD.to_owned(),
            geometry_path: "geometry".to_owned(),
            max_batch: 4096,
        }
    }
}

/// What a successful store returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDoc {
    /// The document id (generated when the document had none).
    pub id: String,
    /// The new revision, `N-<hash>` with `N` counting the writes of this id.
    pub rev: String,
}

/// A geo-indexed document store. Object safe: hold it as `Arc<dyn GeoBackend>`.
///
/// Writes are upserts with last-writer-wins: an incoming `_rev` is ignored and the new
/// revision follows the stored one.
#[async_trait]
pub trait GeoBackend: Send + Sync + Debug {
    /// Checks that [`GeoBackend::store`] would accept `doc` (an object with a valid
    /// geometry and a usable id), without storing anything: a batch is checked whole
    /// before any of it is stored.
    fn check(&self, doc: &Value) -> GeoResult<()>;
    /// Inserts or replaces `doc` (a JSON object) under the id at `id_path`.
    async fn store(&self, doc: Value) -> GeoResult<StoredDoc>;
    /// The document with `id`, with `_id` and `_rev`, or `None`.
    async fn get(&self, id: &str) -> GeoResult<Option<Value>>;
    /// Deletes `id`; `false` when it did not exist.
    async fn delete(&self, id: &str) -> GeoResult<bool>;
    /// The documents matching `query`, in the query's order, with `_id` and `_rev`.
    async fn query(&self, query: &Query) -> GeoResult<Vec<Value>>;
    /// Flushes pending writes and stops background work. Later calls fail with
    /// [`GeoError::Closed`](crate::GeoError::Closed) where the backend has such work.
    async fn close(&self) -> GeoResult<()> {
        Ok(())
    }
}

/// A document checked and normalised for storage.
#[derive(Debug)]
pub(crate) struct PreparedDoc {
    pub(crate) id: String,
    /// The document without `_rev`, with `_id` set.
    pub(crate) body: Value,
    pub(crate) geometry: Geometry<f64>,
}

/// What [`prepare`] checks, on a borrowed document: that it is an object, its
/// geometry and its id. Returns the geometry.
pub(crate) fn check(doc: &Value, options: &GeoOptions) -> GeoResult<Geometry<f64>> {
    if !doc.is_object() {
        return Err(GeoError::document("a document must be a JSON object"));
    }
    let geometry = extract_geometry(doc, &options.geometry_path)?;
    doc::read_id(doc, &options.id_path)?;
    Ok(geometry)
}

/// Validates a document and gives it an id. Shared by both backends so they accept the
/// same documents.
pub(crate) fn prepare(mut doc: Value, options: &GeoOptions) -> GeoResult<PreparedDoc> {
    doc::as_object_mut(&mut doc)?;
    let geometry = extract_geometry(&doc, &options.geometry_path)?;
    let id = match doc::read_id(&doc, &options.id_path)? {
        Some(id) => id,
        None => {
            let id = doc::new_id();
            doc::set_path(&mut doc, &options.id_path, Value::String(id.clone()))?;
            id
        }
    };
    let object = doc::as_object_mut(&mut doc)?;
    if doc::field(object, REV_FIELD).is_some() {
        object.remove(REV_FIELD);
    }
    // Usually the id was read from `_id` as a string: nothing to write then.
    let in_place =
        matches!(doc::field(object, ID_FIELD), Some(Value::String(stored)) if *stored == id);
    if !in_place {
        object.insert(ID_FIELD.to_owned(), Value::String(id.clone()));
    }
    Ok(PreparedDoc {
        id,
        body: doc,
        geometry,
    })
}

/// Applies the exact test, ordering, skip and limit to coarse candidates.
///
/// Candidates may repeat (a circle split at the antimeridian); repeats are dropped.
pub(crate) fn select<K, G>(query: &Query, candidates: impl IntoIterator<Item = (K, G)>) -> Vec<K>
where
    K: Ord,
    G: Borrow<Geometry<f64>>,
{
    let matching = candidates
        .into_iter()
        .filter(|(_, geometry)| query.matches(geometry.borrow()));
    let wanted = query.skip() + query.limit();
    let mut ranked: Vec<(f64, K)> = match query.distance_origin().filter(|_| query.nearest()) {
        Some(origin) => matching
            .map(|(key, geometry)| (distance_metres(geometry.borrow(), origin), key))
            .collect(),
        None => matching.map(|(key, _)| (0.0, key)).collect(),
    };
    ranked.sort_by(|left, right| {
        left.0
            .total_cmp(&right.0)
            .then_with(|| left.1.cmp(&right.1))
    });
    ranked.dedup_by(|right, left| left.1 == right.1);
    ranked
        .into_iter()
        .take(wanted)
        .skip(query.skip())
        .map(|(_, key)| key)
        .collect()
}

/// Runs a k-nearest query (no radius) as a series of growing radius queries until one
/// holds `skip + limit` results or covers the Earth.
pub(crate) async fn nearest_by_growing_radius<F, Fut>(
    query: &Query,
    mut run: F,
) -> GeoResult<Vec<Value>>
where
    F: FnMut(Query) -> Fut,
    Fut: Future<Output = GeoResult<Vec<Value>>>,
{
    const FIRST_RADIUS_METRES: f64 = 2_000.0;
    const GROWTH: f64 = 8.0;
    let wanted = query.skip() + query.limit();
    let mut metres = FIRST_RADIUS_METRES;
    loop {
        let Some(bounded) = query.radius_step(metres) else {
            return run(query.clone()).await;
        };
        let results = run(bounded).await?;
        if results.len() >= wanted || metres >= MAX_RADIUS_METRES {
            return Ok(results.into_iter().skip(query.skip()).collect());
        }
        metres *= GROWTH;
    }
}
