//! Client sessions: subscriptions, the bounded outbound queue, and QoS 1/2
//! inflight state, which outlive a connection when the session is persistent.
//!
//! Queue policy (documented in `docs/broker.md`): at most
//! `max_queued_per_client` messages wait per session, plus `max_inflight`
//! sent and unacknowledged. When the queue is full, a QoS 0 delivery is
//! dropped and counted; a QoS 1/2 delivery waits for room (the publisher's
//! read loop or in-process `publish` is back-pressured), except for an
//! offline session, where it is dropped, counted and logged, because a
//! client that is gone must not stall every publisher.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::codec::{Packet, QoS};
use crate::message::Message;
use crate::metrics::add;
use crate::topic::{Exclusions, SubscriberId};

/// Responses (acks, SUBACK, PINGRESP) a client may leave unread before its
/// own read loop waits.
const MAX_CONTROL: usize = 256;
/// Messages the writer takes per batch (one socket write).
const MAX_BATCH: usize = 4096;

/// A message waiting for a client.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) message: Arc<Message>,
    /// Delivery QoS: the lower of the publish and the subscription QoS.
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InflightState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    AwaitingAck,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitingComp,
}

#[derive(Debug)]
struct Inflight {
    packet_id: u16,
    outgoing: Outgoing,
    state: InflightState,
}

/// One item the writer encodes.
#[derive(Debug)]
pub(crate) enum WriteItem {
    Control(Packet),
    Publish {
        outgoing: Outgoing,
        packet_id: Option<u16>,
        dup: bool,
    },
}

#[derive(Debug, Default)]
struct QueueState {
    online: bool,
    closed: bool,
    resend: bool,
    control: VecDeque<Packet>,
    messages: VecDeque<Outgoing>,
    inflight: VecDeque<Inflight>,
    next_packet_id: u16,
    /// QoS 2 packet ids received and not yet released ([MQTT-4.3.3-2]).
    incoming_qos2: HashSet<u16>,
}

/// What happened to one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushOutcome {
    Queued,
    Dropped,
    Closed,
}

/// A session's outbound queue. A std `Mutex` guards it because every
/// critical section is a few `VecDeque` operations with no `.await`; an
/// async mutex would cost more than it saves.
#[derive(Debug)]
pub(crate) struct SessionQueue {
    state: Mutex<QueueState>,
    /// Wakes the (single) writer: something to send.
    readable: Notify,
    /// Wakes publishers and the reader waiting for room.
    writable: Notify,
    max_queued: usize,
    max_inflight: usize,
}

impl SessionQueue {
    pub(crate) fn new(max_queued: usize, max_inflight: usize) -> SessionQueue {
        SessionQueue {
            state: Mutex::new(QueueState {
                next_packet_id: 1,
                ..QueueState::default()
            }),
            readable: Notify::new(),
            writable: Notify::new(),
            max_queued,
            max_inflight: max_inflight.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A poisoned lock only means another task panicked mid-update; the
        // state is still structurally valid, so keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a delivery following the queue policy (module docs).
    pub(crate) async fn push(
        &self,
        outgoing: Outgoing,
        dropped_qos0: &AtomicU64,
        dropped_offline: &AtomicU64,
    ) -> PushOutcome {
        if outgoing.qos == QoS::AtMostOnce {
            let mut state = self.lock();
            if state.closed || !state.online {
                // [MQTT-3.1.2-5] QoS 0 need not be stored for offline sessions.
                return PushOutcome::Closed;
            }
            if state.messages.len() >= self.max_queued {
                drop(state);
                add(dropped_qos0, 1);
                return PushOutcome::Dropped;
            }
            state.messages.push_back(outgoing);
            drop(state);
            self.readable.notify_one();
            return PushOutcome::Queued;
        }
        loop {
            let notified = self.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed {
                    return PushOutcome::Closed;
                }
                if state.messages.len() < self.max_queued {
                    state.messages.push_back(outgoing);
                    drop(state);
                    self.readable.notify_one();
                    return PushOutcome::Queued;
                }
                if !state.online {
                    drop(state);
                    add(dropped_offline, 1);
                    tracing::warn!(qos = ?outgoing.qos, topic = %outgoing.message.topic,
                        "offline session queue full, message dropped");
                    return PushOutcome::Dropped;
                }
            }
            notified.await;
        }
    }

    /// Queues a response for the client; waits while `MAX_CONTROL` are unsent.
    pub(crate) async fn push_control(&self, packet: Packet) {
        loop {
            let notified = self.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed || !state.online {
                    return;
                }
                if state.control.len() < MAX_CONTROL {
                    state.control.push_back(packet);
                    drop(state);
                    self.readable.notify_one();
                    return;
                }
            }
            notified.await;
        }
    }

