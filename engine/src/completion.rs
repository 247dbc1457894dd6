//! Completion tracking: knowing when a message and everything derived from it
//! has finished.
//!
//! Every message carries a [`Tracker`]. Clones of a message (fan-out) and
//! messages derived from it ([`crate::Msg::derive`]) share the tracker. When the
//! last holder drops it, the message is finished: every branch was delivered,
//! dropped or failed. The tracker then runs its completion callback (an MQTT
//! acknowledgement, say), records a `finished` trace event and lowers its
//! flow's in-flight count. Riding on `Drop` means no code path can forget it
//! (Vector's `EventFinalizer`, Benthos' transactions).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::ids::{FlowId, MsgId};
use crate::trace::{TraceEvent, TraceEventKind, TraceStore};

/// How a message finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Whether some node failed on this message or one derived from it.
    pub errored: bool,
    /// Whether the message was dropped unprocessed because its source was
    /// stopping (see [`crate::NodeCtx::send`]). A source that acknowledges
    /// what it receives leaves such a message for redelivery.
    pub abandoned: bool,
}

type Callback = Box<dyn FnOnce(Outcome) + Send>;

/// A count of unfinished messages: one per flow (drained on shutdown and
/// redeploy) and one per task (what a source created, drained before that
/// source alone is replaced on a partial redeploy).
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    /// Unfinished messages now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until no message is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn enter(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    fn leave(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// What a flow's trackers report to.
#[derive(Debug)]
pub struct FlowHub {
    pub(crate) flow: FlowId,
    pub(crate) in_flight: InFlight,
    pub(crate) trace: Arc<TraceStore>,
}

impl FlowHub {
    /// A hub for `flow` that records into `trace`.
    pub fn new(flow: FlowId, trace: Arc<TraceStore>) -> Arc<Self> {
        Arc::new(FlowHub {
            flow,
            in_flight: InFlight::default(),
            trace,
        })
    }

    /// The flow's in-flight counter.
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    /// The trace store.
    pub fn trace(&self) -> &Arc<TraceStore> {
        &self.trace
    }

    /// The flow this hub belongs to.
    pub fn flow(&self) -> &FlowId {
        &self.flow
    }
}

/// Shared by a message, its clones and the messages derived from it.
#[derive(Clone)]
pub struct Tracker(Arc<TrackerInner>);

struct TrackerInner {
    root: MsgId,
    hub: Option<Arc<FlowHub>>,
    origin: Option<Arc<InFlight>>,
    errored: AtomicBool,
    abandoned: AtomicBool,
    on_finish: Mutex<Option<Callback>>,
}

impl Tracker {
    /// A tracker that reports to `hub` (counted in flight until finished).
    pub fn new(root: MsgId, hub: Option<Arc<FlowHub>>) -> Self {
        Tracker::with_origin(root, hub, None)
    }

    /// A tracker that is also counted in `origin` (the in-flight count of
    /// the task that created the message) until finished.
    pub fn with_origin(
        root: MsgId,
        hub: Option<Arc<FlowHub>>,
        origin: Option<Arc<InFlight>>,
    ) -> Self {
        if let Some(hub) = &hub {
            hub.in_flight.enter();
        }
        if let Some(origin) = &origin {
            origin.enter();
        }
        Tracker(Arc::new(TrackerInner {
            root,
            hub,
            origin,
            errored: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            on_finish: Mutex::new(None),
        }))
    }

    /// A tracker that reports nowhere: for tests and tools.
    pub fn detached(root: MsgId) -> Self {
        Tracker::new(root, None)
    }

    /// Runs `callback` once the message and all derived from it are finished.
    /// Replaces a callback set earlier.
    pub fn on_finish(&self, callback: impl FnOnce(Outcome) + Send + 'static) {
        if let Ok(mut slot) = self.0.on_finish.lock() {
            *slot = Some(Box::new(callback));
        }
    }

    /// Marks the message as failed somewhere (reported in the [`Outcome`]).
    pub fn mark_errored(&self) {
        self.0.errored.store(true, Ordering::Relaxed);
    }

    /// Marks the message as dropped unprocessed (reported in the
    /// [`Outcome`]).
    pub fn mark_abandoned(&self) {
        self.0.abandoned.store(true, Ordering::Relaxed);
    }

    /// The id of the message this tracker was created for.
    pub fn root(&self) -> MsgId {
        self.0.root
    }

    /// How many holders share this tracker now (for tests and diagnostics).
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("root", &self.0.root)
            .field("holders", &Arc::strong_count(&self.0))
            .finish()
    }
}

impl Drop for TrackerInner {
    fn drop(&mut self) {
        let outcome = Outcome {
            errored: *self.errored.get_mut(),
            abandoned: *self.abandoned.get_mut(),
        };
        let callback = match self.on_finish.get_mut() {
            Ok(slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(callback) = callback {
            callback(outcome);
        }
        if let Some(hub) = &self.hub {
            hub.trace.record_with(|| {
                TraceEvent::new(
                    hub.flow.clone(),
                    self.root,
                    None,
                    TraceEventKind::Finished {
                        errored: outcome.errored,
                    },
                )
            });
            hub.in_flight.leave();
        }
        if let Some(origin) = &self.origin {
            origin.leave();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn finishes_once_when_the_last_holder_drops() {
        let calls = Arc::new(AtomicU32::new(0));
        let tracker = Tracker::detached(MsgId::next());
        let seen = calls.clone();
        tracker.on_finish(move |outcome| {
            assert!(outcome.errored);
            seen.fetch_add(1, Ordering::SeqCst);
        });
        let branches: Vec<Tracker> = (0..3).map(|_| tracker.clone()).collect();
        drop(tracker);
        branches[1].mark_errored();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        drop(branches);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn in_flight_counts_and_wakes_waiters() {
        let hub = FlowHub::new(FlowId::new("f"), Arc::new(TraceStore::new(16, 16)));
        let a = Tracker::new(MsgId::next(), Some(hub.clone()));
        let b = Tracker::new(MsgId::next(), Some(hub.clone()));
        assert_eq!(hub.in_flight().count(), 2);
        let waiter = tokio::spawn({
            let hub = hub.clone();
            async move { hub.in_flight().wait_idle().await }
        });
        drop(a);
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(hub.in_flight().count(), 0);
    }
}
