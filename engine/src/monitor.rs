//! What the engine shows about running nodes: counters, status and the debug
//! bus. The editor, `/metrics` and `runnel run` read these; nodes write them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use crate::ids::{FlowId, MsgId, NodeId};
use crate::msg::Msg;

/// Upper bounds, in seconds, of the buckets of [`NodeMonitor::busy_histogram`]
/// (a last, unbounded bucket follows).
pub const BUSY_BUCKETS_SECONDS: [f64; 11] = [
    0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1,
];

/// A snapshot of the time a node spent per message.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BusyHistogram {
    /// Per bucket of [`BUSY_BUCKETS_SECONDS`] plus the unbounded one: how
    /// many messages took at most that long (not cumulative).
    pub counts: Vec<u64>,
    /// Total time, in nanoseconds.
    pub sum_nanos: u64,
}

/// A node's status, as Node-RED shows under a node: a coloured dot or ring and
/// a short text ("connected", "3 errors").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// `green`, `yellow`, `red`, `blue` or `grey`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fill: Option<&'static str>,
    /// `dot` or `ring`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<&'static str>,
    /// The text.
    pub text: String,
}

impl NodeStatus {
    /// A green dot: working/connected.
    pub fn ok(text: impl Into<String>) -> Self {
        NodeStatus {
            fill: Some("green"),
            shape: Some("dot"),
            text: text.into(),
        }
    }

    /// A yellow ring: connecting, waiting.
    pub fn pending(text: impl Into<String>) -> Self {
        NodeStatus {
            fill: Some("yellow"),
            shape: Some("ring"),
            text: text.into(),
        }
    }

    /// A red ring: disconnected, failing.
    pub fn error(text: impl Into<String>) -> Self {
        NodeStatus {
            fill: Some("red"),
            shape: Some("ring"),
            text: text.into(),
        }
    }
}

/// Live counters and status of one node.
#[derive(Debug)]
pub struct NodeMonitor {
    flow: FlowId,
    node: NodeId,
    type_name: &'static str,
    received: AtomicU64,
    sent: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    busy_nanos: AtomicU64,
    busy_buckets: [AtomicU64; BUSY_BUCKETS_SECONDS.len() + 1],
    queue: OnceLock<mpsc::WeakSender<Msg>>,
    status: Mutex<NodeStatus>,
    status_bus: broadcast::Sender<StatusEvent>,
}

/// A status change, for live readers.
#[derive(Clone, Debug, Serialize)]
pub struct StatusEvent {
    /// The flow.
    pub flow: FlowId,
    /// The node.
    pub node: NodeId,
    /// The new status.
    pub status: NodeStatus,
}

/// A snapshot of a node's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeCounters {
    /// Messages received.
    pub received: u64,
    /// Messages sent (per port send).
    pub sent: u64,
    /// Errors.
    pub errors: u64,
    /// Messages dropped by a full queue with the drop policy, or by the node.
    pub dropped: u64,
    /// Time spent handling messages, in nanoseconds (sync nodes).
    pub busy_nanos: u64,
}

impl NodeMonitor {
    pub(crate) fn new(
        flow: FlowId,
        node: NodeId,
        type_name: &'static str,
        status_bus: broadcast::Sender<StatusEvent>,
    ) -> Arc<Self> {
        Arc::new(NodeMonitor {
            flow,
            node,
            type_name,
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            busy_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            queue: OnceLock::new(),
            status: Mutex::new(NodeStatus::default()),
            status_bus,
        })
    }

    /// A monitor attached to nothing, for tests.
    pub fn detached(node: &str, type_name: &'static str) -> Arc<Self> {
        let (bus, _) = broadcast::channel(1);
        NodeMonitor::new(FlowId::new("test"), NodeId::new(node), type_name, bus)
    }

    /// The node id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The flow.
    pub fn flow(&self) -> &FlowId {
        &self.flow
    }

    /// The node type.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// Sets the status shown under the node.
    pub fn set_status(&self, status: NodeStatus) {
        if let Ok(mut current) = self.status.lock() {
            if *current == status {
                return;
            }
            *current = status.clone();
        }
        // No live reader is fine.
        let _ = self.status_bus.send(StatusEvent {
            flow: self.flow.clone(),
            node: self.node.clone(),
            status,
        });
    }

