//! HTTP nodes and the geo-store over real HTTP on loopback: an axum server
//! on port 0 mounting `http_server::fallback_handler` (as the binary does),
//! flows run by a real `Engine`, and reqwest as the client.
//!
//! The route table is process-wide, so every test serves its own paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use runnel_engine::testing::collect;
use runnel_engine::{Msg, Value};
use runnel_nodes::http_server::{HttpReply, REPLY_HANDLE, ReplyHandle, routes};
use serde_json::json;

mod common;

use common::http::*;

#[tokio::test]
async fn routes_with_params_and_query_strings() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let addr = flow_server().await;
    let yaml = r#"
nodes:
  - {id: by-id, type: http-in, path: /t1/devices/:id, wires: [[echo]]}
  - {id: near, type: http-in, path: /t1/devices/near, wires: [[fixed]]}
  - id: echo
    type: change
    rules: [{set: payload, from: req}]
    wires: [[respond]]
  - id: fixed
    type: change
    rules: [{set: payload, to: "near"}, {set: headers, to: {x-route: near}}]
    wires: [[respond]]
  - {id: respond, type: http-response}
"#;
    deploy(
        &engine,
        "t1",
        yaml,
        &["GET /t1/devices/:id", "GET /t1/devices/near"],
    )
    .await;
    let http = client();

    let response = http
        .get(format!(
            "http://{addr}/t1/devices/dev%201?limit=5&tag=a&tag=b"
        ))
        .header("x-test", "yes")
        .send()
        .await
        .unwrap();
    let (status, req) = json_of(response).await;
    assert_eq!(status, 200);
    assert_eq!(req["method"], "GET");
    assert_eq!(req["path"], "/t1/devices/dev%201");
    assert_eq!(req["params"], json!({"id": "dev 1"}));
    assert_eq!(req["query"], json!({"limit": "5", "tag": ["a", "b"]}));
    assert_eq!(req["headers"]["x-test"], "yes");

    let response = http
        .get(format!("http://{addr}/t1/devices/near"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-route"], "near");
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(response.text().await.unwrap(), "near");

    let (status, body) = json_of(
        http.get(format!("http://{addr}/t1/nothing"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not found")));
    let status = http
        .post(format!("http://{addr}/t1/devices/x"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 405);

    // A second flow cannot take a served route; removing the first frees it.
    let dup = r#"
nodes:
  - {id: again, type: http-in, path: "/t1/devices/{other}", wires: [[r]]}
  - {id: r, type: http-response}
"#;
    let flow = engine
        .loader()
        .load_str(Path::new("t1-dup.yaml"), dup)
        .unwrap();
    engine.deploy(flow).await;
    engine.remove(&runnel_engine::FlowId::new("t1")).await;
    wait_for_routes(&["GET /t1/devices/{other}"]).await;
    assert!(!routes().list().iter().any(|r| r == "GET /t1/devices/near"));
    engine.shutdown().await;
    assert!(!routes().list().iter().any(|r| r.starts_with("GET /t1/")));
}

#[tokio::test]
async fn bodies_are_parsed_by_content_type_and_echoed_back() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let addr = flow_server().await;
    let yaml = r#"
nodes:
  - {id: in, type: http-in, method: POST, path: /t2/echo, wires: [[respond]]}
  - {id: respond, type: http-response}
"#;
    deploy(&engine, "t2", yaml, &["POST /t2/echo"]).await;
    let http = client();
    let url = format!("http://{addr}/t2/echo");
    let post = |ct: &'static str, body: &'static [u8]| {
        http.post(&url).header("content-type", ct).body(body).send()
    };

    let response = post("application/json", br#"{"d":{"n":1}}"#).await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.text().await.unwrap(), r#"{"d":{"n":1}}"#);

    let response = post("text/plain; charset=utf-8", b"hello").await.unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(response.text().await.unwrap(), "hello");

    let response = post("application/x-www-form-urlencoded", b"a=1&b=two+words")
        .await
        .unwrap();
    let (_, form) = json_of(response).await;
    assert_eq!(form, json!({"a": "1", "b": "two words"}));

    let response = post("application/octet-stream", b"\x00\xff\x10")
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(&response.bytes().await.unwrap()[..], b"\x00\xff\x10");
    engine.shutdown().await;
}

#[tokio::test]
async fn limits_answer_413_400_and_503() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let addr = flow_server().await;
    let mut held = hold("t3-held");
    let yaml = r#"
nodes:
  - {id: small, type: http-in, method: POST, path: /t3/small, max_body: 16, wires: [[respond]]}
  - {id: respond, type: http-response}
  - {id: one, type: http-in, method: POST, path: /t3/one, max_concurrent: 1, wires: [[hold]]}
  - {id: hold, type: t-hold, channel: t3-held}
"#;
    deploy(&engine, "t3", yaml, &["POST /t3/small", "POST /t3/one"]).await;
    let http = client();

    let (status, body) = json_of(
        http.post(format!("http://{addr}/t3/small"))
            .header("content-type", "application/json")
            .body(vec![b' '; 17])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(body["field"], "body");

    // Chunked, so no content-length announces the size.
    let chunks = futures::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"0123456789"))),
    );
    let status = http
        .post(format!("http://{addr}/t3/small"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 413);

    let (status, body) = json_of(
        http.post(format!("http://{addr}/t3/small"))
            .header("content-type", "application/json")
            .body(r#"{"a":"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "body");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON body"),
        "{body}"
    );

    // The first request is held (its message sits in the collector), so the
    // second finds no free slot.
    let first = tokio::spawn({
        let http = http.clone();
        let url = format!("http://{addr}/t3/one");
        async move { http.post(url).body("first").send().await.unwrap() }
    });
    let msg = next(&mut held).await;
    let (status, body) = json_of(
        http.post(format!("http://{addr}/t3/one"))
            .body("second")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        body["error"].as_str().unwrap().contains("too many"),
        "{body}"
    );

    let reply = msg.handle::<ReplyHandle>(REPLY_HANDLE).unwrap();
    reply
        .send(HttpReply::error(
            axum::http::StatusCode::ACCEPTED,
            "done",
            None,
        ))
        .unwrap();
    drop(msg);
    let response = tokio::time::timeout(GUARD, first).await.unwrap().unwrap();
    assert_eq!(response.status(), 202);
    engine.shutdown().await;
}

#[tokio::test]
async fn unanswered_requests_get_500_and_reach_catch() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let addr = flow_server().await;
    let mut held = hold("t4-held");
    let mut errors = collect("t4-errors");
    let yaml = r#"
nodes:
  - {id: slow, type: http-in, path: /t4/slow, timeout: 300ms, wires: [[hold]]}
  - {id: hold, type: t-hold, channel: t4-held}
  - {id: dropped, type: http-in, path: /t4/dropped, wires: [[nowhere]]}
  - {id: nowhere, type: change, rules: [{set: topic, to: lost}]}
  - {id: failing, type: http-in, method: POST, path: /t4/failing, wires: [[decode]]}
  - {id: decode, type: base64, property: payload.name}
  - {id: errors, type: catch, wires: [[sink]]}
  - {id: sink, type: test-collect, channel: t4-errors}
"#;
    deploy(
        &engine,
        "t4",
        yaml,
        &["GET /t4/slow", "GET /t4/dropped", "POST /t4/failing"],
    )
    .await;
    let http = client();

    // Nothing answers in time: 500 with a generic body, and catch hears of it.
    let (status, body) = json_of(
        http.get(format!("http://{addr}/t4/slow"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(
        body,
        json!({"error": "internal server error", "field": null})
    );
    let error = next(&mut errors).await;
    let text = error.to_json()["error"]["message"].to_string();
    assert!(text.contains("no http-response for GET /t4/slow"), "{text}");
    assert_eq!(error.to_json()["error"]["source"]["id"], "slow");
    drop(next(&mut held).await);

    // The message is dropped without an answer: 500 at once, and catch.
    let status = http
        .get(format!("http://{addr}/t4/dropped"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 500);
    let text = next(&mut errors).await.to_json()["error"]["message"].to_string();
    assert!(
        text.contains("finished without reaching an http-response"),
        "{text}"
    );

    // A node fails on it: the node's own error reaches catch; once catch's
    // branch is done with the message, the client gets a 500 without detail.
    let response = tokio::spawn(
        http.post(format!("http://{addr}/t4/failing"))
            .header("content-type", "application/json")
            .body(r#"{"name": "***not base64***"}"#)
            .send(),
    );
    let error = next(&mut errors).await;
    assert_eq!(error.to_json()["error"]["source"]["id"], "decode");
    drop(error);
    let (status, body) = json_of(response.await.unwrap().unwrap()).await;
    assert_eq!(status, 500);
    assert!(!body.to_string().contains("base64"), "{body}");
    engine.shutdown().await;
}

#[tokio::test]
async fn http_request_templates_retries_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = serve(axum::Router::new().route(
        "/items/{id}",
        axum::routing::post({
            let calls = calls.clone();
            move |axum::extract::Path(id): axum::extract::Path<String>,
                  headers: axum::http::HeaderMap,
                  body: String| {
                let calls = calls.clone();
                async move {
                    // Two 503s, then the answer: the node must retry twice.
                    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "busy")
                            .into_response();
                    }
                    axum::Json(json!({
                        "id": id,
                        "body": body,
                        "token": headers.get("x-token").and_then(|v| v.to_str().ok()),
                    }))
                    .into_response()
                }
            }
        }),
    ))
    .await;
    // A port with nothing listening.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut out = collect("t5-out");
    let mut errors = collect("t5-errors");
    let yaml = format!(
        r#"
nodes:
  - id: go
    type: inject
    payload: {{id: "a b/c", n: 1}}
    wires: [[call]]
  - id: call
    type: http-request
    method: POST
    url: "http://{upstream}/items/{{{{payload.id}}}}"
    headers: {{x-token: secret-token}}
    retries: 2
    retry_backoff: 10ms
    wires: [[out]]
  - {{id: out, type: test-collect, channel: t5-out}}
  - id: go-nowhere
    type: inject
    payload: x
    wires: [[refused]]
  - id: refused
    type: http-request
    url: "http://{closed}/x"
    retries: 1
    retry_backoff: 10ms
  - {{id: errors, type: catch, scope: [refused], wires: [[sink]]}}
  - {{id: sink, type: test-collect, channel: t5-errors}}
"#
    );
    let flow = engine
        .loader()
        .load_str(Path::new("t5.yaml"), &yaml)
        .unwrap();
    engine.deploy(flow).await;

    let msg = next(&mut out).await.to_json();
    assert_eq!(msg["statusCode"], 200);
    assert_eq!(msg["payload"]["id"], "a b/c");
    assert_eq!(msg["payload"]["body"], r#"{"id":"a b/c","n":1}"#);
    assert_eq!(msg["payload"]["token"], "secret-token");
    assert_eq!(msg["headers"]["content-type"], "application/json");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let error = next(&mut errors).await.to_json();
    let text = error["error"]["message"].as_str().unwrap().to_string();
    assert!(text.contains("cannot connect"), "{text}");
    assert!(text.contains("after 2 attempt(s)"), "{text}");
    engine.shutdown().await;
}

use axum::response::IntoResponse as _;

#[tokio::test]
async fn openwhisk_flow_answers_like_the_seed_action() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let addr = flow_server().await;
    let path = flows_dir().join("openwhisk-base64.yaml");
    let flow = engine.loader().load_file(&path).unwrap();
    engine.deploy(flow).await;
    wait_for_routes(&["POST /api/v1/namespaces/:ns/actions/:name"]).await;
    let http = client();
    let url =
        format!("http://{addr}/api/v1/namespaces/guest/actions/test1?blocking=true&result=true");

    let (status, body) = json_of(
        http.post(&url)
            .json(&json!({"name": "aGVsbG8gZnJvbSBtb2JpbGUgdXNlcg=="}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"payload": "hello from mobile user"}));

    let (status, body) = json_of(
        http.post(&url)
            .json(&json!({"nom": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "name");
    engine.shutdown().await;
}

#[tokio::test]
async fn device_locations_flow_stores_and_queries_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let addr = flow_server().await;
    let http = client();
    let path = flows_dir().join("device-locations.yaml");
    let get = |url: String| {
        let http = http.clone();
        async move { json_of(http.get(url).send().await.unwrap()).await }
    };

    for round in 0..2 {
        let engine = engine(dir.path());
        let flow = engine.loader().load_file(&path).unwrap();
        engine.deploy(flow).await;
        wait_for_routes(&["GET /devices/near", "GET /devices", "GET /devices/:id"]).await;
        // The inject stores the seed documents at start (again on the second
        // start: a new revision); wait until they are all in.
        let rev = format!("{}-", round + 1);
        tokio::time::timeout(GUARD, async {
            for id in ["mydevice1", "mydevice2", "mydevice3", "mydevice4"] {
                loop {
                    let (status, doc) = get(format!("http://{addr}/devices/{id}")).await;
                    if status == 200 && doc["_rev"].as_str().unwrap().starts_with(&rev) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
        .await
        .expect("seed documents stored");

        let (status, doc) = get(format!("http://{addr}/devices/mydevice1")).await;
        assert_eq!(status, 200);
        assert_eq!(doc["_id"], "mydevice1");
        assert!(doc["_rev"].as_str().unwrap().contains('-'));
        assert_eq!(doc["d"]["name"], "My Device");
        assert_eq!(doc["d"]["location"]["type"], "GPS");

        let (status, docs) = get(format!(
            "http://{addr}/devices/near?lat=41.87&lon=-87.62&radius=500"
        ))
        .await;
        assert_eq!(status, 200);
        let mut ids: Vec<&str> = docs
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["_id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, ["mydevice1", "mydevice2"]);

        let (status, docs) = get(format!("http://{addr}/devices?bbox=-88,41.5,-87.5,42")).await;
        assert_eq!(status, 200);
        assert_eq!(docs.as_array().unwrap().len(), 3, "{docs}");

        let (status, body) = get(format!(
            "http://{addr}/devices/near?lat=91&lon=-87.62&radius=500"
        ))
        .await;
        assert_eq!(status, 400);
        assert_eq!(body["field"], "lat", "{body}");
        let (status, body) =
            get(format!("http://{addr}/devices/near?lat=1&lon=2&colour=red")).await;
        assert_eq!(status, 400);
        assert_eq!(body["field"], "colour", "{body}");

        let (status, body) = get(format!("http://{addr}/devices/nobody")).await;
        assert_eq!((status, body), (404, json!("")));

        if round == 0 {
            bad_input_is_refused_and_nothing_is_lost(addr, &http).await;
        }
        // Stored over HTTP in the first round, kept across the restart.
        let (status, doc) = get(format!("http://{addr}/devices/mydevice5")).await;
        assert_eq!(status, 200, "{doc}");
        assert!(doc["_rev"].as_str().unwrap().starts_with("1-"), "{doc}");
        engine.shutdown().await;
    }
}

/// Bad input through `flows/device-locations.yaml`'s routes: each a 400
/// (413 for a large body) with a JSON error naming the field; the stored
/// documents stay as they were and the flow keeps answering.
async fn bad_input_is_refused_and_nothing_is_lost(
    addr: std::net::SocketAddr,
    http: &reqwest::Client,
) {
    let get = |path: &str| {
        let request = http.get(format!("http://{addr}{path}")).send();
        async move { json_of(request.await.unwrap()).await }
    };
    let post = |body: Vec<u8>| {
        let request = http
            .post(format!("http://{addr}/devices"))
            .header("content-type", "application/json")
            .body(body)
            .send();
        async move { json_of(request.await.unwrap()).await }
    };
    let (_, before) = get("/devices/mydevice1").await;

    // A good store over HTTP: a new device, away from the seed's area.
    let (status, stored) = post(
        br#"{"_id": "mydevice5", "d": {"name": "Philly", "location": {"latitude": 40.0, "longitude": -75.0}}}"#
            .to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["_id"], "mydevice5");

    // The body: malformed JSON, and one over the route's 64KiB.
    let (status, body) = post(br#"{"_id": "mydevice1", "d": "#.to_vec()).await;
    assert_eq!((status, &body["field"]), (400, &json!("body")), "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON body"),
        "{body}"
    );
    let mut huge = br#"{"_id": "mydevice1", "pad": ""#.to_vec();
    huge.resize(64 * 1024 + 1, b'x');
    huge.extend_from_slice(b"\"}");
    let (status, body) = post(huge).await;
    assert_eq!((status, &body["field"]), (413, &json!("body")), "{body}");

    // Bad coordinates in a stored document: an update of a seed device that
    // must leave it untouched, and a new one that must not appear.
    for location in [
        json!({"latitude": 91, "longitude": -87.62}),
        json!({"latitude": "north", "longitude": -87.62}),
        json!({"latitude": 41.87, "longitude": -181}),
        json!({"longitude": -87.62}),
    ] {
        for id in ["mydevice1", "baddevice"] {
            let doc = json!({"_id": id, "d": {"name": "Broken", "location": location}});
            let (status, body) = post(serde_json::to_vec(&doc).unwrap()).await;
            assert_eq!(status, 400, "{doc} -> {body}");
            let field = body["field"].as_str().unwrap_or_default();
            assert!(field.starts_with("d.location"), "{doc} -> {body}");
            assert!(body["error"].as_str().is_some(), "{body}");
        }
    }
    // A GeoJSON polygon that is not one (an open ring of two points).
    let doc = json!({"_id": "baddevice", "d": {"location":
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}}});
    let (status, body) = post(serde_json::to_vec(&doc).unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["field"]
            .as_str()
            .unwrap_or_default()
            .starts_with("d.location"),
        "{body}"
    );

    // Bad query parameters: each names its field.
    for (path, field) in [
        ("/devices/near?lat=NaN&lon=-87.62&radius=500", "lat"),
        ("/devices/near?lat=north&lon=-87.62&radius=500", "lat"),
        ("/devices/near?lat=41.87&lon=-87.62&radius=-5", "radius"),
        ("/devices?bbox=-88,41.5,-87.5", "bbox"),
        ("/devices?bbox=-88,41.5,-87.5,42&colour=red", "colour"),
        (
            "/devices?g=POLYGON((0%200,%201%201))&relation=intersects",
            "g",
        ),
        ("/devices?g=POLYGON((0%200,%201%200,%201%201", "g"),
        (
            "/devices?g=POLYGON((0%200,1%200,1%201,0%201,0%200))&relation=disjoint",
            "relation",
        ),
    ] {
        let (status, body) = get(path).await;
        assert_eq!(status, 400, "{path} -> {body}");
        assert_eq!(body["field"], field, "{path} -> {body}");
        assert!(body["error"].as_str().is_some(), "{path} -> {body}");
    }

    // Nothing stored was lost or changed, and the flow still answers.
    let (status, after) = get("/devices/mydevice1").await;
    assert_eq!((status, &after), (200, &before));
    let (status, _) = get("/devices/baddevice").await;
    assert_eq!(status, 404);
    let (status, docs) = get("/devices?bbox=-88,41.5,-87.5,42").await;
    assert_eq!(status, 200);
    assert_eq!(docs.as_array().unwrap().len(), 3, "{docs}");
    let (status, docs) =
        get("/devices?g=POLYGON((-76%2039,-74%2039,-74%2041,-76%2041,-76%2039))").await;
    assert_eq!(status, 200, "{docs}");
    assert_eq!(docs[0]["_id"], "mydevice5", "{docs}");
}

#[tokio::test]
async fn geo_store_operations_from_messages() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let addr = flow_server().await;
    let mut errors = collect("t8-errors");
    let yaml = r#"
nodes:
  - {id: in, type: http-in, method: POST, path: /t8/geo/:op, wires: [[op]]}
  - id: op
    type: change
    rules: [{set: operation, from: req.params.op}]
    wires: [[geo]]
  - {id: geo, type: geo-store, geometry_path: geometry, wires: [[respond]]}
  - {id: respond, type: http-response}
  - {id: failed, type: catch, wires: [[respond, sink]]}
  - {id: sink, type: test-collect, channel: t8-errors}
"#;
    deploy(&engine, "t8", yaml, &["POST /t8/geo/:op"]).await;
    let http = client();
    let call = |op: &str, body: serde_json::Value| {
        let request = http
            .post(format!("http://{addr}/t8/geo/{op}"))
            .json(&body)
            .send();
        async move { json_of(request.await.unwrap()).await }
    };

    let square = json!({"type": "Polygon", "coordinates": [[[0,0],[1,0],[1,1],[0,1],[0,0]]]});
    let (status, stored) = call("store", json!({"_id": "zone", "geometry": square})).await;
    assert_eq!(status, 200, "{stored}");
    assert!(stored["_rev"].as_str().unwrap().starts_with("1-"));
    let (status, docs) = call("query?bbox=-1,-1,0.5,0.5", json!(null)).await;
    assert_eq!(status, 200, "{docs}");
    assert_eq!(docs[0]["_id"], "zone");
    let (status, docs) = call("query?lat=10&lon=10&radius=1000", json!(null)).await;
    assert_eq!((status, docs), (200, json!([])));
    let (status, body) = call("query", json!(null)).await;
    assert_eq!(status, 400, "no filter: {body}");
    drop(next(&mut errors).await);

    let (_, bad) = call(
        "store",
        json!({"_id": "p", "geometry": {"latitude": "north", "longitude": 2}}),
    )
    .await;
    assert!(bad["field"].as_str().unwrap().contains("latitude"), "{bad}");
    let error = next(&mut errors).await.to_json();
    assert_eq!(error["error"]["source"]["id"], "geo");

    let (status, gone) = call("delete", json!("zone")).await;
    assert_eq!(
        (status, gone),
        (200, json!({"_id": "zone", "deleted": true}))
    );
    let (status, _) = call("get", json!("zone")).await;
    assert_eq!(status, 404);
    let (status, body) = call("teleport", json!({})).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("operation")));
    drop(next(&mut errors).await);
    engine.shutdown().await;
}

#[test]
fn values_cross_the_reply_handle_untouched() {
    // A compile-time check that the handle types are public and usable.
    let (tx, _rx) = tokio::sync::oneshot::channel();
    let mut msg = Msg::new(Value::Null);
    msg.set_handle(
        REPLY_HANDLE,
        Arc::new(ReplyHandle::new(tx, "GET /x".into())),
    );
    assert!(
        msg.handle::<ReplyHandle>(REPLY_HANDLE)
            .unwrap()
            .is_pending()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geo_store_on_couchdb_answers_reports_outages_and_recovers() {
    let mut couch = Couch::start();
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let addr = flow_server().await;
    let mut errors = collect("t9-errors");
    let yaml = format!(
        r#"
nodes:
  - {{id: in, type: http-in, method: POST, path: "/t9/:op", wires: [[op]]}}
  - id: op
    type: change
    rules: [{{set: operation, from: req.params.op}}]
    wires: [[geo]]
  - id: geo
    type: geo-store
    backend: couchdb
    url: "http://127.0.0.1:{port}"
    db: devices-t9
    wires: [[respond]]
  - {{id: respond, type: http-response}}
  - {{id: failed, type: catch, wires: [[respond, sink]]}}
  - {{id: sink, type: test-collect, channel: t9-errors}}
"#,
        port = couch.port
    );
    deploy(&engine, "t9", &yaml, &["POST /t9/:op"]).await;
    let http = client();
    let call = |op: &str, body: serde_json::Value| {
        let request = http
            .post(format!("http://{addr}/t9/{op}"))
            .json(&body)
            .send();
        async move { json_of(request.await.unwrap()).await }
    };
    let device = json!({"_id": "mydevice1", "d": {"name": "My Device",
        "location": {"longitude": -87.62, "latitude": 41.87, "velocity": 4, "type": "GPS"}}});

    let (status, stored) = call("store", device.clone()).await;
    assert_eq!(status, 200, "{stored}");
    assert!(stored["_rev"].as_str().unwrap().starts_with("1-"));
    // An update without `_rev`: the backend resolves the revision.
    let (status, stored) = call("store", device).await;
    assert_eq!(status, 200, "{stored}");
    assert!(stored["_rev"].as_str().unwrap().starts_with("2-"));

    let (status, docs) = call("query?lat=41.87&lon=-87.62&radius=500", json!(null)).await;
    assert_eq!(status, 200, "{docs}");
    assert_eq!(docs[0]["_id"], "mydevice1");
    assert_eq!(docs[0]["d"]["location"]["type"], "GPS");
    let (status, doc) = call("get", json!("mydevice1")).await;
    assert_eq!(
        (status, doc["d"]["name"].as_str()),
        (200, Some("My Device"))
    );

    let (status, body) = call(
        "store",
        json!({"_id": "bad", "d": {"location": {"latitude": 91, "longitude": 0}}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["field"].as_str().unwrap().contains("latitude"),
        "{body}"
    );
    drop(next(&mut errors).await);

    // The server goes away: after the backend's retries the client gets a
    // 503 without detail for every operation, and catch gets each error.
    let port = couch.port;
    couch.stop();
    let moved = json!({"_id": "mydevice1", "d": {"name": "My Device",
        "location": {"longitude": -87.63, "latitude": 41.88}}});
    for (op, body) in [
        ("get", json!("mydevice1")),
        ("store", moved.clone()),
        ("query?bbox=-88,41,-87,42", json!(null)),
    ] {
        let (status, answer) = call(op, body).await;
        assert_eq!(status, 503, "{op}: {answer}");
        assert_eq!(
            answer,
            json!({"error": "geo store unavailable", "field": null})
        );
        let error = next(&mut errors).await.to_json();
        assert_eq!(error["error"]["source"]["id"], "geo");
        let text = error["error"]["message"].as_str().unwrap().to_string();
        assert!(text.starts_with("geo store:"), "{op}: {text}");
        assert!(text.contains("unavailable"), "{op}: {text}");
    }
    // Bad input is still refused as such while the server is down.
    let (status, _) = call("query?lat=91&lon=0&radius=5", json!(null)).await;
    assert_eq!(status, 400);
    drop(next(&mut errors).await);

    // The server comes back on the same port, empty (it is in memory): the
    // same flow, not redeployed, answers again; the first store recreates
    // the database. (A query before that store answers 503: runnel-geo's
    // CouchBackend recreates a vanished database on writes only.)
    let _restarted = Couch::start_on(port);
    let (status, doc) = call("get", json!("mydevice1")).await;
    assert_eq!(status, 404, "{doc}");
    let (status, stored) = call("store", moved).await;
    assert_eq!(status, 200, "{stored}");
    assert!(
        stored["_rev"].as_str().unwrap().starts_with("1-"),
        "{stored}"
    );
    let (status, docs) = call("query?lat=41.88&lon=-87.63&radius=100", json!(null)).await;
    assert_eq!(status, 200, "{docs}");
    assert_eq!(docs.as_array().map(Vec::len), Some(1), "{docs}");
    assert_eq!(docs[0]["d"]["location"]["latitude"], 41.88);
    let (status, doc) = call("get", json!("mydevice1")).await;
    assert_eq!((status, &doc["_rev"]), (200, &stored["_rev"]), "{doc}");
    let (status, gone) = call("delete", json!("mydevice1")).await;
    assert_eq!((status, &gone["deleted"]), (200, &json!(true)), "{gone}");
    assert!(errors.try_recv().is_err(), "no error after the recovery");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geo_store_on_couchdb_waits_for_a_server_that_starts_late() {
    // A port with no server yet: the flow is deployed while CouchDB is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let addr = flow_server().await;
    let mut errors = collect("t10-errors");
    let yaml = format!(
        r#"
nodes:
  - {{id: in, type: http-in, method: POST, path: /t10/devices, wires: [[geo]]}}
  - id: geo
    type: geo-store
    backend: couchdb
    url: "http://127.0.0.1:{port}"
    db: devices-t10
    operation: store
    wires: [[respond]]
  - {{id: respond, type: http-response}}
  - {{id: failed, type: catch, wires: [[sink]]}}
  - {{id: sink, type: test-collect, channel: t10-errors}}
"#
    );
    deploy(&engine, "t10", &yaml, &["POST /t10/devices"]).await;
    let http = client();
    let device = json!({"_id": "late", "d": {"location": {"latitude": 1.5, "longitude": 2.5}}});
    let request = tokio::spawn(
        http.post(format!("http://{addr}/t10/devices"))
            .json(&device)
            .send(),
    );

    // The node cannot open its store: catch hears why, the engine retries it.
    let error = next(&mut errors).await.to_json();
    let text = error["error"]["message"].as_str().unwrap().to_string();
    assert!(text.contains("cannot open the geo store"), "{text}");
    assert_eq!(error["error"]["source"]["id"], "geo");

    // The server starts: the waiting request is answered, no redeploy.
    let _couch = Couch::start_on(port);
    let (status, stored) = json_of(request.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{stored}");
    assert!(
        stored["_rev"].as_str().unwrap().starts_with("1-"),
        "{stored}"
    );
    engine.shutdown().await;
}
