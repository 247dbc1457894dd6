//! The embedded broker behind an `mqtt-broker` config node with `embedded:`.
//!
//! ```yaml
//! config:
//!   - id: broker
//!     type: mqtt-broker
//!     embedded:
//!       listen: "${MQTT_LISTEN:-127.0.0.1:1883}"
//! ```
//!
//! The config node then runs a `runnel-broker` in the runnel process
//! instead of connecting to one. Building does no I/O (`runnel check` binds
//! nothing): the broker starts when the first `mqtt-in` or `mqtt-out` node
//! using it runs, and shuts down (port released, persistent sessions saved
//! to `data_dir`) when the last of them stops, so a redeploy never leaves
//! the port bound and never starts it twice. A broker declared by no
//! running node does not start.
//!
//! Outside clients (mosquitto_pub/sub, sensors) connect on `listen`. The
//! flow's own `mqtt-in` and `mqtt-out` nodes exchange messages with it in
//! process, without a socket: `mqtt-in` holds a [`LocalSubscription`],
//! `mqtt-out` calls [`Broker::publish`]. What that means for delivery
//! guarantees is in `docs/delivery.md` ("In-process delivery").

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::FutureExt as _;
use runnel_broker::{
    Access, AclRule, Broker, BrokerConfig, LocalSubscription, Publish, QoS as BrokerQoS, UserConfig,
};
use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, Duration, Msg, NodeCtx, NodeError, NodeMonitor, NodeStatus, Value,
};
use serde::Deserialize;
use tokio::sync::watch;

use crate::mqtt_broker::MqttBrokerConfig;
use crate::mqtt_conn::{BrokerHandle, Secret, Settings};
use crate::mqtt_in::{DataType, decode};

/// `embedded:` of an `mqtt-broker` config node: run an MQTT 3.1.1 broker
/// inside runnel. Unset limits take runnel-broker's defaults (see
/// `docs/broker.md`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// TCP address outside clients connect to, as `IP:port`, e.g.
    /// `"${MQTT_LISTEN:-127.0.0.1:1883}"`; `0.0.0.0:1883` for every
    /// interface.
    pub listen: String,
    /// Also accept MQTT over WebSocket (binary frames, subprotocol `mqtt`)
    /// on this `IP:port`.
    #[serde(default)]
    pub websocket: Option<String>,
    /// Also accept MQTT over TLS (rustls).
    #[serde(default)]
    pub tls: Option<EmbeddedTls>,
    /// Directory where persistent sessions and retained messages are saved
    /// on shutdown (and every `persist_interval`) and reloaded on start.
    /// Relative to runnel's data directory. Unset: in memory only.
    #[serde(default)]
    pub data_dir: Option<String>,
    /// With `data_dir`, also save a snapshot this often (default `60s`); a
    /// crash loses at most this much.
    #[serde(default)]
    pub persist_interval: Option<Duration>,
    /// Whether clients without a username may connect (default true).
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// Accepted username/password pairs (use `${ENV}`). Empty: any
    /// credentials are accepted.
    #[serde(default)]
    pub users: Vec<EmbeddedUser>,
    /// Per-topic rules for outside clients (the flow's own nodes are not
    /// subject to them). Empty: everything is allowed.
    #[serde(default)]
    pub acl: Vec<EmbeddedAcl>,
    /// Most client connections at once (default 100000).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Largest packet accepted from a client, in bytes (default 1048576);
    /// also the limit `mqtt-out` checks before publishing.
    #[serde(default)]
    pub max_packet_size: Option<usize>,
    /// Messages queued per client and per in-process subscription (default
    /// 1000): QoS 0 beyond it is dropped and counted, QoS 1/2 publishers
    /// wait.
    #[serde(default)]
    pub max_queued_per_client: Option<usize>,
    /// QoS 1/2 messages sent to one client and not yet acknowledged
    /// (default 64).
    #[serde(default)]
    pub max_inflight: Option<u16>,
    /// Time a new connection has to send CONNECT (default `10s`).
    #[serde(default)]
    pub connect_timeout: Option<Duration>,
    /// How long a QoS 1/2 publish waits for room in a connected client's
    /// full queue before that client is disconnected as a slow consumer
    /// (default `30s`).
    #[serde(default)]
    pub slow_consumer_timeout: Option<Duration>,
    /// Discard an offline persistent session after this long (default:
    /// keep it until the client cleans it).
    #[serde(default)]
    pub session_expiry: Option<Duration>,
    /// Period of the retained `$SYS/broker/...` statistics (default `10s`).
    #[serde(default)]
    pub sys_interval: Option<Duration>,
}

