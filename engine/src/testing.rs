//! Test helpers for node authors: build a node from YAML and run messages
//! through it, or collect what a flow sends into a `test-collect` node.
//! Used by the tests of `runnel-nodes` and the engine; not for production.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;

use crate::ids::{FlowId, NodeId};
use crate::monitor::{DebugBus, NodeMonitor};
use crate::msg::Msg;
use crate::node::{BuildCtx, BuildError, NodeImpl, NodeSpec, NodeType, Out, SyncNode};
use crate::yaml;

/// Builds a node of type `T` from its config YAML (`{}` for none).
pub fn build<T: NodeType>(config_yaml: &str) -> Result<NodeSpec, String> {
    let node = yaml::parse(config_yaml).map_err(|e| e.to_string())?;
    let config: T::Config = yaml::from_node(&node).map_err(|e| e.message)?;
    let flow = FlowId::new("test");
    let id = NodeId::new("under-test");
    let configs = HashMap::new();
    let ctx = BuildCtx {
        flow: &flow,
        node: &id,
        configs: &configs,
        data_dir: Path::new("data"),
        monitor: NodeMonitor::detached("under-test", T::TYPE),
        debug: DebugBus::default(),
    };
    T::build(config, &ctx).map_err(|e: BuildError| e.to_string())
}

/// What a sync node sent, per port, and the errors it returned.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Messages per output port.
    pub ports: Vec<Vec<Msg>>,
    /// Error texts, one per failed message.
    pub errors: Vec<String>,
}

impl Outputs {
    /// Payloads sent on `port`, as JSON.
    pub fn payloads(&self, port: usize) -> Vec<serde_json::Value> {
        self.ports
            .get(port)
            .map(|msgs| msgs.iter().map(|m| m.payload().to_json()).collect())
            .unwrap_or_default()
    }
}

/// Builds a sync node of type `T` and runs `inputs` through it.
pub fn run_sync<T: NodeType>(config_yaml: &str, inputs: Vec<Msg>) -> Result<Outputs, String> {
    let spec = build::<T>(config_yaml)?;
    let NodeImpl::Sync(mut node) = spec.imp else {
        return Err(format!("{} is not a sync node", T::TYPE));
    };
    Ok(run_sync_node(node.as_mut(), spec.outputs, inputs))
}

/// A message whose properties are the fields of `json` (an object; any
/// other value gives a message with a null payload and nothing else).
pub fn msg_from_json(json: serde_json::Value) -> Msg {
    let mut msg = Msg::new(crate::Value::Null);
    if let crate::Value::Object(map) = crate::Value::from(json) {
        for (k, v) in map.iter() {
            msg.props_mut().insert(k.clone(), v.clone());
        }
    }
    msg
}

/// Runs `inputs` through an already built sync node.
pub fn run_sync_node(node: &mut dyn SyncNode, outputs: usize, inputs: Vec<Msg>) -> Outputs {
    let mut result = Outputs {
        ports: vec![Vec::new(); outputs],
        errors: Vec::new(),
    };
    let mut out = Out::new(outputs);
    for msg in inputs {
        if let Err(error) = node.on_msg(msg, &mut out) {
            result.errors.push(error.message().to_string());
        }
        for (port, msg) in out.drain() {
            if let Some(list) = result.ports.get_mut(port) {
                list.push(msg);
            }
        }
    }
    result
}

type Channels = Mutex<HashMap<String, mpsc::UnboundedSender<Msg>>>;

fn channels() -> &'static Channels {
    static CHANNELS: OnceLock<Channels> = OnceLock::new();
    CHANNELS.get_or_init(Default::default)
}

/// Opens the named collection channel that `test-collect` nodes with
/// `channel: NAME` send to. Use a name unique to the test.
pub fn collect(channel: &str) -> mpsc::UnboundedReceiver<Msg> {
    let (tx, rx) = mpsc::unbounded_channel();
    if let Ok(mut map) = channels().lock() {
        map.insert(channel.to_string(), tx);
    }
    rx
}

/// `test-collect`: a sink that hands every message to [`collect`]'s receiver.
#[derive(Debug)]
pub struct Collect;

/// Config of `test-collect`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectConfig {
    /// The channel name given to [`collect`].
    pub channel: String,
}

struct CollectNode {
    tx: Option<mpsc::UnboundedSender<Msg>>,
}

impl SyncNode for CollectNode {
    fn on_msg(&mut self, msg: Msg, _out: &mut Out) -> Result<(), crate::NodeError> {
        // The copy handed out is detached: the message finishes here, at
        // the sink, not when the test gets round to dropping it.
        if let Some(tx) = &self.tx {
            let _ = tx.send(msg.detached());
        }
        Ok(())
    }
}

impl NodeType for Collect {
    const TYPE: &'static str = "test-collect";
    const SUMMARY: &'static str = "Test sink: hands messages to a test's channel.";
    type Config = CollectConfig;

    fn build(config: CollectConfig, _ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        let tx = channels()
            .lock()
            .ok()
            .and_then(|map| map.get(&config.channel).cloned());
        Ok(NodeSpec::sync(0, CollectNode { tx }))
    }
}

/// A shared test registry slot, for tests that need one.
pub type SharedRegistry = Arc<crate::Registry>;
