//! A serde deserializer over `marked_yaml` nodes that keeps positions.
//!
//! Config structs are deserialised straight from the parsed YAML, never
//! through an untyped value, so every error carries the line and column of
//! the key or value at fault (Vector #23008 is what happens otherwise).
//! Plain (unquoted) scalars follow YAML 1.2's core schema where the target
//! type is open (`payload: 42` is a number, `payload: "42"` a string); typed
//! fields parse the scalar as the field's type.

use std::fmt;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{Marker, Node};
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

/// A deserialisation error with the position of the YAML node at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Where, when known.
    pub mark: Option<Marker>,
    /// What is wrong, in serde's words made friendlier.
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for YamlError {}

impl de::Error for YamlError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        YamlError {
            mark: None,
            message: friendlier(&msg.to_string()),
        }
    }
}

/// Rewrites serde's messages into the project's style:
/// "unknown field `paht`, expected `rules`" becomes
/// "unknown field \"paht\", expected one of: rules".
fn friendlier(message: &str) -> String {
    if let Some(rest) = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))
    {
        let kind = if message.starts_with("unknown field") {
            "field"
        } else {
            "value"
        };
        if let Some((name, expected)) = rest.split_once("`, ") {
            let expected = expected
                .trim_start_matches("expected one of ")
                .trim_start_matches("expected ")
                .replace('`', "");
            let expected = if expected == "there are no fields" {
                "no fields".to_string()
            } else {
                expected
            };
            return format!("unknown {kind} \"{name}\", expected one of: {expected}");
        }
    }
    message.replace('`', "\"")
}

trait WithMark<T> {
    fn at(self, mark: Option<&Marker>) -> Result<T, YamlError>;
}

impl<T> WithMark<T> for Result<T, YamlError> {
    fn at(self, mark: Option<&Marker>) -> Result<T, YamlError> {
        self.map_err(|mut error| {
            if error.mark.is_none() {
                error.mark = mark.copied();
            }
            error
        })
    }
}

/// Parses YAML text the way flow files are parsed: only plain scalars may
/// be read as numbers, booleans or null; duplicate keys are errors.
pub fn parse(text: &str) -> Result<Node, marked_yaml::LoadError> {
    let options = marked_yaml::LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true);
    marked_yaml::parse_yaml_with_options(0, text, options)
}

/// Deserialises `T` from a YAML node.
pub fn from_node<T: DeserializeOwned>(node: &Node) -> Result<T, YamlError> {
    T::deserialize(NodeDe(node))
}

/// Where a node starts, as a reader would point at it: a block mapping's
/// first key (a mapping's own mark sits after that key), anything else's own
/// start.
pub fn node_mark(node: &Node) -> Option<Marker> {
    if let Node::Mapping(map) = node
        && let Some((key, _)) = map.iter().next()
    {
        return key.span().start().copied();
    }
    node.span().start().copied()
}

struct NodeDe<'a>(&'a Node);

impl NodeDe<'_> {
    fn mark(&self) -> Option<&Marker> {
        if let Node::Mapping(map) = self.0
            && let Some((key, _)) = map.iter().next()
        {
            return key.span().start();
        }
        self.0.span().start()
    }

    fn unexpected(&self) -> de::Unexpected<'_> {
        match self.0 {
            Node::Scalar(s) => de::Unexpected::Str(s.as_str()),
            Node::Mapping(_) => de::Unexpected::Map,
            Node::Sequence(_) => de::Unexpected::Seq,
        }
    }

    fn scalar(&self, expected: &dyn de::Expected) -> Result<&MarkedScalarNode, YamlError> {
        match self.0 {
            Node::Scalar(s) => Ok(s),
            _ => Err(de::Error::invalid_type(self.unexpected(), expected)).at(self.mark()),
        }
    }
}

fn is_null(s: &MarkedScalarNode) -> bool {
    s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL")
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        ".inf" | ".Inf" | ".INF" | "+.inf" => Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Some(f64::NAN),
        _ => {
            let looks_numeric = text
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
                && text.chars().any(|c| c.is_ascii_digit());
            if looks_numeric {
                text.parse().ok()
            } else {
                None
            }
        }
    }
}

