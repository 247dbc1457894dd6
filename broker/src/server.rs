//! The accept loop: connection limit, TCP_NODELAY, one task per connection
//! (which does the TLS or WebSocket handshake, if any, then serves MQTT).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use tokio_rustls::TlsAcceptor;

use crate::broker::Shared;
use crate::metrics::add;
use crate::transport;

/// What a listener speaks.
#[derive(Clone)]
pub(crate) enum ListenerKind {
    Tcp,
    Tls(TlsAcceptor),
    WebSocket,
}

/// Accepts until shutdown. An accept error (for example too many open
/// files) is logged and retried after a growing pause, never fatal.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, kind: ListenerKind) {
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
        match &kind {
            ListenerKind::Tcp => {
                shared.tracker.spawn(crate::connection::run(
                    connection_shared,
                    stream,
                    peer,
                    permit,
                ));
            }
            ListenerKind::Tls(acceptor) => {
                let handshake = acceptor.accept(stream);
                shared.tracker.spawn(async move {
                    let timeout = connection_shared.config.connect_timeout;
                    match tokio::time::timeout(timeout, handshake).await {
                        Ok(Ok(tls)) => {
                            crate::connection::run(connection_shared, tls, peer, permit).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "tls handshake failed"),
                        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                    }
                });
            }
            ListenerKind::WebSocket => {
                shared.tracker.spawn(async move {
                    let timeout = connection_shared.config.connect_timeout;
                    match tokio::time::timeout(timeout, transport::accept_websocket(stream)).await {
                        Ok(Ok(ws)) => {
                            crate::connection::run(connection_shared, ws, peer, permit).await
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "websocket handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "websocket handshake timed out"),
                    }
                });
            }
        }
    }
}
