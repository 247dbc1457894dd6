//! The two rumqttc clients behind one type each: [`Client`] (requests:
//! publish, ack, disconnect) and [`EventLoop`] (the connection itself),
//! built from the broker's [`Settings`] for MQTT 3.1.1 or 5.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5 as r5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{QoS, Transport};

use super::Settings;
use super::props::Properties;
use super::proto::{Event, LoopError, Protocol, qos_to_v5};

/// The request side of a connection.
#[derive(Clone, Debug)]
pub(super) enum Client {
    V4(rumqttc::AsyncClient),
    V5(r5::AsyncClient),
}

impl Client {
    /// Queues a publish; an error means the event loop is gone. MQTT 5
    /// properties are dropped on a 3.1.1 connection (the nodes never pass
    /// any there).
    pub async fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        properties: Option<Properties>,
    ) -> Result<(), String> {
        match self {
            Client::V4(client) => client
                .publish_bytes(topic, qos, retain, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(client) => match properties {
                Some(properties) => client
                    .publish_bytes_with_properties(
                        topic,
                        qos_to_v5(qos),
                        retain,
                        payload,
                        properties.into_v5(),
                    )
                    .await
                    .map_err(|e| e.to_string()),
                None => client
                    .publish_bytes(topic, qos_to_v5(qos), retain, payload)
                    .await
                    .map_err(|e| e.to_string()),
            },
        }
    }

    /// Acknowledges incoming publish `pkid` (PUBACK for QoS 1, PUBREC for
    /// QoS 2); false when the event loop is gone.
    pub async fn ack(&self, qos: QoS, pkid: u16) -> bool {
        match self {
            Client::V4(client) => {
                let publish = rumqttc::Publish {
                    dup: false,
                    qos,
                    retain: false,
                    topic: String::new(),
                    pkid,
                    payload: Bytes::new(),
                };
                client.ack(&publish).await.is_ok()
            }
            Client::V5(client) => {
                let publish = p5::Publish {
                    qos: qos_to_v5(qos),
                    pkid,
                    ..p5::Publish::default()
                };
                client.ack(&publish).await.is_ok()
            }
        }
    }

    /// Queues DISCONNECT (nothing to do when the event loop is gone).
    pub async fn disconnect(&self) {
        match self {
            Client::V4(client) => {
                let _ = client.disconnect().await;
            }
            Client::V5(client) => {
                let _ = client.disconnect().await;
            }
        }
    }
}

/// rumqttc's event loop of either protocol, with what the driver needs
/// around it: whether a network connection is up, and the pending queue
/// as it was before connecting.
pub(super) struct EventLoop {
    inner: Inner,
    online: bool,
}

enum Inner {
    V4 {
        eventloop: Box<rumqttc::EventLoop>,
        snapshot: Vec<rumqttc::Request>,
    },
    V5 {
        eventloop: Box<r5::EventLoop>,
        snapshot: Vec<r5::Request>,
    },
}

/// The client and event loop for `settings` (no I/O).
pub(super) fn new_connection(settings: &Settings) -> (Client, EventLoop) {
    let (client, inner) = match settings.protocol {
        Protocol::V311 => {
            let (client, eventloop) = rumqttc::AsyncClient::new(options_v4(settings), 256);
            (
                Client::V4(client),
                Inner::V4 {
                    eventloop: Box::new(eventloop),
                    snapshot: Vec::new(),
                },
            )
        }
        Protocol::V5 { session_expiry } => {
            let options = options_v5(settings, session_expiry);
            let (client, eventloop) = r5::AsyncClient::new(options, 256);
            (
                Client::V5(client),
                Inner::V5 {
                    eventloop: Box::new(eventloop),
                    snapshot: Vec::new(),
                },
            )
        }
    };
    let mut eventloop = EventLoop {
        inner,
        online: false,
    };
    eventloop.configure_network(settings.connect_timeout);
    (client, eventloop)
}

impl EventLoop {
    /// Whether the next poll returns an event already read (a packet of the
    /// last network read, an outgoing notice) without waiting.
    pub fn buffered(&self) -> bool {
        self.online
            && match &self.inner {
                Inner::V4 { eventloop, .. } => !eventloop.state.events.is_empty(),
                Inner::V5 { eventloop, .. } => !eventloop.state.events.is_empty(),
            }
    }

