//! runnel-nodes (placeholder)
