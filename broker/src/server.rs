//! The accept loop: connection limit, TCP_NODELAY, one task per connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::broker::Shared;
use crate::metrics::add;

/// Accepts until shutdown. An accept error (for example too many open
/// files) is logged and retried after a growing pause, never fatal.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(error) => {
                tracing::warn!(%error, ?backoff, "accept failed");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = shared.connection_limit.clone().try_acquire_owned() else {
            add(&shared.metrics.connections_refused, 1);
            tracing::debug!(%peer, "connection limit reached, closing");
            drop(stream);
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "set_nodelay failed");
        }
        let connection_shared = shared.clone();
        shared.tracker.spawn(crate::connection::run(
            connection_shared,
            stream,
            peer,
            permit,
        ));
    }
}