/// An extra TLS listener of the embedded broker.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedTls {
    /// `IP:port` to listen on (8883 is usual).
    pub listen: String,
    /// PEM certificate chain; read when the broker starts.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
}

/// A user allowed to connect to the embedded broker.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedUser {
    /// User name (e.g. `"${MQTT_USER}"`; must not end up empty).
    pub username: String,
    /// Password (e.g. `"${MQTT_PASSWORD}"`; never logged or shown).
    pub password: Secret,
}

/// What an ACL rule covers.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddedAccess {
    /// Publishing.
    Publish,
    /// Subscribing.
    Subscribe,
    /// Both.
    Both,
}

/// Allows (or with `deny: true` forbids) `access` on the topics matched by
/// `topic`. Deny rules win; with no allow rules everything not denied is
/// allowed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedAcl {
    /// The user the rule is for; unset: every client.
    #[serde(default)]
    pub username: Option<String>,
    /// A topic filter; `%u` stands for the username, `%c` for the client id.
    pub topic: String,
    /// `publish`, `subscribe` or `both`.
    pub access: EmbeddedAccess,
    /// Forbid instead of allow (default false).
    #[serde(default)]
    pub deny: bool,
}

fn parse_addr(field: &str, text: &str) -> Result<SocketAddr, BuildError> {
    text.trim().parse().map_err(|_| {
        BuildError::field(
            field,
            format!("invalid address {text:?}, expected IP:port such as 127.0.0.1:1883"),
        )
    })
}

impl EmbeddedConfig {
    /// The broker configuration, validated; no I/O. Relative paths are
    /// taken from `data_root` (runnel's data directory).
    pub(crate) fn broker_config(self, data_root: &Path) -> Result<BrokerConfig, BuildError> {
        let mut config = BrokerConfig {
            listen: parse_addr("embedded.listen", &self.listen)?,
            ..BrokerConfig::default()
        };
        if let Some(websocket) = &self.websocket {
            config.websocket = Some(runnel_broker::WebSocketListenerConfig {
                listen: parse_addr("embedded.websocket", websocket)?,
            });
        }
        if let Some(tls) = self.tls {
            config.tls = Some(runnel_broker::TlsListenerConfig {
                listen: parse_addr("embedded.tls.listen", &tls.listen)?,
                cert_file: PathBuf::from(tls.cert_file),
                key_file: PathBuf::from(tls.key_file),
            });
        }
        if let Some(dir) = self.data_dir.filter(|d| !d.trim().is_empty()) {
            config.data_dir = Some(data_root.join(dir));
        }
        if let Some(interval) = self.persist_interval {
            config.persist_interval = Some(interval.get());
        }
        if let Some(allow) = self.allow_anonymous {
            config.allow_anonymous = allow;
        }
        for (index, user) in self.users.into_iter().enumerate() {
            if user.username.trim().is_empty() {
                return Err(BuildError::field(
                    "embedded.users",
                    format!(
                        "user {}: empty username (is its ${{ENV}} variable set?)",
                        index + 1
                    ),
                ));
            }
            config.users.push(UserConfig {
                username: user.username,
                password: user.password.0,
            });
        }
        config.acl = self
            .acl
            .into_iter()
            .map(|rule| AclRule {
                username: rule.username.filter(|u| !u.is_empty()),
                topic: rule.topic,
                access: match rule.access {
                    EmbeddedAccess::Publish => Access::Publish,
                    EmbeddedAccess::Subscribe => Access::Subscribe,
                    EmbeddedAccess::Both => Access::Both,
                },
                deny: rule.deny,
            })
            .collect();
        if let Some(n) = self.max_connections {
            config.max_connections = n;
        }
        if let Some(n) = self.max_packet_size {
            config.max_packet_size = n;
        }
        if let Some(n) = self.max_queued_per_client {
            config.max_queued_per_client = n;
        }
        if let Some(n) = self.max_inflight {
            config.max_inflight = n;
        }
        if let Some(d) = self.connect_timeout {
            config.connect_timeout = d.get();
        }
        if let Some(d) = self.slow_consumer_timeout {
            config.slow_consumer_timeout = Some(d.get());
        }
        if let Some(d) = self.session_expiry {
            config.session_expiry = Some(d.get());
        }
        if let Some(d) = self.sys_interval {
            config.sys_interval = Some(d.get());
        }
        config
            .validate()
            .map_err(|e| BuildError::field("embedded", e))?;
        Ok(config)
    }
}