    /// The current status.
    pub fn status(&self) -> NodeStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Counts a dropped message.
    pub fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn count_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one measured message as `weight` messages that each took
    /// `nanos` (busy time is sampled, one message in `weight`).
    pub(crate) fn add_busy_sampled(&self, nanos: u64, weight: u64) {
        self.busy_nanos
            .fetch_add(nanos.saturating_mul(weight), Ordering::Relaxed);
        let seconds = nanos as f64 / 1e9;
        let bucket = BUSY_BUCKETS_SECONDS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUSY_BUCKETS_SECONDS.len());
        self.busy_buckets[bucket].fetch_add(weight, Ordering::Relaxed);
    }

    /// The time spent per message so far (sync nodes), by bucket. The
    /// scheduler measures one message in 16 and counts it 16 times, so the
    /// counts are estimates in steps of 16.
    pub fn busy_histogram(&self) -> BusyHistogram {
        BusyHistogram {
            counts: self
                .busy_buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_nanos: self.busy_nanos.load(Ordering::Relaxed),
        }
    }

    /// Remembers the node's input queue, to report its depth. Keeps only a
    /// weak handle, so the queue still closes when the flow stops.
    pub(crate) fn attach_queue(&self, tx: &mpsc::Sender<Msg>) {
        let _ = self.queue.set(tx.downgrade());
    }

    /// Messages waiting in the node's input queue now; `None` for a node
    /// without a queue of its own (sources, nodes fused into their
    /// upstream's task) or a stopped flow.
    pub fn queue_depth(&self) -> Option<usize> {
        let tx = self.queue.get()?.upgrade()?;
        Some(tx.max_capacity() - tx.capacity())
    }

    /// The counters now.
    pub fn counters(&self) -> NodeCounters {
        NodeCounters {
            received: self.received.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            busy_nanos: self.busy_nanos.load(Ordering::Relaxed),
        }
    }
}

/// One debug message, in the seed's `{"time","node","msg"}` shape plus the
/// flow.
#[derive(Clone, Debug, Serialize)]
pub struct DebugEvent {
    /// When the debug node saw the message.
    #[serde(serialize_with = "serialize_millis")]
    pub time: SystemTime,
    /// The debug node's id.
    pub node: NodeId,
    /// The flow.
    pub flow: FlowId,
    /// The message's id, to open its trace.
    #[serde(rename = "msgid")]
    pub msg_id: MsgId,
    /// What was shown: the whole message or one property.
    pub msg: serde_json::Value,
}

fn serialize_millis<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*time))
}

/// The lossy broadcast of debug messages. Publishing never waits: a reader
/// that falls behind loses messages and is told how many.
#[derive(Clone, Debug)]
pub struct DebugBus {
    tx: broadcast::Sender<Arc<DebugEvent>>,
}

impl DebugBus {
    /// A bus keeping up to `capacity` unread events per reader.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        DebugBus { tx }
    }

    /// Publishes an event if anyone listens.
    pub fn publish(&self, event: DebugEvent) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(event));
        }
    }

    /// Whether anyone listens (so a debug node can skip building the event).
    pub fn has_listeners(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// A live feed of debug events.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<DebugEvent>> {
        self.tx.subscribe()
    }
}

impl Default for DebugBus {
    fn default() -> Self {
        DebugBus::new(1024)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn busy_time_is_bucketed_and_queue_depth_read_through_a_weak_handle() {
        let monitor = NodeMonitor::detached("n", "t");
        monitor.add_busy_sampled(500, 1); // 0.5 µs: first bucket
        monitor.add_busy_sampled(2_000_000, 1); // 2 ms: the 5 ms bucket
        monitor.add_busy_sampled(1_000_000_000, 1); // 1 s: the unbounded bucket
        let histogram = monitor.busy_histogram();
        assert_eq!(histogram.counts.len(), BUSY_BUCKETS_SECONDS.len() + 1);
        assert_eq!(histogram.counts[0], 1);
        assert_eq!(histogram.counts[7], 1);
        assert_eq!(histogram.counts[BUSY_BUCKETS_SECONDS.len()], 1);
        assert_eq!(histogram.sum_nanos, 1_002_000_500);
        monitor.add_busy_sampled(3_000, 16); // 3 µs, weighted
        assert_eq!(monitor.busy_histogram().counts[1], 16);
        assert_eq!(monitor.busy_histogram().sum_nanos, 1_002_048_500);

        assert_eq!(monitor.queue_depth(), None);
        let (tx, rx) = mpsc::channel(4);
        monitor.attach_queue(&tx);
        assert_eq!(monitor.queue_depth(), Some(0));
        tx.try_send(Msg::new(crate::Value::Null)).unwrap();
        assert_eq!(monitor.queue_depth(), Some(1));
        drop(tx);
        drop(rx);
        assert_eq!(
            monitor.queue_depth(),
            None,
            "the handle does not keep the queue open"
        );
    }
}
