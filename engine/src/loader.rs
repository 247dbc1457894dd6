//! Loading flow files: YAML text to a validated, built [`Flow`].
//!
//! Loading is strict and reports every problem of a file at once, each with
//! `file:line:column`, the node id and what was expected: YAML syntax,
//! unknown top-level keys, missing or duplicate ids, unknown node types (with
//! "did you mean"), config fields (unknown, wrong type, invalid durations and
//! paths, through each node type's typed config), references to config nodes,
//! and wires (to missing nodes, from ports a node lacks, into nodes without
//! an input). Cycles are allowed, as in Node-RED, and reported as warnings.
//!
//! A flow file:
//!
//! ```yaml
//! description: Extract the location from a device document
//! settings: {queue_capacity: 128}
//! config:
//!   - {id: broker, type: mqtt-broker, host: "${MQTT_HOST:-localhost}"}
//! nodes:
//!   - id: tick
//!     type: inject
//!     every: 1s
//!     wires: [[extract]]       # port 0 -> extract; `wires: [extract]` too
//!   - id: extract
//!     type: change
//!     rules: [{set: payload, from: "payload[0].d.location"}]
//!     wires: [[show]]
//!   - {id: show, type: debug}
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, Marker, Node};
use serde::Deserialize;

use crate::diag::{Diagnostic, Diagnostics};
use crate::dispatch::WhenFull;
use crate::env::{self, EnvSource, ProcessEnv};
use crate::ids::{FlowId, NodeId};
use crate::monitor::NodeMonitor;
use crate::node::{BuildCtx, CatchScope, ConfigInstance, NodeSpec};
use crate::registry::{ConfigError, Registry};
use crate::shared::EngineShared;
use crate::yaml;

/// Per-flow settings (`settings:` in the file).
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowSettings {
    /// Capacity of each node's input queue in this flow (default: the
    /// engine's, 128).
    #[serde(default)]
    pub queue_capacity: Option<usize>,
    /// What a full queue does: `block` (default: back-pressure) or
    /// `drop_newest` (counted).
    #[serde(default)]
    pub when_full: Option<WhenFull>,
}

/// A node of a loaded flow.
pub struct FlowNode {
    /// Its id.
    pub id: NodeId,
    /// Its type.
    pub type_name: &'static str,
    /// Its optional label.
    pub name: Option<String>,
    /// Per output port, the indexes (in [`Flow::nodes`]) of the nodes wired.
    pub wires: Vec<Vec<usize>>,
    /// Whether wires may lead into it.
    pub has_input: bool,
    /// Its output port count.
    pub outputs: usize,
    /// Where it is declared (1-based line).
    pub line: usize,
    /// For catch nodes: whose errors it receives.
    pub catch: Option<CatchScope>,
    /// Its counters and status.
    pub monitor: Arc<NodeMonitor>,
    /// A hash of its config and wiring text, to tell changed nodes apart on
    /// redeploy.
    pub fingerprint: u64,
    /// The config nodes its YAML names (a node using a changed config node
    /// is changed too).
    pub config_refs: Vec<String>,
    pub(crate) spec: Option<NodeSpec>,
    pub(crate) rebuild: Rebuild,
}

impl fmt::Debug for FlowNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowNode")
            .field("id", &self.id)
            .field("type", &self.type_name)
            .field("wires", &self.wires)
            .finish_non_exhaustive()
    }
}

/// What it takes to build a node again (after a panic).
#[derive(Clone)]
pub(crate) struct Rebuild {
    build: fn(&Node, &BuildCtx<'_>) -> Result<NodeSpec, ConfigError>,
    config: Arc<Node>,
    configs: Arc<HashMap<String, ConfigInstance>>,
    flow: FlowId,
    node: NodeId,
    shared: Arc<EngineShared>,
    monitor: Arc<NodeMonitor>,
}

impl Rebuild {
    /// The same node against other config instances: on a partial
    /// redeploy, unchanged config nodes keep their running instance (one
    /// broker connection, not two).
    pub(crate) fn with_configs(&self, configs: Arc<HashMap<String, ConfigInstance>>) -> Rebuild {
        Rebuild {
            configs,
            ..self.clone()
        }
    }

