//! The default backend: documents in a redb file, an R-tree of envelopes in memory.
//!
//! - **Durability.** Every write goes through one writer thread that drains the queue of
//!   pending writes and commits them in a single redb transaction (group commit,
//!   `Durability::Immediate`). A `store` returns once the transaction holding it is
//!   durable on disk. See [`writer`] for the pipeline.
//! - **Index.** At open the R-tree is bulk-loaded from the compact `geometry` table; after
//!   each commit a publisher thread applies the batch to it before answering, so a caller
//!   reads its own writes.
//! - **Queries** run on the blocking pool: R-tree candidates, exact test in memory with
//!   `geo`, then only the page of documents returned is read from disk.

mod codec;
mod index;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::backend::{GeoBackend, GeoOptions, StoredDoc, prepare};
use crate::error::{GeoError, GeoResult};
use crate::geometry::extract_geometry;
use crate::query::{MAX_RADIUS_METRES, Query};
use codec::{
    DOCS, GEOMETRY, META, META_GEOMETRY_PATH, decode_doc, decode_geometry, encode_geometry,
};
use index::{IndexEntry, SpatialIndex};
use writer::{Counters, WriteOp, WriteOutcome, WriteRequest};

pub use writer::WriterStats;

/// File name of the store inside the data directory.
pub const DATABASE_FILE: &str = "geo.redb";

/// Durable embedded geo store. See the module docs for how it works.
#[derive(Debug)]
pub struct EmbeddedBackend {
    shared: Arc<Shared>,
    /// `None` once closed.
    writer: Mutex<Option<Writer>>,
}

#[derive(Debug)]
struct Shared {
    db: Database,
    index: RwLock<SpatialIndex>,
    options: GeoOptions,
    path: PathBuf,
    counters: Counters,
}

#[derive(Debug)]
struct Writer {
    requests: mpsc::Sender<WriteRequest>,
    /// The writer and publisher threads.
    threads: Vec<JoinHandle<()>>,
}

