//! One client connection: CONNECT handshake, then a read loop and a write
//! loop polled together in one task.
//!
//! The read loop decodes packets and routes PUBLISHes; for QoS 1/2 it waits
//! while a subscriber's queue is full, so a slow subscriber slows its
//! publishers instead of growing memory. The write loop drains the
//! session's queue, encodes a whole batch, then writes and flushes once.
//! Both run in the same task (`select!`), so a client subscribed to its own
//! publishes still makes progress while its read loop waits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit};
use tracing::Instrument;

use crate::broker::Shared;
use crate::codec::{self, CodecError, ConnAck, Connect, ConnectReturnCode, LastWill, Packet};
use crate::inbound::Reader;
use crate::message::Message;
use crate::metrics::add;
use crate::session::{Session, WriteItem};

pub(crate) const MIN_READ_BUFFER: usize = 256;
pub(crate) const MAX_READ_BUFFER: usize = 64 * 1024;

/// Why a connection ended.
#[derive(Debug)]
pub(crate) enum End {
    /// DISCONNECT received: the will is discarded. [MQTT-3.1.2-10]
    Disconnect,
    Closed,
    KeepAliveTimeout,
    Protocol(CodecError),
    ProtocolViolation(&'static str),
    Io(std::io::Error),
    TakenOver,
    Shutdown,
}

/// Serves one client until it disconnects, fails or the broker stops.
/// `permit` (the connection limit) is held until the connection ends.
pub(crate) async fn run<S>(
    shared: Arc<Shared>,
    mut stream: S,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut read_buf = BytesMut::with_capacity(MIN_READ_BUFFER);
    let max_packet = shared.config.max_packet_size;
    // [MQTT-3.1.0-1] the first packet must be CONNECT, within connect_timeout.
    let first = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        first = tokio::time::timeout(
            shared.config.connect_timeout,
            read_packet(&mut stream, &mut read_buf, max_packet),
        ) => first,
    };
    let connect = match first {
        Ok(Ok(Some(Packet::Connect(connect)))) => connect,
        Ok(Err(End::Protocol(CodecError::UnsupportedProtocolLevel(level)))) => {
            // [MQTT-3.1.2-2] answer 0x01 and close.
            tracing::debug!(%peer, level, "unsupported protocol level");
            refuse(
                &shared,
                &mut stream,
                ConnectReturnCode::UnacceptableProtocolVersion,
            )
            .await;
            return;
        }
        Ok(Ok(Some(_))) => {
            tracing::debug!(%peer, "first packet is not connect, closing");
            add(&shared.metrics.protocol_errors, 1);
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(end)) => {
            tracing::debug!(%peer, ?end, "connection failed before connect");
            add(&shared.metrics.protocol_errors, 1);
            return;
        }
        Err(_elapsed) => {
            tracing::debug!(%peer, "connect timeout");
            add(&shared.metrics.connections_refused, 1);
            return;
        }
    };
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        if !connect.clean_session {
            // [MQTT-3.1.3-8] empty id with a persistent session: 0x02.
            refuse(&shared, &mut stream, ConnectReturnCode::IdentifierRejected).await;
            return;
        }
        // [MQTT-3.1.3-6] assign a unique id.
        format!("runnel-{}", shared.next_subscriber_id().0).into()
    } else {
        connect.client_id.as_str().into()
    };
    let code = shared
        .auth
        .authenticate(connect.username.as_deref(), connect.password.as_deref());
    if code != ConnectReturnCode::Accepted {
        tracing::info!(%peer, client_id = %client_id, ?code, "connection refused");
        refuse(&shared, &mut stream, code).await;
        return;
    }
    let span = tracing::debug_span!("connection", client_id = %client_id, %peer);
    // A task of its own: the handshake's state is freed, so an idle
    // connection's task holds only the serving state (docs/broker.md,
    // memory per connection).
    let tracker = shared.tracker.clone();
    tracker.spawn(
        async move {
            serve(shared, stream, read_buf, connect, client_id).await;
            drop(permit);
        }
        .instrument(span),
    );
}

