//! [`Duration`]: `500ms`, `1s`, `5m`, `1h30m` in flow files.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as text with units (`500ms`, `1s`, `5m`, `2h`,
/// `1h30m`). A bare number is rejected: the unit is never guessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// The standard library duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(value: std::time::Duration) -> Self {
        Duration(value)
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() || text.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(format!(
                "invalid duration {text:?}, expected a number with a unit such as 500ms, 1s, 5m or 1h"
            ));
        }
        humantime::parse_duration(text).map(Duration).map_err(|_| {
            format!("invalid duration {text:?}, expected a number with a unit such as 500ms, 1s, 5m or 1h")
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "a duration with a unit: 500ms, 1s, 5m, 1h30m",
            "pattern": "^\\s*([0-9]+(\\.[0-9]+)?\\s*[a-zA-Zµ]+\\s*)+$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_bare_numbers() {
        assert_eq!(
            "500ms".parse::<Duration>().map(Duration::get),
            Ok(std::time::Duration::from_millis(500))
        );
        assert_eq!(
            "1h30m".parse::<Duration>().map(Duration::get),
            Ok(std::time::Duration::from_secs(5400))
        );
        assert!("5".parse::<Duration>().is_err());
        assert!("fast".parse::<Duration>().is_err());
    }
}
