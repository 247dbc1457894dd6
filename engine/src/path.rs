//! [`PropPath`]: a message property path such as `payload[0].d.location`.
//!
//! The grammar is Node-RED's: dot-separated names, `[N]` array indexes, and
//! `["any key"]` for names with dots or spaces. Paths are parsed once, when a
//! flow loads, so the hot path only walks pre-split segments.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

use crate::value::{Map, Value};

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// An object key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A parsed property path. The first segment is always a key: the message
/// property (`payload`, `topic`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropPath {
    text: Arc<str>,
    segments: Arc<[Segment]>,
}

/// Why a path could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid property path {path:?}: {reason}")]
pub struct PathError {
    path: String,
    reason: &'static str,
}

impl PropPath {
    /// Parses a path like `payload[0].d.location`.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let fail = |reason| PathError {
            path: text.to_string(),
            reason,
        };
        let mut segments = Vec::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        let mut expect_name = true;
        while i < bytes.len() {
            match bytes[i] {
                b'.' => {
                    if expect_name {
                        return Err(fail("empty name before '.'"));
                    }
                    expect_name = true;
                    i += 1;
                }
                b'[' => {
                    if segments.is_empty() {
                        return Err(fail("a path must start with a property name"));
                    }
                    let close = text[i..]
                        .find(']')
                        .map(|offset| i + offset)
                        .ok_or_else(|| fail("'[' without ']'"))?;
                    let inner = text[i + 1..close].trim();
                    let segment = if let Some(quoted) = strip_quotes(inner) {
                        Segment::Key(quoted.to_string())
                    } else {
                        inner.parse::<usize>().map(Segment::Index).map_err(|_| {
                            fail("expected a non-negative index or a quoted key in [...]")
                        })?
                    };
                    segments.push(segment);
                    expect_name = false;
                    i = close + 1;
                }
                _ => {
                    if !expect_name {
                        return Err(fail("expected '.' or '[' after a name or index"));
                    }
                    let end = text[i..]
                        .find(['.', '['])
                        .map_or(text.len(), |offset| i + offset);
                    let name = &text[i..end];
                    if name.chars().any(char::is_whitespace) || name.contains(']') {
                        return Err(fail("names may not contain spaces or ']': use [\"...\"]"));
                    }
                    segments.push(Segment::Key(name.to_string()));
                    expect_name = false;
                    i = end;
                }
            }
        }
        if segments.is_empty() {
            return Err(fail("the path is empty"));
        }
        if expect_name {
            return Err(fail("the path ends with '.'"));
        }
        Ok(PropPath {
            text: text.into(),
            segments: segments.into(),
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The top-level property name (`payload` in `payload.a`).
    pub fn property(&self) -> &str {
        match self.segments.first() {
            Some(Segment::Key(key)) => key,
            _ => "",
        }
    }

    /// Reads the value at this path inside `root`.
    pub fn get<'v>(&self, root: &'v Map) -> Option<&'v Value> {
        let (first, rest) = self.segments.split_first()?;
        let Segment::Key(key) = first else {
            return None;
        };
        let mut current = root.get(key)?;
        for segment in rest {
            current = step(current, segment)?;
        }
        Some(current)
    }

    /// Writes `value` at this path inside `root`, creating objects (or arrays,
    /// for index segments) along the way, copying shared containers only on
    /// the written path. Fails if an existing value of another type is in the
    /// way (`payload.a` when `payload` is a number).
    pub fn set(&self, root: &mut Map, value: Value) -> Result<(), SetError> {
        let Some((Segment::Key(first), rest)) = self.segments.split_first() else {
            return Err(SetError::new(
                self,
                "a path must start with a property name",
            ));
        };
        if rest.is_empty() {
            // Replacing an existing property allocates nothing.
            match root.get_mut(first.as_str()) {
                Some(slot) => *slot = value,
                None => {
                    root.insert(first.clone(), value);
                }
            }
            return Ok(());
        }
        if !root.contains_key(first.as_str()) {
            root.insert(first.clone(), Value::Null);
        }
        let mut current = root
            .get_mut(first.as_str())
            .ok_or_else(|| SetError::new(self, "property vanished while being set"))?;
        for (index, segment) in rest.iter().enumerate() {
            let last = index + 1 == rest.len();
            current = descend_mut(current, segment, last)
                .ok_or_else(|| SetError::new(self, "a value of another type is in the way"))?;
        }
        *current = value;
        Ok(())
    }

    /// Removes the value at this path, returning it.
    pub fn delete(&self, root: &mut Map) -> Option<Value> {
        let (last, parents) = self.segments.split_last()?;
        if parents.is_empty() {
            let Segment::Key(key) = last else {
                return None;
            };
            return root.shift_remove(key);
        }
        let Some((Segment::Key(first), middle)) = parents.split_first() else {
            return None;
        };
        // Only copy containers when the path really exists.
        self.get(root)?;
        let mut current = root.get_mut(first)?;
        for segment in middle {
            current = match (current, segment) {
                (Value::Object(map), Segment::Key(key)) => Arc::make_mut(map).get_mut(key)?,
                (Value::Array(items), Segment::Index(i)) => Arc::make_mut(items).get_mut(*i)?,
                _ => return None,
            };
        }
        match (current, last) {
            (Value::Object(map), Segment::Key(key)) => Arc::make_mut(map).shift_remove(key),
            (Value::Array(items), Segment::Index(i)) if *i < items.len() => {
                Some(Arc::make_mut(items).remove(*i))
            }
            _ => None,
        }
    }
}

