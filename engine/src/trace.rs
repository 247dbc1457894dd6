//! Message traces: every hop of every message, for `runnel run --trace` and
//! the editor's message view.
//!
//! Nodes never call this module; the scheduler records a [`TraceEvent`] when a
//! node receives a message, sends one on a port, or fails, and the
//! [`crate::Tracker`] records when a message has finished. Recording is gated
//! by a flag, so a flow that nobody traces pays two relaxed atomic loads per
//! hop. The flag is on while the store is [`TraceStore::set_enabled`]
//! (`runnel run --trace` or `--trace-always`) or while someone watches
//! ([`TraceStore::watch`]: the editor's debug socket): recording every hop
//! costs a fast flow about a tenth of its CPU, which a headless pipeline
//! should not pay for traces nobody looks at. Events go to two places:
//! - a bounded in-memory store keyed by `_msgid` (the oldest messages are
//!   forgotten first), which answers "where did message X go";
//! - a lossy broadcast for live readers, which never back-pressures the flow:
//!   a reader that falls behind loses events and is told how many.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::ids::{FlowId, MsgId, NodeId};

/// What happened at a hop.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TraceEventKind {
    /// A node received the message.
    Received,
    /// A node sent the message on an output port.
    Sent {
        /// The output port, from 0.
        port: usize,
    },
    /// A node failed on the message.
    Error {
        /// The error text.
        message: String,
    },
    /// A node created this message from another (`parent`).
    Derived {
        /// The message it was derived from.
        parent: MsgId,
    },
    /// The message and everything derived from it finished.
    Finished {
        /// Whether some node failed on the way.
        errored: bool,
    },
}

/// One hop of one message.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceEvent {
    /// When, as RFC 3339 with microseconds in JSON.
    #[serde(serialize_with = "serialize_time")]
    pub time: SystemTime,
    /// The flow.
    pub flow: FlowId,
    /// The message (`_msgid`).
    #[serde(rename = "msgid")]
    pub msg_id: MsgId,
    /// The node, if the event happened at one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// What happened.
    #[serde(flatten)]
    pub kind: TraceEventKind,
}

impl TraceEvent {
    /// An event stamped now.
    pub fn new(flow: FlowId, msg_id: MsgId, node: Option<NodeId>, kind: TraceEventKind) -> Self {
        TraceEvent {
            time: SystemTime::now(),
            flow,
            msg_id,
            node,
            kind,
        }
    }

    /// The event as one JSON line (no newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn serialize_time<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*time))
}

/// Keeps a [`TraceStore`] recording while it lives.
#[derive(Debug)]
pub struct TraceWatch(Arc<TraceStore>);

impl Drop for TraceWatch {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The bounded trace store plus the live broadcast.
#[derive(Debug)]
pub struct TraceStore {
    /// Recording for good (`set_enabled`).
    always: AtomicBool,
    /// Live [`TraceWatch`] guards: recording while any.
    watchers: AtomicUsize,
    live: broadcast::Sender<Arc<TraceEvent>>,
    inner: Mutex<StoreInner>,
    max_messages: usize,
    max_events_per_message: usize,
}

#[derive(Debug, Default)]
struct StoreInner {
    /// foldhash: every hop hashes a message id here, and SipHash showed in
    /// profiles of the MQTT pipe.
    by_msg: HashMap<MsgId, Vec<TraceEvent>, foldhash::fast::RandomState>,
    order: VecDeque<MsgId>,
}

/// Room for a typical message's hops (received and sent at each node,
/// finished) without growing the vector.
const EVENTS_PER_MESSAGE_HINT: usize = 8;

impl TraceStore {
    /// A store that keeps the last `max_messages` messages' events, at most
    /// `max_events_per_message` each (none with 0: then only live readers
    /// get events). Recording starts disabled.
    pub fn new(max_messages: usize, max_events_per_message: usize) -> Self {
        let (live, _) = broadcast::channel(4096);
        TraceStore {
            always: AtomicBool::new(false),
            watchers: AtomicUsize::new(0),
            live,
            inner: Mutex::new(StoreInner::default()),
            max_messages,
            max_events_per_message: max_events_per_message.max(1),
        }
    }

    /// Turns recording on or off for good (it is also on while watched).
    pub fn set_enabled(&self, enabled: bool) {
        self.always.store(enabled, Ordering::Relaxed);
    }

