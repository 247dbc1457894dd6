//! The scheduler, end to end in memory: fan-out, fusion, back-pressure,
//! completion, catch, panics and draining. Node types used here are defined
//! in this file, so the engine is tested without `runnel-nodes`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::testing::{Collect, collect};
use runnel_engine::{
    BuildCtx, BuildError, CatchScope, Engine, EngineSettings, EngineShared, Msg, NodeCtx,
    NodeError, NodeSpec, NodeType, Out, Outcome, PropPath, Registry, SyncNode, TaskNode, Value,
};
use serde::Deserialize;

/// Emits `count` messages with payloads 0..count, each tracked; records outcomes.
struct Source;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SourceConfig {
    count: usize,
    #[serde(default)]
    outcomes: Option<String>,
}

static OUTCOMES: Mutex<Vec<(String, usize, bool)>> = Mutex::new(Vec::new());
/// Messages sent by the sources tagged `bp` (tests run in parallel, so counters are per tag).
static SENT_BY_BP_SOURCE: AtomicUsize = AtomicUsize::new(0);

struct SourceNode {
    count: usize,
    outcomes: Option<String>,
}

#[runnel_engine::async_trait]
impl TaskNode for SourceNode {
    async fn run(self: Box<Self>, ctx: &mut NodeCtx) -> Result<(), NodeError> {
        for i in 0..self.count {
            if ctx.stopping().is_cancelled() {
                break;
            }
            let tag = self.outcomes.clone();
            let msg = ctx.new_tracked_msg(Value::from(i as u64), move |outcome: Outcome| {
                if let Some(tag) = tag {
                    OUTCOMES.lock().unwrap().push((tag, i, outcome.errored));
                }
            });
            let counts = self.outcomes.as_deref() == Some("bp");
            ctx.send(0, msg).await;
            if counts {
                SENT_BY_BP_SOURCE.fetch_add(1, Ordering::SeqCst);
            }
        }
        ctx.stopping().cancelled().await;
        Ok(())
    }
}

impl NodeType for Source {
    const TYPE: &'static str = "t-source";
    const SUMMARY: &'static str = "test source";
    type Config = SourceConfig;
    fn build(config: SourceConfig, _: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        Ok(NodeSpec::task(
            false,
            1,
            SourceNode {
                count: config.count,
                outcomes: config.outcomes,
            },
        ))
    }
}

/// Adds `add` to a numeric payload at `path` (default payload); fails on `fail_on`; panics on `panic_on`.
struct Step;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StepConfig {
    #[serde(default)]
    add: i64,
    #[serde(default)]
    fail_on: Option<i64>,
    #[serde(default)]
    panic_on: Option<i64>,
    #[serde(default)]
    outputs: Option<usize>,
}

struct StepNode {
    add: i64,
    fail_on: Option<i64>,
    panic_on: Option<i64>,
    outputs: usize,
}

impl SyncNode for StepNode {
    fn on_msg(&mut self, mut msg: Msg, out: &mut Out) -> Result<(), NodeError> {
        let n = msg.payload().as_i64().unwrap_or(0);
        if Some(n) == self.fail_on {
            return Err(NodeError::new(format!("cannot handle {n}")).with_msg(msg));
        }
        if Some(n) == self.panic_on {
            panic!("boom on {n}");
        }
        msg.set_payload(Value::from(n + self.add));
        let last = self.outputs - 1;
        for port in 0..last {
            out.send(port, msg.clone())?;
        }
        out.send(last, msg)
    }
}

impl NodeType for Step {
    const TYPE: &'static str = "t-step";
    const SUMMARY: &'static str = "test step";
    type Config = StepConfig;
    fn build(config: StepConfig, _: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        let outputs = config.outputs.unwrap_or(1);
        if outputs == 0 {
            return Err(BuildError::field("outputs", "must be at least 1"));
        }
        Ok(NodeSpec::sync(
            outputs,
            StepNode {
                add: config.add,
                fail_on: config.fail_on,
                panic_on: config.panic_on,
                outputs,
            },
        ))
    }
}

/// A slow task sink: holds each message for `hold_ms`, then forwards it.
struct Slow;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SlowConfig {
    hold_ms: u64,
}

struct SlowNode {
    hold: Duration,
}

#[runnel_engine::async_trait]
impl TaskNode for SlowNode {
    async fn run(self: Box<Self>, ctx: &mut NodeCtx) -> Result<(), NodeError> {
        while let Some(msg) = ctx.recv().await {
            tokio::select! {
                () = tokio::time::sleep(self.hold) => {}
                () = ctx.halted().cancelled() => return Ok(()),
            }
            ctx.send(0, msg).await;
        }
        Ok(())
    }
}

