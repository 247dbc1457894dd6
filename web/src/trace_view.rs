//! A message's trace as the editor shows it: the raw events of the message
//! and of the messages it was derived from, and one "hop" per node it
//! passed, with the port it left by and the time spent there.

use std::collections::HashSet;
use std::time::SystemTime;

use runnel_engine::{MsgId, TraceEvent, TraceEventKind, TraceStore};
use serde::Serialize;
use serde_json::{Value as Json, json};

/// How many ancestors (`Derived` parents) are followed at most.
const MAX_ANCESTORS: usize = 32;

/// One node a message passed.
#[derive(Debug, Serialize)]
pub struct Hop {
    /// The node.
    pub node: String,
    /// The message id while at this node.
    pub msgid: String,
    /// When the node received it (none for the source that created it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received: Option<String>,
    /// When it last sent it on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left: Option<String>,
    /// The output ports it was sent on.
    pub ports: Vec<usize>,
    /// Microseconds from receiving to the last send or the error; for a
    /// node that sent nothing (a sink), to the message's next event (it
    /// finishing, usually).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub micros: Option<u64>,
    /// The error, if the node failed on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    received_at: Option<SystemTime>,
    #[serde(skip)]
    left_at: Option<SystemTime>,
    #[serde(skip)]
    received_index: usize,
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

/// The events of `id` and its ancestors, oldest first.
pub fn collect_events(store: &TraceStore, id: MsgId) -> Vec<TraceEvent> {
    let mut events = Vec::new();
    let mut seen = HashSet::new();
    let mut next = Some(id);
    while let Some(current) = next.take() {
        if !seen.insert(current) || seen.len() > MAX_ANCESTORS {
            break;
        }
        let list = store.events(current);
        next = list.iter().find_map(|e| match &e.kind {
            TraceEventKind::Derived { parent } => Some(*parent),
            _ => None,
        });
        events.extend(list);
    }
    events.sort_by_key(|e| e.time);
    events
}

/// One hop per node visit, in the order the message reached them.
pub fn hops(events: &[TraceEvent]) -> Vec<Hop> {
    let mut hops: Vec<Hop> = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let Some(node) = &event.node else {
            continue;
        };
        let node = node.as_str();
        let msgid = event.msg_id.to_string();
        // The visit this event belongs to: the same node and message, or a
        // node that received a message and sends one derived from it.
        let open = hops
            .iter()
            .rposition(|h| h.node == node && h.msgid == msgid && h.error.is_none())
            .or_else(|| {
                hops.iter().rposition(|h| {
                    h.node == node && h.received.is_some() && h.left.is_none() && h.error.is_none()
                })
            });
        match &event.kind {
            TraceEventKind::Received => hops.push(Hop {
                node: node.to_string(),
                msgid,
                received: Some(rfc3339(event.time)),
                left: None,
                ports: Vec::new(),
                micros: None,
                error: None,
                received_at: Some(event.time),
                left_at: None,
                received_index: index,
            }),
            TraceEventKind::Sent { port } => {
                let index = match open {
                    Some(index) => index,
                    None => {
                        hops.push(Hop {
                            node: node.to_string(),
                            msgid,
                            received: None,
                            left: None,
                            ports: Vec::new(),
                            micros: None,
                            error: None,
                            received_at: None,
                            left_at: None,
                            received_index: index,
                        });
                        hops.len() - 1
                    }
                };
                let hop = &mut hops[index];
                if !hop.ports.contains(port) {
                    hop.ports.push(*port);
                }
                hop.left_at = Some(event.time);
                hop.left = Some(rfc3339(event.time));
            }
            TraceEventKind::Error { message } => {
                if let Some(index) = open {
                    hops[index].error = Some(message.clone());
                    hops[index].left_at = Some(event.time);
                }
            }
            TraceEventKind::Derived { .. } | TraceEventKind::Finished { .. } => {}
        }
    }
    for hop in &mut hops {
        let end = hop.left_at.or_else(|| {
            hop.received_at?;
            events[hop.received_index + 1..]
                .iter()
                .find(|e| e.msg_id.to_string() == hop.msgid)
                .map(|e| e.time)
        });
        if let (Some(start), Some(end)) = (hop.received_at, end) {
            hop.micros = end
                .duration_since(start)
                .ok()
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        }
    }
    hops
}

