//! `change`: sets, deletes and moves message properties, rule by rule.
//!
//! Rules run in order on each message. Paths are parsed when the flow loads,
//! so the per-message work is a walk over pre-split segments plus O(1)
//! [`Value`] clones (a reference count): this node sits in the 1M msg/s
//! benchmark chain.
//!
//! A `set ... from` or `move` whose source path is missing deletes the
//! target, as Node-RED does when it sets a property to `undefined`.

use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, Msg, NodeError, NodeSpec, NodeType, Out, PropPath, SyncNode, Value,
};
use serde::{Deserialize, Deserializer};

/// The `change` node type.
#[derive(Debug)]
pub struct Change;

/// Config of `change`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeConfig {
    /// The rules, applied in order to each message. Each rule is one of
    /// `{set: PATH, to: VALUE}`, `{set: PATH, from: PATH}`,
    /// `{delete: PATH}` or `{move: PATH, to_path: PATH}`.
    pub rules: Vec<RuleConfig>,
}

/// One rule as written in the flow file. Exactly one of `set`, `delete` and
/// `move` names the action; the other fields complete it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Sets this property (with `to` or `from`).
    #[serde(default)]
    pub set: Option<PropPath>,
    /// With `set`: the literal value to set (any YAML value, `null`
    /// included).
    #[serde(default, deserialize_with = "explicit_value")]
    #[schemars(with = "Option<Value>")]
    pub to: Option<Value>,
    /// With `set`: the property to copy the value from. When it is missing,
    /// the `set` property is deleted.
    #[serde(default)]
    pub from: Option<PropPath>,
    /// Deletes this property.
    #[serde(default)]
    pub delete: Option<PropPath>,
    /// Moves this property (with `to_path`). When it is missing, the
    /// `to_path` property is deleted.
    #[serde(default, rename = "move")]
    pub move_: Option<PropPath>,
    /// With `move`: where the property goes.
    #[serde(default)]
    pub to_path: Option<PropPath>,
}

/// Deserialises a present field as `Some`, even when it is `null`, so
/// `to: null` sets null instead of meaning "no `to`".
fn explicit_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// A validated rule.
#[derive(Debug)]
enum Rule {
    SetValue { target: PropPath, value: Value },
    SetFrom { target: PropPath, source: PropPath },
    Delete { target: PropPath },
    Move { source: PropPath, target: PropPath },
}

impl Rule {
    fn from_config(index: usize, config: RuleConfig) -> Result<Rule, BuildError> {
        let number = index + 1;
        let fail = |message: &str| BuildError::field("rules", format!("rule {number}: {message}"));
        let RuleConfig {
            set,
            to,
            from,
            delete,
            move_,
            to_path,
        } = config;
        match (set, delete, move_) {
            (Some(target), None, None) => {
                if to_path.is_some() {
                    return Err(fail(
                        "`to_path` goes with `move`; use `to` (a value) or `from` (a path) with `set`",
                    ));
                }
                match (to, from) {
                    (Some(value), None) => Ok(Rule::SetValue { target, value }),
                    (None, Some(source)) => Ok(Rule::SetFrom { target, source }),
                    (Some(_), Some(_)) => Err(fail(
                        "`set` takes either `to` (a value) or `from` (a path), not both",
                    )),
                    (None, None) => Err(fail("`set` needs `to: VALUE` or `from: PATH`")),
                }
            }
            (None, Some(target), None) => {
                if to.is_some() || from.is_some() || to_path.is_some() {
                    return Err(fail("`delete` takes no other field"));
                }
                Ok(Rule::Delete { target })
            }
            (None, None, Some(source)) => {
                if to.is_some() || from.is_some() {
                    return Err(fail("`move` takes `to_path: PATH` (not `to` or `from`)"));
                }
                match to_path {
                    Some(target) => Ok(Rule::Move { source, target }),
                    None => Err(fail("`move` needs `to_path: PATH`")),
                }
            }
            (None, None, None) => Err(fail(
                "expected one of {set: PATH, to: VALUE}, {set: PATH, from: PATH}, {delete: PATH}, {move: PATH, to_path: PATH}",
            )),
            _ => Err(fail("a rule has exactly one of `set`, `delete` and `move`")),
        }
    }

