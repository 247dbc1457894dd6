//! The admin API against the real router and a real engine running flows of
//! test node types.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use runnel_web::{DebugBatching, WebState};
use serde_json::Value as Json;
use tower::ServiceExt as _;

use common::{Server, engine_with_flows, flows_dir, tick_flow};

const HANG_GUARD: Duration = Duration::from_secs(15);

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Json {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn call(
    app: &axum::Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(app: &axum::Router, uri: &str) -> Answer {
    call(app, Method::GET, uri, &[], Body::empty()).await
}

/// A router over a directory with one flow, `ticker`.
async fn setup(payload: &str) -> (tempfile::TempDir, WebState, axum::Router) {
    let dir = flows_dir(&[("ticker", &tick_flow(payload, 10))]);
    let engine = engine_with_flows(dir.path()).await;
    let state = WebState::new(engine, dir.path());
    let app = runnel_web::router(state.clone());
    (dir, state, app)
}

/// Waits for a debug event whose payload is `payload`.
async fn debug_payload(state: &WebState, payload: &Json) -> runnel_engine::DebugEvent {
    let mut bus = state.engine().shared().debug.subscribe();
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Ok(event) = bus.recv().await
                && &event.msg["payload"] == payload
            {
                return (*event).clone();
            }
        }
    })
    .await
    .expect("the debug message arrives")
}

#[tokio::test]
async fn lists_flows_and_serves_the_yaml_as_written_with_its_revision() {
    let text = tick_flow("\"${NOT_A_SECRET:-hello}\"", 10);
    let dir = flows_dir(&[("ticker", &text)]);
    let engine = engine_with_flows(dir.path()).await;
    let app = runnel_web::router(WebState::new(engine.clone(), dir.path()));

    let list = get(&app, "/api/flows").await;
    assert_eq!(list.status, StatusCode::OK);
    let flows = list.json()["flows"].as_array().cloned().unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0]["name"], "ticker");
    assert_eq!(flows[0]["running"], true);
    assert_eq!(flows[0]["nodes"], 3);

    let yaml = get(&app, "/api/flows/ticker").await;
    assert_eq!(yaml.status, StatusCode::OK);
    assert_eq!(
        yaml.text(),
        text,
        "served exactly as written, ${{ENV}} unresolved"
    );
    assert!(
        yaml.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/yaml")
    );
    let revision = yaml.headers["x-runnel-revision"].to_str().unwrap();
    assert_eq!(revision.len(), 16);
    assert_eq!(
        yaml.headers["etag"].to_str().unwrap(),
        format!("\"{revision}\"")
    );

    let missing = get(&app, "/api/flows/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.json()["error"].as_str().unwrap().contains("nope"));
    let bad = get(&app, "/api/flows/..%2Fetc").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.json()["error"].is_string());
    engine.shutdown().await;
}

#[tokio::test]
async fn deploy_saves_the_text_atomically_and_runs_the_new_flow() {
    let (dir, state, app) = setup("\"before\"").await;
    debug_payload(&state, &Json::from("before")).await;
    let revision = get(&app, "/api/flows/ticker").await.headers["x-runnel-revision"]
        .to_str()
        .unwrap()
        .to_string();

    let new_text = format!("# comments survive\n{}", tick_flow("\"after\"", 10));
    let put = call(
        &app,
        Method::PUT,
        "/api/flows/ticker",
        &[("if-match", &format!("\"{revision}\""))],
        new_text.clone(),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());
    let answer = put.json();
    assert_eq!(answer["deployed"], true);
    assert_ne!(answer["revision"], revision.as_str());

    let on_disk = std::fs::read_to_string(dir.path().join("ticker.yaml")).unwrap();
    assert_eq!(on_disk, new_text);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary files left");
    debug_payload(&state, &Json::from("after")).await;

    // Putting the same text again is a no-op.
    let again = call(
        &app,
        Method::PUT,
        "/api/flows/ticker",
        &[("if-match", answer["revision"].as_str().unwrap())],
        new_text.clone(),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["deployed"], false);
    assert_eq!(again.json()["saved"], false);

    // A comment-only edit is saved without restarting the flow: the
    // counters keep counting from where they were.
    let before = state.engine().flow("ticker").await.unwrap().nodes[1]
        .counters
        .received;
    assert!(before > 0);
    let commented = new_text.replace("# comments survive", "# comments survive, edited");
    let comment = call(
        &app,
        Method::PUT,
        "/api/flows/ticker",
        &[("if-match", answer["revision"].as_str().unwrap())],
        commented.clone(),
    )
    .await;
    assert_eq!(comment.status, StatusCode::OK, "{}", comment.text());
    assert_eq!(comment.json()["saved"], true);
    assert_eq!(comment.json()["deployed"], false);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ticker.yaml")).unwrap(),
        commented
    );
    let after = state.engine().flow("ticker").await.unwrap().nodes[1]
        .counters
        .received;
    assert!(after >= before, "not restarted: {before} -> {after}");
    state.engine().shutdown().await;
}

