//! `mqtt-out`: publishes `msg.payload` to an `mqtt-broker`.
//!
//! ```yaml
//! - id: publish
//!   type: mqtt-out
//!   broker: broker
//!   topic: car-iotp/location    # or leave out and set msg.topic
//!   qos: 1
//! ```
//!
//! Payloads: objects and arrays are sent as JSON, strings as UTF-8 text,
//! bytes as they are, numbers and booleans as their text, null as an empty
//! payload. A QoS 1/2 message counts as finished (for the completion of
//! the message that caused it, e.g. an `mqtt-in` ack) only once the broker
//! has acknowledged it (PUBACK, PUBCOMP); QoS 0 once written to the
//! network. At most the broker's `max_inflight` messages wait for acks;
//! beyond that the node waits, and back-pressure reaches upstream.
//!
//! On an MQTT 5 broker (`protocol: "5"`) the message's properties are sent
//! too, named as in Node-RED: `msg.userProperties` (object of strings),
//! `msg.responseTopic`, `msg.correlationData` (bytes or text),
//! `msg.contentType`, `msg.messageExpiryInterval` (seconds) and
//! `msg.payloadFormatIndicator`. The node's own `user_properties`,
//! `response_topic`, `correlation_data`, `content_type` and
//! `message_expiry` replace the message's when set. A property of the wrong
//! type sends the message to `catch` instead of publishing it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use rumqttc::QoS;
use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, Duration, Msg, NodeCtx, NodeError, NodeSpec, NodeType, TaskNode, Value,
};
use serde::Deserialize;

use crate::mqtt_broker::MqttBroker;
use crate::mqtt_conn::{self, BrokerHandle, Properties, Protocol, PublishError};
use crate::mqtt_in::QosValue;

/// The `mqtt-out` node type.
#[derive(Debug)]
pub struct MqttOut;

/// Config of `mqtt-out`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttOutConfig {
    /// Id of the `mqtt-broker` config node.
    pub broker: String,
    /// Topic to publish to (no wildcards). When absent, `msg.topic` is used.
    #[serde(default)]
    pub topic: Option<String>,
    /// QoS 0, 1 or 2. When absent, `msg.qos` is used, else 0.
    #[serde(default)]
    pub qos: Option<QosValue>,
    /// Retain flag. When absent, `msg.retain` is used, else false.
    #[serde(default)]
    pub retain: Option<bool>,
    /// MQTT 5 user properties (name: text) sent with every message,
    /// instead of `msg.userProperties`. Needs `protocol: "5"` on the broker,
    /// like the properties below.
    #[serde(default)]
    pub user_properties: Option<BTreeMap<String, String>>,
    /// MQTT 5 response topic, instead of `msg.responseTopic`.
    #[serde(default)]
    pub response_topic: Option<String>,
    /// MQTT 5 correlation data (sent as the text's UTF-8 bytes), instead of
    /// `msg.correlationData`.
    #[serde(default)]
    pub correlation_data: Option<String>,
    /// MQTT 5 content type (e.g. `application/json`), instead of
    /// `msg.contentType`.
    #[serde(default)]
    pub content_type: Option<String>,
    /// MQTT 5 message expiry interval (e.g. `"10m"`, whole seconds): the
    /// broker discards the message if it cannot deliver it by then.
    /// Instead of `msg.messageExpiryInterval`.
    #[serde(default)]
    pub message_expiry: Option<Duration>,
}

struct MqttOutNode {
    broker: Arc<BrokerHandle>,
    topic: Option<String>,
    qos: Option<QoS>,
    retain: Option<bool>,
    max_packet: usize,
    /// MQTT 5 connection: send properties.
    v5: bool,
    /// Properties from the config, which replace the message's.
    overrides: Properties,
}

/// What one message publishes.
struct Prepared {
    topic: String,
    qos: QoS,
    retain: bool,
    payload: Bytes,
    properties: Option<Properties>,
}

