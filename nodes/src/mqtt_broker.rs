//! `mqtt-broker`: a config node holding one MQTT connection, shared by every
//! `mqtt-in` and `mqtt-out` node that names it in `broker:`.
//!
//! ```yaml
//! config:
//!   - id: broker
//!     type: mqtt-broker
//!     host: "${MQTT_HOST:-127.0.0.1}"
//!     port: 1883
//!     username: "${MQTT_USER}"
//!     password: "${MQTT_PASSWORD}"
//! ```
//!
//! Building does no I/O. The connection opens when the first node using it
//! starts and closes when the last one stops (see `mqtt_conn`).
//!
//! `protocol: "5"` connects with MQTT 5 (rumqttc's v5 client, same
//! connection code): `mqtt-in` then sets the message properties
//! (`msg.userProperties`, `msg.responseTopic`, ...) and `mqtt-out` sends
//! them. A persistent session is sent with a session expiry interval
//! (`session_expiry`, default never) so that it survives a reconnect.
//!
//! With `embedded:` instead of `host:`, runnel runs the broker itself (see
//! `mqtt_embedded`): outside clients connect to `listen`, and the flow's
//! `mqtt-in`/`mqtt-out` nodes talk to it in process, without a socket.
//!
//! ```yaml
//! config:
//!   - id: broker
//!     type: mqtt-broker
//!     embedded:
//!       listen: "${MQTT_LISTEN:-127.0.0.1:1883}"
//! ```

use std::sync::Arc;

use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{BuildCtx, BuildError, ConfigNodeType, Duration};
use serde::Deserialize;

use crate::mqtt_conn::{self, BrokerHandle, Protocol, Secret, Settings, TlsFiles, Will};

/// The `mqtt-broker` config node type.
#[derive(Debug)]
pub struct MqttBroker;

/// Config of `mqtt-broker`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttBrokerConfig {
    /// Broker host name or IP address. Required unless `embedded` is set.
    #[serde(default)]
    pub host: String,
    /// Broker port (default 1883; 8883 is usual with `tls`). A string is
    /// accepted so that `"${MQTT_PORT:-1883}"` works.
    #[serde(default)]
    pub port: Option<PortValue>,
    /// MQTT client id. Default: `runnel-<flow>-<this node's id>`, stable
    /// across restarts so that a persistent session is found again. Two
    /// processes connecting with one client id kick each other off: give
    /// replicas distinct ids.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name (use `${ENV}`, e.g. `"${MQTT_USER}"`; empty means none).
    #[serde(default)]
    pub username: Option<String>,
    /// Password (use `${ENV}`; never logged or shown).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Keep-alive interval (default `60s`).
    #[serde(default)]
    pub keepalive: Option<Duration>,
    /// Start a clean session on every connect (default `false`). With
    /// `false` the broker keeps the subscriptions and queues QoS 1/2
    /// messages while runnel is away, which at-least-once delivery needs.
    #[serde(default)]
    pub clean_session: bool,
    /// MQTT protocol version: `"3.1.1"` (the default; `"4"` means the
    /// same) or `"5"` (also `"5.0"`). MQTT 5 adds message properties
    /// (`msg.userProperties`, `msg.responseTopic`, `msg.correlationData`,
    /// `msg.contentType`, `msg.messageExpiryInterval`) on `mqtt-in` and
    /// `mqtt-out`, and `session_expiry`. Not with `embedded`, which speaks
    /// MQTT 3.1.1 only.
    #[serde(default)]
    pub protocol: Option<String>,
    /// MQTT 5 with `clean_session: false`: how long the broker keeps the
    /// session (subscriptions, queued QoS 1/2 messages) after runnel
    /// disconnects, e.g. `"7d"` (whole seconds). Default: it never
    /// expires, like a 3.1.1 persistent session.
    #[serde(default)]
    pub session_expiry: Option<Duration>,
    /// Message the broker publishes if runnel disappears without
    /// disconnecting.
    #[serde(default)]
    pub will: Option<WillConfig>,
    /// Connect with TLS (rustls).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Most packet bytes accepted or sent (default 16 MiB). On MQTT 3.1.1
    /// a larger incoming packet breaks the connection (rumqttc cannot skip
    /// it); keep `mqtt-in`'s `max_payload` below this to report oversized
    /// messages instead. MQTT 5 tells the broker, which then drops larger
    /// messages for runnel.
    #[serde(default)]
    pub max_packet_size: Option<usize>,
    /// Most outgoing QoS 1/2 messages waiting for the broker's ack, across
    /// all `mqtt-out` nodes (default 100); `mqtt-out` waits beyond that, so
    /// back-pressure reaches the flow.
    #[serde(default)]
    pub max_inflight: Option<u16>,
    /// First reconnect delay (default `250ms`); doubles per failure, with
    /// jitter, up to `reconnect_max`.
    #[serde(default)]
    pub reconnect_min: Option<Duration>,
    /// Longest reconnect delay (default `10s`).
    #[serde(default)]
    pub reconnect_max: Option<Duration>,
    /// Most QoS 0 messages queued per `mqtt-in` node before new ones are
    /// dropped and counted (default 10000). QoS 1/2 are never dropped.
    #[serde(default)]
    pub qos0_buffer: Option<usize>,
    /// Run an MQTT broker inside runnel instead of connecting to one
    /// (leave out `host` and the other connection settings). It starts when
    /// the first `mqtt-in`/`mqtt-out` node using it runs and stops with the
    /// last; those nodes exchange messages with it in process.
    #[serde(default)]
    pub embedded: Option<crate::mqtt_embedded::EmbeddedConfig>,
}