    /// Takes what the writer should send next into `items`: control packets,
    /// inflight resends after a reconnect, then messages while the inflight
    /// window has room. Returns false when there is nothing to send.
    pub(crate) fn take_batch(&self, items: &mut Vec<WriteItem>) -> bool {
        let mut state = self.lock();
        let state = &mut *state;
        if !state.online {
            return false;
        }
        let freed = !state.control.is_empty() || !state.messages.is_empty();
        items.extend(state.control.drain(..).map(WriteItem::Control));
        if state.resend {
            // [MQTT-4.4.0-1] resend unacknowledged PUBLISH (DUP set) and PUBREL.
            state.resend = false;
            for inflight in &state.inflight {
                items.push(match inflight.state {
                    InflightState::AwaitingAck => WriteItem::Publish {
                        outgoing: inflight.outgoing.clone(),
                        packet_id: Some(inflight.packet_id),
                        dup: true,
                    },
                    InflightState::AwaitingComp => {
                        WriteItem::Control(Packet::PubRel(inflight.packet_id))
                    }
                });
            }
        }
        let mut taken = 0;
        while taken < MAX_BATCH {
            let Some(front) = state.messages.front() else {
                break;
            };
            if front.qos == QoS::AtMostOnce {
                if let Some(outgoing) = state.messages.pop_front() {
                    items.push(WriteItem::Publish {
                        outgoing,
                        packet_id: None,
                        dup: false,
                    });
                }
            } else {
                if state.inflight.len() >= self.max_inflight {
                    break;
                }
                let Some(outgoing) = state.messages.pop_front() else {
                    break;
                };
                let packet_id = next_free_packet_id(state);
                state.inflight.push_back(Inflight {
                    packet_id,
                    outgoing: outgoing.clone(),
                    state: InflightState::AwaitingAck,
                });
                items.push(WriteItem::Publish {
                    outgoing,
                    packet_id: Some(packet_id),
                    dup: false,
                });
            }
            taken += 1;
        }
        if freed {
            self.writable.notify_waiters();
        }
        !items.is_empty()
    }

    /// Waits until `take_batch` may have something.
    pub(crate) async fn wait_readable(&self) {
        self.readable.notified().await;
    }

    /// PUBACK from the client. [MQTT-4.3.2-1]
    pub(crate) fn on_puback(&self, packet_id: u16) {
        self.complete(packet_id, InflightState::AwaitingAck, QoS::AtLeastOnce);
    }

    /// PUBREC from the client: answer PUBREL. [MQTT-4.3.3-1]
    pub(crate) fn on_pubrec(&self, packet_id: u16) {
        let mut state = self.lock();
        if let Some(entry) = state.inflight.iter_mut().find(|i| {
            i.packet_id == packet_id
                && i.state == InflightState::AwaitingAck
                && i.outgoing.qos == QoS::ExactlyOnce
        }) {
            entry.state = InflightState::AwaitingComp;
        }
        // PUBREL is sent even for an unknown id so the client can finish.
        state.control.push_back(Packet::PubRel(packet_id));
        drop(state);
        self.readable.notify_one();
    }

    /// PUBCOMP from the client.
    pub(crate) fn on_pubcomp(&self, packet_id: u16) {
        self.complete(packet_id, InflightState::AwaitingComp, QoS::ExactlyOnce);
    }

