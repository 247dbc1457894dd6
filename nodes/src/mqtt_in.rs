//! `mqtt-in`: subscribes to a topic filter on an `mqtt-broker` and sends
//! every message into the flow, with `msg.topic`, `msg.qos` and
//! `msg.retain` set. On an MQTT 5 broker (`protocol: "5"`) the message's
//! properties are set as in Node-RED, when present: `msg.userProperties`
//! (an object of strings; a repeated name gives an array),
//! `msg.responseTopic`, `msg.correlationData` (bytes), `msg.contentType`,
//! `msg.messageExpiryInterval` (seconds) and `msg.payloadFormatIndicator`.
//!
//! ```yaml
//! - id: sensors
//!   type: mqtt-in
//!   broker: broker
//!   topic: "$share/runnel/car-iotp/#"
//!   qos: 1
//!   datatype: auto
//!   wires: [[extract]]
//! ```
//!
//! For QoS 1 and 2 the broker is acknowledged only when the message and
//! everything derived from it has finished in the flow, so a crash or a
//! restart before that makes the broker deliver it again (at least once).
//! A payload that does not decode, or is larger than `max_payload`, goes to
//! `catch` nodes (and is acknowledged once handled); the node keeps running.
//!
//! On an `mqtt-broker` with `embedded:` the node subscribes in process
//! (same decoding, same `msg.topic`/`qos`/`retain`), and there is no
//! acknowledgement to withhold: see `docs/delivery.md`, "In-process
//! delivery".

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::QoS;
use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, Msg, NodeCtx, NodeError, NodeSpec, NodeType, TaskNode, Value,
};
use serde::Deserialize;

use crate::mqtt_broker::MqttBroker;
use crate::mqtt_conn::{self, BrokerHandle, Delivery, SubscriptionRx};

/// The `mqtt-in` node type.
#[derive(Debug)]
pub struct MqttIn;

/// How the payload bytes become `msg.payload`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// A JSON object or array when the payload parses as one, else UTF-8
    /// text, else bytes. `42` or `"x"` stay text: only objects and arrays
    /// are parsed, as with Node-RED's auto-detect.
    #[default]
    Auto,
    /// UTF-8 text; invalid UTF-8 is an error.
    Text,
    /// Any JSON value; invalid JSON is an error.
    Json,
    /// The raw bytes.
    Bytes,
}

/// Config of `mqtt-in`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttInConfig {
    /// Id of the `mqtt-broker` config node.
    pub broker: String,
    /// Topic filter, with `+` and `#` wildcards; `$share/<group>/<filter>`
    /// for a shared subscription (several subscribers split the stream).
    pub topic: String,
    /// QoS 0, 1 or 2 (default 1). With 1 and 2 messages are acknowledged
    /// only once the flow has finished them. A string is accepted so that
    /// `"${MQTT_QOS:-0}"` works.
    #[serde(default)]
    pub qos: Option<QosValue>,
    /// `auto` (default), `text`, `json` or `bytes`.
    #[serde(default)]
    pub datatype: DataType,
    /// Largest payload in bytes (default 1048576, 1 MiB); larger messages
    /// go to `catch` with `msg.payload` null and `msg.size` set.
    #[serde(default)]
    pub max_payload: Option<usize>,
}

/// A QoS level as a number or text.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum QosValue {
    /// `1`.
    Number(u8),
    /// `"1"`.
    Text(String),
}

impl QosValue {
    /// The QoS, or a build error naming `field`.
    pub(crate) fn parse(&self, field: &str) -> Result<QoS, BuildError> {
        let level = match self {
            QosValue::Number(n) => Some(*n),
            QosValue::Text(text) => text.trim().parse::<u8>().ok(),
        };
        level
            .and_then(mqtt_conn::qos_from)
            .ok_or_else(|| BuildError::field(field, "invalid qos, expected 0, 1 or 2"))
    }
}

