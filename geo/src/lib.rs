//! runnel-geo (placeholder)
