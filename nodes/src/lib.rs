//! # runnel-nodes
//!
//! The node types of runnel, one file per type. Each file holds the type's
//! typed config (serde, `deny_unknown_fields`, with doc comments that become
//! its schema and `runnel nodes` text), its implementation and its tests.
//! The engine knows node types only through [`register_all`].
//!
//! ## Dependencies
//! This crate depends on `runnel-engine` and on client libraries for the
//! systems its nodes talk to. It must not depend on `runnel-web`.

// Core nodes.
// (modules are added here as they land; keep this list and register_all in step)
pub mod base64;
pub mod catch;
pub mod change;
pub mod comment;
pub mod debug;
pub mod delay;
pub mod inject;
pub mod json;
pub mod switch;

// HTTP.
pub mod geo_store;
pub mod http_in;
pub mod http_request;
pub mod http_response;
pub mod http_server;

// MQTT.
pub mod mqtt_broker;
mod mqtt_conn;
mod mqtt_embedded;
pub mod mqtt_in;
pub mod mqtt_out;

use runnel_engine::Registry;

/// Registers every node type of this crate.
pub fn register_all(registry: &mut Registry) -> &mut Registry {
    // Core nodes.
    registry
        .register::<inject::Inject>()
        .register::<debug::Debug>()
        .register::<change::Change>()
        .register::<switch::Switch>()
        .register::<base64::Base64>()
        .register::<json::Json>()
        .register::<delay::Delay>()
        .register::<catch::Catch>()
        .register::<comment::Comment>();
    // HTTP.
    registry
        .register::<http_in::HttpIn>()
        .register::<http_response::HttpResponse>()
        .register::<http_request::HttpRequest>()
        .register::<geo_store::GeoStore>();
    // MQTT.
    registry
        .register_config::<mqtt_broker::MqttBroker>()
        .register::<mqtt_in::MqttIn>()
        .register::<mqtt_out::MqttOut>();
    registry
}

/// A registry with every node type of this crate.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    register_all(&mut registry);
    registry
}