/// The MQTT 5 properties set in the config; an error names the field.
fn config_properties(config: &MqttOutConfig) -> Result<Properties, BuildError> {
    let response_topic = config.response_topic.clone().filter(|t| !t.is_empty());
    if let Some(topic) = &response_topic {
        mqtt_conn::check_topic(topic).map_err(|e| BuildError::field("response_topic", e))?;
    }
    let message_expiry_interval = match config.message_expiry {
        None => None,
        Some(duration) => Some(u32::try_from(duration.get().as_secs()).map_err(|_| {
            BuildError::field(
                "message_expiry",
                "message_expiry is above 4294967295 seconds",
            )
        })?),
    };
    Ok(Properties {
        user: config
            .user_properties
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        response_topic,
        correlation_data: config
            .correlation_data
            .as_ref()
            .map(|text| Bytes::copy_from_slice(text.as_bytes())),
        content_type: config.content_type.clone(),
        message_expiry_interval,
        payload_format_indicator: None,
    })
}

impl NodeType for MqttOut {
    const TYPE: &'static str = "mqtt-out";
    const SUMMARY: &'static str = "Publishes msg.payload to MQTT; QoS 1/2 messages finish only when the broker has acknowledged them.";
    type Config = MqttOutConfig;

    fn build(config: MqttOutConfig, ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        let broker = ctx.config::<MqttBroker>("broker", &config.broker)?;
        let overrides = config_properties(&config)?;
        let topic = config.topic.clone().filter(|t| !t.is_empty());
        if let Some(topic) = &topic {
            mqtt_conn::check_topic(topic).map_err(|e| BuildError::field("topic", e))?;
        }
        let qos = config.qos.as_ref().map(|q| q.parse("qos")).transpose()?;
        let max_packet = broker.settings().max_packet_size;
        let v5 = matches!(broker.settings().protocol, Protocol::V5 { .. })
            && broker.embedded().is_none();
        if !v5 && !overrides.is_empty() {
            let field = [
                ("user_properties", config.user_properties.is_some()),
                ("response_topic", config.response_topic.is_some()),
                ("correlation_data", config.correlation_data.is_some()),
                ("content_type", config.content_type.is_some()),
                ("message_expiry", config.message_expiry.is_some()),
            ]
            .into_iter()
            .find_map(|(field, set)| set.then_some(field))
            .unwrap_or("user_properties");
            let fix = if broker.embedded().is_some() {
                "the embedded broker speaks MQTT 3.1.1 only".to_string()
            } else {
                format!("set protocol: \"5\" on the mqtt-broker {:?}", config.broker)
            };
            return Err(BuildError::field(
                field,
                format!("`{field}` is an MQTT 5 property: {fix}"),
            ));
        }
        Ok(NodeSpec::task(
            true,
            0,
            MqttOutNode {
                broker,
                topic,
                qos,
                retain: config.retain,
                max_packet,
                v5,
                overrides,
            },
        ))
    }
}

/// The bytes sent for a payload.
pub(crate) fn encode(payload: &Value) -> Bytes {
    match payload {
        Value::Null => Bytes::new(),
        Value::String(text) => Bytes::copy_from_slice(text.as_bytes()),
        Value::Bytes(bytes) => bytes.clone(),
        other => Bytes::from(other.to_json_string().into_bytes()),
    }
}