async fn serve<S>(
    shared: Arc<Shared>,
    mut stream: S,
    read_buf: BytesMut,
    connect: Connect,
    client_id: Arc<str>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Connect {
        clean_session,
        keep_alive_secs,
        will,
        username,
        ..
    } = connect;
    let (session, guard, session_present) =
        Box::pin(attach_session(&shared, client_id.clone(), clean_session)).await;
    let kick = session.new_kick_token();
    let mut out = BytesMut::with_capacity(4);
    // [MQTT-3.2.0-1] CONNACK is the first packet from the server;
    // [MQTT-3.2.2-1..3] session present tells if a session was resumed.
    codec::encode(
        &Packet::ConnAck(ConnAck {
            session_present,
            code: ConnectReturnCode::Accepted,
        }),
        &mut out,
    );
    // Flushed explicitly: TLS and WebSocket transports buffer writes.
    let written = async {
        stream.write_all(&out).await?;
        stream.flush().await
    };
    if written.await.is_err() {
        finish(&shared, &session, clean_session, guard);
        return;
    }
    drop(out);
    session.queue.go_online();
    session.set_connected(true);
    add(&shared.metrics.connections_current, 1);
    add(&shared.metrics.connections_total, 1);
    tracing::debug!(clean = clean_session, session_present, "client connected");

    let (mut reader_half, mut writer_half) = tokio::io::split(stream);
    let mut reader = Reader {
        shared: &shared,
        session: &session,
        username: username.as_deref(),
        client_id: &client_id,
    };
    // [MQTT-3.1.2-24] close after 1.5 x keep alive without a packet.
    let keep_alive =
        (keep_alive_secs > 0).then(|| Duration::from_millis(u64::from(keep_alive_secs) * 1500));
    let end = tokio::select! {
        biased;
        _ = kick.cancelled() => End::TakenOver,
        _ = shared.shutdown.cancelled() => End::Shutdown,
        end = reader.run(&mut reader_half, read_buf, keep_alive) => end,
        result = write_loop(&shared, &session, &mut writer_half) => match result {
            Ok(()) => End::Closed,
            Err(error) => End::Io(error),
        },
    };
    match &end {
        End::Disconnect | End::Closed | End::TakenOver | End::Shutdown => {
            tracing::debug!(?end, "client disconnected");
        }
        End::Protocol(error) => {
            add(&shared.metrics.protocol_errors, 1);
            tracing::info!(%error, "closing connection on malformed packet");
        }
        End::ProtocolViolation(reason) => {
            add(&shared.metrics.protocol_errors, 1);
            tracing::info!(reason, "closing connection on protocol violation");
        }
        End::KeepAliveTimeout => tracing::info!("keep alive expired, closing connection"),
        End::Io(error) => tracing::info!(%error, "connection lost"),
    }
    if !matches!(end, End::Disconnect)
        && let Some(will) = will
    {
        // [MQTT-3.1.2-8] publish the will when the connection ends without DISCONNECT.
        Box::pin(publish_will(&shared, username.as_deref(), &client_id, will)).await;
    }
    add_signed(&shared.metrics.connections_current);
    // The session is offline (or gone) before the socket closes, so a
    // client that saw the close never races its own session state.
    finish(&shared, &session, clean_session, guard);
    drop(reader_half);
    drop(writer_half);
}

