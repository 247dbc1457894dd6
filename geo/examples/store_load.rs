//! Durable store load against the embedded backend, with the writer's counters: how
//! large the batches are and where the time of a group commit goes.
//!
//! ```text
//! cargo run --release -p runnel-geo --example store_load -- \
//!     [docs=200000] [concurrency=2048] [max_batch=4096] [rounds=1]
//! ```
//!
//! Each round stores `docs` new device documents with `concurrency` stores in flight.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use rand::{SeedableRng, rngs::StdRng};
use runnel_geo::{EmbeddedBackend, GeoBackend, GeoOptions, WriterStats};
use serde_json::Value;

#[path = "../benches/workload/mod.rs"]
mod workload;

/// The `runnel` binary's allocator: with glibc's, `malloc_consolidate` and
/// `unlink_chunk` took a fifth of the CPU of a store here, which the shipped binary
/// does not pay.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use workload::{device, split, store_shares};

fn arg(name: &str, default: usize) -> usize {
    std::env::args()
        .skip(1)
        .find_map(|arg| {
            let (key, value) = arg.split_once('=')?;
            (key == name).then(|| value.parse().expect("a number"))
        })
        .unwrap_or(default)
}

fn report(label: &str, stats: &WriterStats) {
    let per_batch = |total: std::time::Duration| {
        if stats.batches == 0 {
            0.0
        } else {
            total.as_secs_f64() * 1e3 / stats.batches as f64
        }
    };
    println!(
        "{label}: batches {} writes {} mean batch {:.0} largest {} | per batch: write {:.2} ms, commit {:.2} ms, publish {:.2} ms",
        stats.batches,
        stats.writes,
        stats.mean_batch(),
        stats.largest_batch,
        per_batch(stats.write_time),
        per_batch(stats.commit_time),
        per_batch(stats.publish_time),
    );
}

/// CPU seconds used so far per thread name (Linux `/proc`; empty elsewhere), so runs on
/// a busy machine can be compared by CPU cost rather than wall time.
fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut totals = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return totals;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue;
        };
        // Fields after the parenthesised name: utime and stime are the 12th and 13th.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        let name = name
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        *totals.entry(name.to_owned()).or_insert(0.0) += ticks / 100.0;
    }
    totals
}

fn diff(after: &WriterStats, before: &WriterStats) -> WriterStats {
    WriterStats {
        batches: after.batches - before.batches,
        writes: after.writes - before.writes,
        largest_batch: after.largest_batch,
        write_time: after.write_time - before.write_time,
        commit_time: after.commit_time - before.commit_time,
        publish_time: after.publish_time - before.publish_time,
    }
}

#[tokio::main]
async fn main() {
    let docs = arg("docs", 200_000);
    let concurrency = arg("concurrency", 2048);
    let rounds = arg("rounds", 1);
    let options = GeoOptions {
        geometry_path: "d.location".into(),
        max_batch: arg("max_batch", GeoOptions::default().max_batch),
        ..GeoOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedBackend::open(dir.path(), options).await.unwrap());
    let mut rng = StdRng::seed_from_u64(7);
    let mut next = 0;
    for round in 0..rounds {
        let batch: Vec<Value> = (next..next + docs).map(|n| device(n, &mut rng)).collect();
        next += docs;
        // `concurrency` callers, each its own task storing every `concurrency`-th document.
        let shares = split(batch, concurrency);
        let before = store.writer_stats();
        let cpu_before = thread_cpu();
        let started = Instant::now();
        store_shares(&store, shares).await;
        let elapsed = started.elapsed();
        println!(
            "round {round}: {docs} stores, {concurrency} in flight: {:.2} s, {:.0} stores/s",
            elapsed.as_secs_f64(),
            docs as f64 / elapsed.as_secs_f64()
        );
        report("  writer", &diff(&store.writer_stats(), &before));
        let mut cpu_total = 0.0;
        let per_thread: Vec<String> = thread_cpu()
            .into_iter()
            .map(|(name, seconds)| {
                let used = seconds - cpu_before.get(&name).copied().unwrap_or(0.0);
                cpu_total += used;
                format!("{name} {:.1} µs", used * 1e6 / docs as f64)
            })
            .collect();
        println!(
            "  cpu per store: {:.1} µs total ({})",
            cpu_total * 1e6 / docs as f64,
            per_thread.join(", ")
        );
    }
    store.close().await.unwrap();
}
