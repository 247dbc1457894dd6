//! Document plumbing shared by the backends: dotted paths, ids and CouchDB-style revisions.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{GeoError, GeoResult};

/// The field every stored document carries its id in, whatever `id_path` says.
pub const ID_FIELD: &str = "_id";
/// The field every stored document carries its revision in.
pub const REV_FIELD: &str = "_rev";

/// Follows a dotted path (`d.location`) through nested objects.
///
/// An empty path means the document itself.
pub(crate) fn get_path<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(doc);
    }
    path.split('.')
        .try_fold(doc, |value, segment| field(value.as_object()?, segment))
}

/// A field of a JSON object. Small objects (documents and their location fields
/// usually are) are scanned: cheaper than hashing the key with SipHash, which
/// serde_json's `preserve_order` maps use, on every stored document.
pub(crate) fn field<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    const SCAN: usize = 8;
    if object.len() <= SCAN {
        object
            .iter()
            .find_map(|(name, value)| (name == key).then_some(value))
    } else {
        object.get(key)
    }
}

/// Writes `value` at a dotted path, creating intermediate objects.
///
/// Fails when a segment on the way holds something that is not an object.
pub(crate) fn set_path(doc: &mut Value, path: &str, value: Value) -> GeoResult<()> {
    let mut segments = path.split('.').peekable();
    let mut current = doc;
    while let Some(segment) = segments.next() {
        let Some(object) = current.as_object_mut() else {
            return Err(GeoError::document(format!(
                "cannot set `{path}`: a parent of `{segment}` is not an object"
            )));
        };
        if segments.peek().is_none() {
            object.insert(segment.to_owned(), value);
            return Ok(());
        }
        current = object
            .entry(segment.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Err(GeoError::document("empty path"))
}

/// Reads the document id at `id_path`: a non-empty string, or a number (used in its
/// decimal form). `Ok(None)` when the field is absent or null.
pub(crate) fn read_id(doc: &Value, id_path: &str) -> GeoResult<Option<String>> {
    match get_path(doc, id_path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if id.is_empty() => Err(GeoError::document(format!(
            "`{id_path}` is an empty string"
        ))),
        Some(Value::String(id)) if id.starts_with('_') => Err(GeoError::document(format!(
            "`{id_path}` must not start with `_` (reserved by CouchDB)"
        ))),
        Some(Value::String(id)) => Ok(Some(id.clone())),
        Some(Value::Number(number)) => Ok(Some(number.to_string())),
        Some(_) => Err(GeoError::document(format!(
            "`{id_path}` must be a string or a number"
        ))),
    }
}

/// A fresh random id: 32 lowercase hex digits, like CouchDB's `uuids`.
pub(crate) fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Parses the generation number of a `N-hash` revision.
pub(crate) fn rev_generation(rev: &str) -> Option<u64> {
    rev.split_once('-')?.0.parse().ok()
}

/// The revision that follows `previous` for a document body.
///
/// `N-<32 hex>`: the generation is one more than the previous one, and the hash covers
/// the previous revision and the body, so equal bodies on different histories differ.
pub(crate) fn next_rev(previous: Option<&str>, body: &[u8]) -> String {
    use std::fmt::Write as _;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let generation = previous.and_then(rev_generation).unwrap_or(0) + 1;
    let mut hasher = Sha256::new();
    hasher.update(previous.unwrap_or("").as_bytes());
    hasher.update([0]);
    hasher.update(body);
    let digest = hasher.finalize();
    // Runs once per write on the writer thread: no per-byte formatting.
    let mut rev = String::with_capacity(21 + 32);
    let _ = write!(rev, "{generation}-");
    for byte in &digest[..16] {
        rev.push(char::from(HEX[usize::from(byte >> 4)]));
        rev.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    rev
}

/// Makes sure `doc` is an object, returning it mutably.
pub(crate) fn as_object_mut(doc: &mut Value) -> GeoResult<&mut Map<String, Value>> {
    doc.as_object_mut()
        .ok_or_else(|| GeoError::document("a document must be a JSON object"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_read_and_write_nested_fields() {
        let mut doc = json!({"d": {"location": {"latitude": 1.0}}});
        assert_eq!(get_path(&doc, "d.location.latitude"), Some(&json!(1.0)));
        assert_eq!(get_path(&doc, "d.missing"), None);
        set_path(&mut doc, "meta.id", json!("x")).unwrap();
        assert_eq!(doc["meta"]["id"], json!("x"));
        assert!(set_path(&mut doc, "d.location.latitude.deeper", json!(1)).is_err());
        // Small objects are scanned, larger ones hashed: both find every field.
        for size in [1, 8, 9, 40] {
            let object: Map<String, Value> =
                (0..size).map(|n| (format!("k{n}"), json!(n))).collect();
            for n in 0..size {
                assert_eq!(field(&object, &format!("k{n}")), Some(&json!(n)));
            }
            assert_eq!(field(&object, "k"), None);
        }
    }

    #[test]
    fn ids_are_strings_or_numbers() {
        assert_eq!(
            read_id(&json!({"_id": "a"}), "_id").unwrap(),
            Some("a".into())
        );
        assert_eq!(read_id(&json!({"n": 7}), "n").unwrap(), Some("7".into()));
        assert_eq!(read_id(&json!({}), "_id").unwrap(), None);
        assert!(read_id(&json!({"_id": ""}), "_id").is_err());
        assert!(read_id(&json!({"_id": "_design/x"}), "_id").is_err());
        assert!(read_id(&json!({"_id": [1]}), "_id").is_err());
        assert_eq!(new_id().len(), 32);
    }

    #[test]
    fn revisions_increment_their_generation() {
        let body = br#"{"a":1}"#;
        let first = next_rev(None, body);
        assert!(first.starts_with("1-"));
        assert_eq!(first.len(), 2 + 32);
        let second = next_rev(Some(&first), body);
        assert!(second.starts_with("2-"));
        assert_ne!(first[2..], second[2..]);
        assert!(
            first[2..]
                .bytes()
                .all(|byte| byte.is_ascii_hexdigit() && !byte.is_ascii_uppercase())
        );
        // The format is stable: existing revisions keep their meaning.
        assert_eq!(next_rev(None, b"{}"), "1-28a3a18f6cd6406b086e9ffda1f9b8a1");
        assert_eq!(rev_generation("12-abc"), Some(12));
    }
}