    pub(crate) fn build(&self) -> Result<NodeSpec, String> {
        let ctx = BuildCtx {
            flow: &self.flow,
            node: &self.node,
            configs: &self.configs,
            data_dir: &self.shared.settings.data_dir,
            monitor: self.monitor.clone(),
            debug: self.shared.debug.clone(),
        };
        (self.build)(&self.config, &ctx).map_err(|error| match error {
            ConfigError::Yaml(e) => e.message,
            ConfigError::Build(e) => e.to_string(),
        })
    }
}

/// A loaded, validated flow whose nodes are built and ready to start.
#[derive(Debug)]
pub struct Flow {
    /// Its name: the file name without the extension.
    pub id: FlowId,
    /// The file.
    pub path: PathBuf,
    /// The file's text, with `${VAR}` placeholders unresolved.
    pub source: Arc<str>,
    /// Its description.
    pub description: Option<String>,
    /// Its settings.
    pub settings: FlowSettings,
    /// Its nodes, in file order.
    pub nodes: Vec<FlowNode>,
    /// Warnings (cycles).
    pub warnings: Vec<Diagnostic>,
    /// Its built config nodes, by id.
    pub(crate) configs: Arc<HashMap<String, ConfigInstance>>,
    /// A hash of each config node's YAML, by id.
    pub(crate) config_prints: HashMap<String, u64>,
}

impl Flow {
    /// The index of node `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id.as_str() == id)
    }
}

/// Loads flow files against a registry.
#[derive(Debug, Clone)]
pub struct Loader {
    registry: Arc<Registry>,
    shared: Arc<EngineShared>,
}

const NODE_KEYS: [&str; 4] = ["id", "type", "name", "wires"];
const TOP_KEYS: [&str; 4] = ["description", "settings", "config", "nodes"];

struct Collector {
    file: PathBuf,
    list: Vec<Diagnostic>,
}

impl Collector {
    fn error(&mut self, at: Option<Marker>, node: Option<&str>, message: impl Into<String>) {
        self.list
            .push(Diagnostic::error(&self.file, at, node, message));
    }
}

fn mark(node: &Node) -> Option<Marker> {
    yaml::node_mark(node)
}

fn scalar_mark(node: &MarkedScalarNode) -> Option<Marker> {
    node.span().start().copied()
}

/// Whether `path` looks like a flow file.
pub fn is_flow_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// The flow name of a file: its name without the extension.
pub fn flow_id_of(path: &Path) -> FlowId {
    FlowId::new(path.file_stem().and_then(|s| s.to_str()).unwrap_or("flow"))
}

