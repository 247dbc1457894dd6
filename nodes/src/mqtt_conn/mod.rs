//! The shared MQTT connection behind an `mqtt-broker` config node.
//!
//! One [`BrokerHandle`] per `mqtt-broker` node. `mqtt-in` nodes declare their
//! subscriptions on it at build time (no I/O); `mqtt-in` and `mqtt-out`
//! nodes take a [`Lease`] when they start running. The first lease starts a
//! driver task that owns rumqttc's `EventLoop`; the last lease dropped stops
//! it (DISCONNECT, then the task ends), so a redeployed flow never leaves a
//! connection behind. A new driver for the same client id first waits for
//! the previous one to finish, so two connections with one client id never
//! overlap (they would kick each other off the broker).
//!
//! At-least-once, both ways:
//! - incoming QoS 1/2 publishes are acknowledged (rumqttc manual acks) only
//!   when every `mqtt-in` copy of the message has finished in its flow
//!   ([`Delivery`]); a delivery dropped unfinished is never acknowledged, so
//!   the broker redelivers it on the next session;
//! - outgoing publishes are held (their `Msg`, hence their tracker) until
//!   the broker acknowledges them (PUBACK, PUBCOMP). rumqttc assigns packet
//!   ids inside its event loop, so [`OutState`] learns them from the
//!   `Outgoing::Publish(pkid)` events, which come in request order.
//!
//! The driver never blocks on anything but the network: subscriptions are
//! pushed straight into the event loop's pending queue, acknowledgements go
//! through a separate task, and deliveries to `mqtt-in` go into unbounded
//! queues (QoS 1/2 are bounded by the broker's in-flight window, QoS 0 is
//! capped and counted when dropped). Blocking there could deadlock a flow
//! that reads and writes through the same connection.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Outgoing, Packet, Publish, QoS, Request, Subscribe, SubscribeFilter, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{Msg, NodeId, NodeMonitor, NodeStatus};

mod backoff;
mod out;
mod topic;

use backoff::Jitter;
use out::{Held, OutState};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
pub(crate) use topic::{check_filter, check_topic, qos_from, topic_matches};

/// A secret string (a password): never shown by `Debug`.
#[derive(Clone, serde::Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// TLS files, read when connecting.
#[derive(Clone, Debug)]
pub(crate) struct TlsFiles {
    pub ca_file: String,
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
}

/// A last will.
#[derive(Clone, Debug)]
pub(crate) struct Will {
    pub topic: String,
    pub payload: String,
    pub qos: QoS,
    pub retain: bool,
}

/// Everything needed to connect; built from the config, no I/O.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub keepalive: Duration,
    pub clean_session: bool,
    pub will: Option<Will>,
    pub tls: Option<TlsFiles>,
    pub max_packet_size: usize,
    pub max_inflight: u16,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub connect_timeout: Duration,
    pub qos0_buffer: usize,
}

/// One incoming publish, as handed to an `mqtt-in` node.
pub(crate) struct Delivery {
    pub publish: Arc<Publish>,
    ack: Option<Arc<AckState>>,
    completed: bool,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.publish.topic)
            .field("pkid", &self.publish.pkid)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Marks this copy as finished in the flow; the broker is acknowledged
    /// once every copy has finished.
    pub fn complete(mut self) {
        self.completed = true;
    }

    /// Whether the broker waits for an acknowledgement (QoS 1/2).
    pub fn needs_ack(&self) -> bool {
        self.ack.is_some()
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let Some(ack) = self.ack.take() else {
            return;
        };
        if !self.completed {
            ack.abandoned.store(true, Ordering::Release);
        }
        if ack.remaining.fetch_sub(1, Ordering::AcqRel) == 1
            && !ack.abandoned.load(Ordering::Acquire)
        {
            let _ = ack
                .tx
                .send(AckCmd::Ack(ack.generation, ack.publish.clone()));
        }
    }
}