    fn complete(&self, packet_id: u16, expected: InflightState, qos: QoS) {
        let mut state = self.lock();
        let position = state
            .inflight
            .iter()
            .position(|i| i.packet_id == packet_id && i.state == expected && i.outgoing.qos == qos);
        if let Some(position) = position {
            state.inflight.remove(position);
            let has_waiting = !state.messages.is_empty();
            drop(state);
            if has_waiting {
                self.readable.notify_one();
            }
        }
    }

    /// Records an incoming QoS 2 packet id; false if it is a duplicate
    /// that must not be delivered again. [MQTT-4.3.3-2]
    pub(crate) fn incoming_qos2_first(&self, packet_id: u16) -> bool {
        self.lock().incoming_qos2.insert(packet_id)
    }

    pub(crate) fn incoming_qos2_release(&self, packet_id: u16) {
        self.lock().incoming_qos2.remove(&packet_id);
    }

    /// A connection took the session over.
    pub(crate) fn go_online(&self) {
        let mut state = self.lock();
        state.online = true;
        state.resend = !state.inflight.is_empty();
        state.control.clear();
        drop(state);
        self.readable.notify_one();
    }

    /// The connection ended; the session stays for a later connection.
    pub(crate) fn go_offline(&self) {
        let mut state = self.lock();
        state.online = false;
        state.control.clear();
        drop(state);
        self.writable.notify_waiters();
    }

    /// The session ended: drop everything and release waiting publishers.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.online = false;
        state.control.clear();
        state.messages.clear();
        state.inflight.clear();
        drop(state);
        self.writable.notify_waiters();
    }

    /// Messages not yet acknowledged by the client, inflight first, for
    /// persistence. QoS 2 messages already past PUBREC are left out: the
    /// client has them.
    pub(crate) fn pending(&self) -> Vec<Outgoing> {
        let state = self.lock();
        state
            .inflight
            .iter()
            .filter(|i| i.state == InflightState::AwaitingAck)
            .map(|i| i.outgoing.clone())
            .chain(state.messages.iter().cloned())
            .collect()
    }

    /// Restores messages loaded from disk (no limit: they were within limits when saved).
    pub(crate) fn restore(&self, messages: impl IntoIterator<Item = Outgoing>) {
        self.lock().messages.extend(messages);
    }

    pub(crate) fn queued_len(&self) -> usize {
        let state = self.lock();
        state.messages.len() + state.inflight.len()
    }
}

fn next_free_packet_id(state: &mut QueueState) -> u16 {
    loop {
        let id = state.next_packet_id;
        state.next_packet_id = state.next_packet_id.wrapping_add(1).max(1);
        if !state.inflight.iter().any(|i| i.packet_id == id) {
            return id;
        }
    }
}

/// A client session, persistent or not.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: SubscriberId,
    pub(crate) client_id: Arc<str>,
    pub(crate) queue: SessionQueue,
    /// Filters, granted QoS and ACL exclusions, mirrored in the topic tree.
    pub(crate) subscriptions: Mutex<HashMap<String, (QoS, Exclusions)>>,
    /// Held by the connection using the session; a takeover waits for it.
    pub(crate) active: Arc<tokio::sync::Mutex<()>>,
    /// Cancels the connection using the session (takeover, [MQTT-3.1.4-2]).
    pub(crate) kick: Mutex<CancellationToken>,
    /// When the last connection ended; `None` while connected.
    offline_since: Mutex<Option<std::time::Instant>>,
}

impl Session {
    pub(crate) fn new(
        id: SubscriberId,
        client_id: Arc<str>,
        max_queued: usize,
        max_inflight: usize,
    ) -> Session {
        Session {
            id,
            client_id,
            queue: SessionQueue::new(max_queued, max_inflight),
            subscriptions: Mutex::new(HashMap::new()),
            active: Arc::new(tokio::sync::Mutex::new(())),
            kick: Mutex::new(CancellationToken::new()),
            offline_since: Mutex::new(Some(std::time::Instant::now())),
        }
    }

    /// True if adding `filter` would pass `max` subscriptions (replacing an
    /// existing one never does).
    pub(crate) fn at_subscription_limit(&self, filter: &str, max: usize) -> bool {
        let subscriptions = self.subscriptions();
        subscriptions.len() >= max && !subscriptions.contains_key(filter)
    }

