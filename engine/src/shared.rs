//! [`EngineShared`]: what every flow of one engine shares.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::dispatch::WhenFull;
use crate::monitor::{DebugBus, StatusEvent};
use crate::trace::TraceStore;

/// Engine-wide settings.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Capacity of each node's input queue, in messages (default 128).
    pub queue_capacity: usize,
    /// What a full queue does by default.
    pub when_full: WhenFull,
    /// How long a stopping flow may take to drain in-flight messages.
    pub drain_timeout: std::time::Duration,
    /// Where nodes keep state that must survive restarts.
    pub data_dir: PathBuf,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            queue_capacity: 128,
            when_full: WhenFull::Block,
            drain_timeout: std::time::Duration::from_secs(10),
            data_dir: PathBuf::from("data"),
        }
    }
}

/// The trace store, buses and settings shared by all flows.
#[derive(Debug, Clone)]
pub struct EngineShared {
    /// Message traces.
    pub trace: Arc<TraceStore>,
    /// Debug messages.
    pub debug: DebugBus,
    /// Node status changes.
    pub status: broadcast::Sender<StatusEvent>,
    /// Settings.
    pub settings: EngineSettings,
}

impl EngineShared {
    /// Shared state with these settings; the trace store keeps the last
    /// 10,000 messages, 256 events each, and starts disabled.
    pub fn new(settings: EngineSettings) -> Arc<Self> {
        let (status, _) = broadcast::channel(1024);
        Arc::new(EngineShared {
            trace: Arc::new(TraceStore::new(10_000, 256)),
            debug: DebugBus::new(4096),
            status,
            settings,
        })
    }
}