impl Loader {
    /// A loader for flows of `registry`, built against `shared`.
    pub fn new(registry: Arc<Registry>, shared: Arc<EngineShared>) -> Self {
        Loader { registry, shared }
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Loads one file.
    pub fn load_file(&self, path: &Path) -> Result<Flow, Diagnostics> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics(vec![Diagnostic::error(
                path,
                None,
                None,
                format!("cannot read the file: {e}"),
            )])
        })?;
        self.load_str(path, &text)
    }

    /// Loads a file, or every `.yaml`/`.yml` file of a directory (sorted by
    /// name). Every error of every file is reported.
    pub fn load_path(&self, path: &Path) -> Result<Vec<Flow>, Diagnostics> {
        if !path.is_dir() {
            return self.load_file(path).map(|flow| vec![flow]);
        }
        let entries = std::fs::read_dir(path).map_err(|e| {
            Diagnostics(vec![Diagnostic::error(
                path,
                None,
                None,
                format!("cannot read the directory: {e}"),
            )])
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|p| p.is_file() && is_flow_file(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Diagnostics(vec![Diagnostic::error(
                path,
                None,
                None,
                "no flow files (*.yaml, *.yml) in this directory",
            )]));
        }
        let mut flows = Vec::new();
        let mut errors = Vec::new();
        for file in files {
            match self.load_file(&file) {
                Ok(flow) => flows.push(flow),
                Err(Diagnostics(list)) => errors.extend(list),
            }
        }
        if errors.is_empty() {
            Ok(flows)
        } else {
            Err(Diagnostics(errors))
        }
    }

    /// Loads flow text as if read from `path`.
    pub fn load_str(&self, path: &Path, text: &str) -> Result<Flow, Diagnostics> {
        self.load_with_env(path, text, &ProcessEnv)
    }

    /// Loads flow text, taking `${VAR}` values from `env`.
    pub fn load_with_env(
        &self,
        path: &Path,
        text: &str,
        env: &dyn EnvSource,
    ) -> Result<Flow, Diagnostics> {
        let mut out = Collector {
            file: path.to_path_buf(),
            list: Vec::new(),
        };
        let flow = self.load_inner(path, text, env, &mut out);
        let (errors, warnings): (Vec<_>, Vec<_>) =
            out.list.into_iter().partition(Diagnostic::is_error);
        match flow {
            Some(mut flow) if errors.is_empty() => {
                flow.warnings = warnings;
                Ok(flow)
            }
            _ => {
                let mut errors = errors;
                errors.sort_by_key(|d| (d.line, d.column));
                Err(Diagnostics(errors))
            }
        }
    }

    fn load_inner(
        &self,
        path: &Path,
        text: &str,
        env: &dyn EnvSource,
        out: &mut Collector,
    ) -> Option<Flow> {
        let mut root = match yaml::parse(text) {
            Ok(root) => root,
            Err(error) => {
                let (at, message) = describe_load_error(&error);
                out.error(at, None, message);
                return None;
            }
        };
        substitute_env(&mut root, env, out);
        let Some(top) = root.as_mapping() else {
            out.error(
                mark(&root),
                None,
                "expected a mapping with `nodes:` at the top level",
            );
            return None;
        };
        for (key, _) in top.iter() {
            if !TOP_KEYS.contains(&key.as_str()) {
                out.error(
                    scalar_mark(key),
                    None,
                    format!(
                        "unknown field \"{}\", expected one of: {}",
                        key.as_str(),
                        TOP_KEYS.join(", ")
                    ),
                );
            }
        }
        let description = optional_string(top.get_node("description"), "description", None, out);
        let settings = match top.get_node("settings") {
            Some(node) => match yaml::from_node::<FlowSettings>(node) {
                Ok(settings) => settings,
                Err(e) => {
                    out.error(
                        e.mark.or(mark(node)),
                        None,
                        format!("settings: {}", e.message),
                    );
                    FlowSettings::default()
                }
            },
            None => FlowSettings::default(),
        };
        if settings.queue_capacity == Some(0) {
            out.error(
                mark(&root),
                None,
                "settings: queue_capacity must be at least 1",
            );
        }
        let flow_id = flow_id_of(path);
        let mut seen_ids: HashMap<String, Option<Marker>> = HashMap::new();

        // Config nodes first: nodes reference them while building.
        let mut configs = HashMap::new();
        let mut config_prints = HashMap::new();
        if let Some(list) = entries(top, "config", out) {
            for entry in list {
                if let Some((id, type_name, config)) =
                    self.split_entry(entry, true, &mut seen_ids, out)
                {
                    let Some((type_name, build)) = self.registry.config(&type_name) else {
                        continue;
                    };
                    let node_id = NodeId::new(id.as_str());
                    let monitor = NodeMonitor::new(
                        flow_id.clone(),
                        node_id.clone(),
                        type_name,
                        self.shared.status.clone(),
                    );
                    let empty = HashMap::new();
                    let ctx = BuildCtx {
                        flow: &flow_id,
                        node: &node_id,
                        configs: &empty,
                        data_dir: &self.shared.settings.data_dir,
                        monitor,
                        debug: self.shared.debug.clone(),
                    };
                    match build(&config, &ctx) {
                        Ok(instance) => {
                            config_prints.insert(id.clone(), fingerprint(entry));
                            configs.insert(id, instance);
                        }
                        Err(error) => report_config_error(error, &config, entry, &id, out),
                    }
                }
            }
        }
        let configs = Arc::new(configs);

        struct Pending {
            wires: ParsedWires,
            wires_mark: Option<Marker>,
        }
        let mut nodes: Vec<FlowNode> = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        let Some(list) = entries(top, "nodes", out) else {
            if top.get_node("nodes").is_none() {
                out.error(
                    mark(&root),
                    None,
                    "missing field \"nodes\", expected a list of nodes",
                );
            }
            return None;
        };
        // Every declared node id, built or not, so a node that failed to
        // build is not also reported as missing by the wires into it.
        let declared: HashSet<String> = list
            .iter()
            .filter_map(|entry| entry.as_mapping()?.get_scalar("id"))
            .map(|id| id.as_str().to_string())
            .collect();
        let mut unbuilt_wires: Vec<(String, ParsedWires)> = Vec::new();
        for entry in list {
            let entry_id = entry
                .as_mapping()
                .and_then(|map| map.get_scalar("id"))
                .map(|id| id.as_str().to_string());
            let Some((id, type_name, config)) = self.split_entry(entry, false, &mut seen_ids, out)
            else {
                if let (Some(id), Some(wires)) = (
                    entry_id,
                    entry.as_mapping().and_then(|map| map.get_node("wires")),
                ) {
                    let parsed = parse_wires(wires, &id, out);
                    unbuilt_wires.push((id, parsed));
                }
                continue;
            };
            let Some((type_name, build)) = self.registry.node(&type_name) else {
                continue;
            };
            let Some(map) = entry.as_mapping() else {
                continue;
            };
            let name = optional_string(map.get_node("name"), "name", Some(&id), out);
            let wires = map
                .get_node("wires")
                .map(|node| parse_wires(node, &id, out))
                .unwrap_or_default();
            let node_id = NodeId::new(id.as_str());
            let monitor = NodeMonitor::new(
                flow_id.clone(),
                node_id.clone(),
                type_name,
                self.shared.status.clone(),
            );
            let config = Arc::new(config);
            let rebuild = Rebuild {
                build,
                config: config.clone(),
                configs: configs.clone(),
                flow: flow_id.clone(),
                node: node_id.clone(),
                shared: self.shared.clone(),
                monitor: monitor.clone(),
            };
            let ctx = BuildCtx {
                flow: &flow_id,
                node: &node_id,
                configs: &configs,
                data_dir: &self.shared.settings.data_dir,
                monitor: monitor.clone(),
                debug: self.shared.debug.clone(),
            };
            let spec = match build(&config, &ctx) {
                Ok(spec) => spec,
                Err(error) => {
                    report_config_error(error, &config, entry, &id, out);
                    unbuilt_wires.push((id, wires));
                    continue;
                }
            };
            pending.push(Pending {
                wires,
                wires_mark: map.get_node("wires").and_then(mark),
            });
            nodes.push(FlowNode {
                id: node_id,
                type_name,
                name,
                wires: Vec::new(),
                has_input: spec.has_input,
                outputs: spec.outputs,
                line: mark(entry).map_or(0, |m| m.line()),
                catch: spec.catch.clone(),
                monitor,
                fingerprint: fingerprint(entry),
                config_refs: config_refs(entry, &configs),
                spec: Some(spec),
                rebuild,
            });
        }

        // Wires, now that every node's ports are known.
        let index: HashMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str().to_string(), i))
            .collect();
        for (i, wires) in pending.into_iter().enumerate() {
            let (id, outputs) = (nodes[i].id.clone(), nodes[i].outputs);
            let mut resolved = vec![Vec::new(); outputs];
            if wires.wires.len() > outputs {
                let at = wires
                    .wires
                    .get(outputs)
                    .and_then(|(m, _)| *m)
                    .or(wires.wires_mark);
                let ports = if outputs == 1 {
                    "1 output port".to_string()
                } else {
                    format!("{outputs} output ports")
                };
                out.error(
                    at,
                    Some(id.as_str()),
                    format!(
                        "wires list {} ports, but this {} node has {ports}",
                        wires.wires.len(),
                        nodes[i].type_name
                    ),
                );
            }
            for (port, (_, targets)) in wires.wires.into_iter().enumerate().take(outputs) {
                for (target, at) in targets {
                    match index.get(&target) {
                        // Declared but not built: its own error says why.
                        None if declared.contains(&target) => {}
                        None => {
                            let message = if configs.contains_key(&target) {
                                format!(
                                    "wire to \"{target}\", which is a config node: config nodes take no wires"
                                )
                            } else {
                                format!(
                                    "wire to unknown node \"{target}\", expected the id of a node in this flow"
                                )
                            };
                            out.error(at, Some(id.as_str()), message);
                        }
                        Some(&t) if !nodes[t].has_input => out.error(
                            at,
                            Some(id.as_str()),
                            format!(
                                "wire to \"{target}\", but node \"{target}\" ({}) takes no input",
                                nodes[t].type_name
                            ),
                        ),
                        Some(&t) => resolved[port].push(t),
                    }
                }
            }
            nodes[i].wires = resolved;
        }
        for (id, wires) in unbuilt_wires {
            for (target, at) in wires.into_iter().flat_map(|(_, targets)| targets) {
                if !declared.contains(&target) {
                    out.error(
                        at,
                        Some(&id),
                        format!("wire to unknown node \"{target}\", expected the id of a node in this flow"),
                    );
                }
            }
        }
        if nodes.is_empty() && out.list.iter().all(|d| !d.is_error()) {
            out.error(mark(&root), None, "the flow has no nodes");
        }
        for node in &nodes {
            if let Some(CatchScope::Nodes(scope)) = &node.catch {
                for target in scope {
                    if !index.contains_key(target.as_str()) {
                        out.error(
                            Some(Marker::new(0, 0, node.line, 1)),
                            Some(node.id.as_str()),
                            format!(
                                "catch scope names unknown node \"{target}\", expected the id of a node in this flow"
                            ),
                        );
                    }
                }
            }
        }
        let flow = Flow {
            id: flow_id,
            path: path.to_path_buf(),
            source: text.into(),
            description,
            settings,
            nodes,
            warnings: Vec::new(),
            configs,
            config_prints,
        };
        for cycle in crate::graph::cycles(&flow) {
            let names: Vec<&str> = cycle.iter().map(|&i| flow.nodes[i].id.as_str()).collect();
            let first = cycle.first().map(|&i| &flow.nodes[i]);
            out.list.push(
                Diagnostic {
                    line: first.map_or(0, |n| n.line),
                    column: usize::from(first.is_some()),
                    ..Diagnostic::error(path, None, first.map(|n| n.id.as_str()), format!(
                        "cycle: {} -> {}; messages can loop forever unless a node in it stops them",
                        names.join(" -> "),
                        names.first().copied().unwrap_or_default()
                    ))
                }
                .into_warning(),
            );
        }
        Some(flow)
    }

    /// Checks an entry's id and type; returns its id, type and config mapping
    /// (the entry without the common keys).
    fn split_entry(
        &self,
        entry: &Node,
        config_section: bool,
        seen: &mut HashMap<String, Option<Marker>>,
        out: &mut Collector,
    ) -> Option<(String, String, Node)> {
        let Some(map) = entry.as_mapping() else {
            out.error(
                mark(entry),
                None,
                "expected a node: a mapping with id and type",
            );
            return None;
        };
        let id = match map.get_node("id") {
            None => {
                out.error(mark(entry), None, "missing field \"id\"");
                None
            }
            Some(node) => match node.as_scalar() {
                Some(s) if valid_id(s.as_str()) => Some(s),
                _ => {
                    out.error(
                        mark(node),
                        None,
                        "field \"id\": expected a non-empty name of letters, digits, '-', '_' or '.'",
                    );
                    None
                }
            },
        };
        let id_text = id.map(|s| s.as_str().to_string());
        if let (Some(id), Some(text)) = (id, &id_text) {
            if let Some(first) = seen.get(text) {
                let first =
                    first.map_or(String::new(), |m| format!(" (first at line {})", m.line()));
                out.error(
                    scalar_mark(id),
                    Some(text),
                    format!("duplicate id \"{text}\"{first}, ids must be unique in a flow"),
                );
            } else {
                seen.insert(text.clone(), scalar_mark(id));
            }
        }
        let node_ref = id_text.as_deref();
        let type_name = match map.get_node("type").map(|n| (n, n.as_scalar())) {
            None => {
                out.error(mark(entry), node_ref, "missing field \"type\"");
                None
            }
            Some((node, None)) => {
                out.error(
                    mark(node),
                    node_ref,
                    "field \"type\": expected a node type name",
                );
                None
            }
            Some((_, Some(scalar))) => {
                let name = scalar.as_str();
                let (known, other) = if config_section {
                    (
                        self.registry.config(name).is_some(),
                        self.registry.node(name).is_some(),
                    )
                } else {
                    (
                        self.registry.node(name).is_some(),
                        self.registry.config(name).is_some(),
                    )
                };
                if known {
                    Some(name.to_string())
                } else {
                    let message = if other && config_section {
                        format!(
                            "\"{name}\" is a node type, not a config node type: declare it under `nodes:`"
                        )
                    } else if other {
                        format!(
                            "\"{name}\" is a config node type: declare it under `config:` and reference it by id"
                        )
                    } else {
                        let hint = self
                            .registry
                            .suggest(name, config_section)
                            .map_or(String::new(), |s| format!(", did you mean \"{s}\"?"));
                        format!("unknown node type \"{name}\"{hint} (`runnel nodes` lists them)")
                    };
                    out.error(scalar_mark(scalar), node_ref, message);
                    None
                }
            }
        };
        if let (true, Some(wires)) = (config_section, map.get_node("wires")) {
            out.error(mark(wires), node_ref, "config nodes take no wires");
        }
        let (id, type_name) = (id_text?, type_name?);
        let mut rest = hashlink::LinkedHashMap::new();
        for (key, value) in map.iter() {
            if !NODE_KEYS.contains(&key.as_str()) {
                rest.insert(key.clone(), value.clone());
            }
        }
        let config = Node::Mapping(MarkedMappingNode::new(*map.span(), rest));
        Some((id, type_name, config))
    }
}

