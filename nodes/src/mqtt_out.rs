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

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::QoS;
use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, Msg, NodeCtx, NodeError, NodeSpec, NodeType, TaskNode, Value,
};
use serde::Deserialize;

use crate::mqtt_broker::MqttBroker;
use crate::mqtt_conn::{self, BrokerHandle, PublishError};
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
}

struct MqttOutNode {
    broker: Arc<BrokerHandle>,
    topic: Option<String>,
    qos: Option<QoS>,
    retain: Option<bool>,
    max_packet: usize,
}

impl NodeType for MqttOut {
    const TYPE: &'static str = "mqtt-out";
    const SUMMARY: &'static str = "Publishes msg.payload to MQTT; QoS 1/2 messages finish only when the broker has acknowledged them.";
    type Config = MqttOutConfig;

    fn build(config: MqttOutConfig, ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        let broker = ctx.config::<MqttBroker>("broker", &config.broker)?;
        let topic = config.topic.filter(|t| !t.is_empty());
        if let Some(topic) = &topic {
            mqtt_conn::check_topic(topic).map_err(|e| BuildError::field("topic", e))?;
        }
        let qos = config.qos.as_ref().map(|q| q.parse("qos")).transpose()?;
        let max_packet = broker.settings().max_packet_size;
        Ok(NodeSpec::task(
            true,
            0,
            MqttOutNode {
                broker,
                topic,
                qos,
                retain: config.retain,
                max_packet,
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
    /// Topic, QoS, retain and payload for `msg`, or what is wrong with it.
    fn prepare(&self, msg: &Msg) -> Result<(String, QoS, bool, Bytes), String> {
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
        let payload = encode(msg.payload());
        // Fixed header (5) + topic length (2) + topic + packet id (2).
        let size = payload.len() + topic.len() + 9;
        if size > self.max_packet {
            return Err(format!(
                "message of {size} bytes is larger than the broker's max_packet_size ({} bytes)",
                self.max_packet
            ));
        }
        Ok((topic, qos, retain, payload))
    }
}

#[runnel_engine::async_trait]
impl TaskNode for MqttOutNode {
    async fn run(self: Box<Self>, ctx: &mut NodeCtx) -> Result<(), NodeError> {
        if let Some(embedded) = self.broker.embedded() {
            return crate::mqtt_embedded::run_out(ctx, embedded, |msg| self.prepare(msg)).await;
        }
        let lease = self.broker.attach(ctx.monitor().clone());
        while let Some(msg) = ctx.recv().await {
            let (topic, qos, retain, payload) = match self.prepare(&msg) {
                Ok(prepared) => prepared,
                Err(error) => {
                    ctx.report_error(NodeError::new(error).with_msg(msg));
                    continue;
                }
            };
            if let Err(PublishError::Closed(msg)) =
                lease.publish(topic, qos, retain, payload, msg).await
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
    use super::*;

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
