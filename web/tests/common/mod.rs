//! Shared by the web crate's tests: tiny node types defined here (the web
//! crate cannot depend on runnel-nodes), a real engine with them, and a real
//! server on a free port.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod router;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::testing::Collect;
use runnel_engine::{
    BuildCtx, BuildError, DebugBus, DebugEvent, Engine, EngineSettings, EngineShared, FlowId, Msg,
    NodeCtx, NodeError, NodeId, NodeSpec, NodeStatus, NodeType, Out, Registry, SyncNode, TaskNode,
    Value,
};
use runnel_web::WebState;
use serde::Deserialize;
use tokio::sync::oneshot;

/// `test-tick`: a source sending `payload` every `every_ms` milliseconds.
#[derive(Debug)]
pub struct Tick;

/// Config of `test-tick`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TickConfig {
    /// What to send.
    pub payload: Value,
    /// How often, in milliseconds (default 10).
    #[serde(default = "default_every")]
    pub every_ms: u64,
    /// How many messages each time (default 1).
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_burst() -> u32 {
    1
}

fn default_every() -> u64 {
    10
}

struct TickNode {
    payload: Value,
    every: Duration,
    burst: u32,
}

#[runnel_engine::async_trait]
impl TaskNode for TickNode {
    async fn run(self: Box<Self>, ctx: &mut NodeCtx) -> Result<(), NodeError> {
        ctx.set_status(NodeStatus::ok("ticking"));
        let mut interval = tokio::time::interval(self.every);
        loop {
            tokio::select! {
                _ = ctx.stopping().cancelled() => return Ok(()),
                _ = interval.tick() => {
                    for _ in 0..self.burst {
                        let msg = ctx.new_msg(self.payload.clone());
                        ctx.send(0, msg).await;
                    }
                }
            }
        }
    }
}

impl NodeType for Tick {
    const TYPE: &'static str = "test-tick";
    const SUMMARY: &'static str = "Test source: sends a payload every few milliseconds.";
    type Config = TickConfig;

    fn build(config: TickConfig, _ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        if config.every_ms == 0 {
            return Err(BuildError::field("every_ms", "must be at least 1"));
        }
        Ok(NodeSpec::task(
            false,
            1,
            TickNode {
                payload: config.payload,
                every: Duration::from_millis(config.every_ms),
                burst: config.burst.max(1),
            },
        ))
    }
}

/// `test-pass`: sends every message on, unchanged.
#[derive(Debug)]
pub struct Pass;

/// Config of `test-pass`: none.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

struct PassNode;

impl SyncNode for PassNode {
    fn on_msg(&mut self, msg: Msg, out: &mut Out) -> Result<(), NodeError> {
        out.send(0, msg)
    }
}

impl NodeType for Pass {
    const TYPE: &'static str = "test-pass";
    const SUMMARY: &'static str = "Test node: passes messages on.";
    type Config = NoConfig;

    fn build(_config: NoConfig, _ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        Ok(NodeSpec::sync(1, PassNode))
    }
}

/// `test-debug`: publishes every message on the debug bus, as `debug` does.
#[derive(Debug)]
pub struct Show;

struct ShowNode {
    node: NodeId,
    flow: FlowId,
    bus: DebugBus,
}

impl SyncNode for ShowNode {
    fn on_msg(&mut self, msg: Msg, _out: &mut Out) -> Result<(), NodeError> {
        if self.bus.has_listeners() {
            self.bus.publish(DebugEvent {
                time: SystemTime::now(),
                node: self.node.clone(),
                flow: self.flow.clone(),
                msg_id: msg.id(),
                msg: msg.to_json(),
            });
        }
        Ok(())
    }
}

impl NodeType for Show {
    const TYPE: &'static str = "test-debug";
    const SUMMARY: &'static str = "Test sink: publishes messages on the debug bus.";
    type Config = NoConfig;

    fn build(_config: NoConfig, ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        Ok(NodeSpec::sync(
            0,
            ShowNode {
                node: ctx.node_id().clone(),
                flow: ctx.flow().clone(),
                bus: ctx.debug_bus(),
            },
        ))
    }
}

/// A flow: tick -> pass -> show, with the payload given.
pub fn tick_flow(payload: &str, every_ms: u64) -> String {
    burst_flow(payload, every_ms, 1)
}

/// A flow: tick (`burst` messages every `every_ms`) -> pass -> show.
pub fn burst_flow(payload: &str, every_ms: u64, burst: u32) -> String {
    let burst = if burst > 1 {
        format!("\n    burst: {burst}")
    } else {
        String::new()
    };
    format!(
        "# a test flow\n\
         description: ticks through a pass node into a debug node\n\
         nodes:\n  \
           - id: tick\n    type: test-tick\n    every_ms: {every_ms}{burst}\n    payload: {payload}\n    wires: [[pass]]\n  \
           - id: pass\n    type: test-pass\n    wires: [[show]]\n  \
           - id: show\n    type: test-debug\n"
    )
}

pub fn registry() -> Arc<Registry> {
    let mut registry = Registry::new();
    registry
        .register::<Tick>()
        .register::<Pass>()
        .register::<Show>()
        .register::<Collect>();
    registry.into_shared()
}

/// A real engine with the test node types, tracing on, running every flow
/// file of `dir`.
pub async fn engine_with_flows(dir: &Path) -> Arc<Engine> {
    let settings = EngineSettings {
        drain_timeout: Duration::from_secs(2),
        data_dir: dir.join("data"),
        ..EngineSettings::default()
    };
    let shared = EngineShared::new(settings);
    shared.trace.set_enabled(true);
    let engine = Engine::new(registry(), shared);
    let flows = engine
        .loader()
        .load_path(dir)
        .unwrap_or_else(|d| panic!("test flows do not load:\n{d}"));
    for flow in flows {
        engine.deploy(flow).await;
    }
    engine
}

/// A flows directory with `files` (name, text) in it.
pub fn flows_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(format!("{name}.yaml")), text).expect("write flow");
    }
    dir
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    pub state: WebState,
    pub flows: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub async fn start(dir: &Path, token: Option<&str>) -> Server {
        let engine = engine_with_flows(dir).await;
        let state = WebState::builder(engine.clone(), vec![dir.to_path_buf()])
            .admin_token(token.map(str::to_string))
            .build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let app = runnel_web::router(state.clone());
        let closing = state.clone();
        let task = tokio::spawn(runnel_web::serve(listener, app, async move {
            let _ = stopped.await;
            closing.begin_shutdown();
        }));
        Server {
            addr,
            engine,
            state,
            flows: dir.to_path_buf(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops within 10 s")
                .expect("server task");
            result.expect("serve returns Ok");
        }
        self.engine.shutdown().await;
    }
}
