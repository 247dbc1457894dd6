//! Topic names, topic filters and the subscription tree.
//!
//! The tree stores one node per filter level, with `+` and `#` as ordinary
//! child keys, so matching a topic walks at most two children per level
//! (the literal and `+`) plus a `#` check. Shared subscriptions
//! (`$share/<group>/<filter>`) sit on the node of their filter, and each
//! match picks one member of each group round-robin.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::codec::QoS;

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic name contains a wildcard")]
    WildcardInName,
    #[error("wildcard does not occupy a whole level, or '#' is not last")]
    MisplacedWildcard,
    #[error("topic contains U+0000")]
    NullCharacter,
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    #[error("malformed shared subscription, expected $share/<group>/<filter>")]
    MalformedShare,
}

/// Checks a topic name used in PUBLISH.
/// [MQTT-4.7.3-1] not empty; [MQTT-3.3.2-2] no wildcards; [MQTT-4.7.3-2] no U+0000.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > usize::from(u16::MAX) {
        return Err(TopicError::TooLong);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    if topic.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// Checks a topic filter used in SUBSCRIBE.
/// [MQTT-4.7.1-2] `#` is last and alone in its level; [MQTT-4.7.1-3] `+`
/// occupies a whole level.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.len() > usize::from(u16::MAX) {
        return Err(TopicError::TooLong);
    }
    if filter.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        match level {
            "#" if !is_last => return Err(TopicError::MisplacedWildcard),
            "#" | "+" => {}
            other if other.contains(['+', '#']) => return Err(TopicError::MisplacedWildcard),
            _ => {}
        }
    }
    Ok(())
}

/// A filter split into an optional share group and the filter proper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    pub share_group: Option<&'a str>,
    pub filter: &'a str,
}

/// Validates a filter and splits off `$share/<group>/`.
pub fn parse_filter(raw: &str) -> Result<ParsedFilter<'_>, TopicError> {
    validate_topic_filter(raw)?;
    if let Some(rest) = raw.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::MalformedShare)?;
        if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
            return Err(TopicError::MalformedShare);
        }
        return Ok(ParsedFilter {
            share_group: Some(group),
            filter,
        });
    }
    Ok(ParsedFilter {
        share_group: None,
        filter: raw,
    })
}