/// An optional text field (`description`, `name`), reported when not text.
fn optional_string(
    node: Option<&Node>,
    field: &str,
    id: Option<&str>,
    out: &mut Collector,
) -> Option<String> {
    let node = node?;
    match yaml::from_node::<String>(node) {
        Ok(text) => Some(text),
        Err(e) => {
            out.error(
                e.mark.or(mark(node)),
                id,
                format!("field \"{field}\": {}", e.message),
            );
            None
        }
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn entries<'a>(top: &'a MarkedMappingNode, key: &str, out: &mut Collector) -> Option<&'a [Node]> {
    let node = top.get_node(key)?;
    match node.as_sequence() {
        Some(seq) => Some(seq.as_slice()),
        None => {
            out.error(
                mark(node),
                None,
                format!("field \"{key}\": expected a list of nodes"),
            );
            None
        }
    }
}

fn report_config_error(
    error: ConfigError,
    config: &Node,
    entry: &Node,
    id: &str,
    out: &mut Collector,
) {
    match error {
        ConfigError::Yaml(e) => out.error(e.mark.or(mark(entry)), Some(id), e.message),
        ConfigError::Build(e) => {
            let at = e
                .field
                .as_deref()
                .and_then(|field| config.as_mapping()?.get_node(field))
                .and_then(mark)
                .or(mark(entry));
            out.error(at, Some(id), e.to_string());
        }
    }
}

