//! `${VAR}` and `${VAR:-default}` in flow files.
//!
//! Substitution happens on the parsed YAML, in string values only (never in
//! keys), before config is deserialised; the flow's text keeps the
//! placeholders, so secrets never appear in the file, in the editor or in API
//! answers. `$${` writes a literal `${`.

/// Where variables come from: the process environment, or a map in tests.
pub trait EnvSource {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Substitutes every `${...}` in `text`. Returns `Ok(None)` when there is
/// nothing to substitute, so callers keep the original.
pub fn substitute(text: &str, env: &dyn EnvSource) -> Result<Option<String>, String> {
    if !text.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let Some(body_start) = tail.strip_prefix("${") else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let Some(end) = body_start.find('}') else {
            return Err(format!("unclosed \"${{\" in {text:?}"));
        };
        let body = &body_start[..end];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(format!(
                "invalid environment variable name {name:?}, expected letters, digits and _ as in ${{MQTT_HOST}} or ${{MQTT_HOST:-localhost}}"
            ));
        }
        match (env.var(name), default) {
            (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                ));
            }
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env() -> HashMap<String, String> {
        HashMap::from([
            ("HOST".to_string(), "broker".to_string()),
            ("EMPTY".to_string(), String::new()),
        ])
    }

    #[test]
    fn substitutes_with_defaults_and_escapes() {
        let env = env();
        assert_eq!(substitute("plain", &env), Ok(None));
        assert_eq!(
            substitute("${HOST}:1883", &env),
            Ok(Some("broker:1883".into()))
        );
        assert_eq!(substitute("${PORT:-1883}", &env), Ok(Some("1883".into())));
        assert_eq!(substitute("${EMPTY:-x}", &env), Ok(Some("x".into())));
        assert_eq!(
            substitute("$${HOST} $5", &env),
            Ok(Some("${HOST} $5".into()))
        );
    }

    #[test]
    fn reports_missing_and_malformed() {
        let env = env();
        assert!(substitute("${NOPE}", &env).is_err_and(|e| e.contains("NOPE is not set")));
        assert!(substitute("${HOST", &env).is_err());
        assert!(substitute("${a-b}", &env).is_err());
    }
}