impl EmbeddedBackend {
    /// Opens (or creates) the store in `dir`, rebuilding the in-memory index.
    ///
    /// Only one `EmbeddedBackend` may have a directory open at a time; call
    /// [`GeoBackend::close`] and drop it before opening the directory again.
    pub async fn open(dir: impl AsRef<Path>, options: GeoOptions) -> GeoResult<Self> {
        if options.max_batch == 0 {
            return Err(GeoError::InvalidOption {
                option: "max_batch".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        let dir = dir.as_ref().to_path_buf();
        let shared = tokio::task::spawn_blocking(move || open_blocking(&dir, options))
            .await
            .map_err(|error| GeoError::Storage {
                reason: format!("open task failed: {error}"),
            })??;
        let shared = Arc::new(shared);
        let queue_depth = shared.options.max_batch.saturating_mul(4);
        let (requests, receiver) = mpsc::channel(queue_depth);
        let threads = writer::spawn(&shared, receiver)?;
        Ok(Self {
            shared,
            writer: Mutex::new(Some(Writer { requests, threads })),
        })
    }

    /// Number of documents in the spatial index.
    pub fn len(&self) -> usize {
        self.shared
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether the store holds no documents.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters of the writer thread (batches, batch sizes, where commit time goes).
    pub fn writer_stats(&self) -> WriterStats {
        self.shared.counters.snapshot()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    async fn submit(&self, op: WriteOp) -> GeoResult<WriteOutcome> {
        let requests = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|writer| writer.requests.clone())
            .ok_or(GeoError::Closed)?;
        let (reply, answer) = oneshot::channel();
        requests
            .send(WriteRequest { op, reply })
            .await
            .map_err(|_| GeoError::Closed)?;
        answer.await.map_err(|_| GeoError::Closed)?
    }
}

#[async_trait]
impl GeoBackend for EmbeddedBackend {
    async fn store(&self, doc: Value) -> GeoResult<StoredDoc> {
        // Everything that does not need the previous revision is done here, by the
        // caller, so the single writer thread only does what must be serial.
        let prepared = prepare(doc, &self.shared.options)?;
        let body = serde_json::to_vec(&prepared.body)
            .map_err(|error| GeoError::document(error.to_string()))?;
        let id: Arc<str> = Arc::from(prepared.id);
        let op = WriteOp::Put {
            geometry: encode_geometry(&prepared.geometry),
            entry: IndexEntry::new(Arc::clone(&id), prepared.geometry),
            id,
            body,
        };
        match self.submit(op).await? {
            WriteOutcome::Stored(stored) => Ok(stored),
            WriteOutcome::Deleted(_) => Err(GeoError::Storage {
                reason: "writer answered a store with a delete".to_owned(),
            }),
        }
    }

    async fn get(&self, id: &str) -> GeoResult<Option<Value>> {
        let shared = Arc::clone(&self.shared);
        let id = id.to_owned();
        blocking(move || read_docs(&shared.db, std::iter::once(id.as_str())))
            .await
            .map(|mut docs| docs.pop())
    }

    async fn delete(&self, id: &str) -> GeoResult<bool> {
        match self.submit(WriteOp::Delete { id: id.to_owned() }).await? {
            WriteOutcome::Deleted(existed) => Ok(existed),
            WriteOutcome::Stored(_) => Err(GeoError::Storage {
                reason: "writer answered a delete with a store".to_owned(),
            }),
        }
    }

    async fn query(&self, query: &Query) -> GeoResult<Vec<Value>> {
        let shared = Arc::clone(&self.shared);
        let query = query.clone();
        blocking(move || {
            let started = Instant::now();
            let ids = search_ids(&shared.index, &query);
            let docs = read_docs(&shared.db, ids.iter().map(AsRef::as_ref))?;
            tracing::debug!(
                results = docs.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "geo query"
            );
            Ok(docs)
        })
        .await
    }

    async fn close(&self) -> GeoResult<()> {
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(Writer { requests, threads }) = writer else {
            return Ok(());
        };
        // Dropping the sender lets the writer drain what is queued, then stop; the
        // publisher stops after answering the writer's last batch.
        drop(requests);
        blocking(move || {
            let mut result = Ok(());
            for thread in threads {
                if thread.join().is_err() {
                    result = Err(GeoError::Storage {
                        reason: "a writer thread panicked".to_owned(),
                    });
                }
            }
            result
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> GeoResult<T> + Send + 'static,
) -> GeoResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| GeoError::Storage {
            reason: format!("blocking task failed: {error}"),
        })?
}

fn open_blocking(dir: &Path, options: GeoOptions) -> GeoResult<Shared> {
    std::fs::create_dir_all(dir).map_err(|error| GeoError::Storage {
        reason: format!("cannot create {}: {error}", dir.display()),
    })?;
    let path = dir.join(DATABASE_FILE);
    let started = Instant::now();
    let db = Database::create(&path).map_err(GeoError::storage)?;
    let txn = db.begin_write().map_err(GeoError::storage)?;
    {
        let mut docs = txn.open_table(DOCS).map_err(GeoError::storage)?;
        let mut geometry = txn.open_table(GEOMETRY).map_err(GeoError::storage)?;
        let mut meta = txn.open_table(META).map_err(GeoError::storage)?;
        let recorded = meta
            .get(META_GEOMETRY_PATH)
            .map_err(GeoError::storage)?
            .map(|guard| guard.value().to_owned());
        if recorded.as_deref() != Some(options.geometry_path.as_str()) {
            // The geometry table was extracted with another path (or never): redo it.
            reextract_geometry(&mut docs, &mut geometry, &options.geometry_path)?;
            meta.insert(META_GEOMETRY_PATH, options.geometry_path.as_str())
                .map_err(GeoError::storage)?;
        }
    }
    txn.commit().map_err(GeoError::storage)?;

    let mut entries = Vec::new();
    let read = db.begin_read().map_err(GeoError::storage)?;
    let geometry = read.open_table(GEOMETRY).map_err(GeoError::storage)?;
    for row in geometry.iter().map_err(GeoError::storage)? {
        let (id, bytes) = row.map_err(GeoError::storage)?;
        let decoded = decode_geometry(bytes.value())?;
        if let Some(entry) = IndexEntry::new(Arc::from(id.value()), decoded) {
            entries.push(entry);
        }
    }
    drop(geometry);
    drop(read);
    let count = entries.len();
    let index = SpatialIndex::bulk_load(entries);
    tracing::info!(
        path = %path.display(),
        documents = count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "opened embedded geo store"
    );
    Ok(Shared {
        db,
        index: RwLock::new(index),
        options,
        path,
        counters: Counters::default(),
    })
}

fn reextract_geometry(
    docs: &mut redb::Table<'_, &str, &[u8]>,
    geometry: &mut redb::Table<'_, &str, &[u8]>,
    geometry_path: &str,
) -> GeoResult<()> {
    geometry.retain(|_, _| false).map_err(GeoError::storage)?;
    let mut skipped = 0_u64;
    for row in docs.iter().map_err(GeoError::storage)? {
        let (id, bytes) = row.map_err(GeoError::storage)?;
        let doc = decode_doc(bytes.value())?;
        match extract_geometry(&doc, geometry_path) {
            Ok(shape) => {
                geometry
                    .insert(id.value(), encode_geometry(&shape).as_slice())
                    .map_err(GeoError::storage)?;
            }
            Err(error) => {
                skipped += 1;
                tracing::warn!(id = id.value(), %error, "document left out of the geo index");
            }
        }
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            geometry_path,
            "geometry path changed; some documents have no geometry"
        );
    }
    Ok(())
}

/// Ids matching `query`; a k-nearest query runs as growing radius searches.
fn search_ids(index: &RwLock<SpatialIndex>, query: &Query) -> Vec<Arc<str>> {
    const FIRST_RADIUS_METRES: f64 = 2_000.0;
    const GROWTH: f64 = 8.0;
    let index = index.read().unwrap_or_else(PoisonError::into_inner);
    if let Some(ids) = index.search(query) {
        return ids;
    }
    let wanted = query.skip() + query.limit();
    let mut metres = FIRST_RADIUS_METRES;
    loop {
        let Some(ids) = query
            .radius_step(metres)
            .and_then(|bounded| index.search(&bounded))
        else {
            return Vec::new();
        };
        if ids.len() >= wanted || metres >= MAX_RADIUS_METRES {
            return ids.into_iter().skip(query.skip()).collect();
        }
        metres *= GROWTH;
    }
}

/// Reads documents by id, skipping ids deleted since the index was consulted.
fn read_docs<'a>(db: &Database, ids: impl Iterator<Item = &'a str>) -> GeoResult<Vec<Value>> {
    let read = db.begin_read().map_err(GeoError::storage)?;
    let docs = read.open_table(DOCS).map_err(GeoError::storage)?;
    let mut found = Vec::new();
    for id in ids {
        if let Some(bytes) = docs.get(id).map_err(GeoError::storage)? {
            found.push(decode_doc(bytes.value())?);
        }
    }
    Ok(found)
}
