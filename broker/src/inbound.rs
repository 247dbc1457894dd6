//! The read side of a connection: decoding packets and acting on them
//! (routing PUBLISH, acknowledging, subscribing), with the keep-alive timer
//! and the adaptive read buffer.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::broker::{Shared, Target};
use crate::codec::{self, Packet, Publish, QoS, SubAck, SubAckCode, Subscribe};
use crate::connection::{End, MAX_READ_BUFFER, MIN_READ_BUFFER};
use crate::message::Message;
use crate::metrics::add;
use crate::session::Session;
use crate::topic::{Subscription, excluded, parse_filter};

pub(crate) struct Reader<'a> {
    pub(crate) shared: &'a Arc<Shared>,
    pub(crate) session: &'a Arc<Session>,
    pub(crate) username: Option<&'a str>,
    pub(crate) client_id: &'a str,
}

impl Reader<'_> {
    pub(crate) async fn run<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
        mut buf: BytesMut,
        keep_alive: Option<Duration>,
    ) -> End {
        let max_packet = self.shared.config.max_packet_size;
        let sleep = tokio::time::sleep(keep_alive.unwrap_or(Duration::from_secs(86_400 * 365)));
        tokio::pin!(sleep);
        let mut target = MIN_READ_BUFFER;
        loop {
            loop {
                match codec::decode(&mut buf, max_packet) {
                    Ok(Some(packet)) => {
                        // Boxed: handling may await deep in routing, and an unboxed
                        // future would make every idle connection's task as
                        // large as that deepest state.
                        if let Some(end) = Box::pin(self.handle(packet)).await {
                            return end;
                        }
                        // One unit of tokio's cooperative budget per packet:
                        // a publisher flooding a full socket buffer yields
                        // every ~128 packets, so the write loops of its
                        // subscribers get the CPU to drain their queues.
                        tokio::task::consume_budget().await;
                    }
                    Ok(None) => break,
                    Err(error) => return End::Protocol(error),
                }
            }
            // Idle connections keep a small buffer; busy ones grow it.
            if buf.is_empty() && buf.capacity() > 2 * target {
                buf = BytesMut::with_capacity(target);
            } else if buf.capacity() - buf.len() < target / 2 {
                buf.reserve(target);
            }
            let spare = buf.capacity() - buf.len();
            let read = tokio::select! {
                biased;
                read = stream.read_buf(&mut buf) => read,
                _ = &mut sleep, if keep_alive.is_some() => return End::KeepAliveTimeout,
            };
            match read {
                Ok(0) => return End::Closed,
                Ok(n) => {
                    add(&self.shared.metrics.bytes_received, n as u64);
                    if n >= spare {
                        target = (target * 2).min(MAX_READ_BUFFER);
                    } else if n < target / 8 {
                        target = (target / 2).max(MIN_READ_BUFFER);
                    }
                    if let Some(keep_alive) = keep_alive {
                        sleep
                            .as_mut()
                            .reset(tokio::time::Instant::now() + keep_alive);
                    }
                }
                Err(error) => return End::Io(error),
            }
        }
    }

    /// Handles one packet; `Some` ends the connection.
    async fn handle(&mut self, packet: Packet) -> Option<End> {
        let queue = &self.session.queue;
        match packet {
            Packet::Publish(publish) => self.on_publish(publish).await,
            Packet::PubAck(id) => queue.on_puback(id),
            Packet::PubRec(id) => queue.on_pubrec(id),
            Packet::PubRel(id) => {
                // [MQTT-4.3.3-2] release the id, answer PUBCOMP.
                queue.incoming_qos2_release(id);
                queue.push_control(Packet::PubComp(id)).await;
            }
            Packet::PubComp(id) => queue.on_pubcomp(id),
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe).await,
            Packet::Unsubscribe(unsubscribe) => {
                {
                    let mut tree = self.shared.tree_write();
                    for filter in &unsubscribe.filters {
                        tree.unsubscribe(filter, self.session.id);
                    }
                }
                {
                    let mut subscriptions = self.session.subscriptions();
                    for filter in &unsubscribe.filters {
                        subscriptions.remove(filter);
                    }
                }
                // [MQTT-3.10.4-4] [MQTT-3.10.4-5] UNSUBACK even if nothing matched.
                queue
                    .push_control(Packet::UnsubAck(unsubscribe.packet_id))
                    .await;
            }
            // [MQTT-3.12.4-1]
            Packet::PingReq => queue.push_control(Packet::PingResp).await,
            Packet::Disconnect => return Some(End::Disconnect),
            // [MQTT-3.1.0-2] a second CONNECT is a protocol violation.
            Packet::Connect(_) => return Some(End::ProtocolViolation("second connect")),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Some(End::ProtocolViolation("server-only packet from client"));
            }
        }
        None
    }

    async fn on_publish(&mut self, publish: Publish) {
        let Publish {
            qos,
            retain,
            topic,
            packet_id,
            payload,
            ..
        } = publish;
        let allowed = !topic.starts_with("$SYS")
            && self
                .shared
                .auth
                .may_publish(self.username, self.client_id, &topic);
        if !allowed {
            // MQTT 3.1.1 cannot report a refusal: the message is acknowledged
            // and dropped, and counted.
            add(&self.shared.metrics.publish_denied, 1);
            tracing::debug!(%topic, "publish denied by acl");
        }
        let message = |topic: String| {
            Arc::new(Message {
                topic: topic.into(),
                payload,
                qos,
                retain,
                properties: None,
            })
        };
        add(&self.shared.metrics.messages_received, 1);
        let queue = &self.session.queue;
        match (qos, packet_id) {
            (QoS::AtMostOnce, _) => {
                if allowed {
                    self.shared.publish(message(topic)).await;
                }
            }
            (QoS::AtLeastOnce, Some(id)) => {
                // [MQTT-4.3.2-2] PUBACK only after the message is queued for
                // every subscriber: ownership has passed to the broker.
                if allowed {
                    self.shared.publish(message(topic)).await;
                }
                queue.push_control(Packet::PubAck(id)).await;
            }
            (QoS::ExactlyOnce, Some(id)) => {
                // [MQTT-4.3.3-2] method B: deliver once, remember the id
                // until PUBREL.
                if allowed && queue.incoming_qos2_first(id) {
                    self.shared.publish(message(topic)).await;
                }
                queue.push_control(Packet::PubRec(id)).await;
            }
            // The codec guarantees a packet id for QoS > 0.
            (_, None) => {}
        }
    }

    async fn on_subscribe(&mut self, subscribe: Subscribe) {
        let max_subscriptions = self.shared.config.max_subscriptions_per_client;
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut for_retained = Vec::new();
        for (filter, requested) in subscribe.filters {
            let parsed = match parse_filter(&filter) {
                Ok(parsed) => parsed,
                Err(error) => {
                    tracing::debug!(%filter, %error, "invalid subscription");
                    codes.push(SubAckCode::Failure);
                    continue;
                }
            };
            let Some(exclusions) =
                self.shared
                    .auth
                    .subscribe_decision(self.username, self.client_id, parsed.filter)
            else {
                tracing::debug!(%filter, "subscription denied by acl");
                codes.push(SubAckCode::Failure);
                continue;
            };
            let is_shared = parsed.share_group.is_some();
            let code = if self
                .session
                .at_subscription_limit(&filter, max_subscriptions)
            {
                tracing::info!(%filter, max_subscriptions, "subscription limit reached");
                SubAckCode::Failure
            } else {
                let subscription = Subscription {
                    id: self.session.id,
                    qos: requested,
                    target: Target::Client(self.session.clone()),
                    exclusions: exclusions.clone(),
                };
                match self.shared.tree_write().subscribe(&filter, subscription) {
                    Ok(_) => {
                        self.session
                            .subscriptions()
                            .insert(filter.clone(), (requested, exclusions.clone()));
                        if !is_shared {
                            for_retained.push((filter, requested, exclusions));
                        }
                        // [MQTT-3.9.3-1] granted QoS is the requested one (all supported).
                        SubAckCode::Granted(requested)
                    }
                    Err(_) => SubAckCode::Failure,
                }
            };
            codes.push(code);
        }
        // [MQTT-3.8.4-1] SUBACK with [MQTT-3.8.4-5] one code per filter.
        self.session
            .queue
            .push_control(Packet::SubAck(SubAck {
                packet_id: subscribe.packet_id,
                codes,
            }))
            .await;
        let target = Target::Client(self.session.clone());
        for (filter, granted, exclusions) in for_retained {
            // [MQTT-3.3.1-6] [MQTT-3.3.1-8] retained messages with retain 1.
            for message in self.shared.retained.matching(&filter) {
                if excluded(&exclusions, &message.topic) {
                    continue;
                }
                let qos = message.qos.min(granted);
                self.shared.deliver(&target, &message, qos, true).await;
            }
        }
    }
}
