//! The store workload shared by the criterion bench (`geo_store.rs`) and the
//! `store_load` example: seed-shaped device documents, stored by many
//! concurrent callers.

use std::sync::Arc;

use rand::{Rng, rngs::StdRng};
use runnel_geo::{EmbeddedBackend, GeoBackend};
use serde_json::{Value, json};

/// Device document `n`, at a random point of a 1°×1° square around Chicago.
pub fn device(n: usize, rng: &mut StdRng) -> Value {
    json!({
        "_id": format!("device-{n:08}"),
        "d": {"name": "My Device", "location": {
            "longitude": rng.random_range(-88.0..-87.0),
            "latitude": rng.random_range(41.0..42.0),
            "velocity": 4, "type": "GPS"}}
    })
}

/// `docs` dealt to `callers` shares: every `callers`-th document each.
pub fn split(docs: Vec<Value>, callers: usize) -> Vec<Vec<Value>> {
    let mut shares: Vec<Vec<Value>> = (0..callers).map(|_| Vec::new()).collect();
    for (n, doc) in docs.into_iter().enumerate() {
        shares[n % callers].push(doc);
    }
    shares
}

/// Stores each share from its own task, one document after another, so
/// one store per share is in flight and the callers run on every runtime
/// worker.
pub async fn store_shares(store: &Arc<EmbeddedBackend>, shares: Vec<Vec<Value>>) {
    let callers: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                for doc in share {
                    store.store(doc).await.unwrap();
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
}
