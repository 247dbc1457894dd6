//! `switch`: routes each message to the output ports whose rule matches.
//!
//! One output port per rule, in order. Comparisons follow Node-RED's loose
//! JavaScript ones where they matter: a number and a numeric string compare
//! as numbers, two strings compare as text. A missing property is treated
//! as `null`. Regexes are compiled when the flow loads.

use regex::Regex;
use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::{
    BuildCtx, BuildError, Msg, NodeError, NodeSpec, NodeType, Out, PropPath, SyncNode, Value,
};
use serde::Deserialize;
use std::cmp::Ordering;

/// The `switch` node type.
#[derive(Debug)]
pub struct Switch;

/// Config of `switch`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchConfig {
    /// The property tested by the rules (default `payload`).
    #[serde(default = "default_property")]
    pub property: PropPath,
    /// The rules, one output port each, in order.
    pub rules: Vec<RuleConfig>,
    /// Send to every matching rule's port (`true`, default) or only to the
    /// first match (`false`).
    #[serde(default = "default_true")]
    pub checkall: bool,
}

fn default_property() -> PropPath {
    PropPath::parse("payload").unwrap_or_else(|_| unreachable!("\"payload\" is a valid path"))
}

fn default_true() -> bool {
    true
}

/// One rule: a mapping with one key naming the test.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleConfig {
    /// Equal to the value (a number and a numeric string compare as numbers).
    Eq(Value),
    /// Not equal to the value.
    Neq(Value),
    /// Less than the value (numbers numerically, strings as text).
    Lt(Value),
    /// Less than or equal to the value.
    Lte(Value),
    /// Greater than the value.
    Gt(Value),
    /// Greater than or equal to the value.
    Gte(Value),
    /// Between the two values, both included, in either order.
    Between((Value, Value)),
    /// Matches the regular expression (Rust `regex` syntax; `(?i)` for
    /// case-insensitive). Numbers and booleans are matched as text.
    Regex(String),
    /// An object that has this key.
    HasKey(String),
    /// Of this type.
    IsType(TypeName),
    /// Matches when none of the rules before it matched, counting back to
    /// the previous `otherwise` (included) or the start, as Node-RED's
    /// "otherwise". Write `{otherwise: true}`.
    Otherwise(bool),
}

/// A value type for `is_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TypeName {
    /// Text.
    String,
    /// A number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// An object (mapping).
    Object,
    /// An array (list).
    Array,
    /// `null`, or a missing property.
    Null,
    /// Raw bytes.
    Buffer,
}

impl TypeName {
    fn as_str(self) -> &'static str {
        match self {
            TypeName::String => "string",
            TypeName::Number => "number",
            TypeName::Boolean => "boolean",
            TypeName::Object => "object",
            TypeName::Array => "array",
            TypeName::Null => "null",
            TypeName::Buffer => "buffer",
        }
    }
}

/// A rule's operand with its numeric reading precomputed.
#[derive(Debug)]
struct Operand {
    value: Value,
    number: Option<f64>,
}

impl Operand {
    fn new(value: Value) -> Self {
        let number = as_number(&value);
        Operand { value, number }
    }
}

#[derive(Debug)]
enum Rule {
    Eq(Operand),
    Neq(Operand),
    Compare(Operand, fn(Ordering) -> bool),
    Between(Operand, Operand),
    Regex(Regex),
    HasKey(String),
    IsType(&'static str),
    Otherwise,
}

impl Rule {
    fn from_config(index: usize, config: RuleConfig) -> Result<Rule, BuildError> {
        let number = index + 1;
        Ok(match config {
            RuleConfig::Eq(v) => Rule::Eq(Operand::new(v)),
            RuleConfig::Neq(v) => Rule::Neq(Operand::new(v)),
            RuleConfig::Lt(v) => Rule::Compare(Operand::new(v), Ordering::is_lt),
            RuleConfig::Lte(v) => Rule::Compare(Operand::new(v), Ordering::is_le),
            RuleConfig::Gt(v) => Rule::Compare(Operand::new(v), Ordering::is_gt),
            RuleConfig::Gte(v) => Rule::Compare(Operand::new(v), Ordering::is_ge),
            RuleConfig::Between((a, b)) => Rule::Between(Operand::new(a), Operand::new(b)),
            RuleConfig::Regex(pattern) => Rule::Regex(Regex::new(&pattern).map_err(|error| {
                BuildError::field("rules", format!("rule {number}: invalid regex: {error}"))
            })?),
            RuleConfig::HasKey(key) => Rule::HasKey(key),
            RuleConfig::IsType(name) => Rule::IsType(name.as_str()),
            RuleConfig::Otherwise(true) => Rule::Otherwise,
            RuleConfig::Otherwise(false) => {
                return Err(BuildError::field(
                    "rules",
                    format!("rule {number}: write `otherwise: true` (false would never match)"),
                ));
            }
        })
    }

