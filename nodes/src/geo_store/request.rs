//! Reading a message for `geo-store`: the id, the query, and how failures are
//! told apart (bad input → 400, backend → 503).

use runnel_engine::{Msg, Value};
use runnel_geo::{GeoError, Query};

use super::Settings;

/// Why a message failed: bad input (400) or the backend (503).
pub(super) enum Failure {
    Input { message: String, field: String },
    Backend(GeoError),
}

impl From<GeoError> for Failure {
    fn from(error: GeoError) -> Self {
        match &error {
            GeoError::InvalidGeometry { field, .. } => Failure::Input {
                field: field.clone(),
                message: error.to_string(),
            },
            GeoError::InvalidQuery { param, .. } => Failure::Input {
                field: param.clone(),
                message: error.to_string(),
            },
            GeoError::InvalidDocument { .. } => Failure::Input {
                field: "payload".to_string(),
                message: error.to_string(),
            },
            _ => Failure::Backend(error),
        }
    }
}

pub(super) fn input(field: &str, message: impl Into<String>) -> Failure {
    Failure::Input {
        message: message.into(),
        field: field.to_string(),
    }
}

pub(super) fn read_id(settings: &Settings, msg: &Msg) -> Result<String, Failure> {
    let id_text = |value: &Value| match value {
        Value::String(s) if !s.is_empty() => Some(s.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    if let Some(path) = &settings.id_property {
        return msg.get(path).and_then(id_text).ok_or_else(|| {
            input(
                path.as_str(),
                format!("msg.{path} must be a non-empty string or a number"),
            )
        });
    }
    if let Some(id) = id_text(msg.payload()) {
        return Ok(id);
    }
    let from_params = msg
        .props()
        .get("req")
        .and_then(Value::as_object)
        .and_then(|req| req.get("params"))
        .and_then(Value::as_object)
        .and_then(|params| params.get("id"))
        .and_then(id_text);
    if let Some(id) = from_params {
        return Ok(id);
    }
    let mut current = msg.payload();
    for part in settings.id_path.split('.') {
        match current.as_object().and_then(|o| o.get(part)) {
            Some(next) => current = next,
            None => {
                return Err(input(
                    "id",
                    format!(
                        "no document id: expected a string payload, msg.req.params.id or payload.{}",
                        settings.id_path
                    ),
                ));
            }
        }
    }
    id_text(current).ok_or_else(|| {
        input(
            "id",
            "the document id must be a non-empty string or a number",
        )
    })
}

pub(super) fn read_query(settings: &Settings, msg: &Msg) -> Result<Query, Failure> {
    let given = match msg.props().get("query") {
        Some(value) if !value.is_null() => Some(value),
        _ => msg
            .props()
            .get("req")
            .and_then(Value::as_object)
            .and_then(|req| req.get("query")),
    };
    let mut pairs = settings.defaults.clone();
    if let Some(given) = given {
        let given = match given {
            Value::String(text) => serde_urlencoded::from_str::<Vec<(String, String)>>(text)
                .map_err(|e| input("query", format!("malformed query string: {e}")))?,
            other => query_pairs(other).map_err(|e| input("query", e))?,
        };
        for (name, value) in given {
            pairs.retain(|(existing, _)| *existing != name);
            pairs.push((name, value));
        }
    }
    Ok(Query::from_params(&pairs)?)
}

/// A query object's entries as text pairs (`bbox: [1,2,3,4]` as `1,2,3,4`).
pub(super) fn query_pairs(value: &Value) -> Result<Vec<(String, String)>, String> {
    let Some(map) = value.as_object() else {
        return Err(format!(
            "query parameters must be an object or a query string, got {}",
            value.type_name()
        ));
    };
    let mut pairs = Vec::with_capacity(map.len());
    for (name, value) in map.iter() {
        let text = match value {
            Value::String(s) => s.to_string(),
            Value::Number(_) | Value::Bool(_) => value.to_text(),
            Value::Array(items) if name == "bbox" => items
                .iter()
                .map(Value::to_text)
                .collect::<Vec<_>>()
                .join(","),
            Value::Array(_) => {
                return Err(format!("query parameter {name} is given more than once"));
            }
            other => {
                return Err(format!(
                    "query parameter {name} must be a string, number or boolean, got {}",
                    other.type_name()
                ));
            }
        };
        pairs.push((name.clone(), text));
    }
    Ok(pairs)
}