/// The JSON answer of `GET /api/traces/{msgid}`, or `None` if the store
/// knows nothing of the message.
pub fn trace_json(store: &TraceStore, id: MsgId) -> Option<Json> {
    let events = collect_events(store, id);
    if events.is_empty() {
        return None;
    }
    let finished = events.iter().rev().find_map(|e| match e.kind {
        TraceEventKind::Finished { errored } => Some(json!({
            "time": rfc3339(e.time),
            "errored": errored,
        })),
        _ => None,
    });
    let flow = events.first().map(|e| e.flow.to_string());
    let hops = hops(&events);
    Some(json!({
        "msgid": id,
        "flow": flow,
        "hops": hops,
        "finished": finished,
        "events": events,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_engine::{FlowId, NodeId};

    fn event(id: MsgId, node: Option<&str>, kind: TraceEventKind, at_micros: u64) -> TraceEvent {
        TraceEvent {
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(at_micros),
            flow: FlowId::new("f"),
            msg_id: id,
            node: node.map(NodeId::new),
            kind,
        }
    }

    #[test]
    fn hops_follow_parents_and_time_each_node() {
        let store = TraceStore::new(16, 16);
        store.set_enabled(true);
        let (parent, child) = (MsgId::next(), MsgId::next());
        store.record(event(
            parent,
            Some("tick"),
            TraceEventKind::Sent { port: 0 },
            10,
        ));
        store.record(event(parent, Some("split"), TraceEventKind::Received, 20));
        store.record(event(child, None, TraceEventKind::Derived { parent }, 25));
        store.record(event(
            child,
            Some("split"),
            TraceEventKind::Sent { port: 1 },
            30,
        ));
        store.record(event(child, Some("show"), TraceEventKind::Received, 40));
        store.record(event(
            child,
            Some("show"),
            TraceEventKind::Error {
                message: "bad".into(),
            },
            45,
        ));
        store.record(event(
            child,
            None,
            TraceEventKind::Finished { errored: true },
            50,
        ));

        let json = trace_json(&store, child).unwrap_or_default();
        let hops = json["hops"].as_array().cloned().unwrap_or_default();
        let nodes: Vec<&str> = hops.iter().filter_map(|h| h["node"].as_str()).collect();
        assert_eq!(nodes, ["tick", "split", "show"]);
        assert_eq!(hops[1]["ports"], json!([1]));
        assert_eq!(hops[1]["micros"], 10);
        assert_eq!(hops[0]["ports"], json!([0]));
        assert!(hops[0].get("received").is_none());
        assert_eq!(hops[2]["error"], "bad");
        assert_eq!(hops[2]["micros"], 5);
        assert_eq!(json["finished"]["errored"], true);
        assert_eq!(json["events"].as_array().map(Vec::len), Some(7));
        assert!(trace_json(&store, MsgId::next()).is_none());
    }

    #[test]
    fn a_sink_is_timed_until_the_message_finishes() {
        let store = TraceStore::new(16, 16);
        store.set_enabled(true);
        let id = MsgId::next();
        store.record(event(
            id,
            Some("src"),
            TraceEventKind::Sent { port: 0 },
            100,
        ));
        store.record(event(id, Some("sink"), TraceEventKind::Received, 110));
        store.record(event(
            id,
            None,
            TraceEventKind::Finished { errored: false },
            135,
        ));
        let json = trace_json(&store, id).unwrap_or_default();
        assert_eq!(json["hops"][1]["node"], "sink");
        assert_eq!(json["hops"][1]["micros"], 25);
        assert!(json["hops"][1].get("left").is_none());
    }
}