    /// Whether `value` passes this rule (`Otherwise` is decided by the
    /// caller).
    fn matches(&self, value: &Value) -> bool {
        match self {
            Rule::Eq(operand) => loose_eq(value, operand),
            Rule::Neq(operand) => !loose_eq(value, operand),
            Rule::Compare(operand, accept) => loose_cmp(value, operand).is_some_and(accept),
            Rule::Between(a, b) => {
                let (Some(to_a), Some(to_b)) = (loose_cmp(value, a), loose_cmp(value, b)) else {
                    return false;
                };
                (to_a.is_ge() && to_b.is_le()) || (to_a.is_le() && to_b.is_ge())
            }
            Rule::Regex(regex) => match value {
                Value::String(text) => regex.is_match(text),
                Value::Number(_) | Value::Bool(_) => regex.is_match(&value.to_text()),
                _ => false,
            },
            Rule::HasKey(key) => value.as_object().is_some_and(|map| map.contains_key(key)),
            Rule::IsType(name) => value.type_name() == *name,
            Rule::Otherwise => false,
        }
    }
}

/// A number, or a string that reads as one (Node-RED's loose comparisons).
fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(text) => {
            let text = text.trim();
            if text.is_empty() {
                None
            } else {
                text.parse::<f64>().ok().filter(|n| !n.is_nan())
            }
        }
        _ => None,
    }
}

fn loose_eq(value: &Value, operand: &Operand) -> bool {
    match (value, &operand.value) {
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Number(_), _) | (_, Value::Number(_)) => {
            // Exact integers compare exactly; otherwise as numbers.
            if let (Value::Number(a), Value::Number(b)) = (value, &operand.value)
                && let (Some(a), Some(b)) = (a.as_i64(), b.as_i64())
            {
                return a == b;
            }
            match (as_number(value), operand.number) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            }
        }
        (a, b) => a == b,
    }
}

fn loose_cmp(value: &Value, operand: &Operand) -> Option<Ordering> {
    match (value, &operand.value) {
        (Value::String(a), Value::String(b)) => Some(a.as_ref().cmp(b.as_ref())),
        _ => as_number(value)?.partial_cmp(&operand.number?),
    }
}

struct SwitchNode {
    property: PropPath,
    rules: Vec<Rule>,
    checkall: bool,
}

impl NodeType for Switch {
    const TYPE: &'static str = "switch";
    const SUMMARY: &'static str = "Routes each message to the output ports whose rule matches.";
    type Config = SwitchConfig;

    fn build(config: SwitchConfig, _ctx: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        if config.rules.is_empty() {
            return Err(BuildError::field(
                "rules",
                "expected at least one rule (one output port per rule)",
            ));
        }
        let rules = config
            .rules
            .into_iter()
            .enumerate()
            .map(|(index, rule)| Rule::from_config(index, rule))
            .collect::<Result<Vec<_>, _>>()?;
        let ports = rules.len();
        Ok(NodeSpec::sync(
            ports,
            SwitchNode {
                property: config.property,
                rules,
                checkall: config.checkall,
            },
        ))
    }
}

