//! Moving messages between nodes inside one task.
//!
//! Each task of a running flow owns a [`Dispatcher`]: the sync nodes fused
//! into it ("members", run inline) and, per output port of each node, the
//! targets of its wires. A target is either a member of this task (called
//! directly: no queue, no copy) or the bounded queue of another task.
//!
//! Fan-out gives every target but the last a clone of the message (a few
//! reference counts: see [`crate::value`]) and moves it into the last.
//! Delivery to a queue waits while the queue is full (back-pressure), unless
//! the wire's policy is to drop, which is counted. Work inside a task is
//! driven by an explicit stack, not recursion, so long chains cannot
//! overflow the stack.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::completion::{FlowHub, Tracker};
use crate::ids::{MsgId, NodeId};
use crate::monitor::NodeMonitor;
use crate::msg::Msg;
use crate::node::{NodeError, Out, Port, SyncNode};
use crate::signal::Signal;
use crate::trace::{TraceEvent, TraceEventKind};
use crate::value::{Map, Value};

/// What to do when a target's queue is full.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait until there is room: back-pressure reaches the sources.
    #[default]
    Block,
    /// Drop the new message and count it.
    DropNewest,
}

/// A bounded queue into another task.
#[derive(Clone, Debug)]
pub(crate) struct QueueTarget {
    pub(crate) tx: mpsc::Sender<Msg>,
    pub(crate) policy: WhenFull,
    pub(crate) monitor: Arc<NodeMonitor>,
}

impl QueueTarget {
    async fn deliver(&self, msg: Msg, halt: &Signal) {
        match self.policy {
            WhenFull::Block => {
                // A closed queue means the target task has stopped, and a
                // halted flow waits for nobody: either way the message is
                // dropped, which finishes that branch. When there is room
                // (the common case) no wake-up futures are built.
                let msg = match self.tx.try_send(msg) {
                    Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return,
                    Err(mpsc::error::TrySendError::Full(msg)) => msg,
                };
                tokio::select! {
                    _ = self.tx.send(msg) => {}
                    () = halt.cancelled() => {}
                }
            }
            WhenFull::DropNewest => {
                if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(msg) {
                    self.monitor.count_dropped(1);
                }
            }
        }
    }
}

/// Where a wire leads.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// A sync node fused into this task: index into the members.
    Inline(usize),
    /// Another task's queue.
    Queue(QueueTarget),
}

/// The queue of a `catch` node that receives a node's errors.
pub(crate) type CatchTargets = Arc<[QueueTarget]>;

/// One message in this many has its handling time measured.
const BUSY_SAMPLE: u32 = 16;

/// A sync node run inline in this task.
pub(crate) struct Member {
    pub(crate) tick: u32,
    pub(crate) monitor: Arc<NodeMonitor>,
    pub(crate) node: Box<dyn SyncNode>,
    pub(crate) out: Out,
    pub(crate) routes: Vec<Vec<Target>>,
    pub(crate) catch: CatchTargets,
}

/// Who sent a message.
#[derive(Clone, Copy, Debug)]
enum Origin {
    /// The task's own node (a task node, through its `NodeCtx`).
    Root,
    /// A member.
    Member(usize),
}

enum Work {
    Emit(Origin, Port, Msg),
    Deliver(usize, Msg),
}

/// One task's routing: its own node's routes plus its fused members.
pub(crate) struct Dispatcher {
    pub(crate) hub: Arc<FlowHub>,
    pub(crate) halt: Signal,
    pub(crate) root_monitor: Option<Arc<NodeMonitor>>,
    pub(crate) root_routes: Vec<Vec<Target>>,
    pub(crate) members: Vec<Member>,
    stack: Vec<Work>,
}

impl Dispatcher {
    pub(crate) fn new(
        hub: Arc<FlowHub>,
        root_monitor: Option<Arc<NodeMonitor>>,
        root_routes: Vec<Vec<Target>>,
        members: Vec<Member>,
        halt: Signal,
    ) -> Self {
        Dispatcher {
            hub,
            halt,
            root_monitor,
            root_routes,
            members,
            stack: Vec::new(),
        }
    }

    /// Sends `msg` from the task's own node on `port`.
    pub(crate) async fn emit(&mut self, port: Port, msg: Msg) {
        self.stack.push(Work::Emit(Origin::Root, port, msg));
        self.run().await;
    }

    /// Hands `msg` to member `index` (a sync node with its own task).
    pub(crate) async fn deliver(&mut self, index: usize, msg: Msg) {
        self.stack.push(Work::Deliver(index, msg));
        self.run().await;
    }

