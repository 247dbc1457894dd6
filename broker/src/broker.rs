//! The `Broker` handle, the shared state, and message routing.
//!
//! Lock order (std locks, never held across `.await`): `tree` →
//! `Session::subscriptions` (SUBSCRIBE and restoring a snapshot hold the
//! tree's write lock while recording the filter in the session). Every
//! other lock (`sessions`, `retained`, a session queue) is taken alone.
//! Routing takes `tree` for reading only while collecting targets, then
//! releases it before any delivery `.await`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::codec::QoS;
use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::message::{Delivery, Message, Publish};
use crate::metrics::{Metrics, MetricsSnapshot, add};
use crate::persist;
use crate::retained::RetainedStore;
use crate::server::ListenerKind;
use crate::session::{Outgoing, PushOutcome, Session};
use crate::topic::{
    SubscriberId, Subscription, TopicTree, excluded, parse_filter, validate_topic_name,
};

/// Where a subscription delivers.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Client(Arc<Session>),
    Local(mpsc::Sender<Delivery>),
}

/// State shared by the handle, the accept loops and every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: BrokerConfig,
    pub(crate) auth: Auth,
    pub(crate) metrics: Metrics,
    /// The subscription tree. A std `RwLock`: matching is a short, non-async
    /// walk and runs on both cores at once under the read lock; writes
    /// (SUBSCRIBE/UNSUBSCRIBE) are rare and short.
    pub(crate) tree: RwLock<TopicTree<Target>>,
    /// Sessions by client id. A std `Mutex`, held only for map operations.
    pub(crate) sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    pub(crate) retained: RetainedStore,
    pub(crate) next_id: AtomicU64,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) connection_limit: Arc<Semaphore>,
    local_addrs: Mutex<Vec<SocketAddr>>,
    shutdown_done: tokio::sync::Mutex<bool>,
}