/// Connection settings the MQTT nodes read for an embedded broker: only
/// `max_packet_size` matters in process; the rest describes the listener.
pub(crate) fn settings_for(config: &BrokerConfig, client_id: String) -> Settings {
    Settings {
        host: config.listen.ip().to_string(),
        port: config.listen.port(),
        client_id,
        username: None,
        password: None,
        keepalive: std::time::Duration::from_secs(60),
        clean_session: false,
        protocol: crate::mqtt_conn::Protocol::V311,
        will: None,
        tls: None,
        max_packet_size: config.max_packet_size,
        max_inflight: config.max_inflight,
        reconnect_min: std::time::Duration::from_millis(250),
        reconnect_max: std::time::Duration::from_secs(10),
        connect_timeout: std::time::Duration::from_secs(5),
        qos0_buffer: config.max_queued_per_client,
    }
}

/// Builds the handle of an `mqtt-broker` with `embedded:`. The connection
/// settings of an external broker make no sense with it and are refused
/// by name rather than ignored. No I/O.
pub(crate) fn build_handle(
    mut config: MqttBrokerConfig,
    ctx: &BuildCtx<'_>,
) -> Result<Arc<BrokerHandle>, BuildError> {
    let Some(embedded) = config.embedded.take() else {
        return Err(BuildError::field("embedded", "missing"));
    };
    let set = |text: &Option<String>| text.as_ref().is_some_and(|t| !t.trim().is_empty());
    let conflicts = [
        ("host", !config.host.trim().is_empty()),
        ("port", config.port.is_some()),
        ("client_id", set(&config.client_id)),
        ("username", set(&config.username)),
        (
            "password",
            config.password.as_ref().is_some_and(|p| !p.0.is_empty()),
        ),
        ("keepalive", config.keepalive.is_some()),
        ("clean_session", config.clean_session),
        ("protocol", config.protocol.is_some()),
        ("session_expiry", config.session_expiry.is_some()),
        ("will", config.will.is_some()),
        ("tls", config.tls.is_some()),
        ("max_packet_size", config.max_packet_size.is_some()),
        ("max_inflight", config.max_inflight.is_some()),
        ("reconnect_min", config.reconnect_min.is_some()),
        ("reconnect_max", config.reconnect_max.is_some()),
        ("qos0_buffer", config.qos0_buffer.is_some()),
    ];
    if let Some((field, _)) = conflicts.iter().find(|(_, present)| *present) {
        return Err(BuildError::field(
            field,
            format!(
                "`{field}` is a setting for connecting to an external broker; with `embedded` leave it out (limits go under `embedded:`)"
            ),
        ));
    }
    let broker_config = embedded.broker_config(ctx.data_dir())?;
    let settings = settings_for(
        &broker_config,
        format!("runnel-{}-{}", ctx.flow(), ctx.node_id()),
    );
    let monitor = ctx.monitor();
    let handle = BrokerHandle::new(settings, monitor.clone())
        .with_embedded(Arc::new(EmbeddedBroker::new(broker_config, monitor)));
    Ok(Arc::new(handle))
}

/// The embedded broker of one `mqtt-broker` config node: started by the
/// first [`EmbeddedBroker::attach`], stopped by the last release.
pub(crate) struct EmbeddedBroker {
    config: BrokerConfig,
    monitor: Arc<NodeMonitor>,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    running: Option<Broker>,
    users: usize,
    /// Set to true once this instance's broker has shut down.
    done: Option<watch::Sender<bool>>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("listen", &self.config.listen)
            .finish_non_exhaustive()
    }
}

type Finished = watch::Receiver<bool>;

