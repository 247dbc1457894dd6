//! Scheduler throughput: messages/s through chains of 1, 3 and 10 `change`
//! nodes and through a 1→10 fan-out, each ending in a counting sink, on one
//! core (a current-thread tokio runtime). Also measures what 10 deep copies
//! of the same message would cost, to show fan-out is far cheaper.
//!
//! Run: `cargo bench -p runnel-nodes --bench scheduler`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, Engine, EngineSettings, EngineShared, Msg, NodeCtx, NodeError, NodeSpec,
    NodeType, Out, Registry, SyncNode, TaskNode, Value,
};
use serde::Deserialize;
use tokio::sync::Notify;

const MESSAGES: u64 = 200_000;

fn device_doc() -> Value {
    Value::from(serde_json::json!({
        "_id": "065dcc9b8510a664beaadcd3f48d1a20",
        "_rev": "1-a9978433f27854654d629cfe6abef6cb",
        "d": {"name": "My Device", "location": {"longitude": -87.62, "latitude": 41.87, "velocity": 4, "type": "GPS"}}
    }))
}

/// Emits `count` messages carrying the seed's device document.
struct BenchSource;

#[derive(Deserialize, JsonSchema)]
struct BenchSourceConfig {
    count: u64,
}

struct BenchSourceNode {
    count: u64,
}

#[runnel_engine::async_trait]
impl TaskNode for BenchSourceNode {
    async fn run(self: Box<Self>, ctx: &mut NodeCtx) -> Result<(), NodeError> {
        let doc = device_doc();
        for _ in 0..self.count {
            let msg = ctx.new_msg(doc.clone());
            ctx.send(0, msg).await;
        }
        ctx.stopping().cancelled().await;
        Ok(())
    }
}

impl NodeType for BenchSource {
    const TYPE: &'static str = "bench-source";
    const SUMMARY: &'static str = "benchmark source";
    type Config = BenchSourceConfig;
    fn build(config: BenchSourceConfig, _: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        Ok(NodeSpec::task(
            false,
            1,
            BenchSourceNode {
                count: config.count,
            },
        ))
    }
}

/// Counts messages; wakes the benchmark when the expected total arrived.
struct CountSink;

#[derive(Deserialize, JsonSchema)]
struct CountSinkConfig {}

struct Counter {
    seen: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

static COUNTER: std::sync::OnceLock<Arc<Counter>> = std::sync::OnceLock::new();

fn counter() -> Arc<Counter> {
    COUNTER
        .get_or_init(|| {
            Arc::new(Counter {
                seen: AtomicU64::new(0),
                target: AtomicU64::new(u64::MAX),
                done: Notify::new(),
            })
        })
        .clone()
}

struct CountSinkNode(Arc<Counter>);

impl SyncNode for CountSinkNode {
    fn on_msg(&mut self, msg: Msg, _: &mut Out) -> Result<(), NodeError> {
        drop(msg);
        let seen = self.0.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if seen == self.0.target.load(Ordering::Relaxed) {
            self.0.done.notify_one();
        }
        Ok(())
    }
}

impl NodeType for CountSink {
    const TYPE: &'static str = "bench-count";
    const SUMMARY: &'static str = "benchmark sink";
    type Config = CountSinkConfig;
    fn build(_: CountSinkConfig, _: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        Ok(NodeSpec::sync(0, CountSinkNode(counter())))
    }
}

fn registry() -> Arc<Registry> {
    let mut registry = runnel_nodes::registry();
    registry.register::<BenchSource>().register::<CountSink>();
    registry.into_shared()
}

/// source -> change x n -> count
fn chain_flow(n: usize, count: u64) -> String {
    let mut yaml =
        format!("nodes:\n  - {{id: src, type: bench-source, count: {count}, wires: [[c0]]}}\n");
    for i in 0..n {
        let next = if i + 1 == n {
            "sink".to_string()
        } else {
            format!("c{}", i + 1)
        };
        yaml.push_str(&format!(
            "  - {{id: c{i}, type: change, rules: [{{set: location, from: \"payload.d.location\"}}], wires: [[{next}]]}}\n"
        ));
    }
    yaml.push_str("  - {id: sink, type: bench-count}\n");
    yaml
}

/// source -> 10 x (change -> count)
fn fan_out_flow(count: u64) -> String {
    let targets: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    let mut yaml = format!(
        "nodes:\n  - {{id: src, type: bench-source, count: {count}, wires: [[{}]]}}\n",
        targets.join(", ")
    );
    for i in 0..10 {
        yaml.push_str(&format!(
            "  - {{id: c{i}, type: change, rules: [{{set: branch, to: {i}}}], wires: [[s{i}]]}}\n  - {{id: s{i}, type: bench-count}}\n"
        ));
    }
    yaml
}

fn run_flow(runtime: &tokio::runtime::Runtime, yaml: &str, expected: u64) -> Duration {
    let counter = counter();
    counter.seen.store(0, Ordering::SeqCst);
    counter.target.store(expected, Ordering::SeqCst);
    runtime.block_on(async {
        let engine = Engine::new(registry(), EngineShared::new(EngineSettings::default()));
        let flow = engine
            .loader()
            .load_str(Path::new("bench.yaml"), yaml)
            .expect("bench flow loads");
        let started = Instant::now();
        let done = counter.done.notified();
        engine.deploy(flow).await;
        done.await;
        let elapsed = started.elapsed();
        engine.shutdown().await;
        elapsed
    })
}

fn scheduler(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("scheduler");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(MESSAGES));
    for n in [1usize, 3, 10] {
        let yaml = chain_flow(n, MESSAGES);
        group.bench_with_input(BenchmarkId::new("change_chain", n), &yaml, |b, yaml| {
            b.iter_custom(|iters| (0..iters).map(|_| run_flow(&runtime, yaml, MESSAGES)).sum());
        });
    }
    let yaml = fan_out_flow(MESSAGES);
    group.bench_function("fan_out_1_to_10", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| run_flow(&runtime, &yaml, MESSAGES * 10))
                .sum()
        });
    });
    group.finish();

    // The cost fan-out avoids: 10 deep copies of the same message per input.
    let mut copies = c.benchmark_group("deep_copy");
    copies.throughput(Throughput::Elements(1));
    let json = device_doc().to_json();
    copies.bench_function("serde_json_clone_x10", |b| {
        b.iter(|| {
            for _ in 0..10 {
                std::hint::black_box(json.clone());
            }
        });
    });
    let msg = Msg::new(device_doc());
    copies.bench_function("msg_clone_x10", |b| {
        b.iter(|| {
            for _ in 0..10 {
                std::hint::black_box(msg.clone());
            }
        });
    });
    copies.finish();
}

criterion_group!(benches, scheduler);
criterion_main!(benches);