impl Shared {
    pub(crate) fn next_subscriber_id(&self) -> SubscriberId {
        SubscriberId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn tree_read(&self) -> std::sync::RwLockReadGuard<'_, TopicTree<Target>> {
        self.tree
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn tree_write(&self) -> std::sync::RwLockWriteGuard<'_, TopicTree<Target>> {
        self.tree
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn sessions(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores the retained part of a publish and delivers it to every
    /// matching subscription. Returns once every QoS 1/2 delivery is queued.
    pub(crate) async fn publish(&self, message: Arc<Message>) {
        if message.retain
            && !self
                .retained
                .set(&message, self.config.max_retained_messages)
        {
            add(&self.metrics.retained_refused, 1);
            tracing::warn!(topic = %message.topic, "retained message limit reached, not retained");
        }
        let mut targets: Vec<(SubscriberId, QoS, Target)> = Vec::new();
        self.tree_read().for_each_match(&message.topic, |sub| {
            if !excluded(&sub.exclusions, &message.topic) {
                targets.push((sub.id, sub.qos, sub.target.clone()));
            }
        });
        if targets.len() > 1 {
            // [MQTT-3.3.5-1] overlapping subscriptions of one client get one
            // copy at the highest granted QoS.
            targets.sort_unstable_by_key(|(id, qos, _)| (*id, std::cmp::Reverse(*qos)));
            targets.dedup_by_key(|(id, _, _)| *id);
        }
        for (_, granted, target) in targets {
            let qos = message.qos.min(granted);
            // [MQTT-3.3.1-9] forwarded to existing subscribers with retain 0.
            self.deliver(&target, &message, qos, false).await;
        }
    }

    pub(crate) async fn deliver(
        &self,
        target: &Target,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
    ) {
        match target {
            Target::Client(session) => {
                let outgoing = Outgoing {
                    message: message.clone(),
                    qos,
                    retain,
                };
                let metrics = &self.metrics;
                let push = |outgoing| {
                    session.queue.push(
                        outgoing,
                        &metrics.dropped_qos0_overflow,
                        &metrics.dropped_offline_overflow,
                    )
                };
                let outcome = match self.config.slow_consumer_timeout {
                    Some(limit) if qos != QoS::AtMostOnce => {
                        match tokio::time::timeout(limit, push(outgoing.clone())).await {
                            Ok(outcome) => outcome,
                            Err(_elapsed) => {
                                // The subscriber has not made room for `limit`:
                                // disconnect it, as nats-server does with a
                                // slow consumer. Waiting forever could also
                                // deadlock: a client subscribed to its own
                                // QoS 1 publishes stops acknowledging (its read
                                // loop is the one waiting here), so its
                                // inflight window never frees. Once it is
                                // offline the message is queued for its
                                // persistent session or dropped and counted.
                                add(&metrics.slow_consumers_disconnected, 1);
                                tracing::warn!(client_id = %session.client_id, ?limit,
                                    "slow consumer disconnected");
                                session.kick();
                                push(outgoing).await
                            }
                        }
                    }
                    _ => push(outgoing).await,
                };
                if outcome == PushOutcome::Dropped && qos == QoS::AtMostOnce {
                    // The subscriber is behind: give its write loop the CPU
                    // before this publisher reads more. Not back-pressure
                    // (the message is already dropped), just fairness.
                    tokio::task::yield_now().await;
                }
            }
            Target::Local(sender) => {
                let delivery = message.delivery(qos, retain);
                if qos == QoS::AtMostOnce {
                    if let Err(mpsc::error::TrySendError::Full(_)) = sender.try_send(delivery) {
                        add(&self.metrics.dropped_qos0_overflow, 1);
                        return;
                    }
                } else if sender.send(delivery).await.is_err() {
                    return;
                }
                add(&self.metrics.messages_sent, 1);
            }
        }
    }

    /// Removes a session and its subscriptions, releasing waiting publishers.
    pub(crate) fn discard_session(&self, session: &Arc<Session>) {
        {
            let mut sessions = self.sessions();
            if sessions
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                sessions.remove(&session.client_id);
            }
        }
        let filters: Vec<String> = session.subscriptions().drain().map(|(f, _)| f).collect();
        {
            let mut tree = self.tree_write();
            for filter in &filters {
                tree.unsubscribe(filter, session.id);
            }
        }
        session.queue.close();
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let (sessions, queued) = {
            let sessions = self.sessions();
            let queued: usize = sessions.values().map(|s| s.queue.queued_len()).sum();
            (sessions.len(), queued)
        };
        self.metrics
            .snapshot(self.retained.len() as u64, sessions as u64, queued as u64)
    }
}

/// A cloneable handle to a running broker.
///
/// Create it with [`Broker::start`] (binds `config.listen`) or with
/// [`Broker::new`] and [`Broker::serve_tcp`] (tests pass a listener bound
/// to port 0). Flows in the same process use [`Broker::publish`] and
/// [`Broker::subscribe`] without a socket.
#[derive(Debug, Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl Broker {
    /// Builds a broker from a validated configuration and loads persisted
    /// sessions and retained messages from `data_dir`. Must run inside a
    /// tokio runtime (the `$SYS` task is spawned on it); accepts nothing
    /// until [`Broker::serve_tcp`].
    pub fn new(config: BrokerConfig) -> Result<Broker, BrokerError> {
        config.validate()?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| BrokerError::NoRuntime)?;
        let shared = Arc::new(Shared {
            auth: Auth::new(&config),
            metrics: Metrics::default(),
            tree: RwLock::new(TopicTree::new()),
            sessions: Mutex::new(HashMap::new()),
            retained: RetainedStore::default(),
            next_id: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            connection_limit: Arc::new(Semaphore::new(config.max_connections)),
            local_addrs: Mutex::new(Vec::new()),
            shutdown_done: tokio::sync::Mutex::new(false),
            config,
        });
        if let Some(dir) = &shared.config.data_dir {
            persist::load(&shared, dir)?;
        }
        if let (Some(dir), Some(interval)) =
            (&shared.config.data_dir, shared.config.persist_interval)
        {
            let weak = Arc::downgrade(&shared);
            let token = shared.shutdown.clone();
            let dir = dir.clone();
            handle.spawn(
                shared
                    .tracker
                    .track_future(persist_loop(weak, token, dir, interval)),
            );
        }
        if let Some(expiry) = shared.config.session_expiry {
            let weak = Arc::downgrade(&shared);
            let token = shared.shutdown.clone();
            handle.spawn(
                shared
                    .tracker
                    .track_future(expiry_loop(weak, token, expiry)),
            );
        }
        if let Some(interval) = shared.config.sys_interval {
            let weak = Arc::downgrade(&shared);
            let token = shared.shutdown.clone();
            handle.spawn(shared.tracker.track_future(sys_loop(weak, token, interval)));
        }
        Ok(Broker { shared })
    }

    /// [`Broker::new`], then binds `config.listen` (and the TLS and
    /// WebSocket listeners when configured) and serves them.
    pub async fn start(config: BrokerConfig) -> Result<Broker, BrokerError> {
        let listen = config.listen;
        let tls = config.tls.clone();
        let websocket = config.websocket.clone();
        let broker = Broker::new(config)?;
        broker.serve_tcp(TcpListener::bind(listen).await?)?;
        if let Some(tls) = tls {
            broker.serve_tls(
                TcpListener::bind(tls.listen).await?,
                &tls.cert_file,
                &tls.key_file,
            )?;
        }
        if let Some(websocket) = websocket {
            broker.serve_websocket(TcpListener::bind(websocket.listen).await?)?;
        }
        Ok(broker)
    }

    /// Accepts MQTT connections on `listener` until shutdown, in a task on
    /// the current runtime. Returns the listener's address.
    pub fn serve_tcp(&self, listener: TcpListener) -> Result<SocketAddr, BrokerError> {
        self.serve(listener, ListenerKind::Tcp)
    }

    /// Accepts MQTT over TLS on `listener`, with a certificate chain and a
    /// private key read from PEM files.
    pub fn serve_tls(
        &self,
        listener: TcpListener,
        cert_file: &Path,
        key_file: &Path,
    ) -> Result<SocketAddr, BrokerError> {
        let acceptor = crate::transport::tls_acceptor(cert_file, key_file)?;
        self.serve(listener, ListenerKind::Tls(acceptor))
    }

    /// Accepts MQTT over WebSocket (binary frames, subprotocol `mqtt`) on
    /// `listener`, any request path.
    pub fn serve_websocket(&self, listener: TcpListener) -> Result<SocketAddr, BrokerError> {
        self.serve(listener, ListenerKind::WebSocket)
    }

    fn serve(&self, listener: TcpListener, kind: ListenerKind) -> Result<SocketAddr, BrokerError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        let addr = listener.local_addr()?;
        let transport = match kind {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls(_) => "tls",
            ListenerKind::WebSocket => "websocket",
        };
        self.shared
            .local_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(addr);
        let shared = self.shared.clone();
        self.shared
            .tracker
            .spawn(crate::server::accept_loop(shared, listener, kind));
        tracing::info!(%addr, transport, "mqtt listener started");
        Ok(addr)
    }

    /// Address of the first listener (the TCP one with [`Broker::start`]), if any.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared
            .local_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .copied()
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.shared.config
    }

    /// Publishes in-process. Resolves once the message is retained (if
    /// asked) and queued for every matching subscriber; for QoS 1/2 this
    /// waits while a subscriber's queue is full (back-pressure). Not subject
    /// to ACLs: flows are trusted.
    pub async fn publish(&self, publish: Publish) -> Result<(), BrokerError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        validate_topic_name(&publish.topic)?;
        let properties =
            (publish.properties != Default::default()).then(|| Arc::new(publish.properties));
        let message = Arc::new(Message {
            topic: publish.topic.into(),
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties,
        });
        add(&self.shared.metrics.messages_received, 1);
        self.shared.publish(message).await;
        Ok(())
    }

    /// Subscribes in-process. Matching retained messages come first. The
    /// subscription holds at most `max_queued_per_client` deliveries: QoS 0
    /// overflow is dropped and counted, QoS 1/2 publishers wait. Dropping
    /// the subscription unsubscribes.
    pub fn subscribe(&self, filter: &str, qos: QoS) -> Result<LocalSubscription, BrokerError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        let parsed = parse_filter(filter)?;
        let id = self.shared.next_subscriber_id();
        let (sender, receiver) = mpsc::channel(self.shared.config.max_queued_per_client);
        let retained: VecDeque<Delivery> = if parsed.share_group.is_none() {
            self.shared
                .retained
                .matching(filter)
                .iter()
                .map(|m| m.delivery(m.qos.min(qos), true))
                .collect()
        } else {
            VecDeque::new()
        };
        self.shared.tree_write().subscribe(
            filter,
            Subscription {
                id,
                qos,
                target: Target::Local(sender),
                // In-process subscriptions are trusted.
                exclusions: None,
            },
        )?;
        Ok(LocalSubscription {
            id,
            filter: filter.to_owned(),
            retained,
            receiver,
            shared: Arc::downgrade(&self.shared),
        })
    }

    /// Current counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.snapshot()
    }

    /// Graceful shutdown, idempotent: stops accepting, closes every
    /// connection (publishing wills, [MQTT-3.1.2-8]), waits for the
    /// connection tasks, saves persistent sessions and retained messages to
    /// `data_dir`, and ends local subscriptions (`recv` returns `None`).
    pub async fn shutdown(&self) -> Result<(), BrokerError> {
        let mut done = self.shared.shutdown_done.lock().await;
        if *done {
            return Ok(());
        }
        tracing::info!("broker shutting down");
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
        let result = match &self.shared.config.data_dir {
            Some(dir) => persist::save(&self.shared, dir),
            None => Ok(()),
        };
        *self.shared.tree_write() = TopicTree::new();
        let sessions: Vec<Arc<Session>> = self.shared.sessions().drain().map(|(_, s)| s).collect();
        for session in sessions {
            session.queue.close();
        }
        *done = true;
        tracing::info!("broker stopped");
        result
    }
}