type ParsedWires = Vec<(Option<Marker>, Vec<(String, Option<Marker>)>)>;

/// `wires: [[a, b], [c]]` (per port) or `wires: [a, b]` (port 0).
fn parse_wires(node: &Node, id: &str, out: &mut Collector) -> ParsedWires {
    let Some(seq) = node.as_sequence() else {
        out.error(
            mark(node),
            Some(id),
            "field \"wires\": expected a list of ports, each a list of node ids, such as [[next]]",
        );
        return Vec::new();
    };
    let target = |item: &Node, out: &mut Collector| match item.as_scalar() {
        Some(s) => Some((s.as_str().to_string(), scalar_mark(s))),
        None => {
            out.error(mark(item), Some(id), "field \"wires\": expected a node id");
            None
        }
    };
    if seq.iter().all(|item| item.as_scalar().is_some()) && !seq.is_empty() {
        let targets = seq.iter().filter_map(|item| target(item, out)).collect();
        return vec![(mark(node), targets)];
    }
    seq.iter()
        .map(|port| match port.as_sequence() {
            Some(list) => (mark(port), list.iter().filter_map(|item| target(item, out)).collect()),
            None => {
                out.error(mark(port), Some(id), "field \"wires\": mix of ids and lists; write one list per port, such as [[a], [b]]");
                (mark(port), Vec::new())
            }
        })
        .collect()
}

