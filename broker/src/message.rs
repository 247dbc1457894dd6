//! Messages as they travel through the broker and the in-process API types.

use std::sync::Arc;

use bytes::Bytes;

use crate::codec::QoS;

/// MQTT 5 publish properties used by runnel's MQTT nodes. They travel
/// between in-process publishers and subscribers; the MQTT 3.1.1 wire has
/// no place for them, so TCP clients do not see them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    pub user_properties: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub message_expiry_interval_secs: Option<u32>,
}

/// A message published in-process with [`crate::Broker::publish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: PublishProperties,
}

impl Publish {
    /// A QoS 0, non-retained message without properties.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Publish {
        Publish {
            topic: topic.into(),
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: PublishProperties::default(),
        }
    }

    pub fn with_qos(mut self, qos: QoS) -> Publish {
        self.qos = qos;
        self
    }

    pub fn with_retain(mut self, retain: bool) -> Publish {
        self.retain = retain;
        self
    }
}

/// A message received by a [`crate::LocalSubscription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// The lower of the publish QoS and the subscription QoS.
    pub qos: QoS,
    /// True when sent because of the subscription to a retained message.
    pub retain: bool,
    pub properties: Option<Arc<PublishProperties>>,
}

/// A published message shared by every queue it is delivered to.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) topic: Arc<str>,
    pub(crate) payload: Bytes,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) properties: Option<Arc<PublishProperties>>,
}

impl Message {
    pub(crate) fn delivery(&self, qos: QoS, retain: bool) -> Delivery {
        Delivery {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos,
            retain,
            properties: self.properties.clone(),
        }
    }
}
