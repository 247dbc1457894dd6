//! The driver task: owns the event loop of one connection, for either
//! protocol (see `proto`), and turns its events into deliveries, acks of
//! held publishes, subscriptions and node status.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::QoS;
use runnel_engine::{NodeMonitor, NodeStatus, Signal};
use tokio::sync::{mpsc, watch};

use super::backoff::Jitter;
use super::client::{self, EventLoop};
use super::out::OutState;
use super::proto::{Event, Incoming, LoopError};
use super::{AckCmd, AckState, Delivery, Finished, Route, Settings, topic_matches};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ConnState {
    Connecting,
    Connected,
    Disconnected,
}

/// Owns the event loop.
pub(super) struct Driver {
    pub settings: Settings,
    pub eventloop: EventLoop,
    pub out: Arc<OutState>,
    pub routes: Arc<Mutex<Vec<Route>>>,
    pub routes_version: Arc<AtomicU64>,
    pub subscribed_version: u64,
    pub subscribed: Vec<String>,
    pub ack_tx: mpsc::UnboundedSender<AckCmd>,
    pub broker_monitor: Arc<NodeMonitor>,
    pub monitors: Arc<Mutex<Vec<Arc<NodeMonitor>>>>,
    pub status: Arc<Mutex<NodeStatus>>,
    pub state: watch::Sender<ConnState>,
    pub generation: Arc<AtomicU64>,
    pub cancel: Signal,
    pub qos0_dropped: u64,
}

impl Driver {
    fn set_status(&self, status: NodeStatus) {
        self.broker_monitor.set_status(status.clone());
        if let Ok(monitors) = self.monitors.lock() {
            for monitor in monitors.iter() {
                monitor.set_status(status.clone());
            }
        }
        if let Ok(mut slot) = self.status.lock() {
            *slot = status;
        }
    }

