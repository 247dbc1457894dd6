//! `debug`: shows messages on stdout and on the debug bus.
//!
//! Each message becomes one JSON line on stdout, in the seed's shape:
//!
//! ```text
//! {"time":"2017-12-22T16:40:41.504Z","node":"show","msg":{"_msgid":"…","payload":…}}
//! ```
//!
//! Lines are written whole under the stdout lock, so lines from several
//! debug nodes never interleave; logs go to stderr, so stdout carries only
//! these lines. A closed stdout (a pipe whose reader left) is ignored. The
//! same message is published as a [`DebugEvent`] for the editor when anyone
//! listens.

use std::io::Write as _;
use std::time::SystemTime;

use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, DebugBus, DebugEvent, FlowId, Msg, NodeError, NodeId, NodeSpec, NodeType,
    Out, PropPath, SyncNode, Value,
};
use serde::Deserialize;
use serde::ser::{Serialize, SerializeMap, Serializer};

/// The `debug` node type.
#[derive(Debug)]
pub struct Debug;

/// Config of `debug`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DebugConfig {
    /// Show the whole message (default). `false` without `property` shows
    /// `payload` only, as in Node-RED.
    #[serde(default)]
    pub complete: Option<bool>,
    /// Show only this property: `msg` is then `{"_msgid": …, "<property>":
    /// value}`, without the key when the property is missing.
    #[serde(default)]
    pub property: Option<PropPath>,
    /// Print to stdout (default true). The debug bus gets the message
    /// either way.
    #[serde(default = "default_true")]
    pub console: bool,
    /// Whether the node does anything at all (default true).
    #[serde(default = "default_true")]
    pub active: bool,
    /// Cut strings longer than this many characters (adding `…`) and keep
    /// only this many items of arrays and bytes (default: no limit).
    #[serde(default)]
    pub max_length: Option<usize>,
}

fn default_true() -> bool {
    true
}

/// Where console lines go.
enum Console {
    /// Standard output (the real thing).
    Stdout,
    /// A buffer, for tests.
    #[cfg(test)]
    Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>),
}

struct DebugNode {
    node: NodeId,
    flow: FlowId,
    property: Option<PropPath>,
    console: Option<Console>,
    active: bool,
    max_length: Option<usize>,
    bus: DebugBus,
    /// Reused for every line.
    line: Vec<u8>,
}

impl NodeType for Debug {
    const TYPE: &'static str = "debug";
    const SUMMARY: &'static str =
        "Shows messages on stdout (one JSON line each) and in the editor.";
    type Config = DebugConfig;

    fn build(config: DebugConfig, ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        if config.complete == Some(true) && config.property.is_some() {
            return Err(BuildError::field(
                "complete",
                "`complete: true` shows the whole message; remove it to show only `property`",
            ));
        }
        if config.max_length == Some(0) {
            return Err(BuildError::field("max_length", "expected at least 1"));
        }
        let property = shown_property(config.property, config.complete);
        Ok(NodeSpec::sync(
            0,
            DebugNode {
                node: ctx.node_id().clone(),
                flow: ctx.flow().clone(),
                property,
                console: config.console.then_some(Console::Stdout),
                active: config.active,
                max_length: config.max_length,
                bus: ctx.debug_bus(),
                line: Vec::with_capacity(256),
            },
        ))
    }
}

/// The one property to show, if any: `property`, or `payload` with
/// `complete: false`.
fn shown_property(property: Option<PropPath>, complete: Option<bool>) -> Option<PropPath> {
    match (property, complete) {
        (Some(path), _) => Some(path),
        (None, Some(false)) => Some(
            PropPath::parse("payload")
                .unwrap_or_else(|_| unreachable!("\"payload\" is a valid path")),
        ),
        (None, _) => None,
    }
}

/// What is shown of a message: `_msgid` first, then the whole message or
/// the one property.
struct Shown<'a> {
    msg: &'a Msg,
    property: Option<&'a PropPath>,
}

impl Serialize for Shown<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let id = self.msg.id().to_string();
        match self.property {
            None => {
                let props = self.msg.props();
                let mut map = serializer.serialize_map(Some(props.len() + 1))?;
                map.serialize_entry("_msgid", &id)?;
                for (key, value) in props {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
            Some(path) => {
                let value: Option<&Value> = self.msg.get(path);
                let mut map = serializer.serialize_map(Some(1 + usize::from(value.is_some())))?;
                map.serialize_entry("_msgid", &id)?;
                if let Some(value) = value {
                    map.serialize_entry(path.as_str(), value)?;
                }
                map.end()
            }
        }
    }
}