/// Registers a broker about to listen on `addr`; returns the previous
/// instance's "shut down" signal (a redeploy whose old broker is still
/// closing). Port 0 picks a fresh port, so it never waits.
fn claim_listen(addr: SocketAddr) -> (Option<Finished>, watch::Sender<bool>) {
    static LISTENERS: OnceLock<Mutex<HashMap<SocketAddr, Finished>>> = OnceLock::new();
    let (done_tx, done_rx) = watch::channel(false);
    if addr.port() == 0 {
        return (None, done_tx);
    }
    let map = LISTENERS.get_or_init(Default::default);
    let previous = match map.lock() {
        Ok(mut map) => {
            map.retain(|_, rx| !*rx.borrow());
            map.insert(addr, done_rx)
        }
        Err(_) => None,
    };
    (previous, done_tx)
}

impl EmbeddedBroker {
    pub(crate) fn new(config: BrokerConfig, monitor: Arc<NodeMonitor>) -> EmbeddedBroker {
        EmbeddedBroker {
            config,
            monitor,
            state: tokio::sync::Mutex::default(),
        }
    }

    /// Takes a hold on the broker, starting it (binding its listeners) if
    /// no node holds one. The error says why it could not start.
    pub(crate) async fn attach(self: &Arc<Self>) -> Result<EmbeddedLease, String> {
        let mut state = self.state.lock().await;
        let broker = match &state.running {
            Some(broker) => broker.clone(),
            None => {
                let (previous, done) = claim_listen(self.config.listen);
                if let Some(mut previous) = previous {
                    // The previous deployment's broker is still closing.
                    let wait = previous.wait_for(|finished| *finished);
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), wait).await;
                }
                match Broker::start(self.config.clone()).await {
                    Ok(broker) => {
                        let addr = broker.local_addr().unwrap_or(self.config.listen);
                        tracing::info!(%addr, "embedded mqtt broker started");
                        self.monitor
                            .set_status(NodeStatus::ok(format!("listening on {addr}")));
                        state.running = Some(broker.clone());
                        state.done = Some(done);
                        broker
                    }
                    Err(error) => {
                        let _ = done.send(true);
                        let text = format!(
                            "embedded broker cannot start on {}: {error}",
                            self.config.listen
                        );
                        tracing::error!(listen = %self.config.listen, %error, "embedded mqtt broker cannot start");
                        self.monitor.set_status(NodeStatus::error(text.clone()));
                        return Err(text);
                    }
                }
            }
        };
        state.users += 1;
        Ok(EmbeddedLease {
            owner: self.clone(),
            broker,
            released: false,
        })
    }

    async fn release_one(&self) {
        let mut state = self.state.lock().await;
        state.users = state.users.saturating_sub(1);
        if state.users > 0 {
            return;
        }
        if let Some(broker) = state.running.take() {
            if let Err(error) = broker.shutdown().await {
                tracing::warn!(%error, "embedded mqtt broker shutdown");
            }
            self.monitor.set_status(NodeStatus::pending("stopped"));
            tracing::info!(listen = %self.config.listen, "embedded mqtt broker stopped");
        }
        if let Some(done) = state.done.take() {
            let _ = done.send(true);
        }
    }
}

/// A running node's hold on the embedded broker. Release it with
/// [`EmbeddedLease::release`] (which waits for the shutdown when it was the
/// last); dropping it releases in a background task.
pub(crate) struct EmbeddedLease {
    owner: Arc<EmbeddedBroker>,
    broker: Broker,
    released: bool,
}

impl EmbeddedLease {
    /// The running broker.
    pub(crate) fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The address outside clients reach.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.broker.local_addr().unwrap_or(self.owner.config.listen)
    }

    /// Lets go; the last lease shuts the broker down before this returns.
    pub(crate) async fn release(mut self) {
        self.released = true;
        self.owner.release_one().await;
    }
}

impl Drop for EmbeddedLease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let owner = self.owner.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { owner.release_one().await });
        }
    }
}

fn broker_qos(qos: rumqttc::QoS) -> BrokerQoS {
    match qos {
        rumqttc::QoS::AtMostOnce => BrokerQoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce => BrokerQoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce => BrokerQoS::ExactlyOnce,
    }
}

fn qos_number(qos: BrokerQoS) -> i64 {
    match qos {
        BrokerQoS::AtMostOnce => 0,
        BrokerQoS::AtLeastOnce => 1,
        BrokerQoS::ExactlyOnce => 2,
    }
}

