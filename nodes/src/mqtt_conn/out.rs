//! Outgoing publishes between `client.publish` and the broker's ack.
//!
//! rumqttc assigns packet ids inside its event loop, so [`OutState`] keeps
//! the requested publishes in request order and learns each one's id from
//! the `Outgoing::Publish(pkid)` event; PUBACK/PUBCOMP then finish it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use runnel_engine::Msg;
use tokio::sync::OwnedSemaphorePermit;

/// A held outgoing message: dropping it finishes the message (its tracker)
/// and frees its in-flight slot.
pub(super) struct Held {
    pub(super) msg: Option<Msg>,
    pub(super) _permit: OwnedSemaphorePermit,
}

/// Outgoing publishes between `client.publish` and the broker's ack.
#[derive(Default)]
pub(super) struct OutState {
    inner: Mutex<OutInner>,
}

#[derive(Default)]
struct OutInner {
    /// Requested, no packet id seen yet, in request order.
    unassigned: VecDeque<Held>,
    /// Sent with a packet id, waiting for PUBACK/PUBCOMP.
    inflight: HashMap<u16, Held>,
    /// rumqttc's collision slot: the id was still in use, it sends this one
    /// once the old one is acknowledged.
    collided: Option<(u16, Held)>,
}

impl OutState {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutInner> {
        match self.inner.lock() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub(super) fn push(&self, held: Held) {
        self.lock().unassigned.push_back(held);
    }

    pub(super) fn pop_last(&self) -> Option<Held> {
        self.lock().unassigned.pop_back()
    }

    pub(super) fn len(&self) -> usize {
        let inner = self.lock();
        inner.unassigned.len() + inner.inflight.len() + usize::from(inner.collided.is_some())
    }

    /// `Outgoing::Publish(pkid)`: the publish went to the network.
    pub(super) fn sent(&self, pkid: u16) {
        let finished;
        {
            let mut inner = self.lock();
            if pkid == 0 {
                // QoS 0: written, nothing more to wait for.
                finished = inner.unassigned.pop_front();
            } else if inner.collided.as_ref().is_some_and(|(id, _)| *id == pkid)
                && !inner.inflight.contains_key(&pkid)
            {
                if let Some((id, held)) = inner.collided.take() {
                    inner.inflight.insert(id, held);
                }
                finished = None;
            } else if inner.inflight.contains_key(&pkid) {
                // A retransmission after reconnecting: still waiting.
                finished = None;
            } else {
                match inner.unassigned.pop_front() {
                    Some(held) => {
                        inner.inflight.insert(pkid, held);
                    }
                    None => {
                        tracing::warn!(pkid, "publish sent that runnel did not request")
                    }
                }
                finished = None;
            }
        }
        drop(finished);
    }

    /// `Outgoing::AwaitAck(pkid)`: the next publish collided on `pkid`.
    pub(super) fn collided(&self, pkid: u16) {
        let mut inner = self.lock();
        if let Some(held) = inner.unassigned.pop_front() {
            inner.collided = Some((pkid, held));
        }
    }

    /// PUBACK or PUBCOMP: the broker has the message.
    pub(super) fn acknowledged(&self, pkid: u16) {
        let held = self.lock().inflight.remove(&pkid);
        drop(held);
    }

    /// Drops everything held (the connection is gone): the messages finish
    /// unacknowledged by the broker.
    pub(super) fn clear(&self) -> usize {
        let mut inner = self.lock();
        let count = inner.unassigned.len() + inner.inflight.len();
        let taken = (
            std::mem::take(&mut inner.unassigned),
            std::mem::take(&mut inner.inflight),
            inner.collided.take(),
        );
        drop(inner);
        drop(taken);
        count
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    use std::sync::Arc;
    use tokio::sync::Semaphore;

    fn held() -> (Held, runnel_engine::Tracker) {
        let msg = Msg::new(runnel_engine::Value::Null);
        let tracker = msg.tracker().clone();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        (
            Held {
                msg: Some(msg),
                _permit: permit,
            },
            tracker,
        )
    }

    #[test]
    fn out_state_maps_packet_ids_in_request_order() {
        let out = OutState::default();
        let (a, ta) = held();
        let (b, tb) = held();
        let (c, tc) = held();
        out.push(a);
        out.push(b);
        out.push(c);
        out.sent(1);
        out.sent(0); // b was QoS 0: finished once written
        assert_eq!(tb.holders(), 1);
        out.sent(2);
        out.sent(1); // a retransmission of 1 changes nothing
        assert_eq!(out.len(), 2);
        out.acknowledged(2);
        assert_eq!(tc.holders(), 1);
        assert_eq!(ta.holders(), 2);
        out.acknowledged(1);
        assert_eq!(ta.holders(), 1);
        assert_eq!(out.len(), 0);
    }

    #[test]
    fn out_state_follows_collisions() {
        let out = OutState::default();
        let (a, ta) = held();
        let (b, tb) = held();
        out.push(a);
        out.sent(1);
        out.push(b);
        out.collided(1);
        // The broker acks the first 1; rumqttc then sends the collided one.
        out.acknowledged(1);
        assert_eq!(ta.holders(), 1);
        out.sent(1);
        assert_eq!(tb.holders(), 2);
        out.acknowledged(1);
        assert_eq!(tb.holders(), 1);
    }
}