impl NodeType for Slow {
    const TYPE: &'static str = "t-slow";
    const SUMMARY: &'static str = "test slow node";
    type Config = SlowConfig;
    fn build(config: SlowConfig, _: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        Ok(NodeSpec::task(
            true,
            1,
            SlowNode {
                hold: Duration::from_millis(config.hold_ms),
            },
        ))
    }
}

/// Forwards errors.
struct Catch;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CatchConfig {
    #[serde(default)]
    scope: Option<Vec<String>>,
}

struct Forward;

impl SyncNode for Forward {
    fn on_msg(&mut self, msg: Msg, out: &mut Out) -> Result<(), NodeError> {
        out.send(0, msg)
    }
}

impl NodeType for Catch {
    const TYPE: &'static str = "t-catch";
    const SUMMARY: &'static str = "test catch";
    type Config = CatchConfig;
    fn build(config: CatchConfig, _: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        let scope = match config.scope {
            None => CatchScope::All,
            Some(ids) => {
                CatchScope::Nodes(ids.into_iter().map(runnel_engine::NodeId::new).collect())
            }
        };
        let mut spec = NodeSpec::sync(1, Forward).catching(scope);
        spec.has_input = false;
        Ok(spec)
    }
}

fn registry() -> Arc<Registry> {
    let mut registry = Registry::new();
    registry
        .register::<Source>()
        .register::<Step>()
        .register::<Slow>()
        .register::<Catch>()
        .register::<Collect>();
    registry.into_shared()
}

fn engine(settings: EngineSettings) -> Arc<Engine> {
    Engine::new(registry(), EngineShared::new(settings))
}

async fn start(engine: &Engine, name: &str, yaml: &str) {
    let flow = engine
        .loader()
        .load_str(Path::new(&format!("{name}.yaml")), yaml)
        .unwrap_or_else(|d| panic!("flow should load:\n{d}"));
    engine.deploy(flow).await;
}

async fn take(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Msg>, n: usize) -> Vec<Msg> {
    let mut out = Vec::new();
    while out.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("message within 10s (hang guard)")
            .expect("channel open");
        out.push(msg);
    }
    out
}

#[tokio::test]
async fn chain_preserves_order_and_applies_every_step() {
    let mut rx = collect("chain");
    let engine = engine(EngineSettings::default());
    start(
        &engine,
        "chain",
        r#"
nodes:
  - {id: src, type: t-source, count: 500, wires: [[a]]}
  - {id: a, type: t-step, add: 1, wires: [[b]]}
  - {id: b, type: t-step, add: 10, wires: [[c]]}
  - {id: c, type: t-step, add: 100, wires: [[sink]]}
  - {id: sink, type: test-collect, channel: chain}
"#,
    )
    .await;
    let got: Vec<i64> = take(&mut rx, 500)
        .await
        .iter()
        .map(|m| m.payload().as_i64().unwrap())
        .collect();
    assert_eq!(got, (0..500).map(|i| i + 111).collect::<Vec<_>>());
    engine.shutdown().await;
}

#[tokio::test]
async fn fan_out_shares_payload_until_a_branch_writes() {
    let mut rx_a = collect("fan-a");
    let mut rx_b = collect("fan-b");
    let engine = engine(EngineSettings::default());
    start(
        &engine,
        "fan",
        r#"
nodes:
  - {id: src, type: t-source, count: 1, wires: [[left, right]]}
  - {id: left, type: test-collect, channel: fan-a}
  - {id: right, type: t-step, add: 5, wires: [[sink]]}
  - {id: sink, type: test-collect, channel: fan-b}
"#,
    )
    .await;
    let a = take(&mut rx_a, 1).await.remove(0);
    let b = take(&mut rx_b, 1).await.remove(0);
    // Same message id on both branches; the writing branch has its own payload.
    assert_eq!(a.id(), b.id());
    assert_eq!(a.payload().as_i64(), Some(0));
    assert_eq!(b.payload().as_i64(), Some(5));
    engine.shutdown().await;
}

#[tokio::test]
async fn fan_out_does_not_deep_copy() {
    let mut rx_a = collect("nocopy-a");
    let mut rx_b = collect("nocopy-b");
    let engine = engine(EngineSettings::default());
    start(
        &engine,
        "nocopy",
        r#"
nodes:
  - {id: src, type: t-source, count: 1, wires: [[a, b]]}
  - {id: a, type: test-collect, channel: nocopy-a}
  - {id: b, type: test-collect, channel: nocopy-b}
"#,
    )
    .await;
    let a = take(&mut rx_a, 1).await.remove(0);
    let b = take(&mut rx_b, 1).await.remove(0);
    // Both branches point at the same property map: no copy was made.
    assert!(std::ptr::eq(a.props(), b.props()));
    engine.shutdown().await;
}