fn add_signed(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// Ends the connection's use of the session. [MQTT-3.1.2-6] a clean
/// session ends with the connection; [MQTT-3.1.2-4] a persistent one stays.
fn finish(shared: &Shared, session: &Arc<Session>, clean: bool, guard: OwnedMutexGuard<()>) {
    if clean {
        shared.discard_session(session);
    } else {
        session.queue.go_offline();
        session.set_connected(false);
    }
    drop(guard);
}

async fn publish_will(shared: &Shared, username: Option<&str>, client_id: &str, will: LastWill) {
    if will.topic.starts_with('$') || !shared.auth.may_publish(username, client_id, &will.topic) {
        add(&shared.metrics.publish_denied, 1);
        return;
    }
    let message = Arc::new(Message {
        topic: will.topic.into(),
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties: None,
    });
    // A will must not hold a shutting-down broker forever behind a full
    // in-process subscriber.
    let delivered = tokio::time::timeout(shared.config.connect_timeout, shared.publish(message));
    if delivered.await.is_err() {
        tracing::warn!(client_id, "will delivery timed out");
    }
}

/// Takes over or creates the session for `client_id`.
async fn attach_session(
    shared: &Arc<Shared>,
    client_id: Arc<str>,
    clean: bool,
) -> (Arc<Session>, OwnedMutexGuard<()>, bool) {
    loop {
        let existing = shared.sessions().get(&client_id).cloned();
        let Some(existing) = existing else {
            let session = Arc::new(Session::new(
                shared.next_subscriber_id(),
                client_id.clone(),
                shared.config.max_queued_per_client,
                usize::from(shared.config.max_inflight),
            ));
            let Ok(guard) = session.active.clone().try_lock_owned() else {
                continue;
            };
            let mut sessions = shared.sessions();
            if sessions.contains_key(&client_id) {
                continue;
            }
            sessions.insert(client_id.clone(), session.clone());
            return (session, guard, false);
        };
        // [MQTT-3.1.4-2] a second connection with the same id takes over.
        existing.kick();
        let guard = existing.active.clone().lock_owned().await;
        let still_current = shared
            .sessions()
            .get(&client_id)
            .is_some_and(|s| Arc::ptr_eq(s, &existing));
        if !still_current {
            continue;
        }
        if clean {
            drop(guard);
            shared.discard_session(&existing);
            continue;
        }
        return (existing, guard, true);
    }
}

/// Writes a refusing CONNACK and lets the caller close.
/// [MQTT-3.2.2-4] session present is 0 with a non-zero return code.
async fn refuse<S: AsyncWrite + Unpin>(shared: &Shared, stream: &mut S, code: ConnectReturnCode) {
    add(&shared.metrics.connections_refused, 1);
    let mut out = BytesMut::with_capacity(4);
    codec::encode(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            code,
        }),
        &mut out,
    );
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// Reads until one packet is decoded; `Ok(None)` on a clean EOF.
async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max_packet: usize,
) -> Result<Option<Packet>, End> {
    loop {
        if let Some(packet) = codec::decode(buf, max_packet).map_err(End::Protocol)? {
            return Ok(Some(packet));
        }
        if buf.capacity() - buf.len() < 64 {
            buf.reserve(MIN_READ_BUFFER);
        }
        match stream.read_buf(buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(error) => return Err(End::Io(error)),
        }
    }
}

/// Drains the session queue to the socket, one write and flush per batch.
async fn write_loop<W: AsyncWrite + Unpin>(
    shared: &Shared,
    session: &Session,
    stream: &mut W,
) -> std::io::Result<()> {
    let mut items: Vec<WriteItem> = Vec::new();
    let mut out = BytesMut::new();
    loop {
        if !session.queue.take_batch(&mut items) {
            session.queue.wait_readable().await;
            continue;
        }
        let mut published = 0u64;
        for item in items.drain(..) {
            match item {
                WriteItem::Control(packet) => codec::encode(&packet, &mut out),
                WriteItem::Publish {
                    outgoing,
                    packet_id,
                    dup,
                } => {
                    published += 1;
                    codec::encode_publish_parts(
                        &outgoing.message.topic,
                        &outgoing.message.payload,
                        outgoing.qos,
                        outgoing.retain,
                        dup,
                        packet_id,
                        &mut out,
                    );
                }
            }
        }
        add(&shared.metrics.messages_sent, published);
        add(&shared.metrics.bytes_sent, out.len() as u64);
        stream.write_all(&out).await?;
        stream.flush().await?;
        out.clear();
        if out.capacity() > MAX_READ_BUFFER {
            out = BytesMut::new();
        }
        if items.capacity() > 1024 {
            items = Vec::new();
        }
    }
}