fn substitute_env(node: &mut Node, env: &dyn EnvSource, out: &mut Collector) {
    match node {
        Node::Scalar(scalar) => match env::substitute(scalar.as_str(), env) {
            Ok(None) => {}
            Ok(Some(value)) => {
                let coerce = scalar.may_coerce();
                let mut replaced = MarkedScalarNode::new(*scalar.span(), value);
                replaced.set_coerce(coerce);
                *scalar = replaced;
            }
            Err(message) => out.error(scalar_mark(scalar), None, message),
        },
        Node::Sequence(seq) => {
            for item in seq.iter_mut() {
                substitute_env(item, env, out);
            }
        }
        Node::Mapping(map) => {
            for (_, value) in map.iter_mut() {
                substitute_env(value, env, out);
            }
        }
    }
}

fn describe_load_error(error: &LoadError) -> (Option<Marker>, String) {
    match error {
        LoadError::TopLevelMustBeMapping(m) => (
            Some(*m),
            "expected a mapping with `nodes:` at the top level".into(),
        ),
        LoadError::TopLevelMustBeSequence(m) => {
            (Some(*m), "expected a sequence at the top level".into())
        }
        LoadError::UnexpectedAnchor(m) => (
            Some(*m),
            "YAML anchors and aliases are not supported in flow files".into(),
        ),
        LoadError::MappingKeyMustBeScalar(m) => {
            (Some(*m), "mapping keys must be plain strings".into())
        }
        LoadError::UnexpectedTag(m) => (
            Some(*m),
            "YAML tags (!tag) are not supported in flow files".into(),
        ),
        LoadError::ScanError(m, e) => {
            let text = e.to_string();
            let text = text.split(" at byte").next().unwrap_or(&text).to_string();
            let text = text.split(" at line").next().unwrap_or(&text).to_string();
            (Some(*m), format!("YAML syntax error: {text}"))
        }
        LoadError::DuplicateKey(inner) => (
            inner.key.span().start().copied(),
            format!(
                "duplicate key \"{}\" (first at line {})",
                inner.key.as_str(),
                inner.prev_key.span().start().map_or(0, |m| m.line())
            ),
        ),
    }
}