impl SyncNode for SwitchNode {
    fn on_msg(&mut self, msg: Msg, out: &mut Out) -> Result<(), NodeError> {
        static NULL: Value = Value::Null;
        let value = msg.get(&self.property).unwrap_or(&NULL);
        // Send a clone for every match but the last, which gets the message.
        let mut matched: Option<usize> = None;
        let mut since_otherwise = false;
        for (port, rule) in self.rules.iter().enumerate() {
            let hit = match rule {
                Rule::Otherwise => {
                    let hit = !since_otherwise;
                    since_otherwise = false;
                    hit
                }
                rule => rule.matches(value),
            };
            if !hit {
                continue;
            }
            since_otherwise = true;
            if let Some(previous) = matched.replace(port) {
                out.send(previous, msg.clone())?;
            }
            if !self.checkall {
                break;
            }
        }
        match matched {
            Some(port) => out.send(port, msg),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use bytes::Bytes;
    use runnel_engine::testing::{Outputs, build, run_sync};
    use serde_json::json;

    fn msg(payload: serde_json::Value) -> Msg {
        Msg::new(Value::from(payload))
    }

    /// For each input payload, the ports it was sent on.
    fn routes(config: &str, payloads: Vec<serde_json::Value>) -> Vec<Vec<usize>> {
        let inputs: Vec<Msg> = payloads.into_iter().map(msg).collect();
        let ids: Vec<_> = inputs.iter().map(Msg::id).collect();
        let out: Outputs = run_sync::<Switch>(config, inputs).unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        ids.iter()
            .map(|id| {
                (0..out.ports.len())
                    .filter(|&p| out.ports[p].iter().any(|m| m.id() == *id))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn routes_by_topic_like_the_seed_flow() {
        let config = "property: topic\nrules: [{eq: car-iotp}, {otherwise: true}]";
        let mut car = msg(json!(1));
        car.set_topic("car-iotp");
        let mut other = msg(json!(2));
        other.set_topic("bike");
        let out = run_sync::<Switch>(config, vec![car, other, msg(json!(3))]).unwrap();
        assert_eq!(out.payloads(0), vec![json!(1)]);
        assert_eq!(out.payloads(1), vec![json!(2), json!(3)]);
    }

    #[test]
    fn numbers_and_numeric_strings_compare_as_numbers() {
        let config = "rules: [{eq: 5}, {lt: 10}, {gte: 10}, {neq: 5}]";
        let got = routes(
            config,
            vec![
                json!(5),
                json!("5"),
                json!("5.0"),
                json!(9.5),
                json!("10"),
                json!(100),
            ],
        );
        assert_eq!(
            got,
            vec![
                vec![0, 1],
                vec![0, 1],
                vec![0, 1],
                vec![1, 3],
                vec![2, 3],
                vec![2, 3]
            ]
        );
    }

    #[test]
    fn strings_compare_as_text() {
        // "10" < "9" as text, like JavaScript.
        let got = routes(
            "rules: [{lt: \"9\"}, {eq: abc}, {gt: abc}]",
            vec![json!("10"), json!("abc"), json!("abd")],
        );
        assert_eq!(got, vec![vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn between_is_inclusive_in_either_order() {
        let got = routes(
            "rules: [{between: [1, 5]}, {between: [5, 1]}]",
            vec![
                json!(1),
                json!(3),
                json!("5"),
                json!(6),
                json!("x"),
                json!(null),
            ],
        );
        assert_eq!(
            got,
            vec![vec![0, 1], vec![0, 1], vec![0, 1], vec![], vec![], vec![]]
        );
    }

    #[test]
    fn regex_has_key_and_types() {
        let config = r#"
rules:
  - {regex: "^car"}
  - {has_key: name}
  - {is_type: string}
  - {is_type: object}
  - {is_type: "null"}
  - {regex: "^4"}
"#;
        let got = routes(
            config,
            vec![
                json!("car-1"),
                json!({"name": 1}),
                json!(null),
                json!(42),
                json!(["car"]),
            ],
        );
        assert_eq!(got, vec![vec![0, 2], vec![1, 3], vec![4], vec![5], vec![]]);
        let out = run_sync::<Switch>(
            "rules: [{is_type: buffer}]",
            vec![Msg::new(Value::Bytes(Bytes::from_static(b"x")))],
        )
        .unwrap();
        assert_eq!(out.ports[0].len(), 1);
    }

    #[test]
    fn checkall_false_stops_at_the_first_match() {
        let got = routes(
            "checkall: false\nrules: [{gt: 1}, {gt: 2}, {otherwise: true}]",
            vec![json!(3), json!(0)],
        );
        assert_eq!(got, vec![vec![0], vec![2]]);
    }

    #[test]
    fn otherwise_only_counts_rules_since_the_previous_otherwise() {
        let config = "rules: [{eq: 1}, {otherwise: true}, {eq: 2}, {otherwise: true}]";
        let got = routes(config, vec![json!(1), json!(2), json!(3)]);
        assert_eq!(got, vec![vec![0, 3], vec![1, 2], vec![1]]);
    }

    #[test]
    fn a_missing_property_is_null() {
        let got = routes(
            "property: payload.x\nrules: [{is_type: \"null\"}, {eq: 1}]",
            vec![json!({})],
        );
        assert_eq!(got, vec![vec![0]]);
    }

    #[test]
    fn one_port_per_rule() {
        let spec = build::<Switch>("rules: [{eq: 1}, {eq: 2}, {eq: 3}]").unwrap();
        assert_eq!(spec.outputs, 3);
    }

    #[test]
    fn config_errors() {
        let error = build::<Switch>("rules: [{eq: 1}, {regex: \"(unclosed\"}]").unwrap_err();
        assert!(
            error.starts_with("field \"rules\": rule 2: invalid regex"),
            "{error}"
        );
        let error = build::<Switch>("rules: [{equals: 1}]").unwrap_err();
        assert!(
            error.starts_with("unknown value \"equals\", expected one of: eq, neq"),
            "{error}"
        );
        let error = build::<Switch>("rules: [{eq: 1}]\ncheck_all: true").unwrap_err();
        assert_eq!(
            error,
            "unknown field \"check_all\", expected one of: property, rules, checkall"
        );
        let error = build::<Switch>("rules: [{is_type: date}]").unwrap_err();
        assert!(error.contains("unknown value \"date\""), "{error}");
        let error = build::<Switch>("rules: [{between: [1]}]").unwrap_err();
        assert!(error.contains("length 1"), "{error}");
        let error = build::<Switch>("rules: []").unwrap_err();
        assert!(error.contains("at least one rule"), "{error}");
        let error = build::<Switch>("rules: [{otherwise: false}]").unwrap_err();
        assert!(error.contains("otherwise: true"), "{error}");
    }
}
