//! The JSON Schema of the flow format, for `runnel schema`, editors' YAML
//! language servers and the editor's node palette.

use serde_json::{Map as JsonMap, Value as Json, json};

use crate::registry::{Registry, TypeInfo};

/// The schema of one node entry: the common fields (`id`, `type`, `name`,
/// `wires`) merged with the type's config fields.
fn entry_schema(info: &TypeInfo, definitions: &mut JsonMap<String, Json>) -> Json {
    let mut config = info.config_schema();
    if let Some(Json::Object(defs)) = config.as_object_mut().and_then(|o| o.remove("definitions")) {
        definitions.extend(defs);
    }
    let mut properties = config
        .get("properties")
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default();
    properties.insert("id".into(), json!({"type": "string", "pattern": "^[A-Za-z0-9_.-]+$", "description": "unique id in the flow"}));
    properties.insert("type".into(), json!({"const": info.name}));
    if !info.is_config {
        properties.insert(
            "name".into(),
            json!({"type": "string", "description": "a label"}),
        );
        properties.insert(
            "wires".into(),
            json!({
                "description": "per output port, the ids of the nodes it feeds; [a, b] is port 0",
                "anyOf": [
                    {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
                    {"type": "array", "items": {"type": "string"}}
                ]
            }),
        );
    }
    let mut required = vec![json!("id"), json!("type")];
    if let Some(list) = config.get("required").and_then(Json::as_array) {
        required.extend(list.iter().cloned());
    }
    let mut schema = json!({
        "type": "object",
        "title": info.name,
        "description": info.summary,
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    });
    // Config types that are enums or use `oneOf` keep their own structure.
    for key in ["oneOf", "anyOf", "allOf"] {
        if let (Some(value), Some(object)) = (config.get(key), schema.as_object_mut()) {
            object.insert(key.into(), value.clone());
            object.insert("additionalProperties".into(), Json::Bool(true));
        }
    }
    schema
}

/// The whole flow format.
pub fn flow_schema(registry: &Registry) -> Json {
    let mut definitions = JsonMap::new();
    let nodes: Vec<Json> = registry
        .node_types()
        .map(|info| entry_schema(info, &mut definitions))
        .collect();
    let configs: Vec<Json> = registry
        .config_types()
        .map(|info| entry_schema(info, &mut definitions))
        .collect();
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://runnel.dev/schema/flow.json",
        "title": "runnel flow",
        "description": "A runnel flow file: nodes, their config and the wires between them.",
        "type": "object",
        "additionalProperties": false,
        "required": ["nodes"],
        "properties": {
            "description": {"type": "string"},
            "settings": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "queue_capacity": {"type": "integer", "minimum": 1, "description": "each node's input queue, in messages (default 128)"},
                    "when_full": {"enum": ["block", "drop_newest"], "description": "what a full queue does (default block)"}
                }
            },
            "config": {"type": "array", "items": {"oneOf": configs}},
            "nodes": {"type": "array", "items": {"oneOf": nodes}}
        },
        "definitions": definitions,
    })
}
