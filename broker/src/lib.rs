//! runnel-broker: an embedded MQTT 3.1.1 broker with an in-process API.
//!
//! runnel flows declare a broker and exchange messages with it without a
//! socket ([`Broker::publish`], [`Broker::subscribe`]), while outside
//! clients connect over TCP. Design notes and measurements are in
//! `docs/broker.md`.
//!
//! # Layout
//! - [`codec`]: pure packet encoder/decoder, no I/O.
//! - [`topic`]: topic name and filter validation, the subscription tree
//!   (`+`, `#`, `$`-topics, `$share/<group>/…`).
//! - `session`: sessions, the bounded per-client queue, QoS 1/2 inflight state.
//! - `retained`: retained messages.
//! - `broker`: the [`Broker`] handle, shared state, routing.
//! - `server`: the accept loop; `connection`: one client's handshake, session
//!   attach and write loop; `inbound`: its read loop and packet handling;
//!   `transport`: TLS (rustls) and MQTT over WebSocket.
//! - `auth`: username/password and ACL rules; [`config`]: [`BrokerConfig`].
//! - [`metrics`]: counters, [`MetricsSnapshot`], `$SYS` topics.
//! - `persist`: saving persistent sessions and retained messages.
//!
//! # Dependencies
//! tokio, bytes, serde, thiserror, tracing, tokio-rustls (ring provider),
//! tokio-tungstenite and small utilities only. This
//! crate must not depend on other runnel crates: they depend on it.

mod auth;
mod broker;
pub mod codec;
pub mod config;
mod connection;
mod error;
mod inbound;
mod message;
pub mod metrics;
mod persist;
mod retained;
mod server;
mod session;
pub mod topic;
mod transport;

pub use broker::{Broker, LocalSubscription};
pub use codec::QoS;
pub use config::{
    Access, AclRule, BrokerConfig, TlsListenerConfig, UserConfig, WebSocketListenerConfig,
};
pub use error::BrokerError;
pub use message::{Delivery, Publish, PublishProperties};
pub use metrics::MetricsSnapshot;