struct MqttInNode {
    broker: Arc<BrokerHandle>,
    rx: SubscriptionRx,
    datatype: DataType,
    max_payload: usize,
    /// The filter and QoS, for an embedded broker's in-process subscription.
    filter: String,
    qos: QoS,
}

impl NodeType for MqttIn {
    const TYPE: &'static str = "mqtt-in";
    const SUMMARY: &'static str = "Subscribes to an MQTT topic filter; acknowledges QoS 1/2 only once the flow has finished each message.";
    type Config = MqttInConfig;

    fn build(config: MqttInConfig, ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        let broker = ctx.config::<MqttBroker>("broker", &config.broker)?;
        mqtt_conn::check_filter(&config.topic).map_err(|e| BuildError::field("topic", e))?;
        let qos = match &config.qos {
            Some(qos) => qos.parse("qos")?,
            None => QoS::AtLeastOnce,
        };
        let max_payload = config.max_payload.unwrap_or(1024 * 1024);
        if max_payload == 0 {
            return Err(BuildError::field("max_payload", "must be at least 1 byte"));
        }
        if max_payload > broker.settings().max_packet_size {
            return Err(BuildError::field(
                "max_payload",
                format!(
                    "{max_payload} is above the broker's max_packet_size ({}); raise that first",
                    broker.settings().max_packet_size
                ),
            ));
        }
        // Declared now, subscribed when the connection is up: no I/O here.
        let rx = broker.subscribe(ctx.node_id(), &config.topic, qos, ctx.monitor());
        Ok(NodeSpec::task(
            false,
            1,
            MqttInNode {
                broker,
                rx,
                datatype: config.datatype,
                max_payload,
                filter: config.topic,
                qos,
            },
        ))
    }
}

/// Decodes a payload; the error says what was expected.
pub(crate) fn decode(datatype: DataType, payload: &Bytes) -> Result<Value, String> {
    match datatype {
        DataType::Bytes => Ok(Value::Bytes(payload.clone())),
        DataType::Text => std::str::from_utf8(payload)
            .map(Value::from)
            .map_err(|e| format!("payload is not valid UTF-8 text ({e})")),
        DataType::Json => Value::from_json_slice(payload).map_err(|e| {
            format!("payload is not valid JSON ({e}), expected JSON because datatype is json")
        }),
        DataType::Auto => {
            let first = payload.iter().find(|b| !b.is_ascii_whitespace());
            if matches!(first, Some(b'{' | b'['))
                && let Ok(value) = Value::from_json_slice(payload)
            {
                return Ok(value);
            }
            Ok(match std::str::from_utf8(payload) {
                Ok(text) => Value::from(text),
                Err(_) => Value::Bytes(payload.clone()),
            })
        }
    }
}