    /// Whether a network connection is up (the last poll succeeded).
    pub fn online(&self) -> bool {
        self.online
    }

    /// Connect over TLS.
    pub fn set_transport(&mut self, transport: Transport) {
        match &mut self.inner {
            Inner::V4 { eventloop, .. } => {
                eventloop.mqtt_options.set_transport(transport);
            }
            Inner::V5 { eventloop, .. } => {
                eventloop.options.set_transport(transport);
            }
        }
    }

    fn configure_network(&mut self, connect_timeout: Duration) {
        let seconds = connect_timeout.as_secs().max(1);
        match &mut self.inner {
            Inner::V4 { eventloop, .. } => {
                let mut network = eventloop.network_options();
                network.set_tcp_nodelay(true);
                network.set_connection_timeout(seconds);
                eventloop.set_network_options(network);
            }
            Inner::V5 { eventloop, .. } => {
                let mut network = eventloop.options.network_options();
                network.set_tcp_nodelay(true);
                network.set_connection_timeout(seconds);
                eventloop
                    .options
                    .set_network_options(network)
                    .set_connection_timeout(seconds);
            }
        }
    }

    /// Queues SUBSCRIBE for `filters` straight into the pending queue (the
    /// driver must never wait on its own request channel).
    pub fn subscribe(&mut self, filters: Vec<(String, QoS)>) {
        match &mut self.inner {
            Inner::V4 { eventloop, .. } => {
                let filters = filters
                    .into_iter()
                    .map(|(path, qos)| rumqttc::SubscribeFilter::new(path, qos));
                eventloop.pending.push_back(rumqttc::Request::Subscribe(
                    rumqttc::Subscribe::new_many(filters),
                ));
            }
            Inner::V5 { eventloop, .. } => {
                let filters = filters
                    .into_iter()
                    .map(|(path, qos)| p5::Filter::new(path, qos_to_v5(qos)));
                eventloop
                    .pending
                    .push_back(r5::Request::Subscribe(p5::Subscribe::new_many(
                        filters, None,
                    )));
            }
        }
    }

    /// The next event; connects first when offline. rumqttc drops its
    /// pending queue (unacknowledged publishes, requests queued at the
    /// disconnect) when the broker has no session for us; they are put
    /// back, and counted in [`Event::Connected`]'s `resent`.
    pub async fn poll(&mut self) -> Result<Event, LoopError> {
        if !self.online {
            self.take_snapshot();
        }
        let result = match &mut self.inner {
            Inner::V4 { eventloop, .. } => eventloop
                .poll()
                .await
                .map(Event::from_v4)
                .map_err(LoopError::V4),
            Inner::V5 { eventloop, .. } => eventloop
                .poll()
                .await
                .map(Event::from_v5)
                .map_err(LoopError::V5),
        };
        self.online = result.is_ok();
        match result {
            Ok(Event::Connected {
                session_present, ..
            }) => {
                let resent = if session_present {
                    0
                } else {
                    self.restore_snapshot()
                };
                self.clear_snapshot();
                Ok(Event::Connected {
                    session_present,
                    resent,
                })
            }
            other => other,
        }
    }

    fn take_snapshot(&mut self) {
        match &mut self.inner {
            Inner::V4 {
                eventloop,
                snapshot,
            } => *snapshot = eventloop.pending.iter().cloned().collect(),
            Inner::V5 {
                eventloop,
                snapshot,
            } => *snapshot = eventloop.pending.iter().cloned().collect(),
        }
    }

    fn clear_snapshot(&mut self) {
        match &mut self.inner {
            Inner::V4 { snapshot, .. } => snapshot.clear(),
            Inner::V5 { snapshot, .. } => snapshot.clear(),
        }
    }