/// What an `mqtt-in` node needs to receive in process.
pub(crate) struct InProcessIn<'a> {
    pub filter: &'a str,
    pub qos: rumqttc::QoS,
    pub datatype: DataType,
    pub max_payload: usize,
}

/// A flow message for a delivery, with `msg.topic`, `msg.qos` and
/// `msg.retain` as the socket path sets them.
fn message(ctx: &NodeCtx, payload: Value, delivery: &runnel_broker::Delivery) -> Msg {
    let mut msg = ctx.new_msg(payload);
    let props = msg.props_mut();
    props.insert("topic".to_string(), Value::from(&*delivery.topic));
    props.insert("qos".to_string(), Value::from(qos_number(delivery.qos)));
    props.insert("retain".to_string(), Value::from(delivery.retain));
    msg
}

/// Decodes one delivery and sends it on, or reports why not (same rules as
/// the socket path in `mqtt_in`).
async fn handle(ctx: &mut NodeCtx, spec: &InProcessIn<'_>, delivery: runnel_broker::Delivery) {
    let size = delivery.payload.len();
    if size > spec.max_payload {
        let mut msg = message(ctx, Value::Null, &delivery);
        msg.props_mut()
            .insert("size".to_string(), Value::from(size as i64));
        ctx.report_error(
            NodeError::new(format!(
                "payload of {size} bytes on {:?} is larger than max_payload ({} bytes)",
                &*delivery.topic, spec.max_payload
            ))
            .with_msg(msg),
        );
        return;
    }
    match decode(spec.datatype, &delivery.payload) {
        Ok(value) => {
            let msg = message(ctx, value, &delivery);
            ctx.send(0, msg).await;
        }
        Err(error) => {
            let raw = match decode(DataType::Auto, &delivery.payload) {
                Ok(raw @ (Value::String(_) | Value::Bytes(_))) => raw,
                _ => Value::from(String::from_utf8_lossy(&delivery.payload).as_ref()),
            };
            let msg = message(ctx, raw, &delivery);
            ctx.report_error(NodeError::new(error).with_msg(msg));
        }
    }
}

/// Counts (and drops) what is still queued on a subscription that stops.
fn discard_queued(subscription: &mut LocalSubscription) -> usize {
    let mut left = 0;
    while let Some(Some(_)) = subscription.recv().now_or_never() {
        left += 1;
    }
    left
}

/// `mqtt-in` on an embedded broker: subscribes in process until the flow
/// stops.
pub(crate) async fn run_in(
    ctx: &mut NodeCtx,
    embedded: &Arc<EmbeddedBroker>,
    spec: InProcessIn<'_>,
) -> Result<(), NodeError> {
    ctx.set_status(NodeStatus::pending("starting embedded broker"));
    let lease = embedded.attach().await.map_err(NodeError::new)?;
    let mut subscription = match lease.broker().subscribe(spec.filter, broker_qos(spec.qos)) {
        Ok(subscription) => subscription,
        Err(error) => {
            lease.release().await;
            return Err(NodeError::new(format!(
                "cannot subscribe to {:?} on the embedded broker: {error}",
                spec.filter
            )));
        }
    };
    ctx.set_status(NodeStatus::ok(format!("embedded, {}", lease.addr())));
    loop {
        let delivery = tokio::select! {
            biased;
            () = ctx.stopping().cancelled() => break,
            delivery = subscription.recv() => delivery,
        };
        match delivery {
            Some(delivery) => handle(ctx, &spec, delivery).await,
            None => break,
        }
    }
    // In-process deliveries have no acknowledgement to withhold: what is
    // still queued here is lost (see docs/delivery.md). Dropping the
    // subscription also releases QoS 1/2 publishers waiting for room in it.
    let left = discard_queued(&mut subscription);
    drop(subscription);
    if left > 0 {
        ctx.monitor().count_dropped(left as u64);
        tracing::warn!(node = %ctx.node_id(), dropped = left, "mqtt-in stopping; messages queued in its in-process subscription are dropped");
    }
    ctx.set_status(NodeStatus::pending("stopped"));
    lease.release().await;
    Ok(())
}