    /// Records that a connection uses the session (`true`) or left it.
    pub(crate) fn set_connected(&self, connected: bool) {
        *self.offline_since.lock().unwrap_or_else(|p| p.into_inner()) =
            (!connected).then(std::time::Instant::now);
    }

    /// True if the session has been offline for longer than `expiry`.
    pub(crate) fn expired(&self, expiry: std::time::Duration) -> bool {
        self.offline_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|since| since.elapsed() > expiry)
    }

    pub(crate) fn subscriptions(&self) -> MutexGuard<'_, HashMap<String, (QoS, Exclusions)>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Installs a fresh kick token for a new connection and returns it.
    pub(crate) fn new_kick_token(&self) -> CancellationToken {
        let token = CancellationToken::new();
        *self.kick.lock().unwrap_or_else(|p| p.into_inner()) = token.clone();
        token
    }

    pub(crate) fn kick(&self) {
        self.kick.lock().unwrap_or_else(|p| p.into_inner()).cancel();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn outgoing(qos: QoS) -> Outgoing {
        Outgoing {
            message: Arc::new(Message {
                topic: "t".into(),
                payload: Bytes::from_static(b"x"),
                qos,
                retain: false,
                properties: None,
            }),
            qos,
            retain: false,
        }
    }

    #[tokio::test]
    async fn qos0_overflow_is_dropped_and_counted() {
        let queue = SessionQueue::new(2, 4);
        queue.go_online();
        let (d0, doff) = (AtomicU64::new(0), AtomicU64::new(0));
        for _ in 0..5 {
            queue.push(outgoing(QoS::AtMostOnce), &d0, &doff).await;
        }
        assert_eq!(queue.queued_len(), 2);
        assert_eq!(d0.into_inner(), 3);
    }

    #[tokio::test]
    async fn qos1_waits_for_room_then_flows() {
        let queue = Arc::new(SessionQueue::new(1, 1));
        queue.go_online();
        let (d0, doff) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        queue.push(outgoing(QoS::AtLeastOnce), &d0, &doff).await;
        let pusher = {
            let (queue, d0, doff) = (queue.clone(), d0.clone(), doff.clone());
            tokio::spawn(async move { queue.push(outgoing(QoS::AtLeastOnce), &d0, &doff).await })
        };
        tokio::task::yield_now().await;
        assert!(!pusher.is_finished());
        let mut items = Vec::new();
        assert!(queue.take_batch(&mut items));
        assert_eq!(pusher.await.unwrap(), PushOutcome::Queued);
        // The inflight window (1) is full: the second message waits.
        items.clear();
        assert!(!queue.take_batch(&mut items));
        queue.on_puback(1);
        assert!(queue.take_batch(&mut items));
        assert_eq!(doff.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn offline_overflow_drops_reliable_messages_with_count() {
        let queue = SessionQueue::new(1, 1);
        let (d0, doff) = (AtomicU64::new(0), AtomicU64::new(0));
        assert_eq!(
            queue.push(outgoing(QoS::AtLeastOnce), &d0, &doff).await,
            PushOutcome::Queued
        );
        assert_eq!(
            queue.push(outgoing(QoS::AtLeastOnce), &d0, &doff).await,
            PushOutcome::Dropped
        );
        assert_eq!(doff.into_inner(), 1);
    }

    #[tokio::test]
    async fn reconnect_resends_inflight_with_dup() {
        let queue = SessionQueue::new(4, 4);
        queue.go_online();
        let (d0, doff) = (AtomicU64::new(0), AtomicU64::new(0));
        queue.push(outgoing(QoS::AtLeastOnce), &d0, &doff).await;
        let mut items = Vec::new();
        queue.take_batch(&mut items);
        queue.go_offline();
        queue.go_online();
        items.clear();
        queue.take_batch(&mut items);
        assert!(matches!(
            items[0],
            WriteItem::Publish {
                dup: true,
                packet_id: Some(1),
                ..
            }
        ));
    }
}