struct AckState {
    remaining: AtomicUsize,
    abandoned: AtomicBool,
    generation: u64,
    /// The publish without its payload (acks need only qos and pkid).
    publish: Publish,
    tx: mpsc::UnboundedSender<AckCmd>,
}

/// What the acker task does next.
enum AckCmd {
    /// Acknowledge this publish, received on connection `generation`.
    Ack(u64, Publish),
    /// Every earlier ack is in rumqttc's queue: disconnect after them.
    Disconnect,
}

/// A subscription declared by an `mqtt-in` node.
struct Route {
    node: NodeId,
    filter: String,
    qos: QoS,
    tx: mpsc::UnboundedSender<Delivery>,
    queued: Arc<AtomicUsize>,
    monitor: Arc<NodeMonitor>,
}

/// The receiving side of a subscription, owned by the `mqtt-in` node.
#[derive(Debug)]
pub(crate) struct SubscriptionRx {
    pub rx: mpsc::UnboundedReceiver<Delivery>,
    queued: Arc<AtomicUsize>,
}

impl SubscriptionRx {
    /// The next delivery.
    pub async fn recv(&mut self) -> Option<Delivery> {
        let delivery = self.rx.recv().await?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(delivery)
    }
}

/// The shared handle of an `mqtt-broker` node.
pub struct BrokerHandle {
    settings: Settings,
    monitor: Arc<NodeMonitor>,
    routes: Arc<Mutex<Vec<Route>>>,
    routes_version: Arc<AtomicU64>,
    live: Mutex<Weak<Connection>>,
    /// Set for `embedded:`: the nodes talk to this in-process broker
    /// instead of opening a connection (see `mqtt_embedded`).
    embedded: Option<Arc<crate::mqtt_embedded::EmbeddedBroker>>,
}

impl fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerHandle")
            .field("host", &self.settings.host)
            .field("port", &self.settings.port)
            .field("client_id", &self.settings.client_id)
            .finish_non_exhaustive()
    }
}

impl BrokerHandle {
    pub(crate) fn new(settings: Settings, monitor: Arc<NodeMonitor>) -> Self {
        BrokerHandle {
            settings,
            monitor,
            routes: Arc::default(),
            routes_version: Arc::default(),
            live: Mutex::new(Weak::new()),
            embedded: None,
        }
    }

    /// A handle whose nodes use the in-process broker `embedded`.
    pub(crate) fn with_embedded(
        mut self,
        embedded: Arc<crate::mqtt_embedded::EmbeddedBroker>,
    ) -> Self {
        self.embedded = Some(embedded);
        self
    }

    /// The in-process broker, when the config node has `embedded:`.
    pub(crate) fn embedded(&self) -> Option<&Arc<crate::mqtt_embedded::EmbeddedBroker>> {
        self.embedded.as_ref()
    }

    /// The settings (for tests and docs).
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Declares a subscription for node `node` (replacing one it declared
    /// before, when the node is rebuilt). No I/O: the connection subscribes
    /// when it connects, and again after every reconnect.
    pub(crate) fn subscribe(
        &self,
        node: &NodeId,
        filter: &str,
        qos: QoS,
        monitor: Arc<NodeMonitor>,
    ) -> SubscriptionRx {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let route = Route {
            node: node.clone(),
            filter: filter.to_string(),
            qos,
            tx,
            queued: queued.clone(),
            monitor,
        };
        if let Ok(mut routes) = self.routes.lock() {
            routes.retain(|r| &r.node != node);
            routes.push(route);
        }
        self.routes_version.fetch_add(1, Ordering::AcqRel);
        SubscriptionRx { rx, queued }
    }

    /// Takes a lease on the connection, starting it if no node holds one.
    /// `monitor` gets the connection state as its status.
    pub(crate) fn attach(&self, monitor: Arc<NodeMonitor>) -> Lease {
        let connection = {
            let mut live = match self.live.lock() {
                Ok(live) => live,
                Err(poisoned) => poisoned.into_inner(),
            };
            match live.upgrade() {
                Some(connection) => connection,
                None => {
                    let connection = Connection::start(
                        self.settings.clone(),
                        self.monitor.clone(),
                        self.routes.clone(),
                        self.routes_version.clone(),
                    );
                    *live = Arc::downgrade(&connection);
                    connection
                }
            }
        };
        monitor.set_status(connection.status_now());
        if let Ok(mut monitors) = connection.monitors.lock() {
            monitors.push(monitor.clone());
        }
        Lease {
            connection,
            monitor,
        }
    }
}

/// A running node's hold on the connection.
pub(crate) struct Lease {
    connection: Arc<Connection>,
    monitor: Arc<NodeMonitor>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("client_id", &self.connection.client_id)
            .finish_non_exhaustive()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut monitors) = self.connection.monitors.lock() {
            monitors.retain(|m| !Arc::ptr_eq(m, &self.monitor));
        }
    }
}

