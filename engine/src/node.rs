//! What a node type implements, and what the engine gives it.
//!
//! A node type is a [`NodeType`] (or, for shared connections and servers, a
//! [`ConfigNodeType`]) registered in a [`crate::Registry`]. Its typed config is
//! deserialised from the node's YAML with `deny_unknown_fields`, then
//! [`NodeType::build`] turns it into a [`NodeSpec`]: how many inputs and
//! output ports the node has, and its implementation, one of two kinds
//! (Vector's split, simplified):
//!
//! - [`SyncNode`]: a function of one message, run inline in its upstream's
//!   task when it has a single input wire (chain fusion), so a chain of
//!   `change` nodes costs no queue hop. `extract`, `base64`, `switch`,
//!   `debug` are sync.
//! - [`TaskNode`]: an async task with a [`NodeCtx`] (receive, send, status,
//!   shutdown). Sources (inject, MQTT in, HTTP in), sinks that wait on I/O
//!   (MQTT out) and timers (delay) are tasks.
//!
//! Building must not do I/O: `runnel check` builds every node to validate a
//! flow. Connect in [`TaskNode::run`].

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::ids::{FlowId, NodeId};
use crate::monitor::{DebugBus, NodeMonitor};
use crate::msg::Msg;

/// An output port number, from 0.
pub type Port = usize;

/// A failure inside a node while handling a message. It is logged with the
/// node id, recorded in the trace and delivered to `catch` nodes as
/// `msg.error = {message, source: {id, type}}`; the flow keeps running.
#[derive(Debug)]
pub struct NodeError {
    message: String,
    msg: Option<Box<Msg>>,
}

impl NodeError {
    /// An error with this text.
    pub fn new(message: impl fmt::Display) -> Self {
        NodeError {
            message: message.to_string(),
            msg: None,
        }
    }

    /// Attaches the message as it was when the error happened; `catch` nodes
    /// receive it with `msg.error` added. Without it they receive a message
    /// with the same `_msgid` and no other properties.
    pub fn with_msg(mut self, msg: Msg) -> Self {
        self.msg = Some(Box::new(msg));
        self
    }

    /// The error text.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Takes the attached message out.
    pub fn take_msg(&mut self) -> Option<Msg> {
        self.msg.take().map(|boxed| *boxed)
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NodeError {}

/// Where a [`SyncNode`] puts what it sends.
#[derive(Debug)]
pub struct Out {
    outputs: usize,
    sent: Vec<(Port, Msg)>,
}

impl Out {
    /// A buffer for a node with `outputs` ports.
    pub fn new(outputs: usize) -> Self {
        Out {
            outputs,
            sent: Vec::new(),
        }
    }

    /// Sends `msg` on `port`. A port the node does not have is a bug in the
    /// node, reported as a [`NodeError`].
    pub fn send(&mut self, port: Port, msg: Msg) -> Result<(), NodeError> {
        if port >= self.outputs {
            return Err(NodeError::new(format!(
                "sent on port {port}, but the node has {} output port(s)",
                self.outputs
            ))
            .with_msg(msg));
        }
        self.sent.push((port, msg));
        Ok(())
    }

    /// How many output ports the node has.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Takes what was sent, in order.
    pub fn drain(&mut self) -> std::vec::Drain<'_, (Port, Msg)> {
        self.sent.drain(..)
    }

    /// Whether nothing was sent.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

/// A node that handles one message at a time, synchronously.
pub trait SyncNode: Send + 'static {
    /// Handles one message, sending zero or more messages through `out`.
    /// Dropping `msg` without sending it finishes that branch.
    fn on_msg(&mut self, msg: Msg, out: &mut Out) -> Result<(), NodeError>;
}

/// A node that runs as its own task.
#[async_trait]
pub trait TaskNode: Send + 'static {
    /// Runs until the node is done: a source until
    /// [`NodeCtx::stopping`] fires, a node with an input until
    /// [`NodeCtx::recv`] returns `None`. An `Err` or a panic is logged and
    /// reported; the engine then builds the node again from its config and
    /// restarts it with backoff.
    async fn run(self: Box<Self>, ctx: &mut crate::NodeCtx) -> Result<(), NodeError>;
}

/// A node's implementation.
pub enum NodeImpl {
    /// Inline, one message at a time.
    Sync(Box<dyn SyncNode>),
    /// Its own task.
    Task(Box<dyn TaskNode>),
}

impl fmt::Debug for NodeImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeImpl::Sync(_) => f.write_str("NodeImpl::Sync"),
            NodeImpl::Task(_) => f.write_str("NodeImpl::Task"),
        }
    }
}

/// Which nodes' errors a `catch` node receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatchScope {
    /// Every node in the flow.
    All,
    /// Only these nodes.
    Nodes(Vec<NodeId>),
}

/// A built node: its shape and its implementation.
#[derive(Debug)]
pub struct NodeSpec {
    /// Whether wires may lead into the node.
    pub has_input: bool,
    /// How many output ports it has.
    pub outputs: usize,
    /// The implementation.
    pub imp: NodeImpl,
    /// For `catch`-like nodes: whose errors they receive.
    pub catch: Option<CatchScope>,
}

