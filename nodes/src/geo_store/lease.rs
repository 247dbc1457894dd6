//! Open backends shared between `geo-store` nodes: embedded stores are opened
//! once per directory and closed (flushed) when the last node using them stops.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use runnel_geo::{EmbeddedBackend, GeoBackend, GeoError, GeoOptions};

/// A node's use of a backend. Embedded stores are shared by every node
/// naming the same store and closed (flushed) when the last one stops.
pub(super) struct Lease {
    backend: Option<Arc<dyn GeoBackend>>,
    shared_dir: Option<PathBuf>,
}

type Registry = tokio::sync::Mutex<HashMap<PathBuf, OpenStore>>;

struct OpenStore {
    backend: Arc<EmbeddedBackend>,
    options: GeoOptions,
    users: usize,
}

fn open_stores() -> &'static Registry {
    static STORES: OnceLock<Registry> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

pub(super) async fn acquire(dir: PathBuf, options: GeoOptions) -> Result<Lease, GeoError> {
    let mut stores = open_stores().lock().await;
    if let Some(open) = stores.get_mut(&dir) {
        if open.options != options {
            return Err(GeoError::InvalidOption {
                option: "geometry_path".to_string(),
                reason: format!(
                    "the store is already open with id_path {:?} and geometry_path {:?}",
                    open.options.id_path, open.options.geometry_path
                ),
            });
        }
        open.users += 1;
        let backend: Arc<dyn GeoBackend> = open.backend.clone();
        return Ok(Lease {
            backend: Some(backend),
            shared_dir: Some(dir),
        });
    }
    if let Some(parent) = dir.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| GeoError::Storage {
                reason: format!("cannot create {}: {e}", parent.display()),
            })?;
    }
    let backend = Arc::new(EmbeddedBackend::open(&dir, options.clone()).await?);
    tracing::info!(dir = %dir.display(), documents = backend.len(), "geo store opened");
    stores.insert(
        dir.clone(),
        OpenStore {
            backend: backend.clone(),
            options,
            users: 1,
        },
    );
    let backend: Arc<dyn GeoBackend> = backend;
    Ok(Lease {
        backend: Some(backend),
        shared_dir: Some(dir),
    })
}

impl Lease {
    pub(super) fn owned(backend: Arc<dyn GeoBackend>) -> Self {
        Lease {
            backend: Some(backend),
            shared_dir: None,
        }
    }

    pub(super) fn backend(&self) -> Option<Arc<dyn GeoBackend>> {
        self.backend.clone()
    }

    /// Gives the backend back, closing it when no node uses it any more.
    pub(super) async fn release(mut self) {
        let backend = self.backend.take();
        let dir = self.shared_dir.take();
        release(backend, dir).await;
    }
}

async fn release(backend: Option<Arc<dyn GeoBackend>>, dir: Option<PathBuf>) {
    let Some(backend) = backend else { return };
    let Some(dir) = dir else {
        if let Err(error) = backend.close().await {
            tracing::warn!(%error, "closing the geo store failed");
        }
        return;
    };
    drop(backend);
    let mut stores = open_stores().lock().await;
    let last = match stores.get_mut(&dir) {
        Some(open) => {
            open.users = open.users.saturating_sub(1);
            open.users == 0
        }
        None => false,
    };
    if last && let Some(open) = stores.remove(&dir) {
        if let Err(error) = open.backend.close().await {
            tracing::warn!(dir = %dir.display(), %error, "closing the geo store failed");
        }
        tracing::info!(dir = %dir.display(), "geo store closed");
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Released without `release` (a panic in the node): finish in the
        // background so the store is still closed when unused.
        let backend = self.backend.take();
        let dir = self.shared_dir.take();
        if backend.is_some()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(release(backend, dir));
        }
    }
}
