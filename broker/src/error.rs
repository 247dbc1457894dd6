//! The broker's public error type.

use crate::config::ConfigError;
use crate::topic::TopicError;

/// Errors returned by the [`crate::Broker`] API.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("persistent state in {path}: {reason}")]
    Persistence { path: String, reason: String },
    #[error("tls setup from {path}: {reason}")]
    Tls { path: String, reason: String },
    #[error("the broker must be created inside a tokio runtime")]
    NoRuntime,
    #[error("the broker is shutting down")]
    ShuttingDown,
}
