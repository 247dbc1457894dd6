//! Retained messages: the last retained PUBLISH per topic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::message::Message;
use crate::topic::filter_matches;

/// Retained messages by topic. A std `Mutex`: lookups are short and never
/// held across `.await`.
#[derive(Debug, Default)]
pub(crate) struct RetainedStore {
    messages: Mutex<HashMap<Arc<str>, Arc<Message>>>,
}

impl RetainedStore {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Message>>> {
        self.messages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores, replaces or (with an empty payload) clears the retained
    /// message of a topic. [MQTT-3.3.1-5] [MQTT-3.3.1-10] [MQTT-3.3.1-11]
    /// Returns false when a new topic was refused because `max` are held.
    pub(crate) fn set(&self, message: &Arc<Message>, max: usize) -> bool {
        let mut messages = self.lock();
        if message.payload.is_empty() {
            messages.remove(&message.topic);
        } else if messages.len() < max || messages.contains_key(&message.topic) {
            messages.insert(message.topic.clone(), message.clone());
        } else {
            return false;
        }
        true
    }

    /// Retained messages matching a filter. [MQTT-3.3.1-6]
    pub(crate) fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        self.lock()
            .values()
            .filter(|m| filter_matches(filter, &m.topic))
            .cloned()
            .collect()
    }

    pub(crate) fn all(&self) -> Vec<Arc<Message>> {
        self.lock().values().cloned().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