#[tokio::test]
async fn completion_fires_after_every_branch_finished() {
    OUTCOMES
        .lock()
        .unwrap()
        .retain(|(tag, ..)| tag != "complete");
    let mut rx = collect("complete-slow");
    let engine = engine(EngineSettings::default());
    start(
        &engine,
        "complete",
        r#"
nodes:
  - {id: src, type: t-source, count: 3, outcomes: complete, wires: [[fast, slow]]}
  - {id: fast, type: t-step, add: 0}
  - {id: slow, type: t-slow, hold_ms: 200, wires: [[sink]]}
  - {id: sink, type: test-collect, channel: complete-slow}
"#,
    )
    .await;
    // The fast branch finishes at once; the messages must not finish before the slow branch delivered them.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let early = OUTCOMES
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, ..)| t == "complete")
        .count();
    assert_eq!(early, 0, "finished before the slow branch");
    let got = take(&mut rx, 3).await;
    drop(got);
    tokio::time::timeout(Duration::from_secs(10), async {
        while OUTCOMES
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, ..)| t == "complete")
            .count()
            < 3
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("all three finish");
    engine.shutdown().await;
}

#[tokio::test]
async fn errors_and_panics_reach_catch_and_the_flow_keeps_running() {
    OUTCOMES.lock().unwrap().retain(|(tag, ..)| tag != "errors");
    let mut ok = collect("errors-ok");
    let mut caught = collect("errors-caught");
    let engine = engine(EngineSettings::default());
    start(
        &engine,
        "errors",
        r#"
nodes:
  - {id: src, type: t-source, count: 10, outcomes: errors, wires: [[step]]}
  - {id: step, type: t-step, add: 0, fail_on: 3, panic_on: 6, wires: [[sink]]}
  - {id: sink, type: test-collect, channel: errors-ok}
  - {id: on-error, type: t-catch, wires: [[errors]]}
  - {id: errors, type: test-collect, channel: errors-caught}
"#,
    )
    .await;
    let passed: Vec<i64> = take(&mut ok, 8)
        .await
        .iter()
        .map(|m| m.payload().as_i64().unwrap())
        .collect();
    assert_eq!(passed, vec![0, 1, 2, 4, 5, 7, 8, 9]);
    let errors = take(&mut caught, 2).await;
    let first = errors[0].to_json();
    assert_eq!(first["error"]["message"], "cannot handle 3");
    assert_eq!(first["error"]["source"]["id"], "step");
    assert_eq!(first["error"]["source"]["type"], "t-step");
    assert_eq!(first["payload"], 3, "the message as it was reaches catch");
    let second = errors[1].to_json();
    assert!(
        second["error"]["message"]
            .as_str()
            .unwrap()
            .contains("panicked: boom on 6")
    );
    drop(errors);
    engine.shutdown().await;
    let outcomes = OUTCOMES.lock().unwrap();
    let errored: Vec<usize> = outcomes
        .iter()
        .filter(|(t, _, e)| t == "errors" && *e)
        .map(|(_, i, _)| *i)
        .collect();
    assert_eq!(errored.len(), 2, "{outcomes:?}");
    assert!(errored.contains(&3) && errored.contains(&6));
}

