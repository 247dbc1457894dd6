//! What the driver sees of either MQTT version.
//!
//! rumqttc has a client for MQTT 3.1.1 (`rumqttc`) and one for MQTT 5
//! (`rumqttc::v5`): the same shape, distinct types. [`Event`] is the part
//! of their events the driver acts on, [`Incoming`] a publish from either,
//! [`LoopError`] a connection error of either; `client` holds the clients
//! and event loops themselves. So the connection logic (acks after the
//! flow, held publishes, resubscribe, backoff, status) is written once.

use bytes::Bytes;
use rumqttc::v5 as r5;
use rumqttc::v5::mqttbytes::QoS as Qos5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{Outgoing, QoS};

use super::props::Properties;

/// The MQTT version a broker connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// MQTT 3.1.1 (the default).
    V311,
    /// MQTT 5.0. `session_expiry` is the session expiry interval sent with
    /// CONNECT, in seconds (0 with a clean session; `u32::MAX`: never).
    V5 { session_expiry: u32 },
}

/// An incoming publish, from either protocol.
pub(crate) struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub pkid: u16,
    /// MQTT 5 properties (None on 3.1.1 or when the publish has none).
    pub properties: Option<Box<Properties>>,
}

impl Incoming {
    fn from_v4(publish: rumqttc::Publish) -> Incoming {
        Incoming {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            pkid: publish.pkid,
            properties: None,
        }
    }

    fn from_v5(publish: p5::Publish) -> Incoming {
        // MQTT requires UTF-8 topics; a broken one is shown, not dropped.
        let topic = match std::str::from_utf8(&publish.topic) {
            Ok(topic) => topic.to_string(),
            Err(_) => String::from_utf8_lossy(&publish.topic).into_owned(),
        };
        Incoming {
            topic,
            payload: publish.payload,
            qos: qos_from_v5(publish.qos),
            retain: publish.retain,
            pkid: publish.pkid,
            properties: Properties::from_v5(publish.properties),
        }
    }
}

/// What the driver acts on, from either protocol.
#[derive(Debug)]
pub(super) enum Event {
    /// CONNACK accepted. `resent`: requests put back into the queue because
    /// the broker had no session (see `client::EventLoop::poll`).
    Connected {
        session_present: bool,
        resent: usize,
    },
    /// An incoming publish.
    Publish(Incoming),
    /// The broker is done with an outgoing publish (PUBACK, PUBCOMP, or an
    /// MQTT 5 PUBACK/PUBREC with an error reason, given in `refused`).
    Acked { pkid: u16, refused: Option<String> },
    /// SUBACK: the granted QoS per filter, or why it was refused.
    SubAck(Vec<Result<u8, String>>),
    /// `Outgoing::Publish(pkid)`: a publish went to the network.
    Sent(u16),
    /// `Outgoing::AwaitAck(pkid)`: the next publish collided on `pkid`.
    Collided(u16),
    /// DISCONNECT went out.
    Disconnected,
    /// Anything else (pings, our own acks, ...).
    Other,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("topic", &self.topic)
            .field("qos", &self.qos)
            .field("pkid", &self.pkid)
            .finish_non_exhaustive()
    }
}

impl Event {
    pub(super) fn from_v4(event: rumqttc::Event) -> Event {
        use rumqttc::{Event as E, Packet as P, SubscribeReasonCode as S};
        match event {
            E::Incoming(P::ConnAck(connack)) => Event::Connected {
                session_present: connack.session_present,
                resent: 0,
            },
            E::Incoming(P::Publish(publish)) => Event::Publish(Incoming::from_v4(publish)),
            E::Incoming(P::PubAck(ack)) => Event::Acked {
                pkid: ack.pkid,
                refused: None,
            },
            E::Incoming(P::PubComp(comp)) => Event::Acked {
                pkid: comp.pkid,
                refused: None,
            },
            E::Incoming(P::SubAck(suback)) => Event::SubAck(
                suback
                    .return_codes
                    .iter()
                    .map(|code| match code {
                        S::Success(qos) => Ok(*qos as u8),
                        S::Failure => Err("refused".to_string()),
                    })
                    .collect(),
            ),
            E::Outgoing(outgoing) => Event::from_outgoing(outgoing),
            E::Incoming(_) => Event::Other,
        }
    }

    pub(super) fn from_v5(event: r5::Event) -> Event {
        use p5::{Packet as P, PubAckReason, PubRecReason, SubscribeReasonCode as S};
        match event {
            r5::Event::Incoming(P::ConnAck(connack)) => Event::Connected {
                session_present: connack.session_present,
                resent: 0,
            },
            r5::Event::Incoming(P::Publish(publish)) => Event::Publish(Incoming::from_v5(publish)),
            r5::Event::Incoming(P::PubAck(ack)) => Event::Acked {
                pkid: ack.pkid,
                refused: (!matches!(
                    ack.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ))
                .then(|| format!("{:?}", ack.reason)),
            },
            // A refusing PUBREC ends the exchange: no PUBCOMP follows.
            r5::Event::Incoming(P::PubRec(rec))
                if !matches!(
                    rec.reason,
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                ) =>
            {
                Event::Acked {
                    pkid: rec.pkid,
                    refused: Some(format!("{:?}", rec.reason)),
                }
            }
            r5::Event::Incoming(P::PubComp(comp)) => Event::Acked {
                pkid: comp.pkid,
                refused: None,
            },
            r5::Event::Incoming(P::SubAck(suback)) => Event::SubAck(
                suback
                    .return_codes
                    .iter()
                    .map(|code| match code {
                        S::Success(qos) => Ok(*qos as u8),
                        other => Err(format!("{other:?}")),
                    })
                    .collect(),
            ),
            r5::Event::Outgoing(outgoing) => Event::from_outgoing(outgoing),
            r5::Event::Incoming(_) => Event::Other,
        }
    }

