//! `catch`: receives the errors of other nodes of its flow as messages.
//!
//! When a node fails on a message, the engine hands that message to the
//! flow's catch nodes with `msg.error = {message, source: {id, type},
//! count}` added (`count` grows each time the same message goes round a
//! catch; the engine cuts loops after 9). A catch node forwards it on its
//! one output. It has no input wires.

use std::fmt;

use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, CatchScope, Msg, NodeError, NodeId, NodeSpec, NodeType, Out, SyncNode,
};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// The `catch` node type.
#[derive(Debug)]
pub struct Catch;

/// Whose errors a catch node receives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every node of the flow (`all`).
    #[default]
    All,
    /// Only the nodes with these ids.
    Nodes(Vec<String>),
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScopeVisitor;

        impl<'de> Visitor<'de> for ScopeVisitor {
            type Value = Scope;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`all` or a list of node ids")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Scope, E> {
                if text == "all" {
                    Ok(Scope::All)
                } else {
                    Err(E::custom(format!(
                        "invalid scope {text:?}, expected `all` or a list of node ids such as [decode, extract]"
                    )))
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scope, A::Error> {
                let mut ids = Vec::new();
                while let Some(id) = seq.next_element::<String>()? {
                    ids.push(id);
                }
                Ok(Scope::Nodes(ids))
            }
        }

        deserializer.deserialize_any(ScopeVisitor)
    }
}

impl JsonSchema for Scope {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CatchScope".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`all`, or a list of the node ids whose errors to receive",
            "oneOf": [
                {"const": "all"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1}
            ]
        })
    }
}

/// Config of `catch`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CatchConfig {
    /// `all` (default): errors of every node of the flow; or a list of node
    /// ids: only theirs.
    #[serde(default)]
    pub scope: Scope,
}

struct CatchNode;

impl NodeType for Catch {
    const TYPE: &'static str = "catch";
    const SUMMARY: &'static str = "Receives the errors of other nodes of its flow as messages.";
    type Config = CatchConfig;

    fn build(config: CatchConfig, _ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        let scope = match config.scope {
            Scope::All => CatchScope::All,
            Scope::Nodes(ids) if ids.is_empty() => {
                return Err(BuildError::field(
                    "scope",
                    "an empty list catches nothing: list node ids, or use `all`",
                ));
            }
            Scope::Nodes(ids) => CatchScope::Nodes(ids.into_iter().map(NodeId::new).collect()),
        };
        let mut spec = NodeSpec::sync(1, CatchNode).catching(scope);
        spec.has_input = false;
        Ok(spec)
    }
}

impl SyncNode for CatchNode {
    fn on_msg(&mut self, msg: Msg, out: &mut Out) -> Result<(), NodeError> {
        out.send(0, msg)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::inject::flow_test::{deploy, engine, record};
    use runnel_engine::testing::{build, collect};
    use serde_json::json;
    use tokio::time::Instant;

    #[test]
    fn scope_builds_the_catch_spec() {
        let spec = build::<Catch>("{}").unwrap();
        assert_eq!(spec.catch, Some(CatchScope::All));
        assert!(!spec.has_input);
        assert_eq!(spec.outputs, 1);
        let spec = build::<Catch>("scope: [decode, extract]").unwrap();
        assert_eq!(
            spec.catch,
            Some(CatchScope::Nodes(vec![
                NodeId::new("decode"),
                NodeId::new("extract")
            ]))
        );
    }

    #[test]
    fn config_errors() {
        let error = build::<Catch>("scope: some").unwrap_err();
        assert!(error.contains("invalid scope \"some\""), "{error}");
        let error = build::<Catch>("scope: []").unwrap_err();
        assert!(error.starts_with("field \"scope\""), "{error}");
        let error = build::<Catch>("uncaught: true").unwrap_err();
        assert_eq!(error, "unknown field \"uncaught\", expected one of: scope");
    }

    #[tokio::test(start_paused = true)]
    async fn receives_errors_with_the_failing_message() {
        let engine = engine();
        let caught_all = record(collect("catch-all"), Instant::now());
        let caught_other = record(collect("catch-other"), Instant::now());
        deploy(
            &engine,
            r#"
nodes:
  - {id: tick, type: inject, payload: {name: "not base64!"}, wires: [decode]}
  - {id: decode, type: base64, property: payload.name, to: payload}
  - {id: errors, type: catch, wires: [all]}
  - {id: others, type: catch, scope: [tick], wires: [other]}
  - {id: all, type: test-collect, channel: catch-all}
  - {id: other, type: test-collect, channel: catch-other}
"#,
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        engine.shutdown().await;
        let caught = caught_all.lock().unwrap();
        assert_eq!(caught.len(), 1);
        let msg = &caught[0].json;
        assert_eq!(msg["payload"], json!({"name": "not base64!"}));
        assert_eq!(
            msg["error"]["source"],
            json!({"id": "decode", "type": "base64"})
        );
        assert_eq!(msg["error"]["count"], 1);
        let message = msg["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("invalid base64"), "{message}");
        assert!(
            caught_other.lock().unwrap().is_empty(),
            "scoped to another node"
        );
    }
}