#[tokio::test]
async fn an_invalid_flow_changes_nothing_and_reports_lines() {
    let (dir, state, app) = setup("1").await;
    let before = std::fs::read_to_string(dir.path().join("ticker.yaml")).unwrap();
    let broken = tick_flow("1", 10).replace("type: test-pass", "type: test-pas");
    let line = broken.lines().position(|l| l.contains("test-pas")).unwrap() + 1;

    let put = call(&app, Method::PUT, "/api/flows/ticker", &[], broken.clone()).await;
    assert_eq!(put.status, StatusCode::BAD_REQUEST);
    let answer = put.json();
    let diagnostics = answer["diagnostics"].as_array().unwrap();
    let unknown_type = diagnostics
        .iter()
        .find(|d| d["message"].as_str().unwrap().contains("test-pas\""))
        .unwrap_or_else(|| panic!("no unknown-type diagnostic in {answer:#}"));
    assert_eq!(unknown_type["line"], line, "{answer:#}");
    assert_eq!(unknown_type["node"], "pass");
    assert!(
        unknown_type["message"]
            .as_str()
            .unwrap()
            .contains("test-pass"),
        "did you mean"
    );
    assert!(
        diagnostics.iter().all(|d| d["file"] == "ticker.yaml"),
        "no server paths"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ticker.yaml")).unwrap(),
        before
    );
    let running = state.engine().flow_source("ticker").await.unwrap().1;
    assert_eq!(&*running, before.as_str());

    let validate = call(
        &app,
        Method::POST,
        "/api/flows/ticker/validate",
        &[],
        broken,
    )
    .await;
    assert_eq!(validate.status, StatusCode::OK);
    let verdict = validate.json();
    assert_eq!(verdict["valid"], false);
    assert!(
        verdict["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["line"] == line),
        "{verdict:#}"
    );

    let fine = call(
        &app,
        Method::POST,
        "/api/flows/ticker/validate",
        &[],
        tick_flow("2", 10),
    )
    .await;
    assert_eq!(fine.json()["valid"], true);

    let not_utf8 = call(
        &app,
        Method::POST,
        "/api/flows/ticker/validate",
        &[],
        vec![0xff, 0xfe],
    )
    .await;
    assert_eq!(not_utf8.status, StatusCode::BAD_REQUEST);
    state.engine().shutdown().await;
}

#[tokio::test]
async fn an_edit_based_on_an_old_revision_is_refused() {
    let (dir, state, app) = setup("1").await;
    let before = std::fs::read_to_string(dir.path().join("ticker.yaml")).unwrap();
    let put = call(
        &app,
        Method::PUT,
        "/api/flows/ticker",
        &[("if-match", "\"0123456789abcdef\"")],
        tick_flow("2", 10),
    )
    .await;
    assert_eq!(put.status, StatusCode::CONFLICT);
    let error = put.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("changed"), "{error}");
    assert!(error.contains("reload"), "{error}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ticker.yaml")).unwrap(),
        before
    );
    state.engine().shutdown().await;
}

