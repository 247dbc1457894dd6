//! runnel-broker (placeholder)
