//! MQTT topic names and filters: matching (with `+`, `#` and shared
//! subscriptions) and validation.

use rumqttc::QoS;

/// Whether `topic` matches the subscription `filter` (with `+`, `#` and
/// `$share/<group>/` shared subscriptions). Topics starting with `$` do not
/// match filters starting with a wildcard.
pub(crate) fn topic_matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((_group, filter)) => filter,
            None => return false,
        },
        None => filter,
    };
    if filter == topic {
        // The common case, a filter without wildcards: one comparison.
        return true;
    }
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match part {
            "#" => return true,
            "+" => {
                if levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

/// Whether `filter` is a valid subscription filter; the error says why not.
pub(crate) fn check_filter(filter: &str) -> Result<(), String> {
    let plain = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, plain)) if !group.is_empty() && !group.contains(['+', '#']) => plain,
            _ => {
                return Err(format!(
                    "invalid shared subscription {filter:?}, expected $share/<group>/<filter>"
                ));
            }
        },
        None => filter,
    };
    if plain.is_empty() {
        return Err("empty topic filter".to_string());
    }
    let parts: Vec<&str> = plain.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.contains('#') && (*part != "#" || i + 1 != parts.len()) {
            return Err(format!(
                "invalid topic filter {filter:?}: `#` must be a whole level and the last one"
            ));
        }
        if part.contains('+') && *part != "+" {
            return Err(format!(
                "invalid topic filter {filter:?}: `+` must be a whole level"
            ));
        }
    }
    Ok(())
}

/// Whether `topic` is valid for publishing (no wildcards, not empty).
pub(crate) fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("empty topic".to_string());
    }
    if topic.contains(['+', '#']) {
        return Err(format!(
            "invalid topic {topic:?}: wildcards (+, #) are not allowed when publishing"
        ));
    }
    if topic.contains('\0') {
        return Err(format!("invalid topic {topic:?}: contains NUL"));
    }
    Ok(())
}

/// QoS from 0, 1, 2.
pub(crate) fn qos_from(level: u8) -> Option<QoS> {
    match level {
        0 => Some(QoS::AtMostOnce),
        1 => Some(QoS::AtLeastOnce),
        2 => Some(QoS::ExactlyOnce),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn filters_match_like_mqtt() {
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(topic_matches("a/+", "a/b"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "car-iotp"));
        assert!(topic_matches("+/+/x", "a/b/x"));
        assert!(topic_matches("$share/g/car/+", "car/1"));
        assert!(!topic_matches("#", "$SYS/broker"));
        assert!(topic_matches("$SYS/broker", "$SYS/broker"));
        assert!(topic_matches("$share/g/car", "car"));
        assert!(!topic_matches("$share/g", "$share/g"));
        assert!(topic_matches("$SYS/#", "$SYS/broker"));
        assert!(topic_matches("a//c", "a//c"));
        assert!(topic_matches("a/+/c", "a//c"));
    }

    #[test]
    fn filters_are_checked() {
        assert!(check_filter("a/+/#").is_ok());
        assert!(check_filter("$share/g/a/#").is_ok());
        assert!(check_filter("a/#/b").is_err());
        assert!(check_filter("a/b#").is_err());
        assert!(check_filter("a+/b").is_err());
        assert!(check_filter("$share/g").is_err());
        assert!(check_filter("").is_err());
        assert!(check_topic("a/+").is_err());
        assert!(check_topic("a/b").is_ok());
    }
}