/// `mqtt-out` on an embedded broker: publishes in process. `prepare` gives
/// topic, QoS, retain and payload for a message, or what is wrong with it.
pub(crate) async fn run_out(
    ctx: &mut NodeCtx,
    embedded: &Arc<EmbeddedBroker>,
    prepare: impl Fn(&Msg) -> Result<(String, rumqttc::QoS, bool, Bytes), String>,
) -> Result<(), NodeError> {
    ctx.set_status(NodeStatus::pending("starting embedded broker"));
    let lease = embedded.attach().await.map_err(NodeError::new)?;
    ctx.set_status(NodeStatus::ok(format!("embedded, {}", lease.addr())));
    while let Some(msg) = ctx.recv().await {
        let (topic, qos, retain, payload) = match prepare(&msg) {
            Ok(prepared) => prepared,
            Err(error) => {
                ctx.report_error(NodeError::new(error).with_msg(msg));
                continue;
            }
        };
        let publish = Publish::new(topic, payload)
            .with_qos(broker_qos(qos))
            .with_retain(retain);
        // Resolves once the broker has queued it for every subscriber
        // (waiting for room at QoS 1/2); only then does `msg` finish.
        if let Err(error) = lease.broker().publish(publish).await {
            ctx.report_error(
                NodeError::new(format!(
                    "the embedded broker did not take the message: {error}"
                ))
                .with_msg(msg),
            );
        }
    }
    ctx.set_status(NodeStatus::pending("stopped"));
    lease.release().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn config(json: serde_json::Value) -> Result<BrokerConfig, String> {
        let embedded: EmbeddedConfig = serde_json::from_value(json).map_err(|e| e.to_string())?;
        embedded
            .broker_config(Path::new("/data"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn maps_onto_the_broker_config() {
        let broker = config(serde_json::json!({
            "listen": "127.0.0.1:1884",
            "websocket": "127.0.0.1:8080",
            "data_dir": "broker",
            "allow_anonymous": false,
            "users": [{"username": "car", "password": "s3cret"}],
            "acl": [{"username": "car", "topic": "car-iotp/#", "access": "publish"}],
            "max_queued_per_client": 10,
            "slow_consumer_timeout": "2s"
        }))
        .unwrap();
        assert_eq!(broker.listen, "127.0.0.1:1884".parse().unwrap());
        assert_eq!(
            broker.websocket.as_ref().unwrap().listen,
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(broker.data_dir, Some(PathBuf::from("/data/broker")));
        assert!(!broker.allow_anonymous);
        assert_eq!(broker.users.len(), 1);
        assert_eq!(broker.acl[0].access, Access::Publish);
        assert_eq!(broker.max_queued_per_client, 10);
        assert_eq!(
            broker.slow_consumer_timeout,
            Some(std::time::Duration::from_secs(2))
        );
        assert!(!format!("{broker:?}").contains("s3cret"));
    }

    #[test]
    fn refuses_what_cannot_work() {
        let error = config(serde_json::json!({"listen": "localhost"})).unwrap_err();
        assert!(error.contains("IP:port"), "{error}");
        let error = config(serde_json::json!({"listen": "127.0.0.1:1", "lisen": 1})).unwrap_err();
        assert!(error.contains("lisen"), "{error}");
        let error = config(serde_json::json!({
            "listen": "127.0.0.1:1", "users": [{"username": "", "password": "x"}]
        }))
        .unwrap_err();
        assert!(error.contains("empty username"), "{error}");
        let error =
            config(serde_json::json!({"listen": "127.0.0.1:1", "max_inflight": 0})).unwrap_err();
        assert!(error.contains("max_inflight"), "{error}");
        let error = config(serde_json::json!({
            "listen": "127.0.0.1:1", "acl": [{"topic": "a/#/b", "access": "both"}]
        }))
        .unwrap_err();
        assert!(error.contains("a/#/b"), "{error}");
    }

    #[tokio::test]
    async fn starts_on_first_lease_and_stops_on_last() {
        let broker_config = config(serde_json::json!({"listen": "127.0.0.1:0"})).unwrap();
        let embedded = Arc::new(EmbeddedBroker::new(
            broker_config,
            NodeMonitor::detached("b", "mqtt-broker"),
        ));
        let first = embedded.attach().await.unwrap();
        let second = embedded.attach().await.unwrap();
        let addr = first.addr();
        assert_eq!(addr, second.addr(), "one broker for both leases");
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
        first.release().await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_ok(),
            "still running while a lease is held"
        );
        second.release().await;
        // The port is free again: it can be bound.
        tokio::net::TcpListener::bind(addr).await.unwrap();
    }
}
