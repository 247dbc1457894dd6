//! The write path, as a two-stage pipeline on two threads:
//!
//! 1. the **writer** drains up to `max_batch` queued writes, fills one redb transaction
//!    (previous revision, new revision, one record per document) and commits it with
//!    `Durability::Immediate` (fsync);
//! 2. the **publisher** applies each committed batch to the R-tree, in commit order, a
//!    chunk of writes at a time, answering each chunk's callers once their writes are
//!    in the index.
//!
//! While the publisher updates the index and wakes the callers of batch N, the writer is
//! already filling and committing batch N+1, so the fsync wait overlaps that work. A
//! caller still hears back only once its batch is durable *and* visible to queries.
//! Everything that does not need the previous revision (serialising the document,
//! encoding its geometry into the record, building its index entry) is done by the
//! caller before the write is queued; the writer only looks up the previous revision,
//! hashes the new one and writes the record straight into its page.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::ReadableTable;
use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::codec::{DOCS, Record, Tail};
use super::index::IndexEntry;
use crate::doc::next_rev;
use crate::error::{GeoError, GeoResult};

/// Index updates applied under one write lock, so queries wait at most this many.
const INDEX_CHUNK: usize = 256;

#[derive(Debug)]
pub(super) enum WriteOp {
    Put {
        id: Arc<str>,
        /// The record without its revision: geometry and document JSON (with `_id`,
        /// without `_rev`).
        tail: Tail,
        /// `None` when the geometry has no extent to index (an empty collection).
        entry: Option<IndexEntry>,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug)]
pub(super) enum WriteOutcome {
    /// The new revision.
    Stored(String),
    Deleted(bool),
}

#[derive(Debug)]
pub(super) struct WriteRequest {
    pub(super) op: WriteOp,
    pub(super) reply: oneshot::Sender<GeoResult<WriteOutcome>>,
}

/// A batch whose transaction is durable, on its way to the index and the callers.
#[derive(Debug)]
struct Committed {
    batch: Vec<WriteRequest>,
    outcomes: Vec<WriteOutcome>,
}

/// What the writer has done since the store was opened, to size batches and see where
/// the time of a group commit goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed.
    pub batches: u64,
    /// Writes (stores and deletes) in those transactions.
    pub writes: u64,
    /// The largest batch seen.
    pub largest_batch: u64,
    /// Time spent filling transactions (revision lookups and hashes, inserts).
    pub write_time: Duration,
    /// Time spent in `commit` (writing pages and the fsync).
    pub commit_time: Duration,
    /// Time spent applying committed batches to the R-tree and answering callers (on
    /// the publisher thread, overlapping the next commit).
    pub publish_time: Duration,
}

impl WriterStats {
    /// Mean writes per transaction (0 before the first commit).
    pub fn mean_batch(&self) -> f64 {
        if self.batches == 0 {
            return 0.0;
        }
        self.writes as f64 / self.batches as f64
    }
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    batches: AtomicU64,
    writes: AtomicU64,
    largest_batch: AtomicU64,
    write_nanos: AtomicU64,
    commit_nanos: AtomicU64,
    publish_nanos: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> WriterStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WriterStats {
            batches: load(&self.batches),
            writes: load(&self.writes),
            largest_batch: load(&self.largest_batch),
            write_time: Duration::from_nanos(load(&self.write_nanos)),
            commit_time: Duration::from_nanos(load(&self.commit_nanos)),
            publish_time: Duration::from_nanos(load(&self.publish_nanos)),
        }
    }

    fn count_batch(&self, size: usize) {
        let size = size as u64;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(size, Ordering::Relaxed);
        self.largest_batch.fetch_max(size, Ordering::Relaxed);
    }
}

fn add_elapsed(counter: &AtomicU64, since: Instant) {
    let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    counter.fetch_add(nanos, Ordering::Relaxed);
}

/// Starts the writer and publisher threads. They stop once every sender of `requests`
/// is dropped and the queued writes are committed and answered.
pub(super) fn spawn(
    shared: &Arc<Shared>,
    requests: mpsc::Receiver<WriteRequest>,
) -> GeoResult<Vec<JoinHandle<()>>> {
    let cannot_start = |error: std::io::Error| GeoError::Storage {
        reason: format!("cannot start the writer threads: {error}"),
    };
    // One committed batch may wait while the previous one is published: enough to
    // overlap the two stages, and the writer slows down if publishing falls behind.
    let (committed, to_publish) = sync_channel(1);
    let publisher_shared = Arc::clone(shared);
    let publisher = std::thread::Builder::new()
        .name("runnel-geo-publish".to_owned())
        .spawn(move || run_publisher(&publisher_shared, to_publish))
        .map_err(cannot_start)?;
    let writer_shared = Arc::clone(shared);
    let writer = std::thread::Builder::new()
        .name("runnel-geo-writer".to_owned())
        .spawn(move || run_writer(&writer_shared, requests, committed))
        .map_err(cannot_start)?;
    Ok(vec![writer, publisher])
}

