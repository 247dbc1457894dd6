//! `json`: converts a message property between JSON text and a value.
//!
//! With `action: auto` (default) text or bytes are parsed and objects or
//! arrays are turned into text, as Node-RED's json node does. Invalid JSON
//! becomes a [`NodeError`] for `catch`. A message without the property
//! passes through unchanged.

use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, Msg, NodeError, NodeSpec, NodeType, Out, PropPath, SyncNode, Value,
};
use serde::Deserialize;

/// The `json` node type.
#[derive(Debug)]
pub struct Json;

/// What to do with the property.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Text or bytes are parsed; objects and arrays become text (default).
    #[default]
    Auto,
    /// Text or bytes are parsed; objects and arrays are left as they are.
    Parse,
    /// Any value but text becomes JSON text; text is left as it is.
    Stringify,
}

/// Config of `json`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonConfig {
    /// `auto` (default), `parse` or `stringify`.
    #[serde(default)]
    pub action: Action,
    /// The property to convert, in place (default `payload`).
    #[serde(default = "default_property")]
    pub property: PropPath,
    /// Indent the JSON text it produces (default false).
    #[serde(default)]
    pub pretty: bool,
}

fn default_property() -> PropPath {
    PropPath::parse("payload").unwrap_or_else(|_| unreachable!("\"payload\" is a valid path"))
}

struct JsonNode {
    action: Action,
    property: PropPath,
    pretty: bool,
}

impl NodeType for Json {
    const TYPE: &'static str = "json";
    const SUMMARY: &'static str = "Converts a message property between JSON text and a value.";
    type Config = JsonConfig;

    fn build(config: JsonConfig, _ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        Ok(NodeSpec::sync(
            1,
            JsonNode {
                action: config.action,
                property: config.property,
                pretty: config.pretty,
            },
        ))
    }
}

/// What one message needs.
enum Step {
    Parse,
    Stringify,
    Keep,
}

impl JsonNode {
    fn step(&self, value: &Value) -> Result<Step, String> {
        let text_like = matches!(value, Value::String(_) | Value::Bytes(_));
        let container = matches!(value, Value::Object(_) | Value::Array(_));
        match self.action {
            Action::Auto if text_like => Ok(Step::Parse),
            Action::Auto if container => Ok(Step::Stringify),
            Action::Auto => Err(format!(
                "expected JSON text, bytes, an object or an array at {}, got {} (use `action: stringify` to turn it into text)",
                self.property,
                value.type_name()
            )),
            Action::Parse if text_like => Ok(Step::Parse),
            Action::Parse if container => Ok(Step::Keep),
            Action::Parse => Err(format!(
                "expected JSON text or bytes at {}, got {}",
                self.property,
                value.type_name()
            )),
            Action::Stringify if matches!(value, Value::String(_)) => Ok(Step::Keep),
            Action::Stringify => Ok(Step::Stringify),
        }
    }

    fn convert(&self, value: &Value) -> Result<Option<Value>, String> {
        match self.step(value)? {
            Step::Keep => Ok(None),
            Step::Parse => {
                let text: &[u8] = match value {
                    Value::String(text) => text.as_bytes(),
                    Value::Bytes(bytes) => bytes,
                    _ => return Ok(None),
                };
                Value::from_json_slice(text)
                    .map(Some)
                    .map_err(|error| format!("invalid JSON at {}: {error}", self.property))
            }
            Step::Stringify => {
                let text = if self.pretty {
                    serde_json::to_string_pretty(value)
                        .map_err(|error| format!("cannot write JSON: {error}"))?
                } else {
                    value.to_json_string()
                };
                Ok(Some(Value::from(text)))
            }
        }
    }
}

impl SyncNode for JsonNode {
    fn on_msg(&mut self, mut msg: Msg, out: &mut Out) -> Result<(), NodeError> {
        let converted = match msg.get(&self.property) {
            None => Ok(None),
            Some(value) => self.convert(value),
        };
        let result = match converted {
            Ok(Some(value)) => msg
                .set(&self.property, value)
                .map_err(|error| error.to_string()),
            Ok(None) => Ok(()),
            Err(message) => Err(message),
        };
        match result {
            Ok(()) => out.send(0, msg),
            Err(message) => Err(NodeError::new(message).with_msg(msg)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use bytes::Bytes;
    use runnel_engine::testing::{build, run_sync};
    use serde_json::json;

    fn msg(payload: serde_json::Value) -> Msg {
        Msg::new(Value::from(payload))
    }

    #[test]
    fn auto_parses_text_and_bytes_and_stringifies_objects() {
        let inputs = vec![
            msg(json!(r#"{"d":{"n":1}}"#)),
            Msg::new(Value::Bytes(Bytes::from_static(b"[1,2]"))),
            msg(json!({"b": 1, "a": [true]})),
        ];
        let out = run_sync::<Json>("{}", inputs).unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(
            out.payloads(0),
            vec![
                json!({"d": {"n": 1}}),
                json!([1, 2]),
                json!(r#"{"b":1,"a":[true]}"#)
            ]
        );
    }

    #[test]
    fn parse_and_stringify_leave_converted_values_alone() {
        let out = run_sync::<Json>("action: parse", vec![msg(json!({"a": 1}))]).unwrap();
        assert_eq!(out.payloads(0), vec![json!({"a": 1})]);
        let out = run_sync::<Json>(
            "action: stringify",
            vec![msg(json!("text")), msg(json!(42)), msg(json!(null))],
        )
        .unwrap();
        assert_eq!(
            out.payloads(0),
            vec![json!("text"), json!("42"), json!("null")]
        );
    }

    #[test]
    fn pretty_output_and_other_properties() {
        let mut input = msg(json!(null));
        input
            .set(
                &PropPath::parse("data.v").unwrap(),
                Value::from(json!({"a": 1})),
            )
            .unwrap();
        let out = run_sync::<Json>("property: data.v\npretty: true", vec![input]).unwrap();
        let sent = &out.ports[0][0];
        assert_eq!(
            sent.get(&PropPath::parse("data.v").unwrap()),
            Some(&Value::from("{\n  \"a\": 1\n}"))
        );
    }

    #[test]
    fn a_missing_property_passes_through() {
        let out = run_sync::<Json>("property: nothing", vec![msg(json!("x"))]).unwrap();
        assert_eq!(out.payloads(0), vec![json!("x")]);
    }

    #[test]
    fn invalid_json_and_wrong_types_are_errors() {
        let out = run_sync::<Json>("{}", vec![msg(json!("{\"a\": ")), msg(json!(true))]).unwrap();
        assert!(out.ports[0].is_empty());
        assert!(
            out.errors[0].starts_with("invalid JSON at payload: EOF"),
            "{}",
            out.errors[0]
        );
        assert!(
            out.errors[1].starts_with(
                "expected JSON text, bytes, an object or an array at payload, got boolean"
            ),
            "{}",
            out.errors[1]
        );
        let out = run_sync::<Json>("action: parse", vec![msg(json!(1))]).unwrap();
        assert_eq!(
            out.errors,
            ["expected JSON text or bytes at payload, got number"]
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let error = build::<Json>("indent: 2").unwrap_err();
        assert_eq!(
            error,
            "unknown field \"indent\", expected one of: action, property, pretty"
        );
        let error = build::<Json>("action: obj").unwrap_err();
        assert!(error.contains("unknown value \"obj\""), "{error}");
    }
}
