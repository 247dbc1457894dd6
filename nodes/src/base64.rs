//! `base64`: decodes or encodes a message property as base64.
//!
//! Decoding accepts the standard (`+/`) and URL-safe (`-_`) alphabets, with
//! or without `=` padding, and ignores ASCII whitespace (line-wrapped MIME
//! text). Bad input becomes a [`NodeError`] for `catch`, never a crash.

use std::borrow::Cow;

use ::base64::Engine as _;
use ::base64::alphabet;
use ::base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, Msg, NodeError, NodeSpec, NodeType, Out, PropPath, SyncNode, Value,
};
use serde::Deserialize;

/// The `base64` node type.
#[derive(Debug)]
pub struct Base64;

/// Which way to convert.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// base64 text to data (default).
    #[default]
    Decode,
    /// Text or bytes to base64 text (standard alphabet, padded).
    Encode,
}

/// What decoding produces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// UTF-8 text (default); data that is not valid UTF-8 is an error.
    #[default]
    Text,
    /// Raw bytes.
    Bytes,
}

/// Config of `base64`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Base64Config {
    /// `decode` (default) or `encode`.
    #[serde(default)]
    pub mode: Mode,
    /// The property to convert (default `payload`).
    #[serde(default = "default_property")]
    pub property: PropPath,
    /// Where the result goes (default: the `property` itself).
    #[serde(default)]
    pub to: Option<PropPath>,
    /// With `decode`: `text` (default, UTF-8) or `bytes`.
    #[serde(default)]
    pub output: Option<Output>,
}

fn default_property() -> PropPath {
    PropPath::parse("payload").unwrap_or_else(|_| unreachable!("\"payload\" is a valid path"))
}

/// Padding is optional when decoding.
const DECODE_CONFIG: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_DECODER: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, DECODE_CONFIG);
const URL_SAFE_DECODER: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, DECODE_CONFIG);

struct Base64Node {
    mode: Mode,
    property: PropPath,
    to: PropPath,
    output: Output,
}

impl NodeType for Base64 {
    const TYPE: &'static str = "base64";
    const SUMMARY: &'static str = "Decodes or encodes a message property as base64.";
    type Config = Base64Config;

    fn build(config: Base64Config, _ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        if config.mode == Mode::Encode && config.output.is_some() {
            return Err(BuildError::field(
                "output",
                "`output` applies to `mode: decode` only; encoding always produces text",
            ));
        }
        let to = config.to.unwrap_or_else(|| config.property.clone());
        Ok(NodeSpec::sync(
            1,
            Base64Node {
                mode: config.mode,
                property: config.property,
                to,
                output: config.output.unwrap_or_default(),
            },
        ))
    }
}

impl SyncNode for Base64Node {
    fn on_msg(&mut self, mut msg: Msg, out: &mut Out) -> Result<(), NodeError> {
        let converted = match msg.get(&self.property) {
            None => Err(format!("no value at {}", self.property)),
            Some(value) => match self.mode {
                Mode::Decode => decode(value, self.output),
                Mode::Encode => encode(value),
            }
            .map_err(|reason| format!("{reason} at {}", self.property)),
        };
        let result =
            converted.and_then(|value| msg.set(&self.to, value).map_err(|error| error.to_string()));
        match result {
            Ok(()) => out.send(0, msg),
            Err(message) => Err(NodeError::new(message).with_msg(msg)),
        }
    }
}

fn decode(value: &Value, output: Output) -> Result<Value, String> {
    let text: &[u8] = match value {
        Value::String(text) => text.as_bytes(),
        Value::Bytes(bytes) => bytes,
        other => {
            return Err(format!(
                "base64 decode expected a string or bytes, got {}",
                other.type_name()
            ));
        }
    };
    let text = strip_whitespace(text);
    let url_safe = text.iter().any(|&b| b == b'-' || b == b'_');
    let decoder = if url_safe {
        &URL_SAFE_DECODER
    } else {
        &STANDARD_DECODER
    };
    let data = decoder
        .decode(&*text)
        .map_err(|error| format!("invalid base64 ({error})"))?;
    match output {
        Output::Bytes => Ok(Value::Bytes(Bytes::from(data))),
        Output::Text => String::from_utf8(data).map(Value::from).map_err(|_| {
            "decoded data is not valid UTF-8 text (use `output: bytes` for binary data)".to_string()
        }),
    }
}

