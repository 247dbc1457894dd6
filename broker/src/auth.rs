//! Authentication (username/password) and per-topic allow rules.

use std::collections::HashMap;

use crate::codec::ConnectReturnCode;
use crate::config::{Access, AclRule, BrokerConfig};
use crate::topic::{Exclusions, filter_covers, filter_matches, filters_overlap};

/// Credentials and ACL rules, built once from the configuration.
pub(crate) struct Auth {
    allow_anonymous: bool,
    passwords: HashMap<String, String>,
    acl: Vec<AclRule>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("allow_anonymous", &self.allow_anonymous)
            .field("users", &self.passwords.len())
            .field("acl_rules", &self.acl.len())
            .finish()
    }
}

impl Auth {
    pub(crate) fn new(config: &BrokerConfig) -> Auth {
        Auth {
            allow_anonymous: config.allow_anonymous,
            passwords: config
                .users
                .iter()
                .map(|u| (u.username.clone(), u.password.clone()))
                .collect(),
            acl: config.acl.clone(),
        }
    }

    /// CONNACK code for these credentials.
    pub(crate) fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> ConnectReturnCode {
        let Some(username) = username else {
            return if self.allow_anonymous {
                ConnectReturnCode::Accepted
            } else {
                ConnectReturnCode::NotAuthorized
            };
        };
        if self.passwords.is_empty() {
            return ConnectReturnCode::Accepted;
        }
        match (self.passwords.get(username), password) {
            (Some(expected), Some(given)) if constant_time_eq(expected.as_bytes(), given) => {
                ConnectReturnCode::Accepted
            }
            _ => ConnectReturnCode::BadUsernameOrPassword,
        }
    }

    pub(crate) fn may_publish(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.allowed(username, client_id, Access::Publish, |rule| {
            filter_matches(rule, topic)
        })
    }

    /// Decides a subscription: `None` refuses it (SUBACK 0x80); `Some`
    /// grants it with the topics it must not receive. A deny rule that
    /// covers the whole filter refuses it; a deny rule that only overlaps it
    /// (`#` against a denied `test/nosubscribe`) becomes an exclusion checked
    /// per delivered message, so the rest of the filter still works. An
    /// allow rule must contain the whole filter (cover).
    pub(crate) fn subscribe_decision(
        &self,
        username: Option<&str>,
        client_id: &str,
        filter: &str,
    ) -> Option<Exclusions> {
        if self.acl.is_empty() {
            return Some(None);
        }
        let mut exclusions: Vec<Box<str>> = Vec::new();
        for rule in self.rules(username, Access::Subscribe).filter(|r| r.deny) {
            let denied = pattern(rule, username, client_id);
            if filter_covers(&denied, filter) {
                return None;
            }
            if filters_overlap(&denied, filter) {
                exclusions.push(denied.into_boxed_str());
            }
        }
        let mut allows = self
            .rules(username, Access::Subscribe)
            .filter(|r| !r.deny)
            .peekable();
        if allows.peek().is_some()
            && !allows.any(|rule| filter_covers(&pattern(rule, username, client_id), filter))
        {
            return None;
        }
        Some((!exclusions.is_empty()).then(|| exclusions.into()))
    }

    /// The rules for this access that apply to `username`.
    fn rules<'a>(
        &'a self,
        username: Option<&'a str>,
        access: Access,
    ) -> impl Iterator<Item = &'a AclRule> + 'a {
        self.acl.iter().filter(move |rule| {
            (rule.access == access || rule.access == Access::Both)
                && rule.username.as_deref().is_none_or(|u| Some(u) == username)
        })
    }

    /// Deny rules win; with no allow rules, whatever is not denied is allowed.
    fn allowed(
        &self,
        username: Option<&str>,
        client_id: &str,
        access: Access,
        check: impl Fn(&str) -> bool,
    ) -> bool {
        if self.acl.is_empty() {
            return true;
        }
        if self
            .rules(username, access)
            .any(|rule| rule.deny && check(&pattern(rule, username, client_id)))
        {
            return false;
        }
        let mut allows = self.rules(username, access).filter(|r| !r.deny).peekable();
        if allows.peek().is_none() {
            return true;
        }
        allows.any(|rule| check(&pattern(rule, username, client_id)))
    }
}

/// The rule's topic with `%u` and `%c` replaced.
fn pattern(rule: &AclRule, username: Option<&str>, client_id: &str) -> String {
    rule.topic
        .replace("%u", username.unwrap_or("\u{0}"))
        .replace("%c", client_id)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::UserConfig;

    fn auth() -> Auth {
        let config = BrokerConfig {
            allow_anonymous: false,
            users: vec![UserConfig {
                username: "alice".into(),
                password: "pw".into(),
            }],
            acl: vec![
                AclRule {
                    username: Some("alice".into()),
                    topic: "cars/%u/#".into(),
                    access: Access::Both,
                    deny: false,
                },
                AclRule {
                    username: None,
                    topic: "public/+".into(),
                    access: Access::Subscribe,
                    deny: false,
                },
            ],
            ..BrokerConfig::default()
        };
        Auth::new(&config)
    }

    #[test]
    fn credentials() {
        let auth = auth();
        assert_eq!(
            auth.authenticate(Some("alice"), Some(b"pw")),
            ConnectReturnCode::Accepted
        );
        assert_eq!(
            auth.authenticate(Some("alice"), Some(b"nope")),
            ConnectReturnCode::BadUsernameOrPassword
        );
        assert_eq!(
            auth.authenticate(None, None),
            ConnectReturnCode::NotAuthorized
        );
    }

    #[test]
    fn deny_rules_win_and_work_without_allow_rules() {
        let config = BrokerConfig {
            acl: vec![AclRule {
                username: None,
                topic: "nosubscribe".into(),
                access: Access::Subscribe,
                deny: true,
            }],
            ..BrokerConfig::default()
        };
        let auth = Auth::new(&config);
        assert!(auth.subscribe_decision(None, "c", "nosubscribe").is_none());
        // `#` is granted without the denied topic.
        let exclusions = auth.subscribe_decision(None, "c", "#").unwrap().unwrap();
        assert_eq!(&*exclusions, &["nosubscribe".into()] as &[Box<str>]);
        assert_eq!(auth.subscribe_decision(None, "c", "other/+"), Some(None));
        assert!(auth.may_publish(None, "c", "nosubscribe"));
    }

    #[test]
    fn acl_rules() {
        let auth = auth();
        assert!(auth.may_publish(Some("alice"), "c", "cars/alice/gps"));
        assert!(!auth.may_publish(Some("alice"), "c", "cars/bob/gps"));
        assert!(!auth.may_publish(Some("alice"), "c", "public/x"));
        assert_eq!(
            auth.subscribe_decision(Some("bob"), "c", "public/x"),
            Some(None)
        );
        assert!(
            auth.subscribe_decision(Some("bob"), "c", "public/#")
                .is_none()
        );
        assert_eq!(
            auth.subscribe_decision(Some("alice"), "c", "cars/alice/+"),
            Some(None)
        );
    }
}