/// Why a publish was not accepted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    /// The connection's driver is gone.
    #[error("the broker connection is closed")]
    Closed(Msg),
}

impl Lease {
    /// Publishes, holding `msg` until the broker has acknowledged the
    /// publish (QoS 1/2) or it was written to the network (QoS 0). Waits
    /// while `max_inflight` messages are held (back-pressure).
    pub async fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        msg: Msg,
    ) -> Result<(), PublishError> {
        let connection = &self.connection;
        let Ok(permit) = connection.inflight.clone().acquire_owned().await else {
            return Err(PublishError::Closed(msg));
        };
        // The send lock keeps the order of `unassigned` equal to the order
        // of requests in rumqttc's channel across every publisher.
        let _order = connection.send_lock.lock().await;
        connection.out.push(Held {
            msg: Some(msg),
            _permit: permit,
        });
        if let Err(error) = connection
            .client
            .publish_bytes(topic, qos, retain, payload)
            .await
        {
            tracing::debug!(error = %error, "publish request not accepted");
            let held = connection.out.pop_last();
            return Err(PublishError::Closed(
                held.and_then(|mut h| h.msg.take())
                    .unwrap_or_else(|| Msg::new(runnel_engine::Value::Null)),
            ));
        }
        Ok(())
    }

    /// Messages held until the broker acknowledges them.
    pub fn held(&self) -> usize {
        self.connection.out.len()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    Connecting,
    Connected,
    Disconnected,
}

/// A live connection: the client, the driver task and what it shares.
struct Connection {
    client_id: String,
    client: AsyncClient,
    out: Arc<OutState>,
    inflight: Arc<Semaphore>,
    send_lock: tokio::sync::Mutex<()>,
    monitors: Arc<Mutex<Vec<Arc<NodeMonitor>>>>,
    status: Arc<Mutex<NodeStatus>>,
    cancel: CancellationToken,
}

