//! [`Map`]: the ordered property map of objects and messages.
//!
//! Keys keep their insertion order, as in a JavaScript object, so JSON goes
//! out in the order it came in. Nearly every map a flow builds is small: a
//! message's properties (`payload`, `topic`, `qos`, `retain`), a sensor's
//! reading, a location. For those a vector searched from the front is both
//! the cheapest to build (one allocation, no hashing) and the fastest to
//! read. A map that grows past [`INDEX_FROM`] entries gets a hash index
//! (foldhash, seeded per process so keys from the network cannot be chosen
//! to collide) over the same vector, so large documents keep O(1) lookups
//! and linear-time parsing.
//!
//! Equality ignores order, as `IndexMap`'s and `serde_json`'s do.

use std::fmt;
use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::value::Value;

/// Entries up to which lookups scan the vector; from this many on, a hash
/// index is kept.
pub const INDEX_FROM: usize = 9;

/// An ordered map of property names to values.
#[derive(Clone, Default)]
pub struct Map {
    entries: Vec<(String, Value)>,
    index: Option<Box<Index>>,
}

/// Positions in `entries`, by key hash.
#[derive(Clone)]
struct Index {
    table: HashTable<usize>,
    hasher: foldhash::fast::RandomState,
}

impl Index {
    fn build(entries: &[(String, Value)]) -> Box<Index> {
        let mut index = Box::new(Index {
            table: HashTable::with_capacity(entries.len()),
            hasher: foldhash::fast::RandomState::default(),
        });
        for (position, (key, _)) in entries.iter().enumerate() {
            index.push(entries, key, position);
        }
        index
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn find(&self, entries: &[(String, Value)], key: &str) -> Option<usize> {
        self.table
            .find(self.hash(key), |&i| {
                entries.get(i).is_some_and(|(k, _)| k == key)
            })
            .copied()
    }

    /// Records that `key` (not yet present) is at `position`.
    fn push(&mut self, entries: &[(String, Value)], key: &str, position: usize) {
        let hash = self.hash(key);
        let hasher = &self.hasher;
        self.table.insert_unique(hash, position, |&i| {
            entries
                .get(i)
                .map_or(0, |(k, _)| hasher.hash_one(k.as_str()))
        });
    }
}

impl Map {
    /// An empty map.
    pub fn new() -> Self {
        Map::default()
    }

    /// An empty map with room for `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Map {
            entries: Vec::with_capacity(capacity),
            index: None,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, key: &str) -> Option<usize> {
        match &self.index {
            Some(index) => index.find(&self.entries, key),
            None => self.entries.iter().position(|(k, _)| k == key),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.position(key)
            .and_then(|i| self.entries.get(i))
            .map(|(_, v)| v)
    }

    /// The value of `key`, for writing.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.position(key)
            .and_then(|i| self.entries.get_mut(i))
            .map(|(_, v)| v)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Sets `key` to `value`, returning the previous value. A new key goes
    /// last; an existing one keeps its place.
    pub fn insert(&mut self, key: String, value: Value) -> Option<Value> {
        if let Some(slot) = self.get_mut(&key) {
            return Some(std::mem::replace(slot, value));
        }
        self.push_new(key, value);
        None
    }

    /// Appends an entry whose key is known to be absent.
    fn push_new(&mut self, key: String, value: Value) {
        let position = self.entries.len();
        if let Some(index) = &mut self.index {
            index.push(&self.entries, &key, position);
            self.entries.push((key, value));
        } else {
            self.entries.push((key, value));
            if self.entries.len() >= INDEX_FROM {
                self.index = Some(Index::build(&self.entries));
            }
        }
    }

    /// Removes `key`, keeping the order of the others (O(n), like
    /// `IndexMap::shift_remove`).
    pub fn shift_remove(&mut self, key: &str) -> Option<Value> {
        let position = self.position(key)?;
        let (_, value) = self.entries.remove(position);
        self.reindex();
        Some(value)
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut Value) -> bool) {
        let before = self.entries.len();
        self.entries.retain_mut(|(k, v)| keep(k, v));
        if self.entries.len() != before {
            self.reindex();
        }
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.index = None;
    }

    fn reindex(&mut self) {
        self.index = (self.entries.len() >= INDEX_FROM).then(|| Index::build(&self.entries));
    }

    /// The entries in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter(self.entries.iter())
    }

    /// The entries in order, values writable.
    pub fn iter_mut(&mut self) -> IterMut<'_> {
        IterMut(self.entries.iter_mut())
    }

    /// The keys in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &String> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    /// The values in order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Value> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }

    /// The values in order, writable.
    pub fn values_mut(
        &mut self,
    ) -> impl DoubleEndedIterator<Item = &mut Value> + ExactSizeIterator {
        self.entries.iter_mut().map(|(_, v)| v)
    }
}