fn strip_quotes(inner: &str) -> Option<&str> {
    let quoted = |q: char| inner.strip_prefix(q).and_then(|s| s.strip_suffix(q));
    quoted('"').or_else(|| quoted('\''))
}

fn step<'v>(value: &'v Value, segment: &Segment) -> Option<&'v Value> {
    match (value, segment) {
        (Value::Object(map), Segment::Key(key)) => map.get(key),
        (Value::Array(items), Segment::Index(i)) => items.get(*i),
        _ => None,
    }
}

fn descend_mut<'v>(value: &'v mut Value, segment: &Segment, _last: bool) -> Option<&'v mut Value> {
    if value.is_null() {
        *value = match segment {
            Segment::Key(_) => Value::object(),
            Segment::Index(_) => Value::Array(Arc::new(Vec::new())),
        };
    }
    match (value, segment) {
        (Value::Object(map), Segment::Key(key)) => {
            let map = Arc::make_mut(map);
            if !map.contains_key(key.as_str()) {
                map.insert(key.clone(), Value::Null);
            }
            map.get_mut(key.as_str())
        }
        (Value::Array(items), Segment::Index(i)) => {
            let items = Arc::make_mut(items);
            if *i >= items.len() {
                items.resize(*i + 1, Value::Null);
            }
            items.get_mut(*i)
        }
        _ => None,
    }
}

/// Why [`PropPath::set`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot set {path}: {reason}")]
pub struct SetError {
    path: String,
    reason: &'static str,
}

impl SetError {
    fn new(path: &PropPath, reason: &'static str) -> Self {
        SetError {
            path: path.as_str().to_string(),
            reason,
        }
    }
}

impl fmt::Display for PropPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for PropPath {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PropPath::parse(s)
    }
}

impl<'de> Deserialize<'de> for PropPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        PropPath::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for PropPath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl schemars::JsonSchema for PropPath {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PropPath".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "a message property path such as payload[0].d.location",
            "minLength": 1
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(json: serde_json::Value) -> Map {
        match Value::from(json) {
            Value::Object(map) => (*map).clone(),
            _ => Map::default(),
        }
    }

    #[test]
    fn parses_node_red_paths() {
        let path = PropPath::parse(r#"payload[0].d["a b"].x"#).expect("valid");
        assert_eq!(
            path.segments(),
            &[
                Segment::Key("payload".into()),
                Segment::Index(0),
                Segment::Key("d".into()),
                Segment::Key("a b".into()),
                Segment::Key("x".into()),
            ]
        );
    }

    #[test]
    fn rejects_malformed_paths() {
        for bad in ["", ".a", "a.", "a..b", "[0]", "a[x]", "a[0", "a b", "a[0]b"] {
            assert!(PropPath::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn get_set_delete() {
        let mut root = map(serde_json::json!({"payload": [{"d": {"location": {"lat": 1}}}]}));
        let path = PropPath::parse("payload[0].d.location").expect("valid");
        assert_eq!(
            path.get(&root).map(Value::to_json),
            Some(serde_json::json!({"lat": 1}))
        );
        let new = PropPath::parse("payload[0].d.name").expect("valid");
        new.set(&mut root, Value::from("car")).expect("set");
        assert_eq!(new.get(&root), Some(&Value::from("car")));
        let deep = PropPath::parse("x.y[2]").expect("valid");
        deep.set(&mut root, Value::from(true)).expect("set creates");
        assert_eq!(
            root.get("x").map(Value::to_json),
            Some(serde_json::json!({"y": [null, null, true]}))
        );
        assert_eq!(
            path.delete(&mut root).map(|v| v.to_json()),
            Some(serde_json::json!({"lat": 1}))
        );
        assert!(path.get(&root).is_none());
        let blocked = PropPath::parse("payload[0].d.name.first").expect("valid");
        assert!(blocked.set(&mut root, Value::Null).is_err());
    }
}
