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
//! MQTT 3.1.1 and MQTT 5 share all of this: `client` puts rumqttc's two
//! clients behind one type, `proto` maps their events and errors to what
//! the driver (`driver`) acts on, and `props` carries MQTT 5 message
//! properties between the wire and `msg.*`.
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
use rumqttc::QoS;
use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{Msg, NodeId, NodeMonitor, NodeStatus};

mod backoff;
mod client;
mod driver;
mod out;
mod props;
mod proto;
mod topic;

use client::Client;
use driver::{ConnState, Driver};
use out::{Held, OutState};
pub(crate) use props::Properties;
pub(crate) use proto::{Incoming, Protocol};
use runnel_engine::Signal;
use tokio::sync::{Semaphore, mpsc, watch};
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
    /// MQTT 3.1.1 or 5 (with its session expiry interval).
    pub protocol: Protocol,
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
    pub publish: Arc<Incoming>,
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
            let _ = ack.tx.send(AckCmd::Ack {
                generation: ack.generation,
                qos: ack.qos,
                pkid: ack.pkid,
            });
        }
    }
}

struct AckState {
    remaining: AtomicUsize,
    abandoned: AtomicBool,
    generation: u64,
    qos: QoS,
    pkid: u16,
    tx: mpsc::UnboundedSender<AckCmd>,
}

/// What the acker task does next.
enum AckCmd {
    /// Acknowledge publish `pkid`, received on connection `generation`.
    Ack {
        generation: u64,
        qos: QoS,
        pkid: u16,
    },
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
    /// The handle's routes: dropping this removes its route, so that a node
    /// removed by a partial redeploy (the connection stays up for the
    /// others) leaves nothing routed to a receiver nobody reads.
    routes: Weak<Mutex<Vec<Route>>>,
}

impl Drop for SubscriptionRx {
    fn drop(&mut self) {
        let Some(routes) = self.routes.upgrade() else {
            return;
        };
        let mut routes = match routes.lock() {
            Ok(routes) => routes,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Only this subscription's own route: a replacement declared by a
        // rebuilt node of the same id stays.
        routes.retain(|r| !Arc::ptr_eq(&r.queued, &self.queued));
    }
}

impl SubscriptionRx {
    /// Whether a delivery is waiting.
    pub fn has_queued(&self) -> bool {
        !self.rx.is_empty()
    }

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
        SubscriptionRx {
            rx,
            queued,
            routes: Arc::downgrade(&self.routes),
        }
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
    /// while `max_inflight` messages are held (back-pressure). `properties`
    /// are sent on an MQTT 5 connection only.
    pub async fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        properties: Option<Properties>,
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
            .publish(topic, qos, retain, payload, properties)
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

/// A live connection: the client, the driver task and what it shares.
struct Connection {
    client_id: String,
    client: Client,
    out: Arc<OutState>,
    inflight: Arc<Semaphore>,
    send_lock: tokio::sync::Mutex<()>,
    monitors: Arc<Mutex<Vec<Arc<NodeMonitor>>>>,
    status: Arc<Mutex<NodeStatus>>,
    cancel: Signal,
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
        let (client, eventloop) = client::new_connection(&settings);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let (state, _) = watch::channel(ConnState::Connecting);
        let cancel = Signal::new();
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
    client: Client,
    mut rx: mpsc::UnboundedReceiver<AckCmd>,
    generation: Arc<AtomicU64>,
) {
    while let Some(cmd) = rx.recv().await {
        let (of, qos, pkid) = match cmd {
            AckCmd::Ack {
                generation,
                qos,
                pkid,
            } => (generation, qos, pkid),
            AckCmd::Disconnect => {
                client.disconnect().await;
                return;
            }
        };
        if of != generation.load(Ordering::Acquire) {
            tracing::debug!(pkid, "skipping ack from an earlier connection");
            continue;
        }
        if !client.ack(qos, pkid).await {
            return;
        }
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
