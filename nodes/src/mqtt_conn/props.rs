//! MQTT 5 publish properties and their place on a message.
//!
//! Named as in Node-RED's MQTT nodes, so flows and function code carry
//! over: `msg.userProperties` (an object of strings), `msg.responseTopic`,
//! `msg.correlationData` (bytes), `msg.contentType`,
//! `msg.messageExpiryInterval` (seconds) and `msg.payloadFormatIndicator`
//! (true when the payload is declared UTF-8 text). Only a connection with
//! `protocol: "5"` reads or writes them; on MQTT 3.1.1 they do not exist.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use runnel_engine::{Map, Msg, Value};

use super::topic::check_topic;

/// `msg.userProperties`.
pub(crate) const USER_PROPERTIES: &str = "userProperties";
/// `msg.responseTopic`.
pub(crate) const RESPONSE_TOPIC: &str = "responseTopic";
/// `msg.correlationData`.
pub(crate) const CORRELATION_DATA: &str = "correlationData";
/// `msg.contentType`.
pub(crate) const CONTENT_TYPE: &str = "contentType";
/// `msg.messageExpiryInterval`.
pub(crate) const MESSAGE_EXPIRY_INTERVAL: &str = "messageExpiryInterval";
/// `msg.payloadFormatIndicator`.
pub(crate) const PAYLOAD_FORMAT_INDICATOR: &str = "payloadFormatIndicator";

/// The MQTT 5 properties of a publish that runnel exposes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Properties {
    /// User properties, in order; a name may repeat.
    pub user: Vec<(String, String)>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub content_type: Option<String>,
    /// Seconds.
    pub message_expiry_interval: Option<u32>,
    /// True: the payload is UTF-8 text.
    pub payload_format_indicator: Option<bool>,
}

impl Properties {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// The properties of an incoming publish (None when it has none of
    /// ours).
    pub fn from_v5(properties: Option<PublishProperties>) -> Option<Box<Properties>> {
        let p = properties?;
        let ours = Properties {
            user: p.user_properties,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            content_type: p.content_type,
            message_expiry_interval: p.message_expiry_interval,
            payload_format_indicator: p.payload_format_indicator.map(|v| v == 1),
        };
        (!ours.is_empty()).then(|| Box::new(ours))
    }

    /// rumqttc's properties for an outgoing publish.
    pub fn into_v5(self) -> PublishProperties {
        PublishProperties {
            payload_format_indicator: self.payload_format_indicator.map(u8::from),
            message_expiry_interval: self.message_expiry_interval,
            topic_alias: None,
            response_topic: self.response_topic,
            correlation_data: self.correlation_data,
            user_properties: self.user,
            subscription_identifiers: Vec::new(),
            content_type: self.content_type,
        }
    }

    /// Bytes these properties add to a PUBLISH packet (an upper bound).
    pub fn encoded_len(&self) -> usize {
        let strings = |s: &Option<String>| s.as_ref().map_or(0, |s| s.len() + 3);
        let user: usize = self.user.iter().map(|(k, v)| k.len() + v.len() + 5).sum();
        4 + user
            + strings(&self.response_topic)
            + strings(&self.content_type)
            + self.correlation_data.as_ref().map_or(0, |d| d.len() + 3)
            + self.message_expiry_interval.map_or(0, |_| 5)
            + self.payload_format_indicator.map_or(0, |_| 2)
    }

    /// Sets `msg.userProperties`, `msg.responseTopic`, ... A user property
    /// name that repeats becomes an array of its values.
    pub fn to_msg(&self, props: &mut Map) {
        if !self.user.is_empty() {
            let mut user = Map::default();
            for (name, value) in &self.user {
                match user.get_mut(name) {
                    None => {
                        user.insert(name.clone(), Value::from(value.as_str()));
                    }
                    Some(Value::Array(values)) => {
                        std::sync::Arc::make_mut(values).push(Value::from(value.as_str()));
                    }
                    Some(first) => {
                        let first = std::mem::take(first);
                        user.insert(
                            name.clone(),
                            Value::from(vec![first, Value::from(value.as_str())]),
                        );
                    }
                }
            }
            props.insert(USER_PROPERTIES.to_string(), Value::from(user));
        }
        if let Some(topic) = &self.response_topic {
            props.insert(RESPONSE_TOPIC.to_string(), Value::from(topic.as_str()));
        }
        if let Some(data) = &self.correlation_data {
            props.insert(CORRELATION_DATA.to_string(), Value::Bytes(data.clone()));
        }
        if let Some(content_type) = &self.content_type {
            props.insert(CONTENT_TYPE.to_string(), Value::from(content_type.as_str()));
        }
        if let Some(seconds) = self.message_expiry_interval {
            props.insert(
                MESSAGE_EXPIRY_INTERVAL.to_string(),
                Value::from(i64::from(seconds)),
            );
        }
        if let Some(utf8) = self.payload_format_indicator {
            props.insert(PAYLOAD_FORMAT_INDICATOR.to_string(), Value::from(utf8));
        }
    }