/// A console line: `{"time","node","msg"}`.
#[derive(serde::Serialize)]
struct Line<'a, M: Serialize> {
    time: &'a str,
    node: &'a str,
    msg: M,
}

/// Writes one line in a single `write_all`, ignoring a closed or failing
/// output: debug output must never stop the flow.
fn write_line(console: &Console, buffer: &mut Vec<u8>, line: &Line<'_, impl Serialize>) {
    buffer.clear();
    if serde_json::to_writer(&mut *buffer, line).is_err() {
        return;
    }
    buffer.push(b'\n');
    match console {
        Console::Stdout => {
            // Under the lock, so lines never interleave; EPIPE is ignored
            // (Rust ignores SIGPIPE, so a closed pipe is just an error).
            let _ = std::io::stdout().lock().write_all(buffer);
        }
        #[cfg(test)]
        Console::Capture(captured) => {
            if let Ok(mut captured) = captured.lock() {
                captured.extend_from_slice(buffer);
            }
        }
    }
}

/// Cuts strings longer than `limit` characters (adding `…`) and arrays
/// longer than `limit` items, everywhere in `value`.
fn truncate(value: &mut serde_json::Value, limit: usize) {
    use serde_json::Value as J;
    match value {
        J::String(text) => {
            if let Some((cut, _)) = text.char_indices().nth(limit) {
                text.truncate(cut);
                text.push('…');
            }
        }
        J::Array(items) => {
            items.truncate(limit);
            items.iter_mut().for_each(|item| truncate(item, limit));
        }
        J::Object(map) => {
            // Bytes show as Node.js Buffers: cut the data, keep the tag.
            if map.len() == 2
                && map.get("type").and_then(J::as_str) == Some("Buffer")
                && let Some(J::Array(data)) = map.get_mut("data")
            {
                data.truncate(limit);
                return;
            }
            map.values_mut().for_each(|item| truncate(item, limit));
        }
        J::Null | J::Bool(_) | J::Number(_) => {}
    }
}