/// A port as a number or as text (after `${VAR}` substitution).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PortValue {
    /// `1883`.
    Number(u16),
    /// `"1883"`.
    Text(String),
}

/// A last will.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WillConfig {
    /// Topic of the will message.
    pub topic: String,
    /// Payload text (default empty).
    #[serde(default)]
    pub payload: String,
    /// QoS 0, 1 or 2 (default 0).
    #[serde(default)]
    pub qos: u8,
    /// Retain the will message (default false).
    #[serde(default)]
    pub retain: bool,
}

/// TLS settings. Files are read when connecting, not when the flow loads.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the broker's certificate.
    pub ca_file: String,
    /// PEM client certificate, for mutual TLS (with `key_file`).
    #[serde(default)]
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<String>,
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// The MQTT 5 session expiry interval in seconds: 0 for a clean session,
/// `u32::MAX` (never) unless configured.
fn session_expiry(clean_session: bool, configured: Option<Duration>) -> Result<u32, BuildError> {
    match (clean_session, configured) {
        (true, None) => Ok(0),
        (true, Some(_)) => Err(BuildError::field(
            "session_expiry",
            "session_expiry is for persistent sessions; leave it out or set clean_session: false",
        )),
        (false, None) => Ok(u32::MAX),
        (false, Some(duration)) => {
            let seconds = duration.get().as_secs();
            if seconds == 0 {
                return Err(BuildError::field(
                    "session_expiry",
                    "session_expiry must be at least 1s (use clean_session: true for a session that ends with the connection)",
                ));
            }
            Ok(u32::try_from(seconds).unwrap_or(u32::MAX))
        }
    }
}

/// `runnel-<flow>-<node>`: the same on every start of the same flow file.
fn default_client_id(flow: &runnel_engine::FlowId, node: &runnel_engine::NodeId) -> String {
    format!("runnel-{flow}-{node}")
}