    async fn run(&mut self) {
        let Dispatcher {
            hub,
            halt,
            root_monitor,
            root_routes,
            members,
            stack,
        } = self;
        while let Some(work) = stack.pop() {
            let (origin, port, msg) = match work {
                Work::Deliver(index, msg) => {
                    if let Some(member) = members.get_mut(index) {
                        invoke(member, index, msg, hub, stack);
                    }
                    continue;
                }
                Work::Emit(origin, port, msg) => (origin, port, msg),
            };
            let (monitor, routes) = match origin {
                Origin::Root => (root_monitor.as_ref(), &*root_routes),
                Origin::Member(i) => match members.get(i) {
                    Some(member) => (Some(&member.monitor), &member.routes),
                    None => continue,
                },
            };
            if let Some(monitor) = monitor {
                monitor.count_sent();
                hub.trace.record_with(|| {
                    TraceEvent::new(
                        hub.flow.clone(),
                        msg.id(),
                        Some(monitor.node().clone()),
                        TraceEventKind::Sent { port },
                    )
                });
            }
            let Some(targets) = routes.get(port) else {
                continue;
            };
            // Queue targets are awaited in wire order; inline targets are
            // queued on the stack in reverse so they run in wire order too.
            let first_inline = stack.len();
            let last = targets.len().saturating_sub(1);
            let mut msg = Some(msg);
            for (k, target) in targets.iter().enumerate() {
                let copy = if k == last { msg.take() } else { msg.clone() };
                let Some(copy) = copy else { break };
                match target {
                    Target::Inline(j) => stack.push(Work::Deliver(*j, copy)),
                    Target::Queue(queue) => queue.deliver(copy, halt).await,
                }
            }
            stack[first_inline..].reverse();
        }
    }
}

/// Runs one sync node on one message and queues what it sent.
fn invoke(member: &mut Member, index: usize, msg: Msg, hub: &FlowHub, stack: &mut Vec<Work>) {
    member.monitor.count_received();
    hub.trace.record_with(|| {
        TraceEvent::new(
            hub.flow.clone(),
            msg.id(),
            Some(member.monitor.node().clone()),
            TraceEventKind::Received,
        )
    });
    let identity = (msg.id(), msg.tracker().clone());
    // Busy time is sampled (one message in BUSY_SAMPLE, scaled up): reading
    // the clock twice per hop would cost more than a small node's work.
    member.tick = member.tick.wrapping_add(1);
    let started = member.tick.is_multiple_of(BUSY_SAMPLE).then(Instant::now);
    let node = &mut member.node;
    let out = &mut member.out;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| node.on_msg(msg, out)));
    if let Some(started) = started {
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        member
            .monitor
            .add_busy_sampled(nanos, u64::from(BUSY_SAMPLE));
    }
    let error = match result {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error),
        Err(panic) => Some(NodeError::new(format!(
            "node panicked: {}",
            panic_text(&*panic)
        ))),
    };
    for (port, msg) in member.out.drain().rev() {
        stack.push(Work::Emit(Origin::Member(index), port, msg));
    }
    if let Some(error) = error {
        report_error(hub, &member.monitor, &member.catch, error, identity);
    }
}

/// The text of a caught panic.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// How many times one message may go round a catch before it is dropped
/// (Node-RED's limit too).
const MAX_CATCH_DEPTH: u64 = 9;

/// Logs a node's error, records it, and hands the message with `msg.error`
/// to the catch nodes that cover this node.
pub(crate) fn report_error(
    hub: &FlowHub,
    monitor: &NodeMonitor,
    catch: &[QueueTarget],
    mut error: NodeError,
    (msg_id, tracker): (MsgId, Tracker),
) {
    monitor.count_error();
    tracker.mark_errored();
    tracing::warn!(
        flow = %hub.flow,
        node = %monitor.node(),
        node_type = monitor.type_name(),
        msgid = %msg_id,
        error = %error.message(),
        "node failed on a message"
    );
    hub.trace.record_with(|| {
        TraceEvent::new(
            hub.flow.clone(),
            msg_id,
            Some(monitor.node().clone()),
            TraceEventKind::Error {
                message: error.message().to_string(),
            },
        )
    });
    if catch.is_empty() {
        return;
    }
    let mut msg = error
        .take_msg()
        .unwrap_or_else(|| Msg::with_tracker(msg_id, Value::Null, tracker));
    let depth = msg
        .props()
        .get("error")
        .and_then(Value::as_object)
        .and_then(|e| e.get("count"))
        .and_then(Value::as_i64)
        .map_or(1, |n| u64::try_from(n).unwrap_or(0) + 1);
    if depth > MAX_CATCH_DEPTH {
        tracing::warn!(node = %monitor.node(), msgid = %msg_id, "error loop through catch cut");
        return;
    }
    msg.props_mut().insert(
        "error".to_string(),
        error_value(error.message(), monitor.node(), monitor.type_name(), depth),
    );
    let last = catch.len() - 1;
    let mut msg = Some(msg);
    for (k, target) in catch.iter().enumerate() {
        let copy = if k == last { msg.take() } else { msg.clone() };
        let Some(copy) = copy else { break };
        // Never wait here: a sync node cannot, and a catch that loops back
        // into a full queue would deadlock. A full catch queue drops and counts.
        if target.tx.try_send(copy).is_err() {
            target.monitor.count_dropped(1);
            tracing::warn!(catch = %target.monitor.node(), "catch queue full, error message dropped");
        }
    }
}

fn error_value(message: &str, node: &NodeId, type_name: &str, count: u64) -> Value {
    let mut source = Map::default();
    source.insert("id".into(), Value::from(node.as_str()));
    source.insert("type".into(), Value::from(type_name));
    let mut error = Map::default();
    error.insert("message".into(), Value::from(message));
    error.insert("source".into(), Value::from(source));
    error.insert("count".into(), Value::from(count));
    Value::from(error)
}