    fn from_outgoing(outgoing: Outgoing) -> Event {
        match outgoing {
            Outgoing::Publish(pkid) => Event::Sent(pkid),
            Outgoing::AwaitAck(pkid) => Event::Collided(pkid),
            Outgoing::Disconnect => Event::Disconnected,
            _ => Event::Other,
        }
    }
}

/// A connection error of either client.
#[derive(Debug)]
pub(super) enum LoopError {
    V4(rumqttc::ConnectionError),
    V5(r5::ConnectionError),
}

impl LoopError {
    /// Whether the broker refused the CONNECT (credentials, client id, ...).
    pub fn refused(&self) -> bool {
        matches!(
            self,
            LoopError::V4(rumqttc::ConnectionError::ConnectionRefused(_))
                | LoopError::V5(r5::ConnectionError::ConnectionRefused(_))
        )
    }

    /// A readable reason; refused connects say why.
    pub fn describe(&self) -> String {
        match self {
            LoopError::V4(error) => describe_v4(error),
            LoopError::V5(error) => describe_v5(error),
        }
    }
}

fn describe_v4(error: &rumqttc::ConnectionError) -> String {
    use rumqttc::{ConnectReturnCode as C, ConnectionError as E};
    match error {
        E::ConnectionRefused(code) => {
            let why = match code {
                C::BadUserNamePassword => "bad user name or password",
                C::NotAuthorized => "not authorized",
                C::BadClientId => "client id rejected",
                C::RefusedProtocolVersion => "protocol version not supported",
                C::ServiceUnavailable => "service unavailable",
                C::Success => "success",
            };
            format!("broker refused the connection: {why}")
        }
        E::Io(io) => format!("network error: {io}"),
        E::NetworkTimeout => "connect timed out".to_string(),
        E::MqttState(state) => format!("protocol error: {state}"),
        other => other.to_string(),
    }
}

fn describe_v5(error: &r5::ConnectionError) -> String {
    use p5::ConnectReturnCode as C;
    use r5::{ConnectionError as E, StateError};
    match error {
        E::ConnectionRefused(code) => {
            let why = match code {
                C::BadUserNamePassword => "bad user name or password".to_string(),
                C::NotAuthorized => "not authorized".to_string(),
                C::ClientIdentifierNotValid | C::BadClientId => "client id rejected".to_string(),
                C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => {
                    "protocol version not supported (does the broker speak MQTT 5?)".to_string()
                }
                other => format!("{other:?}"),
            };
            format!("broker refused the connection: {why}")
        }
        E::Io(io) => format!("network error: {io}"),
        E::Timeout(_) => "connect timed out".to_string(),
        E::MqttState(StateError::ServerDisconnect {
            reason_code,
            reason_string,
        }) => match reason_string {
            Some(text) => format!("broker disconnected: {reason_code:?} ({text})"),
            None => format!("broker disconnected: {reason_code:?}"),
        },
        E::MqttState(state) => format!("protocol error: {state}"),
        other => other.to_string(),
    }
}

pub(super) fn qos_to_v5(qos: QoS) -> Qos5 {
    match qos {
        QoS::AtMostOnce => Qos5::AtMostOnce,
        QoS::AtLeastOnce => Qos5::AtLeastOnce,
        QoS::ExactlyOnce => Qos5::ExactlyOnce,
    }
}

fn qos_from_v5(qos: Qos5) -> QoS {
    match qos {
        Qos5::AtMostOnce => QoS::AtMostOnce,
        Qos5::AtLeastOnce => QoS::AtLeastOnce,
        Qos5::ExactlyOnce => QoS::ExactlyOnce,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn qos_maps_both_ways() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            assert_eq!(qos_from_v5(qos_to_v5(qos)), qos);
        }
    }

    #[test]
    fn v5_events_map_to_the_driver_events() {
        let mut publish = p5::Publish::new("a/b", Qos5::AtLeastOnce, "x", None);
        publish.pkid = 7;
        let Event::Publish(incoming) =
            Event::from_v5(r5::Event::Incoming(p5::Packet::Publish(publish)))
        else {
            panic!("a publish");
        };
        assert_eq!(incoming.topic, "a/b");
        assert_eq!(incoming.qos, QoS::AtLeastOnce);
        assert_eq!(incoming.pkid, 7);
        assert!(incoming.properties.is_none());

        let refused = p5::PubAck {
            pkid: 3,
            reason: p5::PubAckReason::NotAuthorized,
            properties: None,
        };
        let event = Event::from_v5(r5::Event::Incoming(p5::Packet::PubAck(refused)));
        assert!(
            matches!(event, Event::Acked { pkid: 3, refused: Some(ref why) } if why.contains("NotAuthorized")),
            "{event:?}"
        );
        let fine = p5::PubAck {
            pkid: 4,
            reason: p5::PubAckReason::NoMatchingSubscribers,
            properties: None,
        };
        let event = Event::from_v5(r5::Event::Incoming(p5::Packet::PubAck(fine)));
        assert!(
            matches!(
                event,
                Event::Acked {
                    pkid: 4,
                    refused: None
                }
            ),
            "{event:?}"
        );
    }
}