/// Iterator over a [`Map`]'s entries.
#[derive(Clone, Debug)]
pub struct Iter<'a>(std::slice::Iter<'a, (String, Value)>);

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a String, &'a Value);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (k, v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|(k, v)| (k, v))
    }
}

impl ExactSizeIterator for Iter<'_> {}

/// Iterator over a [`Map`]'s entries with writable values.
#[derive(Debug)]
pub struct IterMut<'a>(std::slice::IterMut<'a, (String, Value)>);

impl<'a> Iterator for IterMut<'a> {
    type Item = (&'a String, &'a mut Value);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (&*k, v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for IterMut<'_> {}

impl<'a> IntoIterator for &'a Map {
    type Item = (&'a String, &'a Value);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for &'a mut Map {
    type Item = (&'a String, &'a mut Value);
    type IntoIter = IterMut<'a>;

    fn into_iter(self) -> IterMut<'a> {
        self.iter_mut()
    }
}

impl IntoIterator for Map {
    type Item = (String, Value);
    type IntoIter = std::vec::IntoIter<(String, Value)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl FromIterator<(String, Value)> for Map {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(items: I) -> Self {
        let mut map = Map::new();
        map.extend(items);
        map
    }
}

impl Extend<(String, Value)> for Map {
    fn extend<I: IntoIterator<Item = (String, Value)>>(&mut self, items: I) {
        for (key, value) in items {
            self.insert(key, value);
        }
    }
}

impl PartialEq for Map {
    fn eq(&self, other: &Map) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl fmt::Debug for Map {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(n: usize) -> Map {
        (0..n)
            .map(|i| (format!("k{i}"), Value::from(i as u64)))
            .collect()
    }

    #[test]
    fn keeps_insertion_order_and_replaces_in_place() {
        let mut map = Map::new();
        map.insert("z".into(), Value::from(1_u64));
        map.insert("a".into(), Value::from(2_u64));
        assert_eq!(
            map.insert("z".into(), Value::from(3_u64)),
            Some(Value::from(1_u64))
        );
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        assert_eq!(keys, ["z", "a"]);
        assert_eq!(map.get("z"), Some(&Value::from(3_u64)));
    }

    #[test]
    fn lookups_agree_below_and_above_the_index_threshold() {
        for n in [0, 1, INDEX_FROM - 1, INDEX_FROM, INDEX_FROM + 1, 200] {
            let mut map = numbered(n);
            assert_eq!(map.index.is_some(), n >= INDEX_FROM, "n = {n}");
            for i in 0..n {
                assert_eq!(map.get(&format!("k{i}")), Some(&Value::from(i as u64)));
            }
            assert_eq!(map.get("missing"), None);
            // Removing keeps the order and the index right.
            if n > 2 {
                assert_eq!(map.shift_remove("k1"), Some(Value::from(1_u64)));
                assert_eq!(map.get("k1"), None);
                assert_eq!(
                    map.get(&format!("k{}", n - 1)),
                    Some(&Value::from(n as u64 - 1))
                );
                let keys: Vec<&str> = map.keys().take(2).map(String::as_str).collect();
                assert_eq!(keys, ["k0", "k2"]);
                map.retain(|k, _| k != "k0");
                assert_eq!(map.get("k0"), None);
                assert_eq!(map.get("k2"), Some(&Value::from(2_u64)));
                assert_eq!(map.len(), n - 2);
            }
        }
    }

    #[test]
    fn duplicate_keys_past_the_threshold_replace() {
        let mut map = numbered(50);
        map.insert("k7".into(), Value::from("seven"));
        assert_eq!(map.len(), 50);
        assert_eq!(map.get("k7"), Some(&Value::from("seven")));
        assert_eq!(map.keys().nth(7).map(String::as_str), Some("k7"));
    }

    #[test]
    fn equality_ignores_order() {
        let a: Map = [
            ("x".to_string(), Value::Null),
            ("y".to_string(), Value::from(true)),
        ]
        .into_iter()
        .collect();
        let b: Map = [
            ("y".to_string(), Value::from(true)),
            ("x".to_string(), Value::Null),
        ]
        .into_iter()
        .collect();
        assert_eq!(a, b);
        let c: Map = [("x".to_string(), Value::Null)].into_iter().collect();
        assert_ne!(a, c);
    }
}