impl Connection {
    fn status_now(&self) -> NodeStatus {
        match self.status.lock() {
            Ok(status) => status.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn start(
        settings: Settings,
        broker_monitor: Arc<NodeMonitor>,
        routes: Arc<Mutex<Vec<Route>>>,
        routes_version: Arc<AtomicU64>,
    ) -> Arc<Connection> {
        let options = mqtt_options(&settings);
        let (client, eventloop) = AsyncClient::new(options, 256);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let (state, _) = watch::channel(ConnState::Connecting);
        let cancel = CancellationToken::new();
        let out = Arc::new(OutState::default());
        let monitors: Arc<Mutex<Vec<Arc<NodeMonitor>>>> = Arc::default();
        let status = Arc::new(Mutex::new(NodeStatus::pending("connecting")));
        let generation = Arc::new(AtomicU64::new(0));
        let connection = Arc::new(Connection {
            client_id: settings.client_id.clone(),
            client: client.clone(),
            out: out.clone(),
            inflight: Arc::new(Semaphore::new(usize::from(settings.max_inflight.max(1)))),
            send_lock: tokio::sync::Mutex::new(()),
            monitors: monitors.clone(),
            status: status.clone(),
            cancel: cancel.clone(),
        });
        let driver = Driver {
            settings,
            eventloop,
            out,
            routes,
            routes_version,
            subscribed_version: u64::MAX,
            subscribed: Vec::new(),
            ack_tx,
            broker_monitor,
            monitors,
            status,
            state,
            generation: generation.clone(),
            cancel,
            snapshot: Vec::new(),
            qos0_dropped: 0,
        };
        let previous = claim_client_id(&driver.settings.client_id);
        tokio::spawn(acker(client, ack_rx, generation));
        tokio::spawn(driver.run(previous));
        connection
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The last lease is gone: the driver disconnects and ends.
        self.cancel.cancel();
    }
}

type Finished = watch::Receiver<bool>;

/// Registers a new driver for `client_id`; returns the previous driver's
/// "finished" signal, to wait for before connecting.
fn claim_client_id(client_id: &str) -> (Option<Finished>, watch::Sender<bool>) {
    static DRIVERS: OnceLock<Mutex<HashMap<String, Finished>>> = OnceLock::new();
    let (done_tx, done_rx) = watch::channel(false);
    let map = DRIVERS.get_or_init(Default::default);
    let previous = match map.lock() {
        Ok(mut map) => {
            map.retain(|_, rx| !*rx.borrow());
            map.insert(client_id.to_string(), done_rx)
        }
        Err(_) => None,
    };
    (previous, done_tx)
}

/// Sends acknowledgements for finished deliveries. Its own task, because
/// `client.ack` waits on rumqttc's request channel, which only the driver
/// drains. Acks of an earlier connection are skipped: the broker
/// redelivers those messages on the new one.
async fn acker(
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<AckCmd>,
    generation: Arc<AtomicU64>,
) {
    while let Some(cmd) = rx.recv().await {
        let (of, publish) = match cmd {
            AckCmd::Ack(of, publish) => (of, publish),
            AckCmd::Disconnect => {
                let _ = client.disconnect().await;
                return;
            }
        };
        if of != generation.load(Ordering::Acquire) {
            tracing::debug!(
                pkid = publish.pkid,
                "skipping ack from an earlier connection"
            );
            continue;
        }
        if client.ack(&publish).await.is_err() {
            return;
        }
    }
}

fn mqtt_options(settings: &Settings) -> MqttOptions {
    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options
        .set_keep_alive(settings.keepalive.max(Duration::from_secs(1)))
        .set_manual_acks(true)
        .set_inflight(settings.max_inflight.saturating_add(1).max(2))
        .set_max_packet_size(settings.max_packet_size, settings.max_packet_size);
    // rumqttc panics when clean_session is false with an empty client id;
    // the config always derives a non-empty one.
    if !settings.client_id.is_empty() {
        options.set_clean_session(settings.clean_session);
    }
    if let Some(username) = &settings.username {
        let password = settings
            .password
            .as_ref()
            .map(|p| p.0.clone())
            .unwrap_or_default();
        options.set_credentials(username.clone(), password);
    }
    if let Some(will) = &settings.will {
        options.set_last_will(LastWill::new(
            will.topic.clone(),
            will.payload.clone().into_bytes(),
            will.qos,
            will.retain,
        ));
    }
    options
}

fn read_tls(files: &TlsFiles) -> Result<Transport, String> {
    // rustls' ClientConfig::builder() (inside rumqttc) panics when more
    // than one crypto provider is compiled in (other crates of the binary
    // may enable ring next to aws-lc-rs) and none is installed. Installing
    // fails harmlessly when one already is.
    let _ = rumqttc::tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca = std::fs::read(&files.ca_file)
        .map_err(|e| format!("cannot read tls.ca_file {}: {e}", files.ca_file))?;
    let client_auth = match (&files.client_cert_file, &files.client_key_file) {
        (Some(cert), Some(key)) => {
            let cert_pem = std::fs::read(cert)
                .map_err(|e| format!("cannot read tls.cert_file {cert}: {e}"))?;
            let key_pem =
                std::fs::read(key).map_err(|e| format!("cannot read tls.key_file {key}: {e}"))?;
            Some((cert_pem, key_pem))
        }
        _ => None,
    };
    Ok(Transport::Tls(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    }))
}

/// Owns the event loop.
struct Driver {
    settings: Settings,
    eventloop: EventLoop,
    out: Arc<OutState>,
    routes: Arc<Mutex<Vec<Route>>>,
    routes_version: Arc<AtomicU64>,
    subscribed_version: u64,
    subscribed: Vec<String>,
    ack_tx: mpsc::UnboundedSender<AckCmd>,
    broker_monitor: Arc<NodeMonitor>,
    monitors: Arc<Mutex<Vec<Arc<NodeMonitor>>>>,
    status: Arc<Mutex<NodeStatus>>,
    state: watch::Sender<ConnState>,
    generation: Arc<AtomicU64>,
    cancel: CancellationToken,
    /// rumqttc's pending queue as it was before connecting: restored when
    /// the broker has no session for us (rumqttc then drops it).
    snapshot: Vec<Request>,
    qos0_dropped: u64,
}

impl Driver {
    fn set_status(&self, status: NodeStatus) {
        self.broker_monitor.set_status(status.clone());
        if let Ok(monitors) = self.monitors.lock() {
            for monitor in monitors.iter() {
                monitor.set_status(status.clone());
            }
        }
        if let Ok(mut slot) = self.status.lock() {
            *slot = status;
        }
    }

