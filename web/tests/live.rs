//! Live data through the real router and engine: message traces, flow
//! info with layout, metrics, and the batched debug WebSocket over a real
//! TCP server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use futures_util::{SinkExt as _, StreamExt as _};
use runnel_web::{DebugBatching, WebState};
use serde_json::Value as Json;

use common::router::{HANG_GUARD, debug_payload, get, setup};
use common::{engine_with_flows, flows_dir, tick_flow};

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
    // Busy time is sampled (one message in 16): wait for a measurement.
    let text = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let metrics = get(&app, "/metrics").await;
            assert_eq!(metrics.status, StatusCode::OK);
            let text = metrics.text();
            if text.contains("runnel_node_processing_seconds_count{flow=\"ticker\",node=\"pass\"") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a busy-time sample");
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
    // Traces are recorded while a debug socket is open (and not before).
    let trace = engine.shared().trace.clone();
    trace.set_enabled(false);
    assert!(!trace.is_enabled());

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
    assert!(trace.is_enabled(), "an open debug socket turns tracing on");

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
    tokio::time::timeout(HANG_GUARD, async {
        while trace.is_enabled() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("tracing stops once no debug socket is open");
    engine.shutdown().await;
}