    /// Puts the snapshot's publishes and releases back into the pending
    /// queue; returns how many.
    fn restore_snapshot(&mut self) -> usize {
        match &mut self.inner {
            Inner::V4 {
                eventloop,
                snapshot,
            } => {
                let restored: Vec<_> = std::mem::take(snapshot)
                    .into_iter()
                    .filter(|r| {
                        matches!(
                            r,
                            rumqttc::Request::Publish(_) | rumqttc::Request::PubRel(_)
                        )
                    })
                    .collect();
                let count = restored.len();
                eventloop.pending.extend(restored);
                count
            }
            Inner::V5 {
                eventloop,
                snapshot,
            } => {
                let restored: Vec<_> = std::mem::take(snapshot)
                    .into_iter()
                    .filter(|r| matches!(r, r5::Request::Publish(_) | r5::Request::PubRel(_)))
                    .collect();
                let count = restored.len();
                eventloop.pending.extend(restored);
                count
            }
        }
    }
}

fn options_v4(settings: &Settings) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options
        .set_keep_alive(settings.keepalive.max(Duration::from_secs(1)))
        .set_manual_acks(true)
        .set_inflight(settings.max_inflight.saturating_add(1).max(2))
        .set_max_packet_size(settings.max_packet_size, settings.max_packet_size);
    // rumqttc panics when clean_session is false with an empty client id;
    // the config always derives a non-empty one.
    if !settings.client_id.is_empty() {
        options.set_clean_session(settings.clean_session);
    }
    if let Some((username, password)) = credentials(settings) {
        options.set_credentials(username, password);
    }
    if let Some(will) = &settings.will {
        options.set_last_will(rumqttc::LastWill::new(
            will.topic.clone(),
            will.payload.clone().into_bytes(),
            will.qos,
            will.retain,
        ));
    }
    options
}

fn options_v5(settings: &Settings, session_expiry: u32) -> r5::MqttOptions {
    let mut options = r5::MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    let max_packet = u32::try_from(settings.max_packet_size).unwrap_or(u32::MAX);
    options
        // rumqttc's MQTT 5 client panics below 5 s; the config refuses it.
        .set_keep_alive(settings.keepalive.max(Duration::from_secs(5)))
        .set_manual_acks(true)
        .set_outgoing_inflight_upper_limit(settings.max_inflight.saturating_add(1).max(2))
        // Receive Maximum: the broker sends at most this many QoS 1/2
        // messages before runnel acknowledges (as the broker's in-flight
        // window does on 3.1.1), so unfinished messages stay bounded.
        .set_receive_maximum(Some(settings.max_inflight.max(1)))
        // Maximum Packet Size: the broker does not send larger messages.
        .set_max_packet_size(Some(max_packet))
        .set_clean_start(settings.clean_session);
    if session_expiry > 0 {
        // Without it an MQTT 5 session ends with the network connection.
        options.set_session_expiry_interval(Some(session_expiry));
    }
    if let Some((username, password)) = credentials(settings) {
        options.set_credentials(username, password);
    }
    if let Some(will) = &settings.will {
        options.set_last_will(p5::LastWill::new(
            will.topic.clone(),
            will.payload.clone().into_bytes(),
            qos_to_v5(will.qos),
            will.retain,
            None,
        ));
    }
    options
}

fn credentials(settings: &Settings) -> Option<(String, String)> {
    let username = settings.username.as_ref()?;
    let password = settings
        .password
        .as_ref()
        .map(|p| p.0.clone())
        .unwrap_or_default();
    Some((username.clone(), password))
}

/// TLS from the configured files (read now, when connecting).
pub(super) fn read_tls(files: &super::TlsFiles) -> Result<Transport, String> {
    // rustls' ClientConfig::builder() (inside rumqttc) panics when more
    // than one crypto provider is compiled in (other crates of the binary
    // may enable ring next to aws-lc-rs) and none is installed. Installing
    // fails harmlessly when one already is.
    let _ = rumqttc::tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca = std::fs::read(&files.ca_file)
        .map_err(|e| format!("cannot read tls.ca_file {}: {e}", files.ca_file))?;
    let client_auth = match (&files.client_cert_file, &files.client_key_file) {
        (Some(cert), Some(key)) => {
            let cert_pem = std::fs::read(cert)
                .map_err(|e| format!("cannot read tls.cert_file {cert}: {e}"))?;
            let key_pem =
                std::fs::read(key).map_err(|e| format!("cannot read tls.key_file {key}: {e}"))?;
            Some((cert_pem, key_pem))
        }
        _ => None,
    };
    Ok(Transport::Tls(rumqttc::TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    }))
}