    /// The properties a message asks for; the error names the property
    /// and says what was expected. Absent, null and empty mean unset.
    pub fn from_msg(msg: &Msg) -> Result<Properties, String> {
        let props = msg.props();
        let present = |name: &str| {
            props
                .get(name)
                .filter(|v| !v.is_null() && v.as_str() != Some(""))
        };
        let mut out = Properties::default();
        if let Some(value) = present(USER_PROPERTIES) {
            out.user = user_properties(value)?;
        }
        if let Some(value) = present(RESPONSE_TOPIC) {
            let topic = value.as_str().ok_or_else(|| {
                format!(
                    "msg.responseTopic is a {}, expected a string",
                    value.type_name()
                )
            })?;
            check_topic(topic).map_err(|e| format!("msg.responseTopic: {e}"))?;
            out.response_topic = Some(topic.to_string());
        }
        if let Some(value) = present(CORRELATION_DATA) {
            out.correlation_data = Some(match value {
                Value::Bytes(bytes) => bytes.clone(),
                Value::String(text) => Bytes::copy_from_slice(text.as_bytes()),
                other => {
                    return Err(format!(
                        "msg.correlationData is a {}, expected bytes or a string",
                        other.type_name()
                    ));
                }
            });
        }
        if let Some(value) = present(CONTENT_TYPE) {
            let text = value.as_str().ok_or_else(|| {
                format!(
                    "msg.contentType is a {}, expected a string",
                    value.type_name()
                )
            })?;
            out.content_type = Some(text.to_string());
        }
        if let Some(value) = present(MESSAGE_EXPIRY_INTERVAL) {
            let seconds = match value {
                Value::String(text) => text.trim().parse::<u32>().ok(),
                other => other.as_i64().and_then(|n| u32::try_from(n).ok()),
            };
            out.message_expiry_interval = Some(seconds.ok_or_else(|| {
                format!(
                    "invalid msg.messageExpiryInterval {}, expected whole seconds 0-4294967295",
                    value.to_text()
                )
            })?);
        }
        if let Some(value) = present(PAYLOAD_FORMAT_INDICATOR) {
            out.payload_format_indicator = Some(match value {
                Value::Bool(b) => *b,
                Value::String(text) if &**text == "true" => true,
                Value::String(text) if &**text == "false" => false,
                other => {
                    return Err(format!(
                        "invalid msg.payloadFormatIndicator {}, expected true or false",
                        other.to_text()
                    ));
                }
            });
        }
        Ok(out)
    }

    /// Each property set in `overrides` replaces this one's (the node's
    /// config wins over the message, as in Node-RED).
    pub fn override_with(&mut self, overrides: &Properties) {
        if !overrides.user.is_empty() {
            self.user = overrides.user.clone();
        }
        if overrides.response_topic.is_some() {
            self.response_topic = overrides.response_topic.clone();
        }
        if overrides.correlation_data.is_some() {
            self.correlation_data = overrides.correlation_data.clone();
        }
        if overrides.content_type.is_some() {
            self.content_type = overrides.content_type.clone();
        }
        if overrides.message_expiry_interval.is_some() {
            self.message_expiry_interval = overrides.message_expiry_interval;
        }
        if overrides.payload_format_indicator.is_some() {
            self.payload_format_indicator = overrides.payload_format_indicator;
        }
    }
}