#[tokio::test]
async fn back_pressure_reaches_the_source() {
    let _rx = collect("bp");
    let engine = engine(EngineSettings {
        queue_capacity: 4,
        drain_timeout: Duration::from_millis(500),
        ..EngineSettings::default()
    });
    start(
        &engine,
        "bp",
        r#"
nodes:
  - {id: src, type: t-source, count: 1000, outcomes: bp, wires: [[slow]]}
  - {id: slow, type: t-slow, hold_ms: 100000, wires: [[sink]]}
  - {id: sink, type: test-collect, channel: bp}
"#,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One held by the slow node, four in its queue, one blocked in send: the source waits.
    let sent = SENT_BY_BP_SOURCE.load(Ordering::SeqCst);
    assert!(
        sent <= 6,
        "source should be held back by a full queue, sent {sent}"
    );
    let info = engine.flow("bp").await.unwrap();
    assert!(
        info.in_flight >= 5 && info.in_flight <= 7,
        "in flight {}",
        info.in_flight
    );
    let drain_settings_short =
        tokio::time::timeout(Duration::from_secs(30), engine.shutdown()).await;
    assert!(
        drain_settings_short.is_ok(),
        "shutdown is bounded even with stuck messages"
    );
}

#[tokio::test]
async fn shutdown_drains_in_flight_messages() {
    let mut rx = collect("drain");
    let engine = engine(EngineSettings {
        drain_timeout: Duration::from_secs(10),
        ..EngineSettings::default()
    });
    start(
        &engine,
        "drain",
        r#"
nodes:
  - {id: src, type: t-source, count: 5, wires: [[slow]]}
  - {id: slow, type: t-slow, hold_ms: 100, wires: [[sink]]}
  - {id: sink, type: test-collect, channel: drain}
"#,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    engine.shutdown().await;
    // Every message accepted before shutdown came out.
    let mut count = 0;
    while rx.try_recv().is_ok() {
        count += 1;
    }
    assert_eq!(count, 5);
}

#[tokio::test]
async fn trace_records_each_hop_and_the_finish() {
    let mut rx = collect("trace");
    let engine = engine(EngineSettings::default());
    engine.shared().trace.set_enabled(true);
    start(
        &engine,
        "trace",
        r#"
nodes:
  - {id: src, type: t-source, count: 1, wires: [[a]]}
  - {id: a, type: t-step, add: 1, wires: [[sink]]}
  - {id: sink, type: test-collect, channel: trace}
"#,
    )
    .await;
    let msg = take(&mut rx, 1).await.remove(0);
    let id = msg.id();
    drop(msg);
    engine.shutdown().await;
    let events = engine.shared().trace.events(id);
    let kinds: Vec<String> = events
        .iter()
        .map(|e| {
            let json = serde_json::to_value(e).unwrap();
            format!(
                "{}:{}",
                json["node"].as_str().unwrap_or("-"),
                json["event"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "src:sent",
            "a:received",
            "a:sent",
            "sink:received",
            "-:finished"
        ]
    );
}

async fn deploy(engine: &Engine, name: &str, yaml: &str) -> runnel_engine::DeployReport {
    let flow = engine
        .loader()
        .load_str(Path::new(&format!("{name}.yaml")), yaml)
        .unwrap_or_else(|d| panic!("flow should load:\n{d}"));
    engine.deploy(flow).await
}

async fn wait_in_flight(engine: &Engine, flow: &str, at_least: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while engine.flow(flow).await.map_or(0, |f| f.in_flight) < at_least {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("flow has messages in flight (hang guard)");
}

#[tokio::test]
async fn changed_settings_restart_the_whole_flow_after_draining_it() {
    let mut rx = collect("redeploy");
    let engine = engine(EngineSettings::default());
    let flow = |add: i64, capacity: usize| {
        format!(
            r#"
settings: {{queue_capacity: {capacity}}}
nodes:
  - {{id: src, type: t-source, count: 3, wires: [[slow]]}}
  - {{id: slow, type: t-slow, hold_ms: 50, wires: [[step]]}}
  - {{id: step, type: t-step, add: {add}, wires: [[sink]]}}
  - {{id: sink, type: test-collect, channel: redeploy}}
"#
        )
    };
    start(&engine, "re", &flow(100, 16)).await;
    // Redeploy while the old flow's three messages are still in flight.
    wait_in_flight(&engine, "re", 3).await;
    let report = deploy(&engine, "re", &flow(200, 32)).await;
    assert!(report.full, "{report:?}");
    let got: Vec<i64> = take(&mut rx, 6)
        .await
        .iter()
        .map(|m| m.payload().as_i64().unwrap())
        .collect();
    assert_eq!(
        &got[..3],
        &[100, 101, 102],
        "old flow drained before the new one started"
    );
    assert_eq!(&got[3..], &[200, 201, 202]);
    assert_eq!(engine.flow_ids().await.len(), 1);
    engine.shutdown().await;
}

#[tokio::test]
async fn a_changed_node_is_replaced_while_the_rest_keeps_running() {
    let mut rx = collect("partial");
    let engine = engine(EngineSettings::default());
    let count = 60;
    let flow = |add: i64| {
        format!(
            r#"
nodes:
  - {{id: src, type: t-source, count: {count}, wires: [[slow]]}}
  - {{id: slow, type: t-slow, hold_ms: 5, wires: [[step]]}}
  - {{id: step, type: t-step, add: {add}, wires: [[tail]]}}
  - {{id: tail, type: t-slow, hold_ms: 0, wires: [[sink]]}}
  - {{id: sink, type: test-collect, channel: partial}}
"#
        )
    };
    start(&engine, "partial", &flow(1000)).await;
    let before = take(&mut rx, 10).await;
    let report = deploy(&engine, "partial", &flow(2000)).await;
    assert!(!report.full, "{report:?}");
    // `step` changed; `slow` restarts with it (the sync node `step` runs
    // fused into `slow`'s task). `tail` keeps its queue and keeps running.
    assert_eq!(report.started, ["slow", "step"], "{report:?}");
    assert_eq!(report.kept, ["src", "tail", "sink"], "{report:?}");
    assert!(report.removed.is_empty(), "{report:?}");

    let mut got: Vec<i64> = before
        .iter()
        .map(|m| m.payload().as_i64().unwrap())
        .collect();
    got.extend(
        take(&mut rx, count - 10)
            .await
            .iter()
            .map(|m| m.payload().as_i64().unwrap()),
    );
    // A restarted source would start again at 0: every index exactly once
    // means it kept running, and nothing queued for `slow` was lost.
    let mut indexes: Vec<i64> = got.iter().map(|p| p % 1000).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..count as i64).collect::<Vec<_>>(), "{got:?}");
    // In order, old config first, then the new one, with one switch.
    let switch = got.iter().position(|&p| p >= 2000).expect("new step ran");
    assert!(switch >= 10, "{got:?}");
    assert!(
        got[..switch].iter().all(|&p| (1000..2000).contains(&p)),
        "{got:?}"
    );
    assert!(got[switch..].iter().all(|&p| p >= 2000), "{got:?}");
    assert!(got.windows(2).all(|w| w[0] % 1000 < w[1] % 1000), "{got:?}");
    // Kept nodes' counters carry on.
    let info = engine.flow("partial").await.unwrap();
    for kept in ["src", "tail"] {
        let node = info.nodes.iter().find(|n| n.id == kept).unwrap();
        assert_eq!(node.counters.sent, count as u64, "{kept}");
    }
    engine.shutdown().await;
}

#[tokio::test]
async fn a_removed_node_finishes_its_queue_before_it_stops() {
    let mut rx = collect("removed");
    let engine = engine(EngineSettings::default());
    let before = r#"
nodes:
  - {id: src, type: t-source, count: 8, wires: [[slow]]}
  - {id: slow, type: t-slow, hold_ms: 30, wires: [[sink]]}
  - {id: sink, type: test-collect, channel: removed}
"#;
    let after = r#"
nodes:
  - {id: src, type: t-source, count: 8, wires: [[step]]}
  - {id: step, type: t-step, add: 100, wires: [[sink]]}
  - {id: sink, type: test-collect, channel: removed}
"#;
    start(&engine, "removed", before).await;
    // All eight are queued at `slow` (or in it) when the redeploy starts.
    wait_in_flight(&engine, "removed", 8).await;
    let report = deploy(&engine, "removed", after).await;
    assert!(!report.full, "{report:?}");
    assert_eq!(report.removed, ["slow"], "{report:?}");
    assert_eq!(report.started, ["src", "step", "sink"], "{report:?}");
    let got: Vec<i64> = take(&mut rx, 16)
        .await
        .iter()
        .map(|m| m.payload().as_i64().unwrap())
        .collect();
    // The removed node delivered everything it had queued, then the new
    // source started (a new instance counts from 0 again).
    assert_eq!(&got[..8], &[0, 1, 2, 3, 4, 5, 6, 7], "{got:?}");
    assert_eq!(&got[8..], &[100, 101, 102, 103, 104, 105, 106, 107]);
    assert_eq!(engine.flow("removed").await.unwrap().in_flight, 0);
    engine.shutdown().await;
}

#[tokio::test]
async fn an_unchanged_redeploy_restarts_nothing() {
    let engine = engine(EngineSettings::default());
    let yaml = r#"
nodes:
  - {id: src, type: t-source, count: 1, wires: [[step]]}
  - {id: step, type: t-step, add: 1, wires: [[sink]]}
  - {id: sink, type: test-collect, channel: unchanged}
"#;
    let _rx = collect("unchanged");
    start(&engine, "unchanged", yaml).await;
    let report = deploy(&engine, "unchanged", &format!("# a comment\n{yaml}")).await;
    assert!(!report.full);
    assert!(report.started.is_empty(), "{report:?}");
    assert_eq!(report.kept, ["src", "step", "sink"]);
    engine.shutdown().await;
}

#[test]
fn prop_path_is_parsed_once() {
    // Guard the hot path's assumption: paths are validated at load time.
    assert!(PropPath::parse("payload[0].d.location").is_ok());
}
