//! [`Msg`]: the message that travels along wires.
//!
//! As in Node-RED a message is a map of properties (`payload`, `topic`, and
//! anything else) with a unique `_msgid`. Properties live behind an `Arc`, so
//! cloning a message for each wire of a fan-out is a handful of reference
//! count increments; the first write on a branch copies only what it touches
//! (see [`crate::value`]).
//!
//! Next to the properties a message carries things that are never
//! serialised: its [`Tracker`] (completion) and *handles*, shared objects a
//! node attaches for a later node (the HTTP request that `http-response`
//! answers, for instance).

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::completion::Tracker;
use crate::ids::MsgId;
use crate::path::{PropPath, SetError};
use crate::value::{Map, Value};

type HandleMap = HashMap<&'static str, Arc<dyn Any + Send + Sync>>;

/// A message.
#[derive(Clone)]
pub struct Msg {
    id: MsgId,
    parent: Option<MsgId>,
    props: Arc<Map>,
    tracker: Tracker,
    handles: Option<Arc<HandleMap>>,
}

impl Msg {
    /// A message with this payload, tracked by nothing (for tests and tools;
    /// nodes create messages with [`crate::NodeCtx::new_msg`]).
    pub fn new(payload: Value) -> Self {
        let id = MsgId::next();
        Msg::with_tracker(id, payload, Tracker::detached(id))
    }

    /// A message with an explicit id and tracker.
    pub fn with_tracker(id: MsgId, payload: Value, tracker: Tracker) -> Self {
        let mut props = Map::with_capacity(4);
        props.insert("payload".to_string(), payload);
        Msg {
            id,
            parent: None,
            props: Arc::new(props),
            tracker,
            handles: None,
        }
    }

    /// `_msgid`.
    pub fn id(&self) -> MsgId {
        self.id
    }

    /// The message this one was derived from, if any.
    pub fn parent(&self) -> Option<MsgId> {
        self.parent
    }

    /// The completion tracker shared with clones and derived messages.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// A new message (new `_msgid`, no properties) derived from this one: it
    /// shares the tracker and handles, so the original is not finished until
    /// the derived message is.
    pub fn derive(&self) -> Msg {
        Msg {
            id: MsgId::next(),
            parent: Some(self.id),
            props: Arc::new(Map::default()),
            tracker: self.tracker.clone(),
            handles: self.handles.clone(),
        }
    }

    /// A copy that is not tracked: holding it does not keep the original
    /// unfinished. For sinks that hand messages outside the flow (tests,
    /// recorders).
    pub fn detached(&self) -> Msg {
        Msg {
            id: self.id,
            parent: self.parent,
            props: self.props.clone(),
            tracker: Tracker::detached(self.id),
            handles: None,
        }
    }

    /// All properties.
    pub fn props(&self) -> &Map {
        &self.props
    }

    /// All properties, for writing (copied first if shared with a clone).
    pub fn props_mut(&mut self) -> &mut Map {
        Arc::make_mut(&mut self.props)
    }

    /// `msg.payload`, or `null` when unset.
    pub fn payload(&self) -> &Value {
        static NULL: Value = Value::Null;
        self.props.get("payload").unwrap_or(&NULL)
    }

    /// Sets `msg.payload`.
    pub fn set_payload(&mut self, payload: impl Into<Value>) {
        self.props_mut()
            .insert("payload".to_string(), payload.into());
    }

    /// Takes `msg.payload` out, leaving `null` (no copy of the payload).
    pub fn take_payload(&mut self) -> Value {
        self.props_mut()
            .get_mut("payload")
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// `msg.topic` when it is a string.
    pub fn topic(&self) -> Option<&str> {
        self.props.get("topic").and_then(Value::as_str)
    }

    /// Sets `msg.topic`.
    pub fn set_topic(&mut self, topic: &str) {
        self.props_mut()
            .insert("topic".to_string(), Value::from(topic));
    }

    /// Reads a property by path. `_msgid` is not a stored property: use
    /// [`Msg::id`].
    pub fn get(&self, path: &PropPath) -> Option<&Value> {
        path.get(&self.props)
    }

    /// Writes a property by path.
    pub fn set(&mut self, path: &PropPath, value: Value) -> Result<(), SetError> {
        path.set(self.props_mut(), value)
    }

    /// Removes a property by path.
    pub fn delete(&mut self, path: &PropPath) -> Option<Value> {
        path.get(&self.props)?;
        path.delete(self.props_mut())
    }

    /// Attaches a shared handle under `key`, for a later node.
    pub fn set_handle(&mut self, key: &'static str, handle: Arc<dyn Any + Send + Sync>) {
        let handles = self.handles.get_or_insert_with(Default::default);
        Arc::make_mut(handles).insert(key, handle);
    }

    /// The handle under `key`, if present and of type `T`.
    pub fn handle<T: Any + Send + Sync>(&self, key: &'static str) -> Option<Arc<T>> {
        let handle = self.handles.as_ref()?.get(key)?.clone();
        handle.downcast::<T>().ok()
    }

    /// The message as JSON: `_msgid` first, then every property.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::with_capacity(self.props.len() + 1);
        out.insert("_msgid".into(), self.id.to_string().into());
        for (key, value) in self.props.iter() {
            out.insert(key.clone(), value.to_json());
        }
        serde_json::Value::Object(out)
    }
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Msg")
            .field("id", &self.id)
            .field("parent", &self.parent)
            .field("props", &self.props)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> PropPath {
        PropPath::parse(text).expect("valid path")
    }

    #[test]
    fn clones_behave_as_independent_copies() {
        let mut a = Msg::new(Value::from(serde_json::json!({"d": {"n": 1}})));
        let b = a.clone();
        a.set(&path("payload.d.n"), Value::from(2_i64))
            .expect("set");
        assert_eq!(b.get(&path("payload.d.n")), Some(&Value::from(1_i64)));
        assert_eq!(a.get(&path("payload.d.n")), Some(&Value::from(2_i64)));
        assert_eq!(a.id(), b.id());
    }

    #[test]
    fn derived_messages_keep_the_original_unfinished() {
        let original = Msg::new(Value::Null);
        let derived = original.derive();
        assert_eq!(derived.parent(), Some(original.id()));
        assert_ne!(derived.id(), original.id());
        assert_eq!(original.tracker().holders(), 2);
        drop(derived);
        assert_eq!(original.tracker().holders(), 1);
    }

    #[test]
    fn to_json_puts_msgid_first() {
        let mut msg = Msg::new(Value::from(1_i64));
        msg.set_topic("t");
        let json = msg.to_json();
        let keys: Vec<&String> = json
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["_msgid", "payload", "topic"]);
    }

    #[test]
    fn handles_are_typed() {
        let mut msg = Msg::new(Value::Null);
        msg.set_handle("reply", Arc::new(42_u32));
        assert_eq!(msg.handle::<u32>("reply").as_deref(), Some(&42));
        assert!(msg.handle::<String>("reply").is_none());
    }
}