/// `msg.userProperties`: an object whose values are strings (numbers and
/// booleans are sent as their text; an array of strings sends the name
/// once per value).
fn user_properties(value: &Value) -> Result<Vec<(String, String)>, String> {
    let object = value.as_object().ok_or_else(|| {
        format!(
            "msg.userProperties is a {}, expected an object of strings",
            value.type_name()
        )
    })?;
    let mut out = Vec::with_capacity(object.len());
    for (name, value) in object {
        let mut push = |value: &Value| match value {
            Value::String(text) => {
                out.push((name.clone(), text.to_string()));
                Ok(())
            }
            Value::Number(_) | Value::Bool(_) => {
                out.push((name.clone(), value.to_text()));
                Ok(())
            }
            other => Err(format!(
                "msg.userProperties.{name} is a {}, expected a string",
                other.type_name()
            )),
        };
        match value {
            Value::Array(values) => {
                for value in values.iter() {
                    push(value)?;
                }
            }
            other => push(other)?,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use runnel_engine::testing::msg_from_json as msg_with;

    #[test]
    fn properties_go_to_the_message_and_back() {
        let props = Properties {
            // A repeated name is grouped on the message, so the round trip
            // keeps order only within a name.
            user: vec![
                ("a".into(), "1".into()),
                ("a".into(), "2".into()),
                ("b".into(), "x".into()),
            ],
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(&[0, 1, 0xff])),
            content_type: Some("application/json".into()),
            message_expiry_interval: Some(60),
            payload_format_indicator: Some(true),
        };
        let mut msg = Msg::new(Value::Null);
        props.to_msg(msg.props_mut());
        let json = msg.to_json();
        assert_eq!(
            json["userProperties"],
            serde_json::json!({"a": ["1", "2"], "b": "x"})
        );
        assert_eq!(json["responseTopic"], "reply/here");
        assert_eq!(json["contentType"], "application/json");
        assert_eq!(json["messageExpiryInterval"], 60);
        assert_eq!(json["payloadFormatIndicator"], true);
        assert_eq!(
            msg.props().get("correlationData"),
            Some(&Value::Bytes(Bytes::from_static(&[0, 1, 0xff])))
        );
        let back = Properties::from_msg(&msg).unwrap();
        assert_eq!(back, props);
        assert_eq!(
            Properties::from_v5(Some(back.clone().into_v5())).as_deref(),
            Some(&props)
        );
    }

    #[test]
    fn message_values_are_checked_by_name() {
        let error = Properties::from_msg(&msg_with(serde_json::json!({"userProperties": "x"})))
            .unwrap_err();
        assert!(error.contains("msg.userProperties"), "{error}");
        let error = Properties::from_msg(&msg_with(
            serde_json::json!({"userProperties": {"k": {"deep": 1}}}),
        ))
        .unwrap_err();
        assert!(error.contains("msg.userProperties.k"), "{error}");
        let error = Properties::from_msg(&msg_with(serde_json::json!({"responseTopic": "a/#"})))
            .unwrap_err();
        assert!(error.contains("msg.responseTopic"), "{error}");
        let error =
            Properties::from_msg(&msg_with(serde_json::json!({"messageExpiryInterval": -1})))
                .unwrap_err();
        assert!(error.contains("messageExpiryInterval"), "{error}");
        let error =
            Properties::from_msg(&msg_with(serde_json::json!({"correlationData": 5}))).unwrap_err();
        assert!(error.contains("correlationData"), "{error}");
    }

    #[test]
    fn loose_message_values_are_accepted_like_node_red() {
        let props = Properties::from_msg(&msg_with(serde_json::json!({
            "userProperties": {"n": 5, "ok": true},
            "correlationData": "abc",
            "messageExpiryInterval": "30",
            "responseTopic": "",
            "contentType": null,
        })))
        .unwrap();
        assert_eq!(
            props.user,
            vec![("n".into(), "5".into()), ("ok".into(), "true".into())]
        );
        assert_eq!(props.correlation_data, Some(Bytes::from_static(b"abc")));
        assert_eq!(props.message_expiry_interval, Some(30));
        assert_eq!(props.response_topic, None);
        assert_eq!(props.content_type, None);
        assert!(props.encoded_len() > 0);
    }

    #[test]
    fn config_overrides_the_message() {
        let mut props = Properties {
            response_topic: Some("from/msg".into()),
            content_type: Some("text/plain".into()),
            ..Properties::default()
        };
        props.override_with(&Properties {
            response_topic: Some("from/config".into()),
            ..Properties::default()
        });
        assert_eq!(props.response_topic.as_deref(), Some("from/config"));
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    }
}