/// A stable hash of a node's YAML (keys, values, order), ignoring positions.
fn fingerprint(node: &Node) -> u64 {
    use std::hash::{Hash, Hasher};
    fn feed(node: &Node, hasher: &mut std::collections::hash_map::DefaultHasher) {
        match node {
            Node::Scalar(s) => {
                0u8.hash(hasher);
                s.as_str().hash(hasher);
            }
            Node::Sequence(seq) => {
                1u8.hash(hasher);
                seq.len().hash(hasher);
                for item in seq.iter() {
                    feed(item, hasher);
                }
            }
            Node::Mapping(map) => {
                2u8.hash(hasher);
                map.len().hash(hasher);
                for (key, value) in map.iter() {
                    key.as_str().hash(hasher);
                    feed(value, hasher);
                }
            }
        }
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    feed(node, &mut hasher);
    hasher.finish()
}

/// The config node ids that appear as values in a node's YAML.
fn config_refs(node: &Node, configs: &HashMap<String, ConfigInstance>) -> Vec<String> {
    fn walk(node: &Node, configs: &HashMap<String, ConfigInstance>, found: &mut Vec<String>) {
        match node {
            Node::Scalar(s) => {
                if configs.contains_key(s.as_str()) && !found.iter().any(|f| f == s.as_str()) {
                    found.push(s.as_str().to_string());
                }
            }
            Node::Sequence(seq) => seq.iter().for_each(|item| walk(item, configs, found)),
            Node::Mapping(map) => map
                .iter()
                .for_each(|(_, value)| walk(value, configs, found)),
        }
    }
    let mut found = Vec::new();
    if !configs.is_empty() {
        walk(node, configs, &mut found);
    }
    found
}

/// Ids used in a flow, for tools (the editor's completion).
pub fn node_ids(flow: &Flow) -> HashSet<&str> {
    flow.nodes.iter().map(|n| n.id.as_str()).collect()
}