/// Whether `filter` matches `topic` (both already validated).
/// [MQTT-4.7.2-1] topics starting with `$` are not matched by a leading wildcard.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic matched by `requested` is also matched by `rule`.
/// Used by ACLs to decide if a subscription stays inside an allowed filter.
pub fn filter_covers(rule: &str, requested: &str) -> bool {
    let mut rule_levels = rule.split('/');
    let mut requested_levels = requested.split('/');
    loop {
        match (rule_levels.next(), requested_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(r)) if r != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" && a != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic is matched by both filters (both validated).
/// [MQTT-4.7.2-1] a leading wildcard never reaches a `$` topic.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let leading_wildcard = |f: &str| f.starts_with(['+', '#']);
    if (a.starts_with('$') && leading_wildcard(b)) || (b.starts_with('$') && leading_wildcard(a)) {
        return false;
    }
    let mut a_levels = a.split('/');
    let mut b_levels = b.split('/');
    loop {
        match (a_levels.next(), b_levels.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Identifies a subscriber (a client session or an in-process subscription).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberId(pub u64);

/// Topic filters whose topics a subscription must not receive: the deny
/// ACL rules that overlap its filter without covering it (`None` for almost
/// every subscription, so routing pays one branch).
pub type Exclusions = Option<Arc<[Box<str>]>>;

/// True if `topic` is excluded by `exclusions`.
pub fn excluded(exclusions: &Exclusions, topic: &str) -> bool {
    exclusions
        .as_deref()
        .is_some_and(|filters| filters.iter().any(|f| filter_matches(f, topic)))
}

/// One subscription stored in the tree.
#[derive(Debug, Clone)]
pub struct Subscription<V> {
    pub id: SubscriberId,
    pub qos: QoS,
    pub target: V,
    pub exclusions: Exclusions,
}

#[derive(Debug)]
struct ShareGroup<V> {
    name: Box<str>,
    members: Vec<Subscription<V>>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    subscribers: Vec<Subscription<V>>,
    groups: Vec<ShareGroup<V>>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            subscribers: Vec::new(),
            groups: Vec::new(),
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.groups.is_empty()
    }
}

/// The subscription tree. Matching takes `&self`, so readers can share it
/// under a read lock; the round-robin cursor of share groups is atomic.
#[derive(Debug)]
pub struct TopicTree<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for TopicTree<V> {
    fn default() -> Self {
        TopicTree {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V: Clone> TopicTree<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of stored subscriptions (shared members included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces the subscription of `sub.id` to `raw_filter`.
    /// [MQTT-3.8.4-3] a repeated subscription replaces the earlier one.
    /// Returns true when it replaced an existing subscription.
    pub fn subscribe(
        &mut self,
        raw_filter: &str,
        sub: Subscription<V>,
    ) -> Result<bool, TopicError> {
        let parsed = parse_filter(raw_filter)?;
        let mut node = &mut self.root;
        for level in parsed.filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let list = match parsed.share_group {
            None => &mut node.subscribers,
            Some(group) => {
                let index = match node.groups.iter().position(|g| &*g.name == group) {
                    Some(index) => index,
                    None => {
                        node.groups.push(ShareGroup {
                            name: group.into(),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        node.groups.len() - 1
                    }
                };
                &mut node.groups[index].members
            }
        };
        if let Some(existing) = list.iter_mut().find(|s| s.id == sub.id) {
            *existing = sub;
            return Ok(true);
        }
        list.push(sub);
        self.len += 1;
        Ok(false)
    }

    /// Removes the subscription of `id` to `raw_filter`; true if it existed.
    pub fn unsubscribe(&mut self, raw_filter: &str, id: SubscriberId) -> bool {
        let Ok(parsed) = parse_filter(raw_filter) else {
            return false;
        };
        let levels: Vec<&str> = parsed.filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, parsed.share_group, id);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `visit` once per matching plain subscription and once per
    /// matching share group (with the member chosen round-robin).
    pub fn for_each_match(&self, topic: &str, mut visit: impl FnMut(&Subscription<V>)) {
        let dollar = topic.starts_with('$');
        let mut levels = topic.split('/');
        match_node(&self.root, &mut levels, dollar, &mut visit);
    }
}

fn match_node<'t, V>(
    node: &Node<V>,
    levels: &mut (impl Iterator<Item = &'t str> + Clone),
    skip_wildcards: bool,
    visit: &mut impl FnMut(&Subscription<V>),
) {
    let Some(level) = levels.next() else {
        visit_node(node, visit);
        // [MQTT-4.7.1-2] "sport/#" also matches "sport".
        if let Some(hash) = node.children.get("#") {
            visit_node(hash, visit);
        }
        return;
    };
    if !skip_wildcards {
        if let Some(hash) = node.children.get("#") {
            visit_node(hash, visit);
        }
        if let Some(plus) = node.children.get("+") {
            match_node(plus, &mut levels.clone(), false, visit);
        }
    }
    if let Some(child) = node.children.get(level) {
        match_node(child, levels, false, visit);
    }
}

fn visit_node<V>(node: &Node<V>, visit: &mut impl FnMut(&Subscription<V>)) {
    for sub in &node.subscribers {
        visit(sub);
    }
    for group in &node.groups {
        if group.members.is_empty() {
            continue;
        }
        let turn = group.next.fetch_add(1, Ordering::Relaxed) % group.members.len();
        visit(&group.members[turn]);
    }
}

fn remove_at<V>(
    node: &mut Node<V>,
    levels: &[&str],
    group: Option<&str>,
    id: SubscriberId,
) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        let list = match group {
            None => &mut node.subscribers,
            Some(group) => match node.groups.iter_mut().find(|g| &*g.name == group) {
                Some(g) => &mut g.members,
                None => return false,
            },
        };
        let before = list.len();
        list.retain(|s| s.id != id);
        let removed = list.len() != before;
        node.groups.retain(|g| !g.members.is_empty());
        return removed;
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove_at(child, rest, group, id);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sub(id: u64) -> Subscription<u64> {
        Subscription {
            id: SubscriberId(id),
            qos: QoS::AtMostOnce,
            target: id,
            exclusions: None,
        }
    }

    fn matches(tree: &TopicTree<u64>, topic: &str) -> Vec<u64> {
        let mut found = Vec::new();
        tree.for_each_match(topic, |s| found.push(s.target));
        found.sort_unstable();
        found
    }

    #[test]
    fn wildcards_match_per_mqtt_4_7() {
        let mut tree = TopicTree::new();
        tree.subscribe("sport/tennis/player1/#", sub(1)).unwrap();
        tree.subscribe("sport/+", sub(2)).unwrap();
        tree.subscribe("+/+", sub(3)).unwrap();
        tree.subscribe("#", sub(4)).unwrap();
        tree.subscribe("/+", sub(5)).unwrap();
        // [MQTT-4.7.1-2] multi-level wildcard also matches the parent level.
        assert_eq!(matches(&tree, "sport/tennis/player1"), vec![1, 4]);
        assert_eq!(matches(&tree, "sport/tennis/player1/ranking"), vec![1, 4]);
        // [MQTT-4.7.1-3] "sport/+" does not match "sport" but matches "sport/".
        assert_eq!(matches(&tree, "sport"), vec![4]);
        assert_eq!(matches(&tree, "sport/"), vec![2, 3, 4]);
        assert_eq!(matches(&tree, "/finance"), vec![3, 4, 5]);
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        // [MQTT-4.7.2-1]
        let mut tree = TopicTree::new();
        tree.subscribe("#", sub(1)).unwrap();
        tree.subscribe("+/monitor/Clients", sub(2)).unwrap();
        tree.subscribe("$SYS/#", sub(3)).unwrap();
        tree.subscribe("$SYS/monitor/+", sub(4)).unwrap();
        assert_eq!(matches(&tree, "$SYS/monitor/Clients"), vec![3, 4]);
        assert_eq!(matches(&tree, "a/monitor/Clients"), vec![1, 2]);
        assert!(!filter_matches("#", "$SYS/x"));
        assert!(filter_matches("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn resubscribe_replaces_and_unsubscribe_prunes() {
        let mut tree = TopicTree::new();
        assert!(!tree.subscribe("a/b", sub(1)).unwrap());
        assert!(tree.subscribe("a/b", sub(1)).unwrap());
        assert_eq!(tree.len(), 1);
        assert!(tree.unsubscribe("a/b", SubscriberId(1)));
        assert!(!tree.unsubscribe("a/b", SubscriberId(1)));
        assert!(tree.root.is_empty());
    }

    #[test]
    fn share_groups_round_robin() {
        let mut tree = TopicTree::new();
        tree.subscribe("$share/g/jobs/+", sub(1)).unwrap();
        tree.subscribe("$share/g/jobs/+", sub(2)).unwrap();
        tree.subscribe("jobs/#", sub(3)).unwrap();
        let mut counts = [0usize; 4];
        for _ in 0..10 {
            tree.for_each_match("jobs/x", |s| counts[s.target as usize] += 1);
        }
        assert_eq!(counts, [0, 5, 5, 10]);
    }

    #[test]
    fn invalid_filters_are_refused() {
        // [MQTT-4.7.1-2] [MQTT-4.7.1-3]
        for bad in ["", "a/#/b", "a#", "a/b+", "$share/g", "$share//a", "a\0b"] {
            assert!(parse_filter(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_topic_name("a/+").is_err());
        assert!(validate_topic_name("").is_err());
    }

    #[test]
    fn overlap_is_symmetric_and_respects_dollar() {
        for (a, b, expected) in [
            ("a/+", "+/b", true),
            ("a/#", "a", true),
            ("a/b", "a/c", false),
            ("#", "nosubscribe", true),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/+", true),
        ] {
            assert_eq!(filters_overlap(a, b), expected, "{a} {b}");
            assert_eq!(filters_overlap(b, a), expected, "{b} {a}");
        }
    }

    #[test]
    fn covers_is_subset_check() {
        assert!(filter_covers("a/#", "a/b/+"));
        assert!(filter_covers("a/+", "a/+"));
        assert!(!filter_covers("a/+", "a/#"));
        assert!(!filter_covers("a/b", "a/+"));
        assert!(filter_covers("#", "#"));
    }
}