    async fn run(mut self, (previous, done): (Option<Finished>, watch::Sender<bool>)) {
        if let Some(mut previous) = previous {
            // A redeploy: the old connection with this client id is closing.
            let wait = previous.wait_for(|finished| *finished);
            let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        }
        if let Some(tls) = &self.settings.tls {
            match read_tls(tls) {
                Ok(transport) => {
                    self.eventloop.mqtt_options.set_transport(transport);
                }
                Err(error) => {
                    tracing::error!(client_id = %self.settings.client_id, error = %error, "mqtt tls setup failed");
                    self.set_status(NodeStatus::error(error));
                    self.cancel.cancelled().await;
                    let _ = done.send(true);
                    return;
                }
            }
        }
        let mut network = self.eventloop.network_options();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(self.settings.connect_timeout.as_secs().max(1));
        self.eventloop.set_network_options(network);

        self.set_status(NodeStatus::pending("connecting"));
        let mut failures: u32 = 0;
        let mut rng = Jitter::new(&self.settings.client_id);
        loop {
            if self.eventloop.network.is_none() {
                self.snapshot = self.eventloop.pending.iter().cloned().collect();
            }
            let event = tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                event = self.eventloop.poll() => event,
            };
            match event {
                Ok(event) => {
                    failures = 0;
                    self.on_event(event);
                    self.sync_subscriptions();
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = rng.backoff(
                        failures,
                        self.settings.reconnect_min,
                        self.settings.reconnect_max,
                    );
                    self.on_error(&error, delay);
                    tokio::select! {
                        () = self.cancel.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.shutdown().await;
        let _ = done.send(true);
    }

    async fn shutdown(&mut self) {
        if self.eventloop.network.is_some() {
            // Acks of messages the flow finished while stopping go out
            // first; the acker sends DISCONNECT after them.
            let _ = self.ack_tx.send(AckCmd::Disconnect);
            let deadline = tokio::time::sleep(Duration::from_secs(2));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = &mut deadline => break,
                    event = self.eventloop.poll() => match event {
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    },
                }
            }
        }
        let dropped = self.out.clear();
        self.set_status(NodeStatus::error("disconnected"));
        self.state.send_replace(ConnState::Disconnected);
        tracing::info!(
            client_id = %self.settings.client_id,
            unacknowledged_outgoing = dropped,
            "mqtt connection closed"
        );
    }

    fn on_error(&mut self, error: &ConnectionError, delay: Duration) {
        let was_connected = *self.state.borrow() == ConnState::Connected;
        self.state.send_replace(ConnState::Disconnected);
        let text = describe_error(error);
        let host = &self.settings.host;
        let port = self.settings.port;
        if matches!(error, ConnectionError::ConnectionRefused(_)) {
            tracing::error!(client_id = %self.settings.client_id, host = %host, port, error = %text, retry_in_ms = delay.as_millis() as u64, "mqtt connection refused");
        } else if was_connected {
            tracing::warn!(client_id = %self.settings.client_id, host = %host, port, error = %text, retry_in_ms = delay.as_millis() as u64, "mqtt connection lost");
        } else {
            tracing::warn!(client_id = %self.settings.client_id, host = %host, port, error = %text, retry_in_ms = delay.as_millis() as u64, "mqtt connect failed");
        }
        self.set_status(NodeStatus::error(format!("disconnected: {text}")));
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Incoming(Packet::ConnAck(connack)) => {
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                if !connack.session_present && !self.snapshot.is_empty() {
                    // rumqttc dropped its pending queue (unacknowledged
                    // publishes, requests queued at the disconnect): the
                    // broker has no session, so send them again.
                    let restored: Vec<Request> = std::mem::take(&mut self.snapshot)
                        .into_iter()
                        .filter(|r| matches!(r, Request::Publish(_) | Request::PubRel(_)))
                        .collect();
                    tracing::info!(client_id = %self.settings.client_id, requests = restored.len(), "no session on the broker; resending unacknowledged publishes");
                    self.eventloop.pending.extend(restored);
                }
                self.snapshot.clear();
                tracing::info!(
                    client_id = %self.settings.client_id,
                    host = %self.settings.host,
                    port = self.settings.port,
                    session_present = connack.session_present,
                    generation,
                    "mqtt connected"
                );
                self.set_status(NodeStatus::ok("connected"));
                self.state.send_replace(ConnState::Connected);
                // Subscribe again on every connection, session or not.
                self.subscribed_version = u64::MAX;
            }
            Event::Incoming(Packet::Publish(publish)) => self.route(publish),
            Event::Incoming(Packet::PubAck(ack)) => self.out.acknowledged(ack.pkid),
            Event::Incoming(Packet::PubComp(comp)) => self.out.acknowledged(comp.pkid),
            Event::Incoming(Packet::SubAck(suback)) => {
                for (code, filter) in suback.return_codes.iter().zip(&self.subscribed) {
                    match code {
                        SubscribeReasonCode::Success(qos) => {
                            tracing::debug!(client_id = %self.settings.client_id, filter = %filter, granted_qos = *qos as u8, "mqtt subscribed");
                        }
                        SubscribeReasonCode::Failure => {
                            tracing::error!(client_id = %self.settings.client_id, filter = %filter, "mqtt subscription refused by the broker");
                            if let Ok(routes) = self.routes.lock() {
                                for route in routes.iter().filter(|r| &r.filter == filter) {
                                    route
                                        .monitor
                                        .set_status(NodeStatus::error("subscription refused"));
                                }
                            }
                        }
                    }
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => self.out.sent(pkid),
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => self.out.collided(pkid),
            _ => {}
        }
    }

    /// Subscribes every declared filter when connected and the declared set
    /// changed (or after a reconnect). Pushed into rumqttc's pending queue:
    /// the driver must never wait on its own request channel.
    fn sync_subscriptions(&mut self) {
        if *self.state.borrow() != ConnState::Connected {
            return;
        }
        let version = self.routes_version.load(Ordering::Acquire);
        if version == self.subscribed_version {
            return;
        }
        self.subscribed_version = version;
        let filters: Vec<SubscribeFilter> = match self.routes.lock() {
            Ok(routes) => {
                let mut seen: HashMap<&str, QoS> = HashMap::new();
                for route in routes.iter() {
                    let qos = seen.entry(route.filter.as_str()).or_insert(route.qos);
                    if (route.qos as u8) > (*qos as u8) {
                        *qos = route.qos;
                    }
                }
                seen.into_iter()
                    .map(|(filter, qos)| SubscribeFilter::new(filter.to_string(), qos))
                    .collect()
            }
            Err(_) => return,
        };
        if filters.is_empty() {
            return;
        }
        self.subscribed = filters.iter().map(|f| f.path.clone()).collect();
        self.eventloop
            .pending
            .push_back(Request::Subscribe(Subscribe::new_many(filters)));
    }

    fn route(&mut self, publish: Publish) {
        let publish = Arc::new(publish);
        let Ok(routes) = self.routes.lock() else {
            return;
        };
        let targets: Vec<&Route> = routes
            .iter()
            .filter(|r| topic_matches(&r.filter, &publish.topic))
            .collect();
        let needs_ack = publish.qos != QoS::AtMostOnce;
        if targets.is_empty() {
            if needs_ack {
                // A subscription left in the persistent session by a node
                // that is no longer deployed: acknowledge and drop.
                tracing::warn!(client_id = %self.settings.client_id, topic = %publish.topic, "mqtt message matches no mqtt-in node; acknowledged and dropped");
                let _ = self.ack_tx.send(AckCmd::Ack(
                    self.generation.load(Ordering::Acquire),
                    ack_only(&publish),
                ));
            }
            return;
        }
        let ack = needs_ack.then(|| {
            Arc::new(AckState {
                remaining: AtomicUsize::new(targets.len()),
                abandoned: AtomicBool::new(false),
                generation: self.generation.load(Ordering::Acquire),
                publish: ack_only(&publish),
                tx: self.ack_tx.clone(),
            })
        });
        for route in targets {
            if !needs_ack && route.queued.load(Ordering::Acquire) >= self.settings.qos0_buffer {
                route.monitor.count_dropped(1);
                self.qos0_dropped += 1;
                if self.qos0_dropped.is_power_of_two() {
                    tracing::warn!(client_id = %self.settings.client_id, node = %route.node, dropped_total = self.qos0_dropped, "mqtt-in queue full; dropping qos 0 messages");
                }
                continue;
            }
            route.queued.fetch_add(1, Ordering::AcqRel);
            let delivery = Delivery {
                publish: publish.clone(),
                ack: ack.clone(),
                completed: false,
            };
            if route.tx.send(delivery).is_err() {
                route.queued.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

fn ack_only(publish: &Publish) -> Publish {
    Publish {
        dup: false,
        qos: publish.qos,
        retain: false,
        topic: String::new(),
        pkid: publish.pkid,
        payload: Bytes::new(),
    }
}

/// A readable reason for a connection error; refused connects say why.
pub(crate) fn describe_error(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                ConnectReturnCode::BadUserNamePassword => "bad user name or password",
                ConnectReturnCode::NotAuthorized => "not authorized",
                ConnectReturnCode::BadClientId => "client id rejected",
                ConnectReturnCode::RefusedProtocolVersion => "protocol version not supported",
                ConnectReturnCode::ServiceUnavailable => "service unavailable",
                ConnectReturnCode::Success => "success",
            };
            format!("broker refused the connection: {why}")
        }
        ConnectionError::Io(io) => format!("network error: {io}"),
        ConnectionError::NetworkTimeout => "connect timed out".to_string(),
        ConnectionError::MqttState(state) => format!("protocol error: {state}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn secrets_do_not_show_in_debug() {
        let secret = Secret("hunter2".into());
        assert_eq!(format!("{secret:?}"), "\"***\"");
    }
}