fn qos_number(qos: QoS) -> i64 {
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

impl MqttInNode {
    fn message(ctx: &NodeCtx, payload: Value, delivery: Delivery) -> Msg {
        let publish = delivery.publish.clone();
        let mut msg = if delivery.needs_ack() {
            // A message dropped unprocessed at a stop stays unacknowledged:
            // the broker delivers it again.
            ctx.new_tracked_msg(payload, move |outcome| {
                if !outcome.abandoned {
                    delivery.complete();
                }
            })
        } else {
            drop(delivery);
            ctx.new_msg(payload)
        };
        let props = msg.props_mut();
        props.insert("topic".to_string(), Value::from(publish.topic.as_str()));
        props.insert("qos".to_string(), Value::from(qos_number(publish.qos)));
        props.insert("retain".to_string(), Value::from(publish.retain));
        if let Some(properties) = &publish.properties {
            // MQTT 5: msg.userProperties, msg.responseTopic, ...
            properties.to_msg(props);
        }
        msg
    }

    async fn handle(&self, ctx: &mut NodeCtx, delivery: Delivery) {
        let size = delivery.publish.payload.len();
        if size > self.max_payload {
            let topic = delivery.publish.topic.clone();
            let mut msg = Self::message(ctx, Value::Null, delivery);
            msg.props_mut()
                .insert("size".to_string(), Value::from(size as i64));
            ctx.report_error(
                NodeError::new(format!(
                    "payload of {size} bytes on {topic:?} is larger than max_payload ({} bytes)",
                    self.max_payload
                ))
                .with_msg(msg),
            );
            return;
        }
        match decode(self.datatype, &delivery.publish.payload) {
            Ok(value) => {
                let msg = Self::message(ctx, value, delivery);
                ctx.send(0, msg).await;
            }
            Err(error) => {
                // The catch node gets the raw payload (text when it is UTF-8).
                let raw = decode(DataType::Auto, &delivery.publish.payload).unwrap_or(Value::Null);
                let raw = match raw {
                    Value::String(_) | Value::Bytes(_) => raw,
                    _ => Value::from(String::from_utf8_lossy(&delivery.publish.payload).as_ref()),
                };
                let msg = Self::message(ctx, raw, delivery);
                ctx.report_error(NodeError::new(error).with_msg(msg));
            }
        }
    }
}

#[runnel_engine::async_trait]
impl TaskNode for MqttInNode {
    async fn run(mut self: Box<Self>, ctx: &mut NodeCtx) -> Result<(), NodeError> {
        if let Some(embedded) = self.broker.embedded() {
            let spec = crate::mqtt_embedded::InProcessIn {
                filter: &self.filter,
                qos: self.qos,
                datatype: self.datatype,
                max_payload: self.max_payload,
            };
            return crate::mqtt_embedded::run_in(ctx, embedded, spec).await;
        }
        let lease = self.broker.attach(ctx.monitor().clone());
        // One waiter for the whole loop, not one per wait.
        let stopping = ctx.stopping().clone().cancelled_owned();
        tokio::pin!(stopping);
        loop {
            let delivery = if self.rx.has_queued() && !ctx.is_stopping() {
                // Under load: no wake-up futures for a delivery already here.
                self.rx.recv().await
            } else {
                tokio::select! {
                    biased;
                    () = &mut stopping => break,
                    delivery = self.rx.recv() => delivery,
                }
            };
            match delivery {
                Some(delivery) => self.handle(ctx, delivery).await,
                None => break,
            }
        }
        // Keep the connection until the flow has drained, so that the acks
        // of messages finishing now still reach the broker. Deliveries
        // still queued are dropped unacknowledged: the broker sends them
        // again on the next session.
        ctx.halted().cancelled().await;
        drop(lease);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn auto_decodes_objects_text_and_bytes() {
        let json = decode(DataType::Auto, &Bytes::from_static(br#" {"a": [1]}"#)).unwrap();
        assert_eq!(json.to_json(), serde_json::json!({"a": [1]}));
        let text = decode(DataType::Auto, &Bytes::from_static(b"42")).unwrap();
        assert_eq!(text, Value::from("42"));
        let broken = decode(DataType::Auto, &Bytes::from_static(b"{nope")).unwrap();
        assert_eq!(broken, Value::from("{nope"));
        let bytes = decode(DataType::Auto, &Bytes::from_static(&[0xff, 0x00])).unwrap();
        assert!(matches!(bytes, Value::Bytes(_)));
    }

    #[test]
    fn strict_modes_report_what_they_expected() {
        let error = decode(DataType::Json, &Bytes::from_static(b"{nope")).unwrap_err();
        assert!(error.contains("not valid JSON"), "{error}");
        let error = decode(DataType::Text, &Bytes::from_static(&[0xff])).unwrap_err();
        assert!(error.contains("UTF-8"), "{error}");
        let number = decode(DataType::Json, &Bytes::from_static(b"42")).unwrap();
        assert_eq!(number, Value::from(42_i64));
        let raw = decode(DataType::Bytes, &Bytes::from_static(b"{}")).unwrap();
        assert_eq!(raw, Value::Bytes(Bytes::from_static(b"{}")));
    }
}