impl MqttBroker {
    fn settings(config: MqttBrokerConfig, ctx: &BuildCtx<'_>) -> Result<Settings, BuildError> {
        if config.host.trim().is_empty() {
            return Err(BuildError::field(
                "host",
                "empty host, expected a host name or IP address",
            ));
        }
        let port = match config.port {
            None => 1883,
            Some(PortValue::Number(0)) => {
                return Err(BuildError::field("port", "port 0, expected 1-65535"));
            }
            Some(PortValue::Number(port)) => port,
            Some(PortValue::Text(text)) => match text.trim().parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => {
                    return Err(BuildError::field(
                        "port",
                        format!("invalid port {text:?}, expected a number 1-65535"),
                    ));
                }
            },
        };
        let v5 = match config.protocol.as_deref().map(str::trim) {
            None | Some("3.1.1" | "4") => false,
            Some("5" | "5.0") => true,
            Some(other) => {
                return Err(BuildError::field(
                    "protocol",
                    format!("unsupported protocol {other:?}, expected \"3.1.1\" or \"5\""),
                ));
            }
        };
        let protocol = if v5 {
            Protocol::V5 {
                session_expiry: session_expiry(config.clean_session, config.session_expiry)?,
            }
        } else {
            if config.session_expiry.is_some() {
                return Err(BuildError::field(
                    "session_expiry",
                    "session_expiry needs protocol \"5\" (an MQTT 3.1.1 session has no expiry)",
                ));
            }
            Protocol::V311
        };
        let client_id = non_empty(config.client_id)
            .unwrap_or_else(|| default_client_id(ctx.flow(), ctx.node_id()));
        let username = non_empty(config.username);
        let password = config.password.filter(|p| !p.0.is_empty());
        if password.is_some() && username.is_none() {
            return Err(BuildError::field(
                "password",
                "a password without a username; MQTT 3.1.1 needs both",
            ));
        }
        let will = match config.will {
            None => None,
            Some(will) => {
                mqtt_conn::check_topic(&will.topic).map_err(|e| BuildError::field("will", e))?;
                let qos = mqtt_conn::qos_from(will.qos)
                    .ok_or_else(|| BuildError::field("will", "qos must be 0, 1 or 2"))?;
                Some(Will {
                    topic: will.topic,
                    payload: will.payload,
                    qos,
                    retain: will.retain,
                })
            }
        };
        let tls = match config.tls {
            None => None,
            Some(tls) => {
                if tls.cert_file.is_some() != tls.key_file.is_some() {
                    return Err(BuildError::field(
                        "tls",
                        "cert_file and key_file go together (mutual TLS needs both)",
                    ));
                }
                Some(TlsFiles {
                    ca_file: tls.ca_file,
                    client_cert_file: tls.cert_file,
                    client_key_file: tls.key_file,
                })
            }
        };
        let keepalive = config
            .keepalive
            .map_or(std::time::Duration::from_secs(60), Duration::get);
        if keepalive < std::time::Duration::from_secs(1) {
            return Err(BuildError::field(
                "keepalive",
                "keepalive must be at least 1s",
            ));
        }
        if v5 && keepalive < std::time::Duration::from_secs(5) {
            return Err(BuildError::field(
                "keepalive",
                "keepalive must be at least 5s with protocol \"5\"",
            ));
        }
        let max_packet_size = config.max_packet_size.unwrap_or(16 * 1024 * 1024);
        if !(1024..=268_435_455).contains(&max_packet_size) {
            return Err(BuildError::field(
                "max_packet_size",
                "max_packet_size must be between 1024 and 268435455 bytes",
            ));
        }
        let max_inflight = config.max_inflight.unwrap_or(100);
        if max_inflight == 0 || max_inflight > 65_000 {
            return Err(BuildError::field(
                "max_inflight",
                "max_inflight must be 1-65000",
            ));
        }
        let reconnect_min = config
            .reconnect_min
            .map_or(std::time::Duration::from_millis(250), Duration::get)
            .max(std::time::Duration::from_millis(10));
        let reconnect_max = config
            .reconnect_max
            .map_or(std::time::Duration::from_secs(10), Duration::get)
            .max(reconnect_min);
        Ok(Settings {
            host: config.host,
            port,
            client_id,
            username,
            password,
            keepalive,
            clean_session: config.clean_session,
            protocol,
            will,
            tls,
            max_packet_size,
            max_inflight,
            reconnect_min,
            reconnect_max,
            connect_timeout: std::time::Duration::from_secs(5),
            qos0_buffer: config.qos0_buffer.unwrap_or(10_000).max(1),
        })
    }
}

impl ConfigNodeType for MqttBroker {
    const TYPE: &'static str = "mqtt-broker";
    const SUMMARY: &'static str = "An MQTT 3.1.1 or 5 broker connection (TLS, credentials, persistent session), shared by mqtt-in and mqtt-out.";
    type Config = MqttBrokerConfig;
    type Handle = BrokerHandle;