/// An in-process subscription. Dropping it unsubscribes.
#[derive(Debug)]
pub struct LocalSubscription {
    id: SubscriberId,
    filter: String,
    retained: VecDeque<Delivery>,
    receiver: mpsc::Receiver<Delivery>,
    shared: Weak<Shared>,
}

impl LocalSubscription {
    /// The next delivery; `None` once the broker has shut down.
    pub async fn recv(&mut self) -> Option<Delivery> {
        if let Some(delivery) = self.retained.pop_front() {
            return Some(delivery);
        }
        self.receiver.recv().await
    }

    /// The filter this subscription was made with.
    pub fn filter(&self) -> &str {
        &self.filter
    }
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.tree_write().unsubscribe(&self.filter, self.id);
        }
    }
}

/// Discards persistent sessions offline for longer than `expiry`.
async fn expiry_loop(shared: Weak<Shared>, token: CancellationToken, expiry: Duration) {
    let period = (expiry / 4).clamp(Duration::from_millis(10), Duration::from_secs(60));
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let expired: Vec<Arc<Session>> = shared
            .sessions()
            .values()
            .filter(|s| s.expired(expiry))
            .cloned()
            .collect();
        for session in expired {
            // A client may be reconnecting right now: only discard a
            // session no connection holds.
            let Ok(_guard) = session.active.clone().try_lock_owned() else {
                continue;
            };
            if !session.expired(expiry) {
                continue;
            }
            tracing::info!(client_id = %session.client_id, "persistent session expired");
            add(&shared.metrics.sessions_expired, 1);
            shared.discard_session(&session);
        }
    }
}

/// Saves a snapshot every `interval`, so a crash loses at most that much.
async fn persist_loop(
    shared: Weak<Shared>,
    token: CancellationToken,
    dir: std::path::PathBuf,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let dir = dir.clone();
        // Serialising and writing may take a while: off the async workers.
        let saved = tokio::task::spawn_blocking(move || persist::save(&shared, &dir)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "periodic snapshot failed"),
            Err(error) => tracing::warn!(%error, "periodic snapshot task failed"),
        }
    }
}

/// Publishes `$SYS/broker/...` statistics as retained messages.
async fn sys_loop(shared: Weak<Shared>, token: CancellationToken, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let snapshot = shared.snapshot();
        for (name, value) in snapshot.entries() {
            let message = Arc::new(Message {
                topic: format!("$SYS/broker/{name}").into(),
                payload: value.to_string().into(),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: None,
            });
            shared.publish(message).await;
        }
    }
}