/// The text without ASCII whitespace, copied only when it has some.
fn strip_whitespace(text: &[u8]) -> Cow<'_, [u8]> {
    if text.iter().any(u8::is_ascii_whitespace) {
        Cow::Owned(
            text.iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect(),
        )
    } else {
        Cow::Borrowed(text)
    }
}

fn encode(value: &Value) -> Result<Value, String> {
    let data: &[u8] = match value {
        Value::String(text) => text.as_bytes(),
        Value::Bytes(bytes) => bytes,
        other => {
            return Err(format!(
                "base64 encode expected a string or bytes, got {} (put a json node first to encode its JSON text)",
                other.type_name()
            ));
        }
    };
    Ok(Value::from(
        ::base64::engine::general_purpose::STANDARD.encode(data),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use runnel_engine::testing::{build, run_sync};
    use serde_json::json;

    fn msg(payload: serde_json::Value) -> Msg {
        Msg::new(Value::from(payload))
    }

    #[test]
    fn decodes_the_seed_flow_message() {
        let out = run_sync::<Base64>(
            "property: payload.name\nto: payload",
            vec![msg(json!({"name": "aGVsbG8gZnJvbSBtb2JpbGUgdXNlcg=="}))],
        )
        .unwrap();
        assert_eq!(out.payloads(0), vec![json!("hello from mobile user")]);
        assert!(out.errors.is_empty());
    }

    #[test]
    fn accepts_url_safe_unpadded_and_wrapped_input() {
        // 0xfb 0xff encodes as "+/8=" (standard) and "-_8" (URL-safe, unpadded).
        let inputs = vec![
            msg(json!("-_8")),
            msg(json!("+/8=")),
            msg(json!("+/8")),
            msg(json!("aGVs\nbG8=")),
        ];
        let out = run_sync::<Base64>("output: bytes", inputs).unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let payloads: Vec<Value> = out.ports[0].iter().map(|m| m.payload().clone()).collect();
        assert_eq!(payloads[0], Value::Bytes(Bytes::from_static(&[0xfb, 0xff])));
        assert_eq!(payloads[1], payloads[0]);
        assert_eq!(payloads[2], payloads[0]);
        assert_eq!(payloads[3], Value::Bytes(Bytes::from_static(b"hello")));
    }

    #[test]
    fn invalid_input_is_an_error_not_a_crash() {
        let mut without_payload = Msg::new(Value::Null);
        without_payload.props_mut().shift_remove("payload");
        let inputs = vec![
            msg(json!("not base64!")),
            msg(json!(42)),
            msg(json!("+/8=")),
            without_payload,
        ];
        let out = run_sync::<Base64>("{}", inputs).unwrap();
        assert!(out.ports[0].is_empty());
        assert_eq!(out.errors.len(), 4, "{:?}", out.errors);
        assert!(
            out.errors[0].starts_with("invalid base64"),
            "{}",
            out.errors[0]
        );
        assert!(out.errors[0].ends_with("at payload"), "{}", out.errors[0]);
        assert_eq!(
            out.errors[1],
            "base64 decode expected a string or bytes, got number at payload"
        );
        assert!(
            out.errors[2].starts_with("decoded data is not valid UTF-8"),
            "{}",
            out.errors[2]
        );
        assert_eq!(out.errors[3], "no value at payload");
    }

    #[test]
    fn encodes_text_and_bytes() {
        let inputs = vec![
            msg(json!("hello from mobile user")),
            Msg::new(Value::Bytes(Bytes::from_static(&[0xfb, 0xff]))),
        ];
        let out = run_sync::<Base64>("mode: encode\nto: topic", inputs).unwrap();
        let topics: Vec<Option<&str>> = out.ports[0].iter().map(Msg::topic).collect();
        assert_eq!(
            topics,
            [Some("aGVsbG8gZnJvbSBtb2JpbGUgdXNlcg=="), Some("+/8=")]
        );
        let out = run_sync::<Base64>("mode: encode", vec![msg(json!({"a": 1}))]).unwrap();
        assert!(out.errors[0].starts_with("base64 encode expected a string or bytes, got object"));
    }

    #[test]
    fn config_errors_name_the_field() {
        let error = build::<Base64>("mode: decode\nformat: text").unwrap_err();
        assert_eq!(
            error,
            "unknown field \"format\", expected one of: mode, property, to, output"
        );
        let error = build::<Base64>("mode: rot13").unwrap_err();
        assert!(error.contains("unknown value \"rot13\""), "{error}");
        let error = build::<Base64>("mode: encode\noutput: bytes").unwrap_err();
        assert!(error.starts_with("field \"output\""), "{error}");
    }
}
