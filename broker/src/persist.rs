//! Saving persistent sessions and retained messages to `data_dir`.
//!
//! The state is one JSON snapshot (`broker-state.json`), written on
//! shutdown to a temporary file and renamed into place, and read on start.
//! A crash loses what changed since the last clean shutdown; see
//! `docs/broker.md`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::broker::{Shared, Target};
use crate::codec::QoS;
use crate::error::BrokerError;
use crate::message::Message;
use crate::session::{Outgoing, Session};
use crate::topic::{Exclusions, Subscription};

const FILE_NAME: &str = "broker-state.json";
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    version: u32,
    retained: Vec<StoredMessage>,
    sessions: Vec<StoredSession>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredMessage {
    topic: String,
    payload: Vec<u8>,
    /// QoS of the message as published.
    qos: QoS,
    /// Delivery QoS for a queued message.
    delivery_qos: QoS,
    retain: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSession {
    client_id: String,
    subscriptions: Vec<(String, QoS)>,
    /// Filter -> topics it must not receive (ACL deny rules it overlaps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    exclusions: Vec<(String, Vec<String>)>,
    queued: Vec<StoredMessage>,
}

fn stored(message: &Message, delivery_qos: QoS, retain: bool) -> StoredMessage {
    StoredMessage {
        topic: message.topic.to_string(),
        payload: message.payload.to_vec(),
        qos: message.qos,
        delivery_qos,
        retain,
    }
}

fn error(path: &Path, reason: impl ToString) -> BrokerError {
    BrokerError::Persistence {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Writes the snapshot of every session that is still held (persistent
/// ones: clean sessions are discarded when their connection ends).
pub(crate) fn save(shared: &Shared, dir: &Path) -> Result<(), BrokerError> {
    let retained = shared
        .retained
        .all()
        .iter()
        .map(|m| stored(m, m.qos, true))
        .collect();
    let sessions_held: Vec<Arc<Session>> = shared.sessions().values().cloned().collect();
    let sessions = sessions_held
        .iter()
        .map(|session| {
            // One lock for both lists: a second `subscriptions()` in the same
            // expression would wait for the first guard forever.
            let held = session.subscriptions();
            StoredSession {
                client_id: session.client_id.to_string(),
                subscriptions: held.iter().map(|(f, (q, _))| (f.clone(), *q)).collect(),
                exclusions: held
                    .iter()
                    .filter_map(|(f, (_, e))| {
                        let topics = e.as_deref()?.iter().map(|t| t.to_string()).collect();
                        Some((f.clone(), topics))
                    })
                    .collect(),
                queued: session
                    .queue
                    .pending()
                    .iter()
                    .map(|o| stored(&o.message, o.qos, o.retain))
                    .collect(),
            }
        })
        .collect();
    let snapshot = Snapshot {
        version: VERSION,
        retained,
        sessions,
    };
    std::fs::create_dir_all(dir).map_err(|e| error(dir, e))?;
    let path = dir.join(FILE_NAME);
    let temporary = dir.join(format!("{FILE_NAME}.tmp"));
    let data = serde_json::to_vec(&snapshot).map_err(|e| error(&path, e))?;
    std::fs::write(&temporary, data).map_err(|e| error(&temporary, e))?;
    std::fs::rename(&temporary, &path).map_err(|e| error(&path, e))?;
    tracing::info!(path = %path.display(), sessions = snapshot.sessions.len(),
        retained = snapshot.retained.len(), "broker state saved");
    Ok(())
}

/// Restores the snapshot, if there is one, into a fresh broker.
pub(crate) fn load(shared: &Shared, dir: &Path) -> Result<(), BrokerError> {
    let path = dir.join(FILE_NAME);
    let data = match std::fs::read(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(error(&path, e)),
    };
    let snapshot: Snapshot = serde_json::from_slice(&data).map_err(|e| error(&path, e))?;
    if snapshot.version != VERSION {
        return Err(error(
            &path,
            format!("unsupported version {}", snapshot.version),
        ));
    }
    let message = |m: StoredMessage| {
        Arc::new(Message {
            topic: m.topic.into(),
            payload: Bytes::from(m.payload),
            qos: m.qos,
            retain: m.retain,
            properties: None,
        })
    };
    for stored in snapshot.retained {
        shared.retained.set(&message(stored), usize::MAX);
    }
    for stored in snapshot.sessions {
        let client_id: Arc<str> = stored.client_id.into();
        let session = Arc::new(Session::new(
            shared.next_subscriber_id(),
            client_id.clone(),
            shared.config.max_queued_per_client,
            usize::from(shared.config.max_inflight),
        ));
        session.queue.restore(stored.queued.into_iter().map(|m| {
            let qos = m.delivery_qos;
            let retain = m.retain;
            Outgoing {
                message: message(m),
                qos,
                retain,
            }
        }));
        {
            let mut tree = shared.tree_write();
            let mut subscriptions = session.subscriptions();
            let mut exclusions: HashMap<String, Vec<String>> =
                stored.exclusions.into_iter().collect();
            for (filter, qos) in stored.subscriptions {
                let excluded: Exclusions = exclusions
                    .remove(&filter)
                    .map(|topics| topics.into_iter().map(String::into_boxed_str).collect());
                let sub = Subscription {
                    id: session.id,
                    qos,
                    target: Target::Client(session.clone()),
                    exclusions: excluded.clone(),
                };
                if tree.subscribe(&filter, sub).is_ok() {
                    subscriptions.insert(filter, (qos, excluded));
                }
            }
        }
        shared.sessions().insert(client_id, session);
    }
    tracing::info!(path = %path.display(), "broker state loaded");
    Ok(())
}