impl MqttOutNode {
    /// Topic, QoS, retain, payload and properties for `msg`, or what is
    /// wrong with it.
    fn prepare(&self, msg: &Msg) -> Result<Prepared, String> {
        let topic = match (&self.topic, msg.topic()) {
            (Some(topic), _) => topic.clone(),
            (None, Some(topic)) => {
                mqtt_conn::check_topic(topic)?;
                topic.to_string()
            }
            (None, None) => {
                return Err("no topic: set `topic` on the node or a string msg.topic".to_string());
            }
        };
        let qos = match self.qos {
            Some(qos) => qos,
            None => match msg.props().get("qos") {
                None | Some(Value::Null) => QoS::AtMostOnce,
                Some(value) => value
                    .as_i64()
                    .and_then(|n| u8::try_from(n).ok())
                    .and_then(mqtt_conn::qos_from)
                    .ok_or_else(|| {
                        format!("invalid msg.qos {}, expected 0, 1 or 2", value.to_text())
                    })?,
            },
        };
        let retain = match self.retain {
            Some(retain) => retain,
            None => msg
                .props()
                .get("retain")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        let properties = if self.v5 {
            let mut properties = Properties::from_msg(msg)?;
            properties.override_with(&self.overrides);
            (!properties.is_empty()).then_some(properties)
        } else {
            None
        };
        let payload = encode(msg.payload());
        // Fixed header (5) + topic length (2) + topic + packet id (2), and
        // on MQTT 5 the properties (their length at least 1 byte).
        let size = payload.len()
            + topic.len()
            + 9
            + properties
                .as_ref()
                .map_or(usize::from(self.v5), Properties::encoded_len);
        if size > self.max_packet {
            return Err(format!(
                "message of {size} bytes is larger than the broker's max_packet_size ({} bytes)",
                self.max_packet
            ));
        }
        Ok(Prepared {
            topic,
            qos,
            retain,
            payload,
            properties,
        })
    }
}

#[runnel_engine::async_trait]
impl TaskNode for MqttOutNode {
    async fn run(self: Box<Self>, ctx: &mut NodeCtx) -> Result<(), NodeError> {
        if let Some(embedded) = self.broker.embedded() {
            return crate::mqtt_embedded::run_out(ctx, embedded, |msg| {
                self.prepare(msg)
                    .map(|p| (p.topic, p.qos, p.retain, p.payload))
            })
            .await;
        }
        let lease = self.broker.attach(ctx.monitor().clone());
        while let Some(msg) = ctx.recv().await {
            let prepared = match self.prepare(&msg) {
                Ok(prepared) => prepared,
                Err(error) => {
                    ctx.report_error(NodeError::new(error).with_msg(msg));
                    continue;
                }
            };
            let Prepared {
                topic,
                qos,
                retain,
                payload,
                properties,
            } = prepared;
            if let Err(PublishError::Closed(msg)) = lease
                .publish(topic, qos, retain, payload, properties, msg)
                .await
            {
                ctx.report_error(
                    NodeError::new("the broker connection is closed; message not sent")
                        .with_msg(msg),
                );
            }
        }
        if lease.held() > 0 {
            tracing::warn!(node = %ctx.node_id(), held = lease.held(), "mqtt-out stopping with messages not yet acknowledged by the broker");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::path::Path;

    use runnel_engine::{EngineSettings, EngineShared, Loader, Registry};

    use super::*;

    fn load(protocol: &str, out: &str) -> Result<(), String> {
        let mut registry = Registry::new();
        registry.register_config::<MqttBroker>();
        registry.register::<MqttOut>();
        let text = format!(
            "config:\n  - {{id: b, type: mqtt-broker, host: h, protocol: \"{protocol}\"}}\nnodes:\n  - {{id: out, type: mqtt-out, broker: b, topic: t, {out}}}\n"
        );
        let loader = Loader::new(
            registry.into_shared(),
            EngineShared::new(EngineSettings::default()),
        );
        loader
            .load_with_env(
                Path::new("flow.yaml"),
                &text,
                &std::collections::HashMap::new(),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn mqtt5_properties_in_the_config_need_an_mqtt5_broker() {
        let config = "content_type: text/plain, user_properties: {a: b}, message_expiry: 1m, response_topic: r, correlation_data: c";
        load("5", config).unwrap();
        let error = load("3.1.1", "content_type: text/plain").unwrap_err();
        assert!(error.contains("content_type"), "{error}");
        assert!(error.contains("protocol"), "{error}");
        let error = load("5", "response_topic: \"a/+\"").unwrap_err();
        assert!(error.contains("response_topic"), "{error}");
    }

    #[test]
    fn payloads_encode_like_node_red() {
        let object = Value::from(serde_json::json!({"lat": 1.5, "tags": ["a"]}));
        assert_eq!(
            encode(&object),
            Bytes::from_static(br#"{"lat":1.5,"tags":["a"]}"#)
        );
        assert_eq!(encode(&Value::from("héllo")), Bytes::from("héllo"));
        assert_eq!(encode(&Value::from(42_i64)), Bytes::from_static(b"42"));
        assert_eq!(encode(&Value::from(true)), Bytes::from_static(b"true"));
        assert_eq!(encode(&Value::Null), Bytes::new());
        let raw = Bytes::from_static(&[0, 0xff]);
        assert_eq!(encode(&Value::Bytes(raw.clone())), raw);
    }
}
