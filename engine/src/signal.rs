//! [`Signal`]: a cancellation token whose check is one atomic load.
//!
//! The engine tells tasks to stop (`stopping`), to let go of their queue
//! (`retire`) and to halt through these. Hot loops ask "has it fired?" once
//! per message; `CancellationToken::is_cancelled` takes a mutex for that,
//! which was a measurable share of a fast MQTT pipe's CPU. A `Signal` keeps
//! a flag next to the token: firing sets the flag, then cancels the token,
//! so waiting (`cancelled()`) works as before and checking is a load. A
//! child also sees its ancestors' flags, as a child token sees their
//! cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::{
    CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};

/// A cancellation signal: fire once, wait on it, or check it cheaply.
#[derive(Clone, Debug)]
pub struct Signal {
    token: CancellationToken,
    /// This signal's flag first, then its ancestors'.
    flags: Arc<[Arc<AtomicBool>]>,
}

impl Default for Signal {
    fn default() -> Self {
        Signal::new()
    }
}

impl Signal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Signal {
            token: CancellationToken::new(),
            flags: Arc::new([Arc::new(AtomicBool::new(false))]),
        }
    }

    /// A signal that fires with this one (and can fire alone).
    pub fn child_token(&self) -> Signal {
        let own = Arc::new(AtomicBool::new(false));
        let flags: Vec<Arc<AtomicBool>> = std::iter::once(own)
            .chain(self.flags.iter().cloned())
            .collect();
        Signal {
            token: self.token.child_token(),
            flags: flags.into(),
        }
    }

    /// Fires this signal and its children.
    pub fn cancel(&self) {
        if let Some(own) = self.flags.first() {
            own.store(true, Ordering::Release);
        }
        self.token.cancel();
    }

    /// Whether this signal or an ancestor has fired: a few atomic loads.
    pub fn is_cancelled(&self) -> bool {
        self.flags.iter().any(|flag| flag.load(Ordering::Acquire))
    }

    /// Completes once the signal has fired.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// Completes once the signal has fired; owns what it needs, so a loop
    /// can keep one pinned across its waits instead of registering a new
    /// waiter each time.
    pub fn cancelled_owned(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// The underlying token, for nodes that wait on it.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_see_their_ancestors_fire_and_not_the_reverse() {
        let flow = Signal::new();
        let unit = flow.child_token();
        let other = flow.child_token();
        unit.cancel();
        assert!(unit.is_cancelled() && unit.token().is_cancelled());
        assert!(!flow.is_cancelled() && !other.is_cancelled());
        let grandchild = other.child_token();
        flow.cancel();
        assert!(other.is_cancelled() && grandchild.is_cancelled());
        assert!(grandchild.token().is_cancelled());
    }

    #[tokio::test]
    async fn waiting_ends_when_an_ancestor_fires() {
        let flow = Signal::new();
        let unit = flow.child_token();
        let waiter = tokio::spawn(async move { unit.cancelled().await });
        flow.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the child's wait ends")
            .expect("task");
    }
}