    /// Records while the returned guard lives (the editor's debug socket
    /// holds one), whatever [`TraceStore::set_enabled`] said.
    pub fn watch(self: &Arc<Self>) -> TraceWatch {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        TraceWatch(self.clone())
    }

    /// Whether recording is on.
    pub fn is_enabled(&self) -> bool {
        self.always.load(Ordering::Relaxed) || self.watchers.load(Ordering::Relaxed) > 0
    }

    /// Records the event `make` builds, if recording is on. The closure keeps
    /// the cost of a disabled store to one atomic load.
    pub fn record_with(&self, make: impl FnOnce() -> TraceEvent) {
        if !self.is_enabled() {
            return;
        }
        self.record(make());
    }

    /// Records an event.
    pub fn record(&self, event: TraceEvent) {
        if self.live.receiver_count() > 0 {
            // A send error only means no live reader right now.
            let _ = self.live.send(Arc::new(event.clone()));
        }
        if self.max_messages == 0 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let inner = &mut *inner;
        let id = event.msg_id;
        match inner.by_msg.get_mut(&id) {
            Some(events) => {
                if events.len() < self.max_events_per_message {
                    events.push(event);
                }
            }
            None => {
                while inner.order.len() >= self.max_messages {
                    match inner.order.pop_front() {
                        Some(old) => {
                            inner.by_msg.remove(&old);
                        }
                        None => break,
                    }
                }
                inner.order.push_back(id);
                let mut events =
                    Vec::with_capacity(EVENTS_PER_MESSAGE_HINT.min(self.max_events_per_message));
                events.push(event);
                inner.by_msg.insert(id, events);
            }
        }
    }

    /// Every stored event of one message, oldest first.
    pub fn events(&self, msg_id: MsgId) -> Vec<TraceEvent> {
        self.inner
            .lock()
            .ok()
            .and_then(|inner| inner.by_msg.get(&msg_id).cloned())
            .unwrap_or_default()
    }

    /// How many messages the store holds now.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .map(|inner| inner.order.len())
            .unwrap_or(0)
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A live feed of events from now on. A slow reader gets
    /// `RecvError::Lagged(n)` and loses `n` events; the flow never waits.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TraceEvent>> {
        self.live.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: MsgId, kind: TraceEventKind) -> TraceEvent {
        TraceEvent::new(FlowId::new("f"), id, Some(NodeId::new("n")), kind)
    }

    #[test]
    fn disabled_store_records_nothing() {
        let store = TraceStore::new(4, 4);
        store.record_with(|| event(MsgId::next(), TraceEventKind::Received));
        assert!(store.is_empty());
    }

    #[test]
    fn a_watched_store_records_until_the_last_watcher_leaves() {
        let store = Arc::new(TraceStore::new(8, 8));
        let (a, b) = (store.watch(), store.watch());
        store.record_with(|| event(MsgId::next(), TraceEventKind::Received));
        assert_eq!(store.len(), 1);
        drop(a);
        store.record_with(|| event(MsgId::next(), TraceEventKind::Received));
        assert_eq!(store.len(), 2);
        drop(b);
        store.record_with(|| event(MsgId::next(), TraceEventKind::Received));
        assert_eq!(store.len(), 2, "nobody watches: nothing recorded");
        store.set_enabled(true);
        store.record_with(|| event(MsgId::next(), TraceEventKind::Received));
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn store_is_bounded_and_forgets_oldest_first() {
        let store = TraceStore::new(2, 3);
        store.set_enabled(true);
        let ids: Vec<MsgId> = (0..3).map(|_| MsgId::next()).collect();
        for id in &ids {
            for _ in 0..5 {
                store.record_with(|| event(*id, TraceEventKind::Received));
            }
        }
        assert_eq!(store.len(), 2);
        assert!(store.events(ids[0]).is_empty());
        assert_eq!(store.events(ids[2]).len(), 3);
    }

    #[test]
    fn events_serialise_as_json_lines() {
        let id = MsgId::next();
        let line = event(id, TraceEventKind::Sent { port: 1 }).to_json_line();
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(parsed["event"], "sent");
        assert_eq!(parsed["port"], 1);
        assert_eq!(parsed["msgid"], id.to_string());
        assert_eq!(parsed["node"], "n");
        assert!(parsed["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
}
