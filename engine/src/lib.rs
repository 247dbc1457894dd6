//! # runnel-engine
//!
//! The core of runnel, a flow-based dataflow engine in the style of
//! Node-RED: the flow model and its YAML loader, the graph, the scheduler,
//! the message, completion tracking and the trace store. It does no I/O of
//! its own (beyond reading flow files), so all of it can be tested in
//! memory.
//!
//! ## Layout
//! - [`value`], [`path`], [`msg`]: the data. A [`Msg`] is a copy-on-write map
//!   of [`Value`]s with a `_msgid`; fan-out clones are O(1).
//! - [`completion`]: the [`Tracker`] every message carries; the last holder's
//!   drop finishes the message (MQTT acks, drain on shutdown).
//! - [`node`], [`ctx`], [`registry`]: what node types implement
//!   ([`NodeType`], [`SyncNode`], [`TaskNode`], [`ConfigNodeType`]) and what
//!   the engine gives them ([`NodeCtx`], [`BuildCtx`]).
//! - [`yaml`], [`env`], [`loader`], [`diag`]: flow files to validated
//!   [`Flow`]s, with `file:line:column` diagnostics.
//! - [`graph`], [`dispatch`], [`runtime`]: the petgraph graph, chain fusion,
//!   bounded queues with back-pressure, and the [`Engine`] that runs flows.
//! - [`trace`], [`monitor`]: per-hop trace events, counters, status and the
//!   debug bus.
//! - [`schema`]: the JSON Schema of the flow format.
//!
//! ## Dependencies
//! This crate may depend on general-purpose crates only. It must not depend
//! on `runnel-nodes` (node types register themselves with a [`Registry`]) or
//! `runnel-web`.

pub mod completion;
pub mod ctx;
pub mod diag;
pub mod dispatch;
pub mod duration;
pub mod env;
pub mod graph;
pub mod ids;
pub mod loader;
pub mod map;
pub mod monitor;
pub mod msg;
pub mod node;
pub mod path;
pub mod registry;
pub mod runtime;
pub mod schema;
pub mod shared;
pub mod signal;
pub mod testing;
pub mod trace;
pub mod value;
pub mod yaml;

pub use completion::{Outcome, Tracker};
pub use ctx::NodeCtx;
pub use diag::{Diagnostic, Diagnostics, Severity};
pub use dispatch::WhenFull;
pub use duration::Duration;
pub use ids::{FlowId, MsgId, NodeId};
pub use loader::{Flow, FlowNode, Loader};
pub use monitor::{DebugBus, DebugEvent, NodeMonitor, NodeStatus};
pub use msg::Msg;
pub use node::{
    BuildCtx, BuildError, CatchScope, ConfigNodeType, NodeError, NodeImpl, NodeSpec, NodeType, Out,
    Port, SyncNode, TaskNode,
};
pub use path::PropPath;
pub use registry::Registry;
pub use runtime::{DeployReport, Engine, FlowInfo, NodeInfo};
pub use shared::{EngineSettings, EngineShared};
pub use signal::Signal;
pub use trace::{TraceEvent, TraceEventKind, TraceStore, TraceWatch};
pub use value::{Map, Value};

/// Re-exported for `#[async_trait]` on [`TaskNode`] impls.
pub use async_trait::async_trait;
/// Re-exported so node crates derive config schemas with the same version.
pub use schemars;
