//! Embedded backend benchmarks: durable store throughput with many concurrent callers,
//! and a radius query over 1,000,000 stored points.
//!
//! `cargo bench -p runnel-geo --bench geo_store`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng, rngs::StdRng};
use runnel_geo::{EmbeddedBackend, GeoBackend, GeoOptions, Query};
use serde_json::Value;

mod workload;

/// The `runnel` binary's allocator: with glibc's, `malloc_consolidate` and
/// `unlink_chunk` took a fifth of the CPU of a store here, which the shipped binary
/// does not pay.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use workload::{device, split, store_shares};

/// Stores in flight at once.
const CONCURRENCY: usize = 2048;
/// Points in the query benchmark, spread uniformly over a 1°×1° square around Chicago.
const POINTS: usize = 1_000_000;

fn options() -> GeoOptions {
    GeoOptions {
        geometry_path: "d.location".into(),
        ..GeoOptions::default()
    }
}

/// Stores `docs` from `CONCURRENCY` callers, each its own task storing its share (every
/// `CONCURRENCY`-th document) one after another, so `CONCURRENCY` stores are in flight
/// and the callers run on every runtime worker.
async fn store_all(store: &Arc<EmbeddedBackend>, docs: Vec<Value>) {
    store_shares(store, split(docs, CONCURRENCY)).await;
}

fn bench_store(c: &mut Criterion) {
    const BATCH: usize = 50_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        runtime
            .block_on(EmbeddedBackend::open(dir.path(), options()))
            .unwrap(),
    );
    let mut rng = StdRng::seed_from_u64(7);
    let mut next = 0;
    let mut group = c.benchmark_group("embedded_store");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.bench_function("durable_concurrent_store_50k", |bencher| {
        bencher.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let docs: Vec<Value> = (next..next + BATCH).map(|n| device(n, &mut rng)).collect();
                next += BATCH;
                let started = Instant::now();
                runtime.block_on(store_all(&store, docs));
                total += started.elapsed();
            }
            total
        });
    });
    group.finish();
    runtime.block_on(store.close()).unwrap();
}

fn bench_query(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        runtime
            .block_on(EmbeddedBackend::open(dir.path(), options()))
            .unwrap(),
    );
    let mut rng = StdRng::seed_from_u64(11);
    // Loaded through the real, durable store path.
    let started = Instant::now();
    for chunk_start in (0..POINTS).step_by(100_000) {
        let docs: Vec<Value> = (chunk_start..chunk_start + 100_000)
            .map(|n| device(n, &mut rng))
            .collect();
        runtime.block_on(store_all(&store, docs));
    }
    eprintln!(
        "loaded {POINTS} points through store() in {:?}",
        started.elapsed()
    );

    let params = |lat: f64, lon: f64| -> Query {
        let pairs = [
            ("lat", lat.to_string()),
            ("lon", lon.to_string()),
            ("radius", "540".to_owned()),
            ("limit", "1000".to_owned()),
        ];
        let pairs: Vec<(String, String)> =
            pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        Query::from_params(&pairs).unwrap()
    };
    let sample = runtime.block_on(store.query(&params(41.5, -87.5))).unwrap();
    eprintln!("a 540 m radius query returns {} documents", sample.len());

    let mut group = c.benchmark_group("embedded_query");
    group.bench_function("radius_540m_over_1m_points", |bencher| {
        let mut rng = StdRng::seed_from_u64(3);
        bencher.iter(|| {
            let query = params(rng.random_range(41.1..41.9), rng.random_range(-87.9..-87.1));
            runtime.block_on(store.query(&query)).unwrap()
        });
    });
    group.finish();
    runtime.block_on(store.close()).unwrap();
}

criterion_group!(benches, bench_store, bench_query);
criterion_main!(benches);