impl NodeSpec {
    /// A sync node with one input and `outputs` ports.
    pub fn sync(outputs: usize, node: impl SyncNode) -> Self {
        NodeSpec {
            has_input: true,
            outputs,
            imp: NodeImpl::Sync(Box::new(node)),
            catch: None,
        }
    }

    /// A task node.
    pub fn task(has_input: bool, outputs: usize, node: impl TaskNode) -> Self {
        NodeSpec {
            has_input,
            outputs,
            imp: NodeImpl::Task(Box::new(node)),
            catch: None,
        }
    }

    /// Makes the node receive the errors of `scope` (the `catch` node).
    pub fn catching(mut self, scope: CatchScope) -> Self {
        self.catch = Some(scope);
        self
    }
}

/// Why a node could not be built from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    /// The config field at fault, when there is one; the error then points
    /// at that field's line.
    pub field: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl BuildError {
    /// An error about the node as a whole.
    pub fn new(message: impl fmt::Display) -> Self {
        BuildError {
            field: None,
            message: message.to_string(),
        }
    }

    /// An error about one config field.
    pub fn field(field: &str, message: impl fmt::Display) -> Self {
        BuildError {
            field: Some(field.to_string()),
            message: message.to_string(),
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "field \"{field}\": {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for BuildError {}

/// A node type.
pub trait NodeType: 'static {
    /// The `type:` name in flow files.
    const TYPE: &'static str;
    /// One line for `runnel nodes` and the editor.
    const SUMMARY: &'static str;
    /// The typed config (`#[serde(deny_unknown_fields)]`).
    type Config: DeserializeOwned + JsonSchema + Send + 'static;

    /// Builds the node. No I/O here.
    fn build(config: Self::Config, ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError>;
}

/// A config node type: declared once in a flow's `config:` section and
/// referenced by id from nodes (a broker, a database server). Its handle is
/// shared by every node that references it, so one connection serves them
/// all.
pub trait ConfigNodeType: 'static {
    /// The `type:` name in flow files.
    const TYPE: &'static str;
    /// One line for `runnel nodes`.
    const SUMMARY: &'static str;
    /// The typed config.
    type Config: DeserializeOwned + JsonSchema + Send + 'static;
    /// What nodes get when they reference it.
    type Handle: Any + Send + Sync;

    /// Builds the shared handle. No I/O here: connect lazily.
    fn build(config: Self::Config, ctx: &BuildCtx<'_>) -> Result<Arc<Self::Handle>, BuildError>;
}

/// A built config node.
#[derive(Clone)]
pub struct ConfigInstance {
    pub(crate) type_name: &'static str,
    pub(crate) handle: Arc<dyn Any + Send + Sync>,
}

impl fmt::Debug for ConfigInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigInstance")
            .field("type", &self.type_name)
            .finish_non_exhaustive()
    }
}

/// What [`NodeType::build`] may use.
#[derive(Debug)]
pub struct BuildCtx<'a> {
    pub(crate) flow: &'a FlowId,
    pub(crate) node: &'a NodeId,
    pub(crate) configs: &'a HashMap<String, ConfigInstance>,
    pub(crate) data_dir: &'a Path,
    pub(crate) monitor: Arc<NodeMonitor>,
    pub(crate) debug: DebugBus,
}

impl<'a> BuildCtx<'a> {
    /// The flow being built.
    pub fn flow(&self) -> &FlowId {
        self.flow
    }

    /// The node being built.
    pub fn node_id(&self) -> &NodeId {
        self.node
    }

    /// The data directory for state that must survive restarts.
    pub fn data_dir(&self) -> &Path {
        self.data_dir
    }

    /// The node's monitor: counters and status shown by the editor.
    pub fn monitor(&self) -> Arc<NodeMonitor> {
        self.monitor.clone()
    }

    /// The bus `debug` nodes publish to.
    pub fn debug_bus(&self) -> DebugBus {
        self.debug.clone()
    }

    /// The config node `id` of type `C`, referenced from config field
    /// `field` (named in the error when it is missing or of another type).
    pub fn config<C: ConfigNodeType>(
        &self,
        field: &str,
        id: &str,
    ) -> Result<Arc<C::Handle>, BuildError> {
        let Some(instance) = self.configs.get(id) else {
            let mut known: Vec<&str> = self
                .configs
                .iter()
                .filter(|(_, c)| c.type_name == C::TYPE)
                .map(|(k, _)| k.as_str())
                .collect();
            known.sort_unstable();
            let known = if known.is_empty() {
                "none is declared under `config:`".to_string()
            } else {
                format!("declared: {}", known.join(", "))
            };
            return Err(BuildError::field(
                field,
                format!(
                    "no config node \"{id}\", expected the id of a {} config node ({known})",
                    C::TYPE
                ),
            ));
        };
        if instance.type_name != C::TYPE {
            return Err(BuildError::field(
                field,
                format!(
                    "config node \"{id}\" is a {}, expected a {}",
                    instance.type_name,
                    C::TYPE
                ),
            ));
        }
        instance
            .handle
            .clone()
            .downcast::<C::Handle>()
            .map_err(|_| {
                BuildError::field(
                    field,
                    format!("config node \"{id}\" has an unexpected handle type"),
                )
            })
    }
}
