//! The admin API against the real router and a real engine running flows of
//! test node types: flows, revisions, deploys, validation, node types, pages
//! and authentication. Live data (traces, metrics, the debug socket) is in
//! `live.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use runnel_web::WebState;
use serde_json::Value as Json;

use common::router::{call, debug_payload, get, setup};
use common::{Server, engine_with_flows, flows_dir, tick_flow};

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
    // The source changed; the nodes fused into its task restart with it.
    assert_eq!(
        answer["restarted"],
        serde_json::json!(["tick", "pass", "show"])
    );
    assert_eq!(answer["kept"], serde_json::json!([]));
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
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
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

#[tokio::test]
async fn the_test_server_helper_starts_and_stops() {
    let dir = flows_dir(&[("ticker", &tick_flow("1", 10))]);
    let server = Server::start(dir.path(), None).await;
    let stream = tokio::net::TcpStream::connect(server.addr).await;
    assert!(stream.is_ok());
    assert!(server.url("/x").starts_with("http://127.0.0.1:"));
    server.stop().await;
}

#[tokio::test]
async fn two_deploys_from_the_same_revision_one_wins_one_conflicts() {
    let (_dir, state, app) = setup("1").await;
    let revision = get(&app, "/api/flows/ticker").await.headers["x-runnel-revision"]
        .to_str()
        .unwrap()
        .to_string();
    let if_match = format!("\"{revision}\"");
    let headers = [("if-match", if_match.as_str())];
    let (first, second) = tokio::join!(
        call(
            &app,
            Method::PUT,
            "/api/flows/ticker",
            &headers,
            tick_flow("\"mine\"", 10),
        ),
        call(
            &app,
            Method::PUT,
            "/api/flows/ticker",
            &headers,
            tick_flow("\"theirs\"", 10),
        ),
    );
    let mut statuses = [first.status, second.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT]);
    state.engine().shutdown().await;
}

#[tokio::test]
async fn a_deploy_drains_the_old_flow_so_nothing_is_lost() {
    // `pass` has two inputs, so it has a queue of its own that must drain.
    let fan_in = |payload: &str| {
        format!(
            "nodes:\n\
             - {{id: a, type: test-tick, every_ms: 1, burst: 20, payload: {payload}, wires: [[pass]]}}\n\
             - {{id: b, type: test-tick, every_ms: 1, burst: 20, payload: {payload}, wires: [[pass]]}}\n\
             - {{id: pass, type: test-pass, wires: [[show]]}}\n\
             - {{id: show, type: test-debug}}\n"
        )
    };
    let dir = flows_dir(&[("fanin", &fan_in("1"))]);
    let engine = engine_with_flows(dir.path()).await;
    let state = WebState::new(engine.clone(), dir.path());
    let app = runnel_web::router(state.clone());
    let old = engine.monitors("fanin").await;
    assert_eq!(old.len(), 4);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let put = call(&app, Method::PUT, "/api/flows/fanin", &[], fan_in("2")).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());
    let [a, b, pass, show] = [&old[0], &old[1], &old[2], &old[3]].map(|m| m.counters());
    assert!(a.sent + b.sent > 0);
    assert_eq!(
        pass.received,
        a.sent + b.sent,
        "every message sent reached pass"
    );
    assert_eq!(show.received, pass.sent, "and went on to the sink");
    assert_eq!(pass.dropped, 0);
    engine.shutdown().await;
}
