//! runnel-web (placeholder)
