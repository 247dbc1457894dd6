//! runnel-engine (placeholder)
