//! The embedded backend through its public API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use runnel_geo::{EmbeddedBackend, GeoBackend, GeoError, GeoOptions, Query};
use serde_json::{Value, json};

fn params(list: &[(&str, &str)]) -> Query {
    let pairs: Vec<(String, String)> = list
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    Query::from_params(&pairs).unwrap()
}

fn device(id: &str, lon: f64, lat: f64) -> Value {
    json!({"_id": id, "d": {"name": id, "location": {"longitude": lon, "latitude": lat, "velocity": 4, "type": "GPS"}}})
}

fn device_options() -> GeoOptions {
    GeoOptions {
        geometry_path: "d.location".into(),
        ..GeoOptions::default()
    }
}

fn ids(docs: &[Value]) -> Vec<&str> {
    docs.iter()
        .map(|doc| doc["_id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn store_get_delete_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedBackend::open(dir.path(), device_options())
        .await
        .unwrap();
    let first = store.store(device("a", -87.62, 41.87)).await.unwrap();
    assert_eq!(first.id, "a");
    assert!(first.rev.starts_with("1-"));
    let second = store.store(device("a", -87.63, 41.88)).await.unwrap();
    assert!(second.rev.starts_with("2-"));

    let doc = store.get("a").await.unwrap().unwrap();
    assert_eq!(doc["_rev"], json!(second.rev));
    assert_eq!(doc["d"]["location"]["latitude"], json!(41.88));
    assert_eq!(store.len(), 1);

    let generated = store
        .store(json!({"d": {"location": {"latitude": 1.0, "longitude": 2.0}}}))
        .await
        .unwrap();
    assert_eq!(generated.id.len(), 32);
    let fetched = store.get(&generated.id).await.unwrap().unwrap();
    assert_eq!(fetched["_id"], json!(generated.id));

    assert!(store.delete("a").await.unwrap());
    assert!(!store.delete("a").await.unwrap());
    assert_eq!(store.get("a").await.unwrap(), None);
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn rejects_bad_documents_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedBackend::open(dir.path(), device_options())
        .await
        .unwrap();
    let error = store.store(device("x", 0.0, 91.0)).await.unwrap_err();
    assert!(
        matches!(&error, GeoError::InvalidGeometry { field, .. } if field == "d.location.latitude"),
        "{error}"
    );
    assert!(matches!(
        store.store(json!([1, 2])).await,
        Err(GeoError::InvalidDocument { .. })
    ));
    assert!(store.is_empty());
}

#[tokio::test]
async fn custom_id_path() {
    let dir = tempfile::tempdir().unwrap();
    let options = GeoOptions {
        id_path: "d.name".into(),
        geometry_path: "d.location".into(),
        ..GeoOptions::default()
    };
    let store = EmbeddedBackend::open(dir.path(), options).await.unwrap();
    let mut doc = device("ignored", 1.0, 1.0);
    doc.as_object_mut().unwrap().remove("_id");
    doc["d"]["name"] = json!("truck-7");
    assert_eq!(store.store(doc).await.unwrap().id, "truck-7");
    assert_eq!(
        store.get("truck-7").await.unwrap().unwrap()["_id"],
        json!("truck-7")
    );
}

async fn city_store(dir: &std::path::Path) -> EmbeddedBackend {
    let store = EmbeddedBackend::open(dir, GeoOptions::default())
        .await
        .unwrap();
    let docs = [
        json!({"_id": "loop", "geometry": {"type": "Point", "coordinates": [-87.6298, 41.8781]}}),
        json!({"_id": "ohare", "geometry": {"type": "Point", "coordinates": [-87.9073, 41.9742]}}),
        json!({"_id": "midway", "geometry": {"latitude": 41.7868, "longitude": -87.7522}}),
        json!({"_id": "nyc", "geometry": {"type": "Point", "coordinates": [-74.006, 40.7128]}}),
        json!({"_id": "lake-shore", "geometry": {"type": "LineString", "coordinates": [[-87.62, 41.80], [-87.62, 41.95]]}}),
        json!({"_id": "park", "geometry": {"type": "Polygon", "coordinates": [[[-87.64, 41.86], [-87.60, 41.86], [-87.60, 41.90], [-87.64, 41.90], [-87.64, 41.86]]]}}),
    ];
    for doc in docs {
        store.store(doc).await.unwrap();
    }
    store
}

#[tokio::test]
async fn queries_cover_every_filter_and_relation() {
    let dir = tempfile::tempdir().unwrap();
    let store = city_store(dir.path()).await;

    let bbox = store
        .query(&params(&[("bbox", "-88,41.5,-87.5,42.1")]))
        .await
        .unwrap();
    assert_eq!(
        ids(&bbox),
        ["lake-shore", "loop", "midway", "ohare", "park"]
    );

    let near_loop = params(&[
        ("lat", "41.8781"),
        ("lon", "-87.6298"),
        ("radius", "5000"),
        ("nearest", "true"),
    ]);
    let found = store.query(&near_loop).await.unwrap();
    assert_eq!(ids(&found), ["loop", "park", "lake-shore"]);

    let all_by_distance = params(&[
        ("lat", "41.8781"),
        ("lon", "-87.6298"),
        ("nearest", "true"),
        ("limit", "3"),
        ("skip", "1"),
    ]);
    let found = store.query(&all_by_distance).await.unwrap();
    assert_eq!(ids(&found), ["park", "lake-shore", "midway"]);
    let everything = params(&[
        ("lat", "41.8781"),
        ("lon", "-87.6298"),
        ("nearest", "true"),
        ("limit", "100"),
    ]);
    assert_eq!(store.query(&everything).await.unwrap().len(), 6);

    let square = "POLYGON((-87.65 41.85, -87.59 41.85, -87.59 41.91, -87.65 41.91, -87.65 41.85))";
    let intersects = store.query(&params(&[("g", square)])).await.unwrap();
    assert_eq!(ids(&intersects), ["lake-shore", "loop", "park"]);
    let contains = store
        .query(&params(&[("g", square), ("relation", "contains")]))
        .await
        .unwrap();
    assert_eq!(ids(&contains), ["loop", "park"]);
    let crosses = store
        .query(&params(&[("g", square), ("relation", "crosses")]))
        .await
        .unwrap();
    assert_eq!(ids(&crosses), ["lake-shore"]);
    let inside_park = "POINT(-87.63 41.88)";
    let within = store
        .query(&params(&[("g", inside_park), ("relation", "within")]))
        .await
        .unwrap();
    assert_eq!(ids(&within), ["park"]);

    let nearest_in_box = params(&[
        ("bbox", "-88,41.5,-87.5,42.1"),
        ("nearest", "true"),
        ("lat", "41.97"),
        ("lon", "-87.90"),
        ("limit", "2"),
    ]);
    // The park's north-west corner (22.7 km) is closer to O'Hare than Midway (24 km).
    assert_eq!(
        ids(&store.query(&nearest_in_box).await.unwrap()),
        ["ohare", "park"]
    );

    let json_query: Query =
        serde_json::from_value(json!({"lat": 40.71, "lon": -74.0, "radius": 2000})).unwrap();
    assert_eq!(ids(&store.query(&json_query).await.unwrap()), ["nyc"]);
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = city_store(dir.path()).await;
    store.delete("nyc").await.unwrap();
    let rev = store
        .store(json!({"_id": "loop", "geometry": {"latitude": 41.88, "longitude": -87.63}}))
        .await
        .unwrap()
        .rev;
    store.close().await.unwrap();
    let late = json!({"_id": "late", "geometry": {"latitude": 0.0, "longitude": 0.0}});
    assert!(matches!(store.store(late).await, Err(GeoError::Closed)));
    drop(store);

    let store = EmbeddedBackend::open(dir.path(), GeoOptions::default())
        .await
        .unwrap();
    assert_eq!(store.len(), 5);
    assert_eq!(
        store.get("loop").await.unwrap().unwrap()["_rev"],
        json!(rev)
    );
    assert!(store.get("nyc").await.unwrap().is_none());
    let found = store
        .query(&params(&[
            ("lat", "41.88"),
            ("lon", "-87.63"),
            ("radius", "100"),
        ]))
        .await
        .unwrap();
    assert_eq!(ids(&found), ["loop", "park"]);
    let next = store
        .store(json!({"_id": "loop", "geometry": {"latitude": 41.88, "longitude": -87.63}}))
        .await
        .unwrap();
    assert!(next.rev.starts_with("3-"));
    store.close().await.unwrap();
    drop(store);

    // Reopening with another geometry path re-extracts the index from the documents.
    let options = GeoOptions {
        geometry_path: "elsewhere".into(),
        ..GeoOptions::default()
    };
    let store = EmbeddedBackend::open(dir.path(), options).await.unwrap();
    assert_eq!(store.len(), 0);
    assert!(store.get("loop").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stores_are_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    let options = GeoOptions {
        max_batch: 64,
        ..device_options()
    };
    let store = Arc::new(
        EmbeddedBackend::open(dir.path(), options.clone())
            .await
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for task in 0..16 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for n in 0..200 {
                let id = format!("t{task}-{n}");
                store
                    .store(device(&id, f64::from(task), f64::from(n) / 10.0))
                    .await
                    .unwrap();
                // Rewrite some ids so revisions race within and across batches.
                store
                    .store(device(&format!("shared-{}", n % 10), 0.0, 0.0))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.len(), 16 * 200 + 10);
    let shared = store.get("shared-3").await.unwrap().unwrap();
    assert!(
        shared["_rev"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}-", 16 * 20))
    );
    store.close().await.unwrap();
    drop(store);
    let reopened = EmbeddedBackend::open(dir.path(), options).await.unwrap();
    assert_eq!(reopened.len(), 16 * 200 + 10);
}

/// With the writer/publisher pipeline, a store must still answer only once its batch is
/// committed *and* in the index: each caller queries for its own point right away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_are_visible_to_queries_and_gets_when_they_return() {
    let dir = tempfile::tempdir().unwrap();
    let options = GeoOptions {
        max_batch: 16,
        ..device_options()
    };
    let store = Arc::new(EmbeddedBackend::open(dir.path(), options).await.unwrap());
    let mut tasks = Vec::new();
    for task in 0..32_u32 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for n in 0..20_u32 {
                let id = format!("v{task}-{n}");
                let (lon, lat) = (f64::from(task) - 16.0, f64::from(n) - 10.0);
                let stored = store.store(device(&id, lon, lat)).await.unwrap();
                let near = params(&[
                    ("lat", &lat.to_string()),
                    ("lon", &lon.to_string()),
                    ("radius", "10"),
                ]);
                let found = store.query(&near).await.unwrap();
                assert_eq!(ids(&found), vec![id.as_str()]);
                assert_eq!(found[0]["_rev"], json!(stored.rev));
                let fetched = store.get(&id).await.unwrap().unwrap();
                assert_eq!(fetched["_rev"], json!(stored.rev));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = store.writer_stats();
    assert_eq!(stats.writes, 32 * 20);
    assert!(stats.batches >= (32 * 20) / 16, "{stats:?}");
    assert!(stats.largest_batch <= 16, "{stats:?}");
    assert!(stats.mean_batch() >= 1.0);
    store.close().await.unwrap();
    assert!(matches!(
        store.store(device("late", 0.0, 0.0)).await,
        Err(GeoError::Closed)
    ));
}

/// Stores written before 2026-12-01 kept documents (`docs`: id → `<rev>\n<JSON>`) and
/// geometries (`geometry`) in two tables; opening one converts it to one record per
/// document, keeping every revision, and re-extraction after a geometry path change
/// still covers every document (it rewrites records a chunk at a time).
#[tokio::test]
async fn two_table_stores_are_converted_at_open() {
    use redb::{ReadableDatabase, TableDefinition};
    const DOCS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("docs");
    const GEOMETRY: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("geometry");
    const META: TableDefinition<'_, &str, &str> = TableDefinition::new("meta");
    const COUNT: usize = 5000;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(runnel_geo::DATABASE_FILE);
    {
        let db = redb::Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut docs = txn.open_table(DOCS).unwrap();
            let mut geometry = txn.open_table(GEOMETRY).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            for n in 0..COUNT {
                let id = format!("dev{n:05}");
                let doc = device(&id, -87.0 - n as f64 / 1e4, 41.0);
                let record = format!("2-{n:032x}\n{doc}");
                docs.insert(id.as_str(), record.as_bytes()).unwrap();
                geometry.insert(id.as_str(), [0_u8; 17].as_slice()).unwrap();
            }
            meta.insert("geometry_path", "d.location").unwrap();
        }
        txn.commit().unwrap();
    }

    let store = EmbeddedBackend::open(dir.path(), device_options())
        .await
        .unwrap();
    assert_eq!(store.len(), COUNT);
    let doc = store.get("dev00007").await.unwrap().unwrap();
    assert_eq!(doc["_rev"], json!(format!("2-{:032x}", 7)));
    assert_eq!(doc["d"]["location"]["longitude"], json!(-87.0007));
    let near = store
        .query(&params(&[
            ("lat", "41"),
            ("lon", "-87.0007"),
            ("radius", "1"),
        ]))
        .await
        .unwrap();
    assert_eq!(ids(&near), ["dev00007"]);
    let next = store.store(device("dev00007", 0.0, 0.0)).await.unwrap();
    assert!(next.rev.starts_with("3-"), "{}", next.rev);
    store.close().await.unwrap();
    drop(store);
    {
        let db = redb::Database::open(&file).unwrap();
        let read = db.begin_read().unwrap();
        let tables: Vec<String> = read
            .list_tables()
            .unwrap()
            .map(|table| redb::TableHandle::name(&table).to_owned())
            .collect();
        assert!(
            !tables
                .iter()
                .any(|name| name == "docs" || name == "geometry")
        );
    }

    let elsewhere = GeoOptions {
        geometry_path: "elsewhere".into(),
        ..GeoOptions::default()
    };
    let store = EmbeddedBackend::open(dir.path(), elsewhere).await.unwrap();
    assert_eq!(store.len(), 0);
    store.close().await.unwrap();
    drop(store);
    let store = EmbeddedBackend::open(dir.path(), device_options())
        .await
        .unwrap();
    assert_eq!(store.len(), COUNT);
    let doc = store.get("dev00007").await.unwrap().unwrap();
    assert!(doc["_rev"].as_str().unwrap().starts_with("3-"));
    store.close().await.unwrap();
}