fn run_writer(
    shared: &Shared,
    mut receiver: mpsc::Receiver<WriteRequest>,
    publish: SyncSender<Committed>,
) {
    let max_batch = shared.options.max_batch;
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = Vec::with_capacity(max_batch.min(receiver.len() + 1));
        batch.push(first);
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let size = batch.len();
        let started = Instant::now();
        match commit_batch(shared, &batch) {
            Ok(outcomes) => {
                shared.counters.count_batch(size);
                if publish.send(Committed { batch, outcomes }).is_err() {
                    // The publisher is gone (it panicked): callers see `Closed`.
                    tracing::error!("geo store publisher stopped; writer stopping");
                    break;
                }
            }
            Err(error) => {
                tracing::error!(batch = size, %error, "geo store commit failed");
                for request in batch {
                    let _ = request.reply.send(Err(GeoError::Storage {
                        reason: error.to_string(),
                    }));
                }
            }
        }
        tracing::trace!(
            batch = size,
            elapsed_us = started.elapsed().as_micros() as u64,
            "geo store batch committed"
        );
    }
    tracing::debug!("geo store writer stopped");
}

fn commit_batch(shared: &Shared, batch: &[WriteRequest]) -> GeoResult<Vec<WriteOutcome>> {
    let writing = Instant::now();
    let txn = shared.db.begin_write().map_err(GeoError::storage)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    {
        let mut docs = txn.open_table(DOCS).map_err(GeoError::storage)?;
        for request in batch {
            match &request.op {
                WriteOp::Put { id, tail, .. } => {
                    let previous = match docs.get(id.as_ref()).map_err(GeoError::storage)? {
                        Some(guard) => Some(Record::parse(guard.value())?.rev.to_owned()),
                        None => None,
                    };
                    let rev = next_rev(previous.as_deref(), tail.body());
                    let mut slot = docs
                        .insert_reserve(id.as_ref(), tail.record_len(&rev))
                        .map_err(GeoError::storage)?;
                    tail.write_record(&rev, slot.as_mut())?;
                    drop(slot);
                    outcomes.push(WriteOutcome::Stored(rev));
                }
                WriteOp::Delete { id } => {
                    let existed = docs
                        .remove(id.as_str())
                        .map_err(GeoError::storage)?
                        .is_some();
                    outcomes.push(WriteOutcome::Deleted(existed));
                }
            }
        }
    }
    add_elapsed(&shared.counters.write_nanos, writing);
    let committing = Instant::now();
    txn.commit().map_err(GeoError::storage)?;
    add_elapsed(&shared.counters.commit_nanos, committing);
    Ok(outcomes)
}

fn run_publisher(shared: &Shared, committed: Receiver<Committed>) {
    let mut chunk = Vec::with_capacity(INDEX_CHUNK);
    for Committed { batch, outcomes } in committed {
        let started = Instant::now();
        let mut pending = batch.into_iter().zip(outcomes);
        loop {
            chunk.extend(pending.by_ref().take(INDEX_CHUNK));
            if chunk.is_empty() {
                break;
            }
            {
                let mut index = shared.index.write().unwrap_or_else(PoisonError::into_inner);
                for (request, _) in &mut chunk {
                    match &mut request.op {
                        WriteOp::Put { id, entry, .. } => match entry.take() {
                            Some(entry) => index.upsert(entry),
                            None => index.remove(id),
                        },
                        WriteOp::Delete { id } => index.remove(id),
                    }
                }
            }
            // Each chunk's callers are answered as soon as their writes are visible,
            // so they can queue their next write while the rest of the batch is
            // indexed.
            for (request, outcome) in chunk.drain(..) {
                // A caller that gave up waiting is not an error.
                let _ = request.reply.send(Ok(outcome));
            }
        }
        add_elapsed(&shared.counters.publish_nanos, started);
    }
    tracing::debug!("geo store publisher stopped");
}