    fn build(config: Self::Config, ctx: &BuildCtx<'_>) -> Result<Arc<BrokerHandle>, BuildError> {
        if config.embedded.is_some() {
            if let Some(protocol) = &config.protocol
                && matches!(protocol.trim(), "5" | "5.0")
            {
                return Err(BuildError::field(
                    "protocol",
                    format!(
                        "protocol {protocol:?} with `embedded`: the embedded broker speaks MQTT 3.1.1 only; leave out `protocol`, or connect to an external MQTT 5 broker with `host`"
                    ),
                ));
            }
            return crate::mqtt_embedded::build_handle(config, ctx);
        }
        let settings = MqttBroker::settings(config, ctx)?;
        Ok(Arc::new(BrokerHandle::new(settings, ctx.monitor())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::path::Path;

    use runnel_engine::{EngineSettings, EngineShared, Loader, Registry};

    use super::*;

    fn registry() -> Arc<Registry> {
        let mut registry = Registry::new();
        registry.register_config::<MqttBroker>();
        registry.register::<crate::mqtt_out::MqttOut>();
        registry.into_shared()
    }

    fn load(config: &str) -> Result<String, String> {
        let text = format!(
            "config:\n  - {config}\nnodes:\n  - {{id: out, type: mqtt-out, broker: b, topic: t}}\n"
        );
        let loader = Loader::new(registry(), EngineShared::new(EngineSettings::default()));
        let env: std::collections::HashMap<String, String> =
            [("PW".to_string(), "hunter2".to_string())].into();
        loader
            .load_with_env(Path::new("flow.yaml"), &text, &env)
            .map(|flow| format!("{:?}", flow.nodes))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_a_full_config_and_builds_without_io() {
        load("{id: b, type: mqtt-broker, host: 127.0.0.1, port: \"1\", username: u, password: \"${PW}\", keepalive: 5s, clean_session: true, will: {topic: status, payload: gone, qos: 1, retain: true}, max_inflight: 10}")
            .unwrap();
    }

    #[test]
    fn rejects_bad_fields_with_their_names() {
        let error = load("{id: b, type: mqtt-broker, host: h, port: \"x\"}").unwrap_err();
        assert!(error.contains("port"), "{error}");
        let error = load("{id: b, type: mqtt-broker, host: h, protocol: \"3\"}").unwrap_err();
        assert!(error.contains("protocol"), "{error}");
        let error = load("{id: b, type: mqtt-broker, host: h, hots: x}").unwrap_err();
        assert!(error.contains("hots"), "{error}");
        let error = load("{id: b, type: mqtt-broker, host: h, tls: {ca_file: a, cert_file: c}}")
            .unwrap_err();
        assert!(error.contains("key_file"), "{error}");
    }

    #[test]
    fn mqtt5_is_accepted_with_its_own_checks() {
        load("{id: b, type: mqtt-broker, host: h, protocol: \"5\"}").unwrap();
        load("{id: b, type: mqtt-broker, host: h, protocol: \"5.0\", session_expiry: 1h}").unwrap();
        load("{id: b, type: mqtt-broker, host: h, protocol: \"4\"}").unwrap();
        let error = load("{id: b, type: mqtt-broker, host: h, protocol: \"5\", keepalive: 2s}")
            .unwrap_err();
        assert!(error.contains("keepalive"), "{error}");
        let error = load("{id: b, type: mqtt-broker, host: h, session_expiry: 1h}").unwrap_err();
        assert!(error.contains("session_expiry"), "{error}");
        let error = load(
            "{id: b, type: mqtt-broker, host: h, protocol: \"5\", clean_session: true, session_expiry: 1h}",
        )
        .unwrap_err();
        assert!(error.contains("session_expiry"), "{error}");
    }

    #[test]
    fn embedded_broker_refuses_mqtt5_by_field() {
        let error = load(
            "{id: b, type: mqtt-broker, protocol: \"5\", embedded: {listen: \"127.0.0.1:0\"}}",
        )
        .unwrap_err();
        assert!(error.contains("protocol"), "{error}");
        assert!(error.contains("3.1.1 only"), "{error}");
    }

    #[test]
    fn session_expiry_defaults_to_never_for_persistent_sessions() {
        assert_eq!(session_expiry(true, None).unwrap(), 0);
        assert_eq!(session_expiry(false, None).unwrap(), u32::MAX);
        let day = Duration(std::time::Duration::from_secs(86_400));
        assert_eq!(session_expiry(false, Some(day)).unwrap(), 86_400);
        let zero = Duration(std::time::Duration::from_millis(500));
        assert!(session_expiry(false, Some(zero)).is_err());
    }

    #[test]
    fn default_client_id_is_stable_and_password_hidden() {
        let flow = runnel_engine::FlowId::new("pipe");
        let node = runnel_engine::NodeId::new("broker");
        assert_eq!(default_client_id(&flow, &node), "runnel-pipe-broker");
        let config: MqttBrokerConfig = serde_json::from_value(serde_json::json!({
            "host": "h", "username": "u", "password": "hunter2"
        }))
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
