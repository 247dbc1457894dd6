//! Broker configuration: typed, `deny_unknown_fields`, validated.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Broker configuration. Every limit has a default; see `docs/broker.md`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// TCP listen address used by [`crate::Broker::start`].
    pub listen: SocketAddr,
    /// Optional MQTT-over-TLS listener.
    pub tls: Option<TlsListenerConfig>,
    /// Optional MQTT-over-WebSocket listener.
    pub websocket: Option<WebSocketListenerConfig>,
    /// Connections held at once (all listeners together); one more is closed right after accept.
    pub max_connections: usize,
    /// Largest packet accepted (fixed header included); a larger one
    /// closes the connection.
    pub max_packet_size: usize,
    /// Time a new connection has to send its CONNECT.
    #[serde(deserialize_with = "human_duration")]
    pub connect_timeout: Duration,
    /// Messages waiting for one client (or one in-process subscription),
    /// in addition to the `max_inflight` ones sent but not acknowledged.
    pub max_queued_per_client: usize,
    /// QoS 1/2 messages sent to a client and not yet acknowledged.
    pub max_inflight: u16,
    /// How long a QoS 1/2 delivery may wait for room in a connected
    /// subscriber's queue before that subscriber is disconnected as a slow
    /// consumer. `None`: wait forever (pure back-pressure).
    #[serde(deserialize_with = "human_duration_opt")]
    pub slow_consumer_timeout: Option<Duration>,
    /// Subscriptions one client may hold; more get SUBACK 0x80.
    pub max_subscriptions_per_client: usize,
    /// Retained messages held; a new retained topic past the limit is not
    /// retained (still delivered) and is counted in `retained_refused`.
    pub max_retained_messages: usize,
    /// An offline persistent session is discarded after this long.
    /// `None`: kept until the client cleans it (Mosquitto's default too).
    #[serde(deserialize_with = "human_duration_opt")]
    pub session_expiry: Option<Duration>,
    /// Whether clients without a username may connect.
    pub allow_anonymous: bool,
    /// Username/password pairs. Empty: any credentials are accepted.
    pub users: Vec<UserConfig>,
    /// Per-topic allow rules. Empty: everything is allowed.
    pub acl: Vec<AclRule>,
    /// Where persistent sessions and retained messages are saved on
    /// shutdown and reloaded on start. `None`: kept in memory only.
    pub data_dir: Option<PathBuf>,
    /// With `data_dir`, also save a snapshot this often (a crash loses at
    /// most this much); `None`: only on shutdown.
    #[serde(deserialize_with = "human_duration_opt")]
    pub persist_interval: Option<Duration>,
    /// Period of `$SYS/broker/...` statistics; `None` disables them.
    #[serde(deserialize_with = "human_duration_opt")]
    pub sys_interval: Option<Duration>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            tls: None,
            websocket: None,
            max_connections: 100_000,
            max_packet_size: 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_queued_per_client: 1000,
            max_inflight: 64,
            slow_consumer_timeout: Some(Duration::from_secs(30)),
            max_subscriptions_per_client: 1000,
            max_retained_messages: 100_000,
            session_expiry: None,
            allow_anonymous: true,
            users: Vec::new(),
            acl: Vec::new(),
            data_dir: None,
            persist_interval: Some(Duration::from_secs(60)),
            sys_interval: Some(Duration::from_secs(10)),
        }
    }
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("listen", &self.listen)
            .field("tls", &self.tls)
            .field("websocket", &self.websocket)
            .field("max_connections", &self.max_connections)
            .field("max_packet_size", &self.max_packet_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_queued_per_client", &self.max_queued_per_client)
            .field("max_inflight", &self.max_inflight)
            .field("slow_consumer_timeout", &self.slow_consumer_timeout)
            .field(
                "max_subscriptions_per_client",
                &self.max_subscriptions_per_client,
            )
            .field("max_retained_messages", &self.max_retained_messages)
            .field("session_expiry", &self.session_expiry)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("users", &self.users)
            .field("acl", &self.acl)
            .field("data_dir", &self.data_dir)
            .field("persist_interval", &self.persist_interval)
            .field("sys_interval", &self.sys_interval)
            .finish()
    }
}