    pub(super) async fn run(mut self, (previous, done): (Option<Finished>, watch::Sender<bool>)) {
        if let Some(mut previous) = previous {
            // A redeploy: the old connection with this client id is closing.
            let wait = previous.wait_for(|finished| *finished);
            let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        }
        if let Some(tls) = &self.settings.tls {
            match client::read_tls(tls) {
                Ok(transport) => self.eventloop.set_transport(transport),
                Err(error) => {
                    tracing::error!(client_id = %self.settings.client_id, error = %error, "mqtt tls setup failed");
                    self.set_status(NodeStatus::error(error));
                    self.cancel.cancelled().await;
                    let _ = done.send(true);
                    return;
                }
            }
        }

        self.set_status(NodeStatus::pending("connecting"));
        let mut failures: u32 = 0;
        let mut rng = Jitter::new(&self.settings.client_id);
        // One waiter for the whole loop, not one per wait.
        let cancelled = self.cancel.cancelled_owned();
        tokio::pin!(cancelled);
        loop {
            let event = if self.eventloop.buffered() && !self.cancel.is_cancelled() {
                // The rest of a network read: no wake-up futures needed.
                self.eventloop.poll().await
            } else {
                tokio::select! {
                    biased;
                    () = &mut cancelled => break,
                    event = self.eventloop.poll() => event,
                }
            };
            match event {
                Ok(event) => {
                    failures = 0;
                    self.on_event(event);
                    self.sync_subscriptions();
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = rng.backoff(
                        failures,
                        self.settings.reconnect_min,
                        self.settings.reconnect_max,
                    );
                    self.on_error(&error, delay);
                    tokio::select! {
                        () = &mut cancelled => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.shutdown().await;
        let _ = done.send(true);
    }

    async fn shutdown(&mut self) {
        if self.eventloop.online() {
            // Acks of messages the flow finished while stopping go out
            // first; the acker sends DISCONNECT after them. Then wait for
            // the broker to close the connection: only then has it read
            // the DISCONNECT. A broker reads a packet per socket at a time
            // (Mosquitto does), so a successor's CONNECT with this client
            // id could otherwise be read first and take the session over
            // while the DISCONNECT still sits unread.
            let _ = self.ack_tx.send(AckCmd::Disconnect);
            let deadline = tokio::time::sleep(Duration::from_secs(2));
            tokio::pin!(deadline);
            let mut disconnect_sent = false;
            loop {
                tokio::select! {
                    () = &mut deadline => {
                        tracing::debug!(client_id = %self.settings.client_id, disconnect_sent, "mqtt broker did not close the connection in time");
                        break;
                    }
                    event = self.eventloop.poll() => match event {
                        Ok(Event::Disconnected) => disconnect_sent = true,
                        Ok(_) => {}
                        Err(_) => break,
                    },
                }
            }
        }
        let dropped = self.out.clear();
        self.set_status(NodeStatus::error("disconnected"));
        self.state.send_replace(ConnState::Disconnected);
        tracing::info!(
            client_id = %self.settings.client_id,
            unacknowledged_outgoing = dropped,
            "mqtt connection closed"
        );
    }

    fn on_error(&mut self, error: &LoopError, delay: Duration) {
        let was_connected = *self.state.borrow() == ConnState::Connected;
        self.state.send_replace(ConnState::Disconnected);
        let text = error.describe();
        let host = &self.settings.host;
        let port = self.settings.port;
        if error.refused() {
            tracing::error!(client_id = %self.settings.client_id, host = %host, port, error = %text, retry_in_ms = delay.as_millis() as u64, "mqtt connection refused");
        } else if was_connected {
            tracing::warn!(client_id = %self.settings.client_id, host = %host, port, error = %text, retry_in_ms = delay.as_millis() as u64, "mqtt connection lost");
        } else {
            tracing::warn!(client_id = %self.settings.client_id, host = %host, port, error = %text, retry_in_ms = delay.as_millis() as u64, "mqtt connect failed");
        }
        self.set_status(NodeStatus::error(format!("disconnected: {text}")));
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected {
                session_present,
                resent,
            } => {
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                if resent > 0 {
                    tracing::info!(client_id = %self.settings.client_id, requests = resent, "no session on the broker; resending unacknowledged publishes");
                }
                tracing::info!(
                    client_id = %self.settings.client_id,
                    host = %self.settings.host,
                    port = self.settings.port,
                    protocol = ?self.settings.protocol,
                    session_present,
                    generation,
                    "mqtt connected"
                );
                self.set_status(NodeStatus::ok("connected"));
                self.state.send_replace(ConnState::Connected);
                // Subscribe again on every connection, session or not.
                self.subscribed_version = u64::MAX;
            }
            Event::Publish(publish) => self.route(publish),
            Event::Acked { pkid, refused } => {
                if let Some(reason) = refused {
                    // The broker will not deliver it (MQTT 5 reason code);
                    // the message finishes, as it would on 3.1.1 where
                    // brokers acknowledge refused publishes silently.
                    tracing::warn!(client_id = %self.settings.client_id, pkid, reason = %reason, "mqtt publish refused by the broker");
                }
                self.out.acknowledged(pkid);
            }
            Event::SubAck(codes) => {
                for (code, filter) in codes.iter().zip(&self.subscribed) {
                    match code {
                        Ok(qos) => {
                            tracing::debug!(client_id = %self.settings.client_id, filter = %filter, granted_qos = *qos, "mqtt subscribed");
                        }
                        Err(reason) => {
                            tracing::error!(client_id = %self.settings.client_id, filter = %filter, reason = %reason, "mqtt subscription refused by the broker");
                            if let Ok(routes) = self.routes.lock() {
                                for route in routes.iter().filter(|r| &r.filter == filter) {
                                    route
                                        .monitor
                                        .set_status(NodeStatus::error("subscription refused"));
                                }
                            }
                        }
                    }
                }
            }
            Event::Sent(pkid) => self.out.sent(pkid),
            Event::Collided(pkid) => self.out.collided(pkid),
            Event::Disconnected | Event::Other => {}
        }
    }

    /// Subscribes every declared filter when connected and the declared set
    /// changed (or after a reconnect).
    fn sync_subscriptions(&mut self) {
        if *self.state.borrow() != ConnState::Connected {
            return;
        }
        let version = self.routes_version.load(Ordering::Acquire);
        if version == self.subscribed_version {
            return;
        }
        self.subscribed_version = version;
        let filters: Vec<(String, QoS)> = match self.routes.lock() {
            Ok(routes) => {
                let mut seen: HashMap<&str, QoS> = HashMap::new();
                for route in routes.iter() {
                    let qos = seen.entry(route.filter.as_str()).or_insert(route.qos);
                    if (route.qos as u8) > (*qos as u8) {
                        *qos = route.qos;
                    }
                }
                seen.into_iter()
                    .map(|(filter, qos)| (filter.to_string(), qos))
                    .collect()
            }
            Err(_) => return,
        };
        if filters.is_empty() {
            return;
        }
        self.subscribed = filters.iter().map(|(f, _)| f.clone()).collect();
        self.eventloop.subscribe(filters);
    }

    fn route(&mut self, publish: Incoming) {
        let publish = Arc::new(publish);
        let Ok(routes) = self.routes.lock() else {
            return;
        };
        // Matched twice (count, then deliver) rather than collected: no
        // allocation per message.
        let matching = |r: &&Route| topic_matches(&r.filter, &publish.topic);
        let count = routes.iter().filter(matching).count();
        let needs_ack = publish.qos != QoS::AtMostOnce;
        if count == 0 {
            if needs_ack {
                // A subscription left in the persistent session by a node
                // that is no longer deployed: acknowledge and drop.
                tracing::warn!(client_id = %self.settings.client_id, topic = %publish.topic, "mqtt message matches no mqtt-in node; acknowledged and dropped");
                let _ = self.ack_tx.send(AckCmd::Ack {
                    generation: self.generation.load(Ordering::Acquire),
                    qos: publish.qos,
                    pkid: publish.pkid,
                });
            }
            return;
        }
        let ack = needs_ack.then(|| {
            Arc::new(AckState {
                remaining: AtomicUsize::new(count),
                abandoned: AtomicBool::new(false),
                generation: self.generation.load(Ordering::Acquire),
                qos: publish.qos,
                pkid: publish.pkid,
                tx: self.ack_tx.clone(),
            })
        });
        for route in routes.iter().filter(matching) {
            if !needs_ack && route.queued.load(Ordering::Acquire) >= self.settings.qos0_buffer {
                route.monitor.count_dropped(1);
                self.qos0_dropped += 1;
                if self.qos0_dropped.is_power_of_two() {
                    tracing::warn!(client_id = %self.settings.client_id, node = %route.node, dropped_total = self.qos0_dropped, "mqtt-in queue full; dropping qos 0 messages");
                }
                continue;
            }
            route.queued.fetch_add(1, Ordering::AcqRel);
            let delivery = Delivery {
                publish: publish.clone(),
                ack: ack.clone(),
                completed: false,
            };
            if route.tx.send(delivery).is_err() {
                route.queued.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}