    fn describe(&self) -> String {
        match self {
            Rule::SetValue { target, .. } => format!("set {target}"),
            Rule::SetFrom { target, source } => format!("set {target} from {source}"),
            Rule::Delete { target } => format!("delete {target}"),
            Rule::Move { source, target } => format!("move {source} to {target}"),
        }
    }
}

struct ChangeNode {
    rules: Vec<Rule>,
}

impl NodeType for Change {
    const TYPE: &'static str = "change";
    const SUMMARY: &'static str = "Sets, deletes and moves message properties, rule by rule.";
    type Config = ChangeConfig;

    fn build(config: ChangeConfig, _ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        if config.rules.is_empty() {
            return Err(BuildError::field("rules", "expected at least one rule"));
        }
        let rules = config
            .rules
            .into_iter()
            .enumerate()
            .map(|(index, rule)| Rule::from_config(index, rule))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NodeSpec::sync(1, ChangeNode { rules }))
    }
}

impl SyncNode for ChangeNode {
    fn on_msg(&mut self, mut msg: Msg, out: &mut Out) -> Result<(), NodeError> {
        for (index, rule) in self.rules.iter().enumerate() {
            let result = match rule {
                Rule::SetValue { target, value } => msg.set(target, value.clone()),
                Rule::SetFrom { target, source } => match msg.get(source).cloned() {
                    Some(value) => msg.set(target, value),
                    None => {
                        msg.delete(target);
                        Ok(())
                    }
                },
                Rule::Delete { target } => {
                    msg.delete(target);
                    Ok(())
                }
                Rule::Move { source, target } => match msg.delete(source) {
                    Some(value) => msg.set(target, value),
                    None => {
                        msg.delete(target);
                        Ok(())
                    }
                },
            };
            if let Err(error) = result {
                return Err(NodeError::new(format!(
                    "rule {} ({}): {error}",
                    index + 1,
                    rule.describe()
                ))
                .with_msg(msg));
            }
        }
        out.send(0, msg)
    }
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
    fn extracts_the_location_like_the_seed_flow() {
        let input = msg(json!([{"d": {"location": {"lat": 52.1, "lon": 4.3}, "speed": 3}}]));
        let out = run_sync::<Change>(
            r#"rules: [{set: payload, from: "payload[0].d.location"}]"#,
            vec![input],
        )
        .unwrap();
        assert_eq!(out.payloads(0), vec![json!({"lat": 52.1, "lon": 4.3})]);
        assert!(out.errors.is_empty());
    }

    #[test]
    fn rules_run_in_order() {
        let config = r#"
rules:
  - {set: topic, to: car-iotp}
  - {set: payload.count, to: 3}
  - {set: payload.copy, from: topic}
  - {set: payload.none, to: null}
  - {move: payload.a, to_path: payload.b.c}
  - {delete: payload.gone}
"#;
        let out = run_sync::<Change>(config, vec![msg(json!({"a": [1], "gone": true}))]).unwrap();
        let sent = &out.ports[0][0];
        assert_eq!(sent.topic(), Some("car-iotp"));
        assert_eq!(
            sent.payload().to_json(),
            json!({"count": 3, "copy": "car-iotp", "none": null, "b": {"c": [1]}})
        );
    }

    #[test]
    fn a_missing_source_deletes_the_target() {
        let config = r#"
rules:
  - {set: payload.x, from: payload.missing}
  - {move: payload.nope, to_path: payload.y}
"#;
        let out = run_sync::<Change>(config, vec![msg(json!({"x": 1, "y": 2, "z": 3}))]).unwrap();
        assert_eq!(out.payloads(0), vec![json!({"z": 3})]);
    }

