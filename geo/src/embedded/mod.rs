//! The default backend: documents in a redb file, an R-tree of envelopes in memory.
//!
//! - **Durability.** Every write goes through one writer thread that drains the queue of
//!   pending writes and commits them in a single redb transaction (group commit,
//!   `Durability::Immediate`). A `store` returns once the transaction holding it is
//!   durable on disk. See [`writer`] for the pipeline.
//! - **Index.** At open the R-tree is bulk-loaded from the geometry bytes at the front of
//!   each record (no document JSON is parsed); after
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
use redb::{Database, ReadableDatabase, ReadableTable, TableHandle};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::backend::{GeoBackend, GeoOptions, StoredDoc, check, prepare};
use crate::error::{GeoError, GeoResult};
use crate::geometry::extract_geometry;
use crate::query::{MAX_RADIUS_METRES, Query};
use codec::{
    DOCS, LEGACY_DOCS, LEGACY_GEOMETRY, META, META_GEOMETRY_PATH, Record, Tail, parse_legacy_doc,
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

    /// Queues a write and waits for its batch to be durable and indexed.
    ///
    /// The usual case (room in the queue) sends without waiting, so this future stays
    /// small: `store` futures are boxed once per call, and glibc's malloc gets much
    /// slower for blocks past 1 KiB (it consolidates its free lists first).
    async fn submit(&self, op: WriteOp) -> GeoResult<WriteOutcome> {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(
                |writer| match writer.requests.try_send(WriteRequest { op, reply }) {
                    Ok(()) => Ok(None),
                    Err(mpsc::error::TrySendError::Full(request)) => {
                        Ok(Some((writer.requests.clone(), request)))
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => Err(GeoError::Closed),
                },
            )
            .ok_or(GeoError::Closed)??;
        if let Some((requests, request)) = sent {
            // The queue is full: wait for room (tokio hands freed slots to waiters
            // in order, so `try_send` never overtakes them).
            Box::pin(requests.send(request))
                .await
                .map_err(|_| GeoError::Closed)?;
        }
        answer.await.map_err(|_| GeoError::Closed)?
    }

    /// Everything a store needs that does not depend on the previous revision, done
    /// by the caller so the single writer thread only does what must be serial. The
    /// document is dropped here, on the caller's thread.
    fn prepare_put(&self, doc: Value) -> GeoResult<(String, WriteOp)> {
        let prepared = prepare(doc, &self.shared.options)?;
        let tail = Tail::new(Some(&prepared.geometry), &prepared.body)?;
        let key: Arc<str> = Arc::from(prepared.id.as_str());
        let op = WriteOp::Put {
            entry: IndexEntry::new(Arc::clone(&key), prepared.geometry),
            id: key,
            tail,
        };
        Ok((prepared.id, op))
    }
}

#[async_trait]
impl GeoBackend for EmbeddedBackend {
    fn check(&self, doc: &Value) -> GeoResult<()> {
        check(doc, &self.shared.options).map(|_| ())
    }

    async fn store(&self, doc: Value) -> GeoResult<StoredDoc> {
        let (id, op) = self.prepare_put(doc)?;
        match self.submit(op).await? {
            WriteOutcome::Stored(rev) => Ok(StoredDoc { id, rev }),
            WriteOutcome::Deleted(_) => Err(GeoError::Storage {
                reason: "writer answered a store with a delete".to_owned(),
            }),
        }
    }

    async fn get(&self, id: &str) -> GeoResult<Option<Value>> {
        // One key in a B-tree whose hot pages are in redb's cache: a few
        // microseconds, read inline. Handing it to the blocking pool cost
        // two thread switches per request, the largest item in the
        // `GET /devices/:id` profile.
        read_docs(&self.shared.db, std::iter::once(id)).map(|mut docs| docs.pop())
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
    let legacy = txn
        .list_tables()
        .map_err(GeoError::storage)?
        .any(|table| table.name() == LEGACY_DOCS.name());
    {
        let mut docs = txn.open_table(DOCS).map_err(GeoError::storage)?;
        let mut meta = txn.open_table(META).map_err(GeoError::storage)?;
        let recorded = meta
            .get(META_GEOMETRY_PATH)
            .map_err(GeoError::storage)?
            .map(|guard| guard.value().to_owned());
        if legacy {
            let old = txn.open_table(LEGACY_DOCS).map_err(GeoError::storage)?;
            convert_legacy(&old, &mut docs, &options.geometry_path)?;
        } else if recorded.as_deref() != Some(options.geometry_path.as_str()) {
            // The records' geometries were extracted with another path (or never).
            reextract_geometry(&mut docs, &options.geometry_path)?;
        }
        meta.insert(META_GEOMETRY_PATH, options.geometry_path.as_str())
            .map_err(GeoError::storage)?;
    }
    if legacy {
        txn.delete_table(LEGACY_DOCS).map_err(GeoError::storage)?;
        txn.delete_table(LEGACY_GEOMETRY)
            .map_err(GeoError::storage)?;
    }
    txn.commit().map_err(GeoError::storage)?;

    let mut entries = Vec::new();
    let read = db.begin_read().map_err(GeoError::storage)?;
    let docs = read.open_table(DOCS).map_err(GeoError::storage)?;
    for row in docs.iter().map_err(GeoError::storage)? {
        let (id, bytes) = row.map_err(GeoError::storage)?;
        let Some(geometry) = Record::parse(bytes.value())?.geometry()? else {
            continue;
        };
        if let Some(entry) = IndexEntry::new(Arc::from(id.value()), geometry) {
            entries.push(entry);
        }
    }
    drop(docs);
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

/// The geometry bytes of a document at `geometry_path`; empty (not indexed) when it has
/// none there.
fn extract_encoded(id: &str, body: &[u8], geometry_path: &str, skipped: &mut u64) -> Vec<u8> {
    let doc: Value = match serde_json::from_slice(body) {
        Ok(doc) => doc,
        Err(error) => {
            tracing::warn!(id, %error, "unreadable document left out of the geo index");
            *skipped += 1;
            return Vec::new();
        }
    };
    match extract_geometry(&doc, geometry_path) {
        Ok(shape) => {
            let mut bytes = Vec::new();
            codec::encode_geometry(&mut bytes, &shape);
            bytes
        }
        Err(error) => {
            // Per document at debug only: a wrong path would log every document.
            tracing::debug!(id, %error, "document left out of the geo index");
            *skipped += 1;
            Vec::new()
        }
    }
}

fn warn_skipped(skipped: u64, geometry_path: &str) {
    if skipped > 0 {
        tracing::warn!(
            skipped,
            geometry_path,
            "some documents have no geometry at the geometry path"
        );
    }
}

/// Converts the two-table layout (`docs` + `geometry`) into one record per document,
/// keeping every revision and document byte for byte.
fn convert_legacy(
    old: &redb::Table<'_, &str, &[u8]>,
    docs: &mut redb::Table<'_, &str, &[u8]>,
    geometry_path: &str,
) -> GeoResult<()> {
    let started = Instant::now();
    let mut converted = 0_u64;
    let mut skipped = 0_u64;
    for row in old.iter().map_err(GeoError::storage)? {
        let (id, bytes) = row.map_err(GeoError::storage)?;
        let (rev, body) = parse_legacy_doc(bytes.value())?;
        let geometry = extract_encoded(id.value(), body, geometry_path, &mut skipped);
        let record = Tail::from_parts(&geometry, body)?.to_record(rev)?;
        docs.insert(id.value(), record.as_slice())
            .map_err(GeoError::storage)?;
        converted += 1;
    }
    warn_skipped(skipped, geometry_path);
    tracing::info!(
        documents = converted,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "converted the geo store to one record per document"
    );
    Ok(())
}

/// Re-extracts every record's geometry at `geometry_path`, a chunk of records at a time
/// (a table cannot be written while it is iterated).
fn reextract_geometry(
    docs: &mut redb::Table<'_, &str, &[u8]>,
    geometry_path: &str,
) -> GeoResult<()> {
    use std::ops::Bound;
    const CHUNK: usize = 4096;
    let mut skipped = 0_u64;
    let mut after: Option<String> = None;
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        {
            let lower = match &after {
                Some(id) => Bound::Excluded(id.as_str()),
                None => Bound::Unbounded,
            };
            let rows = docs
                .range::<&str>((lower, Bound::Unbounded))
                .map_err(GeoError::storage)?;
            for row in rows.take(CHUNK) {
                let (id, bytes) = row.map_err(GeoError::storage)?;
                let record = Record::parse(bytes.value())?;
                let geometry =
                    extract_encoded(id.value(), record.body, geometry_path, &mut skipped);
                let rewritten = Tail::from_parts(&geometry, record.body)?.to_record(record.rev)?;
                chunk.push((id.value().to_owned(), rewritten));
            }
        }
        let Some((last, _)) = chunk.last() else {
            break;
        };
        let last = last.clone();
        for (id, record) in &chunk {
            docs.insert(id.as_str(), record.as_slice())
                .map_err(GeoError::storage)?;
        }
        after = Some(last);
    }
    warn_skipped(skipped, geometry_path);
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
            found.push(Record::parse(bytes.value())?.doc()?);
        }
    }
    Ok(found)
}