#[tokio::test]
async fn a_new_flow_can_be_created_in_the_directory() {
    let (dir, state, app) = setup("1").await;
    let put = call(
        &app,
        Method::PUT,
        "/api/flows/second",
        &[],
        tick_flow("\"two\"", 10),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());
    assert!(dir.path().join("second.yaml").is_file());
    debug_payload(&state, &Json::from("two")).await;
    let names: Vec<String> = get(&app, "/api/flows").await.json()["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["second", "ticker"]);
    state.engine().shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_json() {
    let (_dir, state, app) = setup("1").await;
    let huge = "#".repeat(runnel_web::BODY_LIMIT + 10);
    let put = call(&app, Method::PUT, "/api/flows/ticker", &[], huge).await;
    assert_eq!(put.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(put.json()["error"].as_str().unwrap().contains("too large"));
    state.engine().shutdown().await;
}

#[tokio::test]
async fn node_types_come_with_config_schemas() {
    let (_dir, state, app) = setup("1").await;
    let nodes = get(&app, "/api/nodes").await.json();
    let tick = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "test-tick")
        .cloned()
        .unwrap();
    assert!(tick["summary"].as_str().unwrap().contains("source"));
    assert!(tick["config_schema"]["properties"]["every_ms"].is_object());
    let schema = get(&app, "/api/schema").await.json();
    assert_eq!(schema["title"], "runnel flow");
    let openapi = get(&app, "/api/openapi.json").await.json();
    assert_eq!(openapi["openapi"], "3.0.3");
    assert!(openapi["paths"]["/api/traces/{msgid}"].is_object());
    state.engine().shutdown().await;
}

#[tokio::test]
async fn a_message_trace_lists_each_node_with_ports_and_times() {
    let (_dir, state, app) = setup("\"traced\"").await;
    let event = debug_payload(&state, &Json::from("traced")).await;
    // The debug node saw it; the trace is complete once it has finished.
    let trace = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let answer = get(&app, &format!("/api/traces/{}", event.msg_id)).await;
            if answer.status == StatusCode::OK && !answer.json()["finished"].is_null() {
                return answer.json();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("trace finishes");
    let hops = trace["hops"].as_array().unwrap();
    let nodes: Vec<&str> = hops.iter().map(|h| h["node"].as_str().unwrap()).collect();
    assert_eq!(nodes, ["tick", "pass", "show"], "{trace:#}");
    assert_eq!(hops[0]["ports"], serde_json::json!([0]));
    assert!(hops[0].get("received").is_none(), "the source created it");
    assert!(hops[1]["received"].is_string());
    assert!(hops[1]["micros"].is_u64());
    assert_eq!(trace["flow"], "ticker");
    assert_eq!(trace["finished"]["errored"], false);

    let bad = get(&app, "/api/traces/not-an-id").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let unknown = get(&app, "/api/traces/0000000000000000").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(
        unknown.json()["error"]
            .as_str()
            .unwrap()
            .contains("no trace")
    );
    state.engine().shutdown().await;
}

#[tokio::test]
async fn flow_info_has_counters_and_a_layered_layout() {
    let (_dir, state, app) = setup("1").await;
    debug_payload(&state, &Json::from(1)).await;
    let info = get(&app, "/api/flows/ticker/info").await.json();
    assert_eq!(info["running"], true);
    let layout = &info["layout"];
    let layer = |id: &str| {
        layout["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap()["layer"]
            .as_u64()
            .unwrap()
    };
    assert_eq!((layer("tick"), layer("pass"), layer("show")), (0, 1, 2));
    assert_eq!(layout["edges"].as_array().unwrap().len(), 2);
    let pass = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "pass")
        .cloned()
        .unwrap();
    assert!(pass["counters"]["received"].as_u64().unwrap() >= 1);
    let tick_status = &info["nodes"][0]["status"];
    assert_eq!(tick_status["text"], "ticking");
    state.engine().shutdown().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_per_node_and_flow() {
    // `pass` has two inputs here, so it runs as its own task with a queue.
    let fan_in = "nodes:\n\
      - {id: a, type: test-tick, payload: 1, wires: [[pass]]}\n\
      - {id: b, type: test-tick, payload: 2, wires: [[pass]]}\n\
      - {id: pass, type: test-pass, wires: [[show]]}\n\
      - {id: show, type: test-debug}\n";
    let dir = flows_dir(&[("ticker", &tick_flow("1", 10)), ("fanin", fan_in)]);
    let engine = engine_with_flows(dir.path()).await;
    let state = WebState::new(engine, dir.path());
    let app = runnel_web::router(state.clone());
    debug_payload(&state, &Json::from(1)).await;
    let metrics = get(&app, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.text();
    for needle in [
        "runnel_node_received_total{flow=\"ticker\",node=\"pass\",type=\"test-pass\"}",
        "runnel_node_sent_total{",
        "runnel_node_errors_total{",
        "runnel_node_dropped_total{",
        "runnel_node_busy_seconds_total{",
        "runnel_node_connected{flow=\"ticker\",node=\"tick\",type=\"test-tick\"} 1",
        "runnel_flow_in_flight{flow=\"ticker\"}",
        "# TYPE runnel_node_processing_seconds histogram",
        "runnel_node_processing_seconds_count{flow=\"ticker\",node=\"pass\",type=\"test-pass\"}",
        "runnel_node_queue_depth{flow=\"fanin\",node=\"pass\",type=\"test-pass\"}",
        "# EOF",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    let info = get(&app, "/api/flows/fanin/info").await.json();
    let pass = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "pass")
        .cloned()
        .unwrap();
    assert!(pass["queued"].is_u64(), "queue depth shown: {pass}");
    // The +Inf bucket holds every message: the count.
    let value = |prefix: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
    };
    let count = value("runnel_node_processing_seconds_count{flow=\"ticker\",node=\"pass\"");
    let all =
        value("runnel_node_processing_seconds_bucket{le=\"+Inf\",flow=\"ticker\",node=\"pass\"");
    assert!(count >= 1);
    assert_eq!(all, count);
    state.engine().shutdown().await;
}

#[tokio::test]
async fn pages_and_static_files_are_served_without_data() {
    let (_dir, state, app) = setup("1").await;
    let index = get(&app, "/").await;
    assert_eq!(index.status, StatusCode::OK);
    assert!(index.text().contains("<h1>Flows</h1>"));
    let page = get(&app, "/flows/ticker").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("data-flow=\"ticker\""));
    assert!(
        !page.text().contains("test-tick"),
        "no flow data in the page"
    );
    let script = get(&app, "/static/editor.js").await;
    assert!(
        script.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(
        get(&app, "/static/nope.js").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&app, "/flows/%3Cscript%3E").await.status,
        StatusCode::NOT_FOUND
    );
    let unknown = get(&app, "/api/nothing").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.json()["error"].is_string());
    assert_eq!(get(&app, "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(&app, "/readyz").await.status, StatusCode::OK);
    state.begin_shutdown();
    assert_eq!(
        get(&app, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    state.engine().shutdown().await;
}

#[tokio::test]
async fn with_a_token_admin_routes_require_it() {
    let dir = flows_dir(&[("ticker", &tick_flow("1", 10))]);
    let engine = engine_with_flows(dir.path()).await;
    let state = WebState::builder(engine.clone(), vec![dir.path().to_path_buf()])
        .admin_token(Some("s3cret-token".into()))
        .build();
    let app = runnel_web::router(state);
    for uri in [
        "/api/flows",
        "/api/flows/ticker",
        "/api/nodes",
        "/metrics",
        "/api/debug",
    ] {
        let none = get(&app, uri).await;
        assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(none.json()["error"].as_str().unwrap().contains("token"));
        assert!(!none.text().contains("s3cret"));
        let wrong = call(
            &app,
            Method::GET,
            uri,
            &[("authorization", "Bearer s3cret-tokem")],
            Body::empty(),
        )
        .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    let right = call(
        &app,
        Method::GET,
        "/api/flows",
        &[("authorization", "Bearer s3cret-token")],
        Body::empty(),
    )
    .await;
    assert_eq!(right.status, StatusCode::OK);
    let put = call(
        &app,
        Method::PUT,
        "/api/flows/ticker",
        &[],
        tick_flow("2", 10),
    )
    .await;
    assert_eq!(put.status, StatusCode::UNAUTHORIZED);
    // ?token= only counts for the WebSocket.
    let query = get(&app, "/api/flows?token=s3cret-token").await;
    assert_eq!(query.status, StatusCode::UNAUTHORIZED);
    for open in [
        "/healthz",
        "/readyz",
        "/",
        "/flows/ticker",
        "/api/openapi.json",
    ] {
        assert_eq!(get(&app, open).await.status, StatusCode::OK, "{open}");
    }
    engine.shutdown().await;
}

async fn next_batch(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Json {
    loop {
        let message = tokio::time::timeout(HANG_GUARD, socket.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            let frame: Json = serde_json::from_str(&text).unwrap();
            if frame["type"] == "batch" {
                return frame;
            }
        }
    }
}

#[tokio::test]
async fn the_debug_socket_batches_caps_and_counts_what_it_skips() {
    let dir = flows_dir(&[("fast", &tick_flow("\"fast\"", 1))]);
    let engine = engine_with_flows(dir.path()).await;
    let state = WebState::builder(engine.clone(), vec![dir.path().to_path_buf()])
        .admin_token(Some("tok en".into()))
        .debug_batching(DebugBatching {
            interval: Duration::from_millis(100),
            max_per_batch: 5,
        })
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closing = state.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(runnel_web::serve(
        listener,
        runnel_web::router(state),
        async move {
            let _ = stopped.await;
            closing.begin_shutdown();
        },
    ));

    let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/api/debug")).await;
    assert!(refused.is_err(), "no token, no socket");

    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/api/debug?flow=fast&token=tok%20en"))
            .await
            .expect("connects with ?token=");
    let mut skipped = 0;
    let mut seen = 0;
    for _ in 0..5 {
        let batch = next_batch(&mut socket).await;
        let debug = batch["debug"].as_array().unwrap();
        assert!(debug.len() <= 5, "batch over the cap: {}", debug.len());
        for event in debug {
            assert_eq!(event["node"], "show");
            assert_eq!(event["flow"], "fast");
            assert_eq!(event["msg"]["payload"], "fast");
            assert!(event["time"].as_str().unwrap().ends_with('Z'));
            assert_eq!(event["msgid"].as_str().unwrap().len(), 16);
        }
        seen += debug.len();
        skipped += batch["skipped"].as_u64().unwrap();
    }
    assert!(seen > 0);
    assert!(skipped > 0, "a 1 kHz flow overflows 5 per 100 ms");

    // A socket filtered to another flow gets nothing of this one.
    let (mut other, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/api/debug?flow=other&token=tok%20en"
    ))
    .await
    .unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(400), async {
        loop {
            match other.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                    let frame: Json = serde_json::from_str(&text).unwrap();
                    if frame["type"] == "batch" && !frame["debug"].as_array().unwrap().is_empty() {
                        return frame;
                    }
                }
                _ => continue,
            }
        }
    })
    .await;
    assert!(
        quiet.is_err(),
        "filtered socket got another flow's messages"
    );

    // Shutdown closes open sockets and the server stops.
    let _ = socket
        .send(tokio_tungstenite::tungstenite::Message::Ping(vec![].into()))
        .await;
    stop.send(()).unwrap();
    tokio::time::timeout(HANG_GUARD, server)
        .await
        .expect("server stops with sockets open")
        .unwrap()
        .unwrap();
    engine.shutdown().await;
}

#[tokio::test]
async fn the_test_server_helper_starts_and_stops() {
    let dir = flows_dir(&[("ticker", &tick_flow("1", 10))]);
    let server = Server::start(dir.path(), None).await;
    let stream = tokio::net::TcpStream::connect(server.addr).await;
    assert!(stream.is_ok());
    assert!(server.url("/x").starts_with("http://127.0.0.1:"));
    server.stop().await;
}