    #[test]
    fn fan_out_copies_are_not_changed() {
        let original = msg(json!({"d": {"n": 1}, "keep": [1, 2]}));
        let copy = original.clone();
        let out = run_sync::<Change>("rules: [{set: payload.d.n, to: 2}]", vec![original]).unwrap();
        assert_eq!(
            out.payloads(0),
            vec![json!({"d": {"n": 2}, "keep": [1, 2]})]
        );
        assert_eq!(
            copy.payload().to_json(),
            json!({"d": {"n": 1}, "keep": [1, 2]})
        );
    }

    #[test]
    fn a_value_in_the_way_is_an_error_with_the_message() {
        let out = run_sync::<Change>(
            "rules: [{set: payload.a.b, to: 1}]",
            vec![msg(json!({"a": 5}))],
        )
        .unwrap();
        assert!(out.ports[0].is_empty());
        assert_eq!(out.errors.len(), 1);
        assert!(
            out.errors[0].starts_with("rule 1 (set payload.a.b): cannot set payload.a.b"),
            "{}",
            out.errors[0]
        );
    }

    #[test]
    fn unknown_rule_keys_are_named() {
        let error = build::<Change>("rules: [{sett: payload, to: 1}]").unwrap_err();
        assert_eq!(
            error,
            "unknown field \"sett\", expected one of: set, to, from, delete, move, to_path"
        );
        let error = build::<Change>("rules: []\nrulez: 1").unwrap_err();
        assert!(error.contains("unknown field \"rulez\""), "{error}");
    }

    #[test]
    fn incomplete_or_ambiguous_rules_are_build_errors() {
        let cases = [
            (
                "rules: [{set: payload}]",
                "rule 1: `set` needs `to: VALUE` or `from: PATH`",
            ),
            ("rules: [{set: payload, to: 1, from: topic}]", "not both"),
            (
                "rules: [{set: payload, to: 1}, {move: payload}]",
                "rule 2: `move` needs `to_path: PATH`",
            ),
            (
                "rules: [{move: payload, to: topic}]",
                "takes `to_path: PATH`",
            ),
            ("rules: [{delete: payload, set: topic}]", "exactly one of"),
            (
                "rules: [{delete: payload, to: 1}]",
                "`delete` takes no other field",
            ),
            ("rules: [{to: 1}]", "expected one of"),
            ("rules: []", "expected at least one rule"),
        ];
        for (config, expected) in cases {
            let error = build::<Change>(config).unwrap_err();
            assert!(error.starts_with("field \"rules\""), "{config}: {error}");
            assert!(error.contains(expected), "{config}: {error}");
        }
    }

    #[test]
    fn flow_files_point_at_the_line_of_a_bad_rule() {
        let loader = crate::inject::flow_test::engine().loader();
        let yaml = "nodes:\n  - id: extract\n    type: change\n    rules:\n      - {set: payload, to: 1}\n      - {sett: payload, to: 1}\n";
        let errors = loader
            .load_str(std::path::Path::new("x.yaml"), yaml)
            .unwrap_err()
            .to_string();
        assert!(errors.contains("x.yaml:6:10"), "{errors}");
        assert!(errors.contains("extract"), "{errors}");
        assert!(errors.contains("unknown field \"sett\""), "{errors}");
        let yaml =
            "nodes:\n  - id: extract\n    type: change\n    rules:\n      - {set: payload}\n";
        let errors = loader
            .load_str(std::path::Path::new("x.yaml"), yaml)
            .unwrap_err()
            .to_string();
        assert!(
            errors.contains("x.yaml:5:7: node \"extract\": field \"rules\""),
            "{errors}"
        );
        assert!(errors.contains("rule 1: `set` needs"), "{errors}");
    }

    #[test]
    fn bad_paths_are_rejected_at_load() {
        let error = build::<Change>("rules: [{set: \"payload..a\", to: 1}]").unwrap_err();
        assert!(error.contains("invalid property path"), "{error}");
    }
}
