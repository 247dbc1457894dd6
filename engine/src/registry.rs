//! [`Registry`]: the node types a flow may use.
//!
//! Registration is explicit (`nodes::register_all(&mut registry)`), so what a
//! binary contains is visible in one place. Registering erases the node type
//! into functions that deserialise its config from YAML (with positions) and
//! build it, plus its JSON Schema for `runnel schema` and the editor.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use marked_yaml::Node;
use schemars::{JsonSchema, Schema, SchemaGenerator};

use crate::node::{BuildCtx, BuildError, ConfigInstance, ConfigNodeType, NodeSpec, NodeType};
use crate::yaml::{self, YamlError};

/// Why a node's config was rejected.
#[derive(Debug, Clone)]
pub(crate) enum ConfigError {
    /// The YAML does not match the config type.
    Yaml(YamlError),
    /// The config parsed but does not make sense.
    Build(BuildError),
}

type BuildNodeFn = fn(&Node, &BuildCtx<'_>) -> Result<NodeSpec, ConfigError>;
type BuildConfigFn = fn(&Node, &BuildCtx<'_>) -> Result<ConfigInstance, ConfigError>;
type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// What the registry knows of one node or config node type.
#[derive(Clone)]
pub struct TypeInfo {
    /// The `type:` name.
    pub name: &'static str,
    /// One line of description.
    pub summary: &'static str,
    /// Whether it is a config node (declared under `config:`).
    pub is_config: bool,
    schema: SchemaFn,
}

impl fmt::Debug for TypeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypeInfo")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TypeInfo {
    /// The JSON Schema of the type's config fields (no id/type/wires).
    pub fn config_schema(&self) -> serde_json::Value {
        let mut generator = schemars::generate::SchemaSettings::draft07().into_generator();
        let schema = (self.schema)(&mut generator);
        let mut value = schema.to_value();
        let definitions = generator.take_definitions(true);
        if let (false, Some(object)) = (definitions.is_empty(), value.as_object_mut()) {
            object.insert("definitions".into(), serde_json::Value::Object(definitions));
        }
        value
    }
}

/// The node types available to flows.
#[derive(Clone, Default)]
pub struct Registry {
    nodes: BTreeMap<&'static str, (TypeInfo, BuildNodeFn)>,
    configs: BTreeMap<&'static str, (TypeInfo, BuildConfigFn)>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .field("configs", &self.configs.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn build_node<T: NodeType>(node: &Node, ctx: &BuildCtx<'_>) -> Result<NodeSpec, ConfigError> {
    let config = yaml::from_node::<T::Config>(node).map_err(ConfigError::Yaml)?;
    T::build(config, ctx).map_err(ConfigError::Build)
}

fn build_config<T: ConfigNodeType>(
    node: &Node,
    ctx: &BuildCtx<'_>,
) -> Result<ConfigInstance, ConfigError> {
    let config = yaml::from_node::<T::Config>(node).map_err(ConfigError::Yaml)?;
    let handle = T::build(config, ctx).map_err(ConfigError::Build)?;
    Ok(ConfigInstance {
        type_name: T::TYPE,
        handle,
    })
}

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.root_schema_for::<T>()
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers a node type. Registering a name twice is a programming
    /// error, caught in debug builds.
    pub fn register<T: NodeType>(&mut self) -> &mut Self {
        debug_assert!(
            !self.contains(T::TYPE),
            "node type {} registered twice",
            T::TYPE
        );
        let info = TypeInfo {
            name: T::TYPE,
            summary: T::SUMMARY,
            is_config: false,
            schema: schema_of::<T::Config>,
        };
        self.nodes.insert(T::TYPE, (info, build_node::<T>));
        self
    }

    /// Registers a config node type.
    pub fn register_config<T: ConfigNodeType>(&mut self) -> &mut Self {
        debug_assert!(
            !self.contains(T::TYPE),
            "config node type {} registered twice",
            T::TYPE
        );
        let info = TypeInfo {
            name: T::TYPE,
            summary: T::SUMMARY,
            is_config: true,
            schema: schema_of::<T::Config>,
        };
        self.configs.insert(T::TYPE, (info, build_config::<T>));
        self
    }

    /// Whether `name` is a registered node or config node type.
    pub fn contains(&self, name: &str) -> bool {
        self.nodes.contains_key(name) || self.configs.contains_key(name)
    }

    /// Every node type, by name.
    pub fn node_types(&self) -> impl Iterator<Item = &TypeInfo> {
        self.nodes.values().map(|(info, _)| info)
    }

    /// Every config node type, by name.
    pub fn config_types(&self) -> impl Iterator<Item = &TypeInfo> {
        self.configs.values().map(|(info, _)| info)
    }

    pub(crate) fn node(&self, name: &str) -> Option<(&'static str, BuildNodeFn)> {
        self.nodes
            .get(name)
            .map(|(info, build)| (info.name, *build))
    }

    pub(crate) fn config(&self, name: &str) -> Option<(&'static str, BuildConfigFn)> {
        self.configs
            .get(name)
            .map(|(info, build)| (info.name, *build))
    }

    /// The registered name closest to `name`, for "did you mean".
    pub fn suggest(&self, name: &str, config: bool) -> Option<&'static str> {
        let names: Vec<&'static str> = if config {
            self.configs.keys().copied().collect()
        } else {
            self.nodes.keys().copied().collect()
        };
        names
            .into_iter()
            .map(|candidate| (edit_distance(name, candidate), candidate))
            .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 3))
            .min()
            .map(|(_, candidate)| candidate)
    }

    /// Shares the registry.
    pub fn into_shared(self) -> Arc<Registry> {
        Arc::new(self)
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let value = (previous[j] + cost)
                .min(previous[j + 1] + 1)
                .min(current[j] + 1);
            current.push(value);
        }
        previous = current;
    }
    previous.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::edit_distance;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("chnage", "change"), 2);
        assert_eq!(edit_distance("debug", "debug"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
