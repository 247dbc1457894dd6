//! [`Value`]: the JSON-like data a message carries.
//!
//! Strings, bytes, arrays and objects sit behind `Arc`/[`Bytes`], so cloning a
//! value is O(1) whatever its size. Writers go through [`Value::make_mut`]-style
//! accessors that copy only the container they write to (copy-on-write), so a
//! message fanned out to ten wires is never deep-copied unless a branch writes
//! to it, and then only along the written path.
//!
//! Bytes have their own variant (MQTT payloads, base64 output) and are never
//! shared mutably: `Bytes` is immutable, a writer builds a new buffer.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::map::Map;

/// A JSON-like value with O(1) clones.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Value {
    /// `null`.
    #[default]
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer or a float, exactly as JSON carries it.
    Number(serde_json::Number),
    /// UTF-8 text.
    String(Arc<str>),
    /// Raw bytes (an MQTT payload that is not text, a decoded base64 buffer).
    Bytes(Bytes),
    /// An array.
    Array(Arc<Vec<Value>>),
    /// An object.
    Object(Arc<Map>),
}

impl Value {
    /// An empty object.
    pub fn object() -> Self {
        Value::Object(Arc::new(Map::default()))
    }

    /// The name of this value's type, as `typeof`-like words used in errors and
    /// by the `switch` node's `is type` rule.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Bytes(_) => "buffer",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// The text, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number as `f64`, if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    /// The number as `i64`, if this is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The object's map, if this is an object.
    pub fn as_object(&self) -> Option<&Map> {
        match self {
            Value::Object(map) => Some(map),
            _ => None,
        }
    }

    /// The array's items, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The object's map for writing, copying it first if it is shared.
    pub fn as_object_mut(&mut self) -> Option<&mut Map> {
        match self {
            Value::Object(map) => Some(Arc::make_mut(map)),
            _ => None,
        }
    }

    /// The array's items for writing, copying them first if they are shared.
    pub fn as_array_mut(&mut self) -> Option<&mut Vec<Value>> {
        match self {
            Value::Array(items) => Some(Arc::make_mut(items)),
            _ => None,
        }
    }

    /// Whether the value is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A float value; non-finite floats become `null` as in JSON.
    pub fn from_f64(value: f64) -> Self {
        serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
    }

    /// Parses JSON text into a value.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        // One UTF-8 check of the whole text is cheaper than serde_json's
        // check of every string in it (a tenth of parsing a small
        // document). Text that is not UTF-8 goes the slow way, which
        // reports where the bad byte is.
        match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(bytes),
        }
    }

    /// Serialises the value as compact JSON text.
    pub fn to_json_string(&self) -> String {
        // Serialising our own enum into a String cannot fail: every map key is
        // a string and the writer is infallible.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("null"))
    }

    /// Converts into a `serde_json::Value` (bytes become Node.js' Buffer JSON).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Text for display: strings as they are, everything else as JSON.
    pub fn to_text(&self) -> String {
        match self {
            Value::String(s) => s.to_string(),
            Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            other => other.to_json_string(),
        }
    }
}

impl From<serde_json::Value> for Value {
    fn from(value: serde_json::Value) -> Self {
        match value {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => Value::Number(n),
            serde_json::Value::String(s) => Value::String(s.into()),
            serde_json::Value::Array(items) => {
                Value::Array(Arc::new(items.into_iter().map(Value::from).collect()))
            }
            serde_json::Value::Object(map) => Value::Object(Arc::new(
                map.into_iter().map(|(k, v)| (k, Value::from(v))).collect(),
            )),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.into())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s.into())
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Number(n.into())
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Number(n.into())
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::from_f64(n)
    }
}

impl From<Bytes> for Value {
    fn from(b: Bytes) -> Self {
        Value::Bytes(b)
    }
}

impl From<Vec<Value>> for Value {
    fn from(items: Vec<Value>) -> Self {
        Value::Array(Arc::new(items))
    }
}

impl From<Map> for Value {
    fn from(map: Map) -> Self {
        Value::Object(Arc::new(map))
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json_string())
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Number(n) => n.serialize(serializer),
            Value::String(s) => serializer.serialize_str(s),
            Value::Bytes(bytes) => {
                // The shape Node.js gives a Buffer in JSON, so debug output
                // looks as Node-RED users expect.
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("type", "Buffer")?;
                map.serialize_entry("data", &ByteList(bytes))?;
                map.end()
            }
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items.iter() {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut out = serializer.serialize_map(Some(map.len()))?;
                for (key, value) in map.iter() {
                    out.serialize_entry(key, value)?;
                }
                out.end()
            }
        }
    }
}

struct ByteList<'a>(&'a Bytes);

impl Serialize for ByteList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for byte in self.0.iter() {
            seq.serialize_element(byte)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON-like value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from_f64(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.into()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v.into()))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(Bytes::copy_from_slice(v)))
    }

    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(Bytes::from(v)))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Deserialize::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(Arc::new(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        // JSON gives no size hint: room for a few entries saves the growth
        // steps of the typical small object.
        let mut map = Map::with_capacity(access.size_hint().unwrap_or(4).min(4096));
        while let Some((key, value)) = access.next_entry::<String, Value>()? {
            map.insert(key, value);
        }
        Ok(Value::Object(Arc::new(map)))
    }
}

impl schemars::JsonSchema for Value {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Value".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "description": "any JSON/YAML value" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_shares_containers_until_written() {
        let original = Value::from(serde_json::json!({"a": {"b": [1, 2, 3]}, "c": "x"}));
        let mut copy = original.clone();
        if let (Value::Object(a), Value::Object(b)) = (&original, &copy) {
            assert!(Arc::ptr_eq(a, b));
        }
        if let Some(slot) = copy.as_object_mut().and_then(|m| m.get_mut("c")) {
            *slot = Value::from("y");
        }
        assert_eq!(original.to_json()["c"], "x");
        assert_eq!(copy.to_json()["c"], "y");
        // The untouched branch is still shared after the write.
        let (Some(a), Some(b)) = (original.as_object(), copy.as_object()) else {
            panic!("objects expected");
        };
        match (a.get("a"), b.get("a")) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => assert!(Arc::ptr_eq(x, y)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn json_round_trip_keeps_order_and_numbers() {
        let text = r#"{"z":1,"a":2.5,"m":[true,null,"s"],"big":18446744073709551615}"#;
        let value = Value::from_json_slice(text.as_bytes()).expect("valid json");
        assert_eq!(value.to_json_string(), text);
    }

    #[test]
    fn json_that_is_not_utf8_is_an_error_with_its_position() {
        let error = Value::from_json_slice(b"{\"a\":\"\xff\"}").unwrap_err();
        assert_eq!((error.line(), error.column()), (1, 7), "{error}");
        assert!(Value::from_json_slice(b"{\"a\":\"\xc3\xa9\"}").is_ok());
    }

    #[test]
    fn bytes_serialise_like_node_buffers() {
        let value = Value::Bytes(Bytes::from_static(b"hi"));
        assert_eq!(
            value.to_json_string(),
            r#"{"type":"Buffer","data":[104,105]}"#
        );
    }
}
