//! Counters, a snapshot a Prometheus exporter can read, and `$SYS` topics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, updated with relaxed atomics (they are statistics, not
/// synchronisation).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) connections_current: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) dropped_qos0_overflow: AtomicU64,
    pub(crate) dropped_offline_overflow: AtomicU64,
    pub(crate) publish_denied: AtomicU64,
    pub(crate) retained_refused: AtomicU64,
    pub(crate) slow_consumers_disconnected: AtomicU64,
    pub(crate) sessions_expired: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
}

pub(crate) fn add(counter: &AtomicU64, value: u64) {
    counter.fetch_add(value, Ordering::Relaxed);
}

impl Metrics {
    pub(crate) fn snapshot(&self, retained: u64, sessions: u64, queued: u64) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            connections_current: get(&self.connections_current),
            connections_total: get(&self.connections_total),
            connections_refused: get(&self.connections_refused),
            messages_received: get(&self.messages_received),
            messages_sent: get(&self.messages_sent),
            bytes_received: get(&self.bytes_received),
            bytes_sent: get(&self.bytes_sent),
            dropped_qos0_overflow: get(&self.dropped_qos0_overflow),
            dropped_offline_overflow: get(&self.dropped_offline_overflow),
            publish_denied: get(&self.publish_denied),
            retained_refused: get(&self.retained_refused),
            slow_consumers_disconnected: get(&self.slow_consumers_disconnected),
            sessions_expired: get(&self.sessions_expired),
            protocol_errors: get(&self.protocol_errors),
            retained_messages: retained,
            sessions,
            queued_messages: queued,
        }
    }
}

/// A point-in-time copy of the broker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Clients connected now (CONNECT accepted).
    pub connections_current: u64,
    /// Clients accepted since start.
    pub connections_total: u64,
    /// Connections closed for the connection limit, a refused CONNACK or a
    /// CONNECT timeout.
    pub connections_refused: u64,
    /// PUBLISH packets received from clients and in-process publishers.
    pub messages_received: u64,
    /// PUBLISH packets delivered to clients and in-process subscribers.
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// QoS 0 deliveries dropped because the subscriber's queue was full.
    pub dropped_qos0_overflow: u64,
    /// QoS 1/2 messages dropped because an offline persistent session's
    /// queue was full.
    pub dropped_offline_overflow: u64,
    /// PUBLISHes refused by the ACL (MQTT 3.1.1 cannot report it).
    pub publish_denied: u64,
    /// Retained messages not stored because `max_retained_messages` were held.
    pub retained_refused: u64,
    /// Subscribers disconnected because a QoS 1/2 delivery waited longer
    /// than `slow_consumer_timeout` for room in their queue.
    pub slow_consumers_disconnected: u64,
    /// Offline persistent sessions discarded by `session_expiry`.
    pub sessions_expired: u64,
    /// Connections closed for a malformed packet or a protocol violation.
    pub protocol_errors: u64,
    pub retained_messages: u64,
    /// Sessions held (connected and offline persistent).
    pub sessions: u64,
    /// Messages waiting in client queues, summed over sessions.
    pub queued_messages: u64,
}

impl MetricsSnapshot {
    /// `(name, value)` pairs: `$SYS/broker/<name>` topics and, with `_`
    /// for `/`, Prometheus metric names.
    pub fn entries(&self) -> [(&'static str, u64); 17] {
        [
            ("clients/connected", self.connections_current),
            ("clients/total", self.connections_total),
            ("clients/refused", self.connections_refused),
            ("messages/received", self.messages_received),
            ("messages/sent", self.messages_sent),
            ("bytes/received", self.bytes_received),
            ("bytes/sent", self.bytes_sent),
            (
                "publish/messages/dropped",
                self.dropped_qos0_overflow + self.dropped_offline_overflow,
            ),
            (
                "publish/messages/dropped_offline",
                self.dropped_offline_overflow,
            ),
            ("publish/denied", self.publish_denied),
            ("retained messages/refused", self.retained_refused),
            ("sessions/expired", self.sessions_expired),
            (
                "clients/slow_disconnected",
                self.slow_consumers_disconnected,
            ),
            ("protocol/errors", self.protocol_errors),
            ("retained messages/count", self.retained_messages),
            ("sessions/count", self.sessions),
            ("store/messages/queued", self.queued_messages),
        ]
    }

    /// Prometheus text exposition format, metric names `runnel_broker_*`.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        for (name, value) in self.entries() {
            let name: String = name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            out.push_str(&format!("runnel_broker_{name} {value}\n"));
        }
        out
    }
}
