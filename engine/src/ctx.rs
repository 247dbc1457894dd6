//! [`NodeCtx`]: what a running [`crate::TaskNode`] talks to.

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{OwnedMutexGuard, mpsc};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::completion::{FlowHub, InFlight, Tracker};
use crate::dispatch::{CatchTargets, Dispatcher, report_error};
use crate::ids::{FlowId, MsgId, NodeId};
use crate::monitor::{DebugBus, NodeMonitor, NodeStatus};
use crate::msg::Msg;
use crate::node::{NodeError, Port};
use crate::signal::Signal;
use crate::trace::{TraceEvent, TraceEventKind};
use crate::value::Value;

/// The running context of a task node.
pub struct NodeCtx {
    pub(crate) monitor: Arc<NodeMonitor>,
    pub(crate) hub: Arc<FlowHub>,
    /// The node's input queue, held for as long as this instance runs (a
    /// replacement on redeploy takes it over, with what is still queued).
    pub(crate) input: Option<OwnedMutexGuard<mpsc::Receiver<Msg>>>,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) outputs: usize,
    pub(crate) catch: CatchTargets,
    pub(crate) stopping: Signal,
    /// Fires when this instance is replaced on a partial redeploy: its
    /// input ends, so it finishes what it holds and returns.
    pub(crate) retire: Signal,
    pub(crate) halt: Signal,
    /// Waiters on `retire` and `halt` for [`NodeCtx::recv`], made at its
    /// first wait and kept: a new pair per wait registered and dropped two
    /// waiters under a mutex every time the queue ran empty.
    pub(crate) waits: Option<Waits>,
    /// Messages this node created and that have not finished.
    pub(crate) origin: Arc<InFlight>,
    pub(crate) data_dir: PathBuf,
    pub(crate) debug: DebugBus,
}

/// Pinned waiters on a node's `retire` and `halt` signals.
pub(crate) type Waits = (
    Pin<Box<WaitForCancellationFutureOwned>>,
    Pin<Box<WaitForCancellationFutureOwned>>,
);

impl fmt::Debug for NodeCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCtx")
            .field("flow", self.hub.flow())
            .field("node", self.monitor.node())
            .finish_non_exhaustive()
    }
}

impl NodeCtx {
    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        self.monitor.node()
    }

    /// This node's flow.
    pub fn flow(&self) -> &FlowId {
        self.hub.flow()
    }

    /// The data directory for state that must survive restarts.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The node's monitor (counters, status).
    pub fn monitor(&self) -> &Arc<NodeMonitor> {
        &self.monitor
    }

    /// The debug bus.
    pub fn debug_bus(&self) -> &DebugBus {
        &self.debug
    }

    /// The next input message, or `None` when the node should finish: its
    /// upstream is gone, a redeploy replaces it (what is still queued goes
    /// to its replacement), or the flow is stopping after its drain. A node
    /// sends what it holds before returning from `run`.
    pub async fn recv(&mut self) -> Option<Msg> {
        let msg = match self.input.as_mut() {
            // A queued message is taken without building the wake-up
            // futures below (the common case under load); the order is the
            // same as theirs: a retired node takes nothing more.
            Some(input) if !self.retire.is_cancelled() && !input.is_empty() => input.recv().await,
            Some(input) => {
                let (retire, halt) = self.waits.get_or_insert_with(|| {
                    (
                        Box::pin(self.retire.cancelled_owned()),
                        Box::pin(self.halt.cancelled_owned()),
                    )
                });
                tokio::select! {
                    biased;
                    () = retire.as_mut() => None,
                    msg = input.recv() => msg,
                    () = halt.as_mut() => None,
                }
            }
            None => {
                self.halt.cancelled().await;
                None
            }
        }?;
        self.monitor.count_received();
        self.hub.trace.record_with(|| {
            TraceEvent::new(
                self.hub.flow().clone(),
                msg.id(),
                Some(self.monitor.node().clone()),
                TraceEventKind::Received,
            )
        });
        Some(msg)
    }

    /// Sends `msg` on `port`, waiting while a downstream queue is full.
    ///
    /// Once [`NodeCtx::stopping`] has fired, what a source (a node without
    /// an input) sends is dropped, which finishes it with
    /// [`crate::Outcome::abandoned`] set: the flow is draining, and a
    /// message created now could be cut off by the halt. A source that
    /// acknowledges its messages (MQTT) leaves these unacknowledged, for the
    /// broker to deliver again.
    pub async fn send(&mut self, port: Port, msg: Msg) {
        if self.input.is_none() && self.stopping.is_cancelled() {
            msg.tracker().mark_abandoned();
            drop(msg);
            return;
        }
        if port >= self.outputs {
            let error = NodeError::new(format!(
                "sent on port {port}, but the node has {} output port(s)",
                self.outputs
            ));
            self.report_error(error.with_msg(msg));
            return;
        }
        self.dispatcher.emit(port, msg).await;
    }

    /// A new message from this node, counted in flight until it and all
    /// derived from it have finished.
    pub fn new_msg(&self, payload: Value) -> Msg {
        let id = MsgId::next();
        Msg::with_tracker(id, payload, self.tracker(id))
    }

    /// A new message that runs `on_finish` when it and everything derived
    /// from it have finished: the hook for acknowledging a source (MQTT
    /// PUBACK) only once the flow is done with the message.
    pub fn new_tracked_msg(
        &self,
        payload: Value,
        on_finish: impl FnOnce(crate::completion::Outcome) + Send + 'static,
    ) -> Msg {
        let msg = self.new_msg(payload);
        msg.tracker().on_finish(on_finish);
        msg
    }

    /// Reports a failure: logged, counted, traced and delivered to `catch`
    /// nodes. Attach the message with [`NodeError::with_msg`] when there is
    /// one.
    pub fn report_error(&self, mut error: NodeError) {
        let (id, tracker) = match error.take_msg() {
            Some(msg) => {
                let identity = (msg.id(), msg.tracker().clone());
                error = error.with_msg(msg);
                identity
            }
            None => {
                let id = MsgId::next();
                (id, self.tracker(id))
            }
        };
        report_error(&self.hub, &self.monitor, &self.catch, error, (id, tracker));
    }

    fn tracker(&self, id: MsgId) -> Tracker {
        Tracker::with_origin(id, Some(self.hub.clone()), Some(self.origin.clone()))
    }

    /// Sets the status shown under the node in the editor.
    pub fn set_status(&self, status: NodeStatus) {
        self.monitor.set_status(status);
    }

    /// Fires when sources must stop producing (shutdown, or a redeploy that
    /// replaces this node). A source returns from `run` then, or at the
    /// halt if it must stay up to acknowledge what drains.
    pub fn stopping(&self) -> &CancellationToken {
        self.stopping.token()
    }

    /// Whether [`NodeCtx::stopping`] has fired: cheap enough to ask for
    /// every message.
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Fires when the flow stops for good, after the drain: every node
    /// returns from `run`.
    pub fn halted(&self) -> &CancellationToken {
        self.halt.token()
    }
}