/// A TLS listener: address, PEM certificate chain and PEM private key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A WebSocket listener (MQTT in binary frames, subprotocol `mqtt`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketListenerConfig {
    pub listen: SocketAddr,
}

/// A user allowed to connect. The password never appears in `Debug`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What an ACL rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Publish,
    Subscribe,
    Both,
}

/// Allows (or with `deny: true`, forbids) `access` on topics matched by
/// `topic` (a filter; `%u` is replaced by the username and `%c` by the
/// client id) to `username`, or to every client when `username` is `None`.
/// Deny rules win; with no allow rules, everything not denied is allowed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    #[serde(default)]
    pub username: Option<String>,
    pub topic: String,
    pub access: Access,
    #[serde(default)]
    pub deny: bool,
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} must be at least {min}")]
    TooSmall { field: &'static str, min: usize },
    #[error("{field} is too large")]
    TooLarge { field: &'static str },
    #[error("{field} must be between 1 ms and one day")]
    OutOfRange { field: &'static str },
    #[error("acl topic {0:?} is not a valid topic filter")]
    InvalidAclTopic(String),
}

impl BrokerConfig {
    /// Checks values serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let at_least = |field, value: usize, min| {
            if value < min {
                Err(ConfigError::TooSmall { field, min })
            } else {
                Ok(())
            }
        };
        at_least("max_connections", self.max_connections, 1)?;
        at_least("max_packet_size", self.max_packet_size, 64)?;
        at_least("max_queued_per_client", self.max_queued_per_client, 1)?;
        at_least("max_inflight", usize::from(self.max_inflight), 1)?;
        if self.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ConfigError::TooLarge {
                field: "max_connections",
            });
        }
        let day = Duration::from_secs(86_400);
        for (field, value) in [
            ("connect_timeout", Some(self.connect_timeout)),
            ("persist_interval", self.persist_interval),
            ("sys_interval", self.sys_interval),
            ("slow_consumer_timeout", self.slow_consumer_timeout),
        ] {
            if value.is_some_and(|v| v > day || v.is_zero()) {
                return Err(ConfigError::OutOfRange { field });
            }
        }
        for rule in &self.acl {
            let probe = rule.topic.replace("%u", "u").replace("%c", "c");
            if crate::topic::validate_topic_filter(&probe).is_err() {
                return Err(ConfigError::InvalidAclTopic(rule.topic.clone()));
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationRepr {
    Seconds(u64),
    Text(String),
}

fn parse_duration(repr: DurationRepr) -> Result<Duration, String> {
    match repr {
        DurationRepr::Seconds(secs) => Ok(Duration::from_secs(secs)),
        DurationRepr::Text(text) => humantime::parse_duration(&text).map_err(|e| e.to_string()),
    }
}

/// Accepts `10` (seconds) or `"10s"`, `"500ms"`.
fn human_duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    parse_duration(DurationRepr::deserialize(de)?).map_err(serde::de::Error::custom)
}

fn human_duration_opt<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    Option::<DurationRepr>::deserialize(de)?
        .map(parse_duration)
        .transpose()
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hides_passwords() {
        let config: BrokerConfig = serde_json::from_str(
            r#"{"listen":"0.0.0.0:1884","connect_timeout":"2s","sys_interval":null,
                "users":[{"username":"alice","password":"s3cret"}],
                "acl":[{"username":"alice","topic":"cars/%u/#","access":"both"}]}"#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.connect_timeout, Duration::from_secs(2));
        assert_eq!(config.sys_interval, None);
        let debug = format!("{config:?}");
        assert!(debug.contains("alice"));
        assert!(!debug.contains("s3cret"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<BrokerConfig>(r#"{"max_conections":1}"#).is_err());
    }
}
