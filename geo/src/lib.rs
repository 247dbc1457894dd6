//! # runnel-geo
//!
//! A geo-indexed JSON document store, the library behind the `geo-store` flow node.
//!
//! - [`geometry`]: reads and validates a document's location (`{latitude, longitude}` or
//!   GeoJSON) at a configurable dotted path.
//! - [`query`]: the query model, Cloudant Geo parameters (`bbox`, `lat`/`lon`/`radius`,
//!   `g` + `relation`, `nearest`, `limit`, `skip`), from an HTTP query string or JSON.
//! - [`GeoBackend`]: the object-safe async trait the node holds as `Arc<dyn GeoBackend>`,
//!   with two implementations: [`EmbeddedBackend`] (redb file + in-memory R-tree, the
//!   default) and [`CouchBackend`] (CouchDB through `couch_rs`, coarse Mango filter in
//!   the database, exact geometry here).
//!
//! Dependencies: geometry (`geo`, `rstar`, `wkt`), storage (`redb`, `couch_rs`), tokio,
//! serde and tracing. It depends on no other runnel crate, so the engine never sees it.
//! Design notes and measurements: `docs/geo-store.md`.

mod backend;
mod couch;
mod doc;
mod embedded;
mod error;
pub mod geometry;
pub mod query;

pub use backend::{GeoBackend, GeoOptions, StoredDoc};
pub use couch::{CouchBackend, CouchOptions, GEO_FIELD, MAX_CANDIDATES};
pub use doc::{ID_FIELD, REV_FIELD};
pub use embedded::{DATABASE_FILE, EmbeddedBackend, WriterStats};
pub use error::{GeoError, GeoResult};
pub use query::{Filter, Query, QueryParams, Relation};