macro_rules! deserialize_number {
    ($method:ident, $visit:ident, $ty:ty, $what:literal) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
            let scalar = self.scalar(&$what)?;
            match scalar.as_str().trim().parse::<$ty>() {
                Ok(value) => visitor.$visit(value).at(self.mark()),
                Err(_) => Err(de::Error::invalid_value(
                    de::Unexpected::Str(scalar.as_str()),
                    &$what,
                ))
                .at(self.mark()),
            }
        }
    };
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = YamlError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        let mark = self.mark().copied();
        let result = match self.0 {
            Node::Mapping(map) => visitor.visit_map(MapAccess::new(map)),
            Node::Sequence(seq) => visitor.visit_seq(SeqAccess::new(seq)),
            Node::Scalar(s) if !s.may_coerce() => visitor.visit_str(s.as_str()),
            Node::Scalar(s) => {
                let text = s.as_str();
                if is_null(s) {
                    visitor.visit_unit()
                } else if let Some(b) = parse_bool(text) {
                    visitor.visit_bool(b)
                } else if let Ok(i) = text.parse::<i64>() {
                    visitor.visit_i64(i)
                } else if let Ok(u) = text.parse::<u64>() {
                    visitor.visit_u64(u)
                } else if let Some(f) = parse_float(text) {
                    visitor.visit_f64(f)
                } else {
                    visitor.visit_str(text)
                }
            }
        };
        result.at(mark.as_ref())
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        let scalar = self.scalar(&"a boolean (true or false)")?;
        match parse_bool(scalar.as_str()) {
            Some(b) => visitor.visit_bool(b).at(self.mark()),
            None => Err(de::Error::invalid_value(
                de::Unexpected::Str(scalar.as_str()),
                &"a boolean (true or false)",
            ))
            .at(self.mark()),
        }
    }

    deserialize_number!(deserialize_i8, visit_i8, i8, "an integer");
    deserialize_number!(deserialize_i16, visit_i16, i16, "an integer");
    deserialize_number!(deserialize_i32, visit_i32, i32, "an integer");
    deserialize_number!(deserialize_i64, visit_i64, i64, "an integer");
    deserialize_number!(deserialize_u8, visit_u8, u8, "an integer from 0 to 255");
    deserialize_number!(
        deserialize_u16,
        visit_u16,
        u16,
        "an integer from 0 to 65535"
    );
    deserialize_number!(deserialize_u32, visit_u32, u32, "a non-negative integer");
    deserialize_number!(deserialize_u64, visit_u64, u64, "a non-negative integer");

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        let scalar = self.scalar(&"a number")?;
        match parse_float(scalar.as_str().trim()) {
            Some(f) => visitor.visit_f64(f).at(self.mark()),
            None => Err(de::Error::invalid_value(
                de::Unexpected::Str(scalar.as_str()),
                &"a number",
            ))
            .at(self.mark()),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        let scalar = self.scalar(&"a string")?;
        visitor.visit_str(scalar.as_str()).at(self.mark())
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        let scalar = self.scalar(&"a string")?;
        visitor
            .visit_bytes(scalar.as_str().as_bytes())
            .at(self.mark())
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        match self.0 {
            Node::Scalar(s) if is_null(s) => visitor.visit_none().at(self.mark()),
            _ => {
                let mark = self.mark().copied();
                visitor.visit_some(self).at(mark.as_ref())
            }
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        match self.0 {
            Node::Scalar(s) if is_null(s) => visitor.visit_unit().at(self.mark()),
            _ => Err(de::Error::invalid_type(self.unexpected(), &"null")).at(self.mark()),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, YamlError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, YamlError> {
        let mark = self.mark().copied();
        visitor.visit_newtype_struct(self).at(mark.as_ref())
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        match self.0 {
            Node::Sequence(seq) => visitor.visit_seq(SeqAccess::new(seq)).at(self.mark()),
            _ => Err(de::Error::invalid_type(self.unexpected(), &"a list")).at(self.mark()),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, YamlError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, YamlError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        match self.0 {
            Node::Mapping(map) => visitor.visit_map(MapAccess::new(map)).at(self.mark()),
            _ => Err(de::Error::invalid_type(self.unexpected(), &"a mapping")).at(self.mark()),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, YamlError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, YamlError> {
        match self.0 {
            Node::Scalar(s) => visitor
                .visit_enum(s.as_str().into_deserializer())
                .map_err(|e: de::value::Error| YamlError {
                    mark: None,
                    message: friendlier(&e.to_string()),
                })
                .at(self.mark()),
            Node::Mapping(map) if map.len() == 1 => {
                visitor.visit_enum(EnumAccess { map }).at(self.mark())
            }
            _ => Err(de::Error::invalid_type(
                self.unexpected(),
                &"a name, or a mapping with one key naming the variant",
            ))
            .at(self.mark()),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        visitor.visit_unit()
    }
}

struct MapAccess<'a> {
    iter: hashlink::linked_hash_map::Iter<'a, MarkedScalarNode, Node>,
    value: Option<&'a Node>,
    len: usize,
}

impl<'a> MapAccess<'a> {
    fn new(map: &'a MarkedMappingNode) -> Self {
        MapAccess {
            iter: map.iter(),
            value: None,
            len: map.len(),
        }
    }
}

impl<'de> de::MapAccess<'de> for MapAccess<'_> {
    type Error = YamlError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, YamlError> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        let mark = key.span().start().copied();
        seed.deserialize(ScalarKeyDe(key))
            .map(Some)
            .at(mark.as_ref())
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, YamlError> {
        match self.value.take() {
            Some(value) => seed.deserialize(NodeDe(value)),
            None => Err(de::Error::custom("value requested before key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.len)
    }
}

/// Keys are always strings.
struct ScalarKeyDe<'a>(&'a MarkedScalarNode);

impl<'de> de::Deserializer<'de> for ScalarKeyDe<'_> {
    type Error = YamlError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, YamlError> {
        visitor.visit_str(self.0.as_str())
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct SeqAccess<'a> {
    iter: std::slice::Iter<'a, Node>,
}

impl<'a> SeqAccess<'a> {
    fn new(seq: &'a MarkedSequenceNode) -> Self {
        SeqAccess { iter: seq.iter() }
    }
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'_> {
    type Error = YamlError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, YamlError> {
        match self.iter.next() {
            Some(node) => seed.deserialize(NodeDe(node)).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct EnumAccess<'a> {
    map: &'a MarkedMappingNode,
}

impl<'a, 'de> de::EnumAccess<'de> for EnumAccess<'a> {
    type Error = YamlError;
    type Variant = NodeDe<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, NodeDe<'a>), YamlError> {
        let Some((key, value)) = self.map.iter().next() else {
            return Err(de::Error::custom("expected a mapping with one key"));
        };
        let mark = key.span().start().copied();
        let variant = seed.deserialize(ScalarKeyDe(key)).at(mark.as_ref())?;
        Ok((variant, NodeDe(value)))
    }
}

impl<'de> de::VariantAccess<'de> for NodeDe<'_> {
    type Error = YamlError;

    fn unit_variant(self) -> Result<(), YamlError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, YamlError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, YamlError> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, YamlError> {
        de::Deserializer::deserialize_map(self, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        #[serde(default)]
        count: u16,
        value: Option<Value>,
    }

    fn parse(text: &str) -> Node {
        super::parse(text).expect("valid yaml")
    }

    #[test]
    fn typed_fields_and_open_values() {
        let node = parse("name: x\ncount: 7\nvalue: {a: 42, b: \"42\", c: true, d: ~, e: 1.5}\n");
        let sample: Sample = from_node(&node).expect("valid");
        assert_eq!(sample.count, 7);
        assert_eq!(
            sample.value.map(|v| v.to_json()),
            Some(serde_json::json!({"a": 42, "b": "42", "c": true, "d": null, "e": 1.5}))
        );
    }

    #[test]
    fn unknown_field_points_at_the_key() {
        let node = parse("name: x\npaht: 1\n");
        let error = from_node::<Sample>(&node).expect_err("unknown field");
        assert_eq!(
            error.message,
            "unknown field \"paht\", expected one of: name, count, value"
        );
        let mark = error.mark.expect("mark");
        assert_eq!((mark.line(), mark.column()), (2, 1));
    }

    #[test]
    fn wrong_type_points_at_the_value() {
        let node = parse("name: x\ncount: lots\n");
        let error = from_node::<Sample>(&node).expect_err("bad count");
        let mark = error.mark.expect("mark");
        assert_eq!((mark.line(), mark.column()), (2, 8));
        assert!(
            error
                .message
                .contains("expected an integer from 0 to 65535"),
            "{}",
            error.message
        );
    }

    #[test]
    fn missing_field_points_at_the_mapping() {
        let node = parse("count: 1\n");
        let error = from_node::<Sample>(&node).expect_err("missing name");
        assert_eq!(error.message, "missing field \"name\"");
        assert!(error.mark.is_some());
    }
}