impl SyncNode for DebugNode {
    fn on_msg(&mut self, msg: Msg, _out: &mut Out) -> Result<(), NodeError> {
        if !self.active {
            return Ok(());
        }
        let listening = self.bus.has_listeners();
        if self.console.is_none() && !listening {
            return Ok(());
        }
        let now = SystemTime::now();
        let shown = Shown {
            msg: &msg,
            property: self.property.as_ref(),
        };
        // A JSON tree is built only for the bus or to cut long values; the
        // plain console path serialises straight from the message.
        let tree = if listening || self.max_length.is_some() {
            let mut tree = serde_json::to_value(&shown).unwrap_or_default();
            if let Some(limit) = self.max_length {
                truncate(&mut tree, limit);
            }
            Some(tree)
        } else {
            None
        };
        if let Some(console) = &self.console {
            let time = humantime::format_rfc3339_millis(now).to_string();
            let node = self.node.as_str();
            match &tree {
                Some(tree) => write_line(
                    console,
                    &mut self.line,
                    &Line {
                        time: &time,
                        node,
                        msg: tree,
                    },
                ),
                None => write_line(
                    console,
                    &mut self.line,
                    &Line {
                        time: &time,
                        node,
                        msg: &shown,
                    },
                ),
            }
        }
        if let Some(tree) = tree.filter(|_| listening) {
            self.bus.publish(DebugEvent {
                time: now,
                node: self.node.clone(),
                flow: self.flow.clone(),
                msg_id: msg.id(),
                msg: tree,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::inject::flow_test::{deploy, engine};
    use runnel_engine::testing::{build, run_sync_node};
    use runnel_engine::yaml;
    use serde_json::json;

    /// A debug node built from `config` whose console lines go to a buffer.
    fn capturing(config: &str) -> (DebugNode, Arc<Mutex<Vec<u8>>>) {
        let config: DebugConfig = yaml::from_node(&yaml::parse(config).unwrap()).unwrap();
        let captured = Arc::new(Mutex::new(Vec::new()));
        let node = DebugNode {
            node: NodeId::new("show"),
            flow: FlowId::new("test"),
            property: shown_property(config.property, config.complete),
            console: config.console.then(|| Console::Capture(captured.clone())),
            active: config.active,
            max_length: config.max_length,
            bus: DebugBus::default(),
            line: Vec::new(),
        };
        (node, captured)
    }

    fn lines(captured: &Mutex<Vec<u8>>) -> Vec<serde_json::Value> {
        let bytes = captured.lock().unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'));
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn prints_one_json_line_per_message_in_the_seed_shape() {
        let (mut node, captured) = capturing("{}");
        let mut msg = Msg::new(Value::from("hello from mobile user"));
        msg.set_topic("car-iotp");
        let id = msg.id().to_string();
        run_sync_node(
            &mut node,
            0,
            vec![msg, Msg::new(Value::from(json!({"a": [1]})))],
        );
        let lines = lines(&captured);
        assert_eq!(lines.len(), 2);
        let line = lines[0].as_object().unwrap();
        let keys: Vec<&String> = line.keys().collect();
        assert_eq!(keys, ["time", "node", "msg"]);
        assert_eq!(line["node"], "show");
        assert_eq!(
            line["msg"],
            json!({"_msgid": id, "payload": "hello from mobile user", "topic": "car-iotp"})
        );
        let msg_keys: Vec<&String> = line["msg"].as_object().unwrap().keys().collect();
        assert_eq!(msg_keys, ["_msgid", "payload", "topic"]);
        // 2017-12-22T16:40:41.504Z
        let time = line["time"].as_str().unwrap();
        assert_eq!(time.len(), 24, "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert_eq!(lines[1]["msg"]["payload"], json!({"a": [1]}));
    }

    #[test]
    fn property_shows_one_property() {
        let (mut node, captured) = capturing("property: payload.name");
        let with = Msg::new(Value::from(json!({"name": "car", "other": 1})));
        let without = Msg::new(Value::from(json!({})));
        let ids = [with.id().to_string(), without.id().to_string()];
        run_sync_node(&mut node, 0, vec![with, without]);
        let lines = lines(&captured);
        assert_eq!(
            lines[0]["msg"],
            json!({"_msgid": ids[0], "payload.name": "car"})
        );
        assert_eq!(lines[1]["msg"], json!({"_msgid": ids[1]}));
    }

    #[test]
    fn complete_false_shows_the_payload() {
        let (mut node, captured) = capturing("complete: false");
        let mut msg = Msg::new(Value::from(7_i64));
        msg.set_topic("hidden");
        let id = msg.id().to_string();
        run_sync_node(&mut node, 0, vec![msg]);
        assert_eq!(
            lines(&captured)[0]["msg"],
            json!({"_msgid": id, "payload": 7})
        );
    }

    #[test]
    fn inactive_or_silent_nodes_print_nothing() {
        for config in ["active: false", "console: false"] {
            let (mut node, captured) = capturing(config);
            run_sync_node(&mut node, 0, vec![Msg::new(Value::from(1_i64))]);
            assert!(lines(&captured).is_empty(), "{config}");
        }
    }

    #[test]
    fn max_length_cuts_long_strings_arrays_and_bytes() {
        let (mut node, captured) = capturing("max_length: 3");
        let mut msg = Msg::new(Value::from(
            json!({"s": "abcdef", "a": [1, 2, 3, 4], "short": "héé"}),
        ));
        msg.set(
            &PropPath::parse("raw").unwrap(),
            Value::Bytes(bytes::Bytes::from_static(b"hello")),
        )
        .unwrap();
        run_sync_node(&mut node, 0, vec![msg]);
        let lines = lines(&captured);
        assert_eq!(
            lines[0]["msg"]["payload"],
            json!({"s": "abc…", "a": [1, 2, 3], "short": "héé"})
        );
        assert_eq!(
            lines[0]["msg"]["raw"],
            json!({"type": "Buffer", "data": [104, 101, 108]})
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let error = build::<Debug>("complete: true\nproperty: payload").unwrap_err();
        assert!(error.starts_with("field \"complete\""), "{error}");
        let error = build::<Debug>("max_length: 0").unwrap_err();
        assert!(error.starts_with("field \"max_length\""), "{error}");
        let error = build::<Debug>("tosidebar: true").unwrap_err();
        assert_eq!(
            error,
            "unknown field \"tosidebar\", expected one of: complete, property, console, active, max_length"
        );
        let spec = build::<Debug>("{}").unwrap();
        assert_eq!(spec.outputs, 0);
        assert!(spec.has_input);
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_to_the_debug_bus() {
        let engine = engine();
        let mut events = engine.shared().debug.subscribe();
        deploy(
            &engine,
            r#"
nodes:
  - {id: tick, type: inject, payload: {name: car}, wires: [show, hidden]}
  - {id: show, type: debug, console: false}
  - {id: hidden, type: debug, active: false}
"#,
        )
        .await;
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
            .await
            .expect("an event before the hang guard")
            .expect("bus open");
        engine.shutdown().await;
        assert_eq!(event.node.as_str(), "show");
        assert_eq!(event.flow.as_str(), "test");
        assert_eq!(event.msg["payload"], json!({"name": "car"}));
        assert_eq!(event.msg["_msgid"], event.msg_id.to_string());
        assert!(
            events.try_recv().is_err(),
            "the inactive node published nothing"
        );
    }
}
